//! Running in the background as a classic daemon, for command lines written for one
//! (nutcracker's `-d -p FILE`, as Debian's init script passes them).
//!
//! Unlike a bare fork, the caller learns whether the start worked: the foreground process waits
//! until the daemon is serving ([`started`], called by [`crate::launch`] once the admin listener
//! is open) and exits 0, or exits with the daemon's own status when it stopped before that (a
//! busy port, say), with its error still printed on the caller's terminal.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork, setsid};

/// The write end of the pipe the foreground process waits on, in the daemon until it is ready.
static STARTED: Mutex<Option<OwnedFd>> = Mutex::new(None);

/// Forks. The foreground process never returns from here: it exits when the daemon is ready
/// (0) or gone (its status). The daemon returns, in a new session, in `/`, with stdin on
/// `/dev/null`; stdout and stderr follow at [`started`].
///
/// Call it before any thread starts (before the runtime): only the calling thread survives a
/// fork. Paths the command uses later must be absolute by then.
pub fn daemonize() -> Result<(), String> {
    let (read, write) = nix::unistd::pipe().map_err(|e| format!("cannot daemonize: pipe: {e}"))?;
    // SAFETY: no other thread runs yet (see above), so the child holds no lock another thread
    // held at the fork.
    match unsafe { fork() }.map_err(|e| format!("cannot daemonize: fork: {e}"))? {
        ForkResult::Parent { child } => {
            drop(write);
            let mut byte = [0u8; 1];
            let ready = loop {
                match nix::unistd::read(&read, &mut byte) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    r => break r == Ok(1),
                }
            };
            if ready {
                std::process::exit(0);
            }
            // The daemon ended before it served: its status is the caller's.
            std::process::exit(match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => code,
                Ok(WaitStatus::Signaled(_, signal, _)) => 128 + signal as i32,
                _ => crate::EX_SOFTWARE,
            })
        }
        ForkResult::Child => {
            drop(read);
            setsid().map_err(|e| format!("cannot daemonize: setsid: {e}"))?;
            // Do not hold the directory podkit was started in (an unmount would fail).
            std::env::set_current_dir("/").map_err(|e| format!("cannot daemonize: chdir /: {e}"))?;
            let null = std::fs::File::open("/dev/null").map_err(|e| format!("cannot daemonize: /dev/null: {e}"))?;
            nix::unistd::dup2_stdin(&null).map_err(|e| format!("cannot daemonize: stdin: {e}"))?;
            *STARTED.lock().unwrap_or_else(|e| e.into_inner()) = Some(write);
            Ok(())
        }
    }
}

/// Tells the foreground process that the daemon serves, then lets go of the terminal (stdout
/// and stderr go to `/dev/null`, as a daemon's do). Does nothing when not daemonized.
pub fn started() {
    let Some(fd) = STARTED.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return;
    };
    let _ = nix::unistd::write(&fd, &[1]);
    drop(fd);
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
}

/// `path` made absolute against the current directory, for a daemon that will change it.
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// A pid file: holds this process' id while it runs, and is removed when dropped.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Writes this process' id to `path` (replacing what was there).
    pub fn create(path: &Path) -> std::io::Result<Self> {
        crate::write_atomically(path, &format!("{}\n", std::process::id()))?;
        Ok(PidFile { path: path.to_path_buf() })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
