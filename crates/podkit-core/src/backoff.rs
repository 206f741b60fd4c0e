//! The one backoff every retry loop uses: exponential from a first delay up to a cap, with
//! optional jitter, and a reset once things have gone well for long enough.

use std::time::Duration;

use backon::BackoffBuilder;

/// How delays grow between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// The first delay.
    pub initial: Duration,
    /// No delay is longer than this.
    pub max: Duration,
    /// Spread delays at random (up to one extra delay) so that many clients retrying the same
    /// server do not arrive in step. Off where the delay is a documented rule (Kubernetes'
    /// crash-loop backoff is exact).
    pub jitter: bool,
}

impl BackoffPolicy {
    /// Doubling from `initial` to `max`, without jitter.
    pub const fn exact(initial: Duration, max: Duration) -> Self {
        Self { initial, max, jitter: false }
    }

    /// Doubling from `initial` to `max`, jittered.
    pub const fn jittered(initial: Duration, max: Duration) -> Self {
        Self { initial, max, jitter: true }
    }

    /// A fresh sequence of delays.
    pub fn start(self) -> Backoff {
        Backoff { policy: self, delays: self.delays() }
    }

    fn delays(self) -> backon::ExponentialBackoff {
        let b = backon::ExponentialBuilder::new()
            .with_min_delay(self.initial)
            .with_max_delay(self.max.max(self.initial))
            .with_factor(2.0)
            .without_max_times();
        if self.jitter { b.with_jitter().build() } else { b.build() }
    }
}

/// A running sequence of delays; see [`BackoffPolicy`].
#[derive(Debug)]
pub struct Backoff {
    policy: BackoffPolicy,
    delays: backon::ExponentialBackoff,
}

impl Backoff {
    /// The delay before the next attempt. Never longer than the policy's cap.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self.policy.max.max(self.policy.initial);
        self.delays.next().unwrap_or(cap).min(cap)
    }

    /// Starts again from the first delay (after a success).
    pub fn reset(&mut self) {
        self.delays = self.policy.delays();
    }

    pub fn policy(&self) -> BackoffPolicy {
        self.policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = BackoffPolicy::exact(Duration::from_secs(10), Duration::from_secs(300)).start();
        let got: Vec<u64> = (0..8).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(got, [10, 20, 40, 80, 160, 300, 300, 300]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(10));
    }

    #[test]
    fn jitter_stays_within_the_cap() {
        let mut b = BackoffPolicy::jittered(Duration::from_millis(100), Duration::from_secs(1)).start();
        for _ in 0..50 {
            let d = b.next_delay();
            assert!(d >= Duration::from_millis(100) && d <= Duration::from_secs(1), "{d:?}");
        }
    }
}
