//! `image-builder`: serves Gitpod's `builder.ImageBuilder` gRPC API (`run`) and talks to a
//! running server (`resolve`, `build`, `list`, `logs`).

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use futures::StreamExt as _;
use rf_api::builder::build_source::From as SourceFrom;
use rf_api::builder::image_builder_client::ImageBuilderClient;
use rf_api::builder::subassembly_service_client::SubassemblyServiceClient;
use rf_api::builder::{
    BuildRequest, BuildSource, BuildSourceReference, BuildStatus, CreateSubassemblyRequest,
    GetSubassemblyRequest, ListBuildsRequest, LogsRequest, ResolveBaseImageRequest,
    SubassemblyPhase,
};
use rf_api::contentservice::CloneTargetMode;
use rf_builder::{subassembly_router, BuilderService, BuilderState, Config, SubassemblyService};
use rf_cli::{init_tracing, shutdown_signal, LogFormat};
use tonic::transport::Channel;

mod local_context;

#[derive(Parser, Debug)]
#[command(
    name = "image-builder",
    version,
    about = "Gitpod-compatible image builder"
)]
struct Cli {
    /// Log format; `auto` is text on a terminal and JSON otherwise (log level: RUST_LOG).
    #[arg(long, value_enum, default_value_t = LogFormat::Auto, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Debug)]
struct ClientOpts {
    /// Address of a running image-builder.
    #[arg(long, default_value = "127.0.0.1:8080", env = "IMAGE_BUILDER_ADDR")]
    addr: String,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve the gRPC API.
    Run {
        /// The JSON configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Resolve an image reference to its digest form.
    Resolve {
        #[command(flatten)]
        client: ClientOpts,
        reference: String,
    },
    /// Build a workspace image (showing status and log output); exits non-zero on failure.
    ///
    /// Sources: `--ref <image>`; `--git <url>` (with `--dockerfile`/`--context` relative to the
    /// repository); or a local directory: `--context <dir>` (and `--dockerfile <file>`, default
    /// `<dir>/Dockerfile`), whose files this command serves to the image builder over HTTP for
    /// the duration of the build.
    Build {
        #[command(flatten)]
        client: ClientOpts,
        /// Use an existing image as the workspace image.
        #[arg(long = "ref", conflicts_with_all = ["git", "dockerfile", "context"])]
        reference: Option<String>,
        /// Build a Dockerfile from this git repository URL.
        #[arg(long)]
        git: Option<String>,
        /// The branch to build (default: the remote HEAD).
        #[arg(long, requires = "git")]
        git_ref: Option<String>,
        /// A commit to build (instead of a branch).
        #[arg(long, requires = "git", conflicts_with = "git_ref")]
        git_commit: Option<String>,
        /// The Dockerfile: relative to the repository root with --git (default `Dockerfile`),
        /// else a local file (default `<context>/Dockerfile`).
        #[arg(long)]
        dockerfile: Option<String>,
        /// The build context: relative to the repository root with --git (default: the
        /// Dockerfile's directory), else a local directory.
        #[arg(long)]
        context: Option<String>,
        /// Local builds: where to serve the context's files from.
        #[arg(long, default_value = "127.0.0.1:0")]
        serve_address: String,
        /// Local builds: the base URL the image builder reaches --serve-address at
        /// (default `http://<bound address>`).
        #[arg(long)]
        serve_url: Option<String>,
        /// Rebuild even if the workspace image exists.
        #[arg(long)]
        force: bool,
    },
    /// Subassemblies: an image's layers flattened into one layer, served over HTTP.
    Subassembly {
        #[command(subcommand)]
        command: SubassemblyCmd,
    },
    /// List running builds.
    List {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Show a build's log (a workspace ref or a build id), following it until the build ends.
    Logs {
        #[command(flatten)]
        client: ClientOpts,
        build: String,
    },
}

#[derive(Subcommand, Debug)]
enum SubassemblyCmd {
    /// Start creating the subassembly of an image; with --wait, until it is available.
    Create {
        #[command(flatten)]
        client: ClientOpts,
        reference: String,
        /// Wait until the subassembly is available (or unavailable) and print it.
        #[arg(long)]
        wait: bool,
    },
    /// Show the status, digest, URL and manifest of an image's subassembly.
    Get {
        #[command(flatten)]
        client: ClientOpts,
        reference: String,
    },
}

/// A channel to the image builder at `--addr`, for any of its services.
async fn channel(opts: &ClientOpts) -> anyhow::Result<Channel> {
    let url = if opts.addr.contains("://") {
        opts.addr.clone()
    } else {
        format!("http://{}", opts.addr)
    };
    Channel::from_shared(url.clone())
        .with_context(|| format!("invalid address {url}"))?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url}"))
}

async fn connect(opts: &ClientOpts) -> anyhow::Result<ImageBuilderClient<Channel>> {
    Ok(ImageBuilderClient::new(channel(opts).await?))
}

fn status_name(s: i32) -> &'static str {
    match BuildStatus::try_from(s).unwrap_or(BuildStatus::Unknown) {
        BuildStatus::Unknown => "unknown",
        BuildStatus::Running => "running",
        BuildStatus::DoneSuccess => "done_success",
        BuildStatus::DoneFailure => "done_failure",
    }
}

async fn serve(config: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&config)?;
    config.warn_ignored();
    let listener_cfg = config.server.as_ref().and_then(|s| s.services.grpc.clone());
    let listener = rf_serve::bind(config.grpc_address()).await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(BuilderState::new(config)?);
    for rec in state.builds.recover()? {
        tracing::warn!(build_id = %rec.id, "marked as failed: {}", rec.message);
    }
    let _ref_cache = state.start_ref_cache();
    if let Some(addr) = config_metrics_address(&state) {
        serve_metrics(&addr, &state.builds.metrics)
            .await
            .context("builder.metricsAddress")?;
    }
    if let Some(addr) = state
        .config
        .builder
        .readiness_address
        .clone()
        .filter(|a| !a.is_empty())
    {
        let engine = state.engine.clone();
        let readiness = rf_serve::Readiness::new()
            .timeout(std::time::Duration::from_secs(10))
            .check("buildEngine", move || {
                let engine = engine.clone();
                async move { engine.probe().await.map_err(|e| e.to_string()) }
            });
        rf_serve::spawn_readiness(&addr, readiness)
            .await
            .context("builder.readinessAddress")?;
    }
    // One signal stops every listener.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let subassemblies = SubassemblyService::new(&state)
        .with_context(|| format!("{}/subassemblies", state.config.builder.work_dir.display()))?;
    let mut subassembly_http = None;
    if let Some(addr) = state
        .config
        .builder
        .subassembly_http_address
        .clone()
        .filter(|a| !a.is_empty())
    {
        let server = rf_serve::Server::new(
            rf_serve::bind(&addr)
                .await
                .context("builder.subassemblyHTTPAddress")?,
        )
        .options(state.config.builder.listener.options());
        let bound = server.local_addr()?;
        if state.config.builder.subassembly_url.is_none() && !bound.ip().is_unspecified() {
            // Port 0 in the config: the URL must name the port actually bound.
            subassemblies.set_url_base(Some(format!("http://{bound}")));
        }
        tracing::info!(addr = %bound, url = ?subassemblies.url_base(), "subassemblies over HTTP");
        subassembly_http = Some(tokio::spawn(
            server.serve(subassembly_router(subassemblies.clone()), stopped()),
        ));
    }
    let tls = match listener_cfg.and_then(|l| l.tls) {
        None => None,
        Some(tls) => Some(
            rf_serve::tls_acceptor(&tls.cert_path, &tls.key_path, tls.ca_path.as_deref())
                .context("server.services.grpc.tls")?,
        ),
    };
    let listener_options = state.config.builder.listener.options();
    let grpc = tonic::service::Routes::new(BuilderService::new(state).into_server())
        .add_service(subassemblies.into_server())
        .prepare()
        .into_axum_router();
    println!("image-builder listening on {addr}");
    std::io::stdout().flush()?;
    rf_serve::Server::new(listener)
        .tls(tls)
        .options(listener_options)
        .serve(grpc, stopped())
        .await?;
    if let Some(task) = subassembly_http {
        task.await??;
    }
    Ok(())
}

