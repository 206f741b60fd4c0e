//! Containment: a small init that runs one program and makes sure that nothing the program
//! started outlives it, or outlives podkit, even when podkit is SIGKILLed.
//!
//! A parent-death signal reaches only a direct child, so a program's own children would run on
//! after a `kill -9` of podkit. The shim closes that gap without privileges: podkit runs
//! `podkit __contain [--remove DIR] -- PROGRAM…`, a blocking process (no runtime) that
//!
//! - asks for SIGTERM when podkit dies, and registers as a child subreaper, so every orphan of
//!   the program is reparented to it rather than to PID 1;
//! - runs the program in its own process group (the shim's), so podkit's group signals and its
//!   group kill reach the program directly (the shim takes the signals it watches with
//!   sigwait and does not pass them on, so the program never gets one twice);
//! - when the program exits, kills whatever the program left (its group and every descendant),
//!   and exits with the program's status (re-raising the signal that ended it);
//! - when podkit is gone (SIGTERM with another parent than at start), kills everything below
//!   it, removes `DIR` (the item's private directory), and exits.
//!
//! Only a SIGKILL of the shim itself, which podkit never sends while it lives, leaves the
//! program's grandchildren behind: the direct program still dies with the shim (its own
//! parent-death signal).

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, getpid, getppid};

/// The hidden first argument that makes `podkit` the shim.
pub const ARG: &str = "__contain";

/// The argv that runs `argv` contained: this binary as the shim, then the program. `remove` is
/// a directory the shim deletes if podkit dies first.
pub fn wrap(argv: &[OsString], remove: Option<&std::path::Path>) -> Vec<OsString> {
    wrap_in(argv, remove, &[])
}

/// Like [`wrap`], with the shim (and so everything the program starts) moved into each of
/// `cgroups` (directories of a cgroup hierarchy) before the program starts.
pub fn wrap_in(argv: &[OsString], remove: Option<&std::path::Path>, cgroups: &[PathBuf]) -> Vec<OsString> {
    let exe = std::env::current_exe().map(OsString::from).unwrap_or_else(|_| OsString::from("/proc/self/exe"));
    let mut out = vec![exe, OsString::from(ARG), OsString::from("--parent"), OsString::from(getpid().to_string())];
    if let Some(dir) = remove {
        out.push(OsString::from("--remove"));
        out.push(dir.as_os_str().to_owned());
    }
    for g in cgroups {
        out.push(OsString::from("--cgroup"));
        out.push(g.as_os_str().to_owned());
    }
    out.push(OsString::from("--"));
    out.extend(argv.iter().cloned());
    out
}

/// Signals the shim takes (and leaves to the program, which gets them through the group).
const FORWARDED: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// The shim's `main`: `args` are what follows [`ARG`]. Returns only on a usage error; otherwise
/// it exits with the program's status.
pub fn main(args: &[OsString]) -> i32 {
    let mut parent: Option<i32> = None;
    let mut remove: Option<PathBuf> = None;
    let mut cgroups: Vec<PathBuf> = Vec::new();
    let mut rest = args;
    loop {
        match rest.first().and_then(|a| a.to_str()) {
            Some("--cgroup") => {
                cgroups.extend(rest.get(1).map(PathBuf::from));
                rest = &rest[2.min(rest.len())..];
            }
            Some("--parent") => {
                parent = rest.get(1).and_then(|p| p.to_str()).and_then(|p| p.parse().ok());
                rest = &rest[2.min(rest.len())..];
            }
            Some("--remove") => {
                remove = rest.get(1).map(PathBuf::from);
                rest = &rest[2.min(rest.len())..];
            }
            Some("--") => {
                rest = &rest[1..];
                break;
            }
            _ => {
                eprintln!("podkit {ARG}: usage: podkit {ARG} --parent PID [--remove DIR] -- PROGRAM [ARGS…]");
                return 64;
            }
        }
    }
    let (Some(parent), Some(program)) = (parent, rest.first()) else {
        eprintln!("podkit {ARG}: usage: podkit {ARG} --parent PID [--remove DIR] -- PROGRAM [ARGS…]");
        return 64;
    };
    let mut watched = SigSet::empty();
    for s in FORWARDED.into_iter().chain([Signal::SIGCHLD]) {
        watched.add(s);
    }
    // Everything the shim handles is taken synchronously with sigwait; blocked before the
    // parent check so that a death in between is not missed.
    let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&watched), None);
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM);
    let _ = nix::sys::prctl::set_child_subreaper(true);
    let orphaned = || getppid().as_raw() != parent;
    if orphaned() {
        cleanup(None, remove.as_deref());
        return 137;
    }
    // Into the container's cgroups before the program exists: everything it starts is inside.
    for g in &cgroups {
        if let Err(e) = std::fs::write(g.join("cgroup.procs"), getpid().to_string()) {
            eprintln!("podkit: cannot join the cgroup {}: {e}", g.display());
        }
    }
    let mut cmd = Command::new(program);
    cmd.args(&rest[1..]);
    // SAFETY: runs in the forked child before exec, with async-signal-safe calls only.
    unsafe {
        cmd.pre_exec(|| {
            // If the shim itself is SIGKILLed, the program does not run on alone.
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            for sig in FORWARDED {
                nix::sys::signal::signal(sig, SigHandler::SigDfl)?;
            }
            sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
            Ok(())
        });
    }
    // A stop that came to the group before the program existed never reached it: it is passed
    // on once the program runs.
    let early = pending(&FORWARDED);
    #[allow(clippy::disallowed_methods)] // the shim is its own reaper: no podkit Reaper runs here
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("podkit: cannot run {}: {e}", program.to_string_lossy());
            cleanup(None, None);
            return crate::command::spawn_failure_status(&e);
        }
    };
    let pid = Pid::from_raw(child.id() as i32);
    // The child is reaped with waitpid below, not through `Child`.
    std::mem::forget(child);
    for sig in early {
        let _ = kill(pid, sig);
    }
    loop {
        let Ok(sig) = watched.wait() else { continue };
        if sig == Signal::SIGCHLD {
            if let Some(status) = reap(pid) {
                cleanup(Some(pid), None);
                finish(status);
            }
            continue;
        }
        if orphaned() {
            // podkit is gone: nothing of the program may run on, and its files go too.
            cleanup(Some(pid), remove.as_deref());
            std::process::exit(128 + Signal::SIGKILL as i32);
        }
        // Otherwise the signal came to the group, and the program has it already.
    }
}

