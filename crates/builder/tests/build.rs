//! Build / Logs / ListBuilds through the REAL gRPC service with REAL buildah, REAL
//! distribution registries (rf-testkit) and a REAL git repository (a bare repo in a tempdir,
//! cloned over `file://`), all on 127.0.0.1.

use std::sync::Arc;

use rf_api::builder::build_source::From as SourceFrom;
use rf_api::builder::image_builder_client::ImageBuilderClient;
use rf_api::builder::{BuildRequest, BuildResponse, BuildSource, BuildStatus, LogsRequest};
use rf_api::contentservice::CloneTargetMode;
use rf_builder::context::git_dockerfile_source;
use rf_builder::{BuilderService, BuilderState, Config};
use rf_testkit::serve_grpc;
use rf_testkit::{busybox_image, git_repo, Registry, RegistryAuth};
use sha2::{Digest as _, Sha256};
use tokio_stream::StreamExt as _;
use tonic::service::Routes;
use tonic::transport::Channel;
use tonic::Code;

type Client = ImageBuilderClient<Channel>;

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

struct Env {
    reg: Registry,
    client: Client,
    state: Arc<BuilderState>,
    url: String,
    _dirs: Vec<tempfile::TempDir>,
}

async fn setup(files: impl FnOnce(&str) -> Vec<(&'static str, String)>) -> Env {
    rf_testkit::require_tool("buildah");
    rf_testkit::require_tool("git");
    let reg = Registry::start(RegistryAuth::None).unwrap();
    reg.push_image(&busybox_image().build(), "base:latest")
        .unwrap();
    let repo_dir = tempfile::tempdir().unwrap();
    let url = git_repo(repo_dir.path(), &files(&reg.addr()));
    let work = tempfile::tempdir().unwrap();
    let json = format!(
        r#"{{"orchestrator": {{"baseImageRepository": "{r}/base-images",
             "workspaceImageRepository": "{r}/workspace-images"}},
            "builder": {{"workDir": "{w}", "maxConcurrentBuilds": 2, "buildTimeout": "10m"}}}}"#,
        r = reg.addr(),
        w = work.path().display()
    );
    let config = Config::from_json(json.as_bytes()).unwrap();
    let state = Arc::new(BuilderState::new(config).unwrap());
    let grpc = serve_grpc(Routes::new(
        BuilderService::new(state.clone()).into_server(),
    ))
    .await;
    let client = ImageBuilderClient::connect(grpc).await.unwrap();
    Env {
        reg,
        client,
        state,
        url,
        _dirs: vec![repo_dir, work],
    }
}

fn request(url: &str, dockerfile: &str, force: bool) -> BuildRequest {
    BuildRequest {
        source: Some(BuildSource {
            from: Some(SourceFrom::File(git_dockerfile_source(
                url,
                CloneTargetMode::RemoteBranch,
                "main",
                dockerfile,
                ".",
            ))),
        }),
        force_rebuild: force,
        ..Default::default()
    }
}

async fn collect(
    mut s: tonic::Streaming<BuildResponse>,
    mut seen: Vec<BuildResponse>,
) -> Vec<BuildResponse> {
    while let Some(r) = s.next().await {
        seen.push(r.unwrap());
    }
    seen
}

async fn logs(client: &mut Client, req: LogsRequest) -> String {
    let mut s = client.logs(req).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend(c.unwrap().content);
    }
    String::from_utf8(out).unwrap()
}

