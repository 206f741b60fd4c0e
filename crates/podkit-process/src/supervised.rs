//! A supervised program: started, watched, restarted by its policy with backoff, and stopped
//! with its own pre-stop hook, stop signal and grace. Its stop, sweep and kill reach its own
//! process [`Tree`] only, so any number of programs can run side by side under one podkit.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use podkit_core::backoff::BackoffPolicy;
use podkit_core::{LogRing, Readiness};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::command;
use crate::hook::{Hook, Outcome, Runner};
use crate::output::{self, Stream};
use crate::reaper::{Exit, Reaper};
use crate::tree::{TREE_VAR, Tree};

/// What to run and how to treat it.
#[derive(Debug, Clone)]
pub struct Program {
    /// The program's name: its readiness key, and how log lines about it name it.
    pub name: String,
    /// The `target` of the `/logs` records that hold its output lines.
    pub source: String,
    pub argv: Vec<OsString>,
    /// Added to podkit's own environment.
    pub env: Vec<(OsString, OsString)>,
    pub cwd: Option<PathBuf>,
    /// Read its stdout and stderr through pipes (passed through, and kept in `/logs`) rather
    /// than letting it write to podkit's own.
    pub capture: bool,
    /// Hand it podkit's terminal when podkit holds one (a single foreground program only).
    pub terminal: bool,
    /// Put in front of each line it writes, as it passes through (`[app]`); None passes the
    /// bytes through as they came.
    pub prefix: Option<String>,
    pub stop: StopPolicy,
    pub restart: RestartPolicy,
}

/// How a program is stopped.
#[derive(Debug, Clone)]
pub struct StopPolicy {
    /// Runs first; its time counts against the grace, as Kubernetes counts preStop.
    pub pre_stop: Option<Hook>,
    pub signal: Signal,
    /// From the start of the stop to SIGKILL of the whole tree.
    pub grace: Duration,
    /// Signal the program's whole process group, not only the program.
    pub group: bool,
}

/// When a program that exited is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    pub when: Restart,
    pub backoff: BackoffPolicy,
    /// A run at least this long starts the backoff again from its first delay.
    pub reset_after: Duration,
}

impl RestartPolicy {
    pub const NEVER: RestartPolicy = RestartPolicy {
        when: Restart::Never,
        backoff: BackoffPolicy::exact(Duration::from_secs(1), Duration::from_secs(1)),
        reset_after: Duration::from_secs(1),
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    Never,
    /// After a non-zero status or a signal.
    OnFailure,
    Always,
}

impl Restart {
    pub fn restarts_after(self, exit: Exit) -> bool {
        match self {
            Restart::Never => false,
            Restart::OnFailure => !exit.success(),
            Restart::Always => true,
        }
    }
}

/// What the programs of one podkit share.
#[derive(Debug, Clone)]
pub struct Host {
    pub hooks: Runner,
    pub logs: LogRing,
    /// Where each program's readiness (keyed by its name) is kept.
    pub readiness: Readiness,
}

impl Host {
    fn reaper(&self) -> &Reaper {
        self.hooks.reaper()
    }
}

/// Where a program is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Running,
    Stopping,
    /// Exited; waiting out the restart delay.
    BackingOff,
    Ended,
}

/// A program's state, as a status page or a metric shows it.
#[derive(Debug, Clone)]
pub struct Status {
    pub phase: Phase,
    /// The running program's pid.
    pub pid: Option<i32>,
    pub restarts: u64,
    pub last_exit: Option<Exit>,
}

/// How supervision ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It exited and its policy does not restart it.
    Exited(Exit),
    /// It was stopped or killed (or a stop came while it waited to restart: its last exit).
    Stopped(Exit),
    /// It could not be started; the status is the shell's (127: no such program, 126: not
    /// executable).
    NotStarted { status: i32 },
}

impl Ended {
    /// The status a shell would report for it.
    pub fn status(self) -> i32 {
        match self {
            Ended::Exited(e) | Ended::Stopped(e) => e.status(),
            Ended::NotStarted { status } => status,
        }
    }
}

