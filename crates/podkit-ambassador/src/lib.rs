//! `podkit ambassador`: a sharding proxy for memcache and Redis that reads twemproxy's
//! configuration and places keys exactly where twemproxy (nutcracker) places them, so a
//! migration does not empty the cache.
//!
//! - `config`: `nutcracker.yml`, as it is, plus podkit's pool keys.
//! - [`hashkit`]: the hashes and distributions, bit for bit twemproxy's.
//! - `memcache`, `redis`: the protocols: parsing, routing, framing, merging.
//! - `backend`: connections to servers; `pool`: pools, ejection, health checks, reload.
//! - `workers`: the threads that serve clients and the server connections they use.
//! - `proxy`: client connections.
//! - `stats`: the counters; `export`: Prometheus metrics and twemproxy's stats JSON from them.
//!
//! Only what other crates use is public: the command ([`AmbassadorArgs`]), [`hashkit`] (the
//! placement tests) and `fuzzing` (the fuzz targets).
//!
//! See `docs/ambassador.md`.

mod backend;
mod config;
mod export;
#[doc(hidden)]
pub mod fuzzing;
pub mod hashkit;
mod memcache;
mod pool;
mod proxy;
mod redis;
mod stats;
mod workers;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::routing::{get, post};
use clap::Args;
use podkit_core::{AdminBuilder, CommonArgs, Component, Context, ExitStatus};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::{Addr, Config};
use crate::pool::{PoolHandle, PoolState, Pools};
use crate::stats::Counter;
use crate::workers::Workers;

/// The admin listener's default address for `podkit ambassador`.
pub(crate) const DEFAULT_ADMIN: &str = "127.0.0.1:9192";

/// Options of `podkit ambassador`. Their doc comments are the `--help` text. The short options
/// are nutcracker's, so a command line carries over.
#[derive(Debug, Clone, Args)]
pub struct AmbassadorArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// twemproxy's configuration file (nutcracker.yml): the pools, their listeners and servers.
    /// The default is nutcracker's.
    #[arg(
        short = 'c',
        long = "config",
        id = "pools_file",
        visible_alias = "conf-file",
        value_name = "FILE",
        default_value = "conf/nutcracker.yml"
    )]
    pub pools_file: PathBuf,

    /// Check the configuration file and exit (0 when it is valid).
    #[arg(short = 't', long)]
    pub test_conf: bool,

    /// Port of twemproxy's JSON stats listener (0 picks a free one; see GET /pools).
    #[arg(short = 's', long, value_name = "PORT", default_value_t = 22222)]
    pub stats_port: u16,

    /// Address of the JSON stats listener. nutcracker listens on every address by default;
    /// podkit on loopback unless told.
    #[arg(short = 'a', long, value_name = "ADDR", default_value = "127.0.0.1")]
    pub stats_addr: IpAddr,

    /// nutcracker's stats aggregation interval. Accepted and without effect: podkit's stats are
    /// always current.
    #[arg(short = 'i', long, value_name = "MS", default_value_t = 30_000, help_heading = "nutcracker's command line")]
    pub stats_interval: u64,

    /// Run in the background (nutcracker's `-d`). podkit returns once the daemon serves, or with
    /// its exit status and error when it could not start.
    #[arg(short = 'd', long, help_heading = "nutcracker's command line")]
    pub daemonize: bool,

    /// Write the process id to this file while running (removed at exit).
    #[arg(short = 'p', long, value_name = "FILE", help_heading = "nutcracker's command line")]
    pub pid_file: Option<PathBuf>,

    /// nutcracker's log verbosity, 0–11 (5 is nutcracker's default): 0–3 error, 4 warn, 5–6
    /// info, 7 debug, 8–11 trace. Sets --log-level.
    #[arg(short = 'v', long = "verbose", value_name = "N", conflicts_with = "log_level",
        value_parser = clap::value_parser!(u8).range(0..=11), help_heading = "nutcracker's command line")]
    pub verbosity: Option<u8>,

    /// nutcracker's mbuf chunk size, 512–16777216 bytes. Accepted and without effect: podkit's
    /// buffers start at 16 KiB (nutcracker's default) and grow to the request.
    #[arg(short = 'm', long, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(512..=16_777_216),
        help_heading = "nutcracker's command line")]
    pub mbuf_size: Option<u32>,

    /// Print the stats the stats port serves, with their meaning, and exit.
    #[arg(short = 'D', long, help_heading = "nutcracker's command line")]
    pub describe_stats: bool,

    /// How often the configuration file is checked for changes (it is reloaded when its content
    /// changes; SIGHUP and POST /reload reload at once). 0 turns the check off.
    #[arg(long, value_name = "DURATION", default_value = "2s")]
    pub watch_interval: podkit_core::Duration,

    /// Worker threads that serve clients (default: one per core the process may use, less one
    /// left to the app and servers beside it; at least one).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,

    /// Largest request accepted, in bytes: a memcache value or a whole Redis command. Larger
    /// ones are refused with an error (memcache: the value is skipped and the connection stays
    /// usable).
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    pub max_request_bytes: usize,
}

