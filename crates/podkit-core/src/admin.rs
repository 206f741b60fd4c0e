//! The admin listener every command serves: the upward API (health, readiness, metrics, logs,
//! profiles, configuration) and the downward API (lifecycle requests).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::logs::{Level, LogFilter, LogRing};
use crate::readiness::Readiness;
use crate::shutdown::{Shutdown, StopReason};

/// The longest CPU profile one request may ask for.
const MAX_PROFILE_SECONDS: u64 = 300;

// === impl AdminBuilder ===

/// What a command adds to the admin listener before it starts: metrics and extra routes.
#[allow(missing_debug_implementations)] // holds closures
pub struct AdminBuilder {
    component: &'static str,
    registry: Registry,
    public: Router,
    protected: Router,
    readiness_check: Option<ReadinessCheck>,
}

/// A command's own readiness question, asked with `/readyz`'s query parameters
/// (`/readyz?election=NAME`). `None` means "not mine": the general answer applies.
pub type ReadinessCheck = Arc<dyn Fn(&HashMap<String, String>) -> Option<Result<(), Vec<String>>> + Send + Sync>;

impl AdminBuilder {
    pub fn new(component: &'static str) -> Self {
        let mut registry = Registry::default();
        crate::metrics::register_process_metrics(&mut registry);
        Self { component, registry, public: Router::new(), protected: Router::new(), readiness_check: None }
    }

    /// The metrics registry for this command; names get the `podkit_<component>_` prefix.
    pub fn metrics(&mut self) -> &mut Registry {
        self.registry.sub_registry_with_prefix(format!("podkit_{}", self.component))
    }

    /// Adds a read-only route, open to every caller that can reach the listener.
    pub fn route(&mut self, path: &str, route: MethodRouter) {
        self.public = std::mem::take(&mut self.public).route(path, route);
    }

    /// Adds a state-changing route, guarded like `/lifecycle/shutdown`: loopback callers only,
    /// or a bearer token from anyone when `--admin-token-file` is set.
    pub fn protected_route(&mut self, path: &str, route: MethodRouter) {
        self.protected = std::mem::take(&mut self.protected).route(path, route);
    }

    /// Lets `/readyz?…` answer a command-specific question (is this replica the leader of…).
    pub fn readiness_check(
        &mut self,
        check: impl Fn(&HashMap<String, String>) -> Option<Result<(), Vec<String>>> + Send + Sync + 'static,
    ) {
        self.readiness_check = Some(Arc::new(check));
    }

    /// The finished router.
    pub fn build(self, parts: AdminParts) -> Router {
        let state = AdminState {
            inner: Arc::new(StateInner {
                registry: self.registry,
                parts,
                readiness_check: self.readiness_check,
                profiling: tokio::sync::Mutex::new(()),
            }),
        };
        let protected =
            Router::new().route("/lifecycle/shutdown", post(shutdown)).with_state(state.clone()).merge(self.protected);
        let protected = protect(protected, state.inner.parts.token.clone());
        Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .route("/logs", get(logs))
            .route("/config", get(config))
            .route("/debug/pprof/profile", get(profile))
            .with_state(state)
            .merge(self.public)
            .merge(protected)
    }
}

/// The shared pieces the admin endpoints read.
#[derive(Debug)]
pub struct AdminParts {
    pub readiness: Readiness,
    pub logs: LogRing,
    pub shutdown: Shutdown,
    /// `GET /config`: already redacted.
    pub config: Value,
    /// The bearer token for state-changing endpoints, if configured.
    pub token: Option<String>,
}

#[derive(Clone)]
struct AdminState {
    inner: Arc<StateInner>,
}

struct StateInner {
    registry: Registry,
    parts: AdminParts,
    readiness_check: Option<ReadinessCheck>,
    /// Only one CPU profile at a time: the profiler is process-wide.
    profiling: tokio::sync::Mutex<()>,
}

/// Serves `router` on `listener` until the process exits. The admin listener outlives the
/// graceful stop on purpose: readiness and metrics stay visible while a command drains.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) -> std::io::Result<()> {
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>()).await
}

