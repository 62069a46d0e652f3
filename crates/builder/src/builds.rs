//! The build registry: running builds keyed by workspace ref (a second `Build` joins the
//! running one), per-build log hubs (whole censored log kept, replay + follow), the
//! concurrency limit, the build timeout, log retention, persisted state and metrics.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use rf_api::builder::{BuildInfo, BuildResponse, BuildStatus, LogInfo};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Semaphore};

use crate::censor::Censor;

/// Where engines and build steps write log lines.
pub type LogSink = Arc<LogHub>;

/// The log of one build: everything written so far (censored) plus live followers.
pub struct LogHub {
    buf: Mutex<LogBuf>,
    version: watch::Sender<u64>,
    censor: Censor,
}

#[derive(Default)]
struct LogBuf {
    data: Vec<u8>,
    done: bool,
}

impl std::fmt::Debug for LogHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.buf.lock();
        f.debug_struct("LogHub")
            .field("len", &b.data.len())
            .field("done", &b.done)
            .finish()
    }
}

impl LogHub {
    pub fn new(censor: Censor) -> Arc<LogHub> {
        Arc::new(LogHub {
            buf: Mutex::new(LogBuf::default()),
            version: watch::channel(0).0,
            censor,
        })
    }

    /// Appends one line (a newline is added).
    pub fn line(&self, line: &str) {
        let mut data = self.censor.censor(line.as_bytes());
        data.push(b'\n');
        self.append(&data);
    }

    fn append(&self, data: &[u8]) {
        {
            let mut b = self.buf.lock();
            if b.done {
                return;
            }
            b.data.extend_from_slice(data);
        }
        self.version.send_modify(|v| *v += 1);
    }

    /// Ends the log: followers end once they have read everything.
    pub fn finish(&self) {
        self.buf.lock().done = true;
        self.version.send_modify(|v| *v += 1);
    }

    /// Everything written so far.
    pub fn contents(&self) -> Vec<u8> {
        self.buf.lock().data.clone()
    }

    /// The whole log from the start, then live output; ends when the log is finished.
    pub fn follow(self: &Arc<Self>) -> BoxStream<'static, Vec<u8>> {
        let rx = self.version.subscribe();
        futures::stream::unfold(
            (self.clone(), rx, 0usize),
            |(hub, mut rx, offset)| async move {
                loop {
                    rx.borrow_and_update();
                    let (chunk, done) = {
                        let b = hub.buf.lock();
                        (b.data[offset..].to_vec(), b.done)
                    };
                    if !chunk.is_empty() {
                        let next = offset + chunk.len();
                        return Some((chunk, (hub, rx, next)));
                    }
                    if done || rx.changed().await.is_err() {
                        return None;
                    }
                }
            },
        )
        .boxed()
    }
}

/// One build (running or finished).
#[derive(Debug)]
pub struct Build {
    pub id: String,
    pub workspace_ref: String,
    pub base_ref: String,
    pub started_at: i64,
    pub log: Arc<LogHub>,
    status: watch::Sender<BuildResponse>,
    failure_code: Mutex<Option<tonic::Code>>,
}

impl Build {
    /// The current status.
    pub fn response(&self) -> BuildResponse {
        self.status.borrow().clone()
    }

    pub fn info(&self) -> BuildInfo {
        self.response().info.unwrap_or_default()
    }

    /// The current status, then every change; ends after a terminal status.
    pub fn statuses(&self) -> BoxStream<'static, BuildResponse> {
        let rx = self.status.subscribe();
        futures::stream::unfold((rx, false, true), |(mut rx, ended, first)| async move {
            if ended {
                return None;
            }
            if !first && rx.changed().await.is_err() {
                return None;
            }
            let r = rx.borrow_and_update().clone();
            let terminal = r.status != BuildStatus::Running as i32;
            Some((r, (rx, terminal, false)))
        })
        .boxed()
    }

    /// For a build that failed with a [`BuildFailure::code`]: that status, with the (censored)
    /// failure message.
    pub fn failure_status(&self) -> Option<tonic::Status> {
        let code = (*self.failure_code.lock())?;
        Some(tonic::Status::new(code, self.response().message))
    }

    fn set(&self, status: BuildStatus, message: String) {
        self.status.send_modify(|r| {
            r.status = status as i32;
            r.message = message;
            if let Some(info) = r.info.as_mut() {
                info.status = status as i32;
            }
        });
    }
}

