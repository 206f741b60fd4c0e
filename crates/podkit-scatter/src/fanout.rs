//! One scatter/gather round: a request to every shard, with deadlines, retries, hedges and
//! breakers, then the merge.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::leaves::{Leaf, Leaves, Shard};
use crate::merge::Strategy;

pub(crate) const SHARD_HEADER: &str = "x-podkit-shard";
pub(crate) const DEADLINE_HEADER: &str = "x-podkit-deadline-ms";
pub(crate) const PARTIAL_HEADER: &str = "x-podkit-partial";
pub(crate) const MISSING_HEADER: &str = "x-podkit-missing";

/// Most of a request's deadline kept for a merge container by default (see
/// [`Fanout::merge_reserve`]).
const MERGE_RESERVE_CAP: Duration = Duration::from_millis(250);

/// How many shards must answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinLeaves {
    Count(usize),
    Percent(u8),
}

impl std::str::FromStr for MinLeaves {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?}: expected a number of shards (14) or a percentage (90%)");
        match s.strip_suffix('%') {
            Some(p) => match p.parse::<u8>() {
                Ok(p) if (1..=100).contains(&p) => Ok(MinLeaves::Percent(p)),
                _ => Err(bad()),
            },
            None => s.parse::<usize>().ok().filter(|n| *n > 0).map(MinLeaves::Count).ok_or_else(bad),
        }
    }
}

impl MinLeaves {
    pub fn required(self, shards: usize) -> usize {
        match self {
            MinLeaves::Count(n) => n.min(shards),
            MinLeaves::Percent(p) => (shards * p as usize).div_ceil(100),
        }
    }
}

/// How answers are merged: a built-in strategy, or the user's merge container.
#[derive(Debug, Clone)]
pub(crate) enum Merger {
    Builtin(Strategy),
    Http(reqwest::Url),
    Exec(podkit_core::Argv),
}

/// Everything a round needs; shared by all requests.
#[derive(Debug)]
pub(crate) struct Fanout {
    pub leaves: Arc<Leaves>,
    pub client: reqwest::Client,
    pub merger: Merger,
    /// `--merge-time`: the time a merge container keeps out of each request's deadline; `None`
    /// for the default rule.
    pub merge_time: Option<Duration>,
    pub deadline: Duration,
    pub leaf_timeout: Duration,
    pub min_leaves: MinLeaves,
    pub hedge: bool,
    /// Hedges allowed per primary request (0.05 = 5 %).
    pub hedge_budget: f64,
    pub retries: u32,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    pub max_leaf_body: usize,
    pub reaper: Option<Arc<podkit_process::reaper::Reaper>>,
    pub metrics: Metrics,
    /// Hedge tokens, in thousandths.
    budget: AtomicU64,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct LeafLabels {
    pub leaf: String,
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct LeafLabel {
    pub leaf: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    pub requests: Family<OutcomeLabel, Counter>,
    pub duration: Histogram,
    pub leaf_requests: Family<LeafLabels, Counter>,
    pub leaf_duration: Family<LeafLabel, Histogram>,
    pub hedges: Family<LeafLabel, Counter>,
    pub retries: Counter,
}

fn latency_buckets() -> Histogram {
    Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0])
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            duration: latency_buckets(),
            leaf_requests: Family::default(),
            leaf_duration: Family::new_with_constructor(latency_buckets),
            hedges: Family::default(),
            retries: Counter::default(),
        }
    }
}

impl Incoming {
    /// Only requests that may safely be sent twice are hedged.
    fn idempotent(&self) -> bool {
        matches!(self.method, Method::GET | Method::HEAD | Method::OPTIONS)
    }
}

/// The client's request, as every leaf gets it.
#[derive(Debug, Clone)]
pub(crate) struct Incoming {
    pub method: Method,
    /// Path and query, as the client sent them.
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When the answer is due…
    pub deadline: Instant,
    /// …and how long that was when the request arrived (for messages).
    pub budget: Duration,
}

/// What became of one shard.
#[derive(Debug)]
enum ShardResult {
    Ok(Bytes),
    Missing(Missing),
}

