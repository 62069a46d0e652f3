mod heap;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use registry_facade::config::Config;
use registry_facade::setup::{self, SetupOptions};
use registry_facade::{app, serve};
use rf_cli::{exit_code, init_tracing, shutdown_signal, LogFormat};
use tracing::info;

/// A container registry facade: serves workspace images composed at pull time from a base
/// image, IDE and supervisor images, static layers and workspace content layers.
#[derive(Parser)]
#[command(
    name = "registry-facade",
    version,
    propagate_version = true,
    after_help = "The config file is Gitpod's registry-facade config.json (README.md, \"Configuration reference\").\n\
                  Examples:\n  \
                  registry-facade check-config config.json\n  \
                  registry-facade run examples/quickstart/config.json\n  \
                  registry-facade setup --hostfs /mnt/host --hostname reg.ws.example.com --dry-run"
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
    /// Serve the registry described by a Gitpod-style config.json (log level: RUST_LOG).
    ///
    /// Listens on registry.listenAddress:registry.port (port 0 = any free port) and prints
    /// `registry-facade listening on <url>` as the first line on stdout; logs go to stderr.
    /// Pull `<host>/<provider>/<id>:latest`, where provider is `fixed` (registry.fixedSpecFN)
    /// or `remote` (registry.remoteSpecProvider). A config with an unknown key or a wrong type
    /// stops startup with the key's path. SIGTERM or Ctrl-C stops the server.
    Run {
        /// Path to the JSON configuration file.
        config: PathBuf,
    },
    /// Validate a config.json and exit (non-zero, naming the key, when it is wrong).
    ///
    /// Checks the structure and values of the config file (unknown keys, wrong types,
    /// durations, platforms, image references) without starting anything; exits 0 and prints
    /// `<file>: ok` when it is valid.
    CheckConfig {
        /// Path to the JSON configuration file.
        config: PathBuf,
    },
    /// Wire containerd on this node to the facade (Gitpod's node setup; run as an init container).
    ///
    /// Writes `<hostfs>/etc/containerd/certs.d/<hostname>:<port>/hosts.toml` (pull
    /// `<hostname>:<port>` over HTTPS, trusting `ca.crt`) and `ca.crt` beside it, and adds
    /// `127.0.0.1 <hostname>` to `<hostfs>/etc/hosts` when that name is missing. Files are
    /// replaced atomically; a second run changes nothing and says so. containerd must read
    /// `config_path = "/etc/containerd/certs.d"` (README.md, "Node setup").
    Setup {
        /// The host name containerd pulls by (`<hostname>:<port>/remote/<id>`).
        #[arg(long)]
        hostname: String,
        /// Where the node's root file system is mounted.
        #[arg(long, default_value = "/")]
        hostfs: PathBuf,
        /// The facade's TLS port on the node (Gitpod's host port).
        #[arg(long, default_value_t = setup::DEFAULT_PORT)]
        port: u16,
        /// The CA certificate (PEM) that signed the facade's certificate.
        #[arg(long, default_value = setup::DEFAULT_CA)]
        ca: PathBuf,
        /// Print what would change and write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> ExitCode {
    heap::tune();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("registry-facade: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let cli = Cli::parse();
        init_tracing(cli.log_format);
        exit_code(run(cli).await)
    })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Setup {
            hostname,
            hostfs,
            port,
            ca,
            dry_run,
        } => {
            let opts = SetupOptions {
                hostname,
                hostfs,
                port,
                ca,
                dry_run,
            };
            setup::run(&opts, &mut std::io::stdout())?;
            Ok(())
        }
        Command::CheckConfig { config } => {
            Config::load(&config)?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Command::Run { config: path } => {
            let cfg = Config::load(&path)?;
            let mut app = app::build(&cfg).await?;
            let r = &cfg.registry;
            let listener = serve::bind(&format!("{}:{}", r.listen_address, r.port))
                .await
                .context("registry.port")?;
            let local = listener.local_addr()?;
            if let Some(addr) = cfg.prometheus_addr.as_deref().filter(|a| !a.is_empty()) {
                let facade = app.state.metrics.clone();
                let blobserve = app.blobserve.as_ref().map(|b| b.metrics.clone());
                let shared = app.shared.metrics_source();
                serve::spawn_metrics(addr, move || {
                    let mut text = facade.render();
                    let extra = shared.render();
                    if !extra.is_empty() {
                        if let Some(body) = text.strip_suffix("# EOF\n") {
                            text = format!("{body}{extra}# EOF\n");
                        }
                    }
                    if let Some(b) = &blobserve {
                        // One exposition: the first one's end marker would end it early.
                        if let Some(body) = text.strip_suffix("# EOF\n") {
                            text = body.to_string();
                        }
                        text.push_str(&b.render());
                    }
                    text
                })
                .await?;
            }
            if let Some((listener, router)) = app.shared.peer.take() {
                tokio::spawn(serve::serve(
                    listener,
                    router,
                    None,
                    rf_serve::ServerConfig::default().options(),
                    shutdown_signal(),
                ));
            }
            let mut pre_pulled: Option<Arc<AtomicBool>> = None;
            let mut blobserve_addr = None;
            if let Some(b) = &app.blobserve {
                let bcfg = cfg.blobserve.as_ref().expect("blobserve is configured");
                let blistener = serve::bind(&format!("{}:{}", bcfg.listen_address, bcfg.port))
                    .await
                    .context("blobserve.port")?;
                let blocal = blistener.local_addr()?;
                info!(addr = %blocal, "blobserve listening");
                blobserve_addr = Some(blocal);
                tokio::spawn(serve::serve(
                    blistener,
                    b.router.clone(),
                    None,
                    bcfg.listener.options(),
                    shutdown_signal(),
                ));
                // Not ready until every prePull image is on disk (retried, never fatal).
                pre_pulled = Some(b.blobspace.pre_pull_in_background(bcfg.pre_pull_refs()?));
            }
            if let Some(addr) = cfg
                .readiness_probe_addr
                .as_deref()
                .filter(|a| !a.is_empty())
            {
                serve::spawn_readiness(
                    addr,
                    registry_facade::probes::readiness(&app, local, pre_pulled),
                )
                .await?;
            }
            if !r.static_layer_reload_interval.is_zero() {
                app::spawn_static_layer_reload(
                    path.clone(),
                    app.state.clone(),
                    r.static_layer_reload_interval,
                );
            }
            let scheme = if r.tls.is_some() { "https" } else { "http" };
            info!(addr = %local, "registry-facade listening");
            print_banner(scheme, local, &r.prefix, &app.fixed_ids);
            if let Some(addr) = blobserve_addr {
                println!("blobserve listening on http://{addr}");
            }
            let options = r.listener.options();
            serve::serve(
                listener,
                app.router,
                r.tls.as_ref(),
                options,
                shutdown_signal(),
            )
            .await
        }
    }
}

