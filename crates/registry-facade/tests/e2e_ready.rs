//! End to end, the real binary's `/ready`: 503 naming what fails while the spec provider is
//! down or the store is read-only, and 200 again once they are back.

mod e2e_common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e_common::*;
use rf_testkit::{free_port, wait_until};
use serde_json::{json, Value};

/// A probe follows a change within a few probe timeouts.
const FOLLOWS: Duration = Duration::from_secs(30);

/// `/ready`: status and JSON body.
fn ready(url: &str) -> (u16, Value) {
    let (status, body) = curl_get(url);
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn failing(body: &Value) -> Vec<String> {
    body["failing"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `dir` mounted read-only over itself until dropped (a disk turned read-only).
struct ReadOnly(PathBuf);

impl ReadOnly {
    fn mount(dir: &Path) -> ReadOnly {
        let run = |args: &[&str]| {
            let out = Command::new("mount").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "mount {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let d = dir.to_str().unwrap();
        run(&["--bind", d, d]);
        let guard = ReadOnly(dir.to_path_buf());
        run(&["-o", "remount,ro,bind", d]);
        guard
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn ready_tells_the_truth_about_the_spec_provider_and_the_store() {
    let specs = SpecServer::start(HashMap::new());
    let spec_addr = specs.addr.clone();
    let port = free_port();
    let cfg = json!({
        "registry": {
            "port": 0,
            "listenAddress": "127.0.0.1",
            "store": "$TMP/store",
            "remoteSpecProvider": [{"addr": spec_addr}],
            "specProviderTimeout": "1s",
        },
        "readinessProbeAddr": format!("127.0.0.1:{port}"),
    });
    let facade = Facade::start(&cfg);
    let url = format!("http://127.0.0.1:{port}/ready");
    wait_until(FOLLOWS, "ready at start", || ready(&url).0 == 200);
    let (_, body) = ready(&url);
    assert_eq!(body["ready"], true, "{body}");
    for check in ["registryListener", "store", "specProvider"] {
        assert_eq!(body["checks"][check], "ok", "{body}");
    }
    assert_eq!(curl_get(&format!("http://127.0.0.1:{port}/live")).0, 200);

    // the spec provider stops: not ready, and the body says why; back when it returns
    drop(specs);
    wait_until(FOLLOWS, "not ready without the spec provider", || {
        let (status, body) = ready(&url);
        status == 503 && failing(&body) == ["specProvider"]
    });
    let (_, body) = ready(&url);
    assert!(
        body["checks"]["specProvider"]
            .as_str()
            .unwrap()
            .contains("remote"),
        "{body}"
    );
    let specs = SpecServer::start_on(&spec_addr, HashMap::new());
    wait_until(FOLLOWS, "ready with the spec provider back", || {
        ready(&url).0 == 200
    });

    // the store's disk turns read-only: not ready; writable again: ready
    let store = facade.dir().join("store");
    let ro = ReadOnly::mount(&store);
    wait_until(FOLLOWS, "not ready with a read-only store", || {
        let (status, body) = ready(&url);
        status == 503 && failing(&body) == ["store"]
    });
    let (_, body) = ready(&url);
    assert!(
        body["checks"]["store"]
            .as_str()
            .unwrap()
            .contains("Read-only file system"),
        "{body}"
    );
    drop(ro);
    wait_until(FOLLOWS, "ready with the store writable again", || {
        ready(&url).0 == 200
    });
    drop(specs);
}

#[test]
fn ready_follows_redis_when_it_is_configured() {
    let redis = rf_testkit::Redis::start().unwrap();
    let port = free_port();
    let cfg = json!({
        "registry": {
            "port": 0,
            "listenAddress": "127.0.0.1",
            "fixedSpecFN": "examples/quickstart/spec.json",
            "redis": {"enabled": true, "singleHostAddr": redis.addr()},
        },
        "readinessProbeAddr": format!("127.0.0.1:{port}"),
    });
    let _facade = Facade::start(&cfg);
    let url = format!("http://127.0.0.1:{port}/ready");
    wait_until(FOLLOWS, "ready with redis", || ready(&url).0 == 200);
    assert_eq!(ready(&url).1["checks"]["redis"], "ok");

    // a stopped redis accepts connections (the kernel does) but never answers
    let signal = |sig: &str| {
        assert!(Command::new("kill")
            .args([sig, &redis.pid().to_string()])
            .status()
            .unwrap()
            .success());
    };
    signal("-STOP");
    let stopped = rf_testkit::try_wait_until(FOLLOWS, "not ready with redis stopped", || {
        let (status, body) = ready(&url);
        status == 503 && failing(&body) == ["redis"]
    });
    signal("-CONT");
    stopped.unwrap();
    wait_until(FOLLOWS, "ready with redis back", || ready(&url).0 == 200);

    // gone: refused
    let addr = redis.addr();
    drop(redis);
    wait_until(FOLLOWS, "not ready without redis", || {
        let (status, body) = ready(&url);
        status == 503
            && body["checks"]["redis"]
                .as_str()
                .is_some_and(|s| s.contains(&addr))
    });
}
