//! End to end, authenticated upstreams: CNCF distribution with htpasswd (Basic) and with token
//! (Bearer) auth; the real `registry-facade` gets the credentials from a docker `config.json`
//! (`dockerAuth`), composes with fixed and remote specs, and skopeo and containerd pull and run
//! the result. The credentials must never show up in the facade's output (logs at debug level).

mod e2e_common;

use std::collections::HashMap;

use base64::Engine as _;
use e2e_common::*;
use rf_testkit::{Registry, RegistryAuth};

const USER: &str = "facade-puller";
/// Distinctive, so that any occurrence in a log is a leak.
const PASS: &str = "Pw-7c1e9f-never-log-me";

fn run_authenticated(auth: RegistryAuth) {
    let fx = Fixture::get();
    let registry = Registry::start(auth).unwrap();
    fx.seed(&registry);
    let specs = SpecServer::start(HashMap::from([(
        "ws-1".to_string(),
        fx.spec(&registry.addr(), "base"),
    )]));
    let work = tempfile::tempdir().unwrap();
    let docker_auth = write_docker_auth(work.path(), &registry.addr(), USER, PASS);
    let cfg = fx.facade_config(
        work.path(),
        &registry.addr(),
        Some(&specs.addr),
        Some(&docker_auth),
        false,
    );
    // debug logs: a leak at any level counts
    let facade = Facade::start_with(&cfg, &[("RUST_LOG", "debug")]);
    let ctr = shared_containerd();
    for (provider, id) in [("fixed", "ws"), ("remote", "ws-1")] {
        let docker_ref = facade.docker_ref(provider, id);
        assert_inspect(&facade, &docker_ref, &[], "amd64");
        assert_copy(&facade, &docker_ref, "amd64");
        assert_ctr_run(&ctr, &facade, &facade.image_ref(provider, id));
    }

    // the upstream saw the facade's requests as the configured user
    let upstream_log = registry.log_contents();
    assert!(
        upstream_log.contains(&format!("auth.user.name={USER}"))
            || upstream_log.contains(&format!("auth.user.name=\"{USER}\"")),
        "the upstream registry never saw an authenticated request by {USER}"
    );

    assert_no_credentials(&facade);
}

fn assert_no_credentials(facade: &Facade) {
    let logs = facade.logs();
    assert!(
        facade.stderr().lines().count() > 5,
        "expected debug logs on stderr, got:\n{logs}"
    );
    for line in facade.stderr().lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| v.is_object()),
            "stderr is not JSON lines: {line:?}"
        );
    }
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"));
    for (what, secret) in [
        ("the password", PASS),
        ("the Basic credentials", basic.as_str()),
        // a JWT (base64 of `{"`) would be a bearer token
        ("a bearer token", "eyJ"),
    ] {
        if let Some(pos) = logs.find(secret) {
            let line = logs[..pos].rsplit('\n').next().unwrap_or("");
            panic!("{what} appears in the facade's output, in the line starting: {line:?}");
        }
    }
}

#[test]
fn htpasswd_upstream_with_docker_auth() {
    run_authenticated(RegistryAuth::htpasswd(USER, PASS));
}

#[test]
fn token_upstream_with_docker_auth() {
    run_authenticated(RegistryAuth::token(USER, PASS));
}

/// Without credentials an htpasswd upstream refuses the facade, and the client hears so
/// (instead of, say, an empty image); with wrong ones too, and the wrong password is not logged.
/// Correcting the dockerAuth file while the facade runs makes pulls work.
#[test]
fn htpasswd_upstream_refuses_missing_or_wrong_credentials() {
    let fx = Fixture::get();
    let registry = Registry::start(RegistryAuth::htpasswd(USER, PASS)).unwrap();
    fx.seed(&registry);
    let work = tempfile::tempdir().unwrap();
    let wrong = "Wrong-pass-31b7-never-log-me";
    let bad_auth = write_docker_auth(work.path(), &registry.addr(), USER, wrong);
    for docker_auth in [None, Some(bad_auth.as_path())] {
        let cfg = fx.facade_config(work.path(), &registry.addr(), None, docker_auth, false);
        let facade = Facade::start_with(&cfg, &[("RUST_LOG", "debug")]);
        let out = rf_testkit::skopeo(&[
            "inspect",
            "--tls-verify=false",
            &facade.docker_ref("fixed", "ws"),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr).to_ascii_lowercase();
        assert!(
            !out.status.success(),
            "pull without valid upstream credentials must fail\n{}",
            facade.logs()
        );
        assert!(
            stderr.contains("502"),
            "skopeo should report the facade's 502 (docker_auth {docker_auth:?}): {stderr}"
        );
        // the body says why: OCI error code DENIED; which upstream refused is in the log under
        // the body's request id, not in the body (issue 10)
        let (status, body) = curl_get(&format!(
            "http://{}/v2/fixed/ws/manifests/latest",
            facade.addr
        ));
        assert_eq!(status, 502, "{body}");
        let err: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(err["errors"][0]["code"], "DENIED", "{body}");
        assert!(
            !body.contains(&registry.addr()),
            "the body names the upstream: {body}"
        );
        let id = err["errors"][0]["detail"]["requestId"].as_str().unwrap();
        let logs = facade.logs();
        assert!(
            logs.lines()
                .any(|l| l.contains(id) && l.contains(&registry.addr())),
            "no log line with request id {id} naming the upstream:\n{logs}"
        );
        assert!(
            !body.contains(wrong),
            "the wrong password is echoed: {body}"
        );
        assert!(
            !facade.logs().contains(wrong),
            "the wrong password appears in the facade's output"
        );
        // the facade keeps serving
        assert_eq!(
            rf_testkit::procs::http_status(&facade.addr, "/v2/"),
            Some(200)
        );
        if docker_auth.is_some() {
            // dockerAuth is reloaded when it changes: fixing the file fixes the pulls,
            // without a restart (failed compositions are not cached)
            write_docker_auth(work.path(), &registry.addr(), USER, PASS);
            let docker_ref = facade.docker_ref("fixed", "ws");
            rf_testkit::wait_until(
                std::time::Duration::from_secs(15),
                "pulls to succeed with the corrected dockerAuth",
                || {
                    rf_testkit::skopeo(&["inspect", "--tls-verify=false", &docker_ref])
                        .status
                        .success()
                },
            );
            assert_inspect(&facade, &docker_ref, &[], "amd64");
            assert_no_credentials(&facade);
        }
    }
}
