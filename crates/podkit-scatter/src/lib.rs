//! `podkit scatter`: the scatter/gather root.
//!
//! A client sends a request to the root; the root sends it to one leaf of every shard, merges
//! the answers and replies. Leaves are told their shard (`X-Podkit-Shard: 3/16`) and what is left
//! of the deadline (`X-Podkit-Deadline-Ms`), so a root can itself be a leaf of another root.
//! See `docs/scatter.md`.

mod exec;
mod fanout;
mod leaves;
mod merge;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, Uri, header};
use axum::response::{IntoResponse, Response};
use clap::Args;
use podkit_core::{AdminBuilder, Argv, CommonArgs, Component, Context, Listen, StartError};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::time::Instant;

use crate::fanout::{DEADLINE_HEADER, Fanout, Incoming, Merger, MinLeaves};
use crate::leaves::{LeafSource, Leaves};
use crate::merge::Strategy;

/// The admin listener's default address for `podkit scatter`.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9195";

/// Options of `podkit scatter`. Their doc comments are the `--help` text.
#[derive(Debug, Clone, Args)]
pub struct ScatterArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Where clients send requests.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:8080",
        value_parser = podkit_core::config::parse_listen_addr
    )]
    pub listen: SocketAddr,

    /// Write the bound client address to this file once listening (with --listen …:0).
    #[arg(long, value_name = "PATH")]
    pub listen_addr_file: Option<PathBuf>,

    /// The leaves: `http://a:80,http://b:80` (one shard each; `http://a1|http://a2` are replicas
    /// of one shard), `dns://NAME:PORT` (every address is a shard: a headless service) or
    /// `file:///PATH` (one shard per line).
    #[arg(long, value_name = "SPEC")]
    pub leaves: LeafSource,

    /// How often dns:// and file:// leaves are looked up again.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = podkit_core::Duration::parse_positive)]
    pub resolve_interval: podkit_core::Duration,

    /// How answers are merged: concat, merge (later shards win), merge:error, sum,
    /// topk:FIELD:K, ndjson.
    #[arg(long, value_name = "STRATEGY", default_value = "concat", help_heading = "Merging")]
    pub merge: Strategy,

    /// Merge with a co-located app instead: POST it {"responses":[{"shard","body"}],"missing":[…]}
    /// and answer with its answer.
    #[arg(long, value_name = "URL", conflicts_with = "merge_exec", help_heading = "Merging")]
    pub merge_http: Option<podkit_core::HttpUrl>,

    /// Merge with a command instead (argv, no shell): the same document on stdin, the answer on
    /// stdout.
    #[arg(long, value_name = "CMD", help_heading = "Merging")]
    pub merge_exec: Option<Argv>,

    /// Time kept for --merge-http or --merge-exec at the end of each request's deadline; the
    /// leaves get the rest (default: a fifth of the deadline, at most 250ms). A caller's shorter
    /// deadline shrinks it in proportion.
    #[arg(long, value_name = "DURATION", value_parser = podkit_core::Duration::parse_positive, help_heading = "Merging")]
    pub merge_time: Option<podkit_core::Duration>,

    /// The whole request's deadline (lowered by a caller's X-Podkit-Deadline-Ms).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = podkit_core::Duration::parse_positive, help_heading = "Tail tolerance")]
    pub deadline: podkit_core::Duration,

    /// Longest wait for one leaf (default: the deadline).
    #[arg(long, value_name = "DURATION", value_parser = podkit_core::Duration::parse_positive, help_heading = "Tail tolerance")]
    pub leaf_timeout: Option<podkit_core::Duration>,

    /// Answer with what came back when this many shards (N) or this share of them (P%) answered
    /// by the deadline; fewer is an error. The answer then carries X-Podkit-Partial: K/N and
    /// X-Podkit-Missing.
    #[arg(long, value_name = "N|P%", default_value = "100%", help_heading = "Tail tolerance")]
    pub min_leaves: MinLeaves,

    /// Send a second request to another replica of a shard (or the same leaf, if it has no
    /// other) when the first takes longer than that leaf's observed p95.
    #[arg(long, help_heading = "Tail tolerance")]
    pub hedge: bool,

    /// Most hedges per leaf request, as a share.
    #[arg(long, value_name = "P%", default_value = "5%", value_parser = parse_share, help_heading = "Tail tolerance")]
    pub hedge_budget: f64,

    /// Retries of a leaf request that could not connect (on the next replica).
    #[arg(long, value_name = "N", default_value_t = 1, help_heading = "Tail tolerance")]
    pub retries: u32,

    /// Failures in a row after which a leaf is skipped for --breaker-cooldown.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Tail tolerance")]
    pub breaker_failures: u32,

    /// How long an open circuit skips its leaf before trying it again.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = podkit_core::Duration::parse_positive, help_heading = "Tail tolerance")]
    pub breaker_cooldown: podkit_core::Duration,

    /// Largest client request body, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 8 << 20)]
    pub max_body: usize,

    /// Largest leaf answer, in bytes; a larger one counts as a failed shard.
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20)]
    pub max_leaf_body: usize,
}

