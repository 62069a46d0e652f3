//! Shared helpers of the end-to-end tests (`tests/e2e_*.rs`): they drive the REAL
//! `registry-facade` binary with REAL clients (skopeo, containerd/ctr + runc) against a REAL
//! upstream (CNCF distribution), everything on 127.0.0.1.
//!
//! * [`Facade`]: the binary started with `run <config.json>`; the port comes from the first stdout
//!   line, stdout and stderr (JSON logs) are captured to files, the process is killed on drop.
//! * [`Fixture`]: the test images (built once per test binary) and [`Fixture::seed`] to push them.
//! * [`SpecServer`]: a tonic `registryfacade.SpecProvider` on 127.0.0.1:0.
//! * [`shared_containerd`]: one containerd per test binary while any test uses it.
//! * [`podman_pull_run`]: podman (state in a temp dir) pulls and runs an image.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use base64::Engine as _;
use rf_api::registryfacade::spec_provider_server::{SpecProvider, SpecProviderServer};
use rf_api::registryfacade::{
    content_layer, ContentLayer, DirectContentLayer, GetImageSpecRequest, GetImageSpecResponse,
    ImageSpec,
};
use rf_testkit::layout::gzip;
use rf_testkit::procs::Podman;
use rf_testkit::{
    busybox_image, sha256_digest, BuiltImage, Compression, Containerd, Entry, ImageBuilder,
    IndexStyle, Layer, ManifestStyle, Platform, Registry,
};
use serde_json::{json, Value};
use tempfile::TempDir;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_registry-facade");
/// How long the facade may take to print its banner (it hashes static layers first).
pub const STARTUP: Duration = Duration::from_secs(30);
/// PATH of the busybox base image.
pub const BASE_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// PATH inside a composed container: IDE's APPEND puts `/ide/bin:` in front, the supervisor's
/// PREPEND puts `:/.supervisor` at the end (Gitpod's swapped naming).
pub const MERGED_PATH: &str = "/ide/bin:/usr/sbin:/usr/bin:/sbin:/bin:/.supervisor";

// ------------------------------------------------------------------------------------ the facade

/// A running `registry-facade run <config>`; killed (and reaped) on drop.
pub struct Facade {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// `http`, or `https` with `registry.tls`.
    pub scheme: String,
    /// The banner and everything after it on stdout.
    stdout: PathBuf,
    /// stderr (JSON logs).
    stderr: PathBuf,
    /// Holds config, logs, store.
    dir: TempDir,
}

impl Facade {
    /// Writes `config` to `<tmp>/config.json` and starts the facade on it (cwd: the repo root).
    /// A `"$TMP"` prefix in string values of `config` is replaced with the facade's temp dir.
    pub fn start(config: &Value) -> Facade {
        Facade::start_with(config, &[])
    }

