//! Builds through the REAL `image-builder` binary with REAL buildah and REAL distribution
//! registries on 127.0.0.1: a base image behind htpasswd (request `additional` credentials),
//! and a build context from a local directory (`image-builder build --context`).

mod common;

use base64::Engine as _;
use common::{files_containing, Server};
use rf_api::builder::build_registry_auth::Mode;
use rf_api::builder::build_source::From as SourceFrom;
use rf_api::builder::image_builder_client::ImageBuilderClient;
use rf_api::builder::{
    BuildRegistryAuth, BuildRegistryAuthTotal, BuildRequest, BuildResponse, BuildSource,
    BuildStatus, LogsRequest,
};
use rf_api::contentservice::CloneTargetMode;
use rf_builder::context::git_dockerfile_source;
use rf_testkit::{busybox_image, git_repo, Registry, RegistryAuth};
use tokio_stream::StreamExt as _;
use tonic::Code;

const USER: &str = "builder";
const PASSWORD: &str = "pw-Xy7-build-s3cret";

fn config(registry: &str) -> String {
    format!(
        r#"{{"orchestrator": {{"baseImageRepository": "{registry}/base-images",
             "workspaceImageRepository": "{registry}/workspace-images"}},
            "server": {{"services": {{"grpc": {{"address": "127.0.0.1:0"}}}}}},
            "builder": {{"workDir": "$WORK", "buildTimeout": "10m"}}}}"#
    )
}

fn git_request(url: &str, auth: Option<BuildRegistryAuth>) -> BuildRequest {
    BuildRequest {
        source: Some(BuildSource {
            from: Some(SourceFrom::File(git_dockerfile_source(
                url,
                CloneTargetMode::RemoteBranch,
                "main",
                "Dockerfile",
                ".",
            ))),
        }),
        auth,
        ..Default::default()
    }
}

/// Every response of a `Build` stream, and the status it ended with (`Ok` for a clean end).
async fn build(
    client: &mut ImageBuilderClient<tonic::transport::Channel>,
    req: BuildRequest,
) -> (Vec<BuildResponse>, Result<(), tonic::Status>) {
    let mut stream = match client.build(req).await {
        Ok(s) => s.into_inner(),
        Err(e) => return (vec![], Err(e)),
    };
    let mut seen = Vec::new();
    while let Some(r) = stream.next().await {
        match r {
            Ok(r) => seen.push(r),
            Err(e) => return (seen, Err(e)),
        }
    }
    (seen, Ok(()))
}

