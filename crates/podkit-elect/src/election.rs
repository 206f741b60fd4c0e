//! One election: the campaign/renew loop, and the view the HTTP API answers from.
//!
//! Safety rests on one rule: this sidecar claims leadership only until its *local* deadline,
//! counted on the monotonic clock from the moment it *sent* the acquire or renew request that
//! succeeded, and shorter than the lease. The backend's lease started no earlier than that
//! request, so the backend cannot hand leadership to another replica while this one still
//! claims it. The deadline is checked on every answer, not by a timer: a process that was
//! paused (SIGSTOP, a long GC, a frozen VM) answers "not leader" the instant it runs again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use podkit_core::Shutdown;
use podkit_process::hook::{Hook, Input, Runner};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use serde::Serialize;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use crate::backend::{Acquired, Backend, Lease, Observed};

/// Fraction of the lease this sidecar claims leadership for: the rest is margin against a
/// backend whose lease started later than the request that asked for it.
const CLAIM_NUM: u32 = 9;
const CLAIM_DEN: u32 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CampaignMode {
    /// Campaign from the start, and again after losing leadership.
    Auto,
    /// Campaign only once the app calls `POST …/campaign`.
    Manual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RenewMode {
    /// The sidecar renews the lease by itself.
    Auto,
    /// The lease is renewed only while the app calls `POST …/renew` at least once per ttl/3.
    App,
}

/// Settings shared by every election of a sidecar.
#[derive(Debug, Clone)]
pub struct Settings {
    pub id: String,
    pub ttl: Duration,
    pub campaign: CampaignMode,
    pub renew: RenewMode,
    pub on_elected: Option<Hook>,
    pub on_demoted: Option<Hook>,
    pub notify: Option<Hook>,
    pub hook_timeout: Duration,
}

impl Settings {
    fn claim(&self) -> Duration {
        self.ttl * CLAIM_NUM / CLAIM_DEN
    }

    fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// Pause between attempts after a backend error.
    pub fn retry(&self) -> Duration {
        (self.ttl / 10).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }

    /// Bound on one renewal attempt.
    fn attempt_timeout(&self) -> Duration {
        (self.ttl / 6).max(Duration::from_millis(200))
    }

    /// How long the app may go without `POST …/renew` (ttl/3, plus a tenth for scheduling).
    fn app_renew_window(&self) -> Duration {
        self.ttl / 3 + self.ttl / 30
    }
}

/// What `GET /v1/elections/NAME` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    pub election: String,
    pub leader: Option<String>,
    pub token: u64,
    pub is_leader: bool,
    pub lease_remaining_ms: Option<u64>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ElectionLabel {
    pub election: String,
}

/// Per-election metrics, as families labelled by election.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub is_leader: Family<ElectionLabel, Gauge>,
    pub token: Family<ElectionLabel, Gauge>,
    pub transitions: Family<ElectionLabel, Counter>,
    pub backend_errors: Family<ElectionLabel, Counter>,
    pub renew_seconds: Family<ElectionLabel, Histogram>,
}

fn renew_histogram() -> Histogram {
    Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5])
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self {
            is_leader: Family::default(),
            token: Family::default(),
            transitions: Family::default(),
            backend_errors: Family::default(),
            renew_seconds: Family::new_with_constructor(renew_histogram),
        }
    }
}

#[derive(Debug, Default)]
struct View {
    leader: Option<String>,
    /// The highest token seen: a follower keeps showing the last one while nobody leads.
    token: u64,
    /// When the observed leader's lease ends, as far as the backend said.
    leader_until: Option<Instant>,
    /// Our own claim: leader until this instant…
    my_deadline: Option<Instant>,
    /// …and until this CLOCK_BOOTTIME reading. The monotonic clock stops while the host is
    /// suspended; the backend's clock (another host's, or the lease file's CLOCK_BOOTTIME)
    /// does not. Both must agree that the claim holds.
    my_deadline_boot: Option<Duration>,
}

/// The host's CLOCK_BOOTTIME: monotonic, and counting through a suspend.
pub fn boottime() -> Duration {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).expect("CLOCK_BOOTTIME exists on Linux");
    Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32)
}

/// One election as the API and the loop share it.
#[derive(Debug)]
pub struct Election {
    pub name: String,
    id: String,
    view: Mutex<View>,
    /// Bumped on every change of what [`Election::status`] would say.
    changes: watch::Sender<u64>,
    campaigning: watch::Sender<bool>,
    app_renewed: Mutex<Option<Instant>>,
    heartbeat: Notify,
    resign: Notify,
    label: ElectionLabel,
    metrics: Metrics,
}

