//! A pool at run time: its servers, where each key goes, and what happens when a server fails.
//!
//! A [`PoolState`] is one generation of a pool's configuration; a reload builds a new one
//! (keeping the servers whose settings did not change, with their connections and numbers)
//! and swaps it in, so client connections are never dropped. A small task per generation
//! rebuilds the distribution when a server is ejected or returns, returns servers after
//! `server_retry_timeout`, and runs the optional health checks.

use std::cell::Cell;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::{self, EjectPolicy, Failure, Server, Settings};
use crate::config::{self, EjectMode};
use crate::hashkit::{Continuum, Distribution};
use crate::stats::PoolStats;
use crate::workers::Workers;

/// The distribution over the servers that take keys now.
#[derive(Debug)]
struct Ring {
    continuum: Continuum,
    /// Continuum index → server index.
    servers: Vec<usize>,
}

/// One generation of a pool.
#[derive(Debug)]
pub(crate) struct PoolState {
    pub(crate) name: String,
    pub(crate) cfg: config::Pool,
    pub(crate) servers: Vec<Arc<Server>>,
    pub(crate) stats: Arc<PoolStats>,
    ring: ArcSwap<Option<Ring>>,
    stop: CancellationToken,
}

impl PoolState {
    /// Builds a generation from `cfg`, reusing the servers of `previous` whose settings are the
    /// same, and starts its maintenance task.
    pub(crate) fn start(cfg: config::Pool, previous: Option<&PoolState>, workers: &Workers) -> Arc<PoolState> {
        let servers = cfg
            .servers
            .iter()
            .map(|s| {
                let settings = settings(&cfg, s);
                previous
                    .and_then(|p| p.servers.iter().find(|old| old.shared.settings == settings))
                    .cloned()
                    .unwrap_or_else(|| Server::start(settings, workers))
            })
            .collect();
        let stats = previous.map(|p| p.stats.clone()).unwrap_or_default();
        let state = Arc::new(PoolState {
            name: cfg.name.clone(),
            cfg,
            servers,
            stats,
            ring: ArcSwap::from_pointee(None),
            stop: CancellationToken::new(),
        });
        state.rebuild();
        tokio::spawn(state.clone().maintain());
        state
    }

    /// Stops this generation's maintenance task (its servers live on while anyone holds them).
    pub(crate) fn retire(&self) {
        self.stop.cancel();
    }

    /// The server `key` goes to, or why none takes it with whom to name in the error: the
    /// ejected server a fail-fast pool would have sent it to, or the pool when all are out.
    pub(crate) fn route(&self, key: &[u8]) -> Result<usize, (Failure, Arc<str>)> {
        let ring = self.ring.load();
        let Some(ring) = ring.as_ref() else { return Err((Failure::NoServers, Arc::from(self.name.as_str()))) };
        let i = ring.servers[ring.continuum.pick(key, random())];
        if self.servers[i].shared.is_ejected() && self.fail_fast() {
            return Err((Failure::Ejected, self.servers[i].label()));
        }
        Ok(i)
    }

    /// Servers that take requests now (for commands sent to every server).
    pub(crate) fn live(&self) -> impl Iterator<Item = (usize, &Arc<Server>)> {
        self.servers.iter().enumerate().filter(|(_, s)| !s.shared.is_ejected())
    }

    fn fail_fast(&self) -> bool {
        self.cfg.auto_eject_hosts && self.cfg.eject_mode == EjectMode::FailFast
    }

    /// Rebuilds the distribution: over the live servers (twemproxy's rehash), or over all of
    /// them when the pool fails fast.
    fn rebuild(&self) {
        let members: Vec<usize> =
            (0..self.servers.len()).filter(|&i| self.fail_fast() || !self.servers[i].shared.is_ejected()).collect();
        let ring = if members.is_empty() {
            None
        } else {
            let specs: Vec<_> = members.iter().map(|&i| self.cfg.servers[i].spec()).collect();
            let continuum = Continuum::new(self.cfg.distribution, self.cfg.hash, &specs, self.cfg.hash_tag);
            Some(Ring { continuum, servers: members })
        };
        self.ring.store(Arc::new(ring));
    }

