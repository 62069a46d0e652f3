//! Client authentication through the real router: Gitpod's `requireAuth` (empty and unparsable
//! Basic values refused), `registry.auth.htpasswd` (bcrypt entries, the file re-read when it
//! changes) and `registry.auth.token` (RS256 JWTs: expiry, issuer, audience, signature and the
//! `repository:<name>:pull` scope), each with the challenge clients expect; and error bodies that
//! carry a request id instead of what happened inside.

mod common;

use axum::http::StatusCode;
use base64::Engine as _;
use common::*;
use registry_facade::app::App;
use rf_testkit::{write_htpasswd, ImageBuilder, JwtIssuer};
use serde_json::{json, Value};
use tempfile::TempDir;

const GOOD: &str = "/v2/fixed/good/manifests/latest";

fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// An app serving `fixed/good` (an OCI layout) with `extra` merged into `registry`.
async fn app(dir: &TempDir, extra: Value) -> App {
    let img = ImageBuilder::new().env("PATH=/bin").build();
    let specs = json!({"good": {"baseRef": layout_ref(dir.path(), "good", &img)}});
    app_for(fixed_config(&write_specs(dir.path(), specs), extra)).await
}

async fn status_with(app: &App, uri: &str, auth: Option<&str>) -> Resp {
    let mut headers = vec![("accept", ACCEPT_ALL)];
    if let Some(a) = auth {
        headers.push(("authorization", a));
    }
    get_with(app, uri, &headers).await
}

#[track_caller]
fn assert_challenge(r: &Resp, expected: &str) {
    assert_oci_error(r, 401, "UNAUTHORIZED");
    assert_eq!(r.header("www-authenticate"), Some(expected), "{}", r.text());
    assert_eq!(
        r.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
}

#[tokio::test]
async fn require_auth_refuses_empty_and_unparsable_basic() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&dir, json!({"requireAuth": true})).await;
    let challenge = "Basic realm=\"registry-facade\"";
    for uri in ["/v2/", GOOD] {
        // skopeo answers a challenge without credentials with `Basic Og==` (":")
        for bad in [
            None,
            Some("Basic Og=="),
            Some("Basic !!!"),
            Some("Basic dXNlcg=="),
        ] {
            let r = status_with(&app, uri, bad).await;
            assert_challenge(&r, challenge);
        }
        // Gitpod's meaning: any user and password
        let r = status_with(&app, uri, Some(&basic("anyone", "anything"))).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.text());
    }
}

