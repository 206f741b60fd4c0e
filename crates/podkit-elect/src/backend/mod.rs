//! Where leadership is recorded. A backend grants leases, renews them, releases them, and says
//! who leads; the election loop ([`crate::election`]) decides when to call which.
//!
//! The trait is small on purpose: a Kubernetes Lease backend needs only these five calls.

use std::future::Future;
use std::time::Duration;

pub(crate) mod etcd;
pub(crate) mod file;
#[cfg(test)]
pub(crate) mod memory;

/// Leadership held by this sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lease {
    pub election: String,
    /// The fencing token: strictly increasing per election, across all leaders, ever.
    pub token: u64,
    /// Backend-specific handle (an etcd lease id; unused by the file backend).
    pub handle: i64,
}

/// What the backend says about an election.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Observed {
    pub leader: Option<String>,
    /// The current (or, with no leader, the last) fencing token; 0 before the first leader.
    pub token: u64,
    /// How long the leader's lease has left, as far as the backend knows.
    pub remaining: Option<Duration>,
    /// Backend position of this observation (etcd revision; file: the token and leader hash),
    /// so [`Backend::changed`] can wait for anything newer.
    pub version: i64,
}

#[derive(Debug)]
pub(crate) enum Acquired {
    Won(Lease),
    Lost(Observed),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum BackendError {
    /// An etcd request failed; `reason` is already written for an operator (see
    /// [`etcd::reason`]): tonic's own Display ends in a Debug dump of the transport error.
    #[error("etcd {endpoints}: {reason}")]
    Etcd { endpoints: String, reason: String },
    #[error("lease file {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("lease file {path} is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
    /// The memory backend's cut link; real backends bound their own requests.
    #[cfg(test)]
    #[error("the backend did not answer within {0:?}")]
    Timeout(Duration),
}

/// A store of leases.
pub(crate) trait Backend: Send + Sync + 'static {
    /// For logs and errors: `etcd 127.0.0.1:2379`, `file /run/podkit`.
    fn describe(&self) -> String;

    /// Tries to become leader of `election` as `id` with a lease of `ttl`. The lease must not
    /// start before this call does: callers count their own deadline from the moment they call.
    fn acquire(
        &self,
        election: &str,
        id: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<Acquired, BackendError>> + Send;

    /// Extends `lease` by `ttl` from now. `Ok(false)`: the lease is gone (expired, or taken).
    fn renew(&self, lease: &Lease, ttl: Duration) -> impl Future<Output = Result<bool, BackendError>> + Send;

    /// Gives leadership up at once.
    fn release(&self, lease: &Lease) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Who leads `election` now.
    fn observe(&self, election: &str) -> impl Future<Output = Result<Observed, BackendError>> + Send;

    /// Resolves when `election` may have changed since `since`, or after `max`.
    fn changed(
        &self,
        election: &str,
        since: &Observed,
        max: Duration,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
}
