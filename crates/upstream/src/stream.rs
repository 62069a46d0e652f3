//! The verifying blob stream: passes chunks through, hashes them, and turns a wrong digest
//! or length into an error in place of a clean end.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::stream::{BoxStream, Stream};
use rf_oci::{Digest, DigestHasher};

use crate::UpstreamError;

pub struct Verifying {
    inner: BoxStream<'static, Result<Bytes, UpstreamError>>,
    expected: Digest,
    /// Present when the stream starts at offset 0 (otherwise only the length is checked).
    hasher: Option<DigestHasher>,
    /// Bytes this stream must yield, if known.
    expected_len: Option<u64>,
    seen: u64,
    done: bool,
}

impl Verifying {
    pub fn new(
        inner: BoxStream<'static, Result<Bytes, UpstreamError>>,
        expected: Digest,
        from_start: bool,
        expected_len: Option<u64>,
    ) -> Verifying {
        Verifying {
            hasher: from_start.then(|| expected.hasher()),
            inner,
            expected,
            expected_len,
            seen: 0,
            done: false,
        }
    }

    fn length_error(&self, seen: u64, want: u64) -> UpstreamError {
        UpstreamError::DigestMismatch {
            expected: self.expected.clone(),
            actual: format!("{seen} bytes where {want} were expected"),
        }
    }
}

impl Stream for Verifying {
    type Item = Result<Bytes, UpstreamError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                self.seen += chunk.len() as u64;
                if let Some(want) = self.expected_len {
                    if self.seen > want {
                        self.done = true;
                        let seen = self.seen;
                        return Poll::Ready(Some(Err(self.length_error(seen, want))));
                    }
                }
                if let Some(h) = self.hasher.as_mut() {
                    h.update(&chunk);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.done = true;
                if let Some(want) = self.expected_len {
                    if self.seen != want {
                        let seen = self.seen;
                        return Poll::Ready(Some(Err(self.length_error(seen, want))));
                    }
                }
                if let Some(h) = self.hasher.take() {
                    let actual = h.finish();
                    if actual != self.expected {
                        return Poll::Ready(Some(Err(UpstreamError::DigestMismatch {
                            expected: self.expected.clone(),
                            actual: actual.to_string(),
                        })));
                    }
                }
                Poll::Ready(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn chunks(parts: &[&'static [u8]]) -> BoxStream<'static, Result<Bytes, UpstreamError>> {
        futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
        .boxed()
    }

    async fn run(v: Verifying) -> (Vec<u8>, Option<UpstreamError>) {
        let mut out = Vec::new();
        let mut v = v;
        while let Some(item) = v.next().await {
            match item {
                Ok(b) => out.extend_from_slice(&b),
                Err(e) => {
                    assert!(v.next().await.is_none(), "stream continues after an error");
                    return (out, Some(e));
                }
            }
        }
        (out, None)
    }

    #[tokio::test]
    async fn good_bad_and_short() {
        let d = Digest::sha256_of(b"hello world");
        let (out, err) = run(Verifying::new(
            chunks(&[b"hello", b" world"]),
            d.clone(),
            true,
            Some(11),
        ))
        .await;
        assert_eq!(out, b"hello world");
        assert!(err.is_none());

        let (_, err) = run(Verifying::new(
            chunks(&[b"hello", b" w0rld"]),
            d.clone(),
            true,
            None,
        ))
        .await;
        assert!(matches!(err, Some(UpstreamError::DigestMismatch { .. })));

        let (_, err) = run(Verifying::new(
            chunks(&[b"hello"]),
            d.clone(),
            true,
            Some(11),
        ))
        .await;
        assert!(matches!(err, Some(UpstreamError::DigestMismatch { .. })));

        let (_, err) = run(Verifying::new(
            chunks(&[b"hello world", b"!"]),
            d.clone(),
            true,
            Some(11),
        ))
        .await;
        assert!(matches!(err, Some(UpstreamError::DigestMismatch { .. })));

        // From an offset only the length is checked.
        let (out, err) = run(Verifying::new(
            chunks(&[b"world"]),
            d.clone(),
            false,
            Some(5),
        ))
        .await;
        assert_eq!(out, b"world");
        assert!(err.is_none());
    }
}