    async fn maintain(self: Arc<Self>) {
        let mut changes: Vec<_> = self.servers.iter().map(|s| s.shared.changes.subscribe()).collect();
        let interval = self.cfg.health_check_interval;
        let mut next_check = interval.map(|i| Instant::now() + i);
        loop {
            for c in &mut changes {
                c.borrow_and_update();
            }
            self.rebuild();
            let next_retry = self.servers.iter().filter_map(|s| s.shared.retry_at()).min();
            let wake = [next_retry, next_check].into_iter().flatten().min();
            let changed = futures_util::future::select_all(changes.iter_mut().map(|c| Box::pin(c.changed())));
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = changed => continue,
                _ = sleep_until(wake) => {}
            }
            let now = Instant::now();
            for s in &self.servers {
                if s.shared.retry_at().is_some_and(|t| t <= now) {
                    s.shared.restore("server_retry_timeout passed");
                }
            }
            if let (Some(interval), Some(at)) = (interval, next_check)
                && at <= now
            {
                self.health_check().await;
                next_check = Some(Instant::now() + interval);
            }
        }
    }

    /// Probes every server at once: an ejected server that answers is back at once; a live one
    /// that does not answer counts a failure, as a failed request would.
    async fn health_check(&self) {
        let probes = self.servers.iter().map(|s| async move { (s, backend::probe(&s.shared.settings).await) });
        for (s, result) in futures_util::future::join_all(probes).await {
            match result {
                Ok(()) => s.shared.restore("health check answered"),
                Err(why) if !s.shared.is_ejected() => {
                    tracing::debug!(server = %s.shared.settings.label, "health check failed: {}", why.describe(&s.shared.settings.label));
                    s.shared.failed(&why);
                }
                Err(_) => {}
            }
        }
    }
}