/// The log filter for nutcracker's verbosity `-v N` (its levels: 0 emerg … 3 err, 4 warn,
/// 5 notice, 6 info, 7 debug, 8–11 ever more verbose).
fn nutcracker_level(v: u8) -> &'static str {
    match v {
        0..=3 => "error",
        4 => "warn",
        5 | 6 => "info",
        7 => "debug",
        _ => "trace",
    }
}

/// Worker threads on `cores` cores (what the process may use, its CPU limit included): one per
/// core but one. A proxy shares its host with the app that calls it and often with the servers
/// behind it; on 2 cores, two workers were descheduled with answers ready and the p99 of
/// unpipelined Redis was 1.3–2.2× nutcracker's, where one worker had a p99 at or below
/// nutcracker's in every row and lost no throughput (docs/benchmarks.md).
fn default_threads(cores: usize) -> usize {
    cores.saturating_sub(1).max(1)
}

/// Prints the outcome of `-t` and returns the exit status, as `nutcracker -t` does.
pub(crate) fn test_config(path: &std::path::Path) -> i32 {
    match config::load(path) {
        Ok(_) => {
            eprintln!("podkit ambassador: configuration file '{}' syntax is ok", path.display());
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            podkit_core::EX_USAGE
        }
    }
}

/// `podkit ambassador`.
#[derive(Debug)]
pub(crate) struct Ambassador {
    args: AmbassadorArgs,
    config: Config,
    pools: Arc<Pools>,
    reloads_ok: Arc<Counter>,
    reloads_failed: Arc<Counter>,
    stats_bound: Arc<std::sync::OnceLock<SocketAddr>>,
    reload_tx: mpsc::Sender<oneshot::Sender<Result<(), String>>>,
    reload_rx: Option<mpsc::Receiver<oneshot::Sender<Result<(), String>>>>,
    /// The stats listener and each pool's listener, bound in [`Component::prepare`] so that a
    /// busy address stops podkit before it reports healthy.
    bound: Option<(tokio::net::TcpListener, Vec<Listener>)>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum AmbassadorError {
    #[error("cannot listen on {addr} for pool `{pool}`: {source}")]
    Listen { pool: String, addr: String, source: std::io::Error },
    #[error("cannot open the stats listener on {addr}: {source}")]
    Stats { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start the worker threads: {0}")]
    Workers(std::io::Error),
}

impl podkit_core::ExitStatus for AmbassadorError {
    fn exit_status(&self) -> i32 {
        match self {
            AmbassadorError::Listen { .. } | AmbassadorError::Stats { .. } => podkit_core::EX_USAGE,
            AmbassadorError::Workers(_) => podkit_core::EX_SOFTWARE,
        }
    }
}

impl Ambassador {
    /// Reads the configuration file; its errors name the file, the pool and the key.
    pub(crate) fn new(args: AmbassadorArgs) -> Result<Self, config::ConfigError> {
        let config = config::load(&args.pools_file)?;
        let (reload_tx, reload_rx) = mpsc::channel(8);
        Ok(Ambassador {
            args,
            config,
            pools: Arc::default(),
            reloads_ok: Arc::default(),
            reloads_failed: Arc::default(),
            stats_bound: Arc::default(),
            reload_tx,
            reload_rx: Some(reload_rx),
            bound: None,
        })
    }
}

impl podkit_core::Command for AmbassadorArgs {
    const NAME: &'static str = "ambassador";

    fn augment(cmd: clap::Command) -> clap::Command {
        // --config is twemproxy's file here, as for nutcracker; podkit's own option file is
        // --options. nutcracker's `-o FILE` / `--output` is podkit's --log-file.
        podkit_core::config::with_own_config_file(cmd, DEFAULT_ADMIN)
            .mut_arg("log_file", |a| a.short('o').visible_alias("output"))
    }

    #[allow(clippy::print_stdout)] // -D's description is its output
    fn main(mut self, effective: serde_json::Value) -> i32 {
        if self.describe_stats {
            print!("{}", export::describe_stats());
            return 0;
        }
        if self.test_conf {
            return test_config(&self.pools_file);
        }
        if let Some(v) = self.verbosity {
            self.common.log_level = nutcracker_level(v).to_string();
        }
        if self.daemonize {
            // The daemon works in `/`.
            let absolute = podkit_core::daemon::absolute;
            self.pools_file = absolute(&self.pools_file);
            self.pid_file = self.pid_file.as_deref().map(absolute);
            self.common.log_file = self.common.log_file.as_deref().map(absolute);
            self.common.admin_addr_file = self.common.admin_addr_file.as_deref().map(absolute);
        }
        let common = self.common.clone();
        let (daemonize, pid_file) = (self.daemonize, self.pid_file.clone());
        let ambassador = match Ambassador::new(self) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("error: {e}");
                return podkit_core::EX_USAGE;
            }
        };
        if daemonize && let Err(e) = podkit_core::daemon::daemonize() {
            eprintln!("error: {e}");
            return podkit_core::EX_SOFTWARE;
        }
        let _pid_file = match pid_file.as_deref().map(|p| podkit_core::daemon::PidFile::create(p).map_err(|e| (p, e))) {
            None => None,
            Some(Ok(f)) => Some(f),
            Some(Err((path, e))) => {
                eprintln!("error: --pid-file {}: cannot write it: {e}", path.display());
                return podkit_core::EX_USAGE;
            }
        };
        podkit_core::launch(ambassador, &common, effective)
    }
}

