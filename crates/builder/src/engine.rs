//! Build engines: the [`BuildEngine`] trait and [`Buildah`].
//!
//! A [`BuildJob`] either builds a Dockerfile (pushed to the base ref, then copied to the
//! workspace ref) or copies an existing image (the resolved base ref) to the workspace ref.
//! The workspace image is byte-identical to the base image, as with Gitpod's bob.
//!
//! Buildah runs with its own storage (`<workDir>/buildah/storage.conf`, overlay with a vfs
//! fallback) and a per-job `registries.conf` marking plain-HTTP/loopback registries insecure.
//! Credentials are handed over in a temporary 0600 `--authfile` deleted when the job ends
//! (whatever the outcome). All output goes, line by line, into the build's log (which
//! censors it).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use rf_oci::reference::is_loopback_host;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::OnceCell;

use crate::auth::BuildAuth;
use crate::builds::LogSink;
use crate::config::{repository_domain, Isolation};

/// A Dockerfile to build.
#[derive(Debug, Clone)]
pub struct DockerfileBuild {
    /// The Dockerfile (absolute path).
    pub dockerfile: PathBuf,
    /// The build context directory (absolute path).
    pub context: PathBuf,
}

/// One build.
#[derive(Debug, Clone)]
pub struct BuildJob {
    pub build_id: String,
    /// Where the built image goes (Dockerfile builds) or the image to copy (reference builds).
    pub base_ref: String,
    /// Where the workspace image goes.
    pub workspace_ref: String,
    /// `None`: copy `base_ref` to `workspace_ref`.
    pub dockerfile: Option<DockerfileBuild>,
    /// Registry credentials for the build (pulls of `FROM` images, pushes).
    pub auth: BuildAuth,
    /// Registries (`host[:port]`) spoken to over plain HTTP / without TLS verification.
    pub insecure_registries: Vec<String>,
    /// A scratch directory of this job (auth file, registries.conf, iid file).
    pub scratch_dir: PathBuf,
}

impl BuildJob {
    fn is_insecure(&self, reference: &str) -> bool {
        let Some(domain) = repository_domain(reference) else {
            return false;
        };
        let host = domain.rsplit_once(':').map_or(domain.as_str(), |(h, _)| h);
        is_loopback_host(host) || self.insecure_registries.iter().any(|r| r == &domain)
    }
}

/// A failed build: `message` is meant for the user.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct EngineError {
    pub message: String,
}

impl EngineError {
    pub fn new(message: impl Into<String>) -> EngineError {
        EngineError {
            message: message.into(),
        }
    }
}

/// Builds images.
#[async_trait]
pub trait BuildEngine: Send + Sync + 'static {
    /// Runs `job`, writing its output to `log`. Dropping the future aborts the build (child
    /// processes are killed).
    async fn build(&self, job: &BuildJob, log: LogSink) -> Result<(), EngineError>;

    /// Whether the engine can build now (a readiness probe): `Err` says why not.
    async fn probe(&self) -> Result<(), EngineError> {
        Ok(())
    }
}

/// A file deleted on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn create(path: PathBuf, content: &[u8]) -> std::io::Result<TempFile> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let _ = std::fs::remove_file(&path);
        let guard = TempFile(path);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&guard.0)?;
        f.write_all(content)?;
        Ok(guard)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The outcome of one command.
struct CommandOutput {
    last_stdout_line: String,
}

/// buildah (the `buildah` CLI).
#[derive(Debug)]
pub struct Buildah {
    work_dir: PathBuf,
    isolation: Isolation,
    binary: PathBuf,
    storage_conf: OnceCell<PathBuf>,
}

impl Buildah {
    /// buildah with its storage under `<work_dir>/buildah`.
    pub fn new(work_dir: &Path, isolation: Isolation) -> Buildah {
        Buildah {
            work_dir: work_dir.join("buildah"),
            isolation,
            binary: PathBuf::from("buildah"),
            storage_conf: OnceCell::new(),
        }
    }

