//! Which leaves there are: a static list, a DNS name (a Kubernetes headless service) or a file,
//! and what podkit has learned about each (latency, failures).

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Latency samples kept per leaf for its p95.
const WINDOW: usize = 256;
/// Fewer samples than this and the p95 is not trusted (no hedging yet).
const MIN_SAMPLES: usize = 20;

/// Where the leaves come from (`--leaves`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeafSource {
    /// `http://a1|http://a2,http://b`: shards separated by commas, replicas of a shard by `|`.
    Static(Vec<Vec<String>>),
    /// `dns://NAME:PORT`: every address NAME resolves to is one shard.
    Dns { host: String, port: u16 },
    /// `file:///PATH`: one shard per line in the static syntax; re-read when it changes.
    File(PathBuf),
}

fn parse_shards(text: &str, sep: char) -> Result<Vec<Vec<String>>, String> {
    let mut shards = Vec::new();
    for shard in text.split(sep).map(str::trim).filter(|s| !s.is_empty() && !s.starts_with('#')) {
        let mut replicas = Vec::new();
        for r in shard.split('|').map(str::trim).filter(|r| !r.is_empty()) {
            let url = reqwest::Url::parse(r).map_err(|e| match e {
                url::ParseError::RelativeUrlWithoutBase => {
                    format!("leaf {r:?}: not a URL; give http://{r} (a leaf is http://HOST:PORT[/PATH])")
                }
                e => format!("leaf {r:?}: {e}; expected http://HOST:PORT[/PATH]"),
            })?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(format!("leaf {r:?}: expected http://HOST:PORT or https://HOST:PORT"));
            }
            if url.query().is_some() || url.fragment().is_some() {
                return Err(format!("leaf {r:?}: a leaf URL has no query or fragment"));
            }
            replicas.push(r.trim_end_matches('/').to_string());
        }
        shards.push(replicas);
    }
    Ok(shards)
}

impl FromStr for LeafSource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = s.strip_prefix("dns://") {
            let (host, port) = rest
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.trim_end_matches('/').parse::<u16>().ok()?)))
                .ok_or("expected dns://NAME:PORT")?;
            return Ok(LeafSource::Dns { host: host.to_string(), port });
        }
        if let Some(path) = s.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err("expected an absolute path, as in file:///etc/leaves".into());
            }
            return Ok(LeafSource::File(path.into()));
        }
        let shards = parse_shards(s, ',')?;
        if shards.is_empty() {
            return Err("no leaves; expected http://a:80,http://b:80, dns://NAME:PORT or file:///PATH".into());
        }
        Ok(LeafSource::Static(shards))
    }
}

impl LeafSource {
    /// The shards this source names now.
    pub async fn resolve(&self) -> Result<Vec<Vec<String>>, String> {
        match self {
            LeafSource::Static(s) => Ok(s.clone()),
            LeafSource::Dns { host, port } => {
                let addrs = tokio::net::lookup_host((host.as_str(), *port))
                    .await
                    .map_err(|e| format!("resolving {host}: {e}"))?;
                let mut ips: Vec<_> = addrs.map(|a| a.ip()).collect();
                // A stable order, so shard numbers do not move between resolutions.
                ips.sort();
                ips.dedup();
                Ok(ips
                    .into_iter()
                    .map(|ip| match ip {
                        std::net::IpAddr::V4(v4) => vec![format!("http://{v4}:{port}")],
                        std::net::IpAddr::V6(v6) => vec![format!("http://[{v6}]:{port}")],
                    })
                    .collect())
            }
            LeafSource::File(path) => {
                let text = tokio::fs::read_to_string(path).await.map_err(|e| format!("{}: {e}", path.display()))?;
                parse_shards(&text, '\n')
            }
        }
    }

    pub fn is_dynamic(&self) -> bool {
        !matches!(self, LeafSource::Static(_))
    }
}

// === impl Leaf ===

