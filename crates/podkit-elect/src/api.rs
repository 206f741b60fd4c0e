//! The HTTP API the app calls on localhost (`--listen`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::election::{Election, RenewMode};

/// The longest long poll or campaign wait one request may ask for.
const MAX_WAIT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub(crate) struct Api {
    pub elections: Arc<BTreeMap<String, Arc<Election>>>,
    pub renew: RenewMode,
}

/// The routes; the state-changing ones are guarded like the admin port's.
pub(crate) fn router(api: Api, token: Option<String>) -> Router {
    let reads = Router::new()
        .route("/", get(compat))
        .route("/v1/elections", get(list))
        .route("/v1/elections/{name}", get(status))
        .with_state(api.clone());
    let writes = Router::new()
        .route("/v1/elections/{name}/campaign", post(campaign))
        .route("/v1/elections/{name}/renew", post(renew))
        .route("/v1/elections/{name}/resign", post(resign))
        .with_state(api);
    reads.merge(podkit_core::admin::protect(writes, token))
}

/// An error answer: a status and a message naming what was wrong.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl Api {
    fn find(&self, name: &str) -> Result<Arc<Election>, ApiError> {
        self.elections.get(name).cloned().ok_or_else(|| {
            let known: Vec<_> = self.elections.keys().cloned().collect();
            ApiError(
                StatusCode::NOT_FOUND,
                format!("unknown election {name:?}; this sidecar takes part in: {}", known.join(", ")),
            )
        })
    }
}

fn parse_wait(s: Option<&str>, field: &str) -> Result<Option<Duration>, ApiError> {
    let Some(s) = s else { return Ok(None) };
    match s.parse::<podkit_core::Duration>() {
        Ok(d) if d.get() <= MAX_WAIT => Ok(Some(d.get())),
        Ok(_) => {
            Err(ApiError(StatusCode::BAD_REQUEST, format!("{field}={s}: at most {}", podkit_core::Duration(MAX_WAIT))))
        }
        Err(e) => Err(ApiError(StatusCode::BAD_REQUEST, format!("{field}={s}: {e}"))),
    }
}

/// `token=`: taken as text and parsed here, so a bad value gets the API's JSON error naming
/// the parameter rather than axum's plain-text rejection.
fn parse_token(s: Option<&str>) -> Result<Option<u64>, ApiError> {
    let Some(s) = s else { return Ok(None) };
    s.parse().map(Some).map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("token={s}: expected a whole number, the \"token\" of an earlier answer"),
        )
    })
}

/// A query string axum cannot read at all (bad percent-encoding): the same JSON error.
fn bad_query(e: QueryRejection) -> Response {
    ApiError(StatusCode::BAD_REQUEST, format!("bad query string: {}", e.body_text())).into_response()
}

/// `GET /`: `{"name": LEADER}`, what the Kubernetes leader-elector sidecar answered, for the
/// first election.
async fn compat(State(api): State<Api>) -> Json<serde_json::Value> {
    let leader = api.elections.values().next().and_then(|e| e.status().leader);
    Json(json!({ "name": leader }))
}

async fn list(State(api): State<Api>) -> Json<serde_json::Value> {
    let all: Vec<_> = api.elections.values().map(|e| e.status()).collect();
    Json(json!({ "elections": all }))
}

#[derive(Debug, Deserialize)]
struct StatusQuery {
    wait: Option<String>,
    token: Option<String>,
    leader: Option<String>,
}

