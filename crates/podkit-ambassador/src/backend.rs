//! Connections to one backend server.
//!
//! Each server has `server_connections` connections; a client connection always uses the same
//! one (so its requests to that server stay in order). A connection is a task that opens the
//! socket when the first request comes (or at once with `preconnect`), writes requests in
//! batches as they queue up, and matches answers to requests in order. A timeout, an error or
//! garbage from the server closes the connection and fails every request in flight on it with
//! an error the client sees at once; the next request opens a new one.
//!
//! The server also keeps its health: failures in a row, and whether `auto_eject_hosts` has
//! taken it out (see [`crate::pool`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::config::Addr;
use crate::memcache;
use crate::stats::ServerStats;
use crate::workers::{self, Workers};

/// Requests queued for one connection before clients wait (backpressure).
const QUEUE: usize = 4096;
/// Most bytes written in one batch.
const BATCH_BYTES: usize = 256 * 1024;

/// Which protocol a server speaks, and so how its answers are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Memcache(memcache::Framing),
    Resp,
}

/// Why a request got no answer from its server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No connection: the system's words for why (`Connection refused`), then podkit's detail.
    Connect {
        system: String,
        detail: String,
    },
    /// The server refused the connection's AUTH or SELECT: its own error line, without the
    /// `-` (`WRONGPASS invalid username-password pair …`), which reaches the client as it is.
    Refused(String),
    Timeout,
    Closed,
    Protocol(String),
    /// The server is ejected and the pool fails fast.
    Ejected,
    /// Every server of the pool is ejected.
    NoServers,
}

impl Failure {
    /// A connection that could not be made, in the words nutcracker's clients match on (it
    /// answers with the system's `strerror`).
    pub(crate) fn connect(e: &std::io::Error) -> Failure {
        let system = match e.raw_os_error() {
            Some(code) => nix::errno::Errno::from_raw(code).desc(),
            None if e.kind() == std::io::ErrorKind::TimedOut => "Connection timed out",
            None => "Connection refused",
        };
        Failure::Connect { system: system.to_string(), detail: e.to_string() }
    }

    /// The text clients see after `SERVER_ERROR ` or `-ERR `. `server` is the server's label,
    /// or for [`Failure::NoServers`] the pool's name. Where nutcracker answers with the
    /// system's words (a timeout, a refused connection), the text starts with them, so a
    /// client that matches on nutcracker's answer still matches; podkit's detail follows.
    pub(crate) fn describe(&self, server: &str) -> String {
        match self {
            Failure::Connect { system, detail } => format!("{system} (podkit: cannot connect to {server}: {detail})"),
            Failure::Refused(line) => format!("{line} (podkit: {server} refused the connection's AUTH or SELECT)"),
            Failure::Timeout => format!("Connection timed out (podkit: {server} did not answer in time)"),
            Failure::Closed => format!("podkit: connection to {server} lost"),
            Failure::Protocol(e) => format!("podkit: {server} sent an invalid answer: {e}"),
            Failure::Ejected => format!("podkit: {server} is ejected (down); its keys fail fast"),
            Failure::NoServers => format!("podkit: every server of pool {server} is ejected"),
        }
    }

    /// The memcache answer for a request this failure ended.
    pub(crate) fn memcache_answer(&self, server: &str) -> Bytes {
        Bytes::from(format!("SERVER_ERROR {}\r\n", self.describe(server)))
    }

    /// The Redis answer for a request this failure ended: `-ERR …`, or the server's own error
    /// (`-WRONGPASS …`, `-NOAUTH …`) when it refused the connection.
    pub(crate) fn redis_answer(&self, server: &str) -> Bytes {
        let text = self.describe(server);
        match self {
            Failure::Refused(_) => Bytes::from(format!("-{}\r\n", text.replace(['\r', '\n'], " "))),
            _ => crate::redis::error(&text),
        }
    }
}

/// The answer to one request: its bytes, or why there are none (with the server's name).
pub(crate) type Answer = Result<Bytes, (Failure, Arc<str>)>;

/// One request for a server.
#[derive(Debug)]
pub(crate) struct Op {
    pub(crate) bytes: Bytes,
    pub(crate) framing: Framing,
    /// `None`: the client expects no answer (memcache `noreply`); it is read and dropped.
    pub(crate) reply: Option<oneshot::Sender<Answer>>,
}

