//! Starting processes (the wrapped program, hooks) and stopping them and everything they
//! started.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, kill, killpg, sigprocmask};
use nix::unistd::{Pid, getpgrp, getpid, setpgid, tcgetpgrp, tcsetpgrp};

/// Builds the command for the wrapped process (or a hook): argv as given, never a shell, in a
/// process group of its own so that it and everything it starts can be signalled together.
pub fn command(argv: &[OsString], capture: bool) -> Command {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    if capture {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    // Hand the terminal to the child only when podkit itself holds it; a podkit started in the
    // background of a shell must not steal the shell's terminal.
    let stdin = std::io::stdin();
    let take_tty = stdin.is_terminal() && tcgetpgrp(&stdin).is_ok_and(|fg| fg == getpgrp());
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

/// Sends `sig` to the process group `pgid` and to every live descendant of podkit. Returns how
/// many descendants were signalled.
pub fn signal_all(pgid: Option<i32>, sig: Signal) -> usize {
    if let Some(pgid) = pgid {
        let _ = killpg(Pid::from_raw(pgid), sig);
    }
    let me = std::process::id() as i32;
    let mut n = 0;
    for pid in live_descendants(me) {
        if kill(Pid::from_raw(pid), sig).is_ok() {
            n += 1;
        }
    }
    n
}

/// SIGKILLs the group and every descendant until none is left alive (zombies are left to the
/// reaper). A process that forks while being killed is caught by the next pass.
pub fn kill_all(pgid: Option<i32>) {
    for _ in 0..200 {
        if signal_all(pgid, Signal::SIGKILL) == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    tracing::error!("processes survived repeated SIGKILL (uninterruptible sleep?)");
}

/// [`kill_all`] for async code: the /proc scans run on the blocking pool and the pauses do not
/// hold the runtime's thread, so signals and the admin API keep being served meanwhile.
pub async fn kill_all_async(pgid: Option<i32>) {
    for _ in 0..200 {
        let signalled = tokio::task::spawn_blocking(move || signal_all(pgid, Signal::SIGKILL)).await.unwrap_or(0);
        if signalled == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tracing::error!("processes survived repeated SIGKILL (uninterruptible sleep?)");
}

/// [`live_descendants`] on the blocking pool.
pub async fn live_descendants_async(root: i32) -> Vec<i32> {
    tokio::task::spawn_blocking(move || live_descendants(root)).await.unwrap_or_default()
}

/// Descendants of `root` that are not zombies.
pub fn live_descendants(root: i32) -> Vec<i32> {
    crate::procstat::descendants(root).into_iter().filter(|&pid| !is_zombie(pid)).collect()
}

fn is_zombie(pid: i32) -> bool {
    // /proc/PID/stat: "pid (comm) S ..."; comm may contain spaces and parentheses.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 1..].trim_start().starts_with(['Z', 'X'])))
        .unwrap_or(true)
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

    #[test]
    fn zombie_detection_reads_state_after_the_command_name() {
        assert!(!is_zombie(std::process::id() as i32));
        assert!(is_zombie(i32::MAX), "a pid that does not exist is not alive");
    }
}
