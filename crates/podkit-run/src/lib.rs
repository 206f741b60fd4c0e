//! `podkit run -- CMD [ARGS…]`: container init and lifecycle for any app.
//!
//! What tini and dumb-init do (PID 1 or subreaper, zombie reaping, signal forwarding, the
//! child's exit status), plus the lifecycle contract: a pre-stop hook before the stop signal, a
//! grace period that ends in SIGKILL for the child's whole tree, the app's output, process
//! metrics and readiness on the admin port, a save-state hook, and restarts with backoff.

use std::ffi::OsString;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use clap::{Args, ValueEnum};
use nix::sys::signal::Signal;
use podkit_core::backoff::BackoffPolicy;
use podkit_core::metrics::encode_proc_stats;
use podkit_core::{AdminBuilder, Argv, CommonArgs, Component, Context, HttpUrl, StopReason};
use podkit_process::supervised::{self, Handle, Phase, Program, Status};
use podkit_process::{Hook, Outcome, Restart, RestartPolicy, Runner, StopPolicy, StopRequest, parse_signal};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

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
    #[arg(long, value_name = "URL", conflicts_with = "pre_stop_exec", help_heading = "Stopping")]
    pub pre_stop_http: Option<HttpUrl>,

    /// Before the stop signal, run this command (argv, no shell) and wait for it (within --grace).
    #[arg(long, value_name = "CMD", help_heading = "Stopping")]
    pub pre_stop_exec: Option<Argv>,

    /// Ready only while GET on this URL answers 2xx.
    #[arg(long, value_name = "URL", conflicts_with = "ready_exec", help_heading = "Readiness")]
    pub ready_http: Option<HttpUrl>,

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
    #[arg(long, value_name = "URL", conflicts_with = "save_exec", help_heading = "Saving state")]
    pub save_http: Option<HttpUrl>,

    /// `POST /lifecycle/save` runs this command (argv, no shell).
    #[arg(long, value_name = "CMD", help_heading = "Saving state")]
    pub save_exec: Option<Argv>,

    /// How long the save hook may take.
    #[arg(long, value_name = "DURATION", default_value = "30s", help_heading = "Saving state")]
    pub save_timeout: podkit_core::Duration,

    /// Restart the program when it exits: never (the default, as under an orchestrator),
    /// on-failure (non-zero status or killed by a signal) or always.
    #[arg(long, value_enum, default_value_t = RestartArg::Never, help_heading = "Restarting")]
    pub restart: RestartArg,

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
pub enum RestartArg {
    Never,
    OnFailure,
    Always,
}

impl From<RestartArg> for Restart {
    fn from(p: RestartArg) -> Self {
        match p {
            RestartArg::Never => Restart::Never,
            RestartArg::OnFailure => Restart::OnFailure,
            RestartArg::Always => Restart::Always,
        }
    }
}

