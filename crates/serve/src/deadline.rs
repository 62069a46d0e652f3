//! Read deadlines of a connection while no request is in flight, so that a client that sends
//! nothing, or a request head one byte at a time, or that keeps a connection idle, cannot hold
//! a socket, a task and a connection slot forever.
//!
//! hyper's own HTTP/1 header timeout starts only once it reads a request head, after the
//! HTTP/1-or-2 sniffing, it has no idle timeout distinct from it, and HTTP/2 has neither: one
//! wrapper around the IO covers both protocols and every request of a keep-alive connection.
//!
//! The deadlines, while no request is in flight:
//! - from the connection's start: the header timeout (its first request head);
//! - from the end of the last response: the idle timeout;
//! - from the first byte of the next request head: at most the header timeout (HTTP/1 only:
//!   HTTP/2 sends frames that are not requests, such as PINGs and window updates).
//!
//! While a request is in flight (its response not yet sent whole) reads have no deadline: a
//! handler may take long, and the client has nothing to say meanwhile.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the connection's requests tell its IO: how many are in flight.
pub(crate) struct Activity {
    in_flight: AtomicUsize,
    /// Times the connection went from busy to idle, and when it last did: the IO may not be
    /// read at all while a request is in flight (HTTP/1 need not), so it cannot see the busy
    /// phase itself, only that one ended.
    idle_since: AtomicU64,
    last_idle: Mutex<Instant>,
    /// Wakes a read parked without a deadline (a request was in flight) once the last one
    /// ends: with HTTP/2 that happens on another task, and the idle deadline must start.
    reader: AtomicWaker,
    /// Set when an HTTP/2 connection has been idle too long: the connection task then sends
    /// GOAWAY, which lets a client that is about to send a request retry it elsewhere.
    pub(crate) h2_idle: Notify,
    h2_idle_sent: AtomicBool,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            last_idle: Mutex::new(Instant::now()),
            reader: AtomicWaker::new(),
            h2_idle: Notify::new(),
            h2_idle_sent: AtomicBool::new(false),
        }
    }
}

impl Activity {
    /// A request has arrived; the guard ends it when dropped (with its response's body).
    pub(crate) fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Some(self.clone()))
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }
}

/// One request in flight; dropped when its response has been sent (or abandoned).
pub(crate) struct InFlight(Option<Arc<Activity>>);

impl InFlight {
    fn end(&mut self) {
        if let Some(a) = self.0.take() {
            if a.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
                *a.last_idle.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                a.idle_since.fetch_add(1, Ordering::AcqRel);
                a.reader.wake();
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.end()
    }
}

/// A response body that ends its request's [`InFlight`] when it ends or is dropped.
pub(crate) struct TrackedBody<B> {
    inner: B,
    in_flight: InFlight,
}

impl<B> TrackedBody<B> {
    pub(crate) fn new(inner: B, in_flight: InFlight) -> Self {
        TrackedBody { inner, in_flight }
    }
}

// `Unpin` bodies only (axum's is): no pin projection needed.
impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = r {
            self.in_flight.end();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request head; the deadline runs.
    Waiting { head_started: bool },
    /// A request is in flight: no deadline.
    Busy,
}

/// Wraps a connection's IO: reads fail with `TimedOut` once the deadline of the current phase
/// has passed (see the module docs).
pub(crate) struct ConnDeadline<I> {
    io: I,
    activity: Arc<Activity>,
    header_timeout: Duration,
    idle_timeout: Duration,
    /// Fires at or before `deadline`. A deadline that moves later (every request does) leaves
    /// it armed, and it is moved when it fires: no timer work per request.
    sleep: Pin<Box<Sleep>>,
    /// When reads fail if no request is in flight.
    deadline: Instant,
    phase: Phase,
    /// The last [`Activity::idle_since`] seen.
    idle_seen: u64,
    /// The first bytes of the connection, until it is known whether it speaks HTTP/2.
    preface: Vec<u8>,
    h2: Option<bool>,
}

impl<I> ConnDeadline<I> {
    pub(crate) fn new(
        io: I,
        header_timeout: Duration,
        idle_timeout: Duration,
        activity: Arc<Activity>,
    ) -> Self {
        ConnDeadline {
            io,
            activity,
            header_timeout,
            idle_timeout,
            sleep: Box::pin(tokio::time::sleep(header_timeout)),
            deadline: Instant::now() + header_timeout,
            phase: Phase::Waiting { head_started: true },
            idle_seen: 0,
            preface: Vec::new(),
            h2: None,
        }
    }

    fn sync_phase(&mut self) {
        if self.activity.busy() {
            self.phase = Phase::Busy;
            return;
        }
        let idle = self.activity.idle_since.load(Ordering::Acquire);
        if idle != self.idle_seen {
            self.idle_seen = idle;
            self.phase = Phase::Waiting {
                head_started: false,
            };
            let since = *self
                .activity
                .last_idle
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            self.set_deadline(since + self.idle_timeout);
        }
    }

    fn set_deadline(&mut self, at: Instant) {
        self.deadline = at;
        if at < self.sleep.deadline() {
            self.sleep.as_mut().reset(at);
        }
    }

