//! Against real CNCF distribution registries on 127.0.0.1 (plain, htpasswd, token auth),
//! started by the testkit.

mod common;

use std::time::Duration;

use common::{docker_config_json, drain, fast_config, test_image};
use futures::future::join_all;
use rf_oci::{media, Digest, ImageRef};
use rf_testkit::{ImageBuilder, ManifestStyle, Registry, RegistryAuth};
use rf_upstream::{Upstream, UpstreamConfig, UpstreamError};

fn d(s: &str) -> Digest {
    s.parse().unwrap()
}

fn image_ref(reg: &Registry, repo_and_tag: &str) -> ImageRef {
    reg.image_ref(repo_and_tag).parse().unwrap()
}

#[tokio::test]
async fn plain_registry_manifests_configs_and_blobs() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let img = test_image("plain");
    reg.push_image(&img, "base:latest").unwrap();
    let docker = ImageBuilder::new()
        .env("STYLE=docker")
        .style(ManifestStyle::Docker)
        .build();
    reg.push_image(&docker, "docker:v1").unwrap();
    let up = Upstream::new(fast_config()).unwrap();
    let by_tag = image_ref(&reg, "base:latest");

    let m = up.fetch_manifest(&by_tag).await.unwrap();
    assert_eq!(m.bytes, img.manifest);
    assert_eq!(m.digest, d(&img.manifest_digest));
    assert_eq!(m.media_type, media::OCI_MANIFEST);

    let by_digest = by_tag.with_digest(m.digest.clone());
    let m2 = up.fetch_manifest(&by_digest).await.unwrap();
    assert_eq!(m2, m);

    for r in [&by_tag, &by_digest] {
        let head = up.head_manifest(r).await.unwrap();
        assert_eq!(head.digest, m.digest);
        assert_eq!(head.media_type, media::OCI_MANIFEST);
        assert_eq!(head.size, img.manifest.len() as u64);
    }

    let dm = up
        .fetch_manifest(&image_ref(&reg, "docker:v1"))
        .await
        .unwrap();
    assert_eq!(dm.media_type, media::DOCKER_MANIFEST);
    assert_eq!(dm.digest, d(&docker.manifest_digest));

    let cfg = up
        .fetch_blob_bytes(&by_tag, &d(&img.config_digest), 1 << 20)
        .await
        .unwrap();
    assert_eq!(cfg, img.config);
    let e = up
        .fetch_blob_bytes(&by_tag, &d(&img.config_digest), 16)
        .await
        .unwrap_err();
    assert!(matches!(e, UpstreamError::TooLarge { limit: 16 }), "{e}");

    let big = &img.layers[1];
    let blob = up.open_blob(&by_tag, &d(&big.digest), 0).await.unwrap();
    assert_eq!(blob.size, Some(big.size));
    let (bytes, chunks, err) = drain(blob).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(bytes.len(), big.blob.len());
    assert!(bytes == big.blob);
    assert!(chunks > 1);

    // Ranged: distribution answers 206; the remainder arrives.
    let offset = 1_000_001;
    let blob = up
        .open_blob(&by_tag, &d(&big.digest), offset)
        .await
        .unwrap();
    assert_eq!(blob.size, Some(big.size));
    let (bytes, _, err) = drain(blob).await;
    assert!(err.is_none(), "{err:?}");
    assert!(bytes == big.blob[offset as usize..]);

    for e in [
        up.fetch_manifest(&image_ref(&reg, "base:nope"))
            .await
            .unwrap_err(),
        up.fetch_manifest(&image_ref(&reg, "nope:latest"))
            .await
            .unwrap_err(),
        up.head_manifest(&image_ref(&reg, "base:nope"))
            .await
            .unwrap_err(),
        up.open_blob(&by_tag, &Digest::sha256_of(b"absent"), 0)
            .await
            .unwrap_err(),
    ] {
        assert!(matches!(e, UpstreamError::NotFound { .. }), "{e}");
        assert!(!e.is_transient());
    }
}

