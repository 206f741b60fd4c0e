//! The one shutdown vocabulary every command uses.
//!
//! - The first SIGTERM or SIGINT, or `POST /lifecycle/shutdown`, *triggers* a graceful stop:
//!   the [`Shutdown`] token is cancelled and every task that holds it drains.
//! - A second SIGTERM or SIGINT *forces* an exit at once: the hooks registered with
//!   [`Shutdown::on_force`] run (a command that started processes kills them there) and the
//!   process exits.
//! - SIGHUP is a reload request, delivered through [`Reload`].

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Why a graceful stop began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// SIGTERM: the orchestrator's stop.
    Terminate,
    /// SIGINT: Ctrl-C on a terminal.
    Interrupt,
    /// `POST /lifecycle/shutdown`.
    AdminRequest,
    /// The command finished on its own (a wrapped process exited, a queue drained).
    Completed,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StopReason::Terminate => "SIGTERM",
            StopReason::Interrupt => "SIGINT",
            StopReason::AdminRequest => "admin shutdown request",
            StopReason::Completed => "work completed",
        })
    }
}

type ForceHook = Box<dyn Fn() + Send + Sync>;

/// A graceful-stop signal shared by every task of a command. Cloning shares it.
#[derive(Clone)]
pub struct Shutdown {
    token: CancellationToken,
    inner: Arc<Inner>,
}

struct Inner {
    reason: OnceLock<StopReason>,
    force_hooks: Mutex<Vec<ForceHook>>,
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown").field("reason", &self.reason()).finish()
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self {
            token: CancellationToken::new(),
            inner: Arc::new(Inner { reason: OnceLock::new(), force_hooks: Mutex::new(Vec::new()) }),
        }
    }

    /// Begins a graceful stop. The first reason given is kept; later calls change nothing.
    pub fn trigger(&self, reason: StopReason) {
        if self.inner.reason.set(reason).is_ok() {
            tracing::info!(%reason, "stopping");
        }
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    pub fn reason(&self) -> Option<StopReason> {
        self.inner.reason.get().copied()
    }

    /// Resolves when a graceful stop has begun.
    pub async fn triggered(&self) -> StopReason {
        self.token.cancelled().await;
        self.reason().unwrap_or(StopReason::Terminate)
    }

    /// The underlying token, for APIs that take one (`run_until_cancelled`, child tokens).
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// A ticker for "every `period` until the stop begins": the first tick is at once.
    ///
    /// ```ignore
    /// let mut every = ctx.shutdown.every(Duration::from_secs(2));
    /// while every.tick().await { /* … */ }
    /// ```
    pub fn every(&self, period: std::time::Duration) -> Every {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Every { interval, shutdown: self.clone() }
    }

    /// Like [`Shutdown::every`], with the first tick one period from now.
    pub fn every_after(&self, period: std::time::Duration) -> Every {
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Every { interval, shutdown: self.clone() }
    }

    /// Registers work that must happen even on a forced exit (killing processes podkit started).
    /// Hooks run on the signal-handling task, so they must not block for long.
    pub fn on_force(&self, hook: impl Fn() + Send + Sync + 'static) {
        self.inner.force_hooks.lock().unwrap_or_else(|e| e.into_inner()).push(Box::new(hook));
    }

    /// Runs the force hooks and exits the process with `code`.
    pub fn force_exit(&self, code: i32) -> ! {
        tracing::warn!(code, "second stop signal: exiting at once");
        for hook in self.inner.force_hooks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            hook();
        }
        std::process::exit(code)
    }
}

/// See [`Shutdown::every`].
#[derive(Debug)]
pub struct Every {
    interval: tokio::time::Interval,
    shutdown: Shutdown,
}

impl Every {
    /// Waits for the next tick; `false` once a stop has begun (then the loop ends).
    pub async fn tick(&mut self) -> bool {
        if self.shutdown.is_triggered() {
            return false;
        }
        tokio::select! {
            _ = self.interval.tick() => !self.shutdown.is_triggered(),
            _ = self.shutdown.triggered() => false,
        }
    }
}

/// Reload requests (SIGHUP). Each request bumps a counter; a component that can reload waits
/// for it to change.
#[derive(Debug, Clone)]
pub struct Reload {
    rx: watch::Receiver<u64>,
}

