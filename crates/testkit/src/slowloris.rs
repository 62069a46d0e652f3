//! Slowloris clients: each sends a request head one byte a second and never finishes it, to
//! show a server's header timeout closes them and that they hold nobody else up.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::wait::wait_until_async;

/// `n` slow clients on one address; they count how many connected and how many the server
/// closed (a client that reads any byte of an answer to its half head fails its task).
pub struct SlowClients {
    n: usize,
    connected: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
}

impl SlowClients {
    /// Starts `n` clients on `addr` sending `head` (which must outlast the header timeout at
    /// one byte a second) byte by byte.
    pub fn start(addr: &str, n: usize, head: &'static [u8]) -> SlowClients {
        let connected = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let tasks = (0..n)
            .map(|_| {
                let (connected, closed, addr) = (connected.clone(), closed.clone(), addr.to_string());
                tokio::spawn(async move {
                    let mut c = TcpStream::connect(&addr).await.unwrap();
                    connected.fetch_add(1, Ordering::SeqCst);
                    let mut buf = [0u8; 64];
                    for b in head {
                        if c.write_all(std::slice::from_ref(b)).await.is_err() {
                            closed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        tokio::select! {
                            r = c.read(&mut buf) => {
                                // a server answers nothing to half a head: it only closes
                                assert!(!matches!(r, Ok(n) if n > 0), "the server answered half a head");
                                closed.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                })
            })
            .collect();
        SlowClients {
            n,
            connected,
            closed,
            tasks,
        }
    }

    /// Waits (at most `timeout`) until every client is connected.
    pub async fn wait_connected(&self, timeout: Duration) {
        wait_until_async(timeout, "every slow client connected", || {
            let n = self.connected.load(Ordering::SeqCst);
            async move { n == self.n }
        })
        .await;
    }

    /// Waits (at most `timeout`) until the server closed every client, then joins them (a
    /// client that saw an answer fails here).
    pub async fn wait_closed(self, timeout: Duration) {
        wait_until_async(timeout, "every slow client closed by the server", || {
            let n = self.closed.load(Ordering::SeqCst);
            async move { n == self.n }
        })
        .await;
        for t in self.tasks {
            t.await.unwrap();
        }
    }
}