#[tokio::test]
async fn htpasswd_registry_with_docker_config() {
    let reg = Registry::start(RegistryAuth::htpasswd("alice", "s3cret-pw:with-colon")).unwrap();
    let img = test_image("basic");
    reg.push_image(&img, "app/base:latest").unwrap();
    let image = image_ref(&reg, "app/base:latest");
    let tmp = tempfile::tempdir().unwrap();

    // No docker config at all: anonymous is refused.
    let anon = Upstream::new(fast_config()).unwrap();
    let e = anon.fetch_manifest(&image).await.unwrap_err();
    assert!(matches!(e, UpstreamError::Unauthorized { .. }), "{e}");
    assert!(!e.is_transient());

    // A config path that does not exist: anonymous, no failure to start.
    let missing = Upstream::new(UpstreamConfig {
        docker_auth: Some(tmp.path().join("missing.json")),
        ..fast_config()
    })
    .unwrap();
    let e = missing.fetch_manifest(&image).await.unwrap_err();
    assert!(matches!(e, UpstreamError::Unauthorized { .. }), "{e}");

    let good = tmp.path().join("good.json");
    std::fs::write(
        &good,
        docker_config_json(&reg.addr(), "alice", "s3cret-pw:with-colon"),
    )
    .unwrap();
    let up = Upstream::new(UpstreamConfig {
        docker_auth: Some(good),
        ..fast_config()
    })
    .unwrap();
    let m = up.fetch_manifest(&image).await.unwrap();
    assert_eq!(m.digest, d(&img.manifest_digest));
    let cfg = up
        .fetch_blob_bytes(&image, &d(&img.config_digest), 1 << 20)
        .await
        .unwrap();
    assert_eq!(cfg, img.config);
    let (bytes, _, err) = drain(
        up.open_blob(&image, &d(&img.layers[1].digest), 0)
            .await
            .unwrap(),
    )
    .await;
    assert!(err.is_none());
    assert!(bytes == img.layers[1].blob);

    let bad = tmp.path().join("bad.json");
    std::fs::write(
        &bad,
        docker_config_json(
            &format!("http://{}", reg.addr()),
            "alice",
            "wrong-password-xyz",
        ),
    )
    .unwrap();
    let up = Upstream::new(UpstreamConfig {
        docker_auth: Some(bad),
        ..fast_config()
    })
    .unwrap();
    let e = up.fetch_manifest(&image).await.unwrap_err();
    assert!(matches!(e, UpstreamError::Unauthorized { .. }), "{e}");
    for text in [e.to_string(), format!("{e:?}"), format!("{up:?}")] {
        assert!(!text.contains("wrong-password-xyz"), "{text}");
        assert!(!text.contains("s3cret-pw"), "{text}");
    }
}