impl Drop for PoolState {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn settings(pool: &config::Pool, s: &config::Server) -> Settings {
    Settings {
        addr: s.addr.clone(),
        label: s.label(),
        connections: pool.server_connections,
        timeout: pool.timeout,
        redis_auth: pool.redis_auth.clone(),
        redis_db: pool.redis_db,
        redis: pool.redis,
        tcpkeepalive: pool.tcpkeepalive,
        preconnect: pool.preconnect,
        eject: pool.auto_eject_hosts.then_some(EjectPolicy {
            failure_limit: pool.server_failure_limit,
            retry_timeout: pool.server_retry_timeout,
        }),
    }
}

/// A cheap random number for the `random` distribution (xorshift, one state per thread).
fn random() -> u32 {
    thread_local! {
        static STATE: Cell<u32> = Cell::new({
            let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
            seed | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        s.set(x);
        x
    })
}

// === impl Pools ===

/// A pool as clients see it: its listener and its current generation.
#[derive(Debug)]
pub(crate) struct PoolHandle {
    pub(crate) name: String,
    /// The address the listener is bound to (with port 0 resolved).
    pub(crate) bound: String,
    pub(crate) state: ArcSwap<PoolState>,
    /// The listening socket. A reload can hand it to another pool (a renamed one, or one that
    /// takes over the address), so it is shared with the accept task.
    pub(crate) listener: Arc<crate::Listener>,
    /// Stops the listener.
    pub(crate) stop_listening: CancellationToken,
}

/// Every pool of the running configuration.
#[derive(Debug, Default)]
pub(crate) struct Pools {
    pub(crate) handles: ArcSwap<Vec<Arc<PoolHandle>>>,
}

impl Pools {
    /// The current generation of every pool.
    pub(crate) fn snapshot(&self) -> Vec<Arc<PoolState>> {
        self.handles.load().iter().map(|h| h.state.load_full()).collect()
    }

    /// `GET /pools`: pools, listeners and servers with their health.
    pub(crate) fn describe(&self) -> serde_json::Value {
        let pools: Vec<_> = self
            .handles
            .load()
            .iter()
            .map(|h| {
                let st = h.state.load();
                let servers: Vec<_> = st
                    .servers
                    .iter()
                    .zip(&st.cfg.servers)
                    .map(|(s, c)| {
                        serde_json::json!({
                            "name": s.shared.settings.label,
                            "address": c.addr.to_string(),
                            "weight": c.weight,
                            "ejected": s.shared.is_ejected(),
                            "connections": s.shared.stats.connections.get(),
                        })
                    })
                    .collect();
                serde_json::json!({
                    "name": h.name,
                    "listen": h.bound,
                    "protocol": if st.cfg.redis { "redis" } else { "memcache" },
                    "hash": st.cfg.hash.name(),
                    "distribution": match st.cfg.distribution {
                        Distribution::Ketama => "ketama",
                        Distribution::Modula => "modula",
                        Distribution::Random => "random",
                    },
                    "auto_eject_hosts": st.cfg.auto_eject_hosts,
                    "eject_mode": st.cfg.eject_mode,
                    "servers": servers,
                })
            })
            .collect();
        serde_json::Value::Array(pools)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const RETRY: Duration = Duration::from_secs(30);

    /// A pool of two servers, `a` and `b`, out for [`RETRY`] after 2 failures in a row. Its
    /// servers' connection tasks run on the test's runtime, idle: nothing connects.
    fn pool(eject_mode: &str) -> Arc<PoolState> {
        let yaml = format!(
            "p:\n  listen: 127.0.0.1:0\n  hash: fnv1a_64\n  distribution: ketama\n  auto_eject_hosts: true\n  server_failure_limit: 2\n  server_retry_timeout: {}\n  eject_mode: {eject_mode}\n  servers:\n   - 127.0.0.1:1:1 a\n   - 127.0.0.1:2:1 b\n",
            RETRY.as_millis()
        );
        let cfg = config::parse(&yaml).unwrap().pools.remove(0);
        PoolState::start(cfg, None, &Workers::on_current_runtime())
    }

    /// A key the pool sends to `server` while every server is in.
    fn key_of(pool: &PoolState, server: usize) -> Vec<u8> {
        (0..).map(|i| format!("key{i}").into_bytes()).find(|k| pool.route(k) == Ok(server)).unwrap()
    }

    fn eject(pool: &PoolState, server: usize) {
        let shared = &pool.servers[server].shared;
        shared.failed(&Failure::Timeout);
        shared.failed(&Failure::Timeout);
        assert!(shared.is_ejected());
    }

    /// Lets the maintenance task run. Only yields: the paused clock does not move.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_ejected_server_returns_at_its_own_retry_time() {
        let pool = pool("rehash");
        let (key_a, key_b) = (key_of(&pool, 0), key_of(&pool, 1));
        let (a, b) = (&pool.servers[0].shared, &pool.servers[1].shared);

        eject(&pool, 0);
        settle().await;
        assert_eq!(pool.route(&key_a), Ok(1), "the keys of an ejected server go to the others");
        assert_eq!(pool.live().count(), 1);

        tokio::time::advance(Duration::from_secs(10)).await;
        eject(&pool, 1);
        settle().await;
        assert_eq!(pool.route(&key_b), Err((Failure::NoServers, Arc::from("p"))), "the pool is named");

        tokio::time::advance(RETRY - Duration::from_secs(10) - Duration::from_millis(1)).await;
        settle().await;
        assert!(a.is_ejected(), "back before server_retry_timeout");

        tokio::time::advance(Duration::from_millis(1)).await;
        settle().await;
        assert!(!a.is_ejected(), "not back when server_retry_timeout passed");
        assert_eq!(a.retry_at(), None);
        assert!(b.is_ejected(), "back with the other server, before its own retry time");
        assert_eq!(pool.route(&key_a), Ok(0));
        assert_eq!(pool.route(&key_b), Ok(0));

        tokio::time::advance(Duration::from_secs(10)).await;
        settle().await;
        assert!(!b.is_ejected(), "not back when its server_retry_timeout passed");
        assert_eq!(pool.route(&key_a), Ok(0), "the keys did not come back");
        assert_eq!(pool.route(&key_b), Ok(1), "the keys did not come back");
        assert_eq!(a.stats.ejections.get() + b.stats.ejections.get(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn fail_fast_keeps_the_keys_in_place_until_the_retry_time() {
        let pool = pool("fail_fast");
        let (key_a, key_b) = (key_of(&pool, 0), key_of(&pool, 1));

        eject(&pool, 0);
        settle().await;
        assert_eq!(
            pool.route(&key_a),
            Err((Failure::Ejected, Arc::from("a"))),
            "the ejected server's keys do not fail fast, naming it"
        );
        assert_eq!(pool.route(&key_b), Ok(1), "the other server's keys moved");

        tokio::time::advance(RETRY).await;
        settle().await;
        assert!(!pool.servers[0].shared.is_ejected(), "not back when server_retry_timeout passed");
        assert_eq!(pool.route(&key_a), Ok(0));
    }
}