/// What a server's connections need to know, fixed for its life. A reload that changes any of
/// it makes a new server (new connections).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    pub(crate) addr: Addr,
    pub(crate) label: String,
    pub(crate) connections: u32,
    pub(crate) timeout: Duration,
    pub(crate) redis_auth: Option<String>,
    pub(crate) redis_db: u32,
    pub(crate) redis: bool,
    pub(crate) tcpkeepalive: bool,
    pub(crate) preconnect: bool,
    pub(crate) eject: Option<EjectPolicy>,
}

/// `auto_eject_hosts`: after `failure_limit` failures in a row, the server is out for
/// `retry_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EjectPolicy {
    pub(crate) failure_limit: u32,
    pub(crate) retry_timeout: Duration,
}

/// A backend server: the senders of its connection tasks (`server_connections` on every
/// worker thread) and its shared state.
#[derive(Debug)]
pub(crate) struct Server {
    conns: Vec<Vec<mpsc::Sender<Op>>>,
    pub(crate) shared: Arc<Shared>,
}

/// State shared by a server's connections, its pool and the stats.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    pub(crate) stats: ServerStats,
    failures: AtomicU32,
    ejected: AtomicBool,
    /// When the server was ejected, in µs since the epoch (twemproxy's `server_ejected_at`).
    pub(crate) ejected_at_us: AtomicU64,
    ejected_until: std::sync::Mutex<Option<Instant>>,
    /// Bumped on every ejection and return; pools rebuild their distribution on it.
    pub(crate) changes: watch::Sender<u64>,
}

impl Server {
    /// Starts the server's connection tasks on every worker (idle until a request comes,
    /// unless `preconnect`).
    pub(crate) fn start(settings: Settings, workers: &Workers) -> Arc<Server> {
        let shared = Arc::new(Shared::new(settings));
        let conns = workers
            .handles
            .iter()
            .map(|worker| {
                (0..shared.settings.connections.max(1))
                    .map(|_| {
                        let (tx, rx) = mpsc::channel(QUEUE);
                        worker.spawn(connection(shared.clone(), rx));
                        tx
                    })
                    .collect()
            })
            .collect();
        Arc::new(Server { conns, shared })
    }

    /// Queues `op` on the connection for client `client` on the calling worker thread (so a
    /// request never changes threads). Fails at once (through the reply) when the connection
    /// task is gone.
    pub(crate) async fn send(&self, client: u64, op: Op) {
        let conns = &self.conns[workers::current() % self.conns.len()];
        let conn = &conns[(client % conns.len() as u64) as usize];
        if let Err(mpsc::error::SendError(op)) = conn.send(op).await
            && let Some(reply) = op.reply
        {
            let _ = reply.send(Err((Failure::Closed, self.label())));
        }
    }

    pub(crate) fn label(&self) -> Arc<str> {
        Arc::from(self.shared.settings.label.as_str())
    }

    /// Requests waiting to be written, over all connections.
    pub(crate) fn queued(&self) -> usize {
        self.conns.iter().flatten().map(|c| c.max_capacity() - c.capacity()).sum()
    }
}

impl Shared {
    /// A server in the pool (not ejected), with no failures and no numbers yet.
    fn new(settings: Settings) -> Shared {
        Shared {
            stats: ServerStats::default(),
            failures: AtomicU32::new(0),
            ejected: AtomicBool::new(false),
            ejected_at_us: AtomicU64::new(0),
            ejected_until: std::sync::Mutex::new(None),
            changes: watch::channel(0).0,
            settings,
        }
    }