/// Why a shard has no answer in the merge.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Missing {
    /// No answer within the shard's budget (reported as the budget).
    TimedOut(Duration),
    /// Every replica's breaker is open.
    CircuitOpen,
    /// The last answer had an error status.
    Status(StatusCode),
    /// No replica could be reached, or an answer could not be read.
    Failed(String),
    /// The merge strategy refused the leaf's answer.
    Rejected(String),
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Missing::TimedOut(d) => write!(f, "timed out after {}", ms(*d)),
            Missing::CircuitOpen => f.write_str("circuit open"),
            Missing::Status(s) => write!(f, "HTTP {}", s.as_u16()),
            Missing::Failed(e) | Missing::Rejected(e) => f.write_str(e),
        }
    }
}

/// One attempt's result.
enum Attempt {
    Answer(StatusCode, Bytes),
    /// No answer within the attempt's time.
    TimedOut,
    ConnectError(String),
    Failed(String),
}

/// The merged answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Vec<u8>,
}

impl Fanout {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        leaves: Arc<Leaves>,
        client: reqwest::Client,
        merger: Merger,
        deadline: Duration,
        leaf_timeout: Duration,
        min_leaves: MinLeaves,
        hedge: bool,
        hedge_budget: f64,
    ) -> Self {
        Self {
            leaves,
            client,
            merger,
            merge_time: None,
            deadline,
            leaf_timeout,
            min_leaves,
            hedge,
            hedge_budget,
            retries: 1,
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(5),
            max_leaf_body: 16 << 20,
            reaper: None,
            metrics: Metrics::default(),
            // A full bucket to start with, sized by the budget (none at 0 %).
            budget: AtomicU64::new(((hedge_budget * 200_000.0) as u64).min(10_000)),
        }
    }

    /// The part of a request's `budget` kept for the merge, which the leaves do not get. A
    /// merge container is a process or a request of its own: had the leaves the whole deadline,
    /// one late leaf would leave it nothing (it would then fail the request that the leaves
    /// that answered could have served). By default it keeps a fifth of the deadline, at most
    /// [`MERGE_RESERVE_CAP`]; `--merge-time` sets it for `--deadline`, and a caller's shorter
    /// deadline shrinks it in proportion, so the leaves still get their share. A built-in merge
    /// runs in microseconds and keeps nothing.
    pub(crate) fn merge_reserve(&self, budget: Duration) -> Duration {
        match (&self.merger, self.merge_time) {
            (Merger::Builtin(_), _) => Duration::ZERO,
            (_, Some(t)) if budget >= self.deadline => t,
            (_, Some(t)) => t.mul_f64(budget.as_secs_f64() / self.deadline.as_secs_f64()),
            (_, None) => (budget / 5).min(MERGE_RESERVE_CAP),
        }
    }

    /// The longest a leaf attempt can have: what a timeout must have had to count against the
    /// leaf's breaker.
    fn full_leaf_time(&self) -> Duration {
        self.leaf_timeout.min(self.deadline - self.merge_reserve(self.deadline))
    }

    /// Scatters `req` to every shard and gathers the answers.
    pub(crate) async fn run(&self, mut req: Incoming) -> Answer {
        let started = Instant::now();
        let topology = self.leaves.get();
        let n = topology.shards.len();
        // The leaves' deadline ends before the request's by the merge's share.
        let merge_deadline = req.deadline;
        let reserve = self.merge_reserve(req.budget);
        req.deadline = merge_deadline - reserve;
        req.budget -= reserve;
        let req = Arc::new(req);
        let results: Vec<ShardResult> =
            futures_util::future::join_all(topology.shards.iter().enumerate().map(|(i, s)| self.shard(i, n, s, &req)))
                .await;
        let answer = self.gather(results, merge_deadline).await;
        let outcome = if !answer.status.is_success() {
            "error"
        } else if answer.headers.iter().any(|(h, _)| h == PARTIAL_HEADER) {
            "partial"
        } else {
            "ok"
        };
        self.metrics.requests.get_or_create(&OutcomeLabel { outcome }).inc();
        self.metrics.duration.observe(started.elapsed().as_secs_f64());
        answer
    }

    async fn gather(&self, results: Vec<ShardResult>, merge_deadline: Instant) -> Answer {
        let n = results.len();
        let strategy = match &self.merger {
            Merger::Builtin(s) => Some(s),
            _ => None,
        };
        let mut parts = Vec::new();
        let mut bodies: Vec<(usize, Bytes)> = Vec::new();
        let mut missing: Vec<(usize, Missing)> = Vec::new();
        for (i, r) in results.into_iter().enumerate() {
            match r {
                ShardResult::Ok(body) => match strategy {
                    Some(s) => match s.accept(&body) {
                        Ok(p) => parts.push(p),
                        Err(reason) => missing.push((i, Missing::Rejected(reason))),
                    },
                    None => bodies.push((i, body)),
                },
                ShardResult::Missing(reason) => missing.push((i, reason)),
            }
        }
        let answered = n - missing.len();
        let required = self.min_leaves.required(n);
        if n == 0 || answered < required {
            let status = if missing.iter().any(|(_, r)| matches!(r, Missing::TimedOut(_))) {
                StatusCode::GATEWAY_TIMEOUT
            } else {
                StatusCode::BAD_GATEWAY
            };
            let shards: Vec<Value> =
                missing.iter().map(|(i, r)| json!({ "shard": i, "error": r.to_string() })).collect();
            let error = if n == 0 {
                "no leaves".to_string()
            } else {
                format!("{answered} of {n} shards answered; {required} needed")
            };
            return error_answer(status, json!({ "error": error, "missing": shards }));
        }
        let missing: Vec<(usize, String)> = missing.into_iter().map(|(i, r)| (i, r.to_string())).collect();
        let merged = match (&self.merger, strategy) {
            (_, Some(s)) => s.merge(parts).map(|b| (b, s.content_type())),
            (Merger::Http(url), None) => self.merge_http(url, &bodies, &missing, merge_deadline).await,
            (Merger::Exec(argv), None) => self.merge_exec(argv, &bodies, &missing, merge_deadline).await,
            (Merger::Builtin(_), None) => unreachable!("a built-in merger has a strategy"),
        };
        let (body, content_type) = match merged {
            Ok(m) => m,
            Err(e) => return error_answer(StatusCode::BAD_GATEWAY, json!({ "error": format!("merge failed: {e}") })),
        };
        let mut headers = Vec::new();
        if !missing.is_empty() {
            let partial = format!("{answered}/{n}");
            let list: Vec<String> =
                missing.iter().map(|(i, r)| format!("{i}={}", r.replace([',', '\r', '\n'], " "))).collect();
            headers.push((HeaderName::from_static(PARTIAL_HEADER), HeaderValue::from_str(&partial).expect("ascii")));
            if let Ok(v) = HeaderValue::from_str(&list.join(", ")) {
                headers.push((HeaderName::from_static(MISSING_HEADER), v));
            }
        }
        Answer { status: StatusCode::OK, content_type, headers, body }
    }

    /// The document a merge container gets: every answer, and what is missing.
    fn merge_document(bodies: &[(usize, Bytes)], missing: &[(usize, String)]) -> Vec<u8> {
        let responses: Vec<Value> = bodies
            .iter()
            .map(|(i, b)| {
                let body = serde_json::from_slice::<Value>(b)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(b).into()));
                json!({ "shard": i, "body": body })
            })
            .collect();
        let missing: Vec<Value> = missing.iter().map(|(i, r)| json!({ "shard": i, "error": r })).collect();
        serde_json::to_vec(&json!({ "responses": responses, "missing": missing })).unwrap_or_default()
    }

    async fn merge_http(
        &self,
        url: &reqwest::Url,
        bodies: &[(usize, Bytes)],
        missing: &[(usize, String)],
        deadline: Instant,
    ) -> Result<(Vec<u8>, &'static str), String> {
        let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        let resp = self
            .client
            .post(url.clone())
            .header("content-type", "application/json")
            .body(Self::merge_document(bodies, missing))
            .timeout(remaining)
            .send()
            .await
            .map_err(|e| format!("merge container at {url}: {e}"))?;
        let status = resp.status();
        let body =
            read_limited(resp, self.max_leaf_body).await.map_err(|e| format!("merge container at {url}: {e}"))?;
        if !status.is_success() {
            return Err(format!("merge container at {url} answered HTTP {}", status.as_u16()));
        }
        Ok((body.to_vec(), "application/json"))
    }

    async fn merge_exec(
        &self,
        argv: &podkit_core::Argv,
        bodies: &[(usize, Bytes)],
        missing: &[(usize, String)],
        deadline: Instant,
    ) -> Result<(Vec<u8>, &'static str), String> {
        let reaper = self.reaper.as_ref().ok_or("no reaper")?;
        let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        let out = crate::exec::pipe(reaper, argv, Self::merge_document(bodies, missing), remaining, self.max_leaf_body)
            .await?;
        Ok((out, "application/json"))
    }

    /// One shard: the primary request, a hedge after the leaf's p95, a retry on a connection
    /// error, all within the leaf timeout and the deadline.
    async fn shard(&self, index: usize, n: usize, shard: &Shard, req: &Arc<Incoming>) -> ShardResult {
        let order = shard.order();
        let started = Instant::now();
        let until = req.deadline.min(started + self.leaf_timeout);
        let mut in_flight = FuturesUnordered::new();
        let mut next = 0usize;
        // The next replica whose breaker lets a request through, asked only when a request is
        // really sent to it (asking uses up a half-open breaker's one trial request).
        let pick = |next: &mut usize| -> Option<Arc<Leaf>> {
            for _ in 0..order.len() {
                let leaf = order[*next % order.len()].clone();
                *next += 1;
                if leaf.available(self.breaker_cooldown) {
                    return Some(leaf);
                }
            }
            None
        };
        let Some(primary) = pick(&mut next) else {
            return ShardResult::Missing(Missing::CircuitOpen);
        };
        let hedge_at = if self.hedge && req.idempotent() { primary.hedge_after().map(|d| started + d) } else { None };
        in_flight.push(self.attempt(primary, index, n, req.clone(), until));
        self.budget_refill();
        let mut retries_left = self.retries;
        let mut hedged = false;
        let mut last_error = Missing::Failed("no answer".into());
        loop {
            let hedge_timer = async {
                match hedge_at {
                    Some(t) if !hedged => tokio::time::sleep_until(t).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                done = in_flight.next() => match done {
                    Some((_, Attempt::Answer(status, body))) if status.is_success() => return ShardResult::Ok(body),
                    Some((_, Attempt::Answer(status, _))) => last_error = Missing::Status(status),
                    Some((_, Attempt::ConnectError(e))) => {
                        last_error = Missing::Failed(e);
                        if retries_left > 0 && Instant::now() < until
                            && let Some(leaf) = pick(&mut next)
                        {
                            retries_left -= 1;
                            self.metrics.retries.inc();
                            in_flight.push(self.attempt(leaf, index, n, req.clone(), until));
                        }
                    }
                    Some((_, Attempt::Failed(e))) => last_error = Missing::Failed(e),
                    // The shard's budget, not this attempt's remainder: one number per shard in
                    // messages.
                    Some((_, Attempt::TimedOut)) => last_error = Missing::TimedOut(self.leaf_timeout.min(req.budget)),
                    None => return ShardResult::Missing(last_error),
                },
                _ = hedge_timer => {
                    hedged = true;
                    if self.take_hedge_token()
                        && let Some(leaf) = pick(&mut next)
                    {
                        self.metrics.hedges.get_or_create(&LeafLabel { leaf: leaf.base.clone() }).inc();
                        in_flight.push(self.attempt(leaf, index, n, req.clone(), until));
                    }
                }
                _ = tokio::time::sleep_until(until) => {
                    return ShardResult::Missing(Missing::TimedOut(self.leaf_timeout.min(req.budget)));
                }
            }
        }
    }

    fn budget_refill(&self) {
        let add = (self.hedge_budget * 1000.0) as u64;
        let _ = self.budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some((b + add).min(10_000)));
    }

    fn take_hedge_token(&self) -> bool {
        self.budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1000)).is_ok()
    }

    async fn attempt(
        &self,
        leaf: Arc<Leaf>,
        index: usize,
        n: usize,
        req: Arc<Incoming>,
        until: Instant,
    ) -> (Arc<Leaf>, Attempt) {
        let started = Instant::now();
        let remaining = until.saturating_duration_since(started);
        let url = format!("{}{}", leaf.base, req.target);
        let mut r = self.client.request(req.method.clone(), url).timeout(remaining.max(Duration::from_millis(1)));
        for (name, value) in req.headers.iter() {
            r = r.header(name, value);
        }
        // The leaf's own deadline: this attempt's (which may be shorter than the request's).
        let budget_ms = remaining.as_millis();
        r = r.header(SHARD_HEADER, format!("{index}/{n}")).header(DEADLINE_HEADER, budget_ms.to_string());
        let label = LeafLabel { leaf: leaf.base.clone() };
        let result = match r.body(req.body.clone()).send().await {
            Ok(resp) => {
                let status = resp.status();
                match read_limited(resp, self.max_leaf_body).await {
                    Ok(body) => Attempt::Answer(status, body),
                    Err(e) => Attempt::Failed(e),
                }
            }
            Err(e) if e.is_timeout() => Attempt::TimedOut,
            Err(e) if e.is_connect() => {
                Attempt::ConnectError(format!("cannot connect to {}: {}", leaf.base, root_cause(&e)))
            }
            Err(e) => Attempt::Failed(format!("{}: {}", leaf.base, root_cause(&e))),
        };
        let took = started.elapsed();
        let result_label = match &result {
            Attempt::Answer(s, _) if s.is_success() => {
                leaf.success(took);
                "ok"
            }
            Attempt::Answer(s, _) if s.is_server_error() => {
                self.breaker(&leaf);
                "error"
            }
            Attempt::Answer(..) => "error",
            Attempt::TimedOut => {
                // A timeout counts against the leaf only if it had the full leaf timeout: a
                // caller's short deadline says nothing about the leaf's health.
                if remaining + Duration::from_millis(1) >= self.full_leaf_time() {
                    self.breaker(&leaf);
                }
                "timeout"
            }
            Attempt::ConnectError(_) => {
                self.breaker(&leaf);
                "error"
            }
            Attempt::Failed(_) => "error",
        };
        self.metrics.leaf_requests.get_or_create(&LeafLabels { leaf: leaf.base.clone(), result: result_label }).inc();
        self.metrics.leaf_duration.get_or_create(&label).observe(took.as_secs_f64());
        (leaf, result)
    }

    fn breaker(&self, leaf: &Leaf) {
        if leaf.failure(self.breaker_failures, self.breaker_cooldown) {
            tracing::warn!(leaf = %leaf.base, failures = self.breaker_failures, cooldown = %podkit_core::Duration(self.breaker_cooldown), "circuit opened");
        }
    }
}

