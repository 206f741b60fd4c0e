//! The cluster backend: etcd v3 leases and transactions.
//!
//! The leader is the holder of key `<prefix>/<election>`, created in a transaction that only
//! succeeds while the key does not exist, attached to a lease of `ttl`. The key's create
//! revision is the fencing token: etcd revisions only grow, so every new leader's token is
//! larger than every earlier one's. When the leader stops renewing, etcd deletes the key as the
//! lease expires; followers watch the key and try at once.

use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, Identity, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};

use super::{Acquired, Backend, BackendError, Lease, Observed};

/// How to reach etcd.
#[derive(Debug, Clone, Default)]
pub(crate) struct EtcdOptions {
    /// `host:port` of each member.
    pub endpoints: Vec<String>,
    /// Key prefix, without a trailing slash.
    pub prefix: String,
    pub ca_pem: Option<Vec<u8>>,
    pub client_cert_pem: Option<(Vec<u8>, Vec<u8>)>,
    pub user: Option<(String, String)>,
    /// Bound on each request.
    pub timeout: Duration,
}

#[derive(Clone)]
pub(crate) struct EtcdBackend {
    client: Client,
    prefix: String,
    endpoints: Vec<String>,
}

impl std::fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdBackend").field("endpoints", &self.endpoints).field("prefix", &self.prefix).finish()
    }
}

impl EtcdBackend {
    /// Connects and checks that etcd answers.
    pub(crate) async fn connect(opts: EtcdOptions) -> Result<EtcdBackend, BackendError> {
        let tls = opts.ca_pem.is_some() || opts.client_cert_pem.is_some();
        let scheme = if tls { "https" } else { "http" };
        let urls: Vec<String> = opts.endpoints.iter().map(|e| format!("{scheme}://{e}")).collect();
        let mut co = ConnectOptions::new()
            .with_connect_timeout(opts.timeout)
            .with_timeout(opts.timeout)
            .with_keep_alive(Duration::from_secs(2), opts.timeout);
        if let Some((user, password)) = &opts.user {
            co = co.with_user(user.clone(), password.clone());
        }
        if tls {
            let mut t = TlsOptions::new();
            if let Some(ca) = &opts.ca_pem {
                t = t.ca_certificate(Certificate::from_pem(ca.clone()));
            }
            if let Some((cert, key)) = &opts.client_cert_pem {
                t = t.identity(Identity::from_pem(cert.clone(), key.clone()));
            }
            co = co.with_tls(t);
        }
        let endpoints = opts.endpoints.join(",");
        let fail = |reason: String| BackendError::Etcd { endpoints: endpoints.clone(), reason };
        let timed_out = || fail(format!("no answer within {:?}", opts.timeout));
        let mut client = tokio::time::timeout(opts.timeout, Client::connect(urls, Some(co)))
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| fail(reason(&e)))?;
        // A connection is lazy; ask something so an unreachable cluster fails here.
        tokio::time::timeout(opts.timeout, client.status())
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| fail(reason(&e)))?;
        Ok(EtcdBackend { client, prefix: opts.prefix, endpoints: opts.endpoints })
    }

    /// An etcd error as this backend reports it: with the endpoints it talks to.
    fn err(&self, e: etcd_client::Error) -> BackendError {
        BackendError::Etcd { endpoints: self.endpoints.join(","), reason: reason(&e) }
    }

    fn key(&self, election: &str) -> String {
        format!("{}/{election}", self.prefix)
    }

    async fn remaining(&self, lease: i64) -> Option<Duration> {
        let ttl = self.client.clone().lease_time_to_live(lease, None).await.ok()?.ttl();
        (ttl >= 0).then(|| Duration::from_secs(ttl as u64))
    }
}

/// What went wrong, for an operator. etcd-client displays a failed request through tonic's
/// `Status`, whose Display ends in the Debug dump of its source (`tonic::transport::Error(
/// Transport, ConnectError(…))`); this gives the gRPC code and etcd's message instead, or, when
/// the request never reached etcd, the transport error's chain (`tcp connect error: Connection
/// refused (os error 111)`), whose code (always "unavailable") and message say less.
pub(crate) fn reason(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(status) => match std::error::Error::source(status) {
            Some(source) => transport_chain(source),
            None if status.message().is_empty() => code_name(status.code()),
            None => format!("{}: {}", code_name(status.code()), status.message()),
        },
        etcd_client::Error::TransportError(t) => transport_chain(t),
        other => other.to_string(),
    }
}

