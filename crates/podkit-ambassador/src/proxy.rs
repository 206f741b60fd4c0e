//! Client connections: read requests, send each to its server(s), write the answers back in
//! the order the requests came (pipelining is kept: many requests may be in flight at once).
//!
//! A connection is two halves in one task. The reader parses requests and hands them to the
//! servers' connections, then queues one [`Pending`] per expected answer; the writer takes them
//! in order, waits for each answer, and writes answers out in batches. A client that goes away
//! mid-pipeline drops its pending answers; the servers' answers are read and discarded, so
//! nothing is left behind on the shared server connections.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::backend::{Answer, Failure, Framing, Op};
use crate::memcache::{self, Request};
use crate::pool::{PoolHandle, PoolState};
use crate::redis::{self, Local, Route, Split};

/// Answers queued for the writer before the reader waits (a client that pipelines without
/// reading is slowed down, not buffered without bound).
const PIPELINE: usize = 1024;

/// One answer the client is owed, in order.
enum Pending {
    Ready(Bytes),
    One {
        rx: oneshot::Receiver<Answer>,
        strip_noop: bool,
    },
    Many {
        rxs: Vec<oneshot::Receiver<Answer>>,
        merge: Merge,
    },
    /// Write what is owed, then close (quit, QUIT, a protocol error).
    Close,
}

enum Merge {
    McGet { keys: Vec<Bytes>, groups: Vec<u32> },
    McAllOk,
    Redis { kind: Split, groups: Vec<u32> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Memcache,
    Redis,
}

/// Serves one client connection until it closes.
pub(crate) async fn serve<R, W>(r: R, w: W, handle: Arc<PoolHandle>, id: u64, max_request: usize)
where
    R: AsyncRead,
    W: AsyncWrite,
{
    let state = handle.state.load_full();
    let stats = state.stats.clone();
    let proto = if state.cfg.redis { Proto::Redis } else { Proto::Memcache };
    drop(state);
    stats.client_connections.inc();
    stats.client_connections_total.inc();
    let (tx, rx) = mpsc::channel(PIPELINE);
    let reader = async {
        let result = match proto {
            Proto::Memcache => read_memcache(r, &handle, id, max_request, tx).await,
            Proto::Redis => read_redis(r, &handle, id, max_request, tx).await,
        };
        if result.is_err() {
            stats.client_err.inc();
        } else {
            stats.client_eof.inc();
        }
    };
    let writer = write(w, rx, proto, &handle);
    tokio::join!(reader, writer);
    stats.client_connections.dec();
}

// === memcache ===

async fn read_memcache<R: AsyncRead>(
    r: R,
    handle: &PoolHandle,
    id: u64,
    max_request: usize,
    tx: mpsc::Sender<Pending>,
) -> std::io::Result<()> {
    tokio::pin!(r);
    let mut parser = memcache::Parser::new(max_request);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        while let Some(req) = parser.next(&mut buf) {
            let state = handle.state.load();
            let pending = dispatch_memcache(req, &state, id).await;
            let Some(pending) = pending else { continue };
            let close = matches!(pending, Pending::Close);
            if tx.send(pending).await.is_err() || close {
                return Ok(());
            }
        }
        if !read_more(&mut r, &mut buf).await? {
            return Ok(());
        }
    }
}