fn expected_refs(reg: &str, url: &str, dockerfile: &str) -> (String, String) {
    let text = format!(
        "CloneTarget: main\nContextPath: .\nDockerfilePath: {dockerfile}\nDockerfileVersion: \nRemoteURI: {url}\nSource: git\n\n"
    );
    let base = format!("{reg}/base-images:{}", sha256_hex(&text));
    let ws = format!(
        "{reg}/workspace-images:{}",
        sha256_hex(&format!("{base}\n2\n"))
    );
    (base, ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerfile_from_git_builds_once_joins_and_rebuilds() {
    let mut env = setup(|reg| {
        vec![
            (
                "Dockerfile",
                format!(
                    "FROM {reg}/base\nRUN echo built > /built.txt\nCOPY hello.txt /hello.txt\n"
                ),
            ),
            ("hello.txt", "hello from git\n".to_string()),
        ]
    })
    .await;
    let (base, ws) = expected_refs(&env.reg.addr(), &env.url, "Dockerfile");

    // (a) running → done_success, refs per Gitpod's hashing.
    let rs = collect(
        env.client
            .build(request(&env.url, "Dockerfile", false))
            .await
            .unwrap()
            .into_inner(),
        vec![],
    )
    .await;
    assert!(rs.len() >= 2, "{rs:?}");
    assert_eq!(rs[0].status, BuildStatus::Running as i32, "{rs:?}");
    let info = rs[0].info.clone().unwrap();
    assert!(!info.build_id.is_empty());
    assert_eq!(info.r#ref, ws);
    assert_eq!(info.base_ref, base);
    assert!(info.started_at > 0);
    let last = rs.last().unwrap();
    assert_eq!(
        last.status,
        BuildStatus::DoneSuccess as i32,
        "{}\n{}",
        last.message,
        logs(
            &mut env.client,
            LogsRequest {
                build_id: info.build_id.clone(),
                ..Default::default()
            }
        )
        .await
    );
    assert_eq!(last.r#ref, ws);
    assert_eq!(last.base_ref, base);
    // Both images exist in the registry.
    for r in [&base, &ws] {
        let exists = env
            .state
            .resolver
            .exists(r, &rf_builder::RequestAuth::allow_all())
            .await
            .unwrap();
        assert!(exists, "{r}");
    }
    // The finished build's log is still available (censored: no refs in it).
    let log = logs(
        &mut env.client,
        LogsRequest {
            build_ref: ws.clone(),
            ..Default::default()
        },
    )
    .await;
    assert!(log.contains("STEP"), "{log}");
    assert!(!log.contains(&ws) && !log.contains(&base), "{log}");

    // (b) Same source again: done_success at once, no build.
    let rs = collect(
        env.client
            .build(request(&env.url, "Dockerfile", false))
            .await
            .unwrap()
            .into_inner(),
        vec![],
    )
    .await;
    assert_eq!(rs.len(), 1, "{rs:?}");
    assert_eq!(rs[0].status, BuildStatus::DoneSuccess as i32);
    assert_eq!(rs[0].r#ref, ws);
    assert_eq!(rs[0].base_ref, base);

    // force_rebuild rebuilds; a concurrent Build joins it (same build id).
    let mut s1 = env
        .client
        .build(request(&env.url, "Dockerfile", true))
        .await
        .unwrap()
        .into_inner();
    let first = s1.next().await.unwrap().unwrap();
    assert_eq!(first.status, BuildStatus::Running as i32);
    let id = first.info.clone().unwrap().build_id;
    assert_ne!(id, info.build_id);
    let listed = env
        .client
        .list_builds(rf_api::builder::ListBuildsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(listed.builds.iter().any(|b| b.build_id == id), "{listed:?}");
    let mut s2 = env
        .client
        .build(request(&env.url, "Dockerfile", true))
        .await
        .unwrap()
        .into_inner();
    let second = s2.next().await.unwrap().unwrap();
    assert_eq!(second.info.clone().unwrap().build_id, id);
    let r1 = collect(s1, vec![first]).await;
    let r2 = collect(s2, vec![second]).await;
    assert_eq!(r1.last().unwrap().status, BuildStatus::DoneSuccess as i32);
    assert_eq!(r2.last().unwrap().status, BuildStatus::DoneSuccess as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_run_reports_the_step_and_logs_show_it() {
    let mut env = setup(|reg| {
        vec![(
            "fail.Dockerfile",
            format!("FROM {reg}/base\nRUN echo about to fail\nRUN false\n"),
        )]
    })
    .await;
    let (_, ws) = expected_refs(&env.reg.addr(), &env.url, "fail.Dockerfile");
    let rs = collect(
        env.client
            .build(request(&env.url, "fail.Dockerfile", false))
            .await
            .unwrap()
            .into_inner(),
        vec![],
    )
    .await;
    assert_eq!(rs[0].status, BuildStatus::Running as i32, "{rs:?}");
    let id = rs[0].info.clone().unwrap().build_id;
    let last = rs.last().unwrap();
    assert_eq!(last.status, BuildStatus::DoneFailure as i32, "{rs:?}");
    assert!(last.message.contains("RUN false"), "{}", last.message);
    assert!(last.message.contains("exit"), "{}", last.message);

    for req in [
        LogsRequest {
            build_ref: ws.clone(),
            ..Default::default()
        },
        LogsRequest {
            build_id: id.clone(),
            ..Default::default()
        },
    ] {
        let log = logs(&mut env.client, req).await;
        assert!(log.contains("about to fail"), "{log}");
        assert!(log.contains("RUN false"), "{log}");
        assert!(log.contains("image build failed"), "{log}");
    }

    // (d) unknown build.
    for req in [
        LogsRequest {
            build_ref: format!("{}/workspace-images:nope", env.reg.addr()),
            ..Default::default()
        },
        LogsRequest {
            build_id: "no-such-build".into(),
            ..Default::default()
        },
    ] {
        let e = env.client.logs(req).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
    }
}