#[tokio::test]
async fn with_credentials_uses_exactly_the_given_credentials() {
    let reg = Registry::start(RegistryAuth::htpasswd("dora", "in-memory-pw")).unwrap();
    let img = test_image("static");
    reg.push_image(&img, "base:latest").unwrap();
    let image = image_ref(&reg, "base:latest");
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("config.json");
    std::fs::write(
        &file,
        docker_config_json(&reg.addr(), "dora", "in-memory-pw"),
    )
    .unwrap();
    let base = Upstream::new(UpstreamConfig {
        docker_auth: Some(file),
        ..fast_config()
    })
    .unwrap();
    let basic = |u: &str, p: &str| rf_upstream::Credential::Basic {
        username: u.into(),
        password: p.into(),
    };

    // No credentials: anonymous, the base client's docker config is not consulted.
    let none = base.with_credentials([]);
    let e = none.fetch_manifest(&image).await.unwrap_err();
    assert!(matches!(e, UpstreamError::Unauthorized { .. }), "{e}");
    assert_eq!(none.config().docker_auth, None);

    // Wrong in-memory credentials win over the (right) file of the base client.
    let wrong = base.with_credentials([(reg.addr(), basic("dora", "not-it-pw"))]);
    let e = wrong.head_manifest(&image).await.unwrap_err();
    assert!(matches!(e, UpstreamError::Unauthorized { .. }), "{e}");
    for text in [e.to_string(), format!("{e:?}"), format!("{wrong:?}")] {
        assert!(!text.contains("not-it-pw"), "{text}");
    }

    // Right ones work, for manifests and blobs; other hosts get nothing.
    let right = base.with_credentials([
        (reg.addr(), basic("dora", "in-memory-pw")),
        ("other.example:5000".to_string(), basic("x", "y")),
    ]);
    let m = right.fetch_manifest(&image).await.unwrap();
    assert_eq!(m.digest, d(&img.manifest_digest));
    assert_eq!(right.head_manifest(&image).await.unwrap().digest, m.digest);
    let cfg = right
        .fetch_blob_bytes(&image, &d(&img.config_digest), 1 << 20)
        .await
        .unwrap();
    assert_eq!(cfg, img.config);

    // Deriving leaves the base client as it was.
    assert_eq!(base.fetch_manifest(&image).await.unwrap().digest, m.digest);
    let e = wrong.fetch_manifest(&image).await.unwrap_err();
    assert!(matches!(e, UpstreamError::Unauthorized { .. }), "{e}");
}

#[tokio::test]
async fn docker_config_is_reloaded_when_it_changes() {
    let reg = Registry::start(RegistryAuth::htpasswd("bob", "right")).unwrap();
    let img = test_image("reload");
    reg.push_image(&img, "base:latest").unwrap();
    let image = image_ref(&reg, "base:latest");
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("config.json");
    std::fs::write(&path, docker_config_json(&reg.addr(), "bob", "wrong")).unwrap();
    let up = Upstream::new(UpstreamConfig {
        docker_auth: Some(path.clone()),
        ..fast_config()
    })
    .unwrap();
    let e = up.fetch_manifest(&image).await.unwrap_err();
    assert!(matches!(e, UpstreamError::Unauthorized { .. }), "{e}");

    // A broken file keeps the last good (here: wrong) credentials, no crash.
    std::fs::write(&path, "{ not json").unwrap();
    let e = up.fetch_manifest(&image).await.unwrap_err();
    assert!(matches!(e, UpstreamError::Unauthorized { .. }), "{e}");

    std::fs::write(&path, docker_config_json(&reg.addr(), "bob", "right")).unwrap();
    // The file is re-checked at most once a second: poll until the change is seen.
    rf_testkit::wait_until_async(Duration::from_secs(10), "new credentials in use", || {
        let up = up.clone();
        let image = image.clone();
        async move { up.fetch_manifest(&image).await.is_ok() }
    })
    .await;
    let m = up.fetch_manifest(&image).await.unwrap();
    assert_eq!(m.digest, d(&img.manifest_digest));
}

/// Token requests the token server logged (one line per request) for exactly the pull scope
/// of `repo` (skopeo's pushes ask for `pull,push` and do not count).
fn token_requests(reg: &Registry, repo: &str) -> usize {
    let log = reg.token_server().unwrap().log_contents();
    let scope = format!("scope=repository%3A{}%3Apull", repo.replace('/', "%2F"));
    log.lines()
        .filter(|l| l.contains("GET /token?"))
        .filter(|l| {
            l.match_indices(&scope)
                .any(|(i, m)| matches!(l[i + m.len()..].chars().next(), Some('&' | ' ' | '"')))
        })
        .count()
}

