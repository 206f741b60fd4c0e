//! An in-memory backend for the election loop's unit tests. Leases expire on tokio's clock, so
//! a test under paused time (`tokio::time::pause`) can run minutes of campaigning in
//! milliseconds. Each candidate gets its own [`Link`] to one shared [`Memory`], and a link can
//! be cut to model a partition: its calls then fail after a network timeout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Acquired, Backend, BackendError, Lease, Observed};

/// How long a call over a cut link hangs before it fails.
pub(crate) const NETWORK_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
struct Record {
    leader: Option<String>,
    token: u64,
    expires: Instant,
}

/// The shared store: one record per election.
#[derive(Debug, Default)]
pub(crate) struct Memory {
    records: Mutex<HashMap<String, Record>>,
    changes: Notify,
    version: AtomicU64,
}

impl Memory {
    /// The live leader of `election` and its token, as the store sees it now.
    pub(crate) fn leader(&self, election: &str) -> (Option<String>, u64) {
        let records = self.records.lock().unwrap();
        records.get(election).map_or((None, 0), |r| (r.leader.clone().filter(|_| Instant::now() < r.expires), r.token))
    }

    fn changed(&self) {
        self.version.fetch_add(1, Ordering::Relaxed);
        self.changes.notify_waiters();
    }
}

/// One candidate's connection to the store.
#[derive(Debug)]
pub(crate) struct Link {
    memory: Arc<Memory>,
    cut: AtomicBool,
    /// Extra delay before an acquire is answered (after the store has granted it).
    pub(crate) acquire_delay: Mutex<Duration>,
    pub(crate) renewals: AtomicU64,
}

impl Link {
    pub(crate) fn new(memory: &Arc<Memory>) -> Arc<Link> {
        Arc::new(Link {
            memory: memory.clone(),
            cut: AtomicBool::new(false),
            acquire_delay: Mutex::new(Duration::ZERO),
            renewals: AtomicU64::new(0),
        })
    }

    /// Cuts (`true`) or restores the link.
    pub(crate) fn cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::Relaxed);
    }

    async fn reachable(&self) -> Result<(), BackendError> {
        if self.cut.load(Ordering::Relaxed) {
            tokio::time::sleep(NETWORK_TIMEOUT).await;
            return Err(BackendError::Timeout(NETWORK_TIMEOUT));
        }
        Ok(())
    }

    fn observed(&self, election: &str) -> Observed {
        let records = self.memory.records.lock().unwrap();
        let version = self.memory.version.load(Ordering::Relaxed) as i64;
        match records.get(election) {
            Some(r) if Instant::now() < r.expires => Observed {
                leader: r.leader.clone(),
                token: r.token,
                remaining: Some(r.expires - Instant::now()),
                version,
            },
            Some(r) => Observed { leader: None, token: r.token, remaining: None, version },
            None => Observed { version, ..Observed::default() },
        }
    }
}

impl Backend for Link {
    fn describe(&self) -> String {
        "memory".to_string()
    }

    async fn acquire(&self, election: &str, id: &str, ttl: Duration) -> Result<Acquired, BackendError> {
        self.reachable().await?;
        let won = {
            let mut records = self.memory.records.lock().unwrap();
            let now = Instant::now();
            let r = records.entry(election.to_string()).or_insert(Record { leader: None, token: 0, expires: now });
            if r.leader.is_some() && now < r.expires {
                None
            } else {
                r.token += 1;
                r.leader = Some(id.to_string());
                r.expires = now + ttl;
                Some(Lease { election: election.to_string(), token: r.token, handle: 0 })
            }
        };
        let delay = *self.acquire_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        match won {
            Some(lease) => {
                self.memory.changed();
                Ok(Acquired::Won(lease))
            }
            None => Ok(Acquired::Lost(self.observed(election))),
        }
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool, BackendError> {
        self.reachable().await?;
        let mut records = self.memory.records.lock().unwrap();
        let now = Instant::now();
        match records.get_mut(&lease.election) {
            Some(r) if r.token == lease.token && r.leader.is_some() && now < r.expires => {
                r.expires = now + ttl;
                self.renewals.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<(), BackendError> {
        self.reachable().await?;
        let released = {
            let mut records = self.memory.records.lock().unwrap();
            match records.get_mut(&lease.election) {
                Some(r) if r.token == lease.token && r.leader.is_some() => {
                    r.leader = None;
                    true
                }
                _ => false,
            }
        };
        if released {
            self.memory.changed();
        }
        Ok(())
    }

    async fn observe(&self, election: &str) -> Result<Observed, BackendError> {
        self.reachable().await?;
        Ok(self.observed(election))
    }

    async fn changed(&self, election: &str, since: &Observed, max: Duration) -> Result<(), BackendError> {
        self.reachable().await?;
        let notified = self.memory.changes.notified();
        if self.observed(election).version != since.version {
            return Ok(());
        }
        // A lease that expires is a change too, though nobody writes.
        let until = since.remaining.map_or(max, |r| r.min(max));
        let _ = tokio::time::timeout(until, notified).await;
        Ok(())
    }
}
