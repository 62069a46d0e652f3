//! End to end, the command line of the real binary: help texts, `check-config`, and `run`
//! failing fast (naming the key) on bad configs.

mod e2e_common;

use std::time::Duration;

use e2e_common::*;

/// `run` on a bad config must give up well within this.
const FAIL_FAST: Duration = Duration::from_secs(10);

fn cwd() -> std::path::PathBuf {
    repo_root()
}

#[test]
fn help_explains_itself() {
    for args in [
        &["--help"][..],
        &["-h"],
        &["help"],
        &["run", "--help"],
        &["run", "-h"],
        &["help", "run"],
        &["check-config", "--help"],
        &["check-config", "-h"],
    ] {
        let out = run_to_exit(args, &cwd(), FAIL_FAST);
        let what = format!("registry-facade {}", args.join(" "));
        assert!(
            out.status.success(),
            "{what}: {}\n{}",
            out.status,
            out.stderr
        );
        let help = out.stdout.to_ascii_lowercase();
        assert!(
            help.contains("usage: registry-facade"),
            "{what}:\n{}",
            out.stdout
        );
        assert!(
            help.contains("config"),
            "{what} should mention the config file:\n{}",
            out.stdout
        );
        if args.contains(&"run") || args.contains(&"check-config") {
            assert!(
                out.stdout.contains("<CONFIG>") && help.contains("json configuration file"),
                "{what} should describe its CONFIG argument:\n{}",
                out.stdout
            );
        } else {
            for sub in ["run", "check-config"] {
                assert!(
                    help.contains(sub),
                    "{what} should list {sub}:\n{}",
                    out.stdout
                );
            }
        }
    }
    // the long help of `run` says how to find the port and which images exist
    let out = run_to_exit(&["run", "--help"], &cwd(), FAIL_FAST);
    assert!(
        out.stdout.contains("registry-facade listening on"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("fixed") && out.stdout.contains("remote"),
        "{}",
        out.stdout
    );
    // no subcommand: usage error, not a crash
    let out = run_to_exit(&[], &cwd(), FAIL_FAST);
    assert!(!out.status.success());
    assert!(
        out.stderr.to_ascii_lowercase().contains("usage"),
        "{}",
        out.stderr
    );
}

#[test]
fn check_config_accepts_the_quickstart_config() {
    let out = run_to_exit(
        &["check-config", "examples/quickstart/config.json"],
        &cwd(),
        FAIL_FAST,
    );
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "examples/quickstart/config.json: ok");
}

/// (config, the key the error must name)
fn bad_configs() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            r#"{"registry": {"port": 0, "fixedSpecFN": "s.json", "bogusKey": 1}}"#,
            "registry.bogusKey",
        ),
        (
            r#"{"registry": {"port": 0, "fixedSpecFN": "s.json"}, "dockerAuthh": "x"}"#,
            "dockerAuthh",
        ),
        (
            r#"{"registry": {"port": "5000", "fixedSpecFN": "s.json"}}"#,
            "registry.port",
        ),
        (
            r#"{"registry": {"port": 0, "fixedSpecFN": "s.json", "requireAuth": "yes"}}"#,
            "registry.requireAuth",
        ),
        (
            r#"{"registry": {"port": 0, "fixedSpecFN": "s.json", "staticLayer": [{"ref": "a.tgz", "type": "zip"}]}}"#,
            "registry.staticLayer[0].type",
        ),
        (
            r#"{"registry": {"port": 0, "remoteSpecProvider": [{"addr": 8080}]}}"#,
            "registry.remoteSpecProvider[0].addr",
        ),
        (
            r#"{"registry": {"port": 0, "fixedSpecFN": "s.json", "cacheTTL": "soon"}}"#,
            "registry.cacheTTL",
        ),
        (
            r#"{"registry": {"port": 0, "fixedSpecFN": "s.json", "specCache": {"maxEntries": -1}}}"#,
            "registry.specCache.maxEntries",
        ),
    ]
}