impl Component for Ambassador {
    const NAME: &'static str = "ambassador";
    const DEFAULT_ADMIN: &'static str = DEFAULT_ADMIN;
    type Error = AmbassadorError;

    fn setup(&mut self, admin: &mut AdminBuilder, ctx: &Context) {
        admin.metrics().register_collector(Box::new(export::Metrics {
            pools: self.pools.clone(),
            reloads_ok: self.reloads_ok.clone(),
            reloads_failed: self.reloads_failed.clone(),
        }));
        let (pools, stats_bound) = (self.pools.clone(), self.stats_bound.clone());
        admin.route(
            "/pools",
            get(move || {
                let (pools, stats_bound) = (pools.clone(), stats_bound.clone());
                async move {
                    axum::Json(serde_json::json!({
                        "pools": pools.describe(),
                        "stats": stats_bound.get().map(ToString::to_string),
                    }))
                }
            }),
        );
        let reload_tx = self.reload_tx.clone();
        admin.protected_route(
            "/reload",
            post(move || {
                let reload_tx = reload_tx.clone();
                async move {
                    let (tx, rx) = oneshot::channel();
                    let _ = reload_tx.send(tx).await;
                    match rx.await {
                        Ok(Ok(())) => (axum::http::StatusCode::OK, "reloaded\n".to_string()),
                        Ok(Err(e)) => (axum::http::StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")),
                        Err(_) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, "stopping\n".to_string()),
                    }
                }
            }),
        );
        ctx.readiness.not_ready("listeners", "not listening yet");
    }

