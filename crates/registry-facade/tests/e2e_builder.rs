//! End to end, the image builder feeding the facade: the REAL image builder service (rf-builder
//! over gRPC, REAL buildah) builds a Dockerfile from a REAL git repository (bare, `file://`)
//! on a busybox base in a REAL distribution registry; containerd pulls and runs the workspace
//! image; the REAL `registry-facade` binary then composes IDE, supervisor and content on top
//! of it (spec `base_ref` = the built ref) and containerd runs that too.

mod e2e_common;

use std::collections::HashMap;
use std::sync::Arc;

use e2e_common::*;
use rf_api::builder::build_source::From as SourceFrom;
use rf_api::builder::image_builder_client::ImageBuilderClient;
use rf_api::builder::{BuildRequest, BuildSource, BuildStatus};
use rf_api::contentservice::CloneTargetMode;
use rf_builder::context::git_dockerfile_source;
use rf_builder::{BuilderService, BuilderState, Config};
use rf_testkit::{git_repo, Registry, RegistryAuth};
use tokio_stream::StreamExt as _;

const BUILT: &str = "built by buildah\n";
const COPIED: &str = "copied from git\n";

/// Builds `Dockerfile` of the git repository at `url` with an image builder whose base and
/// workspace image repositories live in `registry`; returns the workspace ref.
fn build_workspace_image(registry: &str, url: &str, work: &std::path::Path) -> String {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let config = Config::from_json(
            format!(
                r#"{{"orchestrator": {{"baseImageRepository": "{registry}/base-images",
                     "workspaceImageRepository": "{registry}/workspace-images"}},
                    "builder": {{"workDir": "{}", "buildTimeout": "10m"}}}}"#,
                work.display()
            )
            .as_bytes(),
        )
        .unwrap();
        let state = Arc::new(BuilderState::new(config).unwrap());
        let grpc = rf_testkit::serve_grpc(tonic::service::Routes::new(
            BuilderService::new(state).into_server(),
        ))
        .await;
        let mut client = ImageBuilderClient::connect(grpc).await.unwrap();
        let mut stream = client
            .build(BuildRequest {
                source: Some(BuildSource {
                    from: Some(SourceFrom::File(git_dockerfile_source(
                        url,
                        CloneTargetMode::RemoteBranch,
                        "main",
                        "Dockerfile",
                        ".",
                    ))),
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut last = None;
        while let Some(r) = stream.next().await {
            last = Some(r.unwrap());
        }
        let last = last.expect("a build status");
        assert_eq!(
            last.status,
            BuildStatus::DoneSuccess as i32,
            "{}",
            last.message
        );
        last.r#ref
    })
}

#[test]
fn built_workspace_image_runs_under_containerd_and_the_facade_composes_on_it() {
    rf_testkit::require_tool("buildah");
    let fx = Fixture::get();
    let registry = Registry::start(RegistryAuth::None).unwrap();
    fx.seed(&registry);
    let repo = tempfile::tempdir().unwrap();
    let url = git_repo(
        repo.path(),
        &[
            (
                "Dockerfile",
                format!(
                    "FROM {}/base:latest\nRUN echo {} > /built.txt\nCOPY copied.txt /copied.txt\n",
                    registry.addr(),
                    BUILT.trim_end()
                ),
            ),
            ("copied.txt", COPIED.to_string()),
        ],
    );
    let work = tempfile::tempdir().unwrap();
    let ws_ref = build_workspace_image(&registry.addr(), &url, work.path());
    assert!(
        ws_ref.starts_with(&format!("{}/workspace-images:", registry.addr())),
        "{ws_ref}"
    );

    // containerd runs the workspace image itself: the RUN output and the copied file.
    let ctr = shared_containerd();
    ctr.pull(&ws_ref, &[])
        .unwrap_or_else(|e| panic!("ctr pull {ws_ref}: {e:#}"));
    let out = ctr
        .run(&ws_ref, &["cat", "/built.txt", "/copied.txt"])
        .unwrap_or_else(|e| panic!("ctr run {ws_ref}: {e:#}"));
    assert_eq!(out, format!("{BUILT}{COPIED}"));

    // The facade composes IDE, supervisor, IDE layer and content on top of the built image.
    let mut spec = fx.spec(&registry.addr(), "base");
    spec.base_ref = ws_ref.clone();
    let specs = SpecServer::start(HashMap::from([("ws-built".to_string(), spec)]));
    let facade_work = tempfile::tempdir().unwrap();
    let cfg = fx.facade_config(
        facade_work.path(),
        &registry.addr(),
        Some(&specs.addr),
        None,
        true,
    );
    let facade = Facade::start(&cfg);
    let image = facade.image_ref("remote", "ws-built");
    ctr.pull(&image, &[])
        .unwrap_or_else(|e| panic!("ctr pull {image}: {e:#}\n{}", facade.logs()));
    let out = ctr
        .run(
            &image,
            &[
                "/bin/sh",
                "-c",
                &format!("cat /built.txt /copied.txt && {}", run_script()),
            ],
        )
        .unwrap_or_else(|e| panic!("ctr run {image}: {e:#}\n{}", facade.logs()));
    assert_eq!(
        out,
        format!(
            "{BUILT}{COPIED}{}PATH={MERGED_PATH}\nIDE=yes\nide-hello ran\n",
            expected_cat("amd64")
        )
    );
    let (_, tag) = ws_ref.rsplit_once(':').unwrap();
    assert!(
        registry
            .log_contents()
            .contains(&format!("/v2/workspace-images/manifests/{tag}")),
        "the facade did not fetch the built image from the registry"
    );
}
