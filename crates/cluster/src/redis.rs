//! The connection to Redis (one node or a Redis Cluster) that every shared cache and lease
//! goes through. Redis is an accelerator, never a dependency of a pull: each command has a
//! deadline, a failure is a miss (logged once per outage, counted), and while Redis is down
//! commands are not even tried more than once a second, so that an outage costs requests no
//! time. The connection comes back by itself.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, Value};
use tracing::{info, warn};

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `host:port` of a single node (Gitpod's `singleHostAddr`).
    pub single_host_addr: Option<String>,
    /// `host:port` of some Redis Cluster nodes; the others are discovered.
    pub cluster_addrs: Vec<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub use_tls: bool,
    pub insecure_skip_verify: bool,
    /// Deadline of one command (and of connecting).
    pub timeout: Duration,
}

impl RedisSettings {
    fn url(&self, addr: &str) -> String {
        let scheme = if self.use_tls { "rediss" } else { "redis" };
        let user = self.username.as_deref().unwrap_or("default");
        let auth = match &self.password {
            Some(p) => format!("{}:{}@", enc(user), enc(p)),
            None if self.username.is_some() => format!("{}@", enc(user)),
            None => String::new(),
        };
        let insecure = if self.use_tls && self.insecure_skip_verify {
            "/#insecure"
        } else {
            ""
        };
        format!("{scheme}://{auth}{addr}{insecure}")
    }

    /// Where Redis is, for logs and readiness messages.
    pub fn describe(&self) -> String {
        match &self.single_host_addr {
            Some(a) => a.clone(),
            None => format!("cluster {}", self.cluster_addrs.join(",")),
        }
    }
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Pause between connection attempts (and commands) while Redis is unavailable.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// The shared connection; cheap to clone.
#[derive(Clone)]
pub struct SharedRedis {
    inner: Arc<Inner>,
}

struct Inner {
    settings: RedisSettings,
    conn: tokio::sync::Mutex<Option<Conn>>,
    /// When the last command or connection failed, while down.
    failed_at: parking_lot::Mutex<Option<Instant>>,
    down: AtomicBool,
    errors: AtomicU64,
}

impl SharedRedis {
    pub fn new(settings: RedisSettings) -> SharedRedis {
        SharedRedis {
            inner: Arc::new(Inner {
                settings,
                conn: tokio::sync::Mutex::new(None),
                failed_at: parking_lot::Mutex::new(None),
                down: AtomicBool::new(false),
                errors: AtomicU64::new(0),
            }),
        }
    }

    pub fn settings(&self) -> &RedisSettings {
        &self.inner.settings
    }

    /// Commands that failed or were skipped because Redis was unavailable.
    pub fn errors(&self) -> u64 {
        self.inner.errors.load(Ordering::Relaxed)
    }

    /// Whether the last command succeeded (or none failed yet).
    pub fn available(&self) -> bool {
        !self.inner.down.load(Ordering::Relaxed)
    }

    /// Gitpod's startup check: PING with backoff (50 ms, doubled, 5 attempts) within 10 s.
    /// Unlike Gitpod, a failure does not stop the node: it starts on its local caches.
    pub async fn startup_ping(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut pause = Duration::from_millis(50);
        let mut last = String::new();
        for _ in 0..5 {
            match self.ping().await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            if Instant::now() + pause > deadline {
                break;
            }
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
        Err(format!("cannot check Redis connection: {last}"))
    }

    /// PING now, whatever the outage state (readiness probes).
    pub async fn ping(&self) -> Result<(), String> {
        let res = match self.connect().await {
            Ok(mut conn) => {
                timeout(
                    self.inner.settings.timeout,
                    redis::cmd("PING").query_async::<String>(&mut conn),
                )
                .await
            }
            Err(e) => Err(e),
        };
        self.record(res.is_ok(), res.as_ref().err());
        res.map(|_| ())
            .map_err(|e| format!("{}: {e}", self.inner.settings.describe()))
    }

    /// Runs `cmd`; `None` when Redis is unavailable (the caller carries on without it).
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Option<T> {
        self.run(|mut conn| async move { cmd.query_async(&mut conn).await })
            .await
    }

    /// `GET key` as bytes; `None` when absent or Redis is unavailable.
    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.query::<Option<Vec<u8>>>(redis::cmd("GET").arg(key))
            .await
            .flatten()
    }