    pub(crate) fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }

    /// When an ejected server may be tried again.
    pub(crate) fn retry_at(&self) -> Option<Instant> {
        *self.ejected_until.lock().expect("not poisoned")
    }

    /// Counts a failure (a refused connection, a timeout, a lost connection with requests in
    /// flight) and ejects the server when the policy says so.
    pub(crate) fn failed(&self, why: &Failure) {
        match why {
            Failure::Timeout => self.stats.timeouts.inc(),
            Failure::Closed => self.stats.eof.inc(),
            _ => self.stats.errors.inc(),
        }
        let Some(policy) = self.settings.eject else { return };
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n < policy.failure_limit || self.is_ejected() {
            return;
        }
        self.failures.store(0, Ordering::Release);
        *self.ejected_until.lock().expect("not poisoned") = Some(Instant::now() + policy.retry_timeout);
        self.ejected.store(true, Ordering::Release);
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        self.ejected_at_us.store(now.as_micros() as u64, Ordering::Relaxed);
        self.stats.ejections.inc();
        tracing::warn!(
            server = %self.settings.label, failures = n, retry_in = ?policy.retry_timeout,
            "server ejected after failures in a row: {}", why.describe(&self.settings.label)
        );
        self.changes.send_modify(|v| *v += 1);
    }

    /// An answer came back: the failure count starts again.
    fn succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Puts an ejected server back (its retry time came, or a health check answered).
    pub(crate) fn restore(&self, why: &str) {
        if self.ejected.swap(false, Ordering::AcqRel) {
            *self.ejected_until.lock().expect("not poisoned") = None;
            self.failures.store(0, Ordering::Release);
            tracing::info!(server = %self.settings.label, "server back in the pool ({why})");
            self.changes.send_modify(|v| *v += 1);
        }
    }
}

// === the connection task ===

/// A request written and waiting for its answer.
struct InFlight {
    framing: Framing,
    reply: Option<oneshot::Sender<Answer>>,
    sent: Instant,
}

async fn connection(shared: Arc<Shared>, mut rx: mpsc::Receiver<Op>) {
    let label: Arc<str> = Arc::from(shared.settings.label.as_str());
    let mut first = None;
    let mut eager = shared.settings.preconnect;
    loop {
        if first.is_none() && !eager {
            match rx.recv().await {
                Some(op) => first = Some(op),
                None => return,
            }
        }
        eager = false;
        let stream = match connect(&shared.settings).await {
            Ok(s) => s,
            Err(why) => {
                tracing::debug!(server = %label, "{}", why.describe(&label));
                shared.failed(&why);
                // Everything queued behind the failed attempt fails now rather than waiting
                // for attempts of its own.
                fail(first.take(), &why, &label);
                while let Ok(op) = rx.try_recv() {
                    fail(Some(op), &why, &label);
                }
                continue;
            }
        };
        shared.stats.connections.inc();
        let mut inflight = VecDeque::new();
        let result = match stream {
            Stream::Tcp(s) => {
                let (r, w) = s.into_split();
                serve(&shared, &mut rx, first.take(), r, w, &mut inflight).await
            }
            Stream::Unix(s) => {
                let (r, w) = s.into_split();
                serve(&shared, &mut rx, first.take(), r, w, &mut inflight).await
            }
        };
        shared.stats.connections.dec();
        match result {
            Ok(()) => return, // the server left the configuration
            Err(why) => {
                if !inflight.is_empty() || why != Failure::Closed {
                    shared.failed(&why);
                    tracing::debug!(server = %label, in_flight = inflight.len(), "{}", why.describe(&label));
                }
                for f in inflight.drain(..) {
                    if let Some(reply) = f.reply {
                        let _ = reply.send(Err((why.clone(), label.clone())));
                    }
                }
            }
        }
    }
}