/// Which of `signals` are pending for the shim (blocked, not yet taken).
fn pending(signals: &[Signal]) -> Vec<Signal> {
    // SAFETY: sigpending fills the set it is given; sigismember reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        if libc::sigpending(&mut set) != 0 {
            return Vec::new();
        }
        signals.iter().copied().filter(|s| libc::sigismember(&set, *s as i32) == 1).collect()
    }
}

/// Reaps every exited child; returns the program's status once it has exited.
fn reap(program: Pid) -> Option<WaitStatus> {
    let mut found = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return found,
            Ok(s) if s.pid() == Some(program) => found = Some(s),
            Ok(_) => {}
        }
    }
}

/// Kills the program's group and every remaining descendant until none is left, then removes
/// `remove`.
fn cleanup(program: Option<Pid>, remove: Option<&std::path::Path>) {
    if let Some(p) = program {
        // The program's group is the shim's: what is left of it, but the shim, dies here.
        let _ = kill(p, Signal::SIGKILL);
    }
    let me = getpid().as_raw();
    for _ in 0..200 {
        // Every live descendant is a child or below one (orphans come to the subreaper): with
        // no child at all there is nothing to look for in /proc.
        if waitpid(None, Some(WaitPidFlag::WNOHANG)) == Err(nix::errno::Errno::ECHILD) {
            break;
        }
        let live = descendants(me);
        if live.is_empty() {
            break;
        }
        for pid in live {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        while matches!(waitpid(None, Some(WaitPidFlag::WNOHANG)), Ok(s) if s != WaitStatus::StillAlive) {}
        std::thread::sleep(Duration::from_millis(5));
    }
    while matches!(waitpid(None, Some(WaitPidFlag::WNOHANG)), Ok(s) if s != WaitStatus::StillAlive) {}
    if let Some(dir) = remove {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The live (not zombie) descendants of `root`, from /proc.
fn descendants(root: i32) -> Vec<i32> {
    let Ok(all) = procfs::process::all_processes() else { return Vec::new() };
    let procs: Vec<(i32, i32, bool)> =
        all.flatten().filter_map(|p| p.stat().ok()).map(|s| (s.pid, s.ppid, matches!(s.state, 'Z' | 'X'))).collect();
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(parent) = stack.pop() {
        for (pid, ppid, zombie) in &procs {
            if *ppid == parent {
                stack.push(*pid);
                if !zombie {
                    out.push(*pid);
                }
            }
        }
    }
    out
}

/// Exits as the program did: with its code, or by the signal that ended it.
fn finish(status: WaitStatus) -> ! {
    match status {
        WaitStatus::Exited(_, code) => std::process::exit(code),
        WaitStatus::Signaled(_, sig, _) => {
            // Die of the same signal, so podkit sees what the program saw.
            // SAFETY: resetting a disposition to its default.
            unsafe {
                let _ = nix::sys::signal::signal(sig, SigHandler::SigDfl);
            }
            let mut one = SigSet::empty();
            one.add(sig);
            let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&one), None);
            let _ = kill(getpid(), sig);
            std::process::exit(128 + sig as i32)
        }
        _ => std::process::exit(1),
    }
}
