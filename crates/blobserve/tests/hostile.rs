//! Hostile images through blobserve (issue 9's "safe by construction"): each image carries one
//! layer built to attack an extractor or a file server (rf-testkit's `hostile`), beside a
//! harmless `index.html`. Nothing appears outside the images' roots, nothing outside is served,
//! the harmless file is, and the server goes on serving other images. Real distribution.

mod common;

use std::path::{Path, PathBuf};

use axum::http::StatusCode;
use common::*;
use rf_testkit::hostile::{self, PAYLOAD, SAFE_CONTENT, SAFE_FILE};
use rf_testkit::{Compression, Entry, ImageBuilder, Layer, Registry, RegistryAuth};
use serde_json::json;

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.is_dir() {
            out.extend(files_under(&p));
        } else if meta.is_file() {
            out.push(p);
        }
    }
    out
}

fn special_files_under(dir: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::FileTypeExt as _;
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let t = e.file_type().unwrap();
        if t.is_dir() {
            out.extend(special_files_under(&e.path()));
        } else if t.is_char_device() || t.is_block_device() || t.is_fifo() || t.is_socket() {
            out.push(e.path());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_layers_stay_inside_their_root() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let space = tmp.path().join("space");
    let outside_dir = tmp.path().join("outside-dir");
    std::fs::create_dir_all(&outside_dir).unwrap();
    // Decoys where `../../outside` lands from an image root or an unpack directory.
    std::fs::create_dir_all(&space).unwrap();
    let decoys = [space.join("outside"), tmp.path().join("outside")];
    for d in &decoys {
        std::fs::write(d, b"decoy\n").unwrap();
    }
    let passwd_before = std::fs::read("/etc/passwd").unwrap();

    let hostile_layers: Vec<(&str, Layer)> = vec![
        ("dot-dot", hostile::dot_dot_entry()),
        ("absolute", hostile::absolute_entry()),
        ("passwd-symlinks", hostile::symlink_to_etc_passwd()),
        ("symlinked-dir", hostile::symlinked_dir(&outside_dir)),
        ("hard-links", hostile::hard_link_outside()),
        ("devices", hostile::device_nodes_and_fifo()),
        ("setuid", hostile::setuid_files()),
    ];
    let good = ImageBuilder::new()
        .layer(Layer::build(
            vec![Entry::file("/index.html", "good image\n")],
            Compression::Gzip,
        ))
        .build();
    reg.push_image(&good, "good:v1").unwrap();
    for (name, layer) in &hostile_layers {
        let img = ImageBuilder::new().layer(layer.clone()).build();
        reg.push_image(&img, &format!("{name}:v1")).unwrap();
    }

    let cfg = config(json!({"allowAnyRepo": true}), &space);
    let (_space, app) = open(&cfg).await;
    for (name, _) in &hostile_layers {
        let image = reg.image_ref(&format!("{name}:v1"));
        let r = get(&app, &format!("/{image}/{SAFE_FILE}")).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text());
        assert_eq!(&r.body[..], SAFE_CONTENT, "{name}");
        // whatever the attack names is never the host's file
        for path in hostile::PASSWD_REQUESTS
            .iter()
            .chain(hostile::HARD_LINKS)
            .copied()
            .chain(["escape.txt", "etc/hostile", "evil/pwned", "dev/mem", "fifo"])
        {
            let r = get(&app, &format!("/{image}/{path}")).await;
            assert!(
                r.status == StatusCode::OK || r.status.is_client_error(),
                "{name} {path}: {}",
                r.status
            );
            assert!(
                r.body[..] != passwd_before[..] && !r.text().contains("root:x:0:0"),
                "{name} {path}: the host's /etc/passwd was served"
            );
        }
        // the other images are still served
        let r = get(&app, &format!("/{}/index.html", reg.image_ref("good:v1"))).await;
        assert_eq!(r.status, StatusCode::OK, "after {name}");
        assert_eq!(r.text(), "good image\n");
    }

    // Nothing was written outside the images' roots: every file holding the payload is in
    // the blobspace's images, the decoys and the outside directory are untouched.
    let images = space.join("images");
    for f in files_under(tmp.path()) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        if bytes.windows(PAYLOAD.len()).any(|w| w == PAYLOAD) {
            assert!(
                f.starts_with(&images),
                "payload outside the roots: {}",
                f.display()
            );
        }
    }
    for d in &decoys {
        assert_eq!(std::fs::read(d).unwrap(), b"decoy\n", "{}", d.display());
    }
    assert!(
        files_under(&outside_dir).is_empty(),
        "written through the symlinked directory"
    );
    assert!(!Path::new("/etc/hostile").exists());
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), passwd_before);
    // special files are not created, setuid bits are dropped
    assert!(
        special_files_under(&space).is_empty(),
        "{:?}",
        special_files_under(&space)
    );
    for f in files_under(&images) {
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&f).unwrap().permissions());
        assert_eq!(mode & 0o7000, 0, "{} keeps mode {mode:o}", f.display());
    }
}