fn fail(op: Option<Op>, why: &Failure, label: &Arc<str>) {
    if let Some(reply) = op.and_then(|op| op.reply) {
        let _ = reply.send(Err((why.clone(), label.clone())));
    }
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn connect(s: &Settings) -> Result<Stream, Failure> {
    let attempt = async {
        Ok::<_, std::io::Error>(match &s.addr {
            Addr::Tcp { host, port } => {
                let tcp = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                tcp.set_nodelay(true)?;
                if s.tcpkeepalive {
                    socket2::SockRef::from(&tcp).set_keepalive(true)?;
                }
                Stream::Tcp(tcp)
            }
            Addr::Unix(path) => Stream::Unix(tokio::net::UnixStream::connect(path).await?),
        })
    };
    let connected = async {
        let mut stream = attempt.await.map_err(|e| Failure::connect(&e))?;
        if s.redis {
            handshake(&mut stream, s).await?;
        }
        Ok(stream)
    };
    match tokio::time::timeout(s.timeout, connected).await {
        Ok(r) => r,
        Err(_) => Err(Failure::Connect {
            system: "Connection timed out".into(),
            detail: format!("no connection within {:?}", s.timeout),
        }),
    }
}

/// AUTH and SELECT on a new Redis connection, as configured for the pool. A refusal is the
/// server's own error line, for the client to see.
async fn handshake(stream: &mut Stream, s: &Settings) -> Result<(), Failure> {
    let mut steps = Vec::new();
    if let Some(auth) = &s.redis_auth {
        steps.push(("AUTH", crate::redis::encode(&[b"AUTH".as_slice(), auth.as_bytes()])));
    }
    if s.redis_db != 0 {
        steps.push(("SELECT", crate::redis::encode(&[b"SELECT".as_slice(), s.redis_db.to_string().as_bytes()])));
    }
    for (what, step) in steps {
        let answer = stream.ask(&step, Framing::Resp).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => Failure::Protocol(format!("{what}: {e}")),
            _ => Failure::Closed,
        })?;
        if answer.first() != Some(&b'+') {
            let text = String::from_utf8_lossy(&answer);
            let line = text.trim().trim_start_matches('-');
            return Err(Failure::Refused(if line.is_empty() {
                format!("ERR {what} refused")
            } else {
                line.to_string()
            }));
        }
    }
    Ok(())
}

impl Stream {
    /// Writes `req` and reads its one answer (for the handshake and health probes, before or
    /// outside the pipelined traffic). An answer that does not frame is `InvalidData`.
    async fn ask(&mut self, req: &[u8], framing: Framing) -> std::io::Result<BytesMut> {
        match self {
            Stream::Tcp(t) => ask(t, req, framing).await,
            Stream::Unix(u) => ask(u, req, framing).await,
        }
    }
}