#[tokio::test]
async fn htpasswd_checks_bcrypt_entries_and_rereads_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("htpasswd");
    write_htpasswd(&file, &[("alice", "alice-pw")]).unwrap();
    let app = app(&dir, json!({"auth": {"htpasswd": file}})).await;
    let challenge = "Basic realm=\"registry-facade\"";
    for uri in ["/v2/", GOOD, "/v2/fixed/good/tags/list"] {
        let r = status_with(&app, uri, Some(&basic("alice", "alice-pw"))).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.text());
        for bad in [
            None,
            Some(basic("alice", "wrong")),
            Some(basic("bob", "alice-pw")),
            Some(basic("", "")),
            Some("Basic !!!".to_string()),
            Some("Bearer x.y.z".to_string()),
        ] {
            let r = status_with(&app, uri, bad.as_deref()).await;
            assert_challenge(&r, challenge);
        }
    }
    // the file changes: bob is added, alice removed; no restart
    write_htpasswd(&file, &[("bob", "bob-pw")]).unwrap();
    let r = status_with(&app, GOOD, Some(&basic("bob", "bob-pw"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = status_with(&app, GOOD, Some(&basic("alice", "alice-pw"))).await;
    assert_challenge(&r, challenge);
    // a file that disappears keeps the users read before (a ConfigMap swap is never empty)
    std::fs::remove_file(&file).unwrap();
    let r = status_with(&app, GOOD, Some(&basic("bob", "bob-pw"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test]
async fn htpasswd_file_must_exist_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let specs = write_specs(dir.path(), json!({}));
    let cfg = json!({"registry": {"port": 0, "fixedSpecFN": specs, "auth": {"htpasswd": dir.path().join("nope")}}});
    let cfg = registry_facade::config::Config::from_json(cfg.to_string().as_bytes()).unwrap();
    let err = registry_facade::app::build(&cfg)
        .await
        .err()
        .expect("must fail");
    let err = format!("{err:#}");
    assert!(err.contains("registry.auth.htpasswd"), "{err}");
}

const SERVICE: &str = "facade.test";
const ISSUER: &str = "facade-test-issuer";
const REALM: &str = "http://127.0.0.1:9/token";

fn token_config(issuer: &JwtIssuer) -> Value {
    json!({"auth": {"token": {"realm": REALM, "service": SERVICE, "issuer": ISSUER,
                               "rootCertBundle": issuer.cert_path()}}})
}

#[tokio::test]
async fn token_auth_checks_signature_claims_and_scope() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = JwtIssuer::new(ISSUER, SERVICE).unwrap();
    let app = app(&dir, token_config(&issuer)).await;
    let bearer = |t: String| format!("Bearer {t}");
    let base = format!("Bearer realm=\"{REALM}\",service=\"{SERVICE}\"");
    let scoped = format!("{base},scope=\"repository:fixed/good:pull\"");

    // no token: challenges, with the scope where the path names a repository
    assert_challenge(&status_with(&app, "/v2/", None).await, &base);
    assert_challenge(&status_with(&app, GOOD, None).await, &scoped);
    // Basic credentials are no token
    let r = status_with(&app, GOOD, Some(&basic("u", "p"))).await;
    assert_challenge(&r, &scoped);

    let good = bearer(issuer.token(&[("fixed/good", &["pull"])], 300));
    for uri in ["/v2/", GOOD, "/v2/fixed/good/tags/list"] {
        let r = status_with(&app, uri, Some(&good)).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.text());
    }
    // `/v2/` takes any valid token, as distribution
    let none = bearer(issuer.token(&[], 300));
    assert_eq!(
        status_with(&app, "/v2/", Some(&none)).await.status,
        StatusCode::OK
    );

    let invalid = format!("{scoped},error=\"invalid_token\"");
    let other_key = JwtIssuer::new(ISSUER, SERVICE).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = |iss: &str, aud: &str| {
        json!({"iss": iss, "aud": aud, "exp": now + 300,
               "access": [{"type": "repository", "name": "fixed/good", "actions": ["pull"]}]})
    };
    for (what, token) in [
        ("expired", issuer.token(&[("fixed/good", &["pull"])], -3600)),
        (
            "another key",
            other_key.token(&[("fixed/good", &["pull"])], 300),
        ),
        (
            "wrong issuer",
            issuer.sign(&claims("someone-else", SERVICE)),
        ),
        (
            "wrong audience",
            issuer.sign(&claims(ISSUER, "other.service")),
        ),
        (
            "not yet valid",
            issuer.sign(&{
                let mut c = claims(ISSUER, SERVICE);
                c["nbf"] = json!(now + 3600);
                c
            }),
        ),
        ("garbage", "not-a-jwt".to_string()),
        ("unsigned", {
            let t = issuer.token(&[("fixed/good", &["pull"])], 300);
            let (signed, _) = t.rsplit_once('.').unwrap();
            format!("{signed}.")
        }),
    ] {
        let r = status_with(&app, GOOD, Some(&bearer(token))).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.text());
        assert_challenge(&r, &invalid);
        let r = status_with(&app, "/v2/", Some(&bearer(issuer.token(&[], -3600)))).await;
        assert_challenge(&r, &format!("{base},error=\"invalid_token\""));
    }

    // the scope is the repository the router serves, percent-decoded as it decodes it
    let r = status_with(&app, "/v2/fixed%2Fgood/manifests/latest", Some(&good)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let encoded = bearer(issuer.token(&[("fixed%2Fgood", &["pull"])], 300));
    let r = status_with(&app, "/v2/fixed%2Fgood/manifests/latest", Some(&encoded)).await;
    assert_challenge(&r, &format!("{scoped},error=\"insufficient_scope\""));

    // a valid token for another repository, or without pull: insufficient scope (401, as
    // distribution)
    let insufficient = format!("{scoped},error=\"insufficient_scope\"");
    for token in [
        issuer.token(&[("fixed/other", &["pull"])], 300),
        issuer.token(&[("fixed/good", &["push"])], 300),
    ] {
        let r = status_with(&app, GOOD, Some(&bearer(token))).await;
        assert_challenge(&r, &insufficient);
    }
}

/// With `registry.prefix` the scope is the repository as clients name it (after `/v2/`).
#[tokio::test]
async fn token_scope_with_a_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = JwtIssuer::new(ISSUER, SERVICE).unwrap();
    let mut extra = token_config(&issuer);
    extra["prefix"] = json!("/facade");
    let app = app(&dir, extra).await;
    let r = status_with(&app, "/facade/v2/fixed/good/manifests/latest", None).await;
    assert_challenge(
        &r,
        &format!(
            "Bearer realm=\"{REALM}\",service=\"{SERVICE}\",scope=\"repository:fixed/good:pull\""
        ),
    );
    let t = format!("Bearer {}", issuer.token(&[("fixed/good", &["pull"])], 300));
    let r = status_with(&app, "/facade/v2/fixed/good/manifests/latest", Some(&t)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

/// Errors from inside (here an upstream that refuses connections, and an unusable spec) carry
/// a standard code, a generic message and a request id, never the upstream's address or the
/// OS error.
#[tokio::test]
async fn error_bodies_carry_a_request_id_not_the_inside() {
    let dir = tempfile::tempdir().unwrap();
    let closed = rf_testkit::free_port();
    let img = ImageBuilder::new().env("PATH=/bin").build();
    let specs = json!({
        "good": {"baseRef": layout_ref(dir.path(), "good", &img)},
        "down": {"baseRef": format!("127.0.0.1:{closed}/secret-base:latest")},
        "broken": {"baseRef": "oci:/nonexistent/layout/dir:latest"},
        "invalid": {"baseRef": "127.0.0.1:1/UPPER-secret:latest"},
    });
    let app = app_for(fixed_config(&write_specs(dir.path(), specs), json!({}))).await;
    for (uri, status) in [
        ("/v2/fixed/down/manifests/latest", 503),
        ("/v2/fixed/broken/manifests/latest", 0),
        // was the non-standard SPEC_INVALID
        ("/v2/fixed/invalid/manifests/latest", 502),
    ] {
        let r = get_with(&app, uri, &[("accept", ACCEPT_ALL)]).await;
        if status != 0 {
            assert_eq!(r.status.as_u16(), status, "{}", r.text());
        }
        assert!(r.status.as_u16() >= 400, "{uri}: {}", r.text());
        let body = r.text();
        for secret in [
            closed.to_string().as_str(),
            "127.0.0.1",
            "secret-base",
            "refused",
            "nonexistent",
            "os error",
            "UPPER",
        ] {
            assert!(
                !body.contains(secret),
                "{uri}: {secret:?} in the body {body}"
            );
        }
        let v = r.json();
        let code = v["errors"][0]["code"].as_str().unwrap().to_string();
        assert!(
            [
                "UNKNOWN",
                "UNAVAILABLE",
                "MANIFEST_UNKNOWN",
                "NAME_UNKNOWN",
                "BLOB_UNKNOWN",
                "DENIED",
                "TOOMANYREQUESTS"
            ]
            .contains(&code.as_str()),
            "{code}"
        );
        let id = v["errors"][0]["detail"]["requestId"].as_str().unwrap();
        assert_eq!(r.header("x-request-id"), Some(id), "{body}");
        assert!(id.len() >= 16, "{id}");
    }
    // every response has an id, successful ones too, and ids differ
    let a = get(&app, "/v2/").await;
    let b = get(&app, "/v2/").await;
    let (a, b) = (
        a.header("x-request-id").unwrap(),
        b.header("x-request-id").unwrap(),
    );
    assert_ne!(a, b);
}

/// ES256 tokens of the testkit's Python token server (python-jwt, the key's certificate in
/// `x5c`), as distribution takes them: JWS `r || s` signatures verified against the bundle.
#[tokio::test]
async fn es256_tokens_of_another_issuer_implementation() {
    let server = tokio::task::spawn_blocking(|| rf_testkit::TokenServer::start("u", "p"))
        .await
        .unwrap()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let app = app(
        &dir,
        json!({"auth": {"token": {"realm": server.realm(), "service": rf_testkit::TokenServer::SERVICE,
                                   "issuer": rf_testkit::TokenServer::ISSUER,
                                   "rootCertBundle": server.cert_path()}}}),
    )
    .await;
    let fetch = |scope: &'static str| {
        let url = format!(
            "{}?service={}&scope={scope}",
            server.realm(),
            rf_testkit::TokenServer::SERVICE
        );
        tokio::task::spawn_blocking(move || {
            let (status, body) = rf_testkit::curl_get(&url);
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            let v: Value = serde_json::from_slice(&body).unwrap();
            format!("Bearer {}", v["token"].as_str().unwrap())
        })
    };
    let good = fetch("repository:fixed/good:pull").await.unwrap();
    let r = status_with(&app, GOOD, Some(&good)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let other = fetch("repository:fixed/other:pull").await.unwrap();
    let r = status_with(&app, GOOD, Some(&other)).await;
    assert_oci_error(&r, 401, "UNAUTHORIZED");
    // one bit of the signature flipped
    let (signed, sig) = good.rsplit_once('.').unwrap();
    let mut sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .unwrap();
    sig[10] ^= 1;
    let tampered = format!(
        "{signed}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig)
    );
    let r = status_with(&app, GOOD, Some(&tampered)).await;
    assert_oci_error(&r, 401, "UNAUTHORIZED");
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .ends_with("error=\"invalid_token\""));
}