/// What a person needs to pull from the running facade (tests read the first line too).
fn print_banner(scheme: &str, local: std::net::SocketAddr, prefix: &str, fixed_ids: &[String]) {
    let host = if local.ip().is_unspecified() {
        format!("127.0.0.1:{}", local.port())
    } else {
        local.to_string()
    };
    println!("registry-facade listening on {scheme}://{local}");
    let prefix = prefix.trim_matches('/');
    let base = if prefix.is_empty() {
        host.clone()
    } else {
        format!("{host}/{prefix}")
    };
    for id in fixed_ids {
        println!("  image fixed/{id}:");
        println!("    curl -s {scheme}://{base}/v2/fixed/{id}/manifests/latest -H 'Accept: application/vnd.oci.image.manifest.v1+json'");
        println!("    skopeo inspect --tls-verify=false docker://{host}/fixed/{id}:latest");
        println!("    skopeo copy --src-tls-verify=false docker://{host}/fixed/{id}:latest oci:/tmp/{id}:latest");
        if scheme == "http" {
            println!("    ctr images pull --plain-http {host}/fixed/{id}:latest");
        } else {
            // ctr treats loopback registries as plain HTTP unless a hosts.toml says otherwise.
            println!("    ctr images pull --hosts-dir <dir with {host}/hosts.toml naming https://{host} and its CA> {host}/fixed/{id}:latest");
        }
    }
}