    async fn prepare(&mut self, _ctx: &Context) -> Result<(), podkit_core::StartError> {
        let start_error =
            |e: AmbassadorError| podkit_core::StartError { status: e.exit_status(), message: e.to_string() };
        let stats_addr = SocketAddr::new(self.args.stats_addr, self.args.stats_port);
        let stats = tokio::net::TcpListener::bind(stats_addr)
            .await
            .map_err(|source| start_error(AmbassadorError::Stats { addr: stats_addr, source }))?;
        let mut pools = Vec::new();
        for cfg in &self.config.pools {
            pools.push(bind(cfg).await.map_err(start_error)?);
        }
        self.bound = Some((stats, pools));
        Ok(())
    }

    async fn run(mut self, ctx: Context) -> Result<i32, AmbassadorError> {
        let started = std::time::SystemTime::now();
        let stats_addr = SocketAddr::new(self.args.stats_addr, self.args.stats_port);
        let (stats_listener, listeners) = self.bound.take().expect("prepared before run");
        let bound = stats_listener.local_addr().unwrap_or(stats_addr);
        let _ = self.stats_bound.set(bound);
        tokio::spawn(export::serve_stats(stats_listener, self.pools.clone(), started));

        let threads = match self.args.threads {
            Some(n) => n.into(),
            None => default_threads(std::thread::available_parallelism().map_or(1, |n| n.get())),
        };
        let workers = Arc::new(Workers::start(threads).map_err(AmbassadorError::Workers)?);
        let runner = Runner {
            pools: self.pools.clone(),
            ctx: ctx.clone(),
            max_request: self.args.max_request_bytes,
            workers,
            next_worker: Arc::default(),
        };
        let mut handles = Vec::new();
        for (cfg, listener) in self.config.pools.clone().into_iter().zip(listeners) {
            handles.push(runner.start_pool(cfg, Arc::new(listener), None));
        }
        self.pools.handles.store(Arc::new(handles));
        for h in self.pools.handles.load().iter() {
            tracing::info!(pool = %h.name, listen = %h.bound, "pool listening");
        }
        if let Err(e) = podkit_core::shutdown::install_log_signal_handlers() {
            tracing::warn!(error = %e, "cannot install the SIGUSR1/SIGTTIN/SIGTTOU handlers");
        }
        if let Some(size) = self.args.mbuf_size {
            tracing::info!(size, "-m (mbuf size) has no effect: podkit's buffers grow to the request");
        }
        tracing::info!(stats = %bound, pools = self.config.pools.len(), threads, "ambassador ready");
        ctx.readiness.ready("listeners");

        let mut reload_rx = self.reload_rx.take().expect("run once");
        let mut reload = ctx.reload.clone();
        let watch = self.args.watch_interval.get();
        let path = self.args.pools_file.clone();
        let mut last = std::fs::read(&path).ok();
        let mut tick = tokio::time::interval(if watch.is_zero() { std::time::Duration::MAX / 4 } else { watch });
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let (reply, read) = tokio::select! {
                _ = ctx.shutdown.triggered() => break,
                _ = reload.requested() => (None, None),
                r = reload_rx.recv() => (r, None),
                _ = tick.tick(), if !watch.is_zero() => {
                    let now = std::fs::read(&path).ok();
                    if now.is_none() || now == last {
                        continue;
                    }
                    tracing::info!(path = %path.display(), "configuration file changed");
                    (None, now)
                }
            };
            // The next check compares with what is applied now (read here unless the check
            // just did).
            last = read.or_else(|| std::fs::read(&path).ok());
            let result = runner.reload(&path).await;
            match &result {
                Ok(()) => {
                    self.reloads_ok.inc();
                    tracing::info!(path = %path.display(), "configuration reloaded");
                }
                Err(e) => {
                    self.reloads_failed.inc();
                    tracing::error!(error = %e, "configuration not reloaded; the running one stays");
                }
            }
            if let Some(reply) = reply {
                let _ = reply.send(result);
            }
        }

        // Stop taking new clients; connected ones are served until they leave or the grace
        // period ends (an app draining on the same SIGTERM still reaches its cache).
        for h in self.pools.handles.load().iter() {
            h.stop_listening.cancel();
        }
        Ok(0)
    }
}

/// Starts pools and reloads them.
#[derive(Debug, Clone)]
struct Runner {
    pools: Arc<Pools>,
    ctx: Context,
    max_request: usize,
    workers: Arc<Workers>,
    /// Clients are handed to the workers in turn.
    next_worker: Arc<AtomicU64>,
}

