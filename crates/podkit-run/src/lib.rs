//! `podkit run -- CMD [ARGS…]`: container init and lifecycle for any app.
//!
//! What tini and dumb-init do (PID 1 or subreaper, zombie reaping, signal forwarding, the
//! child's exit status), plus the lifecycle contract: a pre-stop hook before the stop signal, a
//! grace period that ends in SIGKILL for the child's whole tree, the app's output, process
//! metrics and readiness on the admin port, a save-state hook, and restarts with backoff.

mod output;

use std::ffi::OsString;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use clap::{Args, ValueEnum};
use nix::sys::signal::Signal;
use podkit_core::metrics::encode_proc_stats;
use podkit_core::{AdminBuilder, Argv, CommonArgs, Component, Context, StopReason};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::signal::unix::{SignalKind, signal};

use podkit_core::hook::{Hook, Outcome, Runner};
use podkit_core::process::{self, parse_signal};
use podkit_core::reaper::{Exit, Reaper};

/// The admin listener's default address for `podkit run`.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9190";

/// Options of `podkit run`. Their doc comments are the `--help` text.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Signal that asks the program to stop, sent after the pre-stop hook.
    #[arg(long, value_name = "SIGNAL", default_value = "SIGTERM", value_parser = parse_signal, help_heading = "Stopping")]
    pub stop_signal: Signal,

    /// Send forwarded signals and the stop signal to the program's whole process group, not
    /// only to the program.
    #[arg(long, help_heading = "Stopping")]
    pub signal_group: bool,

    /// Before the stop signal, POST to this URL and wait for the answer (within --grace).
    #[arg(long, value_name = "URL", value_parser = parse_http_url, conflicts_with = "pre_stop_exec", help_heading = "Stopping")]
    pub pre_stop_http: Option<reqwest::Url>,

    /// Before the stop signal, run this command (argv, no shell) and wait for it (within --grace).
    #[arg(long, value_name = "CMD", help_heading = "Stopping")]
    pub pre_stop_exec: Option<Argv>,

    /// Ready only while GET on this URL answers 2xx.
    #[arg(long, value_name = "URL", value_parser = parse_http_url, conflicts_with = "ready_exec", help_heading = "Readiness")]
    pub ready_http: Option<reqwest::Url>,

    /// Ready only while this command (argv, no shell) exits 0.
    #[arg(long, value_name = "CMD", help_heading = "Readiness")]
    pub ready_exec: Option<Argv>,

    /// How often the readiness probe runs.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = podkit_core::Duration::parse_positive, help_heading = "Readiness")]
    pub ready_interval: podkit_core::Duration,

    /// How long one readiness probe may take before it counts as a failure.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = podkit_core::Duration::parse_positive, help_heading = "Readiness")]
    pub ready_timeout: podkit_core::Duration,

    /// `POST /lifecycle/save` POSTs to this URL: the app's "save your state now" hook.
    #[arg(long, value_name = "URL", value_parser = parse_http_url, conflicts_with = "save_exec", help_heading = "Saving state")]
    pub save_http: Option<reqwest::Url>,

    /// `POST /lifecycle/save` runs this command (argv, no shell).
    #[arg(long, value_name = "CMD", help_heading = "Saving state")]
    pub save_exec: Option<Argv>,

    /// How long the save hook may take.
    #[arg(long, value_name = "DURATION", default_value = "30s", help_heading = "Saving state")]
    pub save_timeout: podkit_core::Duration,

    /// Restart the program when it exits: never (the default, as under an orchestrator),
    /// on-failure (non-zero status or killed by a signal) or always.
    #[arg(long, value_enum, default_value_t = RestartPolicy::Never, help_heading = "Restarting")]
    pub restart: RestartPolicy,

    /// First delay before a restart; it doubles after each quick failure.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = podkit_core::Duration::parse_positive, help_heading = "Restarting")]
    pub restart_delay: podkit_core::Duration,

    /// Longest delay between restarts. A program that ran at least this long before exiting
    /// is restarted after --restart-delay again.
    #[arg(long, value_name = "DURATION", default_value = "30s", help_heading = "Restarting")]
    pub restart_delay_max: podkit_core::Duration,

    /// Let the program write straight to podkit's stdout and stderr instead of through a pipe:
    /// its output is then not kept in /logs.
    #[arg(long, help_heading = "Output")]
    pub no_capture: bool,

    /// The program and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RestartPolicy {
    Never,
    OnFailure,
    Always,
}

