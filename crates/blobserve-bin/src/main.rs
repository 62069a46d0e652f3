//! `blobserve`: serves files from inside container images over HTTP (`/<image ref>/<path>`), so
//! a browser loads an IDE's front-end before any workspace container exists. Configuration and
//! assembly only; the service is `rf-blobserve`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rf_blobserve::Config;
use rf_cli::{exit_code, init_tracing, shutdown_signal, LogFormat};
use rf_upstream::{Upstream, UpstreamConfig};
use tracing::info;

// glibc's malloc showed up at about 8 % of a warm small-file request's CPU; mimalloc's
// per-thread free lists take most of it away.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Serves files from inside container images over HTTP: `GET /<image ref>/<path>`, every layer
/// of the image applied in order, unpacked safely and cached on disk.
#[derive(Parser)]
#[command(
    name = "blobserve",
    version,
    propagate_version = true,
    after_help = "The config file is Gitpod's blobserve config.json (README.md, \"blobserve\").\n\
                  Examples:\n  \
                  blobserve check-config config.json\n  \
                  blobserve run config.json"
)]
struct Cli {
    /// Log format; `auto` is text on a terminal and JSON otherwise.
    #[arg(long, value_enum, default_value_t = LogFormat::Auto, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve files from images as the config says (log level: RUST_LOG).
    ///
    /// Listens on blobserve.listenAddress:blobserve.port (port 0 = any free port) and prints
    /// `blobserve listening on <url>` as the first line on stdout; logs go to stderr. Images
    /// in `prePull` are fetched at startup; `/ready` on readinessProbeAddr answers 503 until
    /// they are. SIGTERM or Ctrl-C stops the server.
    Run {
        /// Path to the JSON configuration file.
        config: PathBuf,
    },
    /// Validate a config.json and exit (non-zero, naming the key, when it is wrong).
    CheckConfig {
        /// Path to the JSON configuration file.
        config: PathBuf,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    exit_code(run(cli).await)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::CheckConfig { config } => {
            Config::load(&config)?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Command::Run { config } => serve(Config::load(&config)?).await,
    }
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let b = &cfg.blobserve;
    let pre_pull = b.pre_pull_refs()?;
    let upstream = Upstream::new(UpstreamConfig {
        docker_auth: cfg.docker_auth.clone(),
        ..UpstreamConfig::default()
    })
    .context("dockerAuth")?;
    let metrics = rf_blobserve::Metrics::new();
    let (blobspace, router) = rf_blobserve::open(b, upstream, metrics.clone())
        .await
        .context("blobserve.blobSpace")?;
    let listener = rf_serve::bind(&format!("{}:{}", b.listen_address, b.port))
        .await
        .context("blobserve.port")?;
    let local = listener.local_addr()?;
    if let Some(addr) = cfg.prometheus_addr.as_deref().filter(|a| !a.is_empty()) {
        let m = metrics.clone();
        rf_serve::spawn_metrics(addr, move || m.render())
            .await
            .context("prometheusAddr")?;
    }
    // Ready once every prePull image is on disk; a failing pre-pull is retried and logged by
    // the blobspace, never a crash loop.
    let ready = blobspace.pre_pull_in_background(pre_pull);
    if let Some(addr) = cfg
        .readiness_probe_addr
        .as_deref()
        .filter(|a| !a.is_empty())
    {
        let readiness = rf_serve::Readiness::new().flag("prePull", ready, "pre-pulling images");
        rf_serve::spawn_readiness(addr, readiness)
            .await
            .context("readinessProbeAddr")?;
    }
    info!(addr = %local, "blobserve listening");
    println!("blobserve listening on http://{local}");
    rf_serve::Server::new(listener)
        .options(b.listener.options())
        .serve(router, shutdown_signal())
        .await?;
    Ok(())
}