    /// Writes the storage config: overlay if buildah can use it here, else vfs.
    async fn storage_conf(&self) -> Result<&Path, EngineError> {
        self.storage_conf
            .get_or_try_init(|| async {
                let dir = &self.work_dir;
                std::fs::create_dir_all(dir.join("tmp")).map_err(|e| {
                    EngineError::new(format!("cannot create {}: {e}", dir.display()))
                })?;
                let path = dir.join("storage.conf");
                for driver in ["overlay", "vfs"] {
                    let conf = format!(
                        "[storage]\ndriver = \"{driver}\"\nrunroot = \"{}\"\ngraphroot = \"{}\"\n",
                        dir.join("run").display(),
                        dir.join("storage").display()
                    );
                    std::fs::write(&path, conf).map_err(|e| {
                        EngineError::new(format!("cannot write {}: {e}", path.display()))
                    })?;
                    let out = Command::new(&self.binary)
                        .arg("images")
                        .env("CONTAINERS_STORAGE_CONF", &path)
                        .env("TMPDIR", dir.join("tmp"))
                        .stdin(Stdio::null())
                        .output()
                        .await
                        .map_err(|e| EngineError::new(format!("cannot run buildah: {e}")))?;
                    if out.status.success() {
                        tracing::info!(driver, "buildah storage ready");
                        return Ok(path);
                    }
                    tracing::warn!(
                        driver,
                        "buildah cannot use the storage driver: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                    // A failed overlay attempt may leave state that vfs cannot use.
                    let _ = std::fs::remove_dir_all(dir.join("storage"));
                    let _ = std::fs::remove_dir_all(dir.join("run"));
                }
                Err(EngineError::new(
                    "buildah cannot use its storage (neither overlay nor vfs work); see the image-builder log",
                ))
            })
            .await
            .map(PathBuf::as_path)
    }

    /// Runs buildah with `args`, streaming its output into `log`.
    async fn run(
        &self,
        what: &str,
        args: &[String],
        env: &[(&str, &Path)],
        log: &LogSink,
    ) -> Result<CommandOutput, EngineError> {
        let storage = self.storage_conf().await?;
        let mut cmd = Command::new(&self.binary);
        cmd.args(args)
            .env("CONTAINERS_STORAGE_CONF", storage)
            .env("TMPDIR", self.work_dir.join("tmp"))
            .env("BUILDAH_LAYERS", "false")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| EngineError::new(format!("cannot run buildah: {e}")))?;
        let state = Arc::new(Mutex::new(Tracked::default()));
        let out = tokio::spawn(pump(
            child.stdout.take().expect("piped"),
            log.clone(),
            state.clone(),
            true,
        ));
        let err = tokio::spawn(pump(
            child.stderr.take().expect("piped"),
            log.clone(),
            state.clone(),
            false,
        ));
        let status = child
            .wait()
            .await
            .map_err(|e| EngineError::new(format!("waiting for buildah: {e}")))?;
        let _ = out.await;
        let _ = err.await;
        let t = state.lock().clone();
        if status.success() {
            return Ok(CommandOutput {
                last_stdout_line: t.last_stdout,
            });
        }
        let code = status.code().map_or_else(
            || "killed by a signal".to_string(),
            |c| format!("exit code {c}"),
        );
        let mut msg = format!("{what} failed ({code})");
        if !t.last_step.is_empty() {
            msg.push_str(&format!(" at {}", t.last_step));
        }
        if !t.last_error.is_empty() {
            msg.push_str(&format!(": {}", t.last_error));
        }
        Err(EngineError::new(msg))
    }
}

#[derive(Debug, Default, Clone)]
struct Tracked {
    last_step: String,
    last_error: String,
    last_stdout: String,
}

async fn pump(
    r: impl AsyncRead + Unpin,
    log: LogSink,
    state: Arc<Mutex<Tracked>>,
    is_stdout: bool,
) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']);
        log.line(line);
        let mut t = state.lock();
        if line.starts_with("STEP ") {
            t.last_step = line.to_string();
        }
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("error") || lower.starts_with("fatal") {
            t.last_error = line.to_string();
        }
        if is_stdout && !line.trim().is_empty() {
            t.last_stdout = line.trim().to_string();
        }
    }
}

