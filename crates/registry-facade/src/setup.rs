//! `registry-facade setup`: wires containerd on a node to the facade (Gitpod's `cmd/setup.go`).
//!
//! It writes `<hostfs>/etc/containerd/certs.d/<hostname>:<port>/hosts.toml` and `ca.crt` beside
//! it, and adds `127.0.0.1 <hostname>` to `<hostfs>/etc/hosts` when that name is missing.
//! Everything is planned first (pure: current contents in, wanted contents out), so a second run
//! and `--dry-run` can tell what would change without writing anything.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Gitpod's default for `--ca`: the CA its installer puts on every node.
pub const DEFAULT_CA: &str = "/usr/local/share/ca-certificates/gitpod-ca.crt";
/// Gitpod's host port of the facade DaemonSet.
pub const DEFAULT_PORT: u16 = 31750;

/// What `setup` is asked to do.
#[derive(Debug, Clone)]
pub struct SetupOptions {
    /// The name containerd pulls by (`<hostname>:<port>/remote/...`).
    pub hostname: String,
    /// Where the node's root file system is mounted (`/` on the node itself).
    pub hostfs: PathBuf,
    /// The facade's TLS port on the node.
    pub port: u16,
    /// The CA certificate (PEM) that signed the facade's certificate.
    pub ca: PathBuf,
    /// Print what would change, write nothing.
    pub dry_run: bool,
}

/// Why `setup` stopped.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The host name cannot be a DNS name (it also names a directory, so `/` or `..` never pass).
    #[error("--hostname {0:?} is not a valid host name (letters, digits, '-' and '.', labels of 1-63 characters)")]
    InvalidHostname(String),
    /// The port is 0.
    #[error("--port must be between 1 and 65535")]
    InvalidPort,
    /// The CA file cannot be read.
    #[error("reading the CA certificate {path}: {source}")]
    ReadCa {
        /// The `--ca` path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The CA file holds no PEM certificate.
    #[error("{0} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NotPem(PathBuf),
    /// A file on the host cannot be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file on the host cannot be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// What happens to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// It does not exist yet.
    Create,
    /// It exists with other contents.
    Update,
    /// It already holds what it should.
    Unchanged,
}

/// One file `setup` manages: its path and the contents it should have.
#[derive(Debug, Clone)]
pub struct FileChange {
    /// The path under `hostfs`.
    pub path: PathBuf,
    /// The wanted contents.
    pub contents: Vec<u8>,
    /// What writing it does.
    pub action: Action,
    /// A one-line description for the report (e.g. the line added to /etc/hosts).
    pub what: String,
}

/// The directory containerd reads for `<hostname>:<port>` (under `hostfs`).
pub fn host_dir(hostfs: &Path, hostname: &str, port: u16) -> PathBuf {
    hostfs
        .join("etc/containerd/certs.d")
        .join(format!("{hostname}:{port}"))
}

/// Checks that `name` is a DNS host name; it becomes part of a path, so this also keeps the
/// files inside `certs.d`.
pub fn validate_hostname(name: &str) -> Result<(), SetupError> {
    let bad = || SetupError::InvalidHostname(name.to_string());
    if name.is_empty() || name.len() > 253 {
        return Err(bad());
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Err(bad());
        }
    }
    Ok(())
}

/// The `hosts.toml` that sends pulls of `<hostname>:<port>` to `https://<hostname>:<port>`,
/// trusting `ca.crt` beside it. containerd resolves a relative `ca` against the directory of the
/// `hosts.toml`, so the file is right whether it is read on the node or through a `hostfs` mount.
pub fn hosts_toml(hostname: &str, port: u16) -> String {
    format!(
        "# Written by `registry-facade setup`: containerd pulls {hostname}:{port} from the registry facade over TLS.\n\
         server = \"https://{hostname}:{port}\"\n\
         \n\
         [host.\"https://{hostname}:{port}\"]\n  \
         capabilities = [\"pull\", \"resolve\"]\n  \
         ca = \"ca.crt\"\n"
    )
}