    /// `SET key value [PX ttl] [NX]`, best effort (a failure is logged once and counted).
    pub async fn set(
        &self,
        key: &str,
        value: impl redis::ToRedisArgs,
        ttl: Option<Duration>,
        nx: bool,
    ) {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value);
        if let Some(ttl) = ttl {
            cmd.arg("PX")
                .arg(ttl.as_millis().clamp(1, u64::MAX as u128) as u64);
        }
        if nx {
            cmd.arg("NX");
        }
        let _: Option<Value> = self.query(&cmd).await;
    }

    /// `DEL key`, best effort.
    pub async fn del(&self, key: &str) {
        let _: Option<Value> = self.query(redis::cmd("DEL").arg(key)).await;
    }

    /// Runs a Lua script (one key, so that it works on a Redis Cluster).
    pub async fn invoke<T: FromRedisValue>(
        &self,
        script: &redis::Script,
        key: &str,
        args: &[&str],
    ) -> Option<T> {
        self.run(|mut conn| async move {
            let mut inv = script.key(key);
            for a in args {
                inv.arg(*a);
            }
            inv.invoke_async(&mut conn).await
        })
        .await
    }

    async fn run<T, F, Fut>(&self, f: F) -> Option<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, redis::RedisError>>,
    {
        if self.resting() {
            self.inner.errors.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let conn = match self.connect().await {
            Ok(c) => c,
            Err(e) => {
                self.record(false, Some(&e));
                return None;
            }
        };
        let res = timeout(self.inner.settings.timeout, f(conn)).await;
        self.record(res.is_ok(), res.as_ref().err());
        res.ok()
    }

    /// While down, commands are skipped until [`RETRY_INTERVAL`] has passed.
    fn resting(&self) -> bool {
        if !self.inner.down.load(Ordering::Relaxed) {
            return false;
        }
        let mut failed_at = self.inner.failed_at.lock();
        match *failed_at {
            Some(t) if t.elapsed() < RETRY_INTERVAL => true,
            _ => {
                // This caller probes; the others keep resting meanwhile.
                *failed_at = Some(Instant::now());
                false
            }
        }
    }

    fn record(&self, ok: bool, error: Option<&String>) {
        if ok {
            if self.inner.down.swap(false, Ordering::Relaxed) {
                info!(redis = %self.inner.settings.describe(), "Redis is available again; sharing resumes");
            }
            return;
        }
        self.inner.errors.fetch_add(1, Ordering::Relaxed);
        *self.inner.failed_at.lock() = Some(Instant::now());
        if !self.inner.down.swap(true, Ordering::Relaxed) {
            warn!(
                redis = %self.inner.settings.describe(),
                error = error.map(String::as_str).unwrap_or(""),
                "Redis is unavailable; using local caches until it is back"
            );
        }
    }

    async fn connect(&self) -> Result<Conn, String> {
        let mut slot = self.inner.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let s = &self.inner.settings;
        let conn = timeout(s.timeout, async {
            match &s.single_host_addr {
                Some(addr) => {
                    let client = redis::Client::open(s.url(addr))?;
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(s.timeout))
                        .set_response_timeout(Some(s.timeout))
                        .set_number_of_retries(1);
                    Ok(Conn::Single(
                        client.get_connection_manager_with_config(config).await?,
                    ))
                }
                None => {
                    let urls: Vec<String> = s.cluster_addrs.iter().map(|a| s.url(a)).collect();
                    let client = redis::cluster::ClusterClientBuilder::new(urls)
                        .connection_timeout(s.timeout)
                        .response_timeout(s.timeout)
                        .retries(1)
                        .build()?;
                    Ok(Conn::Cluster(client.get_async_connection().await?))
                }
            }
        })
        .await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }
}

async fn timeout<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, redis::RedisError>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}
