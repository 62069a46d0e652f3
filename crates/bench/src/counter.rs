//! A byte-counting TCP proxy on 127.0.0.1 in front of the upstream registry: the facade or the
//! distribution proxy is pointed at it, and it counts every byte the upstream sends back
//! (response heads included), so "upstream bytes" needs no log parsing.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

#[derive(Default)]
struct Counts {
    down: AtomicU64,
}

/// The running proxy; stops accepting on drop (open connections end with their peers).
pub struct CountingProxy {
    addr: String,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
}

impl CountingProxy {
    /// Listens on 127.0.0.1:0 and forwards every connection to `upstream` (`127.0.0.1:PORT`).
    pub fn start(upstream: &str) -> Result<CountingProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (c, st, up) = (counts.clone(), stop.clone(), upstream.to_string());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(down) = conn else { continue };
                let Ok(upc) = TcpStream::connect(&up) else {
                    continue;
                };
                let _ = (down.set_nodelay(true), upc.set_nodelay(true));
                let (Ok(down2), Ok(up2)) = (down.try_clone(), upc.try_clone()) else {
                    continue;
                };
                std::thread::spawn(move || pipe(down, upc, None));
                let c2 = c.clone();
                std::thread::spawn(move || pipe(up2, down2, Some(c2)));
            }
        });
        Ok(CountingProxy { addr, counts, stop })
    }

    /// `127.0.0.1:PORT` to give to clients instead of the upstream's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Bytes sent by the upstream since the last [`CountingProxy::reset`].
    pub fn bytes(&self) -> u64 {
        self.counts.down.load(Ordering::SeqCst)
    }

    /// Sets the counters to zero.
    pub fn reset(&self) {
        self.counts.down.store(0, Ordering::SeqCst);
    }

    /// Waits until the byte count has not changed for `quiet` and `done()` holds, at most
    /// `timeout`; returns false on timeout.
    pub fn wait_quiet(
        &self,
        quiet: Duration,
        timeout: Duration,
        mut done: impl FnMut() -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        let (mut last, mut since) = (self.bytes(), Instant::now());
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            let now = self.bytes();
            if now != last {
                (last, since) = (now, Instant::now());
            } else if since.elapsed() >= quiet && done() {
                return true;
            }
        }
        false
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr); // wake the accept loop
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, count: Option<Arc<Counts>>) {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(c) = &count {
            c.down.fetch_add(n as u64, Ordering::SeqCst);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_upstream_bytes() {
        let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
        let up_addr = upstream.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut s, _) = upstream.accept().unwrap();
            let mut b = [0u8; 4];
            s.read_exact(&mut b).unwrap();
            s.write_all(&[7u8; 10_000]).unwrap();
        });
        let p = CountingProxy::start(&up_addr).unwrap();
        let mut c = TcpStream::connect(p.addr()).unwrap();
        c.write_all(b"ping").unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), 10_000);
        assert_eq!(p.bytes(), 10_000);
        p.reset();
        assert_eq!(p.bytes(), 0);
    }
}