/// Overrides for one stop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StopRequest {
    /// Instead of the policy's stop signal (Ctrl-C reaches the program as SIGINT).
    pub signal: Option<Signal>,
    /// Instead of the policy's grace.
    pub grace: Option<Duration>,
}

#[derive(Debug)]
enum Control {
    Signal(Signal),
    Restart,
    Stop(StopRequest),
    Kill,
}

// === impl Handle ===

/// A supervised program, running under its own task.
#[derive(Debug)]
pub struct Handle {
    name: String,
    tree: Tree,
    control: mpsc::UnboundedSender<Control>,
    status: watch::Receiver<Status>,
    task: Option<JoinHandle<Ended>>,
    ended: Option<Ended>,
}

/// Starts supervising `program`. Dropping the handle stops it as [`Handle::stop`] would.
pub fn spawn(program: Program, host: Host) -> Handle {
    let tree = Tree::new();
    let (control, rx) = mpsc::unbounded_channel();
    let (tx, status) = watch::channel(Status { phase: Phase::Starting, pid: None, restarts: 0, last_exit: None });
    host.readiness.not_ready(program.name.clone(), "not started");
    let name = program.name.clone();
    let sup = Supervisor { program, host, tree: tree.clone(), control: rx, status: tx };
    let task = tokio::spawn(sup.supervise());
    Handle { name, tree, control, status, task: Some(task), ended: None }
}

impl Handle {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// Follows status changes.
    pub fn watch(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// A handle on the program's controls that can be moved elsewhere (a stop running while
    /// the owner does something else).
    pub fn controller(&self) -> Controller {
        Controller { control: self.control.clone() }
    }

    /// Passes `sig` to the running program (or its group, by the stop policy).
    pub fn signal(&self, sig: Signal) {
        let _ = self.control.send(Control::Signal(sig));
    }

    /// Stops the running program by its policy and starts it again at once.
    pub fn restart(&self) {
        let _ = self.control.send(Control::Restart);
    }

    /// Begins the stop sequence: pre-stop hook, stop signal, grace, SIGKILL of the tree.
    pub fn stop(&self, request: StopRequest) {
        let _ = self.control.send(Control::Stop(request));
    }

    /// SIGKILLs the whole tree now.
    pub fn kill(&self) {
        let _ = self.control.send(Control::Kill);
    }

    /// The live processes of the program's tree.
    pub async fn pids(&self) -> Vec<i32> {
        let root = self.status.borrow().pid;
        self.tree.members_async(root).await
    }

    /// Resolves when supervision has ended: the program exited for good, or was stopped, and
    /// nothing of its tree is left.
    pub async fn wait(&mut self) -> Ended {
        if let Some(ended) = self.ended {
            return ended;
        }
        let ended = match self.task.as_mut() {
            Some(task) => task.await.unwrap_or(Ended::Stopped(Exit::Signal(Signal::SIGKILL as i32))),
            None => Ended::Stopped(Exit::Signal(Signal::SIGKILL as i32)),
        };
        self.task = None;
        self.ended = Some(ended);
        ended
    }
}

/// The controls of a supervised program, apart from its [`Handle`].
#[derive(Debug, Clone)]
pub struct Controller {
    control: mpsc::UnboundedSender<Control>,
}

impl Controller {
    /// See [`Handle::stop`].
    pub fn stop(&self, request: StopRequest) {
        let _ = self.control.send(Control::Stop(request));
    }