/// A random UUID v4.
pub fn new_build_id() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The build metrics.
#[derive(Debug, Clone)]
pub struct BuildMetrics {
    pub started: Counter,
    pub done: Family<Vec<(String, String)>, Counter>,
    pub duration: Histogram,
    pub queue: Gauge,
}

impl Default for BuildMetrics {
    fn default() -> Self {
        BuildMetrics {
            started: Counter::default(),
            done: Family::default(),
            duration: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            queue: Gauge::default(),
        }
    }
}

impl BuildMetrics {
    /// Registers `gitpod_image_builder_builds_started_total`,
    /// `gitpod_image_builder_builds_done_total{success}`,
    /// `gitpod_image_builder_build_duration_seconds` and `gitpod_image_builder_builds_queued`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "gitpod_image_builder_builds_started",
            "Builds started",
            self.started.clone(),
        );
        registry.register(
            "gitpod_image_builder_builds_done",
            "Builds finished",
            self.done.clone(),
        );
        registry.register(
            "gitpod_image_builder_build_duration_seconds",
            "Duration of builds (queueing included)",
            self.duration.clone(),
        );
        registry.register(
            "gitpod_image_builder_builds_queued",
            "Builds waiting for a build slot",
            self.queue.clone(),
        );
    }
}

/// The persisted state of a build (`<workDir>/builds/<id>.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BuildRecord {
    pub id: String,
    #[serde(rename = "ref")]
    pub workspace_ref: String,
    pub base_ref: String,
    pub started_at: i64,
    pub status: String,
    #[serde(default)]
    pub message: String,
}

/// The message of builds found `running` at startup.
pub const INTERRUPTED: &str = "interrupted by an image-builder restart";

/// Why a build failed: the message for the user and, for causes a gRPC client must be able to
/// tell apart (credentials that do not reach the base image), a status code. A build with a
/// code ends its `Build` stream with that status after the `done_failure` response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildFailure {
    pub message: String,
    pub code: Option<tonic::Code>,
}

impl BuildFailure {
    pub fn with_code(code: tonic::Code, message: impl Into<String>) -> BuildFailure {
        BuildFailure {
            message: message.into(),
            code: Some(code),
        }
    }
}

impl From<String> for BuildFailure {
    fn from(message: String) -> BuildFailure {
        BuildFailure {
            message,
            code: None,
        }
    }
}

impl From<&str> for BuildFailure {
    fn from(message: &str) -> BuildFailure {
        BuildFailure::from(message.to_string())
    }
}

/// What a build does once it has a slot.
pub type BuildFn =
    Box<dyn FnOnce(Arc<Build>) -> BoxFuture<'static, Result<(), BuildFailure>> + Send>;

#[derive(Default)]
struct Inner {
    running: HashMap<String, Arc<Build>>,
    finished: Vec<Arc<Build>>,
}

/// The build registry.
pub struct Builds {
    inner: Mutex<Inner>,
    slots: Arc<Semaphore>,
    dir: PathBuf,
    timeout: Duration,
    retention: Duration,
    pub metrics: BuildMetrics,
}

