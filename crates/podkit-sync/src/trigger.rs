//! "Sync now", from outside: `POST /sync` on a listener of its own (`--trigger-listen`), for a
//! git host's push webhook or a deploy script. A request is accepted only when it proves it
//! knows the secret (`--trigger-secret-file`, read again for each request), in one of three
//! ways:
//!
//! - GitHub's `X-Hub-Signature-256: sha256=HEX`, the HMAC-SHA256 of the body (Gitea and
//!   Forgejo sign the same way);
//! - GitLab's `X-Gitlab-Token: SECRET`;
//! - `Authorization: Bearer SECRET`.
//!
//! Anything else is answered 401 and changes nothing. Accepted requests are answered 202 and
//! coalesced: however many arrive during a sync, one more sync follows it (the main loop also
//! spaces triggered syncs by `--trigger-min-interval`).

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, Mac};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sha2::Sha256;
use tokio::sync::Notify;

/// The largest body a trigger may carry (GitHub's push payloads are capped at 25 MB; the
/// signature needs the whole body, and 1 MiB covers a push of hundreds of commits).
const MAX_BODY: usize = 1024 * 1024;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TriggerLabel {
    pub(crate) result: &'static str,
}

#[derive(Clone)]
struct Shared {
    secret_file: PathBuf,
    wake: Arc<Notify>,
    counts: Family<TriggerLabel, Counter>,
    /// When a refusal was last logged (Unix seconds): a client hammering the listener with
    /// bad requests is counted, but logged at most once a second.
    last_logged: Arc<std::sync::atomic::AtomicU64>,
}

/// How a request proved (or failed to prove) it knows the secret.
#[derive(Debug, PartialEq, Eq)]
enum Proof {
    Good,
    Bad(&'static str),
}

fn check(headers: &HeaderMap, body: &[u8], secret: &[u8]) -> Proof {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(sig) = header("x-hub-signature-256") {
        let Some(hex_sig) = sig.strip_prefix("sha256=") else {
            return Proof::Bad("X-Hub-Signature-256 is not sha256=HEX");
        };
        let Ok(given) = hex::decode(hex_sig) else { return Proof::Bad("X-Hub-Signature-256 is not hex") };
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(body);
        // verify_slice compares in constant time.
        return if mac.verify_slice(&given).is_ok() {
            Proof::Good
        } else {
            Proof::Bad("the signature does not match the body")
        };
    }
    if let Some(token) = header("x-gitlab-token") {
        return if constant_time_eq::constant_time_eq(token.as_bytes(), secret) {
            Proof::Good
        } else {
            Proof::Bad("wrong X-Gitlab-Token")
        };
    }
    if let Some(auth) = header("authorization") {
        let Some(token) = auth.strip_prefix("Bearer ") else { return Proof::Bad("Authorization is not Bearer") };
        return if constant_time_eq::constant_time_eq(token.trim().as_bytes(), secret) {
            Proof::Good
        } else {
            Proof::Bad("wrong bearer token")
        };
    }
    Proof::Bad("no X-Hub-Signature-256, X-Gitlab-Token or Authorization header")
}

async fn sync(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> (StatusCode, &'static str) {
    let secret = match read_secret(&s.secret_file) {
        Ok(secret) => secret,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the trigger secret; refusing the trigger");
            s.counts.get_or_create(&TriggerLabel { result: "error" }).inc();
            return (StatusCode::SERVICE_UNAVAILABLE, "the trigger secret cannot be read\n");
        }
    };
    match check(&headers, &body, &secret) {
        Proof::Good => {
            s.counts.get_or_create(&TriggerLabel { result: "accepted" }).inc();
            s.wake.notify_one();
            (StatusCode::ACCEPTED, "sync requested\n")
        }
        Proof::Bad(why) => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            if s.last_logged.swap(now, std::sync::atomic::Ordering::Relaxed) != now {
                tracing::warn!(reason = why, "trigger refused (further refusals this second are only counted)");
            }
            s.counts.get_or_create(&TriggerLabel { result: "refused" }).inc();
            (StatusCode::UNAUTHORIZED, "unauthorized\n")
        }
    }
}

/// The secret file's content without its trailing newline.
pub(crate) fn read_secret(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let mut s = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    while s.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        s.pop();
    }
    if s.is_empty() {
        return Err(format!("{}: the secret is empty", path.display()));
    }
    Ok(s)
}

/// The trigger's router.
pub(crate) fn router(secret_file: PathBuf, wake: Arc<Notify>, counts: Family<TriggerLabel, Counter>) -> axum::Router {
    axum::Router::new().route("/sync", post(sync)).layer(DefaultBodyLimit::max(MAX_BODY)).with_state(Shared {
        secret_file,
        wake,
        counts,
        last_logged: Arc::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn sign(secret: &[u8], body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn only_requests_that_know_the_secret_pass() {
        let secret = b"It's a Secret to Everybody";
        // GitHub's documented example: this body, this secret, this signature.
        let body = b"Hello, World!";
        let github = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(check(&headers(&[("x-hub-signature-256", github)]), body, secret), Proof::Good);
        assert_eq!(sign(secret, body), github);
        // The same signature replayed with another body.
        assert!(matches!(check(&headers(&[("x-hub-signature-256", github)]), b"Hello, World?", secret), Proof::Bad(_)));
        assert!(matches!(check(&headers(&[("x-hub-signature-256", "sha1=00")]), body, secret), Proof::Bad(_)));
        assert_eq!(check(&headers(&[("x-gitlab-token", "It's a Secret to Everybody")]), body, secret), Proof::Good);
        assert!(matches!(check(&headers(&[("x-gitlab-token", "guess")]), body, secret), Proof::Bad(_)));
        assert_eq!(
            check(&headers(&[("authorization", "Bearer It's a Secret to Everybody")]), b"", secret),
            Proof::Good
        );
        assert!(matches!(check(&headers(&[("authorization", "Basic eDp5")]), b"", secret), Proof::Bad(_)));
        assert!(matches!(check(&headers(&[]), body, secret), Proof::Bad(_)));
    }
}