/// tonic's transport error says only "transport error"; what happened is in its sources.
fn transport_chain(e: &(dyn std::error::Error + 'static)) -> String {
    match e.source() {
        Some(source) => podkit_core::error_chain(source),
        None => e.to_string(),
    }
}

/// A gRPC code as words (`PermissionDenied` → `permission denied`). The code's own Display is
/// a sentence ("Some requested entity was not found") that reads badly before etcd's message.
fn code_name(code: impl std::fmt::Debug) -> String {
    let mut out = String::new();
    for c in format!("{code:?}").chars() {
        if c.is_ascii_uppercase() && !out.is_empty() {
            out.push(' ');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// etcd lease TTLs are whole seconds; round up so etcd never ends a lease before the sidecar's
/// own (shorter) deadline.
fn ttl_secs(ttl: Duration) -> i64 {
    ttl.as_millis().div_ceil(1000).max(1) as i64
}

impl Backend for EtcdBackend {
    fn describe(&self) -> String {
        format!("etcd {} prefix {}", self.endpoints.join(","), self.prefix)
    }

    async fn acquire(&self, election: &str, id: &str, ttl: Duration) -> Result<Acquired, BackendError> {
        let observed = self.observe(election).await?;
        if observed.leader.is_some() {
            return Ok(Acquired::Lost(observed));
        }
        let mut c = self.client.clone();
        let key = self.key(election);
        let lease = c.lease_grant(ttl_secs(ttl), None).await.map_err(|e| self.err(e))?.id();
        let txn = Txn::new().when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)]).and_then([TxnOp::put(
            key.clone(),
            id,
            Some(PutOptions::new().with_lease(lease)),
        )]);
        let resp = c.txn(txn).await.map_err(|e| self.err(e))?;
        if resp.succeeded() {
            let token = resp.header().map(|h| h.revision()).unwrap_or_default() as u64;
            return Ok(Acquired::Won(Lease { election: election.to_string(), token, handle: lease }));
        }
        // Someone was faster: give the unused lease back and report them.
        let _ = c.lease_revoke(lease).await;
        Ok(Acquired::Lost(self.observe(election).await?))
    }

    async fn renew(&self, lease: &Lease, _ttl: Duration) -> Result<bool, BackendError> {
        let mut c = self.client.clone();
        let (mut keeper, mut stream) = c.lease_keep_alive(lease.handle).await.map_err(|e| self.err(e))?;
        keeper.keep_alive().await.map_err(|e| self.err(e))?;
        let alive = match stream.message().await.map_err(|e| self.err(e))? {
            Some(r) => r.ttl() > 0,
            None => false,
        };
        if !alive {
            return Ok(false);
        }
        // The lease lives; the key must still be the one this leadership created (an operator
        // may have deleted it by hand).
        let resp = c.get(self.key(&lease.election), None).await.map_err(|e| self.err(e))?;
        Ok(resp.kvs().first().is_some_and(|kv| kv.create_revision() as u64 == lease.token))
    }

    async fn release(&self, lease: &Lease) -> Result<(), BackendError> {
        match self.client.clone().lease_revoke(lease.handle).await {
            Ok(_) => Ok(()),
            // Already expired or revoked: released all the same.
            Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("lease not found") => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    async fn observe(&self, election: &str) -> Result<Observed, BackendError> {
        let resp = self.client.clone().get(self.key(election), None).await.map_err(|e| self.err(e))?;
        let version = resp.header().map(|h| h.revision()).unwrap_or_default();
        let Some(kv) = resp.kvs().first() else {
            return Ok(Observed { version, ..Observed::default() });
        };
        let leader = String::from_utf8_lossy(kv.value()).into_owned();
        let remaining = self.remaining(kv.lease()).await;
        Ok(Observed { leader: Some(leader), token: kv.create_revision() as u64, remaining, version })
    }

    async fn changed(&self, election: &str, since: &Observed, max: Duration) -> Result<(), BackendError> {
        let mut c = self.client.clone();
        let opts = WatchOptions::new().with_start_revision(since.version + 1);
        let wait = async {
            // Dropping the stream ends the watch.
            let mut stream = c.watch(self.key(election), Some(opts)).await.map_err(|e| self.err(e))?;
            loop {
                match stream.message().await {
                    Ok(Some(resp)) if resp.canceled() => break Ok(()), // compacted: look again
                    Ok(Some(resp)) if !resp.events().is_empty() => break Ok(()),
                    Ok(Some(_)) => continue,
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(self.err(e)),
                }
            }
        };
        match tokio::time::timeout(max, wait).await {
            Ok(r) => r,
            Err(_) => Ok(()),
        }
    }
}