fn assert_names_key(what: &str, out: &Finished, key: &str) {
    assert!(!out.status.success(), "{what} must fail");
    assert!(
        out.stderr.contains(key),
        "{what}: the error should name {key}:\n{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("Stack backtrace") && out.stderr.lines().count() <= 3,
        "{what}: a config error is one message, not a backtrace:\n{}",
        out.stderr
    );
    assert!(
        !out.stdout.contains("listening"),
        "{what} must not start serving:\n{}",
        out.stdout
    );
}

#[test]
fn check_config_rejects_bad_configs_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (json, key)) in bad_configs().into_iter().enumerate() {
        let path = dir.path().join(format!("bad-{i}.json"));
        std::fs::write(&path, json).unwrap();
        let out = run_to_exit(&["check-config", path.to_str().unwrap()], &cwd(), FAIL_FAST);
        assert_names_key(&format!("check-config {json}"), &out, key);
    }
    // not JSON at all, and a missing file
    let path = dir.path().join("not-json.json");
    std::fs::write(&path, "registry: {port: 0}").unwrap();
    let out = run_to_exit(&["check-config", path.to_str().unwrap()], &cwd(), FAIL_FAST);
    assert!(!out.status.success());
    assert!(out.stderr.contains("not-json.json"), "{}", out.stderr);
    let out = run_to_exit(
        &["check-config", "/nonexistent/config.json"],
        &cwd(),
        FAIL_FAST,
    );
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("/nonexistent/config.json"),
        "{}",
        out.stderr
    );
}

#[test]
fn run_fails_fast_on_bad_configs_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut cases: Vec<(String, String)> = bad_configs()
        .into_iter()
        .map(|(j, k)| (j.to_string(), k.to_string()))
        .collect();
    // valid structure, but what it points to is wrong: found at startup, not at the first pull
    let specs = dir.path().join("specs.json");
    std::fs::write(&specs, "{}").unwrap();
    cases.push((
        serde_json::json!({"registry": {"port": 0, "listenAddress": "127.0.0.1",
            "fixedSpecFN": dir.path().join("missing-specs.json")}})
        .to_string(),
        "registry.fixedSpecFN".into(),
    ));
    cases.push((
        serde_json::json!({"registry": {"port": 0, "listenAddress": "127.0.0.1", "fixedSpecFN": specs,
            "staticLayer": [{"ref": dir.path().join("missing.tar.gz"), "type": "file"}]}})
        .to_string(),
        "registry.staticLayer".into(),
    ));
    // the port is taken
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    cases.push((
        serde_json::json!({"registry": {"port": taken.local_addr().unwrap().port(),
            "listenAddress": "127.0.0.1", "fixedSpecFN": specs}})
        .to_string(),
        "registry.port".into(),
    ));
    for (i, (json, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("run-{i}.json"));
        std::fs::write(&path, json).unwrap();
        let out = run_to_exit(&["run", path.to_str().unwrap()], &cwd(), FAIL_FAST);
        assert_names_key(&format!("run {json}"), &out, key);
    }
}

/// A valid config serves until SIGTERM, then exits cleanly and promptly.
#[test]
fn run_serves_until_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let specs = dir.path().join("specs.json");
    std::fs::write(&specs, "{}").unwrap();
    let mut facade = Facade::start(&serde_json::json!({
        "registry": {"port": 0, "listenAddress": "127.0.0.1", "fixedSpecFN": specs},
        "prometheusAddr": "127.0.0.1:0",
    }));
    assert_eq!(
        rf_testkit::procs::http_status(&facade.addr, "/v2/"),
        Some(200)
    );
    // an id the fixed provider does not know
    assert_eq!(
        rf_testkit::procs::http_status(&facade.addr, "/v2/fixed/nope/manifests/latest"),
        Some(404)
    );
    let status = facade.terminate(FAIL_FAST);
    assert!(
        status.success(),
        "exit after SIGTERM: {status}\n{}",
        facade.logs()
    );
    assert!(
        facade.stderr().contains("shutting down"),
        "{}",
        facade.logs()
    );
}