impl RestartPolicy {
    fn restarts_after(self, exit: Exit) -> bool {
        match self {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => !exit.success(),
            RestartPolicy::Always => true,
        }
    }
}

fn parse_http_url(s: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(s).map_err(|e| format!("{e}; expected a URL such as http://127.0.0.1:8080/ready"))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(format!("scheme {other:?} is not supported; expected http or https")),
    }
}

/// Errors that end `podkit run` before the program could run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start reaping children: {0}")]
    Reaper(#[source] std::io::Error),
    #[error("cannot install signal forwarding: {0}")]
    Signals(#[source] std::io::Error),
    #[error("cannot build the HTTP client for hooks: {0}")]
    HttpClient(#[source] reqwest::Error),
}

// === impl Run ===

/// The `podkit run` component.
#[derive(Debug)]
pub struct Run {
    args: RunArgs,
    state: Arc<State>,
}

/// What the admin endpoints and the supervisor share.
#[derive(Debug)]
struct State {
    /// Pid of the running program; 0 when none.
    pid: AtomicI32,
    /// Last exit status (128+N for a signal); -1 before the first exit.
    last_exit: AtomicI64,
    restarts: Counter,
    hook_runs: Family<HookLabels, Counter>,
    save: Option<Hook>,
    save_timeout: Duration,
    runner: std::sync::OnceLock<Runner>,
    /// Set when a stop begins: no new save hook may start after it.
    stopping: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabels {
    hook: &'static str,
    result: &'static str,
}

impl State {
    fn count_hook(&self, hook: &'static str, outcome: &Outcome) {
        let result = if outcome.ok { "ok" } else { "failed" };
        self.hook_runs.get_or_create(&HookLabels { hook, result }).inc();
    }
}

impl Run {
    pub fn new(args: RunArgs) -> Self {
        let save = Hook::from_options(args.save_http.as_ref(), args.save_exec.as_ref(), reqwest::Method::POST);
        let state = Arc::new(State {
            pid: AtomicI32::new(0),
            last_exit: AtomicI64::new(-1),
            restarts: Counter::default(),
            hook_runs: Family::default(),
            save,
            save_timeout: args.save_timeout.get(),
            runner: std::sync::OnceLock::new(),
            stopping: std::sync::atomic::AtomicBool::new(false),
        });
        Self { args, state }
    }
}

impl Component for Run {
    const NAME: &'static str = "run";
    type Error = RunError;

    fn setup(&mut self, admin: &mut AdminBuilder, ctx: &Context) {
        let reg = admin.metrics();
        reg.register("restarts", "Times the program was restarted", self.state.restarts.clone());
        reg.register("hook_runs", "Hook and probe runs by hook and result", self.state.hook_runs.clone());
        reg.register_collector(Box::new(ChildCollector { state: self.state.clone() }));

        let state = self.state.clone();
        admin.protected_route("/lifecycle/save", post(move || save(state.clone())));

        ctx.readiness.not_ready("program", "not started");
        if self.args.ready_http.is_some() || self.args.ready_exec.is_some() {
            ctx.readiness.not_ready("probe", "no successful readiness probe yet");
        }
    }

    async fn run(self, ctx: Context) -> Result<i32, RunError> {
        let reaper = Reaper::start().map_err(RunError::Reaper)?;
        become_reaper();
        let client = podkit_core::http::client(Duration::from_secs(30)).map_err(RunError::HttpClient)?;
        let runner = Runner::new(reaper.clone(), client);
        let _ = self.state.runner.set(runner.clone());
        let forward = Forwarder::new().map_err(RunError::Signals)?;

        // A second stop signal exits at once; nothing podkit started may outlive it.
        let state = self.state.clone();
        ctx.shutdown.on_force(move || {
            let pid = state.pid.load(Ordering::Relaxed);
            process::kill_all((pid > 0).then_some(pid));
        });

        if let Some(probe) =
            Hook::from_options(self.args.ready_http.as_ref(), self.args.ready_exec.as_ref(), reqwest::Method::GET)
        {
            ctx.tasks.spawn(probe_loop(probe, runner.clone(), self.state.clone(), ctx.clone(), self.args.clone()));
        }

        let sup = Supervisor { args: self.args, state: self.state, ctx, reaper, runner, forward, stop_deadline: None };
        Ok(sup.supervise().await)
    }
}

/// Makes podkit the reaper of orphaned descendants when it is not already PID 1.
fn become_reaper() {
    if std::process::id() == 1 {
        tracing::debug!("running as PID 1");
        return;
    }
    match nix::sys::prctl::set_child_subreaper(true) {
        Ok(()) => tracing::debug!("registered as child subreaper"),
        Err(e) => {
            tracing::warn!(error = %e, "cannot become a child subreaper; orphans will escape to PID 1")
        }
    }
}

async fn save(state: Arc<State>) -> Response {
    let Some(hook) = &state.save else {
        let body = serde_json::json!({ "error": "no save hook configured; set --save-http or --save-exec" });
        return (StatusCode::NOT_FOUND, Json(body)).into_response();
    };
    if state.stopping.load(Ordering::Relaxed) || state.pid.load(Ordering::Relaxed) == 0 {
        let body = serde_json::json!({ "error": "the program is not running (stopping or between restarts)" });
        return (StatusCode::CONFLICT, Json(body)).into_response();
    }
    let Some(runner) = state.runner.get() else {
        let body = serde_json::json!({ "error": "still starting; retry" });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    };
    let outcome = runner.run(hook, "save", state.save_timeout).await;
    state.count_hook("save", &outcome);
    tracing::info!(ok = outcome.ok, detail = %outcome.detail, duration_ms = outcome.duration_ms, "save hook ran");
    let status = if outcome.ok { StatusCode::OK } else { StatusCode::BAD_GATEWAY };
    (status, Json(outcome)).into_response()
}

async fn probe_loop(probe: Hook, runner: Runner, state: Arc<State>, ctx: Context, args: RunArgs) {
    let mut tick = tokio::time::interval(args.ready_interval.get());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_ok = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = ctx.shutdown.triggered() => return,
        }
        if state.pid.load(Ordering::Relaxed) == 0 {
            continue; // the program is not running: "program" already says why
        }
        let outcome = runner.run(&probe, "ready", args.ready_timeout.get()).await;
        state.count_hook("ready", &outcome);
        if outcome.ok {
            ctx.readiness.ready("probe");
        } else {
            ctx.readiness.not_ready("probe", format!("readiness probe failed: {}", outcome.detail));
        }
        if was_ok != Some(outcome.ok) {
            tracing::info!(ready = outcome.ok, detail = %outcome.detail, "readiness probe changed");
            was_ok = Some(outcome.ok);
        }
    }
}

// === impl Forwarder ===

/// The signals podkit passes on to the program. SIGTERM and SIGINT start the stop sequence
/// instead (see [`Supervisor::stop`]); SIGHUP arrives through the reload channel.
#[derive(Debug)]
struct Forwarder {
    streams: Vec<(Signal, tokio::signal::unix::Signal)>,
}

impl Forwarder {
    fn new() -> std::io::Result<Self> {
        let kinds = [
            (Signal::SIGQUIT, SignalKind::quit()),
            (Signal::SIGUSR1, SignalKind::user_defined1()),
            (Signal::SIGUSR2, SignalKind::user_defined2()),
            (Signal::SIGWINCH, SignalKind::window_change()),
        ];
        let mut streams = Vec::new();
        for (sig, kind) in kinds {
            streams.push((sig, signal(kind)?));
        }
        Ok(Self { streams })
    }

    /// The next signal to forward.
    async fn next(&mut self) -> Signal {
        let pending = self.streams.iter_mut().map(|(sig, s)| {
            let sig = *sig;
            Box::pin(async move {
                s.recv().await;
                sig
            })
        });
        futures_util::future::select_all(pending).await.0
    }
}

// === impl Supervisor ===

struct Supervisor {
    args: RunArgs,
    state: Arc<State>,
    ctx: Context,
    reaper: Arc<Reaper>,
    runner: Runner,
    forward: Forwarder,
    /// When the grace period of a stop under way runs out.
    stop_deadline: Option<tokio::time::Instant>,
}

/// How a run of the program ended.
enum Ended {
    /// It exited on its own.
    Exited(Exit),
    /// podkit stopped it (stop sequence done).
    Stopped(Exit),
}

impl Supervisor {
    async fn supervise(mut self) -> i32 {
        let mut delay = self.args.restart_delay.get();
        loop {
            let started = Instant::now();
            let ended = match self.run_once().await {
                Ok(ended) => ended,
                Err(status) => return status,
            };
            let exit = match ended {
                Ended::Stopped(exit) => return exit.status(),
                Ended::Exited(exit) => exit,
            };
            if self.ctx.shutdown.is_triggered() || !self.args.restart.restarts_after(exit) {
                if !self.ctx.shutdown.is_triggered() {
                    self.ctx.shutdown.trigger(StopReason::Completed);
                }
                return exit.status();
            }
            if started.elapsed() >= self.args.restart_delay_max.get() {
                delay = self.args.restart_delay.get();
            }
            tracing::info!(%exit, delay = %podkit_core::Duration(delay), "restarting the program");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.ctx.shutdown.triggered() => return exit.status(),
            }
            self.state.restarts.inc();
            delay = delay.saturating_mul(2).min(self.args.restart_delay_max.get());
        }
    }

    /// Starts the program once and waits until it exits or is stopped. `Err` is the exit
    /// status when it could not be started at all.
    async fn run_once(&mut self) -> Result<Ended, i32> {
        let capture = !self.args.no_capture;
        let mut cmd = process::command(&self.args.command, capture);
        let program = self.args.command[0].to_string_lossy().into_owned();
        let mut spawned = match self.reaper.spawn(&mut cmd) {
            Ok(s) => s,
            Err(e) => {
                // The shell's conventions: 127 when there is no such program, 126 when it
                // cannot be executed.
                let status = if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
                tracing::error!(program = %program, error = %e, status, "cannot start the program");
                self.ctx.readiness.not_ready("program", format!("cannot start {program}: {e}"));
                // Nothing more will run: let every other task (probes) end now.
                self.ctx.shutdown.trigger(StopReason::Completed);
                return Err(status);
            }
        };
        let pid = spawned.pid;
        self.state.pid.store(pid, Ordering::Relaxed);
        if self.args.ready_http.is_some() || self.args.ready_exec.is_some() {
            // A new run is not ready until its own probe says so.
            self.ctx.readiness.not_ready("probe", "no successful readiness probe yet");
        }
        self.ctx.readiness.ready("program");
        tracing::info!(pid, program = %program, "program started");

        let mut pumps = Vec::new();
        if let Some(out) = spawned.child.stdout.take() {
            pumps.push(tokio::spawn(output::pump(out.into(), output::Stream::Stdout, self.ctx.logs.clone())));
        }
        if let Some(err) = spawned.child.stderr.take() {
            pumps.push(tokio::spawn(output::pump(err.into(), output::Stream::Stderr, self.ctx.logs.clone())));
        }

        let mut reload = self.ctx.reload.clone();
        let group = self.args.signal_group;
        let ended = loop {
            tokio::select! {
                exit = &mut spawned.exit => break Ended::Exited(exit.unwrap_or(Exit::Signal(Signal::SIGKILL as i32))),
                reason = self.ctx.shutdown.triggered() => break Ended::Stopped(self.stop(pid, &mut spawned.exit, reason).await),
                sig = self.forward.next() => {
                    tracing::debug!(signal = %sig, pid, "forwarding signal");
                    process::signal(pid, sig, group);
                }
                _ = reload.requested() => {
                    tracing::debug!(pid, "forwarding SIGHUP");
                    process::signal(pid, Signal::SIGHUP, group);
                }
            }
        };

        let exit = match ended {
            Ended::Exited(e) | Ended::Stopped(e) => e,
        };
        self.state.pid.store(0, Ordering::Relaxed);
        self.state.last_exit.store(exit.status() as i64, Ordering::Relaxed);
        self.ctx.readiness.not_ready("program", format!("exited ({exit})"));
        tracing::info!(pid, %exit, "program ended");

        // Whatever the program left running goes with it, so a restart starts clean and podkit
        // never exits leaving processes behind.
        self.sweep(pid).await;
        // The pipes close when the last process holding them is gone; a descendant that
        // escaped the sweep (uninterruptible sleep) must not hold podkit's exit.
        let _ = tokio::time::timeout(Duration::from_secs(2), futures_util::future::join_all(pumps)).await;
        Ok(ended)
    }

    /// The stop sequence: pre-stop hook, stop signal, grace, SIGKILL to everything.
    async fn stop(&mut self, pid: i32, exit: &mut tokio::sync::oneshot::Receiver<Exit>, reason: StopReason) -> Exit {
        self.state.stopping.store(true, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + self.ctx.grace;
        self.stop_deadline = Some(deadline);
        if let Some(hook) = Hook::from_options(
            self.args.pre_stop_http.as_ref(),
            self.args.pre_stop_exec.as_ref(),
            reqwest::Method::POST,
        ) {
            tracing::info!("running the pre-stop hook");
            // The hook's time counts against the grace period, as Kubernetes counts preStop.
            let outcome = tokio::select! {
                o = self.runner.run(&hook, "pre-stop", self.ctx.grace) => o,
                e = &mut *exit => {
                    tracing::info!("the program exited while the pre-stop hook ran");
                    return e.unwrap_or(Exit::Signal(Signal::SIGKILL as i32));
                }
            };
            self.state.count_hook("pre-stop", &outcome);
            if outcome.ok {
                tracing::info!(detail = %outcome.detail, duration_ms = outcome.duration_ms, output = %outcome.output.trim_end(), "pre-stop hook done");
            } else {
                tracing::warn!(detail = %outcome.detail, output = %outcome.output, "pre-stop hook failed; stopping anyway");
            }
        }
        // Ctrl-C on a terminal reaches the program as SIGINT; every other stop uses --stop-signal.
        let sig = if reason == StopReason::Interrupt { Signal::SIGINT } else { self.args.stop_signal };
        tracing::info!(pid, signal = %sig, grace = %podkit_core::Duration(self.ctx.grace), "stopping the program");
        process::signal(pid, sig, self.args.signal_group);
        tokio::select! {
            e = &mut *exit => return e.unwrap_or(Exit::Signal(Signal::SIGKILL as i32)),
            _ = tokio::time::sleep_until(deadline) => {}
        }
        tracing::warn!(
            pid,
            "the program did not stop within the grace period; sending SIGKILL to it and everything it started"
        );
        process::kill_all_async(Some(pid)).await;
        exit.await.unwrap_or(Exit::Signal(Signal::SIGKILL as i32))
    }

    /// Stops what the program left behind: the stop signal, then SIGKILL after the grace
    /// period (or at once if a stop is under way and its grace is spent).
    async fn sweep(&self, pgid: i32) {
        let me = std::process::id() as i32;
        let left = process::live_descendants_async(me).await;
        let group_alive = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), None).is_ok();
        if left.is_empty() && !group_alive {
            return;
        }
        tracing::info!(processes = ?left, signal = %self.args.stop_signal, "stopping processes the program left behind");
        process::signal_all(Some(pgid), self.args.stop_signal);
        let fresh = tokio::time::Instant::now() + self.ctx.grace;
        let deadline = self.stop_deadline.map_or(fresh, |d| d.min(fresh));
        while tokio::time::Instant::now() < deadline {
            if process::live_descendants_async(me).await.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!("processes left behind did not stop within the grace period; sending SIGKILL");
        process::kill_all_async(Some(pgid)).await;
    }
}

// === impl ChildCollector ===

/// The program's process metrics, read from /proc at scrape time.
#[derive(Debug)]
struct ChildCollector {
    state: Arc<State>,
}

impl Collector for ChildCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let pid = self.state.pid.load(Ordering::Relaxed);
        let stats = (pid > 0).then(|| podkit_core::procstat::stats(pid)).flatten();
        ConstGauge::new(i64::from(stats.is_some())).encode(encoder.encode_descriptor(
            "up",
            "1 while the program is running",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(self.state.last_exit.load(Ordering::Relaxed)).encode(encoder.encode_descriptor(
            "last_exit_code",
            "Exit status of the program's last run (128+N if signal N ended it); -1 before the first exit",
            None,
            MetricType::Gauge,
        )?)?;
        ConstCounter::new(self.state.runner.get().map_or(0, |r| r.reaper().orphans_reaped())).encode(
            encoder.encode_descriptor(
                "orphans_reaped",
                "Orphaned processes podkit reaped",
                None,
                MetricType::Counter,
            )?,
        )?;
        match stats {
            Some(s) => encode_proc_stats(encoder, "child", "the program", &s),
            None => Ok(()),
        }
    }
}