async fn dispatch_memcache(req: Request, state: &PoolState, id: u64) -> Option<Pending> {
    let fail = |f: Failure, server: &str| {
        state.stats.forward_error.inc();
        Pending::Ready(f.memcache_answer(server))
    };
    match req {
        Request::Keyed { key, bytes, framing, quiet, strip_noop } => {
            let server = match state.route(&key) {
                Ok(i) => &state.servers[i],
                Err((f, server)) => return (!quiet).then(|| fail(f, &server)),
            };
            let (reply, rx) = channel(!quiet);
            server.send(id, Op { bytes, framing: Framing::Memcache(framing), reply }).await;
            rx.map(|rx| Pending::One { rx, strip_noop })
        }
        Request::Retrieve { verb, keys, bytes } => {
            let mut servers = Vec::with_capacity(keys.len());
            for k in &keys {
                match state.route(k) {
                    Ok(i) => servers.push(i),
                    Err((f, server)) => return Some(fail(f, &server)),
                }
            }
            let framing = Framing::Memcache(memcache::Framing::UntilEnd);
            if servers.iter().all(|&s| s == servers[0]) {
                let (reply, rx) = channel(true);
                state.servers[servers[0]].send(id, Op { bytes, framing, reply }).await;
                return rx.map(|rx| Pending::One { rx, strip_noop: false });
            }
            let (parts, groups) = group(&servers);
            state.stats.fragments.inc_by(parts.len() as u64);
            let mut rxs = Vec::with_capacity(parts.len());
            for (server, members) in parts {
                let mut line = BytesMut::with_capacity(verb.len() + members.len() * 16 + 2);
                line.extend_from_slice(&verb);
                for m in members {
                    line.extend_from_slice(b" ");
                    line.extend_from_slice(&keys[m]);
                }
                line.extend_from_slice(b"\r\n");
                let (reply, rx) = oneshot::channel();
                state.servers[server].send(id, Op { bytes: line.freeze(), framing, reply: Some(reply) }).await;
                rxs.push(rx);
            }
            Some(Pending::Many { rxs, merge: Merge::McGet { keys, groups } })
        }
        Request::Broadcast { bytes, quiet } => {
            let live: Vec<_> = state.live().map(|(_, s)| s.clone()).collect();
            if live.is_empty() {
                return (!quiet).then(|| fail(Failure::NoServers, &state.name));
            }
            let mut rxs = Vec::new();
            for s in live {
                let (reply, rx) = channel(!quiet);
                let framing = Framing::Memcache(memcache::Framing::Single);
                s.send(id, Op { bytes: bytes.clone(), framing, reply }).await;
                rxs.extend(rx);
            }
            (!quiet).then_some(Pending::Many { rxs, merge: Merge::McAllOk })
        }
        Request::Version => {
            let Some((_, s)) = state.live().next() else { return Some(fail(Failure::NoServers, &state.name)) };
            let (reply, rx) = oneshot::channel();
            let framing = Framing::Memcache(memcache::Framing::Single);
            s.send(id, Op { bytes: Bytes::from_static(b"version\r\n"), framing, reply: Some(reply) }).await;
            Some(Pending::One { rx, strip_noop: false })
        }
        Request::Stats(args) => Some(Pending::Ready(memcache_stats(state, &args))),
        Request::Noop => Some(Pending::Ready(Bytes::from_static(b"MN\r\n"))),
        Request::Quit => Some(Pending::Close),
        Request::Answer(a) => {
            state.stats.client_errors.inc();
            Some(Pending::Ready(Bytes::from_static(a)))
        }
    }
}

/// `stats`: the proxy's own numbers in memcached's format (each server's own stats are read
/// from the server, or as the proxy's metrics).
fn memcache_stats(state: &PoolState, args: &[Bytes]) -> Bytes {
    if !args.is_empty() {
        // `stats items`, `stats slabs` … describe one server; through a proxy they would mix
        // servers up. Unknown to the proxy, as an unknown one is to memcached.
        return Bytes::from_static(memcache::ERROR);
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    let s = &state.stats;
    let lines = [
        ("pid", std::process::id().to_string()),
        ("time", now.to_string()),
        ("version", format!("podkit-{}", env!("CARGO_PKG_VERSION"))),
        ("pool", state.name.clone()),
        ("servers", state.servers.len().to_string()),
        ("servers_ejected", state.servers.iter().filter(|s| s.shared.is_ejected()).count().to_string()),
        ("curr_connections", s.client_connections.get().to_string()),
        ("total_connections", s.client_connections_total.get().to_string()),
    ];
    let mut out = String::new();
    for (k, v) in lines {
        out.push_str(&format!("STAT {k} {v}\r\n"));
    }
    out.push_str("END\r\n");
    Bytes::from(out)
}

// === Redis ===

async fn read_redis<R: AsyncRead>(
    r: R,
    handle: &PoolHandle,
    id: u64,
    max_request: usize,
    tx: mpsc::Sender<Pending>,
) -> std::io::Result<()> {
    tokio::pin!(r);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut authenticated = false;
    loop {
        loop {
            let cmd = match redis::parse(&mut buf, max_request) {
                Ok(Some(cmd)) => cmd,
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Pending::Ready(redis::error(&format!("Protocol error: {}", e.0)))).await;
                    let _ = tx.send(Pending::Close).await;
                    return Err(std::io::ErrorKind::InvalidData.into());
                }
            };
            let state = handle.state.load();
            let pending = dispatch_redis(cmd, &state, id, &mut authenticated).await;
            let close = matches!(pending, Pending::Close);
            if close {
                let _ = tx.send(Pending::Ready(Bytes::from_static(b"+OK\r\n"))).await;
            }
            if tx.send(pending).await.is_err() || close {
                return Ok(());
            }
        }
        if !read_more(&mut r, &mut buf).await? {
            return Ok(());
        }
    }
}

