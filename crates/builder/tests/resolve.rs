//! ResolveBaseImage / ResolveWorkspaceImage through the REAL gRPC service (tonic over a
//! loopback socket) against REAL CNCF distribution registries on 127.0.0.1 (rf-testkit).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rf_api::builder::build_registry_auth::Mode;
use rf_api::builder::build_source::From as SourceFrom;
use rf_api::builder::image_builder_client::ImageBuilderClient;
use rf_api::builder::{
    BuildRegistryAuth, BuildRegistryAuthSelective, BuildRegistryAuthTotal, BuildSource,
    BuildSourceDockerfile, BuildSourceReference, BuildStatus, ResolveBaseImageRequest,
    ResolveWorkspaceImageRequest, ResolveWorkspaceImageResponse,
};
use rf_api::contentservice::workspace_initializer::Spec;
use rf_api::contentservice::{GitInitializer, WorkspaceInitializer};
use rf_builder::{BuilderService, BuilderState, Config};
use rf_testkit::serve_grpc;
use rf_testkit::{
    BuiltImage, Compression, Entry, ImageBuilder, IndexStyle, Layer, Platform, Registry,
    RegistryAuth,
};
use rf_upstream::UpstreamConfig;
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::Channel;
use tonic::Code;

type Client = ImageBuilderClient<Channel>;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn image(name: &str) -> BuiltImage {
    ImageBuilder::new()
        .env(&format!("IMAGE={name}"))
        .layer(Layer::build(
            vec![Entry::file("hello.txt", format!("hello from {name}\n"))],
            Compression::Gzip,
        ))
        .build()
}

fn image_for(name: &str, p: &Platform) -> BuiltImage {
    ImageBuilder::new()
        .platform(p)
        .env(&format!("IMAGE={name}"))
        .layer(Layer::build(
            vec![Entry::file("arch.txt", format!("{name}\n"))],
            Compression::Gzip,
        ))
        .build()
}

/// A config with base and workspace repositories on `repos_on`, plus `extra` top-level JSON.
fn config(repos_on: &str, orchestrator_extra: &str, extra: &str) -> Config {
    let json = format!(
        r#"{{"orchestrator": {{"baseImageRepository": "{repos_on}/base-images",
             "workspaceImageRepository": "{repos_on}/workspace-images"{orchestrator_extra}}}{extra}}}"#
    );
    Config::from_json(json.as_bytes()).unwrap()
}

/// Serves the builder over tonic on 127.0.0.1:0; returns a connected client and the state.
async fn serve(config: Config) -> (Client, Arc<BuilderState>) {
    let state = Arc::new(
        BuilderState::with_upstream_config(
            config,
            UpstreamConfig {
                initial_backoff: Duration::from_millis(5),
                max_attempts: 2,
                ..UpstreamConfig::default()
            },
        )
        .unwrap(),
    );
    let grpc = serve_grpc(Routes::new(
        BuilderService::new(state.clone()).into_server(),
    ))
    .await;
    let client = ImageBuilderClient::connect(grpc).await.unwrap();
    (client, state)
}

fn total(allow_all: bool, additional: &[(&str, &str)]) -> Option<BuildRegistryAuth> {
    Some(BuildRegistryAuth {
        mode: Some(Mode::Total(BuildRegistryAuthTotal { allow_all })),
        additional: additional
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    })
}