fn config_metrics_address(state: &BuilderState) -> Option<String> {
    state
        .config
        .builder
        .metrics_address
        .clone()
        .filter(|a| !a.is_empty())
}

/// Serves the build metrics (`/metrics`, Prometheus text format) in the background.
async fn serve_metrics(
    addr: &str,
    metrics: &rf_builder::BuildMetrics,
) -> anyhow::Result<std::net::SocketAddr> {
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let registry = Arc::new(registry);
    Ok(rf_serve::spawn_metrics(addr, move || {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    })
    .await?)
}

async fn build(opts: &ClientOpts, source: SourceFrom, force: bool) -> anyhow::Result<()> {
    let mut client = connect(opts).await?;
    let mut stream = client
        .build(BuildRequest {
            source: Some(BuildSource { from: Some(source) }),
            force_rebuild: force,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut log_task: Option<tokio::task::JoinHandle<()>> = None;
    let mut last: Option<rf_api::builder::BuildResponse> = None;
    let started = std::time::Instant::now();
    let mut progress = tokio::time::interval(std::time::Duration::from_secs(15));
    progress.tick().await;
    loop {
        let r = tokio::select! {
            r = stream.next() => match r {
                Some(r) => r?,
                None => break,
            },
            _ = progress.tick() => {
                if let Some(l) = &last {
                    eprintln!("{} for {}s", status_name(l.status), started.elapsed().as_secs());
                }
                continue;
            }
        };
        if r.status == BuildStatus::Running as i32 && log_task.is_none() {
            let id = r
                .info
                .as_ref()
                .map(|i| i.build_id.clone())
                .unwrap_or_default();
            eprintln!("build {id} running: {}", r.r#ref);
            let mut c = client.clone();
            log_task = Some(tokio::spawn(async move {
                let Ok(s) = c
                    .logs(LogsRequest {
                        build_id: id,
                        ..Default::default()
                    })
                    .await
                else {
                    return;
                };
                let mut s = s.into_inner();
                let mut out = std::io::stdout();
                while let Some(Ok(chunk)) = s.next().await {
                    let _ = out.write_all(&chunk.content);
                    let _ = out.flush();
                }
            }));
        }
        last = Some(r);
    }
    if let Some(t) = log_task {
        let _ = t.await;
    }
    let Some(last) = last else {
        bail!("the build stream ended without a status");
    };
    eprintln!(
        "{}: {} (base {}) after {:.1}s",
        status_name(last.status),
        last.r#ref,
        last.base_ref,
        started.elapsed().as_secs_f64()
    );
    if last.status != BuildStatus::DoneSuccess as i32 {
        bail!("build failed: {}", last.message);
    }
    Ok(())
}

async fn subassembly(cmd: SubassemblyCmd) -> anyhow::Result<()> {
    let (client, reference, wait, create) = match cmd {
        SubassemblyCmd::Create {
            client,
            reference,
            wait,
        } => (client, reference, wait, true),
        SubassemblyCmd::Get { client, reference } => (client, reference, false, false),
    };
    let mut c = SubassemblyServiceClient::new(channel(&client).await?);
    let get = |mut c: SubassemblyServiceClient<Channel>, r: String| async move {
        c.get_subassembly(GetSubassemblyRequest { oci_reference: r })
            .await
            .map(|r| r.into_inner().status.unwrap_or_default())
    };
    let mut status = if create {
        c.create_subassembly(CreateSubassemblyRequest {
            oci_reference: reference.clone(),
        })
        .await?
        .into_inner()
        .status
        .unwrap_or_default()
    } else {
        get(c.clone(), reference.clone()).await?
    };
    let started = std::time::Instant::now();
    while wait && status.phase == SubassemblyPhase::Creating as i32 {
        eprintln!(
            "creating ({}s) {}",
            started.elapsed().as_secs(),
            status.message
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        status = get(c.clone(), reference.clone()).await?;
    }
    let phase = SubassemblyPhase::try_from(status.phase).unwrap_or_default();
    println!(
        "phase: {}",
        phase
            .as_str_name()
            .trim_start_matches("SUBASSEMBLY_PHASE_")
            .to_lowercase()
    );
    for (k, v) in [
        ("message", &status.message),
        ("digest", &status.digest),
        ("url", &status.url),
    ] {
        if !v.is_empty() {
            println!("{k}: {v}");
        }
    }
    if !status.manifest.is_empty() {
        println!("manifest: {}", String::from_utf8_lossy(&status.manifest));
    }
    if phase == SubassemblyPhase::Unavailable {
        bail!("subassembly unavailable: {}", status.message);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match cli.command {
        Cmd::Run { config } => serve(config).await,
        Cmd::Resolve { client, reference } => {
            let r = connect(&client)
                .await?
                .resolve_base_image(ResolveBaseImageRequest {
                    r#ref: reference,
                    ..Default::default()
                })
                .await?
                .into_inner();
            println!("{}", r.r#ref);
            Ok(())
        }
        Cmd::Build {
            client,
            reference,
            git,
            git_ref,
            git_commit,
            dockerfile,
            context,
            serve_address,
            serve_url,
            force,
        } => {
            let mut _local = None;
            let source = match (reference, git) {
                (Some(r), _) => SourceFrom::Ref(BuildSourceReference { r#ref: r }),
                (None, Some(url)) => {
                    let (mode, target) = match (git_ref, git_commit) {
                        (_, Some(c)) => (CloneTargetMode::RemoteCommit, c),
                        (Some(b), None) => (CloneTargetMode::RemoteBranch, b),
                        (None, None) => (CloneTargetMode::RemoteHead, String::new()),
                    };
                    SourceFrom::File(rf_builder::context::git_dockerfile_source(
                        &url,
                        mode,
                        &target,
                        dockerfile.as_deref().unwrap_or("Dockerfile"),
                        context.as_deref().unwrap_or_default(),
                    ))
                }
                (None, None) if dockerfile.is_some() || context.is_some() => {
                    let context = PathBuf::from(context.unwrap_or_else(|| ".".into()));
                    let dockerfile = dockerfile
                        .map(PathBuf::from)
                        .unwrap_or_else(|| context.join("Dockerfile"));
                    let served = local_context::serve(
                        &dockerfile,
                        &context,
                        &serve_address,
                        serve_url.as_deref(),
                    )
                    .await?;
                    eprintln!(
                        "serving {} files of {} to the image builder",
                        served.files,
                        context.display()
                    );
                    let source = SourceFrom::File(served.source.clone());
                    _local = Some(served);
                    source
                }
                (None, None) => bail!("one of --ref, --git or --context/--dockerfile is required"),
            };
            build(&client, source, force).await
        }
        Cmd::Subassembly { command } => subassembly(command).await,
        Cmd::List { client } => {
            let l = connect(&client)
                .await?
                .list_builds(ListBuildsRequest {})
                .await?
                .into_inner();
            for b in l.builds {
                println!(
                    "{}\t{}\t{}\t{}",
                    b.build_id,
                    status_name(b.status),
                    b.started_at,
                    b.r#ref
                );
            }
            Ok(())
        }
        Cmd::Logs { client, build } => {
            let req = if build.contains(':') || build.contains('/') {
                LogsRequest {
                    build_ref: build,
                    ..Default::default()
                }
            } else {
                LogsRequest {
                    build_id: build,
                    ..Default::default()
                }
            };
            let mut s = connect(&client).await?.logs(req).await?.into_inner();
            let mut out = std::io::stdout();
            while let Some(chunk) = s.next().await {
                out.write_all(&chunk?.content)?;
                out.flush()?;
            }
            Ok(())
        }
    }
}