/// Whether a hosts(5) file maps `name` on a non-comment line (a whole name, compared without
/// case as DNS does; the address is not checked: a node that maps the name elsewhere on purpose
/// is left alone).
pub fn hosts_has_name(hosts: &str, name: &str) -> bool {
    hosts.lines().any(|line| {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_whitespace();
        fields.next().is_some() && fields.any(|n| n.eq_ignore_ascii_case(name))
    })
}

/// `hosts` with `127.0.0.1 <name>` appended, or `None` when the name is already there.
pub fn hosts_with_name(hosts: &str, name: &str) -> Option<String> {
    if hosts_has_name(hosts, name) {
        return None;
    }
    let mut out = hosts.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!("127.0.0.1 {name}\n"));
    Some(out)
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, SetupError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SetupError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn change(path: PathBuf, contents: Vec<u8>, what: String) -> Result<FileChange, SetupError> {
    let action = match read_optional(&path)? {
        None => Action::Create,
        Some(current) if current == contents => Action::Unchanged,
        Some(_) => Action::Update,
    };
    Ok(FileChange {
        path,
        contents,
        action,
        what,
    })
}

/// Works out the three files and what writing them would change; writes nothing.
pub fn plan(opts: &SetupOptions) -> Result<Vec<FileChange>, SetupError> {
    validate_hostname(&opts.hostname)?;
    if opts.port == 0 {
        return Err(SetupError::InvalidPort);
    }
    let ca = std::fs::read(&opts.ca).map_err(|source| SetupError::ReadCa {
        path: opts.ca.clone(),
        source,
    })?;
    if !String::from_utf8_lossy(&ca).contains("-----BEGIN CERTIFICATE-----") {
        return Err(SetupError::NotPem(opts.ca.clone()));
    }
    let dir = host_dir(&opts.hostfs, &opts.hostname, opts.port);
    let mut changes = vec![
        change(
            dir.join("hosts.toml"),
            hosts_toml(&opts.hostname, opts.port).into_bytes(),
            format!("containerd pulls {}:{} over TLS", opts.hostname, opts.port),
        )?,
        change(
            dir.join("ca.crt"),
            ca,
            format!("the CA from {}", opts.ca.display()),
        )?,
    ];
    let hosts_path = opts.hostfs.join("etc/hosts");
    let current = read_optional(&hosts_path)?;
    let text = String::from_utf8_lossy(current.as_deref().unwrap_or_default()).into_owned();
    let line = format!("127.0.0.1 {}", opts.hostname);
    changes.push(match hosts_with_name(&text, &opts.hostname) {
        Some(new) => FileChange {
            path: hosts_path,
            contents: new.into_bytes(),
            action: if current.is_some() {
                Action::Update
            } else {
                Action::Create
            },
            what: format!("adds `{line}`"),
        },
        None => FileChange {
            contents: current.unwrap_or_default(),
            path: hosts_path,
            action: Action::Unchanged,
            what: format!("already maps {}", opts.hostname),
        },
    });
    Ok(changes)
}

/// Writes `contents` to `path` through a temp file in the same directory and a rename, so a
/// reader (containerd, the resolver) never sees half a file.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), SetupError> {
    let err = |source| SetupError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    // Init containers of two pods on one node can both be pid 1: the time makes the name unique,
    // and create_new never writes into another run's temp file.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.rf-setup-{}-{nanos}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    match std::fs::rename(&tmp, path) {
        Ok(()) => Ok(()),
        // A file that is itself a mount point (a container's /etc/hosts) cannot be replaced;
        // writing it in place is the only way left.
        Err(e) if e.raw_os_error() == Some(16 /* EBUSY */) => {
            let _ = std::fs::remove_file(&tmp);
            std::fs::write(path, contents).map_err(err)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(err(e))
        }
    }
}

