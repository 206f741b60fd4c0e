//! One way to run a command to completion: feed its stdin, bound its output and its time, keep
//! the end of what it said. Hooks, probes, scatter's merge command and git calls all use it.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

use crate::command::{self, KillGroupOnDrop};
use crate::reaper::{Exit, Reaper};

/// How long output is still read after the command exited: a process it left behind may hold
/// the pipe open.
const OUTPUT_DRAIN: Duration = Duration::from_millis(200);

/// What to keep of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// The first `n` bytes; more is reported as [`Finished::stdout_overflowed`] (the rest is
    /// read and dropped, so the command never blocks on a full pipe).
    Head(usize),
    /// The last `n` bytes.
    Tail(usize),
}

/// A command to run once.
#[derive(Debug, Clone)]
pub struct Exec {
    pub argv: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub cwd: Option<PathBuf>,
    /// Written to the command's stdin, which is then closed; `None` gives it /dev/null.
    pub stdin: Option<Vec<u8>>,
    pub timeout: Duration,
    pub stdout: Keep,
    /// Send stderr into the same pipe as stdout, keeping their interleaving (a hook's output).
    /// Otherwise the last [`Exec::stderr_tail`] bytes of stderr are kept apart.
    pub merge_stderr: bool,
    pub stderr_tail: usize,
}