impl std::fmt::Debug for Builds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builds")
            .field("dir", &self.dir)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Builds {
    pub fn new(
        work_dir: &Path,
        max_concurrent: usize,
        timeout: Duration,
        retention: Duration,
    ) -> Builds {
        Builds {
            inner: Mutex::new(Inner::default()),
            slots: Arc::new(Semaphore::new(max_concurrent.max(1))),
            dir: work_dir.join("builds"),
            timeout,
            retention,
            metrics: BuildMetrics::default(),
        }
    }

    /// Marks builds persisted as `running` (the process died during them) as failed; returns
    /// their records.
    pub fn recover(&self) -> std::io::Result<Vec<BuildRecord>> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for e in entries {
            let path = e?.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let Ok(data) = std::fs::read(&path) else {
                continue;
            };
            let Ok(mut rec) = serde_json::from_slice::<BuildRecord>(&data) else {
                tracing::warn!(path = %path.display(), "ignoring an unreadable build record");
                continue;
            };
            if rec.status == "running" {
                rec.status = "done_failure".into();
                rec.message = INTERRUPTED.into();
                self.persist(&rec);
                tracing::warn!(build_id = %rec.id, "build {INTERRUPTED}");
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// The persisted record of a build.
    pub fn record(&self, id: &str) -> Option<BuildRecord> {
        let data = std::fs::read(self.dir.join(format!("{id}.json"))).ok()?;
        serde_json::from_slice(&data).ok()
    }

    fn persist(&self, rec: &BuildRecord) {
        let res = (|| {
            std::fs::create_dir_all(&self.dir)?;
            let tmp = self.dir.join(format!(".{}.json.tmp", rec.id));
            std::fs::write(&tmp, serde_json::to_vec(rec).expect("serializable"))?;
            std::fs::rename(&tmp, self.dir.join(format!("{}.json", rec.id)))
        })();
        if let Err(e) = res {
            tracing::warn!(build_id = %rec.id, "cannot persist the build state: {e}");
        }
    }

    /// The running builds.
    pub fn running(&self) -> Vec<Arc<Build>> {
        self.inner.lock().running.values().cloned().collect()
    }

    /// A running or retained build by workspace ref (running first, then the newest) or id.
    pub fn find(&self, workspace_ref: &str, id: &str) -> Option<Arc<Build>> {
        let inner = self.inner.lock();
        if !workspace_ref.is_empty() {
            if let Some(b) = inner.running.get(workspace_ref) {
                return Some(b.clone());
            }
        }
        if !id.is_empty() {
            if let Some(b) = inner.running.values().find(|b| b.id == id) {
                return Some(b.clone());
            }
        }
        inner
            .finished
            .iter()
            .rev()
            .find(|b| {
                (!workspace_ref.is_empty() && b.workspace_ref == workspace_ref)
                    || (!id.is_empty() && b.id == id)
            })
            .cloned()
    }

    /// The running build of `workspace_ref`, or a new one running `run` in a spawned task.
    /// Returns the build and whether it was joined.
    pub fn start_or_join(
        self: &Arc<Self>,
        workspace_ref: &str,
        base_ref: &str,
        censor: Censor,
        run: BuildFn,
    ) -> (Arc<Build>, bool) {
        let build = {
            let mut inner = self.inner.lock();
            if let Some(b) = inner.running.get(workspace_ref) {
                return (b.clone(), true);
            }
            let id = new_build_id();
            let started_at = now_secs();
            let info = BuildInfo {
                r#ref: workspace_ref.to_string(),
                base_ref: base_ref.to_string(),
                status: BuildStatus::Running as i32,
                started_at,
                build_id: id.clone(),
                log_info: Some(LogInfo::default()),
            };
            let b = Arc::new(Build {
                id,
                workspace_ref: workspace_ref.to_string(),
                base_ref: base_ref.to_string(),
                started_at,
                log: LogHub::new(censor),
                status: watch::channel(BuildResponse {
                    r#ref: workspace_ref.to_string(),
                    base_ref: base_ref.to_string(),
                    status: BuildStatus::Running as i32,
                    message: String::new(),
                    info: Some(info),
                })
                .0,
                failure_code: Mutex::new(None),
            });
            inner.running.insert(workspace_ref.to_string(), b.clone());
            b
        };
        self.metrics.started.inc();
        self.persist(&self.record_of(&build));
        // Decided now, so that queueing follows the order of the calls.
        let permit = self.slots.clone().try_acquire_owned().ok();
        if permit.is_none() {
            build.log.line("waiting for a build slot ...");
            self.metrics.queue.inc();
        }
        let this = self.clone();
        let b = build.clone();
        tokio::spawn(async move { this.drive(b, permit, run).await });
        (build, false)
    }

    fn record_of(&self, b: &Build) -> BuildRecord {
        let r = b.response();
        let status = match BuildStatus::try_from(r.status).unwrap_or(BuildStatus::Unknown) {
            BuildStatus::Running => "running",
            BuildStatus::DoneSuccess => "done_success",
            BuildStatus::DoneFailure => "done_failure",
            BuildStatus::Unknown => "unknown",
        };
        BuildRecord {
            id: b.id.clone(),
            workspace_ref: b.workspace_ref.clone(),
            base_ref: b.base_ref.clone(),
            started_at: b.started_at,
            status: status.into(),
            message: r.message,
        }
    }

    async fn drive(
        self: Arc<Self>,
        build: Arc<Build>,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
        run: BuildFn,
    ) {
        let t0 = Instant::now();
        let permit = match permit {
            Some(p) => p,
            None => {
                let p = self.slots.clone().acquire_owned().await;
                self.metrics.queue.dec();
                match p {
                    Ok(p) => p,
                    Err(_) => {
                        self.finish(&build, Err("the image builder is shutting down".into()), t0);
                        return;
                    }
                }
            }
        };
        build.log.line("starting image build ...");
        let res = match tokio::time::timeout(self.timeout, run(build.clone())).await {
            Ok(r) => r,
            Err(_) => Err(format!("build timed out after {}", humanize(self.timeout)).into()),
        };
        drop(permit);
        self.finish(&build, res, t0);
    }

    fn finish(self: &Arc<Self>, build: &Arc<Build>, res: Result<(), BuildFailure>, t0: Instant) {
        let success = res.is_ok();
        match &res {
            Ok(()) => build.log.line("image build done"),
            Err(f) => build
                .log
                .line(&format!("image build failed: {}", f.message)),
        }
        build.log.finish();
        {
            let mut inner = self.inner.lock();
            inner.running.remove(&build.workspace_ref);
            inner.finished.push(build.clone());
        }
        let (status, message) = match res {
            Ok(()) => (BuildStatus::DoneSuccess, String::new()),
            Err(f) => {
                *build.failure_code.lock() = f.code;
                (
                    BuildStatus::DoneFailure,
                    build.log.censor.censor_str(&f.message),
                )
            }
        };
        build.set(status, message);
        self.persist(&self.record_of(build));
        self.metrics
            .done
            .get_or_create(&vec![("success".to_string(), success.to_string())])
            .inc();
        self.metrics.duration.observe(t0.elapsed().as_secs_f64());
        let this = self.clone();
        let b = build.clone();
        let retention = self.retention;
        tokio::spawn(async move {
            tokio::time::sleep(retention).await;
            this.inner.lock().finished.retain(|x| !Arc::ptr_eq(x, &b));
        });
    }
}

fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else if s > 0 {
        format!("{s}s")
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn log_hub_replays_and_follows() {
        let hub = LogHub::new(Censor::new(["s3cret"]));
        hub.line("one s3cret");
        let mut f = hub.follow();
        assert_eq!(f.next().await.unwrap(), b"one [redacted]\n");
        let h = hub.clone();
        let t = tokio::spawn(async move {
            let mut all = Vec::new();
            let mut s = h.follow();
            while let Some(c) = s.next().await {
                all.extend(c);
            }
            all
        });
        hub.line("two");
        hub.finish();
        hub.line("ignored");
        assert_eq!(t.await.unwrap(), b"one [redacted]\ntwo\n");
        let rest: Vec<Vec<u8>> = f.collect().await;
        assert_eq!(rest.concat(), b"two\n");
    }

    #[tokio::test]
    async fn joins_times_out_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let builds = Arc::new(Builds::new(
            dir.path(),
            1,
            Duration::from_millis(200),
            Duration::from_secs(60),
        ));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (a, joined) = builds.start_or_join(
            "ws:1",
            "base:1",
            Censor::new(Vec::<String>::new()),
            Box::new(move |_| {
                Box::pin(async move {
                    let _ = rx.await;
                    Ok(())
                })
            }),
        );
        assert!(!joined);
        let (b, joined) = builds.start_or_join(
            "ws:1",
            "base:1",
            Censor::new(Vec::<String>::new()),
            Box::new(|_| Box::pin(async { Err("never".into()) })),
        );
        assert!(joined);
        assert_eq!(a.id, b.id);
        assert_eq!(builds.running().len(), 1);
        // A second ref queues behind the first (one slot) and times out when it runs.
        let (c, _) = builds.start_or_join(
            "ws:2",
            "base:2",
            Censor::new(Vec::<String>::new()),
            Box::new(|_| Box::pin(futures::future::pending())),
        );
        let mut cs = c.statuses();
        assert_eq!(cs.next().await.unwrap().status, BuildStatus::Running as i32);
        tx.send(()).unwrap();
        let last: Vec<BuildResponse> = a.statuses().collect().await;
        assert_eq!(last.last().unwrap().status, BuildStatus::DoneSuccess as i32);
        let last: Vec<BuildResponse> = cs.collect().await;
        let last = last.last().unwrap();
        assert_eq!(last.status, BuildStatus::DoneFailure as i32);
        assert_eq!(last.message, "build timed out after 200ms");
        let log = String::from_utf8(c.log.contents()).unwrap();
        assert!(log.contains("waiting for a build slot"), "{log}");
        assert_eq!(builds.record(&c.id).unwrap().status, "done_failure");
        assert!(builds.find("ws:2", "").is_some());
        assert!(builds.find("", &a.id).is_some());

        // A record left `running` is marked interrupted at startup.
        let mut rec = builds.record(&a.id).unwrap();
        rec.status = "running".into();
        builds.persist(&rec);
        let again = Builds::new(
            dir.path(),
            1,
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        let rec = again.recover().unwrap();
        assert_eq!(rec.len(), 1);
        assert_eq!(again.record(&a.id).unwrap().message, INTERRUPTED);
    }
}