impl Election {
    pub fn new(name: &str, settings: &Settings, metrics: Metrics) -> Arc<Election> {
        let (changes, _) = watch::channel(0);
        let (campaigning, _) = watch::channel(settings.campaign == CampaignMode::Auto);
        Arc::new(Election {
            name: name.to_string(),
            id: settings.id.clone(),
            view: Mutex::new(View::default()),
            changes,
            campaigning,
            app_renewed: Mutex::new(None),
            heartbeat: Notify::new(),
            resign: Notify::new(),
            label: ElectionLabel { election: name.to_string() },
            metrics,
        })
    }

    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The answer to "who leads?", computed now from the monotonic clock.
    pub fn status(&self) -> Status {
        let now = Instant::now();
        let v = self.view();
        let is_leader = v.my_deadline.is_some_and(|d| now < d) && v.my_deadline_boot.is_some_and(|b| boottime() < b);
        // Our own record with an expired claim means we no longer know who leads.
        let leader = match &v.leader {
            Some(l) if *l == self.id && !is_leader => None,
            other => other.clone(),
        };
        let until = if is_leader { v.my_deadline } else { v.leader_until.filter(|_| leader.is_some()) };
        let lease_remaining_ms = until.map(|u| u.saturating_duration_since(now).as_millis() as u64);
        Status { election: self.name.clone(), leader, token: v.token, is_leader, lease_remaining_ms }
    }

    pub fn is_leader(&self) -> bool {
        let v = self.view();
        v.my_deadline.is_some_and(|d| Instant::now() < d) && v.my_deadline_boot.is_some_and(|b| boottime() < b)
    }

    /// A receiver that sees a new value whenever the status may have changed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Starts campaigning (manual mode); a no-op in auto mode.
    pub fn campaign(&self) {
        self.campaigning.send_replace(true);
    }

    pub fn resign(&self) {
        self.resign.notify_one();
    }

    /// Records an app heartbeat (`--renew app`).
    pub fn app_renewed(&self) {
        *self.app_renewed.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.heartbeat.notify_one();
    }

    /// Whether the app heartbeated within `window`.
    fn app_alive(&self, window: Duration) -> bool {
        let last = *self.app_renewed.lock().unwrap_or_else(|p| p.into_inner());
        last.is_some_and(|t| t.elapsed() <= window)
    }

    fn bump(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    fn observe(&self, o: &Observed) {
        let mut v = self.view();
        let changed = v.leader != o.leader || (o.token > v.token);
        v.leader = o.leader.clone();
        v.token = v.token.max(o.token);
        v.leader_until = o.remaining.map(|r| Instant::now() + r);
        drop(v);
        self.metrics.token.get_or_create(&self.label).set(self.view().token as i64);
        if changed {
            self.bump();
        }
    }

    fn promote(&self, lease: &Lease, deadline: Instant, deadline_boot: Duration) {
        let mut v = self.view();
        v.leader = Some(self.id.clone());
        v.token = v.token.max(lease.token);
        v.my_deadline = Some(deadline);
        v.my_deadline_boot = Some(deadline_boot);
        drop(v);
        self.metrics.is_leader.get_or_create(&self.label).set(1);
        self.metrics.token.get_or_create(&self.label).set(lease.token as i64);
        self.metrics.transitions.get_or_create(&self.label).inc();
        self.bump();
    }

    fn extend(&self, deadline: Instant, deadline_boot: Duration) {
        let mut v = self.view();
        v.my_deadline = Some(deadline);
        v.my_deadline_boot = Some(deadline_boot);
    }

    /// Stops claiming leadership. Always done before telling the backend, never after.
    fn demote(&self) {
        let mut v = self.view();
        v.my_deadline = None;
        v.my_deadline_boot = None;
        if v.leader.as_deref() == Some(self.id.as_str()) {
            v.leader = None;
            v.leader_until = None;
        }
        drop(v);
        self.metrics.is_leader.get_or_create(&self.label).set(0);
        self.metrics.transitions.get_or_create(&self.label).inc();
        self.bump();
    }

    fn backend_error(&self) {
        self.metrics.backend_errors.get_or_create(&self.label).inc();
    }
}

/// A change to tell the app about.
#[derive(Debug, Clone)]
struct Change {
    elected: bool,
    status: Status,
    reason: &'static str,
}

/// Runs the hooks for changes in order, one at a time, off the election loop.
async fn hook_worker(mut rx: mpsc::UnboundedReceiver<Change>, settings: Arc<Settings>, runner: Runner) {
    while let Some(change) = rx.recv().await {
        let Change { elected, status, reason } = change;
        let env = vec![
            ("PODKIT_ELECTION".to_string(), status.election.clone()),
            ("PODKIT_TOKEN".to_string(), status.token.to_string()),
            ("PODKIT_LEADER".to_string(), status.leader.clone().unwrap_or_default()),
            ("PODKIT_ID".to_string(), settings.id.clone()),
        ];
        let json = serde_json::json!({
            "election": status.election,
            "id": settings.id,
            "event": if elected { "elected" } else { "demoted" },
            "reason": reason,
            "leader": status.leader,
            "token": status.token,
            "is_leader": elected,
        });
        let input = Input { env, json: Some(json) };
        let (hook, name) =
            if elected { (&settings.on_elected, "on-elected") } else { (&settings.on_demoted, "on-demoted") };
        for (hook, name) in [(hook, name), (&settings.notify, "notify")] {
            if let Some(hook) = hook {
                let outcome = runner.run_with(hook, name, settings.hook_timeout, &input).await;
                if !outcome.ok {
                    tracing::warn!(election = %status.election, hook = name, detail = %outcome.detail, output = %outcome.output, "hook failed");
                }
            }
        }
    }
}

/// The campaign/renew loop of one election, until `shutdown`. A leader releases its lease
/// before it returns.
pub async fn run<B: Backend>(
    election: Arc<Election>,
    backend: Arc<B>,
    settings: Arc<Settings>,
    runner: Runner,
    shutdown: Shutdown,
) {
    let (hooks, rx) = mpsc::unbounded_channel();
    let worker = tokio::spawn(hook_worker(rx, settings.clone(), runner));
    let e = &election;
    let tell = |elected: bool, reason: &'static str| {
        let _ = hooks.send(Change { elected, status: e.status(), reason });
    };
    let mut campaigning = e.campaigning.subscribe();
    // After a resign, stay out for one ttl so another replica can take over.
    let mut cooldown_until: Option<Instant> = None;
    let mut held: Option<(Lease, Instant)> = None;
    let mut next_renew = Instant::now();

