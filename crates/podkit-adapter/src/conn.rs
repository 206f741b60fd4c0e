//! A kept connection to a source that speaks a line protocol (memcached's text protocol,
//! twemproxy's stats port): opened on first use, reused by every scrape, dropped on any error.
//!
//! A scrape that times out drops its future mid-read; the connection was taken out of the slot
//! for that scrape and is never put back, so no later scrape reads a stale answer.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

#[derive(Debug)]
pub(crate) struct Kept {
    addr: String,
    slot: Mutex<Option<BufReader<TcpStream>>>,
}

impl Kept {
    pub(crate) fn new(addr: String) -> Self {
        Kept { addr, slot: Mutex::new(None) }
    }

    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// Takes the kept connection, or opens one (bounded by `connect_timeout`).
    pub(crate) async fn take(&self, connect_timeout: Duration) -> Result<BufReader<TcpStream>, String> {
        if let Some(c) = self.slot.lock().await.take() {
            return Ok(c);
        }
        let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| format!("cannot connect to {}: no answer within {connect_timeout:?}", self.addr))?
            .map_err(|e| format!("cannot connect to {}: {e}", self.addr))?;
        let _ = stream.set_nodelay(true);
        Ok(BufReader::new(stream))
    }

    /// Gives a connection back after a complete exchange.
    pub(crate) async fn put(&self, conn: BufReader<TcpStream>) {
        *self.slot.lock().await = Some(conn);
    }
}

/// Sends `request` and reads lines until one equals `end` (exclusive), `max` bytes at most.
pub(crate) async fn exchange(
    conn: &mut BufReader<TcpStream>,
    request: &[u8],
    ends: usize,
    max: usize,
) -> Result<Vec<String>, String> {
    conn.get_mut().write_all(request).await.map_err(|e| format!("write: {e}"))?;
    let mut lines = Vec::new();
    let mut seen = 0;
    let mut total = 0;
    let mut line = String::new();
    while seen < ends {
        line.clear();
        let n = conn.read_line(&mut line).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("the server closed the connection".into());
        }
        total += n;
        if total > max {
            return Err(format!("the answer is larger than {max} bytes"));
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l == "END" {
            seen += 1;
            lines.push(String::new());
            continue;
        }
        if l == "ERROR" || l.starts_with("CLIENT_ERROR") || l.starts_with("SERVER_ERROR") {
            return Err(format!("the server answered {l:?}"));
        }
        lines.push(l.to_string());
    }
    Ok(lines)
}