    /// Like [`Facade::start`] with extra environment variables (e.g. `RUST_LOG=debug`).
    pub fn start_with(config: &Value, env: &[(&str, &str)]) -> Facade {
        let dir = tempfile::Builder::new()
            .prefix("rf-e2e-facade-")
            .tempdir()
            .unwrap();
        let config = replace_tmp(config, &dir.path().to_string_lossy());
        let path = dir.path().join("config.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        Facade::start_file(dir, &path, &repo_root(), env)
    }

    /// Starts `registry-facade run <config_path>` in `cwd`; logs go to files in `dir`.
    pub fn start_file(
        dir: TempDir,
        config_path: &Path,
        cwd: &Path,
        env: &[(&str, &str)],
    ) -> Facade {
        let stdout = dir.path().join("stdout.log");
        let stderr = dir.path().join("stderr.log");
        let mut cmd = Command::new(BIN);
        cmd.arg("run")
            .arg(config_path)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let (child, first) = rf_testkit::spawn_with_banner(&mut cmd, &stdout, STARTUP);
        let mut facade = Facade {
            child,
            addr: String::new(),
            scheme: String::new(),
            stdout,
            stderr,
            dir,
        };
        let first = match first {
            Ok(line) => line,
            Err(e) => panic!(
                "registry-facade printed no banner ({e}); exit status {:?}\n{}",
                facade.child.try_wait().ok().flatten(),
                facade.logs()
            ),
        };
        let url = first
            .strip_prefix("registry-facade listening on ")
            .and_then(|u| u.split_once("://"))
            .filter(|(scheme, _)| ["http", "https"].contains(scheme))
            .map(|(scheme, rest)| {
                facade.scheme = scheme.to_string();
                rest
            })
            .unwrap_or_else(|| panic!("unexpected first stdout line {first:?}\n{}", facade.logs()));
        assert!(
            url.starts_with("127.0.0.1:"),
            "the facade must listen on 127.0.0.1 only, banner: {first:?}"
        );
        facade.addr = url.trim_end_matches('/').to_string();
        facade
    }

    /// `127.0.0.1:PORT/<provider>/<id>:latest`.
    pub fn image_ref(&self, provider: &str, id: &str) -> String {
        format!("{}/{provider}/{id}:latest", self.addr)
    }

    /// `docker://127.0.0.1:PORT/<provider>/<id>:latest`.
    pub fn docker_ref(&self, provider: &str, id: &str) -> String {
        format!("docker://{}", self.image_ref(provider, id))
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// stdout and stderr, labelled (for failure messages and log greps).
    pub fn logs(&self) -> String {
        format!(
            "--- registry-facade stdout ---\n{}--- registry-facade stderr ---\n{}---",
            self.stdout(),
            self.stderr()
        )
    }

    /// The facade's temp dir (config, logs, anything written under `$TMP`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sends SIGTERM (to our child, by pid) and waits (polling) up to `timeout` for it to exit.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
        let mut status = None;
        rf_testkit::wait_until(timeout, "registry-facade to exit after SIGTERM", || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        status.unwrap()
    }

    /// SIGKILL, as a node dying mid-work; waits until it is gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Facade {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn replace_tmp(v: &Value, tmp: &str) -> Value {
    match v {
        Value::String(s) => Value::String(match s.strip_prefix("$TMP") {
            Some(rest) => format!("{tmp}{rest}"),
            None => s.clone(),
        }),
        Value::Array(a) => Value::Array(a.iter().map(|x| replace_tmp(x, tmp)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), replace_tmp(x, tmp)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The workspace root (the quickstart's relative paths are relative to it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Output of a finished `registry-facade` invocation.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `registry-facade <args>` in `cwd` (with `RUST_BACKTRACE=1`, as on this machine) and
/// waits for it to exit within `timeout` (polling); panics (after killing it) if it is still
/// running then.
pub fn run_to_exit(args: &[&str], cwd: &Path, timeout: Duration) -> Finished {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("spawning registry-facade");
    let mut status = None;
    let waited = rf_testkit::try_wait_until(timeout, "registry-facade to exit", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if waited.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stdout = std::fs::read_to_string(&out).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    match status {
        Some(status) => Finished {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "`registry-facade {}` still running after {timeout:?}\nstdout: {stdout}\nstderr: {stderr}",
            args.join(" ")
        ),
    }
}

// ------------------------------------------------------------------------------------ images

/// The platforms of the multi-platform images.
pub const ARCHES: [&str; 2] = ["amd64", "arm64"];

/// The platform of the added images: `linux/<arch>`, without a variant (the arm64 base is
/// `linux/arm64/v8`, so the facade must match `arm64` with `arm64/v8` as containerd does).
fn platform(arch: &str) -> Platform {
    Platform::new("linux", arch)
}

/// One added image per architecture.
pub struct PerArch {
    pub amd64: BuiltImage,
    pub arm64: BuiltImage,
}

impl PerArch {
    pub fn get(&self, arch: &str) -> &BuiltImage {
        match arch {
            "amd64" => &self.amd64,
            "arm64" => &self.arm64,
            other => panic!("no image for {other}"),
        }
    }
    fn build(f: impl Fn(&str) -> ImageBuilder) -> PerArch {
        let img = |arch: &str| f(arch).platform(&platform(arch)).build();
        PerArch {
            amd64: img("amd64"),
            arm64: img("arm64"),
        }
    }
}

/// Everything the tests push and configure, built once per test binary.
pub struct Fixture {
    /// busybox, linux/amd64 (runs under runc).
    pub base: BuiltImage,
    /// The same busybox as a Docker schema2 image (Docker manifest, config and layer types).
    pub base_docker: BuiltImage,
    /// A placeholder linux/arm64/v8 base (one text file, nothing executable).
    pub base_arm64: BuiltImage,
    /// `/ide/bin/ide-hello` (script) and `/ide/bin/ide-version.txt` in two layers;
    /// `GITPOD_ENV_APPEND_PATH=/ide/bin:`, `GITPOD_ENV_SET_IDE=yes`.
    pub ide: PerArch,
    /// `/.supervisor/supervisor`; `GITPOD_ENV_PREPEND_PATH=:/.supervisor`.
    pub supervisor: PerArch,
    /// `/ide-layer/extension.txt` (an `ide_layer_ref` image).
    pub ide_layer: PerArch,
    /// `/static-image/marker.txt` (the `type: "image"` static layer).
    pub static_image: PerArch,
    /// gzip tar with `/static-file/marker.txt` (the `type: "file"` static layer).
    pub static_file: Vec<u8>,
    /// Uncompressed tar with `/workspace/content.txt` (the direct content layer).
    pub content: Vec<u8>,
}

/// The file each added layer brings, with its content for `arch`, in layer order:
/// static file, static image, IDE (2 layers), supervisor, IDE layer, content.
pub fn added_files(arch: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "/static-file/marker.txt",
            "static-file marker\n".to_string(),
        ),
        ("/static-image/marker.txt", format!("static-image {arch}\n")),
        (
            "/ide/bin/ide-hello",
            format!("#!/bin/sh\n# ide {arch}\necho ide-hello ran\n"),
        ),
        ("/ide/bin/ide-version.txt", format!("ide version {arch}\n")),
        ("/.supervisor/supervisor", format!("supervisor {arch}\n")),
        (
            "/ide-layer/extension.txt",
            format!("ide-layer extension {arch}\n"),
        ),
        ("/workspace/content.txt", "workspace content\n".to_string()),
    ]
}

/// What `cat` of every added file prints in a container of `arch`.
pub fn expected_cat(arch: &str) -> String {
    added_files(arch).into_iter().map(|(_, c)| c).collect()
}

impl Fixture {
    pub fn get() -> &'static Fixture {
        static F: OnceLock<Fixture> = OnceLock::new();
        F.get_or_init(Fixture::build)
    }

    fn build() -> Fixture {
        let gz = |entries| Layer::build(entries, Compression::Gzip);
        let base = busybox_image().build();
        let base_docker = busybox_image().style(ManifestStyle::Docker).build();
        let base_arm64 = ImageBuilder::new()
            .platform(&Platform::with_variant("linux", "arm64", "v8"))
            .layer(gz(vec![Entry::file(
                "/arm64-placeholder.txt",
                "placeholder arm64 base, nothing executable\n",
            )]))
            .env(&format!("PATH={BASE_PATH}"))
            .cmd(["/bin/sh"])
            .build();
        let file = |arch: &str, i: usize| {
            let (path, content) = added_files(arch).swap_remove(i);
            Entry::exec(path, content)
        };
        let ide = PerArch::build(|arch| {
            ImageBuilder::new()
                .layer(gz(vec![file(arch, 2)]))
                .layer(gz(vec![file(arch, 3)]))
                .env("GITPOD_ENV_APPEND_PATH=/ide/bin:")
                .env("GITPOD_ENV_SET_IDE=yes")
        });
        let supervisor = PerArch::build(|arch| {
            ImageBuilder::new()
                .layer(gz(vec![file(arch, 4)]))
                .env("GITPOD_ENV_PREPEND_PATH=:/.supervisor")
        });
        let ide_layer = PerArch::build(|arch| ImageBuilder::new().layer(gz(vec![file(arch, 5)])));
        let static_image =
            PerArch::build(|arch| ImageBuilder::new().layer(gz(vec![file(arch, 1)])));
        let static_file = gzip(&rf_testkit::layout::build_tar(vec![file("amd64", 0)]));
        let content = rf_testkit::layout::build_tar(vec![file("amd64", 6)]);
        Fixture {
            base,
            base_docker,
            base_arm64,
            ide,
            supervisor,
            ide_layer,
            static_image,
            static_file,
            content,
        }
    }

    /// Pushes `base:latest` (busybox amd64), `base-docker:latest` (the same, Docker schema2),
    /// `base-multi:latest` (OCI index amd64 + arm64/v8) and the indexes (amd64 + arm64) `ide`,
    /// `supervisor`, `ide-layer`, `static-image`.
    pub fn seed(&self, registry: &Registry) {
        registry.push_image(&self.base, "base:latest").unwrap();
        registry
            .push_image(&self.base_docker, "base-docker:latest")
            .unwrap();
        registry
            .push_index(
                &[
                    (&self.base, Platform::new("linux", "amd64")),
                    (
                        &self.base_arm64,
                        Platform::with_variant("linux", "arm64", "v8"),
                    ),
                ],
                IndexStyle::Oci,
                "base-multi:latest",
            )
            .unwrap();
        for (repo, imgs) in [
            ("ide", &self.ide),
            ("supervisor", &self.supervisor),
            ("ide-layer", &self.ide_layer),
            ("static-image", &self.static_image),
        ] {
            registry
                .push_index(
                    &[
                        (&imgs.amd64, platform("amd64")),
                        (&imgs.arm64, platform("arm64")),
                    ],
                    IndexStyle::Oci,
                    &format!("{repo}:latest"),
                )
                .unwrap();
        }
    }

    /// Writes the static file layer to `dir/static-layer.tar.gz` and returns its path.
    pub fn write_static_file(&self, dir: &Path) -> PathBuf {
        let p = dir.join("static-layer.tar.gz");
        std::fs::write(&p, &self.static_file).unwrap();
        p
    }

    /// The spec of a workspace on `registry` (`127.0.0.1:PORT`) with base `<base_repo>:latest`
    /// (`base`, `base-docker` or `base-multi`).
    pub fn spec(&self, registry: &str, base_repo: &str) -> ImageSpec {
        let r = |repo: &str| format!("{registry}/{repo}:latest");
        ImageSpec {
            base_ref: r(base_repo),
            ide_ref: r("ide"),
            supervisor_ref: r("supervisor"),
            ide_layer_ref: vec![r("ide-layer")],
            content_layer: vec![ContentLayer {
                spec: Some(content_layer::Spec::Direct(DirectContentLayer {
                    content: self.content.clone(),
                })),
            }],
        }
    }

    /// Layer digests of the composed image for `arch`, in Gitpod's order: base, static file,
    /// static image, IDE, supervisor, IDE layer, content.
    pub fn expected_layers(&self, arch: &str) -> Vec<String> {
        let base = match arch {
            "amd64" => &self.base,
            "arm64" => &self.base_arm64,
            other => panic!("no base for {other}"),
        };
        let mut v: Vec<String> = base.layers.iter().map(|l| l.digest.clone()).collect();
        v.push(sha256_digest(&self.static_file));
        for img in [
            self.static_image.get(arch),
            self.ide.get(arch),
            self.supervisor.get(arch),
            self.ide_layer.get(arch),
        ] {
            v.extend(img.layers.iter().map(|l| l.digest.clone()));
        }
        v.push(sha256_digest(&self.content));
        v
    }

    /// The facade's config: static layers (file, then image), a fixed spec file with `ws`,
    /// `ws-docker` and `ws-multi` (bases `base`, `base-docker`, `base-multi`), the given remote
    /// spec provider, optional dockerAuth and store.
    pub fn facade_config(
        &self,
        work: &Path,
        registry: &str,
        spec_server: Option<&str>,
        docker_auth: Option<&Path>,
        store: bool,
    ) -> Value {
        let static_file = self.write_static_file(work);
        let fixed = work.join("fixed-specs.json");
        let specs = json!({
            "ws": spec_to_json(&self.spec(registry, "base")),
            "ws-docker": spec_to_json(&self.spec(registry, "base-docker")),
            "ws-multi": spec_to_json(&self.spec(registry, "base-multi")),
        });
        std::fs::write(&fixed, serde_json::to_vec_pretty(&specs).unwrap()).unwrap();
        let mut registry_cfg = json!({
            "port": 0,
            "listenAddress": "127.0.0.1",
            "fixedSpecFN": fixed,
            "staticLayer": [
                {"ref": static_file, "type": "file"},
                {"ref": format!("{registry}/static-image:latest"), "type": "image"},
            ],
        });
        if let Some(addr) = spec_server {
            registry_cfg["remoteSpecProvider"] = json!([{ "addr": addr }]);
        }
        if store {
            registry_cfg["store"] = json!("$TMP/store");
        }
        let mut cfg = json!({ "registry": registry_cfg });
        if let Some(p) = docker_auth {
            cfg["dockerAuth"] = json!(p);
        }
        cfg
    }
}

/// The ImageSpec in the fixed spec file's protobuf-JSON form.
pub fn spec_to_json(spec: &ImageSpec) -> Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    let content: Vec<Value> = spec
        .content_layer
        .iter()
        .map(|l| match &l.spec {
            Some(content_layer::Spec::Direct(d)) => {
                json!({"direct": {"content": b64.encode(&d.content)}})
            }
            other => panic!("not used by these tests: {other:?}"),
        })
        .collect();
    json!({
        "baseRef": spec.base_ref,
        "ideRef": spec.ide_ref,
        "supervisorRef": spec.supervisor_ref,
        "ideLayerRef": spec.ide_layer_ref,
        "contentLayer": content,
    })
}

/// A docker `config.json` granting `user:pass` on `registry` (`127.0.0.1:PORT`).
pub fn write_docker_auth(dir: &Path, registry: &str, user: &str, pass: &str) -> PathBuf {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    let p = dir.join("docker-config.json");
    std::fs::write(
        &p,
        serde_json::to_vec_pretty(&json!({"auths": {registry: {"auth": auth}}})).unwrap(),
    )
    .unwrap();
    p
}

// ------------------------------------------------------------------------------------ spec server

/// A real gRPC `registryfacade.SpecProvider` on 127.0.0.1:0, serving fixed specs by id and
/// NotFound for every other id; records the ids it was asked for.
pub struct SpecServer {
    pub addr: String,
    pub calls: Arc<Mutex<Vec<String>>>,
    rt: Option<tokio::runtime::Runtime>,
}

struct Specs {
    specs: HashMap<String, ImageSpec>,
    calls: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl SpecProvider for Specs {
    async fn get_image_spec(
        &self,
        request: tonic::Request<GetImageSpecRequest>,
    ) -> Result<tonic::Response<GetImageSpecResponse>, tonic::Status> {
        let id = request.into_inner().id;
        self.calls.lock().unwrap().push(id.clone());
        match self.specs.get(&id) {
            Some(spec) => Ok(tonic::Response::new(GetImageSpecResponse {
                spec: Some(spec.clone()),
            })),
            None => Err(tonic::Status::not_found(format!("no workspace {id:?}"))),
        }
    }
}

impl SpecServer {
    pub fn start(specs: HashMap<String, ImageSpec>) -> SpecServer {
        SpecServer::start_with(specs, None, "127.0.0.1:0")
    }

    /// [`SpecServer::start`] on `addr` (e.g. the address of one stopped before).
    pub fn start_on(addr: &str, specs: HashMap<String, ImageSpec>) -> SpecServer {
        SpecServer::start_with(specs, None, addr)
    }

    /// [`SpecServer::start`] serving gRPC over TLS with the server certificate of `tls`.
    pub fn start_tls(
        specs: HashMap<String, ImageSpec>,
        tls: &rf_testkit::tls::TlsFiles,
    ) -> SpecServer {
        SpecServer::start_with(specs, Some(tls), "127.0.0.1:0")
    }

    fn start_with(
        specs: HashMap<String, ImageSpec>,
        tls: Option<&rf_testkit::tls::TlsFiles>,
        bind: &str,
    ) -> SpecServer {
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            let identity = tonic::transport::Identity::from_pem(
                std::fs::read(&tls.cert).unwrap(),
                std::fs::read(&tls.key).unwrap(),
            );
            server = server
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .unwrap();
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let service = SpecProviderServer::new(Specs {
            specs,
            calls: calls.clone(),
        });
        let listener = rt.block_on(tokio::net::TcpListener::bind(bind)).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        rt.spawn(async move {
            server
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        SpecServer {
            addr,
            calls,
            rt: Some(rt),
        }
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl Drop for SpecServer {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

// ------------------------------------------------------------------------------------ clients

/// One containerd for all tests of a test binary that overlap in time; stopped (by the
/// testkit's Drop) when the last user lets go.
pub fn shared_containerd() -> Arc<Containerd> {
    static SHARED: Mutex<Weak<Containerd>> = Mutex::new(Weak::new());
    let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = slot.upgrade() {
        return c;
    }
    let c = Arc::new(Containerd::start().expect("starting containerd"));
    *slot = Arc::downgrade(&c);
    c
}

/// `podman pull --tls-verify=false <image_ref>` then `podman run --rm <image_ref>` (the image's
/// own command) on a podman whose state lives in a temp dir of its own; returns the container's
/// stdout. Panics with podman's output and the facade's logs on failure.
pub fn podman_pull_run(facade: &Facade, image_ref: &str) -> String {
    let podman = Podman::new().expect("setting up podman");
    podman
        .pull(image_ref, &[])
        .unwrap_or_else(|e| panic!("podman pull {image_ref}: {e:#}\n{}", facade.logs()));
    podman
        .run(image_ref, &[])
        .unwrap_or_else(|e| panic!("podman run {image_ref}: {e:#}\n{}", facade.logs()))
}

/// `curl -s <url>` (plain HTTP, 127.0.0.1): (status, body).
pub fn curl_get(url: &str) -> (u16, String) {
    let (status, body) = rf_testkit::curl_get(url);
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// `skopeo <args>` that must succeed; returns stdout.
pub fn skopeo_ok(args: &[&str], facade: &Facade) -> String {
    let out = rf_testkit::skopeo(args);
    assert!(
        out.status.success(),
        "skopeo {} failed ({})\nstdout: {}\nstderr: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        facade.logs()
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `skopeo inspect --tls-verify=false [extra] <ref>` parsed.
pub fn skopeo_inspect(facade: &Facade, docker_ref: &str, extra: &[&str]) -> Value {
    let mut args = vec!["inspect", "--tls-verify=false"];
    args.extend_from_slice(extra);
    args.push(docker_ref);
    serde_json::from_str(&skopeo_ok(&args, facade)).unwrap()
}

/// Checks `skopeo inspect` of a composed image: architecture, exact layer list, merged env.
pub fn assert_inspect(facade: &Facade, docker_ref: &str, extra: &[&str], arch: &str) {
    let fx = Fixture::get();
    let v = skopeo_inspect(facade, docker_ref, extra);
    assert_eq!(v["Architecture"], arch, "{v:#}");
    assert_eq!(v["Os"], "linux", "{v:#}");
    let layers: Vec<String> = serde_json::from_value(v["Layers"].clone()).unwrap();
    assert_eq!(
        layers,
        fx.expected_layers(arch),
        "layers of {docker_ref} ({arch}): base, static file, static image, ide (2), supervisor, ide layer, content"
    );
    let env: Vec<String> = serde_json::from_value(v["Env"].clone()).unwrap();
    assert!(
        env.contains(&format!("PATH={MERGED_PATH}")),
        "merged PATH missing in {env:?}"
    );
    assert!(
        env.contains(&"IDE=yes".to_string()),
        "IDE=yes missing in {env:?}"
    );
    assert!(
        !env.iter().any(|e| e.starts_with("GITPOD_ENV_")),
        "directives must not leak into the env: {env:?}"
    );
}

/// `skopeo copy --src-tls-verify=false <ref> dir:<tmp>` (skopeo verifies every digest); checks
/// that every expected layer and the config landed, with matching content hashes.
pub fn assert_copy(facade: &Facade, docker_ref: &str, arch: &str) {
    let fx = Fixture::get();
    let dest = tempfile::Builder::new()
        .prefix("rf-e2e-copy-")
        .tempdir()
        .unwrap();
    let target = format!("dir:{}", dest.path().display());
    skopeo_ok(
        &["copy", "-q", "--src-tls-verify=false", docker_ref, &target],
        facade,
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dest.path().join("manifest.json")).unwrap()).unwrap();
    let layers: Vec<String> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(layers, fx.expected_layers(arch));
    let config_digest = manifest["config"]["digest"].as_str().unwrap().to_string();
    for d in layers.iter().chain([&config_digest]) {
        let hex = d.strip_prefix("sha256:").unwrap();
        let blob = std::fs::read(dest.path().join(hex))
            .unwrap_or_else(|e| panic!("blob {d} not copied: {e}"));
        assert_eq!(&sha256_digest(&blob), d, "content of {d}");
    }
    let config: Value =
        serde_json::from_slice(&std::fs::read(dest.path().join(&config_digest[7..])).unwrap())
            .unwrap();
    assert_eq!(config["architecture"], arch);
    assert_eq!(
        config["rootfs"]["diff_ids"].as_array().unwrap().len(),
        layers.len()
    );
}

/// The shell script run in composed containers: every added file, the merged env, and the IDE
/// tool found through PATH.
pub fn run_script() -> String {
    let files: Vec<&str> = added_files("amd64").into_iter().map(|(p, _)| p).collect();
    format!(
        "cat {} && echo \"PATH=$PATH\" && echo \"IDE=$IDE\" && ide-hello",
        files.join(" ")
    )
}

/// `ctr images pull` + `ctr run` of a composed amd64 image; checks every added file, the merged
/// PATH and IDE, and that `ide-hello` is found through PATH.
pub fn assert_ctr_run(ctr: &Containerd, facade: &Facade, image_ref: &str) {
    ctr.pull(image_ref, &[])
        .unwrap_or_else(|e| panic!("ctr pull {image_ref}: {e:#}\n{}", facade.logs()));
    let out = ctr
        .run(image_ref, &["/bin/sh", "-c", &run_script()])
        .unwrap_or_else(|e| panic!("ctr run {image_ref}: {e:#}\n{}", facade.logs()));
    let expected = format!(
        "{}PATH={MERGED_PATH}\nIDE=yes\nide-hello ran\n",
        expected_cat("amd64")
    );
    assert_eq!(
        out, expected,
        "output of the composed container {image_ref}"
    );
}