    fn saw_bytes(&mut self, bytes: &[u8]) {
        if self.h2.is_none() {
            let want = H2_PREFACE.len() - self.preface.len();
            self.preface
                .extend_from_slice(&bytes[..want.min(bytes.len())]);
            if !H2_PREFACE.starts_with(&self.preface) {
                self.h2 = Some(false);
            } else if self.preface.len() == H2_PREFACE.len() {
                self.h2 = Some(true);
            }
            if self.h2.is_some() {
                self.preface = Vec::new();
            }
        }
        if self.phase
            == (Phase::Waiting {
                head_started: false,
            })
            && self.h2 != Some(true)
        {
            self.phase = Phase::Waiting { head_started: true };
            let head_deadline = Instant::now() + self.header_timeout;
            if head_deadline < self.deadline {
                self.set_deadline(head_deadline);
            }
        }
    }

    /// Whether the read that is about to return `Pending` must fail instead.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.activity.reader.register(cx.waker());
        // The last request may have ended between the first look and the registration.
        self.sync_phase();
        if self.phase == Phase::Busy {
            return false;
        }
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            if Instant::now() >= self.deadline {
                break;
            }
            // armed for an earlier deadline that has since moved on
            let at = self.deadline;
            self.sleep.as_mut().reset(at);
        }
        if self.h2 == Some(true) && !self.activity.h2_idle_sent.swap(true, Ordering::AcqRel) {
            // Idle HTTP/2: GOAWAY first, and a hard close only if the client does not go.
            self.activity.h2_idle.notify_one();
            let at = Instant::now() + self.header_timeout;
            self.deadline = at;
            self.sleep.as_mut().reset(at);
            return self.sleep.as_mut().poll(cx).is_ready();
        }
        true
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ConnDeadline<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.sync_phase();
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.saw_bytes(&buf.filled()[before..]);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no request before the header or idle timeout",
            ))),
            other => other,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ConnDeadline<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    //! The deadlines on a paused clock: each phase's timeout, to the virtual instant.

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    const HEADER: Duration = Duration::from_secs(30);
    const IDLE: Duration = Duration::from_secs(60);

    fn conn() -> (ConnDeadline<DuplexStream>, DuplexStream, Arc<Activity>) {
        let (server, client) = tokio::io::duplex(1 << 16);
        let activity = Arc::new(Activity::default());
        let io = ConnDeadline::new(server, HEADER, IDLE, activity.clone());
        (io, client, activity)
    }

    /// Reads until the deadline fails a read; the virtual time it took.
    async fn time_to_timeout(io: &mut ConnDeadline<DuplexStream>) -> Duration {
        let start = Instant::now();
        let mut buf = [0u8; 64];
        loop {
            match io.read(&mut buf).await {
                Ok(n) => assert!(n > 0, "EOF instead of a timeout"),
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::TimedOut);
                    return start.elapsed();
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_gets_the_header_timeout() {
        let (mut io, _client, _) = conn();
        assert_eq!(time_to_timeout(&mut io).await, HEADER);
    }

    #[tokio::test(start_paused = true)]
    async fn busy_connections_have_no_deadline_and_idle_ones_the_idle_timeout() {
        let (mut io, mut client, activity) = conn();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        let request = activity.start();
        tokio::select! {
            r = io.read(&mut buf) => panic!("a read ended while a request was in flight: {r:?}"),
            _ = tokio::time::sleep(IDLE * 10) => {}
        }
        // The response is sent: idle from now.
        drop(request);
        assert_eq!(time_to_timeout(&mut io).await, IDLE);
    }

    /// Slowloris on a keep-alive connection: the first byte of the next head starts the
    /// header timeout, which ends before the idle timeout would.
    #[tokio::test(start_paused = true)]
    async fn the_next_head_gets_the_header_timeout_from_its_first_byte() {
        let (mut io, mut client, activity) = conn();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        drop(activity.start());
        tokio::time::sleep(Duration::from_secs(5)).await;
        client.write_all(b"G").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 1);
        let trickle = async {
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if client.write_all(b"E").await.is_err() {
                    break;
                }
            }
        };
        tokio::select! {
            took = time_to_timeout(&mut io) => assert_eq!(took, HEADER),
            _ = trickle => panic!("a trickling head outlived the header timeout"),
        }
    }

    /// HTTP/2 frames while idle (PINGs) are no request head; an idle HTTP/2 connection is
    /// asked to go (GOAWAY) at the idle timeout, and closed a header timeout later.
    #[tokio::test(start_paused = true)]
    async fn idle_h2_gets_goaway_first() {
        let (mut io, mut client, activity) = conn();
        client.write_all(H2_PREFACE).await.unwrap();
        let mut buf = [0u8; 64];
        let mut got = 0;
        while got < H2_PREFACE.len() {
            got += io.read(&mut buf).await.unwrap();
        }
        drop(activity.start());
        tokio::time::sleep(Duration::from_secs(1)).await;
        client.write_all(b"ping").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 4);
        assert_eq!(
            time_to_timeout(&mut io).await,
            IDLE - Duration::from_secs(1) + HEADER
        );
        // The GOAWAY request was made (its permit is stored).
        tokio::time::timeout(Duration::from_millis(1), activity.h2_idle.notified())
            .await
            .expect("no GOAWAY was asked for");
    }
}
