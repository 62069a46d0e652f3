//! End to end, the facade's own client authentication with the real binary and real clients:
//! htpasswd (skopeo `--creds`, `ctr --user`, ctr through a `hosts.toml` with an Authorization
//! header, podman `--creds`), Bearer tokens from a loopback token server (RS256 JWTs), Gitpod's
//! `requireAuth`, and error bodies that keep the inside in the log. Logs at debug level must
//! never carry a credential.

mod e2e_common;

use std::process::Command;

use base64::Engine as _;
use e2e_common::*;
use rf_testkit::procs::Podman;
use rf_testkit::{write_htpasswd, JwtTokenServer, Registry, RegistryAuth};
use serde_json::{json, Value};

const USER: &str = "ws-puller";
/// Distinctive, so that any occurrence in a log is a leak.
const PASS: &str = "Client-pw-5d2a-never-log-me";
const SERVICE: &str = "facade.e2e";
const ISSUER: &str = "facade-e2e-issuer";

/// A facade on a seeded anonymous upstream with `auth` merged into `registry`, logging at debug.
fn facade_with(work: &std::path::Path, registry: &Registry, auth: Value) -> Facade {
    let fx = Fixture::get();
    let mut cfg = fx.facade_config(work, &registry.addr(), None, None, false);
    if let Value::Object(m) = auth {
        for (k, v) in m {
            cfg["registry"][k] = v;
        }
    }
    Facade::start_with(&cfg, &[("RUST_LOG", "debug")])
}

/// `curl -s -i [-H authorization]`: (status, headers, body).
fn curl(url: &str, authorization: Option<&str>) -> (u16, String, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-i", "--noproxy", "*", "--max-time", "60"]);
    if let Some(a) = authorization {
        cmd.args(["-H", &format!("Authorization: {a}")]);
    }
    let out = cmd.arg(url).output().expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
}

#[track_caller]
fn assert_401(facade: &Facade, path: &str, authorization: Option<&str>, challenge: &str) {
    let (status, head, body) = curl(&format!("http://{}{path}", facade.addr), authorization);
    assert_eq!(status, 401, "{path}: {head}{body}");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(v["errors"][0]["code"], "UNAUTHORIZED", "{body}");
    assert_eq!(
        header(&head, "www-authenticate"),
        Some(challenge.to_ascii_lowercase().as_str()),
        "{path}: {head}"
    );
}

fn assert_no_credentials(facade: &Facade, secrets: &[&str]) {
    let logs = facade.logs();
    assert!(
        facade.stderr().lines().count() > 5,
        "expected debug logs on stderr, got:\n{logs}"
    );
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"));
    let mut all = vec![PASS, basic.as_str(), "eyJ"];
    all.extend_from_slice(secrets);
    for secret in all {
        if let Some(pos) = logs.find(secret) {
            let line = logs[..pos].rsplit('\n').next().unwrap_or("");
            panic!("a credential ({secret:.8}...) appears in the facade's output, in the line starting: {line:?}");
        }
    }
}