/// Plans, writes (unless `dry_run`) and reports each file on `out`. Returns the changes.
pub fn run(
    opts: &SetupOptions,
    out: &mut dyn std::io::Write,
) -> Result<Vec<FileChange>, SetupError> {
    let changes = plan(opts)?;
    let pending = changes
        .iter()
        .filter(|c| c.action != Action::Unchanged)
        .count();
    for c in &changes {
        let verb = match (c.action, opts.dry_run) {
            (Action::Unchanged, _) => "unchanged",
            (Action::Create, true) => "would create",
            (Action::Update, true) => "would update",
            (Action::Create, false) => "created",
            (Action::Update, false) => "updated",
        };
        if c.action != Action::Unchanged && !opts.dry_run {
            write_atomic(&c.path, &c.contents)?;
        }
        let _ = writeln!(out, "{verb} {}: {}", c.path.display(), c.what);
        if opts.dry_run && c.action != Action::Unchanged && c.path.ends_with("hosts.toml") {
            for line in String::from_utf8_lossy(&c.contents).lines() {
                let _ = writeln!(out, "    {line}");
            }
        }
    }
    let _ = if pending == 0 {
        writeln!(
            out,
            "nothing to change: containerd already pulls {}:{} from the facade",
            opts.hostname, opts.port
        )
    } else if opts.dry_run {
        writeln!(
            out,
            "dry run: {pending} file(s) would change, nothing written"
        )
    } else {
        writeln!(out, "{pending} file(s) written")
    };
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn opts(dir: &Path, dry_run: bool) -> SetupOptions {
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, PEM).unwrap();
        let hostfs = dir.join("host");
        std::fs::create_dir_all(&hostfs).unwrap();
        SetupOptions {
            hostname: "reg.example.test".into(),
            hostfs,
            port: DEFAULT_PORT,
            ca,
            dry_run,
        }
    }

    fn files(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = vec![];
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push((p.clone(), std::fs::read(&p).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    fn run_text(o: &SetupOptions) -> String {
        let mut out = vec![];
        run(o, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn writes_the_three_files_then_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let o = opts(tmp.path(), false);
        let first = run_text(&o);
        assert!(first.contains("3 file(s) written"), "{first}");
        let dir = o
            .hostfs
            .join("etc/containerd/certs.d/reg.example.test:31750");
        assert_eq!(
            std::fs::read_to_string(dir.join("hosts.toml")).unwrap(),
            hosts_toml("reg.example.test", 31750)
        );
        assert_eq!(std::fs::read_to_string(dir.join("ca.crt")).unwrap(), PEM);
        assert_eq!(
            std::fs::read_to_string(o.hostfs.join("etc/hosts")).unwrap(),
            "127.0.0.1 reg.example.test\n",
            "a missing /etc/hosts is created"
        );
        let before = files(&o.hostfs);
        let second = run_text(&o);
        assert!(second.contains("nothing to change"), "{second}");
        assert_eq!(files(&o.hostfs), before, "idempotent");
        assert!(
            before.iter().all(|(p, _)| !p
                .file_name()
                .unwrap()
                .to_string_lossy()
                .contains("rf-setup")),
            "no temp file left: {before:?}"
        );
    }

    #[test]
    fn dry_run_writes_nothing_and_says_what_would_change() {
        let tmp = tempfile::tempdir().unwrap();
        let o = opts(tmp.path(), true);
        std::fs::create_dir_all(o.hostfs.join("etc")).unwrap();
        std::fs::write(o.hostfs.join("etc/hosts"), "127.0.0.1 localhost").unwrap();
        let before = files(&o.hostfs);
        let text = run_text(&o);
        assert_eq!(files(&o.hostfs), before, "dry run wrote something");
        assert!(text.contains("would create"), "{text}");
        assert!(text.contains("would update"), "{text}");
        assert!(
            text.contains("server = \"https://reg.example.test:31750\""),
            "{text}"
        );
        assert!(text.contains("nothing written"), "{text}");
        // The real run then appends after the unterminated last line.
        run_text(&SetupOptions {
            dry_run: false,
            ..o.clone()
        });
        assert_eq!(
            std::fs::read_to_string(o.hostfs.join("etc/hosts")).unwrap(),
            "127.0.0.1 localhost\n127.0.0.1 reg.example.test\n"
        );
    }

    #[test]
    fn a_changed_ca_is_updated() {
        let tmp = tempfile::tempdir().unwrap();
        let o = opts(tmp.path(), false);
        run_text(&o);
        let other = PEM.replace("MIIB", "MIIC");
        std::fs::write(&o.ca, &other).unwrap();
        let text = run_text(&o);
        assert!(text.contains("updated"), "{text}");
        assert!(text.contains("1 file(s) written"), "{text}");
        let dir = host_dir(&o.hostfs, &o.hostname, o.port);
        assert_eq!(std::fs::read_to_string(dir.join("ca.crt")).unwrap(), other);
    }

    #[test]
    fn hosts_matching_rules() {
        let name = "reg.example.test";
        // a whole name on a mapping line, any position, any case
        assert!(hosts_has_name("10.0.0.1 a reg.example.test b\n", name));
        assert!(hosts_has_name("10.0.0.1\tREG.example.TEST\n", name));
        assert!(hosts_has_name(
            "127.0.0.1 reg.example.test # the facade",
            name
        ));
        // commented out, a longer or shorter name, an address only: missing
        assert!(!hosts_has_name("# 127.0.0.1 reg.example.test\n", name));
        assert!(!hosts_has_name("127.0.0.1 x # reg.example.test\n", name));
        assert!(!hosts_has_name("127.0.0.1 myreg.example.test\n", name));
        assert!(!hosts_has_name("127.0.0.1 reg.example.test.local\n", name));
        assert!(!hosts_has_name("127.0.0.1 reg.example\n", name));
        assert!(!hosts_has_name("reg.example.test\n", name));
        assert!(!hosts_has_name("", name));
        // Gitpod's regular expression treats '.' as any character: this must not match.
        assert!(!hosts_has_name("127.0.0.1 regxexample.test\n", name));
        assert_eq!(hosts_with_name("127.0.0.1 reg.example.test\n", name), None);
        assert_eq!(
            hosts_with_name("", name).as_deref(),
            Some("127.0.0.1 reg.example.test\n")
        );
        assert_eq!(
            hosts_with_name("::1 localhost", name).as_deref(),
            Some("::1 localhost\n127.0.0.1 reg.example.test\n")
        );
    }

    #[test]
    fn rejects_bad_input_with_typed_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let o = opts(tmp.path(), false);
        for bad in [
            "",
            "../etc",
            "a/b",
            "a..b",
            "-a",
            "a:1",
            "a b",
            &"x".repeat(64),
        ] {
            let err = plan(&SetupOptions {
                hostname: bad.to_string(),
                ..o.clone()
            })
            .unwrap_err();
            assert!(
                matches!(err, SetupError::InvalidHostname(_)),
                "{bad}: {err}"
            );
        }
        for good in ["localhost", "reg-1.example.test", "a"] {
            validate_hostname(good).unwrap();
        }
        let err = plan(&SetupOptions {
            port: 0,
            ..o.clone()
        })
        .unwrap_err();
        assert!(matches!(err, SetupError::InvalidPort), "{err}");
        let missing = tmp.path().join("nope.crt");
        let err = plan(&SetupOptions {
            ca: missing.clone(),
            ..o.clone()
        })
        .unwrap_err();
        assert!(matches!(err, SetupError::ReadCa { .. }), "{err}");
        assert!(err.to_string().contains("nope.crt"), "{err}");
        std::fs::write(&missing, "not a certificate").unwrap();
        let err = plan(&SetupOptions {
            ca: missing,
            ..o.clone()
        })
        .unwrap_err();
        assert!(matches!(err, SetupError::NotPem(_)), "{err}");
        // /etc/hosts that is a directory: a read error naming it, no panic
        std::fs::create_dir_all(o.hostfs.join("etc/hosts")).unwrap();
        let err = plan(&o).unwrap_err();
        assert!(matches!(err, SetupError::Read { .. }), "{err}");
        assert!(files(&o.hostfs).is_empty(), "nothing written on error");
    }
}