/// A duration rounded to the millisecond, for messages.
fn ms(d: Duration) -> String {
    podkit_core::Duration(Duration::from_millis(((d.as_micros() + 500) / 1000) as u64)).to_string()
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

async fn read_limited(mut resp: reqwest::Response, limit: usize) -> Result<Bytes, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("reading the answer: {}", root_cause(&e)))? {
        if body.len() + chunk.len() > limit {
            return Err(format!("answer larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

fn error_answer(status: StatusCode, body: Value) -> Answer {
    Answer {
        status,
        content_type: "application/json",
        headers: Vec::new(),
        body: serde_json::to_vec(&body).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fanout(merger: Merger, merge_time: Option<Duration>) -> Fanout {
        podkit_core::http::install_crypto_provider();
        let deadline = Duration::from_secs(1);
        let min = MinLeaves::Percent(100);
        let mut f = Fanout::new(Arc::default(), reqwest::Client::new(), merger, deadline, deadline, min, false, 0.0);
        f.merge_time = merge_time;
        f
    }

    #[test]
    fn a_merge_container_keeps_its_share_of_the_deadline() {
        let ms = Duration::from_millis;
        let http = || Merger::Http("http://127.0.0.1:1/merge".parse().unwrap());
        // Built-in merges keep nothing.
        assert_eq!(fanout(Merger::Builtin(Strategy::Concat), None).merge_reserve(ms(1000)), Duration::ZERO);
        // Default: a fifth, at most 250 ms.
        let f = fanout(http(), None);
        assert_eq!(f.merge_reserve(ms(1000)), ms(200));
        assert_eq!(f.merge_reserve(ms(100)), ms(20));
        assert_eq!(f.merge_reserve(ms(5000)), ms(250));
        assert_eq!(f.full_leaf_time(), ms(800));
        // --merge-time, for --deadline; a caller's shorter deadline shrinks it in proportion.
        let f = fanout(http(), Some(ms(300)));
        assert_eq!(f.merge_reserve(ms(1000)), ms(300));
        assert_eq!(f.merge_reserve(ms(400)).as_millis(), 120);
        assert_eq!(f.full_leaf_time(), ms(700));
    }
}