/// `GET /v1/elections/NAME[?wait=30s&token=N&leader=ID]`: with `wait`, a long poll that answers
/// as soon as the token or the leader differs from what the caller saw (or this replica's own
/// leadership changes), or when `wait` runs out.
async fn status(
    State(api): State<Api>,
    Path(name): Path<String>,
    q: Result<Query<StatusQuery>, QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return bad_query(e),
    };
    let election = match api.find(&name) {
        Ok(e) => e,
        Err(e) => return e.into_response(),
    };
    let wait = match parse_wait(q.wait.as_deref(), "wait") {
        Ok(w) => w,
        Err(e) => return e.into_response(),
    };
    let token = match parse_token(q.token.as_deref()) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let mut changes = election.subscribe();
    let first = election.status();
    let Some(wait) = wait else {
        return Json(first).into_response();
    };
    let differs = |s: &crate::election::Status| {
        token.is_some_and(|t| t != s.token)
            || q.leader.as_ref().is_some_and(|l| Some(l) != s.leader.as_ref())
            || s.is_leader != first.is_leader
            || s.leader != first.leader
            || s.token != first.token
    };
    if token.is_some_and(|t| t != first.token) || q.leader.as_ref().is_some_and(|l| Some(l) != first.leader.as_ref()) {
        return Json(first).into_response();
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        // Our own claim can lapse without any event (a renewal that never came back); look at
        // the clock at least at the moment it would.
        let now = election.status();
        if differs(&now) {
            return Json(now).into_response();
        }
        let tick = now
            .lease_remaining_ms
            .filter(|_| now.is_leader)
            .map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms + 1))
            .unwrap_or(deadline)
            .min(deadline);
        tokio::select! {
            r = changes.changed() => if r.is_err() { return Json(election.status()).into_response() },
            _ = tokio::time::sleep_until(tick) => {
                if tokio::time::Instant::now() >= deadline {
                    return Json(election.status()).into_response();
                }
            }
        }
    }
}

#[derive(Debug, Deserialize)]
struct CampaignQuery {
    timeout: Option<String>,
}

/// `POST /v1/elections/NAME/campaign[?timeout=30s]` (becomeLeader): 200 with the token once
/// this replica leads, 408 at the timeout (the campaign goes on).
async fn campaign(
    State(api): State<Api>,
    Path(name): Path<String>,
    q: Result<Query<CampaignQuery>, QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return bad_query(e),
    };
    let election = match api.find(&name) {
        Ok(e) => e,
        Err(e) => return e.into_response(),
    };
    let timeout = match parse_wait(q.timeout.as_deref(), "timeout") {
        Ok(t) => t.unwrap_or(Duration::from_secs(30)),
        Err(e) => return e.into_response(),
    };
    let mut changes = election.subscribe();
    election.campaign();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let s = election.status();
        if s.is_leader {
            return Json(s).into_response();
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { break },
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    let s = election.status();
    if s.is_leader {
        return Json(s).into_response();
    }
    let body = json!({ "error": format!("not leader after {}; still campaigning", podkit_core::Duration(timeout)), "status": s });
    (StatusCode::REQUEST_TIMEOUT, Json(body)).into_response()
}

/// `POST /v1/elections/NAME/renew` (renewLeadership).
async fn renew(State(api): State<Api>, Path(name): Path<String>) -> Response {
    let election = match api.find(&name) {
        Ok(e) => e,
        Err(e) => return e.into_response(),
    };
    // With --renew app this is also the app's heartbeat: a follower whose app heartbeats
    // campaigns, one whose app is silent does not.
    if api.renew == RenewMode::App {
        election.app_renewed();
    }
    let s = election.status();
    if !s.is_leader {
        let body = json!({ "error": "not the leader", "status": s });
        return (StatusCode::CONFLICT, Json(body)).into_response();
    }
    Json(s).into_response()
}

/// `POST /v1/elections/NAME/resign`: gives leadership up at once.
async fn resign(State(api): State<Api>, Path(name): Path<String>) -> Response {
    let election = match api.find(&name) {
        Ok(e) => e,
        Err(e) => return e.into_response(),
    };
    let was_leader = election.is_leader();
    let mut changes = election.subscribe();
    if was_leader {
        // Only a leader has something to give up; a follower's request must not linger and
        // fire when it later wins.
        election.resign();
        // Answer once the claim is dropped, so the caller's next read is already true.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while election.is_leader() {
                if changes.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
    }
    Json(json!({ "resigned": was_leader, "status": election.status() })).into_response()
}