#[tokio::test]
async fn token_registry_anonymous_pull_reuses_the_token() {
    let reg = Registry::start(RegistryAuth::token("carol", "tokenpass")).unwrap();
    let img = test_image("token");
    reg.push_image(&img, "team/base:latest").unwrap();
    reg.push_image(&img, "other:latest").unwrap();
    let image = image_ref(&reg, "team/base:latest");
    let up = Upstream::new(fast_config()).unwrap();
    // skopeo's pushes asked for tokens too (one of them also for `team/base:pull`, to mount
    // blobs across repositories): count from here.
    let base_before = token_requests(&reg, "team/base");
    let other_before = token_requests(&reg, "other");

    // Concurrent first requests share one token request.
    let results = join_all((0..6).map(|_| up.fetch_manifest(&image))).await;
    for r in results {
        assert_eq!(r.unwrap().digest, d(&img.manifest_digest));
    }
    let cfg = up
        .fetch_blob_bytes(&image, &d(&img.config_digest), 1 << 20)
        .await
        .unwrap();
    assert_eq!(cfg, img.config);
    let (bytes, _, err) = drain(
        up.open_blob(&image, &d(&img.layers[0].digest), 0)
            .await
            .unwrap(),
    )
    .await;
    assert!(err.is_none());
    assert!(bytes == img.layers[0].blob);
    up.head_manifest(&image).await.unwrap();
    assert_eq!(
        token_requests(&reg, "team/base") - base_before,
        1,
        "{}",
        reg.token_server().unwrap().log_contents()
    );

    // Another repository needs its own scope: one more token, fetched up front.
    let other = image_ref(&reg, "other:latest");
    up.fetch_manifest(&other).await.unwrap();
    up.fetch_manifest(&other).await.unwrap();
    assert_eq!(token_requests(&reg, "other") - other_before, 1);
    // A clone shares the cache.
    up.clone().fetch_manifest(&image).await.unwrap();
    assert_eq!(token_requests(&reg, "team/base") - base_before, 1);
    // The registry itself served the requests.
    assert!(reg
        .log_contents()
        .contains("/v2/team/base/manifests/latest"));
}

#[tokio::test]
async fn token_registry_with_credentials() {
    let reg = Registry::start(RegistryAuth::token("dave", "tok:pw")).unwrap();
    let img = test_image("tokencreds");
    reg.push_image(&img, "base:latest").unwrap();
    let image = image_ref(&reg, "base:latest");
    let tmp = tempfile::tempdir().unwrap();

    let good = tmp.path().join("good.json");
    std::fs::write(&good, docker_config_json(&reg.addr(), "dave", "tok:pw")).unwrap();
    let up = Upstream::new(UpstreamConfig {
        docker_auth: Some(good),
        ..fast_config()
    })
    .unwrap();
    let m = up.fetch_manifest(&image).await.unwrap();
    assert_eq!(m.digest, d(&img.manifest_digest));
    let log = reg.token_server().unwrap().log_contents();
    assert!(!log.contains("tok:pw"));

    // An identity (refresh) token is exchanged with an OAuth2 POST. This token server only
    // knows the password grant and answers others with an anonymous (pull) token.
    let identity = tmp.path().join("identity.json");
    std::fs::write(
        &identity,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"PHRva2VuPjo=","identitytoken":"refresh-secret"}}}}}}"#,
            reg.addr()
        ),
    )
    .unwrap();
    let up = Upstream::new(UpstreamConfig {
        docker_auth: Some(identity),
        ..fast_config()
    })
    .unwrap();
    let m = up.fetch_manifest(&image).await.unwrap();
    assert_eq!(m.digest, d(&img.manifest_digest));
    let log = reg.token_server().unwrap().log_contents();
    assert!(log.contains("\"POST /token"), "{log}");
    assert!(!log.contains("refresh-secret"));

    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, docker_config_json(&reg.addr(), "dave", "nope-secret")).unwrap();
    let up = Upstream::new(UpstreamConfig {
        docker_auth: Some(bad),
        ..fast_config()
    })
    .unwrap();
    let e = up.fetch_manifest(&image).await.unwrap_err();
    assert!(matches!(e, UpstreamError::Unauthorized { .. }), "{e}");
    assert!(!e.to_string().contains("nope-secret"));
}