async fn ask<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, req: &[u8], framing: Framing) -> std::io::Result<BytesMut> {
    s.write_all(req).await?;
    let mut buf = BytesMut::new();
    loop {
        let framed = match framing {
            Framing::Memcache(f) => memcache::frame(f, &buf),
            Framing::Resp => crate::redis::frame(&buf),
        };
        match framed {
            Ok(Some(_)) => return Ok(buf),
            Ok(None) => {}
            Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        }
        if s.read_buf(&mut buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Serves one open connection until it breaks (`Err`) or the server leaves the configuration
/// and every answer is in (`Ok`). Requests written but unanswered are left in `inflight`.
async fn serve<R, W>(
    shared: &Shared,
    rx: &mut mpsc::Receiver<Op>,
    first: Option<Op>,
    mut r: R,
    mut w: W,
    inflight: &mut VecDeque<InFlight>,
) -> Result<(), Failure>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let timeout = shared.settings.timeout;
    let mut pending = first;
    let mut out = BytesMut::with_capacity(16 * 1024);
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut open = true;
    loop {
        if !open && inflight.is_empty() {
            return Ok(());
        }
        // Take every request already queued, up to a batch. Yielding first lets the clients
        // that are ready run and queue theirs: one write then carries many requests (as an
        // event loop writes once per turn), which saves the server as many reads.
        if open {
            if pending.is_some() {
                tokio::task::yield_now().await;
            }
            if pending.is_none() {
                match rx.try_recv() {
                    Ok(op) => pending = Some(op),
                    Err(mpsc::error::TryRecvError::Empty) => {}
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            while let Some(op) = pending.take() {
                shared.stats.requests.inc();
                shared.stats.request_bytes.inc_by(op.bytes.len() as u64);
                out.extend_from_slice(&op.bytes);
                inflight.push_back(InFlight { framing: op.framing, reply: op.reply, sent: Instant::now() });
                if out.len() >= BATCH_BYTES {
                    break;
                }
                if let Ok(op) = rx.try_recv() {
                    pending = Some(op);
                }
            }
        }
        if !out.is_empty() {
            // Answers are read while writing, so a server that answers a long pipeline before
            // reading all of it cannot deadlock with us.
            let write = w.write_all(&out);
            tokio::pin!(write);
            loop {
                tokio::select! {
                    biased;
                    r = &mut write => { r.map_err(|_| Failure::Closed)?; break; }
                    n = r.read_buf(&mut input) => {
                        if n.map_err(|_| Failure::Closed)? == 0 { return Err(Failure::Closed); }
                        deliver(shared, &mut input, inflight)?;
                    }
                }
            }
            out.clear();
            shared.stats.out_queue.set(inflight.len() as i64);
            continue;
        }
        // Nothing to write: wait for an answer, a new request, or the deadline of the oldest
        // request in flight.
        let deadline = inflight.front().map(|f| f.sent + timeout);
        tokio::select! {
            biased;
            n = r.read_buf(&mut input) => {
                if n.map_err(|_| Failure::Closed)? == 0 {
                    return Err(Failure::Closed);
                }
                if inflight.is_empty() {
                    return Err(Failure::Protocol("an answer nobody asked for".into()));
                }
                deliver(shared, &mut input, inflight)?;
                shared.stats.out_queue.set(inflight.len() as i64);
            }
            op = rx.recv(), if open => match op {
                Some(op) => pending = Some(op),
                None => open = false,
            },
            _ = sleep_until(deadline) => return Err(Failure::Timeout),
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Hands every complete answer in `input` to its request.
fn deliver(shared: &Shared, input: &mut BytesMut, inflight: &mut VecDeque<InFlight>) -> Result<(), Failure> {
    while let Some(front) = inflight.front() {
        let framed = match front.framing {
            Framing::Memcache(f) => memcache::frame(f, input),
            Framing::Resp => crate::redis::frame(input),
        };
        let n = match framed {
            Ok(Some(n)) => n,
            Ok(None) => break,
            Err(e) => return Err(Failure::Protocol(e)),
        };
        let f = inflight.pop_front().expect("front exists");
        let answer = input.split_to(n).freeze();
        shared.stats.responses.inc();
        shared.stats.response_bytes.inc_by(answer.len() as u64);
        shared.stats.latency.observe(f.sent.elapsed());
        shared.succeeded();
        if let Some(reply) = f.reply {
            let _ = reply.send(Ok(answer));
        }
    }
    if inflight.is_empty() && !input.is_empty() {
        return Err(Failure::Protocol("an answer nobody asked for".into()));
    }
    Ok(())
}

/// One health probe: connect, ask (`version` / `PING`), read one answer, within `timeout`.
pub(crate) async fn probe(settings: &Settings) -> Result<(), Failure> {
    let attempt = async {
        let mut stream = connect(settings).await?;
        let (req, framing): (&[u8], _) = if settings.redis {
            (b"*1\r\n$4\r\nPING\r\n", Framing::Resp)
        } else {
            (b"version\r\n", Framing::Memcache(memcache::Framing::Single))
        };
        let answer = stream.ask(req, framing).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => Failure::Protocol(e.to_string()),
            _ => Failure::Closed,
        })?;
        if answer.starts_with(b"-") || answer.starts_with(b"SERVER_ERROR") {
            return Err(Failure::Protocol(String::from_utf8_lossy(&answer).trim().to_string()));
        }
        Ok(())
    };
    match tokio::time::timeout(settings.timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(Failure::Timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETRY: Duration = Duration::from_secs(30);

    fn server(eject: Option<EjectPolicy>) -> Shared {
        Shared::new(Settings {
            addr: Addr::Tcp { host: "127.0.0.1".into(), port: 11211 },
            label: "127.0.0.1:11211:1".into(),
            connections: 1,
            timeout: Duration::from_secs(1),
            redis_auth: None,
            redis_db: 0,
            redis: false,
            tcpkeepalive: false,
            preconnect: false,
            eject,
        })
    }

    /// A server that `auto_eject_hosts` takes out for [`RETRY`] after `failure_limit` failures
    /// in a row.
    fn ejecting(failure_limit: u32) -> Shared {
        server(Some(EjectPolicy { failure_limit, retry_timeout: RETRY }))
    }

    #[tokio::test(start_paused = true)]
    async fn ejected_after_failure_limit_failures_in_a_row() {
        let s = ejecting(3);
        let changes = s.changes.subscribe();
        s.failed(&Failure::Timeout);
        s.failed(&Failure::Closed);
        assert!(!s.is_ejected(), "ejected after 2 failures of 3");
        assert_eq!(s.retry_at(), None);
        assert_eq!(s.stats.ejections.get(), 0);
        assert!(!changes.has_changed().unwrap(), "the pool was told of a change that did not happen");

        tokio::time::advance(Duration::from_secs(5)).await;
        let ejected_at = Instant::now();
        s.failed(&Failure::connect(&std::io::ErrorKind::ConnectionRefused.into()));
        assert!(s.is_ejected(), "not ejected after 3 failures of 3");
        assert_eq!(s.retry_at(), Some(ejected_at + RETRY), "retry_timeout counts from the ejection");
        assert_eq!(s.stats.ejections.get(), 1);
        assert_ne!(s.ejected_at_us.load(Ordering::Relaxed), 0, "server_ejected_at not set");
        assert!(changes.has_changed().unwrap(), "the pool was not told of the ejection");
        assert_eq!(*s.changes.borrow(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_starts_the_count_again() {
        let s = ejecting(3);
        s.failed(&Failure::Timeout);
        s.failed(&Failure::Timeout);
        s.succeeded();
        s.failed(&Failure::Timeout);
        s.failed(&Failure::Timeout);
        assert!(!s.is_ejected(), "failures before a success counted towards the limit");
        s.failed(&Failure::Timeout);
        assert!(s.is_ejected(), "3 failures in a row after a success did not eject");
        assert_eq!(s.stats.ejections.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_while_ejected_neither_eject_again_nor_move_the_retry() {
        let s = ejecting(2);
        s.failed(&Failure::Timeout);
        s.failed(&Failure::Timeout);
        let retry_at = s.retry_at().expect("ejected");
        tokio::time::advance(Duration::from_secs(10)).await;
        for _ in 0..5 {
            s.failed(&Failure::Closed);
        }
        assert!(s.is_ejected());
        assert_eq!(s.retry_at(), Some(retry_at), "a failure while out postponed the retry");
        assert_eq!(s.stats.ejections.get(), 1, "a server already out was ejected again");
        assert_eq!(*s.changes.borrow(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn restore_puts_the_server_back_with_a_fresh_count() {
        let s = ejecting(2);
        s.failed(&Failure::Timeout);
        s.failed(&Failure::Timeout);
        s.failed(&Failure::Timeout); // while out
        tokio::time::advance(RETRY).await;
        s.restore("retry_timeout passed");
        assert!(!s.is_ejected());
        assert_eq!(s.retry_at(), None);
        assert_eq!(*s.changes.borrow(), 2, "the pool was not told of the return");

        s.failed(&Failure::Timeout);
        assert!(!s.is_ejected(), "failures from before the return counted");
        let ejected_at = Instant::now();
        s.failed(&Failure::Timeout);
        assert!(s.is_ejected());
        assert_eq!(s.retry_at(), Some(ejected_at + RETRY));
        assert_eq!(s.stats.ejections.get(), 2);
        assert_eq!(*s.changes.borrow(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn restoring_a_server_that_is_in_changes_nothing() {
        let s = ejecting(2);
        let changes = s.changes.subscribe();
        s.failed(&Failure::Timeout);
        s.restore("health check answered");
        assert!(!s.is_ejected());
        assert!(!changes.has_changed().unwrap(), "the pool would rebuild its distribution for nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn without_auto_eject_hosts_failures_are_only_counted() {
        let s = server(None);
        let changes = s.changes.subscribe();
        for _ in 0..10 {
            s.failed(&Failure::Timeout);
            s.failed(&Failure::Closed);
            s.failed(&Failure::connect(&std::io::ErrorKind::ConnectionRefused.into()));
            s.failed(&Failure::Protocol("garbage".into()));
        }
        assert!(!s.is_ejected());
        assert_eq!(s.retry_at(), None);
        assert_eq!(s.stats.ejections.get(), 0);
        assert!(!changes.has_changed().unwrap());
        assert_eq!(s.stats.timeouts.get(), 10);
        assert_eq!(s.stats.eof.get(), 10, "lost connections are server_eof");
        assert_eq!(s.stats.errors.get(), 20, "refused connections and invalid answers are server_err");
    }
}