    loop {
        if let Some((lease, deadline)) = held.clone() {
            let wake = next_renew.min(deadline);
            tokio::select! {
                _ = shutdown.triggered() => {
                    e.demote();
                    tell(false, "shutting down");
                    release(&*backend, &lease, &settings).await;
                    break;
                }
                _ = e.resign.notified() => {
                    e.demote();
                    tell(false, "resigned");
                    release(&*backend, &lease, &settings).await;
                    held = None;
                    cooldown_until = Some(Instant::now() + settings.ttl);
                    if settings.campaign == CampaignMode::Manual {
                        e.campaigning.send_replace(false);
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
            let now = Instant::now();
            if now >= deadline || !e.is_leader() {
                tracing::warn!(election = %e.name, token = lease.token, "could not renew the lease in time: no longer leader");
                e.demote();
                tell(false, "lease expired");
                held = None;
                // The backend may come back before the lease expires there; free it for the
                // others as soon as it does.
                let (b, l, s) = (backend.clone(), lease.clone(), settings.clone());
                tokio::spawn(async move { release(&*b, &l, &s).await });
                continue;
            }
            if settings.renew == RenewMode::App && !e.app_alive(settings.app_renew_window()) {
                {
                    tracing::warn!(election = %e.name, "the app stopped renewing: resigning");
                    e.demote();
                    tell(false, "the app stopped renewing");
                    release(&*backend, &lease, &settings).await;
                    held = None;
                    continue;
                }
            }
            // Each attempt gets a slice of what is left, so a request stuck on a dead etcd
            // member is abandoned in time to try another before the claim runs out.
            let (sent, sent_boot) = (Instant::now(), boottime());
            let attempt = (deadline - sent).min(settings.attempt_timeout());
            match tokio::time::timeout(attempt, backend.renew(&lease, settings.ttl)).await {
                Ok(Ok(true)) => {
                    let took = sent.elapsed();
                    e.metrics.renew_seconds.get_or_create(&e.label).observe(took.as_secs_f64());
                    let new_deadline = sent + settings.claim();
                    e.extend(new_deadline, sent_boot + settings.claim());
                    held = Some((lease, new_deadline));
                    next_renew = sent + settings.renew_every();
                }
                Ok(Ok(false)) => {
                    tracing::warn!(election = %e.name, token = lease.token, "the lease is gone at the backend: no longer leader");
                    e.demote();
                    tell(false, "lease lost");
                    held = None;
                }
                Ok(Err(err)) => {
                    e.backend_error();
                    tracing::warn!(election = %e.name, error = %err, "renewing the lease failed; retrying");
                    next_renew = Instant::now() + settings.retry();
                }
                Err(_) => {
                    e.backend_error();
                    next_renew = Instant::now();
                }
            }
            continue;
        }

        // Follower. With --renew app, only an app that heartbeats may lead.
        let app_ok = settings.renew == RenewMode::Auto || e.app_alive(settings.app_renew_window());
        let may_campaign = app_ok && *campaigning.borrow() && cooldown_until.is_none_or(|t| Instant::now() >= t);
        if !may_campaign {
            let wait = cooldown_until.map_or(settings.renew_every(), |t| t.saturating_duration_since(Instant::now()));
            let observed = match backend.observe(&e.name).await {
                Ok(o) => {
                    e.observe(&o);
                    Some(o)
                }
                Err(err) => {
                    e.backend_error();
                    tracing::debug!(election = %e.name, error = %err, "observing failed");
                    None
                }
            };
            tokio::select! {
                _ = shutdown.triggered() => break,
                _ = campaigning.changed() => {}
                _ = e.resign.notified() => {} // not leader: nothing to give up
                _ = e.heartbeat.notified() => {}
                _ = wait_for_change(&*backend, &e.name, observed.as_ref(), wait, settings.retry()) => {}
            }
            if cooldown_until.is_some_and(|t| Instant::now() >= t) {
                cooldown_until = None;
            }
            continue;
        }

        let (sent, sent_boot) = (Instant::now(), boottime());
        if shutdown.is_triggered() {
            break;
        }
        // Not abandoned on shutdown: an acquire the backend has already committed must be seen
        // through, so the lease it created can be released rather than left to expire.
        let attempt = tokio::time::timeout(settings.ttl, backend.acquire(&e.name, &e.id, settings.ttl)).await;
        if shutdown.is_triggered() {
            if let Ok(Ok(Acquired::Won(lease))) = attempt {
                release(&*backend, &lease, &settings).await;
            }
            break;
        }
        match attempt {
            Ok(Ok(Acquired::Won(lease))) => {
                let deadline = sent + settings.claim();
                if Instant::now() >= deadline {
                    // Won, but so late that the claim is already spent: let it go.
                    release(&*backend, &lease, &settings).await;
                    continue;
                }
                tracing::info!(election = %e.name, token = lease.token, "elected leader");
                e.promote(&lease, deadline, sent_boot + settings.claim());
                tell(true, "elected");
                next_renew = sent + settings.renew_every();
                held = Some((lease, deadline));
            }
            Ok(Ok(Acquired::Lost(observed))) => {
                e.observe(&observed);
                tokio::select! {
                    _ = shutdown.triggered() => break,
                    _ = campaigning.changed() => {}
                    // Look again at least every ttl/3, so the leader's remaining lease stays fresh.
                    _ = wait_for_change(&*backend, &e.name, Some(&observed), settings.renew_every(), settings.retry()) => {}
                }
            }
            Ok(Err(err)) => {
                e.backend_error();
                tracing::warn!(election = %e.name, error = %err, "campaigning failed; retrying");
                tokio::select! {
                    _ = shutdown.triggered() => break,
                    _ = tokio::time::sleep(settings.retry()) => {}
                }
            }
            Err(_) => {
                e.backend_error();
                tracing::warn!(election = %e.name, "campaigning timed out; retrying");
            }
        }
    }
    drop(hooks);
    // Let the last hooks (on-demoted at shutdown) finish, within one hook's time: a backlog
    // of hooks must not hold the exit past the grace period.
    if tokio::time::timeout(settings.hook_timeout, worker).await.is_err() {
        tracing::warn!(election = %e.name, "hooks still queued at exit were not run");
    }
}

async fn wait_for_change<B: Backend>(
    backend: &B,
    election: &str,
    since: Option<&Observed>,
    max: Duration,
    retry: Duration,
) {
    match since {
        Some(o) => {
            if backend.changed(election, o, max).await.is_err() {
                tokio::time::sleep(retry).await;
            }
        }
        None => tokio::time::sleep(retry).await,
    }
}

async fn release<B: Backend>(backend: &B, lease: &Lease, settings: &Settings) {
    match tokio::time::timeout(settings.ttl, backend.release(lease)).await {
        Ok(Ok(())) => tracing::info!(election = %lease.election, token = lease.token, "released leadership"),
        Ok(Err(e)) => {
            tracing::warn!(election = %lease.election, error = %e, "releasing leadership failed; it ends when the lease expires")
        }
        Err(_) => {
            tracing::warn!(election = %lease.election, "releasing leadership timed out; it ends when the lease expires")
        }
    }
}