async fn resolve(
    client: &mut Client,
    r: &str,
    auth: Option<BuildRegistryAuth>,
) -> Result<String, tonic::Status> {
    client
        .resolve_base_image(ResolveBaseImageRequest {
            r#ref: r.into(),
            auth,
            use_retry_client: false,
        })
        .await
        .map(|r| r.into_inner().r#ref)
}

async fn resolve_ws(
    client: &mut Client,
    from: SourceFrom,
    auth: Option<BuildRegistryAuth>,
) -> Result<ResolveWorkspaceImageResponse, tonic::Status> {
    client
        .resolve_workspace_image(ResolveWorkspaceImageRequest {
            source: Some(BuildSource { from: Some(from) }),
            auth,
            use_retry_client: true,
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolves_tags_to_digests() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let img = image("single");
    reg.push_image(&img, "team/base:1.0").unwrap();
    let docker = ImageBuilder::new()
        .env("STYLE=docker")
        .style(rf_testkit::ManifestStyle::Docker)
        .build();
    reg.push_image(&docker, "docker-style:latest").unwrap();
    let (mut client, _) = serve(config(&reg.addr(), "", "")).await;
    let name = format!("{}/team/base", reg.addr());
    let want = format!("{name}@{}", img.manifest_digest);

    assert_eq!(
        resolve(&mut client, &format!("{name}:1.0"), None)
            .await
            .unwrap(),
        want
    );
    // Already pinned (with or without a tag): the same, tag dropped.
    assert_eq!(resolve(&mut client, &want, None).await.unwrap(), want);
    assert_eq!(
        resolve(
            &mut client,
            &format!("{name}:1.0@{}", img.manifest_digest),
            None
        )
        .await
        .unwrap(),
        want
    );
    // Missing tag defaults to latest; Docker schema2 manifests work the same.
    assert_eq!(
        resolve(&mut client, &reg.image_ref("docker-style"), None)
            .await
            .unwrap(),
        format!("{}/docker-style@{}", reg.addr(), docker.manifest_digest)
    );

    // Not found: a missing tag and a missing repository.
    for missing in [format!("{name}:2.0"), reg.image_ref("nope/nothing:1")] {
        let e = resolve(&mut client, &missing, None).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{missing}: {e:?}");
        assert!(e.message().contains(&missing), "{}", e.message());
    }
    // Malformed.
    for bad in ["", "Not/A:Ref:at all", "oci:/etc:latest", "x@sha256:123"] {
        let e = resolve(&mut client, bad, None).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e:?}");
    }
    // Nothing listens: Unavailable.
    let dead = format!("127.0.0.1:{}/x:1", rf_testkit::free_port());
    let e = resolve(&mut client, &dead, None).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_platform_index_resolves_to_the_configured_platform() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let arm = Platform::with_variant("linux", "arm64", "v8");
    let amd = Platform::new("linux", "amd64");
    let ppc = Platform::new("linux", "ppc64le");
    let arm_img = image_for("arm", &arm);
    let amd_img = image_for("amd", &amd);
    let ppc_img = image_for("ppc", &ppc);
    // amd64 is NOT the first entry.
    reg.push_index(
        &[
            (&arm_img, arm.clone()),
            (&ppc_img, ppc.clone()),
            (&amd_img, amd.clone()),
        ],
        IndexStyle::Oci,
        "multi:latest",
    )
    .unwrap();
    let list = reg
        .push_index(
            &[(&arm_img, arm.clone()), (&amd_img, amd.clone())],
            IndexStyle::DockerList,
            "list:latest",
        )
        .unwrap();
    let name = format!("{}/multi", reg.addr());

    let (mut client, _) = serve(config(&reg.addr(), "", "")).await;
    assert_eq!(
        resolve(&mut client, &format!("{name}:latest"), None)
            .await
            .unwrap(),
        format!("{name}@{}", amd_img.manifest_digest)
    );
    assert_eq!(
        resolve(&mut client, &reg.image_ref("list:latest"), None)
            .await
            .unwrap(),
        format!("{}/list@{}", reg.addr(), amd_img.manifest_digest)
    );
    // Pinned to the index digest: still the platform's child.
    assert_eq!(
        resolve(
            &mut client,
            &format!("{}/list@{}", reg.addr(), list.digest),
            None
        )
        .await
        .unwrap(),
        format!("{}/list@{}", reg.addr(), amd_img.manifest_digest)
    );

    let (mut arm_client, _) = serve(config(
        &reg.addr(),
        "",
        r#", "builder": {"platform": "linux/arm64"}"#,
    ))
    .await;
    assert_eq!(
        resolve(&mut arm_client, &format!("{name}:latest"), None)
            .await
            .unwrap(),
        format!("{name}@{}", arm_img.manifest_digest)
    );

    let (mut s390_client, _) = serve(config(
        &reg.addr(),
        "",
        r#", "builder": {"platform": "linux/s390x"}"#,
    ))
    .await;
    let e = resolve(&mut s390_client, &format!("{name}:latest"), None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    for p in [
        "linux/s390x",
        "linux/amd64",
        "linux/arm64/v8",
        "linux/ppc64le",
    ] {
        assert!(e.message().contains(p), "{}", e.message());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_registry_with_additional_credentials() {
    let password = "hunter2-Zq9:colon";
    let reg = Registry::start(RegistryAuth::htpasswd("builder", password)).unwrap();
    let img = image("private");
    reg.push_image(&img, "private/base:1").unwrap();
    // Base and workspace repositories on a loopback port nobody listens on.
    let nowhere = format!("127.0.0.1:{}", rf_testkit::free_port());
    let (mut client, _) = serve(config(&nowhere, "", "")).await;
    let r = reg.image_ref("private/base:1");
    let want = format!("{}/private/base@{}", reg.addr(), img.manifest_digest);
    let good = b64(&format!("builder:{password}"));
    let wrong = b64("builder:not-the-Pa55word");

    // Without credentials.
    for auth in [
        None,
        total(true, &[]),
        total(false, &[("other.example", &good)]),
    ] {
        let e = resolve(&mut client, &r, auth).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        assert!(e.message().contains("auth.additional"), "{}", e.message());
        assert!(e.message().contains(&reg.addr()), "{}", e.message());
    }

    // With additional credentials: used whatever the allow-list says (Gitpod's semantics).
    for auth in [
        total(true, &[(&reg.addr(), &good)]),
        total(false, &[(&reg.addr(), &good)]),
        Some(BuildRegistryAuth {
            mode: None,
            additional: [(reg.addr(), good.clone())].into(),
        }),
    ] {
        assert_eq!(resolve(&mut client, &r, auth).await.unwrap(), want);
    }
    // Missing image behind auth: NotFound, not Unauthenticated.
    let e = resolve(
        &mut client,
        &reg.image_ref("private/base:404"),
        total(false, &[(&reg.addr(), &good)]),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // Wrong credentials: Unauthenticated, and no secret in the message.
    let e = resolve(&mut client, &r, total(false, &[(&reg.addr(), &wrong)]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("refused"), "{}", e.message());
    for secret in ["not-the-Pa55word", &wrong, password, &good] {
        assert!(!e.message().contains(secret), "{}", e.message());
        assert!(!format!("{e:?}").contains(secret));
    }

    // ResolveWorkspaceImage with a ref source uses the same credentials for the base.
    let res = resolve_ws(
        &mut client,
        SourceFrom::Ref(BuildSourceReference { r#ref: r.clone() }),
        total(false, &[(&reg.addr(), &good)]),
    )
    .await;
    // The workspace repository is not reachable: the existence check fails, but only after
    // the base was resolved with the credentials.
    let e = res.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        e.message()
            .contains(&format!("{nowhere}/workspace-images:")),
        "{}",
        e.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_secret_is_used_only_for_allowed_registries() {
    let reg = Registry::start(RegistryAuth::htpasswd("installation", "ps-Secret-1")).unwrap();
    let img = image("pull-secret");
    reg.push_image(&img, "base-images:tag1").unwrap();
    reg.push_image(&img, "other/image:1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("config.json");
    std::fs::write(
        &secret,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#,
            reg.addr(),
            b64("installation:ps-Secret-1")
        ),
    )
    .unwrap();
    // The base image repository is on this registry; the workspace repository elsewhere.
    let json = format!(
        r#"{{"orchestrator": {{"baseImageRepository": "{}/base-images",
             "workspaceImageRepository": "ws.example/workspace-images",
             "pullSecretFile": {:?}}}}}"#,
        reg.addr(),
        secret.display().to_string()
    );
    let (mut client, _) = serve(Config::from_json(json.as_bytes()).unwrap()).await;
    let r = reg.image_ref("other/image:1");
    let want = format!("{}/other/image@{}", reg.addr(), img.manifest_digest);
    let selective = |base: bool, ws: bool, any_of: &[&str]| {
        Some(BuildRegistryAuth {
            mode: Some(Mode::Selective(BuildRegistryAuthSelective {
                allow_baserep: base,
                allow_workspacerep: ws,
                any_of: any_of.iter().map(|s| s.to_string()).collect(),
            })),
            additional: Default::default(),
        })
    };

    for denied in [
        None,
        total(false, &[]),
        selective(false, true, &["ws.example"]),
    ] {
        let e = resolve(&mut client, &r, denied).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    }
    for allowed in [
        total(true, &[]),
        selective(true, false, &[]),
        selective(false, false, &[&reg.addr()]),
    ] {
        assert_eq!(resolve(&mut client, &r, allowed).await.unwrap(), want);
    }
}

/// Gitpod's formula, written out independently of rf-builder.
fn gitpod_dockerfile_base_ref(
    repo: &str,
    remote: &str,
    target: &str,
    path: &str,
    ctx: &str,
) -> String {
    let text = format!(
        "CloneTarget: {target}\nContextPath: {ctx}\nDockerfilePath: {path}\nDockerfileVersion: \nRemoteURI: {remote}\nSource: git\n\n"
    );
    format!("{repo}:{}", sha256_hex(&text))
}

fn gitpod_workspace_ref(repo: &str, base_ref: &str) -> String {
    format!("{repo}:{}", sha256_hex(&format!("{base_ref}\n2\n")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_workspace_image_for_ref_and_dockerfile_sources() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let base = image("base");
    reg.push_image(&base, "library/base:3").unwrap();
    let (mut client, _) = serve(config(&reg.addr(), "", "")).await;
    let ws_repo = format!("{}/workspace-images", reg.addr());
    let tag_of = |r: &str| r.rsplit_once(':').unwrap().1.to_string();

    // Ref source: base_ref is the pinned base, ref its hash.
    let base_ref = format!("{}/library/base@{}", reg.addr(), base.manifest_digest);
    let want_ws = gitpod_workspace_ref(&ws_repo, &base_ref);
    let from_ref = SourceFrom::Ref(BuildSourceReference {
        r#ref: reg.image_ref("library/base:3"),
    });
    let res = resolve_ws(&mut client, from_ref.clone(), None)
        .await
        .unwrap();
    assert_eq!(res.base_ref, base_ref);
    assert_eq!(res.r#ref, want_ws);
    assert_eq!(res.status(), BuildStatus::Unknown);
    // Once the workspace image exists: done.
    reg.push_image(
        &image("ws-from-ref"),
        &format!("workspace-images:{}", tag_of(&want_ws)),
    )
    .unwrap();
    let res = resolve_ws(&mut client, from_ref, None).await.unwrap();
    assert_eq!(res.status(), BuildStatus::DoneSuccess);
    assert_eq!(res.r#ref, want_ws);
    assert_eq!(res.base_ref, base_ref);

    // Dockerfile source with a Git context: Gitpod's hashes.
    let from_file = SourceFrom::File(BuildSourceDockerfile {
        source: Some(WorkspaceInitializer {
            spec: Some(Spec::Git(GitInitializer {
                remote_uri: "https://github.com/AlexTugarev/test.repo".into(),
                clone_taget: "good-workspace-image".into(),
                ..Default::default()
            })),
        }),
        dockerfile_version: String::new(),
        dockerfile_path: ".gitpod.dockerfile".into(),
        context_path: ".".into(),
    });
    let base_ref = gitpod_dockerfile_base_ref(
        &format!("{}/base-images", reg.addr()),
        "https://github.com/AlexTugarev/test.repo",
        "good-workspace-image",
        ".gitpod.dockerfile",
        ".",
    );
    let want_ws = gitpod_workspace_ref(&ws_repo, &base_ref);
    let res = resolve_ws(&mut client, from_file.clone(), None)
        .await
        .unwrap();
    assert_eq!(res.base_ref, base_ref);
    assert_eq!(
        tag_of(&res.base_ref),
        "3efd79682470adfce9a2d4ddbc1a96e0ef592d0ca0b7c4b3be932a108cb9a4d4"
    );
    assert_eq!(res.r#ref, want_ws);
    assert_eq!(res.status(), BuildStatus::Unknown);
    reg.push_image(
        &image("ws-from-file"),
        &format!("workspace-images:{}", tag_of(&want_ws)),
    )
    .unwrap();
    let res = resolve_ws(&mut client, from_file, None).await.unwrap();
    assert_eq!(res.status(), BuildStatus::DoneSuccess);

    // A ref source whose base is missing: NotFound passes through.
    let e = resolve_ws(
        &mut client,
        SourceFrom::Ref(BuildSourceReference {
            r#ref: reg.image_ref("library/base:404"),
        }),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_existence_check_needs_the_pull_secret() {
    let reg = Registry::start(RegistryAuth::htpasswd("ws-user", "ws-Pass-7")).unwrap();
    let from_file = SourceFrom::File(BuildSourceDockerfile {
        source: Some(WorkspaceInitializer {
            spec: Some(Spec::Git(GitInitializer {
                remote_uri: "https://example.com/repo.git".into(),
                clone_taget: "main".into(),
                ..Default::default()
            })),
        }),
        dockerfile_path: "Dockerfile".into(),
        ..Default::default()
    });

    // No pull secret: Unauthenticated (Gitpod said Internal), also with `additional`
    // credentials, which the existence check does not use (as in Gitpod).
    let (mut client, _) = serve(config(&reg.addr(), "", "")).await;
    let additional = b64("ws-user:ws-Pass-7");
    for auth in [None, total(true, &[(&reg.addr(), &additional)])] {
        let e = resolve_ws(&mut client, from_file.clone(), auth)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        assert!(e.message().contains("pullSecretFile"), "{}", e.message());
        assert!(!e.message().contains("ws-Pass-7"), "{}", e.message());
    }

    // With the pull secret.
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("config.json");
    std::fs::write(
        &secret,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#,
            reg.addr(),
            additional
        ),
    )
    .unwrap();
    let extra = format!(r#", "pullSecretFile": {:?}"#, secret.display().to_string());
    let (mut client, _) = serve(config(&reg.addr(), &extra, "")).await;
    let res = resolve_ws(&mut client, from_file.clone(), None)
        .await
        .unwrap();
    assert_eq!(res.status(), BuildStatus::Unknown);
    let tag = res.r#ref.rsplit_once(':').unwrap().1.to_string();
    reg.push_image(&image("ws"), &format!("workspace-images:{tag}"))
        .unwrap();
    let res = resolve_ws(&mut client, from_file, None).await.unwrap();
    assert_eq!(res.status(), BuildStatus::DoneSuccess);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ref_cache_answers_public_refs_from_memory() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let private = Registry::start(RegistryAuth::htpasswd("p", "priv-pw")).unwrap();
    let v1 = image("v1");
    let v2 = image("v2");
    reg.push_image(&v1, "cached:latest").unwrap();
    private.push_image(&v1, "secret:latest").unwrap();
    let public_ref = reg.image_ref("cached:latest");
    let private_ref = private.image_ref("secret:latest");
    let extra = format!(
        r#", "refCache": {{"interval": "6h", "refs": ["{public_ref}", "{private_ref}", "{}"]}}"#,
        reg.image_ref("missing:latest")
    );
    let (mut client, state) = serve(config(&reg.addr(), "", &extra)).await;
    let refs = state.config.ref_cache.as_ref().unwrap().refs.clone();
    // Only the public, existing reference is cached.
    assert_eq!(state.resolver.refresh_precached(&refs).await, 1);

    // The tag moves: the cache answers the old digest until it is refreshed.
    reg.push_image(&v2, "cached:latest").unwrap();
    let old = format!("{}/cached@{}", reg.addr(), v1.manifest_digest);
    let new = format!("{}/cached@{}", reg.addr(), v2.manifest_digest);
    assert_eq!(resolve(&mut client, &public_ref, None).await.unwrap(), old);
    state.resolver.refresh_precached(&refs).await;
    assert_eq!(resolve(&mut client, &public_ref, None).await.unwrap(), new);
    // The private reference was not cached: it still needs credentials.
    let e = resolve(&mut client, &private_ref, None).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    // The background task can be started (and stopped).
    let handle = state.start_ref_cache().unwrap();
    handle.abort();
}

/// A loopback HTTP/1.1 peer that answers every request with 429 (distribution never rate
/// limits, so this is fault injection, not a stand-in for a registry). Returns its address.
async fn rate_limiting_peer() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = conn.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let answer = "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 0\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
                        if conn.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_upstream_is_unavailable() {
    let peer = rate_limiting_peer().await;
    let (mut client, _) = serve(config(&peer.to_string(), "", "")).await;
    let e = resolve(&mut client, &format!("{peer}/busy/image:1"), None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("too many requests"), "{}", e.message());
}
