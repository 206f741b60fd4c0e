//! Readiness: a command is ready when nothing says it is not.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The reasons a command is not ready, by key. Cloning shares them.
///
/// Each part of a command owns one key (`program`, `probe`, `stopping`, a pod's container name…) and sets or clears its
/// own reason, so parts never overwrite each other's view.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    reasons: Arc<Mutex<BTreeMap<String, String>>>,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn not_ready(&self, key: impl Into<String>, reason: impl Into<String>) {
        self.lock().insert(key.into(), reason.into());
    }

    pub fn ready(&self, key: &str) {
        self.lock().remove(key);
    }

    /// Whether `key` currently gives a reason.
    pub fn has(&self, key: &str) -> bool {
        self.lock().contains_key(key)
    }

    pub fn is_ready(&self) -> bool {
        self.lock().is_empty()
    }

    /// Every reason, as `key: reason`, in key order.
    pub fn reasons(&self) -> Vec<String> {
        self.lock().iter().map(|(k, v)| format!("{k}: {v}")).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.reasons.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_when_every_key_is_cleared() {
        let r = Readiness::new();
        assert!(r.is_ready());
        r.not_ready("child", "not started");
        r.not_ready("probe", "HTTP 503");
        assert_eq!(r.reasons(), ["child: not started", "probe: HTTP 503"]);
        r.ready("child");
        assert!(!r.is_ready());
        r.ready("probe");
        assert!(r.is_ready());
    }
}