fn skopeo_fails_401(args: &[&str], facade: &Facade) {
    let out = rf_testkit::skopeo(args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_ascii_lowercase();
    assert!(
        !out.status.success(),
        "skopeo {args:?} must fail\n{}",
        facade.logs()
    );
    assert!(
        stderr.contains("401")
            || stderr.contains("unauthorized")
            || stderr.contains("authentication required"),
        "skopeo {args:?} should report 401: {stderr}"
    );
}

#[test]
fn htpasswd_clients_pull_with_credentials_and_are_refused_without() {
    let fx = Fixture::get();
    let registry = Registry::start(RegistryAuth::None).unwrap();
    fx.seed(&registry);
    let work = tempfile::tempdir().unwrap();
    let htpasswd = work.path().join("htpasswd");
    write_htpasswd(&htpasswd, &[(USER, PASS)]).unwrap();
    let facade = facade_with(
        work.path(),
        &registry,
        json!({"auth": {"htpasswd": htpasswd}}),
    );
    let creds = format!("{USER}:{PASS}");
    let docker_ref = facade.docker_ref("fixed", "ws");

    // skopeo --creds
    assert_inspect(&facade, &docker_ref, &["--creds", &creds], "amd64");
    let dest = tempfile::tempdir().unwrap();
    skopeo_ok(
        &[
            "copy",
            "-q",
            "--src-tls-verify=false",
            "--src-creds",
            &creds,
            &docker_ref,
            &format!("dir:{}", dest.path().display()),
        ],
        &facade,
    );
    // missing and wrong credentials
    skopeo_fails_401(&["inspect", "--tls-verify=false", &docker_ref], &facade);
    let wrong = format!("{USER}:wrong-Pw-ab12");
    skopeo_fails_401(
        &[
            "inspect",
            "--tls-verify=false",
            "--creds",
            &wrong,
            &docker_ref,
        ],
        &facade,
    );
    let challenge = "Basic realm=\"registry-facade\"";
    for path in ["/v2/", "/v2/fixed/ws/manifests/latest"] {
        assert_401(&facade, path, None, challenge);
        let bad = base64::engine::general_purpose::STANDARD.encode(&wrong);
        assert_401(&facade, path, Some(&format!("Basic {bad}")), challenge);
    }

    // ctr --user, then the image runs
    let ctr = shared_containerd();
    let image_ref = facade.image_ref("fixed", "ws");
    ctr.pull(&image_ref, &["--user", &creds])
        .unwrap_or_else(|e| panic!("ctr pull --user: {e:#}\n{}", facade.logs()));
    let out = ctr
        .run(&image_ref, &["/bin/sh", "-c", &run_script()])
        .unwrap_or_else(|e| panic!("ctr run: {e:#}\n{}", facade.logs()));
    assert!(out.ends_with("ide-hello ran\n"), "{out}");
    assert!(
        ctr.pull(&facade.image_ref("fixed", "ws-multi"), &[])
            .is_err(),
        "ctr without credentials must fail"
    );

    // ctr through a hosts.toml whose header carries the credentials (containerd has no
    // credential keys in hosts.toml; a static Authorization header is its way)
    let hosts = work.path().join("certs.d");
    let host_dir = hosts.join(&facade.addr);
    std::fs::create_dir_all(&host_dir).unwrap();
    let basic = base64::engine::general_purpose::STANDARD.encode(&creds);
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "server = \"http://{a}\"\n\n[host.\"http://{a}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  [host.\"http://{a}\".header]\n    authorization = \"Basic {basic}\"\n",
            a = facade.addr
        ),
    )
    .unwrap();
    ctr.pull(
        &facade.image_ref("fixed", "ws-docker"),
        &["--hosts-dir", &hosts.to_string_lossy()],
    )
    .unwrap_or_else(|e| panic!("ctr pull --hosts-dir: {e:#}\n{}", facade.logs()));

    // podman --creds
    let podman = Podman::new().expect("setting up podman");
    podman
        .pull(&image_ref, &["--creds", &creds])
        .unwrap_or_else(|e| panic!("podman pull --creds: {e:#}\n{}", facade.logs()));
    let out = podman
        .run(
            &image_ref,
            &[
                "/bin/sh",
                "-c",
                "cat /ide/bin/ide-hello >/dev/null && echo ok",
            ],
        )
        .unwrap_or_else(|e| panic!("podman run: {e:#}\n{}", facade.logs()));
    assert_eq!(out, "ok\n");
    let denied = Podman::new().expect("setting up podman");
    assert!(
        denied.pull(&image_ref, &[]).is_err(),
        "podman without credentials must fail"
    );

    assert_no_credentials(&facade, &[&basic, "wrong-Pw-ab12"]);
}

