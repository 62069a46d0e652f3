//! Test support: small layers built with the `tar` crate.

use std::io;

use tar::{EntryType, Header};

/// A tar entry for tests.
pub(crate) enum E<'a> {
    File(&'a str, &'a str),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

pub(crate) fn tar(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(1000);
        h.set_gid(1000);
        match e {
            E::File(p, data) => {
                h.set_entry_type(EntryType::Regular);
                h.set_mode(0o640);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, data.as_bytes()).unwrap();
            }
            E::Dir(p) => {
                h.set_entry_type(EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, p, io::empty()).unwrap();
            }
            E::Symlink(p, t) => {
                h.set_entry_type(EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, t).unwrap();
            }
            E::Hardlink(p, t) => {
                h.set_entry_type(EntryType::Link);
                h.set_mode(0o640);
                h.set_size(0);
                b.append_link(&mut h, p, t).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// A tar of `(name, type, link name, data)` with the names written verbatim into the header
/// (`append_data` refuses `..` and absolute names).
pub(crate) fn raw_tar(entries: &[(&[u8], EntryType, &[u8], &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, ty, link, data) in entries {
        let mut h = Header::new_gnu();
        h.set_entry_type(*ty);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_cksum();
        b.append(&h, data.as_bytes()).unwrap();
    }
    b.into_inner().unwrap()
}
