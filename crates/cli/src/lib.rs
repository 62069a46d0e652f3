//! What the server binaries (registry-facade, image-builder, blobserve) share: the
//! `--log-format` flag and its tracing setup (JSON for log collectors, text on a terminal), the
//! signal that stops a server (SIGTERM from Kubernetes or systemd, or Ctrl-C), and how a failed
//! run is reported.
//!
//! It must not depend on any crate of this workspace: it knows logging and signals, not what
//! the binaries serve.

use std::io::IsTerminal;

/// `--log-format`: `auto` is text on a terminal and JSON otherwise.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Auto,
    Json,
    Text,
}

/// Logs to stderr at the level of `RUST_LOG` (default `info`) in `format`.
pub fn init_tracing(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let terminal = std::io::stderr().is_terminal();
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !terminal,
    };
    // Colour codes only for a person at a terminal, never into a file or a log collector.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(terminal)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
}

/// The exit code of a server binary's run: success, or the error on one line with its whole
/// cause chain (`{:#}`, e.g. the config key) and no backtrace even with RUST_BACKTRACE set,
/// because these are operator errors, not bugs.
pub fn exit_code<E: std::fmt::Display>(result: Result<(), E>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
