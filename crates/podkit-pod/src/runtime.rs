//! The running pod: its containers started in Kubernetes' order, probed, restarted by policy,
//! stopped by priority when memory runs short, updated one container at a time, and stopped
//! mains first, then sidecars in reverse order, each with its own grace.
//!
//! One task owns the containers (the [`Pod::run`] loop); everything else (probes, the admin
//! API, status watchers) sends it events or commands, and reads the shared [`View`].

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use podkit_core::backoff::BackoffPolicy;
use podkit_core::{Context, Readiness};
use podkit_process::reaper::Exit;
use podkit_process::supervised::{self, Handle, Host, Phase, Program, RestartPolicy, StopPolicy, StopRequest};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::probe;
use crate::spec::{self, ContainerSpec, PodFile, Restart, Role, Volume};

/// Kubernetes' crash-loop backoff: doubling up to five minutes, reset after ten minutes of
/// running.
const BACKOFF_MAX: Duration = Duration::from_secs(300);
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// Pod memory use above this share of its limit stops low-priority sidecars…
const PRESSURE_HIGH: f64 = 0.9;
/// …and below this share (with the stopped sidecar's last size added back) starts them again.
const PRESSURE_LOW: f64 = 0.7;

// === the shared view ===

/// One container as `/pod`, `podkit pod ps` and the web page show it.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct ContainerView {
    pub name: String,
    pub role: String,
    /// waiting, starting, running, backing-off, stopping, stopped, completed, failed.
    pub state: String,
    pub started: bool,
    pub ready: bool,
    pub restarts: u64,
    pub pid: Option<i32>,
    pub last_exit: Option<String>,
    /// Why it is in this state (a failing probe, memory pressure).
    pub reason: Option<String>,
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
    pub low_priority: bool,
}

/// The pod as the admin API shows it.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct View {
    pub name: String,
    /// Starting, Running, Stopping, Stopped.
    pub phase: String,
    pub ready: bool,
    pub restart_policy: String,
    pub memory_limit_bytes: Option<u64>,
    pub containers: Vec<ContainerView>,
}

pub type SharedView = Arc<Mutex<View>>;

fn with<R>(view: &SharedView, name: &str, f: impl FnOnce(&mut ContainerView) -> R) -> Option<R> {
    let mut v = view.lock().unwrap_or_else(|e| e.into_inner());
    v.containers.iter_mut().find(|c| c.name == name).map(f)
}

// === commands and events ===

/// What the admin API asks of the pod.
#[derive(Debug)]
pub enum Command {
    Restart { name: String, reply: oneshot::Sender<Result<(), String>> },
    Apply { file: Box<PodFile>, reply: oneshot::Sender<Result<Applied, String>> },
}

/// What an update did, container by container.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Applied {
    pub restarted: Vec<String>,
    pub started: Vec<String>,
    pub stopped: Vec<String>,
    pub unchanged: Vec<String>,
    pub warnings: Vec<String>,
}

#[derive(Debug)]
enum Event {
    /// A container's process started, exited or changed phase (its slot generation).
    Changed(String),
    /// A liveness or startup probe failed its threshold: restart the container.
    Unhealthy { name: String, generation: u64, why: String },
}

// === metrics ===

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContainerLabel {
    container: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    container: String,
    reason: &'static str,
}

/// The pod's own counters on the admin port.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    restarts: Family<ReasonLabel, Counter>,
    priority_stops: Family<ContainerLabel, Counter>,
    priority_starts: Family<ContainerLabel, Counter>,
}

impl Metrics {
    pub fn register(&self, reg: &mut prometheus_client::registry::Registry) {
        reg.register(
            "container_restarts",
            "Container restarts by podkit, by reason (liveness, startup, memory_limit, request, update)",
            self.restarts.clone(),
        );
        reg.register(
            "priority_stops",
            "Low-priority sidecars stopped to free memory for the main containers",
            self.priority_stops.clone(),
        );
        reg.register(
            "priority_starts",
            "Low-priority sidecars started again once memory was free",
            self.priority_starts.clone(),
        );
    }
}

// === the pod ===

struct Slot {
    spec: ContainerSpec,
    handle: Option<Handle>,
    /// Bumped at each start, so an event about an earlier run is ignored.
    generation: u64,
    watchers: Vec<tokio::task::JoinHandle<()>>,
    /// Stopped to free memory; started again when it is free.
    held_for_memory: Option<u64>,
    /// The last exit podkit acted on (for essential containers and completion).
    seen_exit: Option<(u64, Option<Exit>)>,
    /// OOM kills in its cgroup so far.
    ooms: u64,
}

/// How often a startup probe (and a readiness probe until it first passes) is checked.
const EAGER: Duration = Duration::from_millis(100);

/// Seconds in a row the pod's memory must stay low before a held sidecar starts again (a main
/// whose use goes up and down must not make it flap).
const CALM_TICKS: u32 = 3;

impl Drop for Slot {
    fn drop(&mut self) {
        for w in &self.watchers {
            w.abort();
        }
    }
}