/// Errors that end `podkit run` before the program could run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start supervising processes: {0}")]
    Host(#[source] std::io::Error),
    #[error("cannot install signal forwarding: {0}")]
    Signals(#[source] std::io::Error),
}

impl podkit_core::ExitStatus for RunError {
    fn exit_status(&self) -> i32 {
        podkit_core::EX_SOFTWARE
    }
}

// === impl Run ===

/// The `podkit run` component.
#[derive(Debug)]
pub struct Run {
    args: RunArgs,
    state: Arc<State>,
}

/// What the admin endpoints and the component share.
#[derive(Debug)]
struct State {
    hook_runs: Family<HookLabels, Counter>,
    save: Option<Hook>,
    save_timeout: Duration,
    runner: OnceLock<Runner>,
    /// The program's status, once it is supervised.
    status: OnceLock<watch::Receiver<Status>>,
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

    fn status(&self) -> Option<Status> {
        self.status.get().map(|s| s.borrow().clone())
    }

    /// The running program's pid, when it is running (not stopping, not between restarts).
    fn running_pid(&self) -> Option<i32> {
        self.status().filter(|s| s.phase == Phase::Running).and_then(|s| s.pid)
    }
}

impl Run {
    pub fn new(args: RunArgs) -> Self {
        let save = Hook::from_options(args.save_http.as_deref(), args.save_exec.as_ref(), reqwest::Method::POST);
        let state = Arc::new(State {
            hook_runs: Family::default(),
            save,
            save_timeout: args.save_timeout.get(),
            runner: OnceLock::new(),
            status: OnceLock::new(),
        });
        Self { args, state }
    }

    /// The program as podkit-process supervises it.
    fn program(&self, grace: Duration) -> Program {
        let a = &self.args;
        Program {
            name: "program".into(),
            source: "child".into(),
            argv: a.command.clone(),
            env: Vec::new(),
            cwd: None,
            capture: !a.no_capture,
            terminal: true,
            prefix: None,
            stop: StopPolicy {
                pre_stop: Hook::from_options(
                    a.pre_stop_http.as_deref(),
                    a.pre_stop_exec.as_ref(),
                    reqwest::Method::POST,
                ),
                signal: a.stop_signal,
                grace,
                group: a.signal_group,
            },
            restart: RestartPolicy {
                when: a.restart.into(),
                backoff: BackoffPolicy::exact(a.restart_delay.get(), a.restart_delay_max.get()),
                reset_after: a.restart_delay_max.get(),
            },
        }
    }
}

impl podkit_core::Command for RunArgs {
    const NAME: &'static str = "run";
    const DEFAULT_ADMIN: Option<&'static str> = Some(DEFAULT_ADMIN);

    fn main(self, effective: serde_json::Value) -> i32 {
        let common = self.common.clone();
        podkit_core::launch(Run::new(self), &common, effective)
    }
}

impl Component for Run {
    const NAME: &'static str = "run";
    const DEFAULT_ADMIN: &'static str = DEFAULT_ADMIN;
    type Error = RunError;

    fn setup(&mut self, admin: &mut AdminBuilder, ctx: &Context) {
        let reg = admin.metrics();
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
        let host = supervised::host(ctx.logs.clone(), ctx.readiness.clone()).map_err(RunError::Host)?;
        let _ = self.state.runner.set(host.hooks.clone());
        let mut forward = Forwarder::new().map_err(RunError::Signals)?;

        // A second stop signal exits at once; nothing podkit started may outlive it.
        ctx.shutdown.on_force(podkit_process::tree::kill_everything);

        let mut handle = supervised::spawn(self.program(ctx.grace), host.clone());
        let _ = self.state.status.set(handle.watch());

        if let Some(probe) =
            Hook::from_options(self.args.ready_http.as_deref(), self.args.ready_exec.as_ref(), reqwest::Method::GET)
        {
            ctx.tasks.spawn(probe_loop(probe, host.hooks.clone(), self.state.clone(), ctx.clone(), self.args.clone()));
        }
        let probed = self.args.ready_http.is_some() || self.args.ready_exec.is_some();
        Ok(supervise(&mut handle, &ctx, &mut forward, probed).await)
    }
}

/// Passes signals on to the program until it ends, and stops it when podkit is asked to stop.
async fn supervise(handle: &mut Handle, ctx: &Context, forward: &mut Forwarder, probed: bool) -> i32 {
    let mut reload = ctx.reload.clone();
    let mut status = handle.watch();
    let mut last_pid = None;
    let mut stopping = false;
    let ended = loop {
        tokio::select! {
            ended = handle.wait() => break ended,
            Ok(()) = status.changed() => {
                let pid = status.borrow_and_update().pid;
                if probed && pid.is_some() && pid != last_pid {
                    // A new run is not ready until its own probe says so.
                    ctx.readiness.not_ready("probe", "no successful readiness probe yet");
                }
                last_pid = pid.or(last_pid);
            }
            reason = ctx.shutdown.triggered(), if !stopping => {
                stopping = true;
                // Ctrl-C on a terminal reaches the program as SIGINT; every other stop uses
                // --stop-signal.
                let signal = (reason == StopReason::Interrupt).then_some(Signal::SIGINT);
                handle.stop(StopRequest { signal, grace: None });
            }
            sig = forward.next() => handle.signal(sig),
            _ = reload.requested() => handle.signal(Signal::SIGHUP),
        }
    };
    // The program is done for good (or could not start): let every other task (probes) end.
    if !ctx.shutdown.is_triggered() {
        ctx.shutdown.trigger(StopReason::Completed);
    }
    ended.status()
}

async fn save(state: Arc<State>) -> Response {
    let Some(hook) = &state.save else {
        let body = serde_json::json!({ "error": "no save hook configured; set --save-http or --save-exec" });
        return (StatusCode::NOT_FOUND, Json(body)).into_response();
    };
    if state.running_pid().is_none() {
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
    let mut every = ctx.shutdown.every(args.ready_interval.get());
    let mut was_ok = None;
    while every.tick().await {
        if state.status().and_then(|s| s.pid).is_none() {
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
/// instead; SIGHUP arrives through the reload channel.
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

// === impl ChildCollector ===

/// The program's process metrics, read from /proc at scrape time.
#[derive(Debug)]
struct ChildCollector {
    state: Arc<State>,
}

impl Collector for ChildCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = self.state.status();
        let pid = status.as_ref().and_then(|s| s.pid);
        let stats = pid.and_then(podkit_core::procstat::stats);
        ConstCounter::new(status.as_ref().map_or(0, |s| s.restarts)).encode(encoder.encode_descriptor(
            "restarts",
            "Times the program was restarted",
            None,
            MetricType::Counter,
        )?)?;
        ConstGauge::new(i64::from(stats.is_some())).encode(encoder.encode_descriptor(
            "up",
            "1 while the program is running",
            None,
            MetricType::Gauge,
        )?)?;
        let last = status.and_then(|s| s.last_exit).map_or(-1, |e| i64::from(e.status()));
        ConstGauge::new(last).encode(encoder.encode_descriptor(
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
