//! A leaf server for scatter/gather tests and benchmarks: answers every request with a
//! configurable body, status and delay, and can be slow in a fraction of requests.
//!
//! `{shard}` in the body becomes the shard index from `X-Podkit-Shard`; `--echo` answers with a
//! JSON description of the request instead. `GET /__testleaf/count` gives the number of requests
//! served so far.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use clap::Parser;
use tokio::net::TcpListener;

/// How a test leaf answers.
#[derive(Debug, Clone, Parser)]
pub struct LeafOptions {
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Write the bound address here once listening.
    #[arg(long)]
    pub addr_file: Option<PathBuf>,
    /// The body of every answer; `{shard}` is replaced by the shard index.
    #[arg(long, default_value = r#"[{"shard":{shard}}]"#)]
    pub respond: String,
    #[arg(long, default_value_t = 200)]
    pub status: u16,
    /// Delay before every answer.
    #[arg(long, default_value = "0ms")]
    pub delay: humantime::Duration,
    /// Share of requests (0 to 1) that are slow.
    #[arg(long, default_value_t = 0.0)]
    pub slow_prob: f64,
    /// Every Nth request is slow (deterministic, for tests).
    #[arg(long, default_value_t = 0)]
    pub slow_every: u64,
    /// Extra delay of a slow request.
    #[arg(long, default_value = "1s")]
    pub slow_delay: humantime::Duration,
    /// Answer with a JSON description of the request (at `{echo}` in --respond, if there).
    #[arg(long)]
    pub echo: bool,
}

struct Leaf {
    args: LeafOptions,
    count: AtomicU64,
    rng: AtomicU64,
}

impl Leaf {
    /// xorshift64: enough randomness for "1 % of requests are slow", no dependency.
    fn random(&self) -> f64 {
        let mut x = self.rng.load(Ordering::Relaxed);
        loop {
            let mut y = x;
            y ^= y << 13;
            y ^= y >> 7;
            y ^= y << 17;
            match self.rng.compare_exchange_weak(x, y, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return (y >> 11) as f64 / (1u64 << 53) as f64,
                Err(cur) => x = cur,
            }
        }
    }
}

async fn handle(State(leaf): State<Arc<Leaf>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    if uri.path() == "/__testleaf/count" {
        return leaf.count.load(Ordering::Relaxed).to_string().into_response();
    }
    let n = leaf.count.fetch_add(1, Ordering::Relaxed) + 1;
    let mut delay: Duration = leaf.args.delay.into();
    let slow_turn = leaf.args.slow_every > 0 && n % leaf.args.slow_every == 0;
    if slow_turn || leaf.args.slow_prob > 0.0 && leaf.random() < leaf.args.slow_prob {
        delay += Duration::from(leaf.args.slow_delay);
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let shard = h("x-podkit-shard");
    let index = shard.split('/').next().unwrap_or("").to_string();
    let text = if leaf.args.echo {
        let echo = serde_json::json!({
            "shard": shard,
            "deadline_ms": h("x-podkit-deadline-ms"),
            "method": method.as_str(),
            "target": uri.to_string(),
            "body": String::from_utf8_lossy(&body),
            "content_type": h("content-type"),
            "accept_encoding": h("accept-encoding"),
        })
        .to_string();
        // `--respond '[{echo}]'` places the description inside a body of the caller's shape.
        if leaf.args.respond.contains("{echo}") { leaf.args.respond.replace("{echo}", &echo) } else { echo }
    } else {
        leaf.args.respond.replace("{shard}", if index.is_empty() { "null" } else { &index })
    };
    let status = StatusCode::from_u16(leaf.args.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, "application/json")], text).into_response()
}

impl LeafOptions {
    /// Options from a command line (`["--status", "500"]`), defaults for the rest.
    pub fn from_args(args: &[&str]) -> LeafOptions {
        LeafOptions::parse_from(std::iter::once("testleaf").chain(args.iter().copied()))
    }
}

/// Serves `opts` on `listener` until the runtime ends.
pub async fn serve(listener: TcpListener, opts: LeafOptions) {
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
            | 1;
    let leaf = Arc::new(Leaf { args: opts, count: AtomicU64::new(0), rng: AtomicU64::new(seed) });
    let app = axum::Router::new().fallback(handle).with_state(leaf);
    let _ = axum::serve(listener, app).await;
}

/// A leaf running on its own thread and runtime, on a free loopback port, for a test.
#[derive(Debug)]
pub struct TestLeaf {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestLeaf {
    /// Starts a leaf answering as `args` says (`&["--status", "500"]`).
    pub fn start(args: &[&str]) -> TestLeaf {
        Self::start_on("127.0.0.1:0".parse().expect("an address"), args)
    }

    /// Like [`TestLeaf::start`], on `addr` (an app that comes up where a client already looks).
    pub fn start_on(addr: SocketAddr, args: &[&str]) -> TestLeaf {
        let opts = LeafOptions::from_args(args);
        let std_listener = std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("local addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let rt =
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("tokio listener");
                tokio::select! {
                    _ = serve(listener, opts) => {}
                    _ = stopped => {}
                }
            });
        });
        TestLeaf { addr, stop: Some(stop) }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests served so far.
    pub fn count(&self) -> u64 {
        crate::AdminClient::new(self.addr).get("/__testleaf/count").body.trim().parse().unwrap_or(0)
    }

    /// Stops answering and closes the port (a dead leaf).
    pub fn kill(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        // The port is closed once the runtime drops the listener; wait for that.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(self.addr).is_ok() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for TestLeaf {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}