impl Reload {
    /// Resolves at the next reload request after the last one this handle saw.
    pub async fn requested(&mut self) {
        if self.rx.changed().await.is_err() {
            // The signal task is gone (the process is exiting): no reload will ever come.
            std::future::pending::<()>().await;
        }
    }
}

/// Installs the SIGTERM/SIGINT/SIGHUP handlers. Must be called inside the runtime.
pub fn install_signal_handlers(shutdown: Shutdown) -> std::io::Result<Reload> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (reload_tx, rx) = watch::channel(0u64);
    tokio::spawn(async move {
        loop {
            let (reason, code) = tokio::select! {
                _ = term.recv() => (StopReason::Terminate, 128 + libc_sig::SIGTERM),
                _ = int.recv() => (StopReason::Interrupt, 128 + libc_sig::SIGINT),
                _ = hup.recv() => {
                    reopen_log("SIGHUP");
                    tracing::info!("SIGHUP: reload requested");
                    reload_tx.send_modify(|n| *n += 1);
                    continue;
                }
            };
            if shutdown.is_triggered() {
                shutdown.force_exit(code);
            }
            shutdown.trigger(reason);
        }
    });
    Ok(Reload { rx })
}

/// Reopens `--log-file` (logrotate renamed it) and says so in the new file.
fn reopen_log(signal: &str) {
    match crate::logs::reopen() {
        Ok(Some(path)) => tracing::info!(path = %path.display(), "{signal}: log file reopened"),
        Ok(None) => {}
        Err(e) => tracing::error!(error = %e, "{signal}: cannot reopen the log file; logging to the old one"),
    }
}

/// Installs the signals a classic daemon's log answers to, for commands that stand in for one
/// (`podkit ambassador` for nutcracker): SIGUSR1 reopens `--log-file`, SIGTTIN and SIGTTOU log
/// one level more and one level less, SIGUSR2 is noted and changes nothing. Must be called
/// inside the runtime; the handlers live as long as it.
pub fn install_log_signal_handlers() -> std::io::Result<()> {
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    let mut ttin = signal(SignalKind::from_raw(nix::sys::signal::Signal::SIGTTIN as i32))?;
    let mut ttou = signal(SignalKind::from_raw(nix::sys::signal::Signal::SIGTTOU as i32))?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = usr1.recv() => reopen_log("SIGUSR1"),
                _ = usr2.recv() => tracing::info!("SIGUSR2: nothing to do"),
                _ = ttin.recv() => {
                    if let Some(level) = crate::logs::more_verbose() {
                        tracing::warn!(log_level = %level, "SIGTTIN: log level raised");
                    }
                }
                _ = ttou.recv() => {
                    if let Some(level) = crate::logs::less_verbose() {
                        tracing::warn!(log_level = %level, "SIGTTOU: log level lowered");
                    }
                }
            }
        }
    });
    Ok(())
}

/// Signal numbers used for exit statuses (128 + N), without pulling libc into every crate.
mod libc_sig {
    pub(super) const SIGINT: i32 = nix::sys::signal::Signal::SIGINT as i32;
    pub(super) const SIGTERM: i32 = nix::sys::signal::Signal::SIGTERM as i32;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn every_ticks_until_the_stop() {
        let s = Shutdown::new();
        let mut every = s.every(std::time::Duration::from_secs(1));
        let start = tokio::time::Instant::now();
        assert!(every.tick().await, "the first tick is at once");
        assert!(every.tick().await);
        assert_eq!(start.elapsed(), std::time::Duration::from_secs(1));
        s.trigger(StopReason::Terminate);
        assert!(!every.tick().await);
        let mut after = s.every_after(std::time::Duration::from_secs(1));
        assert!(!after.tick().await, "a stopped shutdown never ticks");
    }

    #[tokio::test]
    async fn first_reason_wins_and_waiters_wake() {
        let s = Shutdown::new();
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.triggered().await }
        });
        s.trigger(StopReason::AdminRequest);
        s.trigger(StopReason::Terminate);
        assert_eq!(waiter.await.unwrap(), StopReason::AdminRequest);
        assert_eq!(s.reason(), Some(StopReason::AdminRequest));
    }
}