/// One leaf server and what podkit knows about it.
#[derive(Debug)]
pub(crate) struct Leaf {
    /// `http://host:port[/prefix]`, no trailing slash.
    pub base: String,
    latencies: Mutex<VecDeque<u64>>,
    /// p95 of recent successful answers, in microseconds; 0 while unknown.
    p95_us: AtomicU64,
    samples: AtomicU64,
    failures: AtomicU32,
    open_until: Mutex<Option<Instant>>,
}

impl Leaf {
    fn new(base: String) -> Self {
        Self {
            base,
            latencies: Mutex::new(VecDeque::with_capacity(WINDOW)),
            p95_us: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            open_until: Mutex::new(None),
        }
    }

    /// Records a successful answer: closes the breaker and feeds the p95.
    pub(crate) fn success(&self, latency: Duration) {
        self.failures.store(0, Ordering::Relaxed);
        *self.open_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let mut l = self.latencies.lock().unwrap_or_else(|e| e.into_inner());
        if l.len() == WINDOW {
            l.pop_front();
        }
        l.push_back(latency.as_micros() as u64);
        // Recomputed every eighth sample: sorting 256 numbers on every answer is wasted work.
        let seen = self.samples.fetch_add(1, Ordering::Relaxed) + 1;
        if l.len() >= MIN_SAMPLES && seen.is_multiple_of(8) {
            let mut sorted: Vec<u64> = l.iter().copied().collect();
            sorted.sort_unstable();
            let p95 = sorted[(sorted.len() * 95 / 100).min(sorted.len() - 1)];
            self.p95_us.store(p95.max(1), Ordering::Relaxed);
        }
    }

    /// Records a failure; opens the breaker after `threshold` in a row.
    pub(crate) fn failure(&self, threshold: u32, cooldown: Duration) -> bool {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= threshold {
            *self.open_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + cooldown);
            return n == threshold;
        }
        false
    }

    /// Whether the breaker lets a request through now. After the cooldown one request goes
    /// through (half open); its outcome closes or reopens the breaker.
    pub(crate) fn available(&self, cooldown: Duration) -> bool {
        let mut open = self.open_until.lock().unwrap_or_else(|e| e.into_inner());
        match *open {
            Some(until) if Instant::now() < until => false,
            Some(_) => {
                // Half open: let this one through, keep the others out for another cooldown.
                *open = Some(Instant::now() + cooldown);
                true
            }
            None => true,
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        self.open_until.lock().unwrap_or_else(|e| e.into_inner()).is_some_and(|u| Instant::now() < u)
    }

    /// The latency after which a hedge goes out, once enough answers were seen.
    pub(crate) fn hedge_after(&self) -> Option<Duration> {
        match self.p95_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }
}

/// One shard: its replicas, used round-robin.
#[derive(Debug)]
pub(crate) struct Shard {
    pub replicas: Vec<Arc<Leaf>>,
    next: AtomicUsize,
}

impl Shard {
    /// The replicas in the order to try them this time (round-robin start).
    pub(crate) fn order(&self) -> Vec<Arc<Leaf>> {
        let n = self.replicas.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n.max(1);
        (0..n).map(|i| self.replicas[(start + i) % n].clone()).collect()
    }
}

/// The current shards. Swapped whole when the source changes.
#[derive(Debug, Default)]
pub(crate) struct Topology {
    pub shards: Vec<Shard>,
}

/// The live topology and the leaves' state, kept across re-resolutions.
#[derive(Debug, Default)]
pub(crate) struct Leaves {
    current: RwLock<Arc<Topology>>,
    known: Mutex<HashMap<String, Arc<Leaf>>>,
}