async fn dispatch_redis(cmd: redis::Command, state: &PoolState, id: u64, authenticated: &mut bool) -> Pending {
    let refuse = |msg: &str| {
        state.stats.client_errors.inc();
        Pending::Ready(redis::error(msg))
    };
    let fail = |f: Failure, server: &str| {
        state.stats.forward_error.inc();
        Pending::Ready(f.redis_answer(server))
    };
    let route = match redis::route(&cmd) {
        Ok(r) => r,
        Err(msg) => return refuse(&msg),
    };
    let needs_auth = state.cfg.redis_auth.is_some() && !*authenticated;
    if needs_auth && !matches!(route, Route::Local(Local::Auth | Local::Quit)) {
        state.stats.client_errors.inc();
        return Pending::Ready(Bytes::from_static(b"-NOAUTH Authentication required.\r\n"));
    }
    let one = |rx| Pending::One { rx, strip_noop: false };
    match route {
        Route::Local(Local::Ping) => match cmd.args.len() {
            1 => Pending::Ready(Bytes::from_static(b"+PONG\r\n")),
            2 => Pending::Ready(redis::bulk(&cmd.args[1])),
            _ => refuse("wrong number of arguments for 'ping' command"),
        },
        Route::Local(Local::Echo) => Pending::Ready(redis::bulk(&cmd.args[1])),
        Route::Local(Local::Quit) => Pending::Close,
        Route::Local(Local::Auth) => {
            let Some(password) = &state.cfg.redis_auth else {
                return refuse("Client sent AUTH, but no password is set");
            };
            // AUTH password, or AUTH user password (the user is not checked: the pool has one
            // password).
            let given = cmd.args.last().expect("arity checked");
            *authenticated = constant_time_eq::constant_time_eq(given, password.as_bytes());
            if *authenticated { Pending::Ready(Bytes::from_static(b"+OK\r\n")) } else { refuse("invalid password") }
        }
        Route::Local(Local::Select) => {
            if cmd.args[1].as_ref() == state.cfg.redis_db.to_string().as_bytes() {
                Pending::Ready(Bytes::from_static(b"+OK\r\n"))
            } else {
                refuse(&format!(
                    "the pool's database is fixed by its redis_db ({}); SELECT cannot change it",
                    state.cfg.redis_db
                ))
            }
        }
        Route::Key(i) => match state.route(&cmd.args[i]) {
            Ok(s) => {
                let (reply, rx) = oneshot::channel();
                state.servers[s].send(id, Op { bytes: cmd.wire(), framing: Framing::Resp, reply: Some(reply) }).await;
                one(rx)
            }
            Err((f, server)) => fail(f, &server),
        },
        Route::Keys(idx) => {
            let mut server = None;
            for i in idx {
                match state.route(&cmd.args[i]) {
                    Ok(s) if server.is_none_or(|x| x == s) => server = Some(s),
                    Ok(_) => {
                        let hint = match state.cfg.hash_tag {
                            Some([a, b]) => format!("give them a common hash tag such as {}x{}", a as char, b as char),
                            None => "set a hash_tag on the pool and give them a common tag".to_string(),
                        };
                        return refuse(&format!("the keys of '{}' are on different servers; {hint}", cmd.name_upper()));
                    }
                    Err((f, server)) => return fail(f, &server),
                }
            }
            let (reply, rx) = oneshot::channel();
            let s = server.expect("at least one key");
            state.servers[s].send(id, Op { bytes: cmd.wire(), framing: Framing::Resp, reply: Some(reply) }).await;
            one(rx)
        }
        Route::Split(kind) => {
            let step = if kind == Split::Mset { 2 } else { 1 };
            let mut servers = Vec::with_capacity(cmd.args.len() / step);
            for i in (1..cmd.args.len()).step_by(step) {
                match state.route(&cmd.args[i]) {
                    Ok(s) => servers.push(s),
                    Err((f, server)) => return fail(f, &server),
                }
            }
            let (parts, groups) = redis::split(&cmd, kind, &servers);
            if parts.len() > 1 {
                state.stats.fragments.inc_by(parts.len() as u64);
            }
            let mut rxs = Vec::with_capacity(parts.len());
            for (s, bytes) in parts {
                let (reply, rx) = oneshot::channel();
                state.servers[s].send(id, Op { bytes, framing: Framing::Resp, reply: Some(reply) }).await;
                rxs.push(rx);
            }
            Pending::Many { rxs, merge: Merge::Redis { kind, groups } }
        }
    }
}

