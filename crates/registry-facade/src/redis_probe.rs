//! Whether the Redis of `registry.redis` answers, for `/ready`: Gitpod's keys (`enabled`,
//! `singleHostAddr`, `username`, `useTLS`; the password from `REDIS_PASSWORD`), a connection,
//! `AUTH` when a password is set, and `PING`. The facade keeps no state in Redis yet, so this
//! is the whole client: a few lines of RESP rather than a client library.

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

use crate::config::RedisConfig;

/// What the probe needs of `registry.redis`.
#[derive(Debug, Clone)]
pub struct RedisProbe {
    single_host_addr: String,
    username: String,
    use_tls: bool,
    password: Option<String>,
}

impl RedisProbe {
    /// The probe for `registry.redis`, when it is enabled (password from `REDIS_PASSWORD`).
    pub fn from_config(c: Option<&RedisConfig>) -> Option<RedisProbe> {
        let c = c.filter(|c| c.enabled && !c.single_host_addr.is_empty())?;
        Some(RedisProbe {
            single_host_addr: c.single_host_addr.clone(),
            username: c.username.clone(),
            use_tls: c.use_tls,
            password: std::env::var("REDIS_PASSWORD")
                .ok()
                .filter(|s| !s.is_empty()),
        })
    }

    /// Connects and asks `PING` (after `AUTH`); with `useTLS`, a TCP connection is all it
    /// checks. The error names what failed, never the password.
    pub async fn check(&self) -> Result<(), String> {
        let addr = &self.single_host_addr;
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        if self.use_tls {
            return Ok(());
        }
        let mut conn = BufReader::new(stream);
        if let Some(pass) = &self.password {
            let mut auth = vec!["AUTH"];
            if !self.username.is_empty() {
                auth.push(&self.username);
            }
            auth.push(pass);
            command(&mut conn, &auth, "+OK").await?;
        }
        command(&mut conn, &["PING"], "+PONG").await
    }
}

/// Sends `args` as a RESP array and expects the reply line `want`.
async fn command(conn: &mut BufReader<TcpStream>, args: &[&str], want: &str) -> Result<(), String> {
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    conn.get_mut()
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("redis: {e}"))?;
    let mut line = String::new();
    conn.read_line(&mut line)
        .await
        .map_err(|e| format!("redis: {e}"))?;
    let line = line.trim_end();
    if line == want {
        Ok(())
    } else if line.is_empty() {
        Err(format!("redis closed the connection on {}", args[0]))
    } else {
        Err(format!("redis answered {line:?} to {}", args[0]))
    }
}