#[test]
fn token_auth_with_a_loopback_token_server() {
    let fx = Fixture::get();
    let registry = Registry::start(RegistryAuth::None).unwrap();
    fx.seed(&registry);
    let tokens = JwtTokenServer::start(ISSUER, SERVICE, USER, PASS).unwrap();
    let work = tempfile::tempdir().unwrap();
    let facade = facade_with(
        work.path(),
        &registry,
        json!({"auth": {"token": {"realm": tokens.realm(), "service": SERVICE, "issuer": ISSUER,
                                  "rootCertBundle": tokens.issuer().cert_path()}}}),
    );
    let creds = format!("{USER}:{PASS}");
    let docker_ref = facade.docker_ref("fixed", "ws");

    // skopeo (GET /token with Basic), ctr (POST /token, password grant), podman
    assert_inspect(&facade, &docker_ref, &["--creds", &creds], "amd64");
    skopeo_fails_401(&["inspect", "--tls-verify=false", &docker_ref], &facade);
    let ctr = shared_containerd();
    let image_ref = facade.image_ref("fixed", "ws");
    ctr.pull(&image_ref, &["--user", &creds])
        .unwrap_or_else(|e| panic!("ctr pull --user: {e:#}\n{}", facade.logs()));
    let podman = Podman::new().expect("setting up podman");
    podman
        .pull(
            &facade.image_ref("fixed", "ws-docker"),
            &["--creds", &creds],
        )
        .unwrap_or_else(|e| panic!("podman pull --creds: {e:#}\n{}", facade.logs()));

    // challenges: without a token, with an expired one, with one for another repository
    let realm = format!("Bearer realm=\"{}\",service=\"{SERVICE}\"", tokens.realm());
    let scoped = format!("{realm},scope=\"repository:fixed/ws:pull\"");
    let manifest = "/v2/fixed/ws/manifests/latest";
    assert_401(&facade, "/v2/", None, &realm);
    assert_401(&facade, manifest, None, &scoped);
    let issuer = tokens.issuer();
    let expired = issuer.token(&[("fixed/ws", &["pull"])], -3600);
    assert_401(
        &facade,
        manifest,
        Some(&format!("Bearer {expired}")),
        &format!("{scoped},error=\"invalid_token\""),
    );
    let other = issuer.token(&[("fixed/ws-docker", &["pull"])], 300);
    assert_401(
        &facade,
        manifest,
        Some(&format!("Bearer {other}")),
        &format!("{scoped},error=\"insufficient_scope\""),
    );
    let good = issuer.token(&[("fixed/ws", &["pull"])], 300);
    let (status, _, body) = curl(
        &format!("http://{}{manifest}", facade.addr),
        Some(&format!("Bearer {good}")),
    );
    assert_eq!(status, 200, "{body}");

    assert_no_credentials(&facade, &[&good, &expired]);
}

/// Gitpod's `requireAuth`: skopeo without credentials answers the challenge with `Basic Og==`
/// (an empty user and password), which is refused; any real credentials pass.
#[test]
fn require_auth_refuses_skopeo_without_credentials() {
    let fx = Fixture::get();
    let registry = Registry::start(RegistryAuth::None).unwrap();
    fx.seed(&registry);
    let work = tempfile::tempdir().unwrap();
    let facade = facade_with(work.path(), &registry, json!({"requireAuth": true}));
    let docker_ref = facade.docker_ref("fixed", "ws");
    skopeo_fails_401(&["inspect", "--tls-verify=false", &docker_ref], &facade);
    let challenge = "Basic realm=\"registry-facade\"";
    for bad in ["Basic Og==", "Basic !!!"] {
        assert_401(
            &facade,
            "/v2/fixed/ws/manifests/latest",
            Some(bad),
            challenge,
        );
    }
    assert_inspect(
        &facade,
        &docker_ref,
        &["--creds", &format!("{USER}:{PASS}")],
        "amd64",
    );
    assert_no_credentials(&facade, &[]);
}

/// An upstream that refuses connections: the client reads a standard code, a generic message
/// and a request id; the log line with that id names the upstream and the OS error.
#[test]
fn refused_upstream_details_go_to_the_log_only() {
    let closed = rf_testkit::free_port();
    let work = tempfile::tempdir().unwrap();
    let specs = work.path().join("specs.json");
    std::fs::write(
        &specs,
        json!({"down": {"baseRef": format!("127.0.0.1:{closed}/base:latest")}}).to_string(),
    )
    .unwrap();
    let cfg = json!({"registry": {"port": 0, "listenAddress": "127.0.0.1", "fixedSpecFN": specs,
                                  "upstream": {"maxAttempts": 1}}});
    let facade = Facade::start(&cfg);
    let (status, head, body) = curl(
        &format!("http://{}/v2/fixed/down/manifests/latest", facade.addr),
        None,
    );
    assert!(matches!(status, 502 | 503), "{status}: {body}");
    for secret in ["127.0.0.1", &closed.to_string(), "refused", "os error"] {
        assert!(
            !body.to_ascii_lowercase().contains(secret),
            "{secret:?} in {body}"
        );
    }
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["errors"][0]["code"], "UNAVAILABLE", "{body}");
    let id = v["errors"][0]["detail"]["requestId"].as_str().unwrap();
    assert_eq!(header(&head, "x-request-id"), Some(id), "{head}");
    let logs = facade.stderr();
    let line = logs
        .lines()
        .find(|l| l.contains(id))
        .unwrap_or_else(|| panic!("no log line with request id {id}:\n{logs}"));
    assert!(
        line.contains(&format!("127.0.0.1:{closed}"))
            && line.to_ascii_lowercase().contains("refused"),
        "the log line should name the upstream and the error: {line}"
    );
}