// === both ===

/// Reads what the client sent next into `buf`; `false` at the end of the stream.
async fn read_more<R: AsyncRead + Unpin>(r: &mut R, buf: &mut BytesMut) -> std::io::Result<bool> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
    Ok(r.read_buf(buf).await? > 0)
}

fn channel(wanted: bool) -> (Option<oneshot::Sender<Answer>>, Option<oneshot::Receiver<Answer>>) {
    if wanted {
        let (tx, rx) = oneshot::channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    }
}

/// Groups key positions by server, in order of first appearance: the parts (server, positions)
/// and, for each key, the index of its part.
fn group(servers: &[usize]) -> (Vec<(usize, Vec<usize>)>, Vec<u32>) {
    let mut parts: Vec<(usize, Vec<usize>)> = Vec::new();
    let mut groups = Vec::with_capacity(servers.len());
    for (k, &s) in servers.iter().enumerate() {
        let g = match parts.iter().position(|p| p.0 == s) {
            Some(g) => g,
            None => {
                parts.push((s, Vec::new()));
                parts.len() - 1
            }
        };
        parts[g].1.push(k);
        groups.push(g as u32);
    }
    (parts, groups)
}

async fn write<W: AsyncWrite>(w: W, mut rx: mpsc::Receiver<Pending>, proto: Proto, handle: &PoolHandle) {
    tokio::pin!(w);
    let mut out = BytesMut::with_capacity(16 * 1024);
    loop {
        let pending = match rx.try_recv() {
            Ok(p) => p,
            Err(_) => {
                if !out.is_empty() {
                    if w.write_all(&out).await.is_err() {
                        return;
                    }
                    out.clear();
                }
                match rx.recv().await {
                    Some(p) => p,
                    None => break,
                }
            }
        };
        match pending {
            Pending::Ready(b) => out.extend_from_slice(&b),
            Pending::One { rx, strip_noop } => {
                let Some(answer) = wait_for(rx, &mut out, &mut w).await else { return };
                match answer {
                    Ok(Ok(bytes)) if strip_noop => {
                        out.extend_from_slice(bytes.strip_suffix(b"MN\r\n").unwrap_or(&bytes));
                    }
                    Ok(Ok(bytes)) => out.extend_from_slice(&bytes),
                    Ok(Err((f, server))) => out.extend_from_slice(&failure(proto, &f, &server, handle)),
                    Err(_) => out.extend_from_slice(&failure(proto, &Failure::Closed, "server", handle)),
                }
            }
            Pending::Many { rxs, merge } => {
                let mut answers = Vec::with_capacity(rxs.len());
                let mut failed = None;
                for rx in rxs {
                    let Some(answer) = wait_for(rx, &mut out, &mut w).await else { return };
                    match answer {
                        Ok(Ok(b)) => answers.push(b),
                        Ok(Err((f, server))) => failed = failed.or(Some((f, server.to_string()))),
                        Err(_) => failed = failed.or(Some((Failure::Closed, "server".to_string()))),
                    }
                }
                if let Some((f, server)) = failed {
                    out.extend_from_slice(&failure(proto, &f, &server, handle));
                    continue;
                }
                let merged = match merge {
                    Merge::McGet { keys, groups } => memcache::merge_get(&keys, &groups, &answers),
                    Merge::McAllOk => memcache::merge_all_ok(&answers),
                    Merge::Redis { kind, groups } => redis::merge(kind, &groups, &answers),
                };
                out.extend_from_slice(&merged);
            }
            Pending::Close => break,
        }
    }
    if !out.is_empty() {
        let _ = w.write_all(&out).await;
    }
    let _ = w.shutdown().await;
}

/// The answer `rx` brings. When it is not there yet, the answers already buffered are written
/// first, so the client is not kept waiting for them. `None`: the client is gone.
async fn wait_for<W: AsyncWrite + Unpin>(
    mut rx: oneshot::Receiver<Answer>,
    out: &mut BytesMut,
    w: &mut W,
) -> Option<Result<Answer, oneshot::error::RecvError>> {
    if let Some(a) = (&mut rx).now_or_never() {
        return Some(a);
    }
    if !out.is_empty() {
        w.write_all(out).await.ok()?;
        out.clear();
    }
    Some(rx.await)
}

fn failure(proto: Proto, f: &Failure, server: &str, handle: &PoolHandle) -> Bytes {
    handle.state.load().stats.forward_error.inc();
    match proto {
        Proto::Memcache => f.memcache_answer(server),
        Proto::Redis => f.redis_answer(server),
    }
}