pub struct Pod {
    file: PodFile,
    host: Host,
    readiness: Readiness,
    view: SharedView,
    http: reqwest::Client,
    metrics: Metrics,
    /// Where emptyDir volumes live (removed with the pod).
    dir: tempfile::TempDir,
    slots: Vec<Slot>,
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    /// Consecutive resource checks with memory low enough to start a held sidecar.
    calm: u32,
    /// The containers' cgroups, where the machine allows them.
    cgroups: Option<crate::cgroup::Cgroups>,
}

impl std::fmt::Debug for Pod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pod").field("name", &self.file.name).finish_non_exhaustive()
    }
}

/// How the pod ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped on request (SIGTERM, the admin API): 0.
    Stopped,
    /// Every main container finished (restartPolicy Never or OnFailure): their result.
    Completed(i32),
    /// An essential container exited, or an init container failed for good: its status.
    Failed(i32),
}

impl Outcome {
    pub fn status(self) -> i32 {
        match self {
            Outcome::Stopped => 0,
            Outcome::Completed(s) | Outcome::Failed(s) => s,
        }
    }
}

impl Pod {
    pub fn new(
        file: PodFile,
        host: Host,
        readiness: Readiness,
        view: SharedView,
        metrics: Metrics,
    ) -> std::io::Result<Pod> {
        let dir = tempfile::Builder::new().prefix(&format!("podkit-pod-{}-", file.name)).tempdir()?;
        let http =
            podkit_core::http::build(reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()))
                .map_err(std::io::Error::other)?;
        let (events_tx, events) = mpsc::unbounded_channel();
        {
            let mut v = view.lock().unwrap_or_else(|e| e.into_inner());
            v.name = file.name.clone();
            v.phase = "Starting".into();
            v.restart_policy = file.restart_policy.as_str().into();
            v.memory_limit_bytes = file.memory_limit;
            v.containers = file.containers().map(|c| container_view(c, "waiting")).collect();
        }
        for c in file.containers().filter(|c| c.role != Role::Init) {
            readiness.not_ready(c.name.clone(), "not started");
        }
        let cgroups = match crate::cgroup::Cgroups::create(&file.name) {
            Ok(c) => {
                tracing::info!("each container runs in a cgroup of its own: memory and CPU limits are the kernel's");
                Some(c)
            }
            Err(why) => {
                tracing::info!(reason = %why, "no cgroups: memory limits are watched from /proc, CPU limits are not enforced");
                for c in file.containers().filter(|c| c.cpu_limit.is_some() || c.cpu_request.is_some()) {
                    tracing::warn!(container = %c.name, "resources.cpu: not enforced without cgroups");
                }
                None
            }
        };
        Ok(Pod {
            file,
            host,
            readiness,
            view,
            http,
            metrics,
            dir,
            slots: Vec::new(),
            events_tx,
            events,
            calm: 0,
            cgroups,
        })
    }

    /// The directory of a volume.
    fn volume_dir(&self, v: &Volume) -> PathBuf {
        match v {
            Volume::EmptyDir { name } => self.dir.path().join("volumes").join(name),
            Volume::HostPath { path, .. } => path.clone(),
        }
    }

    /// Runs the pod until it completes, fails, or is stopped; then nothing of it is left.
    pub async fn run(mut self, ctx: Context, mut commands: mpsc::UnboundedReceiver<Command>) -> Outcome {
        for v in self.file.volumes.clone() {
            let d = self.volume_dir(&v);
            if let Err(e) = std::fs::create_dir_all(&d) {
                tracing::error!(volume = v.name(), dir = %d.display(), error = %e, "cannot create the volume's directory");
                return Outcome::Failed(podkit_core::EX_SOFTWARE);
            }
        }
        for w in &self.file.warnings {
            tracing::warn!("{w}");
        }
        // Init containers, each to success, in order.
        for spec in self.file.init.clone() {
            let i = self.start(spec.clone());
            tokio::select! {
                ended = self.slots[i].handle.as_mut().expect("started").wait() => {
                    let status = ended.status();
                    with(&self.view, &spec.name, |c| {
                        c.state = if status == 0 { "completed".into() } else { "failed".into() };
                        c.last_exit = Some(exit_text(status));
                        c.pid = None;
                    });
                    if status != 0 {
                        tracing::error!(container = %spec.name, status, "init container failed; the pod does not start");
                        return self.terminate(ctx.grace).await.max_failed(status);
                    }
                    tracing::info!(container = %spec.name, "init container completed");
                }
                _ = ctx.shutdown.triggered() => return self.terminate(ctx.grace).await,
            }
        }
        // Native sidecars in order, each started (its startup probe passed) before the next.
        for spec in self.file.sidecars.clone() {
            let i = self.start(spec.clone());
            loop {
                if self.is_started(&spec.name) {
                    break;
                }
                tokio::select! {
                    ev = self.events.recv() => if let Some(ev) = ev { self.on_event(ev).await },
                    _ = ctx.shutdown.triggered() => return self.terminate(ctx.grace).await,
                }
                // A sidecar that ended while starting is restarted by its supervisor; wait on.
                let _ = i;
            }
            tracing::info!(container = %spec.name, "sidecar started");
        }
        for spec in self.file.mains.clone() {
            self.start(spec);
        }
        self.set_phase("Running");
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = ctx.shutdown.triggered() => return self.terminate(ctx.grace).await,
                ev = self.events.recv() => if let Some(ev) = ev {
                    self.on_event(ev).await;
                },
                c = commands.recv() => match c {
                    Some(Command::Restart { name, reply }) => {
                        let r = self.restart(&name, "request");
                        let _ = reply.send(r);
                    }
                    Some(Command::Apply { file, reply }) => {
                        let r = self.apply(*file, &ctx).await;
                        let _ = reply.send(r);
                    }
                    None => {}
                },
                _ = tick.tick() => self.watch_resources().await,
            }
            if let Some(outcome) = self.settled() {
                let stopped = self.terminate(ctx.grace).await;
                return match stopped {
                    Outcome::Stopped => outcome,
                    other => other,
                };
            }
        }
    }

    fn set_phase(&self, phase: &str) {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).phase = phase.into();
    }

    fn is_started(&self, name: &str) -> bool {
        with(&self.view, name, |c| c.started).unwrap_or(false)
    }

    /// The program for a container.
    fn program(&self, spec: &ContainerSpec) -> Program {
        let mut env: Vec<(OsString, OsString)> =
            spec.env.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))).collect();
        env.push(("PODKIT_POD_NAME".into(), self.file.name.clone().into()));
        for (name, _) in &spec.mounts {
            if let Some(v) = self.file.volumes.iter().find(|v| v.name() == name) {
                env.push((spec::volume_var(name).into(), self.volume_dir(v).into()));
            }
        }
        let when = match (spec.role, self.file.restart_policy) {
            (Role::Sidecar, _) => supervised::Restart::Always,
            (Role::Init, Restart::Never) => supervised::Restart::Never,
            (Role::Init, _) => supervised::Restart::OnFailure,
            (Role::Main, Restart::Always) => supervised::Restart::Always,
            (Role::Main, Restart::OnFailure) => supervised::Restart::OnFailure,
            (Role::Main, Restart::Never) => supervised::Restart::Never,
        };
        // `$(VAR)` in command and args is the container's variable, as Kubernetes expands it.
        let vars: Vec<(String, String)> =
            env.iter().map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned())).collect();
        let argv: Vec<OsString> = spec.argv.iter().map(|a| OsString::from(expand(a, &vars))).collect();
        let groups = match &self.cgroups {
            Some(c) => c.container(&spec.name, spec.memory_limit, spec.cpu_request, spec.cpu_limit).unwrap_or_else(|e| {
                tracing::warn!(container = %spec.name, error = %e, "cannot set up the container's cgroup; its limits are watched instead");
                Vec::new()
            }),
            None => Vec::new(),
        };
        Program {
            name: spec.name.clone(),
            source: spec.name.clone(),
            // Under the containment shim: if podkit is killed, even with SIGKILL, nothing the
            // container started runs on; and in the container's cgroups, if there are any.
            argv: podkit_process::contain::wrap_in(&argv, None, &groups),
            env,
            cwd: spec.cwd.clone(),
            capture: true,
            terminal: false,
            prefix: Some(format!("[{}]", spec.name)),
            stop: StopPolicy { pre_stop: None, signal: Signal::SIGTERM, grace: self.file.grace, group: true },
            restart: RestartPolicy {
                when,
                backoff: BackoffPolicy::exact(self.file.restart_backoff, BACKOFF_MAX),
                reset_after: BACKOFF_RESET,
            },
        }
    }

    /// Starts a container (replacing a slot of the same name); returns its slot.
    fn start(&mut self, spec: ContainerSpec) -> usize {
        let program = self.program(&spec);
        // Each container's supervisor reports readiness to a private set: the pod's own follows
        // the probes.
        let host = Host { hooks: self.host.hooks.clone(), logs: self.host.logs.clone(), readiness: Readiness::new() };
        let handle = supervised::spawn(program, host);
        let generation = self.slots.iter().find(|s| s.spec.name == spec.name).map_or(1, |s| s.generation + 1);
        let mut watchers = Vec::new();
        // Status changes become events for the pod's loop.
        {
            let mut rx = handle.watch();
            let (tx, name) = (self.events_tx.clone(), spec.name.clone());
            watchers.push(tokio::spawn(async move {
                while rx.changed().await.is_ok() {
                    if tx.send(Event::Changed(name.clone())).is_err() {
                        return;
                    }
                }
            }));
        }
        if spec.role != Role::Init {
            watchers.push(tokio::spawn(probe_loop(ProbeCtx {
                spec: spec.clone(),
                generation,
                status: handle.watch(),
                view: self.view.clone(),
                readiness: self.readiness.clone(),
                events: self.events_tx.clone(),
                runner: self.host.hooks.clone(),
                http: self.http.clone(),
                env: spec.env.clone(),
            })));
        }
        with(&self.view, &spec.name, |c| {
            c.state = "starting".into();
            c.reason = None;
        });
        tracing::info!(container = %spec.name, role = spec.role.as_str(), "starting");
        let ooms = self.cgroups.as_ref().map_or(0, |c| c.oom_kills(&spec.name));
        let slot =
            Slot { spec, handle: Some(handle), generation, watchers, held_for_memory: None, seen_exit: None, ooms };
        match self.slots.iter().position(|s| s.spec.name == slot.spec.name) {
            Some(i) => {
                self.slots[i] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        }
    }

    async fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Changed(name) => self.refresh(&name),
            Event::Unhealthy { name, generation, why } => {
                if self.slots.iter().any(|s| s.spec.name == name && s.generation == generation) {
                    tracing::warn!(container = %name, reason = %why, "restarting the container");
                    let _ = self.restart(&name, if why.starts_with("startup") { "startup" } else { "liveness" });
                }
            }
        }
    }

    /// Copies a container's supervisor status into the view, and runs postStart once a run
    /// begins.
    fn refresh(&mut self, name: &str) {
        let Some(slot) = self.slots.iter_mut().find(|s| s.spec.name == name) else { return };
        let Some(h) = slot.handle.as_ref() else { return };
        let st = h.status();
        let held = slot.held_for_memory.is_some();
        let state = match st.phase {
            _ if held => "held: memory pressure",
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Stopping => "stopping",
            Phase::BackingOff => "backing-off",
            Phase::Ended => match (slot.spec.role, st.last_exit) {
                (_, Some(e)) if e.success() => "completed",
                (_, Some(_)) => "failed",
                (_, None) => "stopped",
            },
        };
        with(&self.view, name, |c| {
            c.state = state.into();
            c.pid = st.pid;
            c.restarts = st.restarts;
            c.last_exit = st.last_exit.map(|e| e.to_string());
            if st.pid.is_none() {
                c.ready = false;
                c.started = false;
            }
        });
    }

    /// Stops a container by its policy and starts it again at once.
    fn restart(&mut self, name: &str, reason: &'static str) -> Result<(), String> {
        let slot = self
            .slots
            .iter_mut()
            .find(|s| s.spec.name == name)
            .ok_or_else(|| format!("no container is named {name:?}"))?;
        if slot.spec.role == Role::Init {
            return Err(format!("{name} is an init container: it runs once, before the others"));
        }
        match slot.handle.as_ref() {
            Some(h) if h.status().phase != Phase::Ended => h.restart(),
            _ => {
                // Ended (or held for memory): a new run.
                let spec = slot.spec.clone();
                self.start(spec);
            }
        }
        self.metrics.restarts.get_or_create(&ReasonLabel { container: name.to_string(), reason }).inc();
        Ok(())
    }

    /// Whether the pod is done: every main finished (Never/OnFailure), or an essential
    /// container exited.
    fn settled(&mut self) -> Option<Outcome> {
        for slot in &mut self.slots {
            let Some(h) = slot.handle.as_ref() else { continue };
            let st = h.status();
            let current = (st.restarts, st.last_exit);
            if slot.spec.essential && st.last_exit.is_some() && slot.seen_exit != Some(current) {
                slot.seen_exit = Some(current);
                let status = st.last_exit.map_or(0, |e| e.status());
                tracing::warn!(container = %slot.spec.name, status, "an essential container exited: the pod stops");
                return Some(if status == 0 { Outcome::Completed(0) } else { Outcome::Failed(status) });
            }
        }
        if self.file.restart_policy == Restart::Always {
            return None;
        }
        let mains: Vec<&Slot> = self.slots.iter().filter(|s| s.spec.role == Role::Main).collect();
        if mains.is_empty() || mains.len() < self.file.mains.len() {
            return None;
        }
        let mut worst = 0;
        for s in mains {
            let st = s.handle.as_ref()?.status();
            if st.phase != Phase::Ended {
                return None;
            }
            let status = st.last_exit.map_or(0, |e| e.status());
            if worst == 0 {
                worst = status;
            }
        }
        tracing::info!(status = worst, "every main container has finished: stopping the sidecars");
        Some(Outcome::Completed(worst))
    }

    /// Memory: each container's RSS and CPU into the view; a container over its limit is
    /// killed (and restarted by its policy); low-priority sidecars stop when the pod's memory
    /// runs short and start again when it is free.
    async fn watch_resources(&mut self) {
        let mut total = 0u64;
        let mut sizes: BTreeMap<String, u64> = BTreeMap::new();
        // The kernel OOM-kills one process of a cgroup; as on a node with cgroup v2
        // (memory.oom.group), the whole container goes, and is restarted by its policy.
        if let Some(cg) = &self.cgroups {
            for slot in &mut self.slots {
                let n = cg.oom_kills(&slot.spec.name);
                if n > slot.ooms {
                    slot.ooms = n;
                    if let Some(h) = slot.handle.as_ref().filter(|h| h.status().pid.is_some()) {
                        tracing::warn!(container = %slot.spec.name, "over its memory limit: OOM-killed in its cgroup");
                        h.signal(Signal::SIGKILL);
                        self.metrics
                            .restarts
                            .get_or_create(&ReasonLabel { container: slot.spec.name.clone(), reason: "memory_limit" })
                            .inc();
                    }
                    with(&self.view, &slot.spec.name, |c| {
                        c.reason = Some(format!("OOMKilled (over its memory limit; {n} in all)"))
                    });
                }
            }
        }
        for slot in &self.slots {
            let Some(h) = slot.handle.as_ref() else { continue };
            // The container's processes, not the containment shim in front of them (podkit's
            // own, a few hundred KiB of its own memory).
            let shim = h.status().pid;
            let pids: Vec<i32> = h.pids().await.into_iter().filter(|p| Some(*p) != shim).collect();
            let (rss, cpu) = usage(&pids);
            total += rss;
            sizes.insert(slot.spec.name.clone(), rss);
            with(&self.view, &slot.spec.name, |c| {
                c.rss_bytes = rss;
                c.cpu_seconds = cpu;
            });
            if let Some(limit) = slot.spec.memory_limit
                && rss > limit
                && self.cgroups.is_none()
            {
                tracing::warn!(container = %slot.spec.name, rss, limit, "over its memory limit: killed (OOMKilled)");
                with(&self.view, &slot.spec.name, |c| {
                    c.reason = Some(format!("OOMKilled: {rss} bytes over its limit of {limit}"))
                });
                h.signal(Signal::SIGKILL);
                self.metrics
                    .restarts
                    .get_or_create(&ReasonLabel { container: slot.spec.name.clone(), reason: "memory_limit" })
                    .inc();
            }
        }
        // Short of memory: the pod near its limit, or the host under memory pressure.
        let psi = self.file.memory_pressure.and_then(|threshold| host_pressure().map(|p| (p, threshold)));
        let (short, room) = match (self.file.memory_limit, psi) {
            (Some(limit), _) => (total as f64 > PRESSURE_HIGH * limit as f64, Some(limit as f64)),
            (None, Some((p, threshold))) => (p > threshold, None),
            (None, None) => return,
        };
        // Without a limit (pressure alone) a held sidecar starts again once the host is calm.
        let limit = room.unwrap_or(f64::INFINITY);
        if short {
            self.calm = 0;
            // The last low-priority sidecar still running goes first.
            if let Some(slot) = self.slots.iter_mut().rev().find(|s| {
                s.spec.low_priority
                    && s.held_for_memory.is_none()
                    && s.handle.as_ref().is_some_and(|h| h.status().phase != Phase::Ended)
            }) {
                let name = slot.spec.name.clone();
                let size = sizes.get(&name).copied().unwrap_or(0);
                tracing::warn!(container = %name, pod_rss = total, limit = ?room.map(|l| l as u64), pressure = ?psi.map(|p| p.0), "memory pressure: stopping a low-priority sidecar");
                slot.held_for_memory = Some(size);
                if let Some(h) = slot.handle.as_ref() {
                    h.stop(StopRequest::default());
                }
                with(&self.view, &name, |c| {
                    c.state = "held: memory pressure".into();
                    c.reason = Some(match room {
                        Some(l) => {
                            format!(
                                "stopped to free memory for the main containers (pod at {total} of {} bytes)",
                                l as u64
                            )
                        }
                        None => format!(
                            "stopped to free memory for the main containers (host memory pressure {:.1}%)",
                            psi.map_or(0.0, |p| p.0)
                        ),
                    });
                });
                self.readiness.ready(&name);
                self.metrics.priority_stops.get_or_create(&ContainerLabel { container: name }).inc();
            }
        } else {
            // The first one held starts again when it fits with room to spare.
            let fits = |size: u64| (total + size) as f64 <= PRESSURE_LOW * limit;
            let held = self.slots.iter().position(|s| s.held_for_memory.is_some_and(fits));
            self.calm = if held.is_some() { self.calm + 1 } else { 0 };
            if let Some(i) = held.filter(|_| self.calm >= CALM_TICKS) {
                self.calm = 0;
                let spec = self.slots[i].spec.clone();
                tracing::info!(container = %spec.name, pod_rss = total, "memory is free again: starting the low-priority sidecar");
                self.metrics.priority_starts.get_or_create(&ContainerLabel { container: spec.name.clone() }).inc();
                self.start(spec);
            }
        }
    }

    /// Applies an edited pod file: containers whose spec changed are restarted with the new
    /// spec in dependency order (sidecars in order, each started before the next, then the
    /// mains), new ones started, removed ones stopped; the others keep running untouched.
    async fn apply(&mut self, new: PodFile, ctx: &Context) -> Result<Applied, String> {
        let mut applied = Applied::default();
        if new.name != self.file.name {
            return Err(format!("the file is pod {:?}, this is pod {:?}", new.name, self.file.name));
        }
        for (old, newer) in [(self.file.restart_policy.as_str(), new.restart_policy.as_str())] {
            if old != newer {
                applied
                    .warnings
                    .push(format!("restartPolicy {old} → {newer}: applies to containers started from now on"));
            }
        }
        for c in &new.init {
            match self.file.container(&c.name) {
                Some(o) if o.fingerprint == c.fingerprint => applied.unchanged.push(c.name.clone()),
                _ => applied.warnings.push(format!(
                    "{}: init containers run once, when the pod starts; the change applies at the next start",
                    c.name
                )),
            }
        }
        // Removed containers stop first (mains before sidecars, as at the end of a pod).
        let removed: Vec<String> = self
            .file
            .containers()
            .filter(|c| c.role != Role::Init && new.container(&c.name).is_none())
            .map(|c| c.name.clone())
            .collect();
        for name in removed.iter().rev() {
            if let Some(i) = self.slots.iter().position(|s| &s.spec.name == name) {
                let mut slot = self.slots.remove(i);
                if let Some(h) = slot.handle.as_mut() {
                    h.stop(StopRequest::default());
                    h.wait().await;
                }
                self.readiness.ready(name);
                self.view.lock().unwrap_or_else(|e| e.into_inner()).containers.retain(|c| &c.name != name);
                applied.stopped.push(name.clone());
            }
        }
        let ordered: Vec<ContainerSpec> = new.sidecars.iter().chain(&new.mains).cloned().collect();
        let old_file = std::mem::replace(&mut self.file, new);
        for spec in ordered {
            let changed = match old_file.container(&spec.name) {
                Some(o) if o.fingerprint == spec.fingerprint && o.role == spec.role => {
                    applied.unchanged.push(spec.name.clone());
                    continue;
                }
                Some(_) => true,
                None => false,
            };
            if changed {
                if let Some(slot) = self.slots.iter_mut().find(|s| s.spec.name == spec.name)
                    && let Some(h) = slot.handle.as_mut()
                {
                    h.stop(StopRequest::default());
                    h.wait().await;
                }
                applied.restarted.push(spec.name.clone());
                self.metrics
                    .restarts
                    .get_or_create(&ReasonLabel { container: spec.name.clone(), reason: "update" })
                    .inc();
            } else {
                let mut v = self.view.lock().unwrap_or_else(|e| e.into_inner());
                v.containers.push(container_view(&spec, "waiting"));
                drop(v);
                self.readiness.not_ready(spec.name.clone(), "not started");
                applied.started.push(spec.name.clone());
            }
            let name = spec.name.clone();
            let is_sidecar = spec.role == Role::Sidecar;
            self.start(spec);
            // The next container waits until this one is started (a sidecar) and ready.
            let deadline = Instant::now() + Duration::from_secs(300);
            while Instant::now() < deadline {
                let (started, ready) = with(&self.view, &name, |c| (c.started, c.ready)).unwrap_or((true, true));
                if started && (ready || !is_sidecar) {
                    break;
                }
                tokio::select! {
                    ev = self.events.recv() => if let Some(ev) = ev { self.on_event(ev).await },
                    _ = ctx.shutdown.triggered() => return Ok(applied),
                }
            }
        }
        Ok(applied)
    }

    /// The end of the pod: the mains' preStop hooks and stop within their share of the grace,
    /// then the sidecars in reverse order, each with its own budget; volumes removed.
    async fn terminate(&mut self, _podkit_grace: Duration) -> Outcome {
        self.set_phase("Stopping");
        let grace = self.file.grace;
        let budgets: Vec<Duration> = self.file.sidecars.iter().map(|s| self.sidecar_budget(s)).collect();
        let reserved: Duration = budgets.iter().sum();
        let mains_share = grace.saturating_sub(reserved).max(Duration::from_secs(1));
        tracing::info!(mains = ?mains_share, sidecars = ?reserved, "stopping the pod");
        let mains: Vec<String> =
            self.slots.iter().filter(|s| s.spec.role != Role::Sidecar).map(|s| s.spec.name.clone()).collect();
        let stops = mains.iter().map(|n| self.stop_one(n.clone(), mains_share));
        let results = futures_util::future::join_all(stops.collect::<Vec<_>>()).await;
        drop(results);
        let sidecars: Vec<(String, Duration)> =
            self.file.sidecars.iter().zip(budgets).rev().map(|(s, b)| (s.name.clone(), b)).collect();
        for (name, budget) in sidecars {
            self.stop_one(name, budget).await;
        }
        for slot in &mut self.slots {
            if let Some(h) = slot.handle.as_mut() {
                h.kill();
                h.wait().await;
            }
        }
        if let Some(c) = &self.cgroups {
            c.remove();
        }
        self.set_phase("Stopped");
        Outcome::Stopped
    }

    /// A sidecar's share of the stop: its `podkit.dev/sidecar-grace`, or a tenth of the pod's
    /// grace (at least a second).
    fn sidecar_budget(&self, s: &ContainerSpec) -> Duration {
        s.stop_grace.unwrap_or_else(|| (self.file.grace / 10).max(Duration::from_secs(1)))
    }

    /// Runs a container's preStop hook, then stops it, all within `budget`.
    fn stop_one(&self, name: String, budget: Duration) -> impl std::future::Future<Output = ()> + use<> {
        let slot = self.slots.iter().find(|s| s.spec.name == name);
        let spec = slot.map(|s| s.spec.clone());
        let watch = slot.and_then(|s| s.handle.as_ref()).map(Handle::watch);
        let control = slot.and_then(|s| s.handle.as_ref()).map(Handle::controller);
        let (runner, http, view) = (self.host.hooks.clone(), self.http.clone(), self.view.clone());
        async move {
            let (Some(spec), Some(mut watch), Some(control)) = (spec, watch, control) else { return };
            if watch.borrow().phase == Phase::Ended {
                return;
            }
            let started = Instant::now();
            if let Some(hook) = &spec.pre_stop
                && watch.borrow().pid.is_some()
            {
                tracing::info!(container = %name, "running the preStop hook");
                if let Err(e) = probe::run_handler(hook, budget, &spec.env, &runner, &http).await {
                    tracing::warn!(container = %name, error = %e, "the preStop hook failed");
                }
            }
            let left = Duration::from_millis(budget.saturating_sub(started.elapsed()).as_millis().max(100) as u64);
            with(&view, &name, |c| c.state = "stopping".into());
            control.stop(StopRequest { signal: None, grace: Some(left) });
            while watch.borrow().phase != Phase::Ended {
                if watch.changed().await.is_err() {
                    break;
                }
            }
            tracing::info!(container = %name, took = ?started.elapsed(), "stopped");
        }
    }
}