    /// See [`Handle::restart`].
    pub fn restart(&self) {
        let _ = self.control.send(Control::Restart);
    }
}

// === impl Supervisor ===

struct Supervisor {
    program: Program,
    host: Host,
    tree: Tree,
    control: mpsc::UnboundedReceiver<Control>,
    status: watch::Sender<Status>,
}

/// How one run ended.
enum RunEnd {
    Exited,
    Stopped,
    Restart,
}

impl Supervisor {
    async fn supervise(mut self) -> Ended {
        let mut backoff = self.program.restart.backoff.start();
        loop {
            let started = Instant::now();
            let (exit, end) = match self.run_once().await {
                Ok(r) => r,
                Err(status) => {
                    self.status.send_modify(|s| s.phase = Phase::Ended);
                    return Ended::NotStarted { status };
                }
            };
            match end {
                RunEnd::Stopped => return self.end(Ended::Stopped(exit)),
                RunEnd::Restart => {
                    tracing::info!(program = %self.program.name, "restarting the program on request");
                    self.status.send_modify(|s| s.restarts += 1);
                    continue;
                }
                RunEnd::Exited => {}
            }
            if !self.program.restart.when.restarts_after(exit) {
                return self.end(Ended::Exited(exit));
            }
            if started.elapsed() >= self.program.restart.reset_after {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            tracing::info!(program = %self.program.name, %exit, delay = %podkit_core::Duration(delay), "restarting the program");
            self.status.send_modify(|s| s.phase = Phase::BackingOff);
            let until = Instant::now() + delay;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    c = self.control.recv() => match c {
                        Some(Control::Restart) => break,
                        Some(Control::Signal(_)) => {} // nothing is running to receive it
                        Some(Control::Stop(_) | Control::Kill) | None => return self.end(Ended::Stopped(exit)),
                    },
                }
            }
            self.status.send_modify(|s| s.restarts += 1);
        }
    }

    fn end(&self, ended: Ended) -> Ended {
        self.status.send_modify(|s| s.phase = Phase::Ended);
        ended
    }

    /// Starts the program once and waits until it exits, is stopped, or is to be restarted;
    /// then sweeps what it left. `Err` is the exit status when it could not be started.
    async fn run_once(&mut self) -> Result<(Exit, RunEnd), i32> {
        let p = &self.program;
        let mut cmd = command::command(&p.argv, p.terminal);
        cmd.env(TREE_VAR, self.tree.marker());
        cmd.envs(p.env.iter().map(|(k, v)| (k, v)));
        if let Some(dir) = &p.cwd {
            cmd.current_dir(dir);
        }
        if p.capture {
            cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        }
        let exe = p.argv[0].to_string_lossy().into_owned();
        let mut spawned = match self.host.reaper().spawn(&mut cmd) {
            Ok(s) => s,
            Err(e) => {
                let status = command::spawn_failure_status(&e);
                tracing::error!(program = %exe, error = %e, status, "cannot start the program");
                self.host.readiness.not_ready(p.name.clone(), format!("cannot start {exe}: {e}"));
                return Err(status);
            }
        };
        drop(cmd);
        let pid = spawned.pid;
        self.status.send_modify(|s| {
            s.phase = Phase::Running;
            s.pid = Some(pid);
        });
        self.host.readiness.ready(&p.name);
        tracing::info!(pid, program = %exe, "program started");

        let mut pumps = Vec::new();
        for (fd, stream) in [
            (spawned.child.stdout.take().map(std::os::fd::OwnedFd::from), Stream::Stdout),
            (spawned.child.stderr.take().map(std::os::fd::OwnedFd::from), Stream::Stderr),
        ] {
            if let Some(fd) = fd {
                pumps.push(tokio::spawn(output::pump(
                    fd,
                    stream,
                    p.source.clone(),
                    self.host.logs.clone(),
                    p.prefix.clone(),
                )));
            }
        }

        let mut exit_rx = spawned.exit;
        let group = p.stop.group;
        let (exit, end, deadline) = loop {
            tokio::select! {
                e = &mut exit_rx => break (lost(e), RunEnd::Exited, None),
                c = self.control.recv() => match c {
                    Some(Control::Signal(sig)) => {
                        tracing::debug!(signal = %sig, pid, "forwarding signal");
                        command::signal(pid, sig, group);
                    }
                    Some(Control::Restart) => {
                        let (e, d) = self.stop(pid, &mut exit_rx, StopRequest::default()).await;
                        break (e, RunEnd::Restart, Some(d));
                    }
                    Some(Control::Stop(req)) => {
                        let (e, d) = self.stop(pid, &mut exit_rx, req).await;
                        break (e, RunEnd::Stopped, Some(d));
                    }
                    Some(Control::Kill) => {
                        self.tree.kill(Some(pid)).await;
                        break (lost(exit_rx.await), RunEnd::Stopped, Some(Instant::now()));
                    }
                    None => {
                        let (e, d) = self.stop(pid, &mut exit_rx, StopRequest::default()).await;
                        break (e, RunEnd::Stopped, Some(d));
                    }
                },
            }
        };

        let name = self.program.name.clone();
        self.status.send_modify(|s| {
            s.pid = None;
            s.last_exit = Some(exit);
        });
        self.host.readiness.not_ready(name, format!("exited ({exit})"));
        tracing::info!(pid, %exit, "program ended");

        // Whatever the program left running goes with it, so a restart starts clean and nothing
        // of it outlives its supervision.
        self.sweep(pid, deadline).await;
        // The pipes close when the last process holding them is gone; one that escaped the
        // sweep (uninterruptible sleep) must not hold supervision up.
        let _ = tokio::time::timeout(Duration::from_secs(2), futures_util::future::join_all(pumps)).await;
        Ok((exit, end))
    }

