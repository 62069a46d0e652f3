//! A deadline for a connection's first request: a client that connects and sends nothing (or
//! only part of a request head) is dropped instead of holding a socket and a task forever.
//! hyper's own header timeout starts only once it reads a request head, after the HTTP/1-or-2
//! sniffing, so the first one needs this.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Wraps a connection's IO: reads fail with `TimedOut` once the deadline has passed, until the
/// server has written something (an HTTP/2 SETTINGS frame, a response) or `disarm` is set (a
/// request has arrived; its handler may take long, and hyper may poll reads meanwhile).
pub(crate) struct FirstRequestDeadline<I> {
    io: I,
    sleep: Option<Pin<Box<Sleep>>>,
    disarm: Arc<AtomicBool>,
}

impl<I> FirstRequestDeadline<I> {
    pub(crate) fn new(io: I, timeout: Duration, disarm: Arc<AtomicBool>) -> Self {
        FirstRequestDeadline {
            io,
            sleep: Some(Box::pin(tokio::time::sleep(timeout))),
            disarm,
        }
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.disarm.load(Ordering::Relaxed) {
            self.sleep = None;
        }
        match &mut self.sleep {
            Some(s) => s.as_mut().poll(cx).is_ready(),
            None => false,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FirstRequestDeadline<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no request before the header timeout",
            ))),
            other => other,
        }
    }
}

use std::future::Future as _;

impl<I: AsyncWrite + Unpin> AsyncWrite for FirstRequestDeadline<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.sleep = None;
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.sleep = None;
        }
        r
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