// === handlers ===

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(st): State<AdminState>, Query(q): Query<HashMap<String, String>>) -> Response {
    let readiness = &st.inner.parts.readiness;
    let specific = match &st.inner.readiness_check {
        Some(check) if !q.is_empty() => check(&q),
        _ => None,
    };
    let answer = specific.unwrap_or_else(|| if readiness.is_ready() { Ok(()) } else { Err(readiness.reasons()) });
    match answer {
        Ok(()) => Json(json!({ "ready": true })).into_response(),
        Err(reasons) => {
            let body = json!({ "ready": false, "reasons": reasons });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

/// `/metrics` in the format the scraper asks for: OpenMetrics for Prometheus, the classic text
/// format for curl and promtool (see [`crate::metrics::wants_openmetrics`]).
async fn metrics(State(st): State<AdminState>, headers: axum::http::HeaderMap) -> Response {
    let mut body = String::new();
    if let Err(e) = encode(&mut body, &st.inner.registry) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics: {e}"));
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    if crate::metrics::wants_openmetrics(accept) {
        return ([(header::CONTENT_TYPE, crate::metrics::OPENMETRICS)], body).into_response();
    }
    ([(header::CONTENT_TYPE, crate::metrics::TEXT_0_0_4)], crate::metrics::to_text_format(&body)).into_response()
}

async fn config(State(st): State<AdminState>) -> Json<Value> {
    Json(st.inner.parts.config.clone())
}

#[derive(Debug, Deserialize)]
struct LogsQuery {
    level: Option<String>,
    limit: Option<usize>,
    since: Option<String>,
    since_seq: Option<u64>,
    stream: Option<String>,
    target: Option<String>,
    follow: Option<String>,
}

impl LogsQuery {
    fn filter(&self) -> Result<LogFilter, String> {
        let min_level = self.level.as_deref().map(str::parse::<Level>).transpose()?;
        let since = match self.since.as_deref() {
            None => None,
            Some(s) => Some(parse_since(s)?),
        };
        Ok(LogFilter {
            min_level,
            since,
            after_seq: self.since_seq,
            stream: self.stream.clone(),
            target: self.target.clone(),
        })
    }

    fn follow(&self) -> Result<bool, String> {
        match self.follow.as_deref() {
            None | Some("0") | Some("false") => Ok(false),
            Some("1") | Some("true") | Some("") => Ok(true),
            Some(other) => Err(format!("follow={other:?}: expected 1 or 0")),
        }
    }
}

/// `since` is an RFC 3339 time (`2026-11-24T08:00:00Z`) or an age (`5m` = the last five minutes).
fn parse_since(s: &str) -> Result<SystemTime, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t);
    }
    match humantime::parse_duration(s) {
        Ok(age) => Ok(SystemTime::now().checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH)),
        Err(_) => {
            Err(format!("since={s:?}: expected an RFC 3339 time such as 2026-11-24T08:00:00Z or an age such as 5m"))
        }
    }
}

async fn logs(State(st): State<AdminState>, Query(q): Query<LogsQuery>) -> Response {
    let (filter, follow) = match (q.filter(), q.follow()) {
        (Ok(f), Ok(follow)) => (f, follow),
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, e),
    };
    let ring = &st.inner.parts.logs;
    // A follower that names where to resume from gets everything after it; one that does
    // not gets only new records unless it asks for a backlog.
    let resuming = q.since.is_some() || q.since_seq.is_some();
    let default_limit = match (follow, resuming) {
        (false, _) => 100,
        (true, true) => ring.capacity(),
        (true, false) => 0,
    };
    let limit = q.limit.unwrap_or(default_limit);
    if !follow {
        let records = ring.query(&filter, limit);
        return Json(records.iter().map(|r| &**r).collect::<Vec<_>>()).into_response();
    }
    let lines = ring.follow(filter, limit).map(|r| {
        let mut line = serde_json::to_vec(&*r).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(bytes::Bytes::from(line))
    });
    let mut resp = Body::from_stream(lines).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    resp
}

#[derive(Debug, Deserialize)]
struct ProfileQuery {
    seconds: Option<u64>,
    format: Option<String>,
}

