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
pub(crate) struct Settings {
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
    pub(crate) fn retry(&self) -> Duration {
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
pub(crate) struct Status {
    pub election: String,
    pub leader: Option<String>,
    pub token: u64,
    pub is_leader: bool,
    pub lease_remaining_ms: Option<u64>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ElectionLabel {
    pub election: String,
}

/// Per-election metrics, as families labelled by election.
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
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
    pub(crate) fn new() -> Self {
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
pub(crate) fn boottime() -> Duration {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).expect("CLOCK_BOOTTIME exists on Linux");
    Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32)
}

/// One election as the API and the loop share it.
#[derive(Debug)]
pub(crate) struct Election {
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
    pub(crate) fn new(name: &str, settings: &Settings, metrics: Metrics) -> Arc<Election> {
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
    pub(crate) fn status(&self) -> Status {
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

    pub(crate) fn is_leader(&self) -> bool {
        let v = self.view();
        v.my_deadline.is_some_and(|d| Instant::now() < d) && v.my_deadline_boot.is_some_and(|b| boottime() < b)
    }

    /// A receiver that sees a new value whenever the status may have changed.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Starts campaigning (manual mode); a no-op in auto mode.
    pub(crate) fn campaign(&self) {
        self.campaigning.send_replace(true);
    }

    pub(crate) fn resign(&self) {
        self.resign.notify_one();
    }

    /// Records an app heartbeat (`--renew app`).
    pub(crate) fn app_renewed(&self) {
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
/// before it returns. Hooks run on a worker of their own, in order, so a slow hook never
/// delays a renewal.
pub(crate) async fn run<B: Backend>(
    election: Arc<Election>,
    backend: Arc<B>,
    settings: Arc<Settings>,
    runner: Runner,
    shutdown: Shutdown,
) {
    let (hooks, rx) = mpsc::unbounded_channel();
    let worker = tokio::spawn(hook_worker(rx, settings.clone(), runner));
    campaign(election.clone(), backend, settings.clone(), hooks, shutdown).await;
    // Let the last hooks (on-demoted at shutdown) finish, within one hook's time: a backlog
    // of hooks must not hold the exit past the grace period.
    if tokio::time::timeout(settings.hook_timeout, worker).await.is_err() {
        tracing::warn!(election = %election.name, "hooks still queued at exit were not run");
    }
}

/// Where one election's loop stands. Every step starts from one of these and ends in one.
#[derive(Debug, Clone)]
enum State {
    /// Not leading. After a resign it stays out until `cooldown_until`, so that another
    /// replica can take over.
    Follower { cooldown_until: Option<Instant> },
    /// Leading under `lease` until `deadline` (the local claim), renewing at `next_renew`.
    Leader { lease: Lease, deadline: Instant, next_renew: Instant },
    /// Stopped: the lease, if any, is released.
    Done,
}

/// The state machine of one election: each `State` has one step function that waits for
/// what that state waits for and returns the next state.
struct Campaign<B> {
    e: Arc<Election>,
    backend: Arc<B>,
    settings: Arc<Settings>,
    hooks: mpsc::UnboundedSender<Change>,
    campaigning: watch::Receiver<bool>,
    shutdown: Shutdown,
}

/// Runs the state machine until shutdown, sending every leadership change to `hooks`.
async fn campaign<B: Backend>(
    e: Arc<Election>,
    backend: Arc<B>,
    settings: Arc<Settings>,
    hooks: mpsc::UnboundedSender<Change>,
    shutdown: Shutdown,
) {
    let campaigning = e.campaigning.subscribe();
    let mut c = Campaign { e, backend, settings, hooks, campaigning, shutdown };
    let mut state = State::Follower { cooldown_until: None };
    loop {
        state = match state {
            State::Follower { cooldown_until } => c.follow(cooldown_until).await,
            State::Leader { lease, deadline, next_renew } => c.lead(lease, deadline, next_renew).await,
            State::Done => break,
        };
    }
}

impl<B: Backend> Campaign<B> {
    fn tell(&self, elected: bool, reason: &'static str) {
        let _ = self.hooks.send(Change { elected, status: self.e.status(), reason });
    }

    /// Stops claiming leadership, tells the app, then frees the lease at the backend: in that
    /// order, so that nobody else can be granted the lease while this replica still claims it.
    async fn step_down(&self, lease: &Lease, reason: &'static str) {
        self.e.demote();
        self.tell(false, reason);
        release(&*self.backend, lease, &self.settings).await;
    }

    /// One turn as leader: wait for the renewal time (or a resign, or shutdown), then renew.
    async fn lead(&mut self, lease: Lease, deadline: Instant, next_renew: Instant) -> State {
        let (e, settings) = (self.e.clone(), self.settings.clone());
        tokio::select! {
            _ = self.shutdown.triggered() => {
                self.step_down(&lease, "shutting down").await;
                return State::Done;
            }
            _ = e.resign.notified() => {
                self.step_down(&lease, "resigned").await;
                if settings.campaign == CampaignMode::Manual {
                    e.campaigning.send_replace(false);
                }
                return State::Follower { cooldown_until: Some(Instant::now() + settings.ttl) };
            }
            _ = tokio::time::sleep_until(next_renew.min(deadline)) => {}
        }
        if Instant::now() >= deadline || !e.is_leader() {
            tracing::warn!(election = %e.name, token = lease.token, "could not renew the lease in time: no longer leader");
            e.demote();
            self.tell(false, "lease expired");
            // The backend may come back before the lease expires there; free it for the
            // others as soon as it does, without holding up this loop.
            let (b, s) = (self.backend.clone(), settings.clone());
            tokio::spawn(async move { release(&*b, &lease, &s).await });
            return State::Follower { cooldown_until: None };
        }
        if settings.renew == RenewMode::App && !e.app_alive(settings.app_renew_window()) {
            tracing::warn!(election = %e.name, "the app stopped renewing: resigning");
            self.step_down(&lease, "the app stopped renewing").await;
            return State::Follower { cooldown_until: None };
        }
        // Each attempt gets a slice of what is left, so a request stuck on a dead etcd member
        // is abandoned in time to try another before the claim runs out.
        let (sent, sent_boot) = (Instant::now(), boottime());
        let attempt = (deadline - sent).min(settings.attempt_timeout());
        match tokio::time::timeout(attempt, self.backend.renew(&lease, settings.ttl)).await {
            Ok(Ok(true)) => {
                e.metrics.renew_seconds.get_or_create(&e.label).observe(sent.elapsed().as_secs_f64());
                let deadline = sent + settings.claim();
                e.extend(deadline, sent_boot + settings.claim());
                State::Leader { lease, deadline, next_renew: sent + settings.renew_every() }
            }
            Ok(Ok(false)) => {
                tracing::warn!(election = %e.name, token = lease.token, "the lease is gone at the backend: no longer leader");
                e.demote();
                self.tell(false, "lease lost");
                State::Follower { cooldown_until: None }
            }
            Ok(Err(err)) => {
                e.backend_error();
                tracing::warn!(election = %e.name, error = %err, "renewing the lease failed; retrying");
                State::Leader { lease, deadline, next_renew: Instant::now() + settings.retry() }
            }
            Err(_) => {
                e.backend_error();
                State::Leader { lease, deadline, next_renew: Instant::now() }
            }
        }
    }

    /// One turn as follower: campaign if allowed, otherwise watch the leader until something
    /// changes.
    async fn follow(&mut self, mut cooldown_until: Option<Instant>) -> State {
        let (e, settings) = (self.e.clone(), self.settings.clone());
        // With --renew app, only an app that heartbeats may lead.
        let app_ok = settings.renew == RenewMode::Auto || e.app_alive(settings.app_renew_window());
        let may_campaign = app_ok && *self.campaigning.borrow() && cooldown_until.is_none_or(|t| Instant::now() >= t);
        if !may_campaign {
            let wait = cooldown_until.map_or(settings.renew_every(), |t| t.saturating_duration_since(Instant::now()));
            let observed = match self.backend.observe(&e.name).await {
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
                _ = self.shutdown.triggered() => return State::Done,
                _ = self.campaigning.changed() => {}
                _ = e.resign.notified() => {} // not leader: nothing to give up
                _ = e.heartbeat.notified() => {}
                _ = wait_for_change(&*self.backend, &e.name, observed.as_ref(), wait, settings.retry()) => {}
            }
            if cooldown_until.is_some_and(|t| Instant::now() >= t) {
                cooldown_until = None;
            }
            return State::Follower { cooldown_until };
        }
        if self.shutdown.is_triggered() {
            return State::Done;
        }
        let (sent, sent_boot) = (Instant::now(), boottime());
        // Not abandoned on shutdown: an acquire the backend has already committed must be seen
        // through, so the lease it created can be released rather than left to expire.
        let attempt = tokio::time::timeout(settings.ttl, self.backend.acquire(&e.name, &e.id, settings.ttl)).await;
        if self.shutdown.is_triggered() {
            if let Ok(Ok(Acquired::Won(lease))) = attempt {
                release(&*self.backend, &lease, &settings).await;
            }
            return State::Done;
        }
        match attempt {
            Ok(Ok(Acquired::Won(lease))) => {
                let deadline = sent + settings.claim();
                if Instant::now() >= deadline {
                    // Won, but so late that the claim is already spent: let it go.
                    release(&*self.backend, &lease, &settings).await;
                    return State::Follower { cooldown_until };
                }
                tracing::info!(election = %e.name, token = lease.token, "elected leader");
                e.promote(&lease, deadline, sent_boot + settings.claim());
                self.tell(true, "elected");
                State::Leader { lease, deadline, next_renew: sent + settings.renew_every() }
            }
            Ok(Ok(Acquired::Lost(observed))) => {
                e.observe(&observed);
                tokio::select! {
                    _ = self.shutdown.triggered() => return State::Done,
                    _ = self.campaigning.changed() => {}
                    // Look again at least every ttl/3, so the leader's remaining lease stays fresh.
                    _ = wait_for_change(&*self.backend, &e.name, Some(&observed), settings.renew_every(), settings.retry()) => {}
                }
                State::Follower { cooldown_until }
            }
            Ok(Err(err)) => {
                e.backend_error();
                tracing::warn!(election = %e.name, error = %err, "campaigning failed; retrying");
                tokio::select! {
                    _ = self.shutdown.triggered() => return State::Done,
                    _ = tokio::time::sleep(settings.retry()) => {}
                }
                State::Follower { cooldown_until }
            }
            Err(_) => {
                e.backend_error();
                tracing::warn!(election = %e.name, "campaigning timed out; retrying");
                State::Follower { cooldown_until }
            }
        }
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

/// The state machine under paused time, against the in-memory backend: minutes of leases,
/// renewals and partitions run in milliseconds, and every instant can be inspected.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::{Link, Memory};

    const TTL: Duration = Duration::from_secs(3);
    /// How often the tests look at who claims leadership (virtual time).
    const SAMPLE: Duration = Duration::from_millis(10);

    fn settings(id: &str) -> Arc<Settings> {
        Arc::new(Settings {
            id: id.to_string(),
            ttl: TTL,
            campaign: CampaignMode::Auto,
            renew: RenewMode::Auto,
            on_elected: None,
            on_demoted: None,
            notify: None,
            hook_timeout: Duration::from_secs(1),
        })
    }

    /// One replica: its election view, its link to the store, the changes it announced, and
    /// its loop.
    struct Replica {
        election: Arc<Election>,
        link: Arc<Link>,
        changes: mpsc::UnboundedReceiver<Change>,
        shutdown: Shutdown,
        task: tokio::task::JoinHandle<()>,
    }

    fn replica(memory: &Arc<Memory>, id: &str) -> Replica {
        let settings = settings(id);
        let election = Election::new("db", &settings, Metrics::new());
        let link = Link::new(memory);
        let (tx, changes) = mpsc::unbounded_channel();
        let shutdown = Shutdown::new();
        let task = tokio::spawn(campaign(election.clone(), link.clone(), settings, tx, shutdown.clone()));
        Replica { election, link, changes, shutdown, task }
    }

    impl Replica {
        /// The changes announced so far, as (elected, token, reason).
        fn announced(&mut self) -> Vec<(bool, u64, &'static str)> {
            let mut out = Vec::new();
            while let Ok(c) = self.changes.try_recv() {
                out.push((c.elected, c.status.token, c.reason));
            }
            out
        }
    }

    /// Samples every replica until `done` holds (at most `limit` of virtual time), asserting
    /// at every sample that at most one of them claims leadership.
    async fn run_until(replicas: &[&Replica], limit: Duration, done: impl Fn() -> bool) {
        let end = Instant::now() + limit;
        loop {
            let leaders: Vec<_> =
                replicas.iter().filter(|r| r.election.is_leader()).map(|r| r.election.id.clone()).collect();
            assert!(leaders.len() <= 1, "two leaders at once: {leaders:?}");
            if done() {
                return;
            }
            assert!(Instant::now() < end, "condition not reached within {limit:?}");
            tokio::time::sleep(SAMPLE).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_candidate_leads_renews_and_releases_on_shutdown() {
        let memory = Arc::new(Memory::default());
        let mut a = replica(&memory, "a");
        run_until(&[&a], TTL, || a.election.is_leader()).await;
        assert_eq!(a.election.status().token, 1);
        // A minute later it still leads on the same lease, renewed about every ttl/3.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(a.election.is_leader());
        assert_eq!(memory.leader("db"), (Some("a".to_string()), 1));
        let renewals = a.link.renewals.load(std::sync::atomic::Ordering::Relaxed);
        assert!((55..=65).contains(&renewals), "{renewals} renewals in 60 s at ttl/3 = 1 s");
        a.shutdown.trigger(podkit_core::shutdown::StopReason::Terminate);
        (&mut a.task).await.unwrap();
        assert!(!a.election.is_leader());
        assert_eq!(memory.leader("db"), (None, 1), "the lease is released at shutdown");
        assert_eq!(a.announced(), vec![(true, 1, "elected"), (false, 1, "shutting down")]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_partitioned_leader_stops_claiming_before_anyone_else_can_lead() {
        let memory = Arc::new(Memory::default());
        let mut a = replica(&memory, "a");
        run_until(&[&a], TTL, || a.election.is_leader()).await;
        let mut b = replica(&memory, "b");
        tokio::time::sleep(TTL).await;
        assert!(a.election.is_leader() && !b.election.is_leader());

        a.link.cut(true);
        // Sampled every 10 ms: never two leaders, and b takes over once a's lease expires.
        run_until(&[&a, &b], 3 * TTL, || b.election.is_leader()).await;
        assert_eq!(b.election.status().token, 2);
        assert_eq!(a.announced(), vec![(true, 1, "elected"), (false, 1, "lease expired")]);
        assert_eq!(b.announced(), vec![(true, 2, "elected")]);

        // Healed, a follows the new leader and does not take it back.
        a.link.cut(false);
        run_until(&[&a, &b], 2 * TTL, || a.election.status().leader.as_deref() == Some("b")).await;
        tokio::time::sleep(3 * TTL).await;
        assert!(b.election.is_leader() && !a.election.is_leader());
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_process_says_not_leader_the_moment_it_runs_again() {
        let memory = Arc::new(Memory::default());
        let a = replica(&memory, "a");
        run_until(&[&a], TTL, || a.election.is_leader()).await;
        // Jump the clock past the claim without letting the loop run (a SIGSTOP, a long GC): the
        // answer is computed from the clock, so no timer has to fire for it to be right.
        tokio::time::advance(TTL).await;
        let status = a.election.status();
        assert!(!status.is_leader && !a.election.is_leader());
        assert_eq!(status.leader, None, "an expired claim of our own is not reported as leadership");
    }

    #[tokio::test(start_paused = true)]
    async fn an_acquire_answered_after_the_claim_is_spent_is_given_back() {
        let memory = Arc::new(Memory::default());
        let a = replica(&memory, "a");
        // The store grants the lease at once, but the answer takes longer than the claim.
        *a.link.acquire_delay.lock().unwrap() = TTL;
        tokio::time::sleep(2 * TTL).await;
        assert!(!a.election.is_leader());
        *a.link.acquire_delay.lock().unwrap() = Duration::ZERO;
        run_until(&[&a], 2 * TTL, || a.election.is_leader()).await;
        // Every late win was released, so the first timely one was granted at once; the tokens
        // spent on late wins are never reused.
        let token = a.election.status().token;
        assert!(token > 1, "late wins count: token {token}");
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_only_go_up_as_leadership_moves() {
        let memory = Arc::new(Memory::default());
        let mut replicas = [replica(&memory, "a"), replica(&memory, "b"), replica(&memory, "c")];
        let mut last = 0;
        for _ in 0..6 {
            let refs: Vec<&Replica> = replicas.iter().collect();
            run_until(&refs, 3 * TTL, || replicas.iter().any(|r| r.election.is_leader())).await;
            let leader = replicas.iter().find(|r| r.election.is_leader()).unwrap();
            let token = leader.election.status().token;
            assert!(token > last, "token {token} after {last}");
            last = token;
            leader.election.resign();
            run_until(&refs, TTL, || !leader.election.is_leader()).await;
        }
        // Each resigning leader announced its term with one token, elected then resigned.
        for r in &mut replicas {
            for pair in r.announced().chunks(2) {
                assert!(pair[0].0, "a term starts with an election");
                if let Some(end) = pair.get(1) {
                    assert_eq!((end.0, end.1, end.2), (false, pair[0].1, "resigned"));
                }
            }
        }
    }
}