impl Exec {
    /// `argv` with no input, its output (stdout and stderr together) kept to the last 4 KiB.
    pub fn new(argv: impl IntoIterator<Item = impl Into<OsString>>, timeout: Duration) -> Self {
        Self {
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: None,
            stdin: None,
            timeout,
            stdout: Keep::Tail(4096),
            merge_stderr: true,
            stderr_tail: 4096,
        }
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    pub fn stdin(mut self, input: Vec<u8>) -> Self {
        self.stdin = Some(input);
        self
    }

    /// Keeps stdout as `keep` and stderr apart (its last 4 KiB).
    pub fn stdout(mut self, keep: Keep) -> Self {
        self.stdout = keep;
        self.merge_stderr = false;
        self
    }

    fn program(&self) -> String {
        self.argv.first().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default()
    }
}

/// A command that ran to its end.
#[derive(Debug, Clone)]
pub struct Finished {
    pub exit: Exit,
    /// Stdout as [`Exec::stdout`] keeps it (with stderr, when merged).
    pub stdout: Vec<u8>,
    /// The end of stderr (empty when merged into stdout).
    pub stderr: Vec<u8>,
    /// Stdout was longer than [`Keep::Head`] allowed.
    pub stdout_overflowed: bool,
    pub duration: Duration,
}

impl Finished {
    /// The end of stderr (or of the merged output), as text, for error messages.
    pub fn said(&self) -> String {
        let bytes = if self.stderr.is_empty() { &self.stdout } else { &self.stderr };
        String::from_utf8_lossy(bytes).trim().to_string()
    }
}

/// Why a command did not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot run `{program}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create a pipe for `{program}`: {source}")]
    Pipe {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{program}` timed out after {}", podkit_core::Duration(*after))]
    TimedOut {
        program: String,
        after: Duration,
        /// What it had written by then (as [`Finished::stdout`]).
        output: Vec<u8>,
    },
}

impl ExecError {
    /// The exit status a shell would give for a command that could not start (127 for a
    /// missing program, 126 otherwise).
    pub fn shell_status(&self) -> Option<i32> {
        match self {
            ExecError::Spawn { source, .. } => Some(command::spawn_failure_status(source)),
            _ => None,
        }
    }
}

/// Runs `spec` to its end (or its timeout). Whatever happens to this future (done, timed out,
/// or dropped because its caller went away), the command's process group does not outlive it.
pub async fn exec(reaper: &Reaper, spec: &Exec) -> Result<Finished, ExecError> {
    let program = spec.program();
    let pipe_err = |source| ExecError::Pipe { program: program.clone(), source };
    let mut cmd = command::command(&spec.argv, false);
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
    if let Some(dir) = &spec.cwd {
        cmd.current_dir(dir);
    }
    cmd.stdin(if spec.stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let (out_r, out_w) = std::io::pipe().map_err(pipe_err)?;
    let err_r = if spec.merge_stderr {
        cmd.stderr(out_w.try_clone().map_err(pipe_err)?);
        None
    } else {
        let (r, w) = std::io::pipe().map_err(pipe_err)?;
        cmd.stderr(w);
        Some(r)
    };
    cmd.stdout(out_w);
    let start = Instant::now();
    let spawned = reaper.spawn(&mut cmd);
    drop(cmd); // closes podkit's copies of the write ends
    let mut spawned = spawned.map_err(|source| ExecError::Spawn { program: program.clone(), source })?;
    let _kill = KillGroupOnDrop(spawned.pid);

    let mut stdin = match (spawned.child.stdin.take(), &spec.stdin) {
        (Some(w), Some(input)) => Some((pipe::Sender::from_owned_fd(OwnedFd::from(w)).map_err(pipe_err)?, input)),
        _ => None,
    };
    let mut out = Stream::new(receiver(out_r), spec.stdout);
    let mut err = Stream::new(err_r.and_then(receiver), Keep::Tail(spec.stderr_tail));
    let mut exit_rx = spawned.exit;
    let mut exited = None;
    let mut written = 0usize;
    let mut deadline = tokio::time::Instant::now() + spec.timeout;
    loop {
        tokio::select! {
            r = out.read(), if out.open() => out.take(r),
            r = err.read(), if err.open() => err.take(r),
            r = async { let (w, input) = stdin.as_mut().expect("guarded"); w.write(&input[written..]).await }, if stdin.is_some() => {
                match r {
                    Ok(n) if n > 0 && written + n < stdin.as_ref().map_or(0, |(_, i)| i.len()) => written += n,
                    // Done, or the command closed its stdin: either way nothing more goes in.
                    _ => stdin = None,
                }
            }
            e = &mut exit_rx, if exited.is_none() => {
                exited = Some(e.unwrap_or(Exit::Signal(Signal::SIGKILL as i32)));
                stdin = None;
                deadline = deadline.min(tokio::time::Instant::now() + OUTPUT_DRAIN);
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
        if exited.is_some() && !out.open() && !err.open() {
            break;
        }
    }
    match exited {
        Some(exit) => Ok(Finished {
            exit,
            stdout_overflowed: out.overflowed,
            stdout: out.into_bytes(),
            stderr: err.into_bytes(),
            duration: start.elapsed(),
        }),
        None => Err(ExecError::TimedOut { program, after: spec.timeout, output: out.into_bytes() }),
    }
}

fn receiver(r: std::io::PipeReader) -> Option<pipe::Receiver> {
    match pipe::Receiver::from_owned_fd(OwnedFd::from(r)) {
        Ok(rx) => Some(rx),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read a command's output");
            None
        }
    }
}

/// One output stream being read and kept.
struct Stream {
    rx: Option<pipe::Receiver>,
    keep: Keep,
    bytes: Vec<u8>,
    overflowed: bool,
    chunk: Box<[u8; 8192]>,
}

impl Stream {
    fn new(rx: Option<pipe::Receiver>, keep: Keep) -> Self {
        Self { rx, keep, bytes: Vec::new(), overflowed: false, chunk: Box::new([0; 8192]) }
    }

    fn open(&self) -> bool {
        self.rx.is_some()
    }

    async fn read(&mut self) -> std::io::Result<usize> {
        match self.rx.as_mut() {
            Some(rx) => rx.read(&mut self.chunk[..]).await,
            None => std::future::pending().await,
        }
    }

    fn take(&mut self, r: std::io::Result<usize>) {
        let n = match r {
            Ok(n) if n > 0 => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return,
            _ => {
                self.rx = None;
                return;
            }
        };
        let chunk = &self.chunk[..n];
        match self.keep {
            Keep::Head(limit) => {
                let room = limit.saturating_sub(self.bytes.len());
                if chunk.len() > room {
                    self.overflowed = true;
                }
                self.bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Keep::Tail(limit) => {
                self.bytes.extend_from_slice(chunk);
                // Trim in bulk, not on every chunk.
                if self.bytes.len() > 4 * limit.max(1024) {
                    self.bytes.drain(..self.bytes.len() - limit);
                }
            }
        }
    }

    fn into_bytes(mut self) -> Vec<u8> {
        if let Keep::Tail(limit) = self.keep
            && self.bytes.len() > limit
        {
            self.bytes.drain(..self.bytes.len() - limit);
        }
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Exec {
        Exec::new(["sh", "-c", script], Duration::from_secs(10))
    }

    #[tokio::test]
    async fn feeds_stdin_and_keeps_stdout_apart_from_stderr() {
        let reaper = Reaper::start().unwrap();
        let spec = sh("tr a-z A-Z; echo oops >&2").stdin(b"hello".to_vec()).stdout(Keep::Head(100));
        let done = exec(&reaper, &spec).await.unwrap();
        assert!(done.exit.success());
        assert_eq!(done.stdout, b"HELLO");
        assert_eq!(done.stderr, b"oops\n");
        assert!(!done.stdout_overflowed);
    }

    #[tokio::test]
    async fn a_large_input_is_written_while_output_is_read() {
        let reaper = Reaper::start().unwrap();
        // Larger than a pipe's buffer both ways: a writer that waited for the reader (or the
        // other way round) would deadlock here.
        let input = vec![b'x'; 1 << 20];
        let done = exec(&reaper, &sh("cat").stdin(input).stdout(Keep::Head(2 << 20))).await.unwrap();
        assert_eq!(done.stdout.len(), 1 << 20);
    }

    #[tokio::test]
    async fn output_beyond_the_head_is_flagged_and_the_end_of_a_tail_kept() {
        let reaper = Reaper::start().unwrap();
        let head = exec(&reaper, &sh("seq 1 10000").stdout(Keep::Head(10))).await.unwrap();
        assert!(head.stdout_overflowed);
        assert_eq!(head.stdout, b"1\n2\n3\n4\n5\n");
        let mut spec = sh("seq 1 10000; echo last >&2");
        spec.stdout = Keep::Tail(9);
        let tail = exec(&reaper, &spec).await.unwrap();
        assert_eq!(tail.stdout, b"000\nlast\n");
    }

    #[tokio::test]
    async fn a_timeout_kills_the_command_and_reports_what_it_said() {
        let reaper = Reaper::start().unwrap();
        let mut spec = sh("echo started; exec sleep 30");
        spec.timeout = Duration::from_millis(300);
        match exec(&reaper, &spec).await {
            Err(ExecError::TimedOut { output, .. }) => assert_eq!(output, b"started\n"),
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_missing_program_is_status_127() {
        let reaper = Reaper::start().unwrap();
        let err = exec(&reaper, &Exec::new(["/nonexistent/podkit-test"], Duration::from_secs(1))).await.unwrap_err();
        assert_eq!(err.shell_status(), Some(127));
        assert!(err.to_string().contains("/nonexistent/podkit-test"), "{err}");
    }
}