#[async_trait]
impl BuildEngine for Buildah {
    /// Lists the images of its storage: buildah runs and its storage is usable.
    async fn probe(&self) -> Result<(), EngineError> {
        let storage = self.storage_conf().await?;
        let out = Command::new(&self.binary)
            .args(["images", "--quiet"])
            .env("CONTAINERS_STORAGE_CONF", storage)
            .env("TMPDIR", self.work_dir.join("tmp"))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| EngineError::new(format!("cannot run buildah: {e}")))?;
        if out.status.success() {
            return Ok(());
        }
        Err(EngineError::new(format!(
            "buildah images failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }

    async fn build(&self, job: &BuildJob, log: LogSink) -> Result<(), EngineError> {
        std::fs::create_dir_all(&job.scratch_dir).map_err(|e| {
            EngineError::new(format!("cannot create {}: {e}", job.scratch_dir.display()))
        })?;
        let authfile = TempFile::create(
            job.scratch_dir.join("auth.json"),
            job.auth.to_docker_config_json().as_bytes(),
        )
        .map_err(|e| EngineError::new(format!("cannot write the build credentials: {e}")))?;
        let mut registries = String::from(
            "unqualified-search-registries = [\"docker.io\"]\nshort-name-mode = \"permissive\"\n",
        );
        let mut insecure: Vec<String> = job.insecure_registries.clone();
        for r in [&job.base_ref, &job.workspace_ref] {
            if job.is_insecure(r) {
                if let Some(d) = repository_domain(r) {
                    insecure.push(d);
                }
            }
        }
        insecure.sort();
        insecure.dedup();
        for r in &insecure {
            registries.push_str(&format!(
                "\n[[registry]]\nlocation = \"{r}\"\ninsecure = true\n"
            ));
        }
        let registries_conf = job.scratch_dir.join("registries.conf");
        std::fs::write(&registries_conf, registries)
            .map_err(|e| EngineError::new(format!("cannot write registries.conf: {e}")))?;
        let env = [("CONTAINERS_REGISTRIES_CONF", registries_conf.as_path())];
        let authfile_arg = authfile.0.display().to_string();
        let tls = |r: &str| -> Vec<String> {
            if job.is_insecure(r) {
                vec!["--tls-verify=false".to_string()]
            } else {
                vec![]
            }
        };

        let image_id = match &job.dockerfile {
            Some(df) => {
                log.line("building the Dockerfile ...");
                let iid = job.scratch_dir.join("iid");
                let mut args: Vec<String> = vec!["bud".into(), "--isolation".into()];
                args.push(self.isolation.as_str().into());
                if self.isolation == Isolation::Oci {
                    args.extend(["--runtime".into(), "runc".into()]);
                }
                args.extend(tls(&job.base_ref));
                args.extend([
                    "--authfile".into(),
                    authfile_arg.clone(),
                    "--iidfile".into(),
                    iid.display().to_string(),
                    "-f".into(),
                    df.dockerfile.display().to_string(),
                    "-t".into(),
                    job.base_ref.clone(),
                    df.context.display().to_string(),
                ]);
                self.run("building the Dockerfile", &args, &env, &log)
                    .await?;
                let id = std::fs::read_to_string(&iid)
                    .map_err(|e| EngineError::new(format!("buildah wrote no image id: {e}")))?;
                let id = id.trim().trim_start_matches("sha256:").to_string();
                log.line("pushing the base image ...");
                let mut args: Vec<String> = vec!["push".into()];
                args.extend(tls(&job.base_ref));
                args.extend([
                    "--authfile".into(),
                    authfile_arg.clone(),
                    id.clone(),
                    format!("docker://{}", job.base_ref),
                ]);
                self.run("pushing the base image", &args, &env, &log)
                    .await?;
                id
            }
            None => {
                log.line("pulling the base image ...");
                let mut args: Vec<String> = vec!["pull".into(), "--quiet".into()];
                args.extend(tls(&job.base_ref));
                args.extend([
                    "--authfile".into(),
                    authfile_arg.clone(),
                    job.base_ref.clone(),
                ]);
                let out = self
                    .run("pulling the base image", &args, &env, &log)
                    .await?;
                out.last_stdout_line
            }
        };
        log.line("pushing the workspace image ...");
        let mut args: Vec<String> = vec!["push".into()];
        args.extend(tls(&job.workspace_ref));
        args.extend([
            "--authfile".into(),
            authfile_arg,
            image_id,
            format!("docker://{}", job.workspace_ref),
        ]);
        self.run("pushing the workspace image", &args, &env, &log)
            .await?;
        drop(authfile);
        Ok(())
    }
}
