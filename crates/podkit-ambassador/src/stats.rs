//! Counters kept on the request path (plain atomics, no locks). They are read two ways,
//! Prometheus `/metrics` on the admin port and twemproxy's JSON on its stats port; both are in
//! [`crate::export`], so this module depends on nothing else in the crate.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn inc_by(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Gauge(AtomicI64);

impl Gauge {
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub(crate) fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub(crate) fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 16] =
    [0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// A latency histogram with fixed buckets (the last slot counts what is above them all).
#[derive(Debug, Default)]
pub(crate) struct Latency {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Latency {
    pub(crate) fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS.iter().position(|&b| s <= b).unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// (sum in seconds, count, (upper bound, count) per bucket) for the exporters.
    pub(crate) fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut buckets: Vec<(f64, u64)> =
            BUCKETS.iter().zip(&self.buckets).map(|(&b, c)| (b, c.load(Ordering::Relaxed))).collect();
        buckets.push((f64::INFINITY, self.buckets[BUCKETS.len()].load(Ordering::Relaxed)));
        let count = buckets.iter().map(|b| b.1).sum();
        (self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9, count, buckets)
    }
}

/// One backend server's numbers.
#[derive(Debug, Default)]
pub(crate) struct ServerStats {
    pub(crate) requests: Counter,
    pub(crate) request_bytes: Counter,
    pub(crate) responses: Counter,
    pub(crate) response_bytes: Counter,
    /// Connection errors and invalid answers.
    pub(crate) errors: Counter,
    /// Connections the server closed with requests in flight.
    pub(crate) eof: Counter,
    pub(crate) timeouts: Counter,
    pub(crate) ejections: Counter,
    pub(crate) connections: Gauge,
    /// Requests written and not yet answered.
    pub(crate) out_queue: Gauge,
    pub(crate) latency: Latency,
}

/// One pool's numbers about its clients.
#[derive(Debug, Default)]
pub(crate) struct PoolStats {
    pub(crate) client_connections: Gauge,
    pub(crate) client_connections_total: Counter,
    pub(crate) client_eof: Counter,
    pub(crate) client_err: Counter,
    /// Requests the proxy answered with an error itself: bad input, unsupported commands,
    /// failed servers.
    pub(crate) forward_error: Counter,
    /// Parts of split multi-key requests.
    pub(crate) fragments: Counter,
    /// Requests answered by the proxy for bad or unsupported input.
    pub(crate) client_errors: Counter,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets() {
        let l = Latency::default();
        l.observe(Duration::from_micros(30));
        l.observe(Duration::from_millis(3));
        l.observe(Duration::from_secs(10));
        let (sum, count, buckets) = l.snapshot();
        assert_eq!(count, 3);
        assert!((sum - 10.00303).abs() < 1e-6);
        assert_eq!(buckets[0], (0.000_05, 1));
        assert_eq!(buckets.iter().find(|b| b.0 == 0.005).unwrap().1, 1);
        assert_eq!(buckets.last().unwrap().1, 1);
    }
}