async fn logs(client: &mut ImageBuilderClient<tonic::transport::Channel>, id: &str) -> String {
    let mut s = client
        .logs(LogsRequest {
            build_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend(c.unwrap().content);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_behind_htpasswd_needs_additional_credentials_which_never_leak() {
    rf_testkit::require_tool("buildah");
    let images = Registry::start(RegistryAuth::None).unwrap();
    let protected = Registry::start(RegistryAuth::htpasswd(USER, PASSWORD)).unwrap();
    protected
        .push_image(&busybox_image().build(), "base:latest")
        .unwrap();
    let repo = tempfile::tempdir().unwrap();
    let url = git_repo(
        repo.path(),
        &[(
            "Dockerfile",
            format!(
                "FROM {}/base\nRUN echo built on the protected base > /authed.txt\n",
                protected.addr()
            ),
        )],
    );
    let server = Server::start(&config(&images.addr()), &[("RUST_LOG", "debug")]);
    let mut client = ImageBuilderClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();

    // Without credentials: done_failure naming the registry, then UNAUTHENTICATED.
    let (denied, end) = build(&mut client, git_request(&url, None)).await;
    let status = end.expect_err("a build without credentials must fail");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains(&protected.addr()) && status.message().contains("additional"),
        "{}",
        status.message()
    );
    assert_eq!(
        denied.first().map(|r| r.status),
        Some(BuildStatus::Running as i32)
    );
    let failed = denied.last().unwrap();
    assert_eq!(failed.status, BuildStatus::DoneFailure as i32, "{denied:?}");
    let denied_id = denied[0].info.clone().unwrap().build_id;

    // With `additional` credentials for the protected registry: built.
    let secret = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let auth = BuildRegistryAuth {
        mode: Some(Mode::Total(BuildRegistryAuthTotal { allow_all: true })),
        additional: [(protected.addr(), secret.clone())].into(),
    };
    let (built, end) = build(&mut client, git_request(&url, Some(auth))).await;
    end.unwrap();
    let done = built.last().unwrap();
    let built_id = built[0].info.clone().unwrap().build_id;
    assert_eq!(
        done.status,
        BuildStatus::DoneSuccess as i32,
        "{}\n{}",
        done.message,
        logs(&mut client, &built_id).await
    );
    // The protected registry really served the base's layers to the build (blob GETs are
    // buildah's pull, authorized), with the credentials.
    let registry_log = protected.log_contents();
    assert!(
        registry_log
            .lines()
            .any(|l| l.contains("msg=\"authorized request\"")
                && l.contains("useragent=Buildah")
                && l.contains("http.request.method=GET")
                && l.contains("/v2/base/blobs/sha256:")),
        "{registry_log}"
    );

    // The password (and its base64 form) appear nowhere: responses, statuses, logs, the
    // server's own output, and no file is left in the work dir (the auth file is removed).
    let denied_log = logs(&mut client, &denied_id).await;
    let built_log = logs(&mut client, &built_id).await;
    assert!(built_log.contains("STEP"), "{built_log}");
    let everything = format!(
        "{denied:?}\n{status:?}\n{built:?}\n{denied_log}\n{built_log}\n{}",
        server.logs()
    );
    for s in [PASSWORD, secret.as_str()] {
        assert!(!everything.contains(s), "{s} leaked:\n{everything}");
        let files = files_containing(&server.work_dir(), s.as_bytes());
        assert!(files.is_empty(), "{s} left in {files:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_a_local_directory_from_the_command_line() {
    rf_testkit::require_tool("buildah");
    let images = Registry::start(RegistryAuth::None).unwrap();
    images
        .push_image(&busybox_image().build(), "base:latest")
        .unwrap();
    let server = Server::start(&config(&images.addr()), &[]);
    let ctx = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(ctx.path().join("sub/dir")).unwrap();
    std::fs::write(ctx.path().join("hello.txt"), "hello from a local dir\n").unwrap();
    std::fs::write(ctx.path().join("sub/dir/nested.txt"), "nested\n").unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!(
            "FROM {}/base\nCOPY hello.txt /hello.txt\nCOPY sub /sub\nRUN cat /hello.txt /sub/dir/nested.txt > /copied.txt\n",
            images.addr()
        ),
    )
    .unwrap();
    let context = ctx.path().to_str().unwrap();

    let first = server.client(&["build", "--context", context]);
    let (out, err) = (
        String::from_utf8_lossy(&first.stdout).into_owned(),
        String::from_utf8_lossy(&first.stderr).into_owned(),
    );
    assert!(first.status.success(), "{out}\n{err}\n{}", server.logs());
    assert!(err.contains("serving 4 files"), "{err}");
    assert!(out.contains("COPY hello.txt /hello.txt"), "{out}");
    assert!(err.contains("done_success"), "{err}");
    let ws_ref = err
        .lines()
        .find_map(|l| l.strip_prefix("done_success: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no workspace ref in {err}"))
        .to_string();
    assert!(ws_ref.starts_with(&format!("{}/workspace-images:", images.addr())));

    // The same directory again: the same image, not rebuilt.
    let again = server.client(&["build", "--context", context]);
    let (out2, err2) = (
        String::from_utf8_lossy(&again.stdout),
        String::from_utf8_lossy(&again.stderr),
    );
    assert!(again.status.success(), "{err2}");
    assert!(err2.contains(&format!("done_success: {ws_ref}")), "{err2}");
    assert!(!out2.contains("STEP"), "rebuilt:\n{out2}");

    // A changed file is a new image.
    std::fs::write(ctx.path().join("hello.txt"), "changed\n").unwrap();
    let changed = server.client(&["build", "--context", context]);
    let err3 = String::from_utf8_lossy(&changed.stderr);
    assert!(changed.status.success(), "{err3}");
    assert!(!err3.contains(&ws_ref), "{err3}");

    // A Dockerfile outside the context, failing: non-zero exit naming the step.
    let elsewhere = tempfile::tempdir().unwrap();
    let failing = elsewhere.path().join("fail.Dockerfile");
    std::fs::write(
        &failing,
        format!("FROM {}/base\nRUN exit 3\n", images.addr()),
    )
    .unwrap();
    let failed = server.client(&[
        "build",
        "--context",
        context,
        "--dockerfile",
        failing.to_str().unwrap(),
    ]);
    let err4 = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "{err4}");
    assert!(err4.contains("RUN exit 3"), "{err4}");

    // Bad arguments are rejected before anything is sent.
    let missing = server.client(&["build", "--context", "/no/such/dir"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not a directory"));
}
