//! Where connections come from. [`Accept`] lets the server loop run over anything that yields
//! connections (tests feed it errors); [`TcpAcceptor`] is the real one.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::error::ServeError;

/// A source of connections for [`crate::Server`].
pub trait Accept: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next connection. An error does not end the server: it is logged and retried.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Io, SocketAddr)>> + Send;
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// A TCP listener whose accepted sockets have `TCP_NODELAY` set: a response's head and body
/// go out as separate writes, and without it each small response on a keep-alive connection
/// waits for the peer's delayed ACK (about 40 ms).
pub struct TcpAcceptor(TcpListener);

impl TcpAcceptor {
    pub fn new(listener: TcpListener) -> Self {
        TcpAcceptor(listener)
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

impl Accept for TcpAcceptor {
    type Io = TcpStream;

    async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        let (tcp, peer) = self.0.accept().await?;
        tcp.set_nodelay(true)?;
        Ok((tcp, peer))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// Go-style `:port` means every interface.
pub fn listen_addr(addr: &str) -> String {
    if addr.starts_with(':') {
        format!("0.0.0.0{addr}")
    } else {
        addr.to_string()
    }
}

/// Binds `addr` (`host:port` or `:port`).
pub async fn bind(addr: &str) -> Result<TcpAcceptor, ServeError> {
    let addr = listen_addr(addr);
    TcpListener::bind(&addr)
        .await
        .map(TcpAcceptor)
        .map_err(|source| ServeError::Bind { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_style_port() {
        assert_eq!(listen_addr(":5000"), "0.0.0.0:5000");
        assert_eq!(listen_addr("127.0.0.1:5000"), "127.0.0.1:5000");
    }

    /// TCP_NODELAY on an accepted socket (the option, not a timing).
    #[tokio::test]
    async fn accepted_sockets_have_nodelay() {
        let mut l = bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (server_side, _) = l.accept().await.unwrap();
        assert!(server_side.nodelay().unwrap());
    }
}
