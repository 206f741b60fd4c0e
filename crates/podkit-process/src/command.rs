//! Building the commands podkit starts, and signalling what they became.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::errno::Errno;
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, kill, killpg, sigprocmask};
use nix::unistd::{Pid, getpgrp, getpid, setpgid, tcgetpgrp, tcsetpgrp};

/// Builds the command for a program (or a hook): argv as given, never a shell, in a process
/// group of its own so that it and everything it starts can be signalled together.
///
/// With `terminal`, the program is handed podkit's terminal when podkit holds it (`podkit run`
/// in a foreground shell); programs that share podkit with others never take it.
///
/// podkit's own `PODKIT_*` variables (its options, and what a podkit above it set) are not
/// passed on: a podkit command run by another must not read the outer one's `PODKIT_ADMIN` or
/// `PODKIT_GRACE`. What podkit hands a program on purpose (`PODKIT_INPUT`, `PODKIT_HOOK`, …)
/// is set by the caller after this.
pub fn command(argv: &[OsString], terminal: bool) -> Command {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    for (k, _) in std::env::vars_os() {
        if k.as_encoded_bytes().starts_with(b"PODKIT_") {
            cmd.env_remove(k);
        }
    }
    // A podkit started in the background of a shell must not steal the shell's terminal.
    let take_tty = terminal && {
        let stdin = std::io::stdin();
        stdin.is_terminal() && tcgetpgrp(&stdin).is_ok_and(|fg| fg == getpgrp())
    };
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // system calls (setpgid, prctl, sigaction, sigprocmask, tcsetpgrp); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
            // If podkit itself is killed (SIGKILL, OOM), what it started goes with it rather
            // than running on unsupervised.
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            if take_tty {
                // tcsetpgrp from a background group raises SIGTTOU unless it is ignored.
                nix::sys::signal::signal(Signal::SIGTTOU, SigHandler::SigIgn)?;
                let _ = tcsetpgrp(std::io::stdin(), getpid());
            }
            // Start the program with default dispositions and nothing blocked, whatever podkit
            // itself had installed.
            for sig in [Signal::SIGTTOU, Signal::SIGTTIN, Signal::SIGTSTP, Signal::SIGPIPE] {
                nix::sys::signal::signal(sig, SigHandler::SigDfl)?;
            }
            sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
            Ok(())
        });
    }
    cmd
}

/// SIGKILLs a process group when dropped: ties a helper process' life to the future or scope
/// that started it.
#[derive(Debug)]
pub struct KillGroupOnDrop(pub i32);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        signal(self.0, Signal::SIGKILL, true);
    }
}

/// Sends `sig` to `pid`, or to its whole process group. A process that is already gone is not
/// an error.
pub fn signal(pid: i32, sig: Signal, group: bool) {
    let res = if group { killpg(Pid::from_raw(pid), sig) } else { kill(Pid::from_raw(pid), sig) };
    if let Err(e) = res
        && e != Errno::ESRCH
    {
        tracing::warn!(pid, signal = %sig, error = %e, "cannot signal process");
    }
}

/// The status a shell gives a command it could not start: 127 when there is no such program,
/// 126 when it cannot be executed.
pub fn spawn_failure_status(e: &std::io::Error) -> i32 {
    if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 }
}

/// Parses a signal name or number: `SIGTERM`, `TERM`, `term` or `15`.
pub fn parse_signal(s: &str) -> Result<Signal, String> {
    let upper = s.trim().to_ascii_uppercase();
    let parsed = match upper.parse::<i32>() {
        Ok(n) => Signal::try_from(n).ok(),
        Err(_) => {
            let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
            name.parse::<Signal>().ok()
        }
    };
    match parsed {
        Some(Signal::SIGKILL | Signal::SIGSTOP) | None => {
            Err(format!("unknown or unusable signal {s:?}; expected a name or number such as SIGTERM, INT or 15"))
        }
        Some(sig) => Ok(sig),
    }
}

/// Makes podkit the reaper of orphaned descendants when it is not already PID 1, so that what
/// a program leaves behind stays within podkit's reach.
pub fn become_subreaper() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_and_number() {
        assert_eq!(parse_signal("SIGTERM").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("int").unwrap(), Signal::SIGINT);
        assert_eq!(parse_signal("10").unwrap(), Signal::SIGUSR1);
        assert!(parse_signal("SIGNOPE").unwrap_err().contains("SIGNOPE"));
        assert!(parse_signal("SIGKILL").is_err(), "SIGKILL cannot be handled, so no graceful stop");
    }
}