    /// The stop sequence: pre-stop hook, stop signal, grace, SIGKILL to the tree. Returns the
    /// exit and when the grace runs out.
    async fn stop(&mut self, pid: i32, exit: &mut oneshot::Receiver<Exit>, req: StopRequest) -> (Exit, Instant) {
        self.status.send_modify(|s| s.phase = Phase::Stopping);
        let policy = self.program.stop.clone();
        let grace = req.grace.unwrap_or(policy.grace);
        let deadline = Instant::now() + grace;
        if let Some(hook) = &policy.pre_stop {
            tracing::info!(program = %self.program.name, "running the pre-stop hook");
            let outcome = tokio::select! {
                o = self.host.hooks.run(hook, "pre-stop", grace) => o,
                e = &mut *exit => {
                    tracing::info!("the program exited while the pre-stop hook ran");
                    return (lost(e), deadline);
                }
            };
            self.note_pre_stop(&outcome);
        }
        let sig = req.signal.unwrap_or(policy.signal);
        tracing::info!(pid, signal = %sig, grace = %podkit_core::Duration(grace), "stopping the program");
        command::signal(pid, sig, policy.group);
        loop {
            tokio::select! {
                e = &mut *exit => return (lost(e), deadline),
                _ = tokio::time::sleep_until(deadline) => break,
                c = self.control.recv() => match c {
                    Some(Control::Kill) => break,
                    Some(Control::Signal(sig)) => command::signal(pid, sig, policy.group),
                    // Already stopping; a closed channel changes nothing either.
                    Some(Control::Stop(_) | Control::Restart) => {}
                    None => std::future::pending::<()>().await,
                },
            }
        }
        tracing::warn!(
            pid,
            "the program did not stop within the grace period; sending SIGKILL to it and everything it started"
        );
        self.tree.kill(Some(pid)).await;
        (lost(exit.await), deadline)
    }

    fn note_pre_stop(&self, outcome: &Outcome) {
        if outcome.ok {
            tracing::info!(detail = %outcome.detail, duration_ms = outcome.duration_ms, output = %outcome.output.trim_end(), "pre-stop hook done");
        } else {
            tracing::warn!(detail = %outcome.detail, output = %outcome.output, "pre-stop hook failed; stopping anyway");
        }
    }