fn parse_share(s: &str) -> Result<f64, String> {
    let p = s.strip_suffix('%').unwrap_or(s);
    match p.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p / 100.0),
        _ => Err("expected a percentage such as 5%".into()),
    }
}

/// Headers that describe one connection, not the request, and are not passed on.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    // The root must read leaf answers to merge them, and decodes no compression.
    "accept-encoding",
    fanout::SHARD_HEADER,
    fanout::DEADLINE_HEADER,
];

/// The `podkit scatter` component.
#[derive(Debug)]
pub struct Scatter {
    args: ScatterArgs,
    metrics: fanout::Metrics,
    leaves: Arc<Leaves>,
    /// Bound in [`Component::prepare`], so a busy port stops podkit before it reports ready.
    listener: Option<tokio::net::TcpListener>,
}

#[derive(Debug, thiserror::Error)]
pub enum ScatterError {
    #[error("{0}")]
    HttpClient(String),
    #[error("cannot start reaping merge processes: {0}")]
    Reaper(#[source] std::io::Error),
}

impl podkit_core::ExitStatus for ScatterError {
    fn exit_status(&self) -> i32 {
        podkit_core::EX_SOFTWARE
    }
}

impl Scatter {
    pub fn new(args: ScatterArgs) -> Self {
        Self { args, metrics: fanout::Metrics::default(), leaves: Arc::new(Leaves::default()), listener: None }
    }

