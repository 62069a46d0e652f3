//! End to end, the node setup: `registry-facade setup` writes a containerd `certs.d` tree and
//! `/etc/hosts` under a temporary host file system, and a REAL containerd reading that tree
//! (`ctr --hosts-dir`, what `config_path` is for the CRI) pulls the quickstart's composed image
//! by host name over TLS from the REAL facade binary, with no other flag.

mod e2e_common;

use std::process::Command;

use e2e_common::*;
use serde_json::json;

fn setup(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("setup")
        .args(args)
        .output()
        .expect("running registry-facade setup");
    assert!(
        out.status.success(),
        "setup {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn containerd_pulls_by_host_name_over_tls_after_setup() {
    let root = repo_root();
    let dir = tempfile::Builder::new()
        .prefix("rf-e2e-setup-")
        .tempdir()
        .unwrap();
    let tls = rf_testkit::tls::server_cert(dir.path());
    let mut cfg: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.join("examples/quickstart/config.json")).unwrap(),
    )
    .unwrap();
    cfg["registry"]["port"] = json!(0);
    cfg["registry"]["store"] = json!(dir.path().join("store"));
    cfg["registry"]["tls"] = json!({"crt": tls.cert, "key": tls.key});
    cfg["readinessProbeAddr"] = json!("127.0.0.1:0");
    cfg["prometheusAddr"] = json!("127.0.0.1:0");
    let path = dir.path().join("config.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let facade = Facade::start_file(tempfile::tempdir().unwrap(), &path, &root, &[]);
    assert_eq!(facade.scheme, "https", "{}", facade.stdout());
    let port = facade.addr.rsplit(':').next().unwrap().to_string();

    let hostfs = dir.path().join("host");
    std::fs::create_dir_all(&hostfs).unwrap();
    let hostfs_s = hostfs.to_str().unwrap();
    let ca = tls.ca.to_str().unwrap();
    let args = [
        "--hostfs",
        hostfs_s,
        "--hostname",
        "localhost",
        "--port",
        &port,
        "--ca",
        ca,
    ];

    // A dry run says what it would write and writes nothing.
    let mut dry = args.to_vec();
    dry.push("--dry-run");
    let planned = setup(&dry);
    assert!(planned.contains("would create"), "{planned}");
    assert_eq!(
        std::fs::read_dir(&hostfs).unwrap().count(),
        0,
        "dry run wrote: {planned}"
    );

    let first = setup(&args);
    assert!(first.contains("3 file(s) written"), "{first}");
    assert_eq!(
        std::fs::read_to_string(hostfs.join("etc/hosts")).unwrap(),
        "127.0.0.1 localhost\n"
    );
    let again = setup(&args);
    assert!(again.contains("nothing to change"), "{again}");

    // The pull names the facade by host name and port only: https and the CA come from setup.
    let ctr = shared_containerd();
    let hosts_dir = hostfs.join("etc/containerd/certs.d");
    let image = format!("localhost:{port}/fixed/demo:latest");
    let pulled = ctr.ctr(&[
        "images",
        "pull",
        "--hosts-dir",
        hosts_dir.to_str().unwrap(),
        &image,
    ]);
    assert!(
        pulled.status.success(),
        "ctr pull {image}: {}\n{}",
        String::from_utf8_lossy(&pulled.stderr),
        facade.logs()
    );
    let greeting = ctr
        .run(&image, &[])
        .unwrap_or_else(|e| panic!("ctr run {image}: {e:#}\n{}", facade.logs()));
    assert!(
        greeting.starts_with("Hello from a workspace image composed by registry-facade"),
        "{greeting}"
    );

    // Without the setup's tree, ctr would speak plain HTTP to a loopback name: refused.
    let empty = tempfile::tempdir().unwrap();
    let refused = ctr.ctr(&[
        "images",
        "pull",
        "--hosts-dir",
        empty.path().to_str().unwrap(),
        &image,
    ]);
    assert!(!refused.status.success());
}

#[test]
fn setup_explains_itself_and_refuses_bad_input_clearly() {
    let help = Command::new(BIN)
        .args(["setup", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--hostname",
        "--hostfs",
        "--port",
        "31750",
        "--ca",
        "/usr/local/share/ca-certificates/gitpod-ca.crt",
        "--dry-run",
    ] {
        assert!(text.contains(flag), "{flag} missing from:\n{text}");
    }

    let hostfs = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("setup")
            .arg("--hostfs")
            .arg(hostfs.path())
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!err.contains("panicked"), "{err}");
        err
    };
    // A name that would climb out of certs.d.
    let err = run(&["--hostname", "../../x", "--ca", "/dev/null"]);
    assert!(err.contains("not a valid host name"), "{err}");
    // Gitpod's default CA path, absent here: named in the error.
    let err = run(&["--hostname", "localhost"]);
    assert!(err.contains("gitpod-ca.crt"), "{err}");
    let err = run(&["--hostname", "localhost", "--ca", "/dev/null"]);
    assert!(err.contains("no PEM certificate"), "{err}");
    assert_eq!(
        std::fs::read_dir(hostfs.path()).unwrap().count(),
        0,
        "nothing written on error"
    );
}