    /// Stops what the program left behind: the stop signal, then SIGKILL after the grace (or at
    /// the stop's own deadline when a stop is under way).
    async fn sweep(&self, root: i32, deadline: Option<Instant>) {
        let left = self.tree.members_async(Some(root)).await;
        if left.is_empty() {
            return;
        }
        let sig = self.program.stop.signal;
        tracing::info!(processes = ?left, signal = %sig, "stopping processes the program left behind");
        let tree = self.tree.clone();
        let _ = tokio::task::spawn_blocking(move || tree.signal(Some(root), sig)).await;
        let fresh = Instant::now() + self.program.stop.grace;
        let deadline = deadline.map_or(fresh, |d| d.min(fresh));
        while Instant::now() < deadline {
            if self.tree.members_async(Some(root)).await.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!("processes left behind did not stop within the grace period; sending SIGKILL");
        self.tree.kill(Some(root)).await;
    }
}

/// An exit whose status was lost (the reaper is gone) counts as a kill.
fn lost(e: Result<Exit, oneshot::error::RecvError>) -> Exit {
    e.unwrap_or(Exit::Signal(Signal::SIGKILL as i32))
}

/// The reaper and hook runner a podkit that supervises programs needs: starts the reaper and
/// makes podkit the subreaper of what its programs leave behind.
pub fn host(logs: LogRing, readiness: Readiness) -> std::io::Result<Host> {
    let reaper: Arc<Reaper> = Reaper::start()?;
    command::become_subreaper();
    let client = podkit_core::http::client(Duration::from_secs(30)).map_err(std::io::Error::other)?;
    Ok(Host { hooks: Runner::new(reaper, client), logs, readiness })
}

/// The restart policy under paused time: the delays between runs are exactly the backoff's,
/// whatever the machine's speed.
#[cfg(test)]
mod tests {
    use super::*;

    fn crashing(argv: &[&str], reset_after: Duration) -> Program {
        Program {
            name: "app".into(),
            source: "app".into(),
            argv: argv.iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: None,
            capture: false,
            terminal: false,
            prefix: None,
            stop: StopPolicy { pre_stop: None, signal: Signal::SIGTERM, grace: Duration::from_secs(5), group: false },
            restart: RestartPolicy {
                when: Restart::OnFailure,
                backoff: BackoffPolicy::exact(Duration::from_secs(1), Duration::from_secs(8)),
                reset_after,
            },
        }
    }

    fn test_host() -> Host {
        host(LogRing::new(100), Readiness::new()).expect("host")
    }

    /// Waits for the next start of the program and says when it came (virtual time).
    async fn next_start(status: &mut watch::Receiver<Status>, after: u64) -> Instant {
        status.wait_for(|s| s.phase == Phase::Running && s.restarts >= after).await.expect("supervisor alive");
        Instant::now()
    }

    #[tokio::test(start_paused = true)]
    async fn a_crash_loop_backs_off_doubling_to_the_cap() {
        let mut h = spawn(crashing(&["sh", "-c", "exit 3"], Duration::from_secs(60)), test_host());
        let mut status = h.watch();
        let mut starts = Vec::new();
        for n in 0..6 {
            starts.push(next_start(&mut status, n).await);
        }
        let gaps: Vec<u64> = starts.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
        assert_eq!(gaps, [1, 2, 4, 8, 8]);
        // A stop while it waits to restart ends supervision at once, with the last exit.
        status.wait_for(|s| s.phase == Phase::BackingOff).await.unwrap();
        h.stop(StopRequest::default());
        assert_eq!(h.wait().await, Ended::Stopped(Exit::Code(3)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_run_resets_the_backoff_and_a_restart_request_skips_it() {
        let mut h = spawn(crashing(&["sleep", "1000"], Duration::from_secs(60)), test_host());
        let mut status = h.watch();
        let mut kill_and_time_restart = async |n: u64, h: &Handle| {
            next_start(&mut status, n).await;
            let killed = Instant::now();
            h.signal(Signal::SIGKILL);
            (next_start(&mut status, n + 1).await - killed).as_secs()
        };
        assert_eq!(kill_and_time_restart(0, &h).await, 1);
        assert_eq!(kill_and_time_restart(1, &h).await, 2);
        assert_eq!(kill_and_time_restart(2, &h).await, 4);
        // This run lasts past reset_after: the next delay is the first one again.
        tokio::time::sleep(Duration::from_secs(90)).await;
        assert_eq!(kill_and_time_restart(3, &h).await, 1);
        assert_eq!(kill_and_time_restart(4, &h).await, 2);
        // A restart request during the backoff starts it at once.
        h.signal(Signal::SIGKILL);
        status.wait_for(|s| s.phase == Phase::BackingOff).await.unwrap();
        let asked = Instant::now();
        h.restart();
        assert_eq!(next_start(&mut status, 6).await, asked);
        h.kill();
        h.wait().await;
    }
}