    fn merger(&self) -> Merger {
        match (&self.args.merge_http, &self.args.merge_exec) {
            (Some(url), _) => Merger::Http(url.clone().into_inner()),
            (None, Some(argv)) => Merger::Exec(argv.clone()),
            _ => Merger::Builtin(self.args.merge.clone()),
        }
    }
}

#[derive(Debug)]
struct LeavesCollector {
    leaves: Arc<Leaves>,
}

impl Collector for LeavesCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let t = self.leaves.get();
        let all: Vec<_> = t.shards.iter().flat_map(|s| s.replicas.iter()).collect();
        ConstGauge::new(t.shards.len() as i64).encode(encoder.encode_descriptor(
            "shards",
            "Shards",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(all.len() as i64).encode(encoder.encode_descriptor(
            "leaves",
            "Leaves (all replicas)",
            None,
            MetricType::Gauge,
        )?)?;
        let open = all.iter().filter(|l| l.is_open()).count();
        ConstGauge::new(open as i64).encode(encoder.encode_descriptor(
            "leaves_circuit_open",
            "Leaves skipped by an open circuit breaker",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}

impl podkit_core::Command for ScatterArgs {
    const NAME: &'static str = "scatter";
    const DEFAULT_ADMIN: Option<&'static str> = Some(DEFAULT_ADMIN);

    fn main(self, effective: serde_json::Value) -> i32 {
        let common = self.common.clone();
        podkit_core::launch(Scatter::new(self), &common, effective)
    }
}

impl Component for Scatter {
    const NAME: &'static str = "scatter";
    const DEFAULT_ADMIN: &'static str = DEFAULT_ADMIN;
    type Error = ScatterError;

    fn setup(&mut self, admin: &mut AdminBuilder, ctx: &Context) {
        let fanout_metrics = self.metrics.clone();
        let reg = admin.metrics();
        reg.register("requests", "Client requests by outcome (ok, partial, error)", fanout_metrics.requests.clone());
        reg.register_with_unit(
            "request_duration",
            "Time to answer a client",
            prometheus_client::registry::Unit::Seconds,
            fanout_metrics.duration.clone(),
        );
        reg.register("leaf_requests", "Requests to leaves by result", fanout_metrics.leaf_requests.clone());
        reg.register_with_unit(
            "leaf_duration",
            "Leaf answer latency",
            prometheus_client::registry::Unit::Seconds,
            fanout_metrics.leaf_duration.clone(),
        );
        reg.register("hedges", "Hedged requests sent, by the leaf they went to", fanout_metrics.hedges.clone());
        reg.register("retries", "Leaf requests retried after a connection error", fanout_metrics.retries.clone());
        reg.register_collector(Box::new(LeavesCollector { leaves: self.leaves.clone() }));
        ctx.readiness.not_ready("leaves", "not resolved yet");
    }

    fn runtime() -> tokio::runtime::Builder {
        // A root serves many clients and fans out to many leaves: every core it is given.
        tokio::runtime::Builder::new_multi_thread()
    }

    async fn prepare(&mut self, _ctx: &Context) -> Result<(), StartError> {
        if let Some(t) = self.args.merge_time {
            if self.args.merge_http.is_none() && self.args.merge_exec.is_none() {
                return Err(StartError::usage(
                    "--merge-time is the time kept for --merge-http or --merge-exec; a built-in --merge needs none",
                ));
            }
            if t.get() >= self.args.deadline.get() {
                return Err(StartError::usage(format!(
                    "--merge-time {t} leaves the leaves no time of --deadline {}; expected less than the deadline",
                    self.args.deadline
                )));
            }
        }
        let l = Listen {
            addr: self.args.listen,
            addr_file: self.args.listen_addr_file.as_deref(),
            what: "client listener",
            option: "--listen",
        };
        self.listener = Some(podkit_core::listen(&l).await?);
        Ok(())
    }

    async fn run(self, ctx: Context) -> Result<i32, ScatterError> {
        let client = leaf_client().map_err(ScatterError::HttpClient)?;
        let merger = self.merger();
        let Scatter { args, metrics, leaves, listener } = self;
        let mut fanout = Fanout::new(
            leaves.clone(),
            client,
            merger,
            args.deadline.get(),
            args.leaf_timeout.unwrap_or(args.deadline).get(),
            args.min_leaves,
            args.hedge,
            args.hedge_budget,
        );
        fanout.metrics = metrics;
        fanout.merge_time = args.merge_time.map(podkit_core::Duration::get);
        fanout.retries = args.retries;
        fanout.breaker_failures = args.breaker_failures;
        fanout.breaker_cooldown = args.breaker_cooldown.get();
        fanout.max_leaf_body = args.max_leaf_body;
        if matches!(fanout.merger, Merger::Exec(_)) {
            fanout.reaper = Some(podkit_process::reaper::Reaper::start().map_err(ScatterError::Reaper)?);
        }
        let fanout = Arc::new(fanout);

        match args.leaves.resolve().await {
            Ok(shards) => {
                tracing::info!(shards = shards.len(), "leaves resolved");
                leaves.set(shards);
            }
            Err(e) => tracing::warn!(error = %e, "cannot resolve the leaves yet; retrying every --resolve-interval"),
        }
        if args.leaves.is_dynamic() {
            ctx.tasks.spawn(resolve_loop(
                args.leaves.clone(),
                leaves.clone(),
                args.resolve_interval.get(),
                ctx.clone(),
            ));
        }
        ctx.tasks.spawn(readiness_loop(leaves.clone(), args.min_leaves, args.breaker_cooldown.get(), ctx.clone()));

        let listener = listener.expect("prepared before run");
        let bound = listener.local_addr().unwrap_or(args.listen);
        tracing::info!(listen = %bound, deadline = %args.deadline, "scatter root listening");
        let app = axum::Router::new().fallback(handle).layer(DefaultBodyLimit::max(args.max_body)).with_state(fanout);
        let shutdown = ctx.shutdown.clone();
        // On SIGTERM: stop accepting, answer what is in flight (each within its deadline).
        let served = axum::serve(listener, app).with_graceful_shutdown(async move {
            shutdown.triggered().await;
        });
        if let Err(e) = served.await {
            tracing::error!(error = %e, "client listener failed");
            return Ok(1);
        }
        Ok(0)
    }
}

/// The client for leaves: pooled keep-alive connections, no proxy (leaves are local or in the
/// cluster), no automatic redirects (a leaf's redirect is its answer).
fn leaf_client() -> Result<reqwest::Client, String> {
    podkit_core::http::build(
        reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true),
    )
}

async fn handle(
    State(fanout): State<Arc<Fanout>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = Instant::now();
    // A parent root's deadline lowers ours, minus a margin for our own merge and reply.
    let mut budget = fanout.deadline;
    if let Some(ms) = headers.get(DEADLINE_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()) {
        let parent = Duration::from_millis(ms);
        let margin = (parent / 20).clamp(Duration::from_millis(1), Duration::from_millis(5));
        budget = budget.min(parent.saturating_sub(margin));
    }
    // Headers the client's Connection header names are hop-by-hop too.
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|h| h.trim().to_ascii_lowercase()))
        .collect();
    let mut forwarded = HeaderMap::new();
    for (name, value) in headers.iter() {
        if !HOP_BY_HOP.contains(&name.as_str()) && !named.iter().any(|n| n == name.as_str()) {
            forwarded.append(name.clone(), value.clone());
        }
    }
    let target = uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    if !target.starts_with('/') {
        let body = serde_json::json!({ "error": format!("request target {target:?} is not a path") });
        return (axum::http::StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
    }
    let answer =
        fanout.run(Incoming { method, target, headers: forwarded, body, deadline: now + budget, budget }).await;
    let mut resp = Response::new(Body::from(answer.body));
    *resp.status_mut() = answer.status;
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(answer.content_type));
    for (k, v) in answer.headers {
        resp.headers_mut().insert(k, v);
    }
    resp.into_response()
}

async fn resolve_loop(source: LeafSource, leaves: Arc<Leaves>, every: Duration, ctx: Context) {
    let mut every = ctx.shutdown.every_after(every);
    while every.tick().await {
        match source.resolve().await {
            // An empty answer is far more often a file caught mid-write or a DNS hiccup than a
            // real scale-to-zero: keep the last leaves.
            Ok(shards) if shards.is_empty() => tracing::warn!("the leaves resolved to nothing; keeping the last ones"),
            Ok(shards) => {
                let n = shards.len();
                if leaves.set(shards) {
                    tracing::info!(shards = n, "leaves changed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot resolve the leaves; keeping the last ones"),
        }
    }
}

/// Ready while enough shards have a leaf whose circuit is closed.
async fn readiness_loop(leaves: Arc<Leaves>, min: MinLeaves, _cooldown: Duration, ctx: Context) {
    let mut every = ctx.shutdown.every(Duration::from_millis(500));
    while every.tick().await {
        let t = leaves.get();
        let n = t.shards.len();
        let reachable = t.shards.iter().filter(|s| s.replicas.iter().any(|l| !l.is_open())).count();
        let need = min.required(n);
        if n > 0 && reachable >= need {
            ctx.readiness.ready("leaves");
        } else {
            ctx.readiness.not_ready("leaves", format!("{reachable} of {n} shards reachable; {need} needed"));
        }
    }
}
