//! A supervised program's stdout and stderr: passed through byte for byte, and kept line by
//! line in the `/logs` ring under the program's source name.

use std::os::fd::OwnedFd;

use podkit_core::LogRing;
use podkit_core::logs::Level;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;

/// Longest line kept as one record; longer lines are split (the pass-through is unaffected).
const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Copies `fd` (the read end of the child's pipe) to podkit's own stream of the same name and
/// into `ring` as records of `source`, until every writer has closed it. With `prefix`, each
/// line goes through with it in front (the programs of a pod share one terminal); without, the
/// bytes pass through as they came.
pub async fn pump(fd: OwnedFd, stream: Stream, source: String, ring: LogRing, prefix: Option<String>) {
    let mut rx = match pipe::Receiver::from_owned_fd(fd) {
        Ok(rx) => rx,
        Err(e) => {
            tracing::error!(stream = stream.name(), error = %e, "cannot read the child's output");
            return;
        }
    };
    let mut out: Box<dyn AsyncWrite + Unpin + Send> = match stream {
        Stream::Stdout => Box::new(tokio::io::stdout()),
        Stream::Stderr => Box::new(tokio::io::stderr()),
    };
    let mut passthrough = true;
    let mut buf = vec![0u8; 64 * 1024];
    let mut line = Vec::new();
    loop {
        let n = match rx.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(stream = stream.name(), error = %e, "reading the child's output failed");
                break;
            }
        };
        let chunk = &buf[..n];
        if passthrough && prefix.is_none() {
            // If podkit's own stream is gone (a closed pipe), keep draining the child's so it
            // never blocks on a full pipe; the lines still reach /logs.
            if let Err(e) = write_all(&mut out, chunk).await {
                tracing::warn!(stream = stream.name(), error = %e, "cannot pass the child's output through; keeping it in /logs only");
                passthrough = false;
            }
        }
        for &b in chunk {
            if b == b'\n' {
                if passthrough && let Some(p) = &prefix {
                    passthrough = write_prefixed(&mut out, p, &line).await;
                }
                emit(&ring, &source, stream, &mut line);
            } else {
                line.push(b);
                if line.len() >= MAX_LINE {
                    if passthrough && let Some(p) = &prefix {
                        passthrough = write_prefixed(&mut out, p, &line).await;
                    }
                    emit(&ring, &source, stream, &mut line);
                }
            }
        }
    }
    if !line.is_empty() {
        if passthrough && let Some(p) = &prefix {
            write_prefixed(&mut out, p, &line).await;
        }
        emit(&ring, &source, stream, &mut line);
    }
}

/// Writes one line with its prefix; false once podkit's own stream is gone.
async fn write_prefixed(out: &mut (dyn AsyncWrite + Unpin + Send), prefix: &str, line: &[u8]) -> bool {
    let mut buf = Vec::with_capacity(prefix.len() + line.len() + 2);
    buf.extend_from_slice(prefix.as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
    buf.push(b'\n');
    write_all(out, &buf).await.is_ok()
}

async fn write_all(out: &mut (dyn AsyncWrite + Unpin + Send), chunk: &[u8]) -> std::io::Result<()> {
    out.write_all(chunk).await?;
    out.flush().await
}

fn emit(ring: &LogRing, source: &str, stream: Stream, line: &mut Vec<u8>) {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    let text = String::from_utf8_lossy(line).into_owned();
    ring.push(Level::Info, source, Some(stream.name()), text, Default::default());
    line.clear();
}