impl Outcome {
    /// A failure with `status`, whatever the stop itself gave.
    fn max_failed(self, status: i32) -> Outcome {
        let _ = self;
        Outcome::Failed(status)
    }
}

fn container_view(c: &ContainerSpec, state: &str) -> ContainerView {
    ContainerView {
        name: c.name.clone(),
        role: c.role.as_str().into(),
        state: state.into(),
        low_priority: c.low_priority,
        ..ContainerView::default()
    }
}

/// Kubernetes' expansion of `$(NAME)` in a container's command and args: a defined variable's
/// value; an undefined one stays as written; `$$` is a literal `$`.
pub fn expand(s: &str, vars: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(more) = after.strip_prefix('$') {
            out.push('$');
            rest = more;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some((_, v)) = vars.iter().rev().find(|(k, _)| k == &inner[..end])
        {
            out.push_str(v);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn exit_text(status: i32) -> String {
    if status > 128 { format!("signal {}", status - 128) } else { format!("exit code {status}") }
}

/// The host's memory pressure: `some avg10` of /proc/pressure/memory, in percent.
fn host_pressure() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/pressure/memory").ok()?;
    text.lines()
        .find(|l| l.starts_with("some "))?
        .split_whitespace()
        .find_map(|f| f.strip_prefix("avg10="))?
        .parse()
        .ok()
}

/// RSS (bytes) and CPU (seconds) of a set of processes.
fn usage(pids: &[i32]) -> (u64, f64) {
    let page = procfs::page_size();
    let ticks = procfs::ticks_per_second() as f64;
    let mut rss = 0u64;
    let mut cpu = 0.0;
    for pid in pids {
        if let Ok(s) = procfs::process::Process::new(*pid).and_then(|p| p.stat()) {
            rss += s.rss * page;
            cpu += (s.utime + s.stime) as f64 / ticks;
        }
    }
    (rss, cpu)
}

// === probes ===

struct ProbeCtx {
    spec: ContainerSpec,
    generation: u64,
    status: tokio::sync::watch::Receiver<supervised::Status>,
    view: SharedView,
    readiness: Readiness,
    events: mpsc::UnboundedSender<Event>,
    runner: podkit_process::hook::Runner,
    http: reqwest::Client,
    env: Vec<(String, String)>,
}

/// A container's probes, started anew with each run of it (a new pid): the startup probe
/// until it passes, then readiness and liveness; postStart runs first.
async fn probe_loop(p: ProbeCtx) {
    let name = p.spec.name.clone();
    let mut status = p.status.clone();
    loop {
        // Wait for a run.
        let pid = loop {
            if let Some(pid) = status.borrow().pid {
                break pid;
            }
            if status.changed().await.is_err() {
                return;
            }
        };
        let run = one_run(&p);
        tokio::pin!(run);
        // Until this run ends (its pid goes away or changes).
        loop {
            tokio::select! {
                () = &mut run => {
                    // The run asked for a restart, or has nothing more to probe: wait for the pid to change.
                    while status.borrow().pid == Some(pid) {
                        if status.changed().await.is_err() { return; }
                    }
                    break;
                }
                r = status.changed() => {
                    if r.is_err() { return; }
                    if status.borrow().pid != Some(pid) { break; }
                }
            }
        }
        with(&p.view, &name, |c| {
            c.ready = false;
            c.started = false;
        });
        p.readiness.not_ready(name.clone(), "not running");
    }
}

/// One run's probing: postStart, startup, then readiness and liveness until a liveness
/// failure (which asks for a restart).
async fn one_run(p: &ProbeCtx) {
    let name = &p.spec.name;
    if let Some(h) = &p.spec.post_start
        && let Err(e) = probe::run_handler(h, Duration::from_secs(30), &p.env, &p.runner, &p.http).await
    {
        let _ = p.events.send(Event::Unhealthy {
            name: name.clone(),
            generation: p.generation,
            why: format!("startup: postStart failed: {e}"),
        });
        return;
    }
    if let Some(s) = &p.spec.startup {
        tokio::time::sleep(s.initial_delay).await;
        // Checked every EAGER (a program is usually up within milliseconds, and the next
        // container waits on it), but failures count once per period: the time a program is
        // given to start stays Kubernetes' failureThreshold × periodSeconds.
        let mut failures = 0;
        let mut counted = tokio::time::Instant::now();
        loop {
            match probe::check(&s.action, s.timeout, &p.env, &p.runner, &p.http).await {
                Ok(()) => break,
                Err(e) => {
                    if counted.elapsed() >= s.period {
                        failures += 1;
                        counted = tokio::time::Instant::now();
                    }
                    with(&p.view, name, |c| c.reason = Some(format!("startup probe: {e}")));
                    if failures >= s.failure_threshold {
                        let _ = p.events.send(Event::Unhealthy {
                            name: name.clone(),
                            generation: p.generation,
                            why: format!("startup probe failed {failures} times: {e}"),
                        });
                        return;
                    }
                }
            }
            tokio::time::sleep(s.period.min(EAGER)).await;
        }
    }
    with(&p.view, name, |c| {
        c.started = true;
        c.reason = None;
    });
    let _ = p.events.send(Event::Changed(name.clone()));
    let readiness = async {
        match &p.spec.readiness {
            None => {
                with(&p.view, name, |c| c.ready = true);
                p.readiness.ready(name);
                let _ = p.events.send(Event::Changed(name.clone()));
                std::future::pending::<()>().await;
            }
            Some(r) => {
                tokio::time::sleep(r.initial_delay).await;
                let (mut ok, mut bad) = (0u32, 0u32);
                let mut ready = false;
                loop {
                    // Until it is first ready, checked every EAGER (as the startup probe).
                    let wait = if ready { r.period } else { r.period.min(EAGER) };
                    match probe::check(&r.action, r.timeout, &p.env, &p.runner, &p.http).await {
                        Ok(()) => {
                            ok += 1;
                            bad = 0;
                            if !ready && ok >= r.success_threshold {
                                ready = true;
                                with(&p.view, name, |c| {
                                    c.ready = true;
                                    c.reason = None;
                                });
                                p.readiness.ready(name);
                                let _ = p.events.send(Event::Changed(name.clone()));
                            }
                        }
                        Err(e) => {
                            bad += 1;
                            ok = 0;
                            if bad >= r.failure_threshold || !ready {
                                if ready {
                                    tracing::info!(container = %name, error = %e, "not ready");
                                }
                                ready = false;
                                with(&p.view, name, |c| {
                                    c.ready = false;
                                    c.reason = Some(format!("readiness probe: {e}"));
                                });
                                p.readiness.not_ready(name.clone(), format!("readiness probe: {e}"));
                            }
                        }
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    };
    let liveness = async {
        let Some(l) = &p.spec.liveness else { return std::future::pending::<()>().await };
        tokio::time::sleep(l.initial_delay).await;
        let mut bad = 0;
        loop {
            match probe::check(&l.action, l.timeout, &p.env, &p.runner, &p.http).await {
                Ok(()) => bad = 0,
                Err(e) => {
                    bad += 1;
                    if bad >= l.failure_threshold {
                        let _ = p.events.send(Event::Unhealthy {
                            name: name.clone(),
                            generation: p.generation,
                            why: format!("liveness probe failed {bad} times: {e}"),
                        });
                        return;
                    }
                }
            }
            tokio::time::sleep(l.period).await;
        }
    };
    tokio::select! {
        () = readiness => {}
        () = liveness => {}
    }
}

/// What a running pod is asked for, through its admin API.
pub fn channel() -> (mpsc::UnboundedSender<Command>, mpsc::UnboundedReceiver<Command>) {
    mpsc::unbounded_channel()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_expand_as_kubernetes_expands_them() {
        let vars = vec![("DIR".to_string(), "/tmp/x".to_string()), ("ID".into(), "a".into())];
        assert_eq!(expand("$(DIR)/file", &vars), "/tmp/x/file");
        assert_eq!(expand("--id=$(ID)-$(ID)", &vars), "--id=a-a");
        assert_eq!(expand("$(NOPE) $$(DIR) $5 $(", &vars), "$(NOPE) $(DIR) $5 $(");
    }
}
