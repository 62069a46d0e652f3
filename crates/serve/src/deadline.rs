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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the connection's requests tell its IO: how many are in flight.
#[derive(Default)]
pub(crate) struct Activity {
    in_flight: AtomicUsize,
    /// Wakes a read parked without a deadline (a request was in flight) once the last one
    /// ends: with HTTP/2 that happens on another task, and the idle deadline must start.
    reader: AtomicWaker,
    /// Set when an HTTP/2 connection has been idle too long: the connection task then sends
    /// GOAWAY, which lets a client that is about to send a request retry it elsewhere.
    pub(crate) h2_idle: Notify,
    h2_idle_sent: AtomicBool,
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
    sleep: Pin<Box<Sleep>>,
    phase: Phase,
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
            phase: Phase::Waiting { head_started: true },
            preface: Vec::new(),
            h2: None,
        }
    }

    fn sync_phase(&mut self) {
        if self.activity.busy() {
            self.phase = Phase::Busy;
        } else if self.phase == Phase::Busy {
            self.phase = Phase::Waiting {
                head_started: false,
            };
            self.sleep
                .as_mut()
                .reset(Instant::now() + self.idle_timeout);
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
            if head_deadline < self.sleep.deadline() {
                self.sleep.as_mut().reset(head_deadline);
            }
        }
    }

    /// Whether the read that is about to return `Pending` must fail instead.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.activity.reader.register(cx.waker());
        // The last request may have ended between the first look and the registration.
        self.sync_phase();
        if self.phase == Phase::Busy || self.sleep.as_mut().poll(cx).is_pending() {
            return false;
        }
        if self.h2 == Some(true) && !self.activity.h2_idle_sent.swap(true, Ordering::AcqRel) {
            // Idle HTTP/2: GOAWAY first, and a hard close only if the client does not go.
            self.activity.h2_idle.notify_one();
            self.sleep
                .as_mut()
                .reset(Instant::now() + self.header_timeout);
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
