//! Reaping: every child and every orphan that reparents to podkit is waited for here.
//!
//! As PID 1 (or a subreaper) podkit must `waitpid(-1)` to collect orphans, and a blanket wait
//! would steal the exit status of processes podkit started itself. So all of them are started
//! through [`Reaper::spawn`], which records the pid in a table under the same lock the reaping
//! loop holds: a status is always delivered to whoever started the process, and everything else
//! is an orphan, reaped and counted. No podkit command may use `tokio::process`, which reaps on
//! its own.

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// The status a shell would report: the exit code, or 128 + the signal number.
    pub fn status(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }

    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => match nix::sys::signal::Signal::try_from(s) {
                Ok(sig) => write!(f, "killed by {sig}"),
                Err(_) => write!(f, "killed by signal {s}"),
            },
        }
    }
}

/// A process started through the reaper: its pid, and its exit once it is reaped.
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    pub child: Child,
    pub exit: oneshot::Receiver<Exit>,
}

#[derive(Debug, Default)]
pub struct Reaper {
    waiting: Mutex<HashMap<i32, oneshot::Sender<Exit>>>,
    orphans: AtomicU64,
}

impl Reaper {
    /// The process' reaper, started on first use: the reaping loop runs on SIGCHLD. Call it
    /// inside the runtime, before anything is spawned.
    pub fn start() -> io::Result<Arc<Reaper>> {
        static REAPER: std::sync::OnceLock<Arc<Reaper>> = std::sync::OnceLock::new();
        static STARTING: Mutex<()> = Mutex::new(());
        let _once = STARTING.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = REAPER.get() {
            return Ok(r.clone());
        }
        let mut sigchld = signal(SignalKind::child())?;
        let reaper = Arc::new(Reaper::default());
        reaper.reap();
        let r = reaper.clone();
        tokio::spawn(async move {
            // SIGCHLDs coalesce; each wake-up reaps everything that has exited.
            while sigchld.recv().await.is_some() {
                r.reap();
            }
        });
        let _ = REAPER.set(reaper.clone());
        Ok(reaper)
    }

    /// Spawns `cmd` and registers it, so that its exit reaches the returned receiver.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<Spawned> {
        let mut waiting = self.lock();
        // The one place a process is started: the pid enters the table before the reaping loop
        // can see its exit.
        #[allow(clippy::disallowed_methods)]
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        let (tx, exit) = oneshot::channel();
        waiting.insert(pid, tx);
        Ok(Spawned { pid, child, exit })
    }

    /// How many processes podkit did not start but reaped (orphans reparented to it).
    pub fn orphans_reaped(&self) -> u64 {
        self.orphans.load(Ordering::Relaxed)
    }

    fn reap(&self) {
        let mut waiting = self.lock();
        loop {
            let (pid, exit) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _core)) => (pid, Exit::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Err(Errno::EINTR) => continue,
                Ok(_) => continue, // stopped/continued: not requested, not an exit
                Err(e) => {
                    tracing::warn!(error = %e, "waitpid failed");
                    return;
                }
            };
            match waiting.remove(&pid.as_raw()) {
                // The receiver may be gone (a timed-out hook); the process is reaped either way.
                Some(tx) => drop(tx.send(exit)),
                None => {
                    self.orphans.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(pid = pid.as_raw(), %exit, "reaped an orphaned process");
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, oneshot::Sender<Exit>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}