static CLIENT_IDS: AtomicU64 = AtomicU64::new(0);

impl Runner {
    fn start_pool(&self, cfg: config::Pool, listener: Arc<Listener>, previous: Option<&PoolState>) -> Arc<PoolHandle> {
        let state = PoolState::start(cfg, previous, &self.workers);
        let handle = Arc::new(PoolHandle {
            name: state.name.clone(),
            bound: listener.describe(),
            state: arc_swap::ArcSwap::new(state),
            listener,
            stop_listening: CancellationToken::new(),
        });
        tokio::spawn(self.clone().accept(handle.clone()));
        handle
    }

    async fn accept(self, handle: Arc<PoolHandle>) {
        let stop = handle.stop_listening.clone();
        let listener = handle.listener.clone();
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => break,
                a = listener.accept() => a,
            };
            let stream = match accepted {
                Ok(s) => s,
                Err(e) => {
                    // Out of descriptors or similar: say so, and give the system a moment.
                    tracing::warn!(pool = %handle.name, error = %e, "cannot accept a client connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let state = handle.state.load();
            let limit = state.cfg.client_connections;
            if limit > 0 && state.stats.client_connections.get() >= i64::from(limit) {
                tracing::warn!(pool = %handle.name, limit, "client_connections reached; connection refused");
                continue;
            }
            drop(state);
            let id = CLIENT_IDS.fetch_add(1, Ordering::Relaxed);
            let worker = &self.workers.handles
                [(self.next_worker.fetch_add(1, Ordering::Relaxed) % self.workers.handles.len() as u64) as usize];
            let (handle, max) = (handle.clone(), self.max_request);
            // The socket moves to the worker's runtime: it is registered there, and served
            // there for its life.
            let serve = match stream.into_std() {
                Ok(std) => {
                    async move {
                        match std {
                            StdStream::Tcp(s) => match tokio::net::TcpStream::from_std(s) {
                                Ok(s) => {
                                    let _ = s.set_nodelay(true);
                                    let (r, w) = s.into_split();
                                    proxy::serve(r, w, handle, id, max).await;
                                }
                                Err(e) => tracing::warn!(error = %e, "cannot serve a client connection"),
                            },
                            StdStream::Unix(s) => match tokio::net::UnixStream::from_std(s) {
                                Ok(s) => {
                                    let (r, w) = s.into_split();
                                    proxy::serve(r, w, handle, id, max).await;
                                }
                                Err(e) => tracing::warn!(error = %e, "cannot serve a client connection"),
                            },
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot hand a client connection to a worker");
                    continue;
                }
            };
            worker.spawn(self.ctx.tasks.track_future(serve));
        }
    }

    /// Applies the configuration in `path`: new pools start, removed ones stop listening (their
    /// clients are served until they leave), changed ones get a new generation in place. A pool
    /// whose listener or protocol changed is replaced. Nothing changes unless every new listener
    /// could be opened.
    async fn reload(&self, path: &std::path::Path) -> Result<(), String> {
        let cfg = config::load(path).map_err(|e| e.to_string())?;
        let old = self.pools.handles.load_full();
        let find = |name: &str| old.iter().find(|h| h.name == name);
        let keeps = |h: &PoolHandle, p: &config::Pool| {
            let st = h.state.load();
            h.name == p.name && st.cfg.listen == p.listen && st.cfg.redis == p.redis
        };
        // Open the new listeners first: a failure leaves everything as it was.
        let mut opened = Vec::new();
        for p in &cfg.pools {
            if find(&p.name).is_some_and(|h| keeps(h, p)) {
                continue;
            }
            // An address a pool gives up in this reload (it is renamed, or moves elsewhere, as
            // when two pools swap addresses) is still open: binding it again would fail with
            // "Address already in use". Its socket is handed over instead, so no client that
            // connects meanwhile is refused.
            // The address as written, or as bound (`127.0.0.1:0` became a port).
            let given_up = old.iter().find(|h| {
                (h.state.load().cfg.listen.addr == p.listen.addr || h.bound == p.listen.addr.to_string())
                    && !p.listen.addr.is_any_port()
                    && !cfg.pools.iter().any(|q| keeps(h, q))
            });
            let listener = match given_up {
                Some(h) => {
                    tracing::info!(from = %h.name, to = %p.name, listen = %h.bound, "listener handed over");
                    h.listener.clone()
                }
                None => Arc::new(bind(p).await.map_err(|e| e.to_string())?),
            };
            opened.push((p.name.clone(), listener));
        }
        let mut handles = Vec::new();
        for p in cfg.pools {
            let previous = find(&p.name);
            match opened.iter().position(|(n, _)| *n == p.name) {
                Some(i) => {
                    let (_, listener) = opened.swap_remove(i);
                    let prev_state = previous.map(|h| h.state.load_full());
                    handles.push(self.start_pool(p, listener, prev_state.as_deref()));
                }
                None => {
                    let h = previous.expect("kept pools exist").clone();
                    let current = h.state.load_full();
                    if current.cfg != p {
                        let next = PoolState::start(p, Some(&current), &self.workers);
                        h.state.store(next);
                        current.retire();
                    }
                    handles.push(h);
                }
            }
        }
        for h in old.iter() {
            if !handles.iter().any(|n| Arc::ptr_eq(n, h)) {
                h.stop_listening.cancel();
                h.state.load().retire();
                tracing::info!(pool = %h.name, "pool removed or replaced; its listener is closed");
            }
        }
        self.pools.handles.store(Arc::new(handles));
        Ok(())
    }
}

// === listeners ===

#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, PathBuf),
}

impl Drop for Listener {
    /// A Unix socket's file goes with the last pool that listens on it.
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

enum StdStream {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Accepted {
    fn into_std(self) -> std::io::Result<StdStream> {
        Ok(match self {
            Accepted::Tcp(s) => StdStream::Tcp(s.into_std()?),
            Accepted::Unix(s) => StdStream::Unix(s.into_std()?),
        })
    }
}

impl Listener {
    async fn accept(&self) -> std::io::Result<Accepted> {
        match self {
            Listener::Tcp(l) => l.accept().await.map(|(s, _)| Accepted::Tcp(s)),
            Listener::Unix(l, _) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
        }
    }

    fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            Listener::Unix(_, p) => p.display().to_string(),
        }
    }
}

async fn bind(cfg: &config::Pool) -> Result<Listener, AmbassadorError> {
    let err = |source| AmbassadorError::Listen { pool: cfg.name.clone(), addr: cfg.listen.addr.to_string(), source };
    match &cfg.listen.addr {
        Addr::Tcp { host, port } => {
            let addr = tokio::net::lookup_host((host.as_str(), *port))
                .await
                .map_err(err)?
                .next()
                .ok_or_else(|| err(std::io::Error::other("the host has no address")))?;
            let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }
                .map_err(err)?;
            socket.set_reuseaddr(true).map_err(err)?;
            if cfg.reuseport {
                socket.set_reuseport(true).map_err(err)?;
            }
            socket.bind(addr).map_err(err)?;
            Ok(Listener::Tcp(socket.listen(cfg.backlog.max(1)).map_err(err)?))
        }
        Addr::Unix(path) => {
            // A socket file left by an earlier run would make bind fail; a live one is in use.
            if std::os::unix::net::UnixStream::connect(path).is_err() {
                let _ = std::fs::remove_file(path);
            }
            let l = tokio::net::UnixListener::bind(path).map_err(err)?;
            if let Some(mode) = cfg.listen.mode {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
            }
            Ok(Listener::Unix(l, path.clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_core_is_left_to_the_app_but_there_is_always_a_worker() {
        assert_eq!([1, 2, 3, 4, 16].map(default_threads), [1, 1, 2, 3, 15]);
    }

    #[test]
    fn nutcrackers_verbosity_maps_onto_podkits_levels() {
        let levels: Vec<_> = (0..=11).map(nutcracker_level).collect();
        assert_eq!(levels[..4], ["error"; 4]);
        assert_eq!(levels[4..8], ["warn", "info", "info", "debug"]);
        assert_eq!(levels[8..], ["trace"; 4]);
    }
}