impl Leaves {
    pub(crate) fn get(&self) -> Arc<Topology> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Installs `shards`; returns whether anything changed. A leaf that stays keeps its
    /// latency history and breaker.
    pub(crate) fn set(&self, shards: Vec<Vec<String>>) -> bool {
        let now: Vec<Vec<String>> =
            self.get().shards.iter().map(|s| s.replicas.iter().map(|l| l.base.clone()).collect()).collect();
        if now == shards {
            return false;
        }
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let mut keep = HashMap::new();
        let topology = Topology {
            shards: shards
                .into_iter()
                .map(|replicas| Shard {
                    replicas: replicas
                        .into_iter()
                        .map(|base| {
                            let leaf = known.get(&base).cloned().unwrap_or_else(|| Arc::new(Leaf::new(base.clone())));
                            keep.insert(base, leaf.clone());
                            leaf
                        })
                        .collect(),
                    next: AtomicUsize::new(0),
                })
                .collect(),
        };
        *known = keep;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(topology);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_lists_parse_into_shards_and_replicas() {
        let s: LeafSource = "http://a1:80|http://a2:80, http://b:81/api/".parse().unwrap();
        assert_eq!(
            s,
            LeafSource::Static(vec![
                vec!["http://a1:80".into(), "http://a2:80".into()],
                vec!["http://b:81/api".into()]
            ])
        );
        assert!("ftp://x".parse::<LeafSource>().unwrap_err().contains("expected http"));
        assert!("".parse::<LeafSource>().is_err());
        assert_eq!(
            "dns://leaves.ns.svc:8080".parse::<LeafSource>().unwrap(),
            LeafSource::Dns { host: "leaves.ns.svc".into(), port: 8080 }
        );
        assert!("dns://noport".parse::<LeafSource>().is_err());
        assert!("file://rel".parse::<LeafSource>().is_err());
    }

    #[tokio::test]
    async fn dns_names_resolve_to_one_shard_per_address() {
        let s: LeafSource = "dns://localhost:8080".parse().unwrap();
        let shards = s.resolve().await.unwrap();
        assert!(shards.iter().any(|r| r == &vec!["http://127.0.0.1:8080".to_string()]), "{shards:?}");
    }

    #[test]
    fn leaves_keep_their_state_across_changes() {
        let leaves = Leaves::default();
        assert!(leaves.set(vec![vec!["http://a".into()], vec!["http://b".into()]]));
        let a = leaves.get().shards[0].replicas[0].clone();
        a.failure(1, Duration::from_secs(60));
        assert!(!leaves.set(vec![vec!["http://a".into()], vec!["http://b".into()]]), "no change");
        assert!(leaves.set(vec![vec!["http://b".into()], vec!["http://a".into()]]));
        assert!(leaves.get().shards[1].replicas[0].is_open(), "a's breaker survived the change");
    }

    #[test]
    fn breaker_opens_after_threshold_and_half_opens_after_cooldown() {
        let leaf = Leaf::new("http://x".into());
        assert!(!leaf.failure(2, Duration::from_millis(30)));
        assert!(leaf.available(Duration::from_millis(30)));
        assert!(leaf.failure(2, Duration::from_millis(30)), "the second failure opens it");
        assert!(!leaf.available(Duration::from_millis(30)));
        std::thread::sleep(Duration::from_millis(40)); // the cooldown itself is what is tested
        assert!(leaf.available(Duration::from_millis(30)), "half open: one request through");
        assert!(!leaf.available(Duration::from_millis(30)), "…and only one");
        leaf.success(Duration::from_millis(1));
        assert!(leaf.available(Duration::from_millis(30)));
    }

    #[test]
    fn p95_needs_enough_samples() {
        let leaf = Leaf::new("http://x".into());
        for _ in 0..10 {
            leaf.success(Duration::from_millis(1));
        }
        assert_eq!(leaf.hedge_after(), None);
        for i in 0..90 {
            leaf.success(Duration::from_millis(if i % 10 == 0 { 100 } else { 2 }));
        }
        let p95 = leaf.hedge_after().unwrap();
        assert!(p95 >= Duration::from_millis(2) && p95 <= Duration::from_millis(100), "{p95:?}");
    }
}