async fn profile(State(st): State<AdminState>, Query(q): Query<ProfileQuery>) -> Response {
    let seconds = q.seconds.unwrap_or(30);
    if seconds == 0 || seconds > MAX_PROFILE_SECONDS {
        return error(StatusCode::BAD_REQUEST, format!("seconds={seconds}: expected 1 to {MAX_PROFILE_SECONDS}"));
    }
    let svg = match q.format.as_deref() {
        None | Some("pprof") | Some("proto") => false,
        Some("svg") => true,
        Some(other) => {
            return error(StatusCode::BAD_REQUEST, format!("format={other:?}: expected pprof or svg"));
        }
    };
    let Ok(_busy) = st.inner.profiling.try_lock() else {
        return error(StatusCode::CONFLICT, "a CPU profile is already being taken; retry when it ends");
    };
    let result = tokio::task::spawn_blocking(move || crate::profile::cpu(Duration::from_secs(seconds), svg)).await;
    match result {
        Ok(Ok(body)) => {
            let ct = if svg { "image/svg+xml" } else { "application/octet-stream" };
            ([(header::CONTENT_TYPE, ct)], body).into_response()
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("profiling failed: {e}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("profiling task failed: {e}")),
    }
}

async fn shutdown(State(st): State<AdminState>) -> Response {
    st.inner.parts.shutdown.trigger(StopReason::AdminRequest);
    (StatusCode::ACCEPTED, Json(json!({ "status": "stopping" }))).into_response()
}

/// Guards every route of `router` as state-changing endpoints are guarded: with `token`, a
/// bearer token from every caller; without, loopback callers only. Serve the router with
/// `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn protect(router: Router, token: Option<String>) -> Router {
    router.route_layer(middleware::from_fn_with_state(Arc::new(token), guard))
}

async fn guard(
    State(token): State<Arc<Option<String>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    match token.as_ref() {
        Some(token) => {
            let presented = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            let ok = presented.is_some_and(|p| constant_time_eq::constant_time_eq(p.as_bytes(), token.as_bytes()));
            if !ok {
                let mut resp = error(StatusCode::UNAUTHORIZED, "this endpoint needs Authorization: Bearer <token>");
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return resp;
            }
        }
        None => {
            if !peer.ip().to_canonical().is_loopback() {
                return error(
                    StatusCode::FORBIDDEN,
                    format!(
                        "{} refused from {}: loopback callers only unless --admin-token-file is set",
                        req.uri().path(),
                        peer.ip()
                    ),
                );
            }
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request as HttpRequest;
    use tower::ServiceExt;

    fn parts(token: Option<&str>) -> (AdminParts, Shutdown, Readiness, LogRing) {
        let shutdown = Shutdown::new();
        let readiness = Readiness::new();
        let logs = LogRing::new(100);
        let parts = AdminParts {
            readiness: readiness.clone(),
            logs: logs.clone(),
            shutdown: shutdown.clone(),
            config: json!({"values": {"grace": "30s"}}),
            token: token.map(str::to_string),
        };
        (parts, shutdown, readiness, logs)
    }

    async fn call(router: &Router, method: &str, uri: &str, peer: &str, auth: Option<&str>) -> (StatusCode, String) {
        let mut req = HttpRequest::builder().method(method).uri(uri);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let mut req = req.body(Body::empty()).unwrap();
        req.extensions_mut().insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        let resp = router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn health_readiness_and_config() {
        let (p, _s, readiness, _l) = parts(None);
        let router = AdminBuilder::new("test").build(p);
        assert_eq!(call(&router, "GET", "/healthz", "127.0.0.1:1", None).await.0, StatusCode::OK);

        readiness.not_ready("child", "not started");
        let (status, body) = call(&router, "GET", "/readyz", "127.0.0.1:1", None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["reasons"][0], "child: not started");
        readiness.ready("child");
        assert_eq!(call(&router, "GET", "/readyz", "127.0.0.1:1", None).await.0, StatusCode::OK);

        let (_, body) = call(&router, "GET", "/config", "127.0.0.1:1", None).await;
        assert!(body.contains("30s"));
    }

    #[tokio::test]
    async fn readiness_check_answers_its_own_questions() {
        let (p, ..) = parts(None);
        let mut b = AdminBuilder::new("test");
        b.readiness_check(|q| {
            let name = q.get("election")?;
            Some(if name == "a" { Ok(()) } else { Err(vec![format!("not the leader of {name}")]) })
        });
        let router = b.build(p);
        assert_eq!(call(&router, "GET", "/readyz?election=a", "127.0.0.1:1", None).await.0, StatusCode::OK);
        let (status, body) = call(&router, "GET", "/readyz?election=b", "127.0.0.1:1", None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("not the leader of b"));
        assert_eq!(call(&router, "GET", "/readyz?other=1", "127.0.0.1:1", None).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_include_process_and_component_metrics() {
        let (p, ..) = parts(None);
        let mut b = AdminBuilder::new("test");
        let c = prometheus_client::metrics::counter::Counter::<u64>::default();
        b.metrics().register("things", "Things seen", c.clone());
        c.inc();
        let router = b.build(p);
        let (status, body) = call(&router, "GET", "/metrics", "127.0.0.1:1", None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("podkit_test_things_total 1"), "{body}");
        assert!(body.contains("podkit_process_resident_memory_bytes"), "{body}");
        assert!(body.contains("podkit_build_info"), "{body}");
    }

    #[tokio::test]
    async fn logs_filters_and_rejects_bad_parameters() {
        let (p, _s, _r, logs) = parts(None);
        logs.push(Level::Info, "t", None, "hello".into(), Default::default());
        logs.push(Level::Error, "t", Some("stderr"), "bad".into(), Default::default());
        let router = AdminBuilder::new("test").build(p);
        let (_, body) = call(&router, "GET", "/logs?level=error", "127.0.0.1:1", None).await;
        let v: Vec<Value> = serde_json::from_str(&body).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0]["message"], "bad");
        let (_, body) = call(&router, "GET", "/logs?since=1h&limit=1", "127.0.0.1:1", None).await;
        let v: Vec<Value> = serde_json::from_str(&body).unwrap();
        assert_eq!(v.len(), 1);
        let (status, body) = call(&router, "GET", "/logs?level=loud", "127.0.0.1:1", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("loud"));
        let (status, _) = call(&router, "GET", "/logs?since=yesterday", "127.0.0.1:1", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn shutdown_is_loopback_only_without_a_token() {
        let (p, s, ..) = parts(None);
        let router = AdminBuilder::new("test").build(p);
        let (status, body) = call(&router, "POST", "/lifecycle/shutdown", "10.1.2.3:5555", None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(!s.is_triggered());
        let (status, _) = call(&router, "POST", "/lifecycle/shutdown", "[::1]:5555", None).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(s.reason(), Some(StopReason::AdminRequest));
    }

    #[tokio::test]
    async fn shutdown_needs_the_token_from_everyone_when_configured() {
        let (p, s, ..) = parts(Some("sekret"));
        let router = AdminBuilder::new("test").build(p);
        let (status, _) = call(&router, "POST", "/lifecycle/shutdown", "127.0.0.1:1", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = call(&router, "POST", "/lifecycle/shutdown", "127.0.0.1:1", Some("Bearer wrong")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(!s.is_triggered());
        let (status, _) = call(&router, "POST", "/lifecycle/shutdown", "10.1.2.3:1", Some("Bearer sekret")).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert!(s.is_triggered());
    }

    #[tokio::test]
    async fn profile_rejects_bad_parameters() {
        let (p, ..) = parts(None);
        let router = AdminBuilder::new("test").build(p);
        let (status, _) = call(&router, "GET", "/debug/pprof/profile?seconds=0", "127.0.0.1:1", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = call(&router, "GET", "/debug/pprof/profile?seconds=1&format=gif", "127.0.0.1:1", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn profile_returns_a_pprof_protobuf_and_an_svg() {
        let (p, ..) = parts(None);
        let router = AdminBuilder::new("test").build(p);
        // Keep a core busy so the profiler has samples to report.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let spinner = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut x = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
            }
        });
        let (status, body) =
            call(&router, "GET", "/debug/pprof/profile?seconds=1&format=svg", "127.0.0.1:1", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.contains("<svg"), "{}", &body[..body.len().min(200)]);
        let (status, _) = call(&router, "GET", "/debug/pprof/profile?seconds=1", "127.0.0.1:1", None).await;
        assert_eq!(status, StatusCode::OK);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        spinner.join().unwrap();
    }
}
