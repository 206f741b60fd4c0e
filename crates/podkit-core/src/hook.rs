//! Hooks and probes: calls into the app beside podkit, by HTTP or by running a command.

use std::ffi::OsString;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

use nix::sys::signal::Signal;
use serde::Serialize;

use crate::Argv;
use crate::process;
use crate::reaper::{Exit, Reaper};

/// How much of a hook's output is kept in its outcome.
const OUTPUT_TAIL: usize = 4096;
/// How long output is still read after the hook exited.
const OUTPUT_DRAIN: Duration = Duration::from_millis(200);

/// A call into the app.
#[derive(Debug, Clone)]
pub enum Hook {
    /// An HTTP request; any 2xx status is success.
    Http { method: reqwest::Method, url: reqwest::Url },
    /// A command (argv, no shell); exit status 0 is success.
    Exec(Argv),
}

impl Hook {
    pub fn from_options(http: Option<&reqwest::Url>, exec: Option<&Argv>, method: reqwest::Method) -> Option<Hook> {
        match (http, exec) {
            (Some(url), _) => Some(Hook::Http { method, url: url.clone() }),
            (None, Some(argv)) => Some(Hook::Exec(argv.clone())),
            (None, None) => None,
        }
    }
}

/// What a hook is handed besides `PODKIT_HOOK`.
#[derive(Debug, Clone, Default)]
pub struct Input {
    /// Environment variables for a command.
    pub env: Vec<(String, String)>,
    /// The body of an HTTP hook (sent as JSON).
    pub json: Option<serde_json::Value>,
}

/// What a hook did, as `POST /lifecycle/save` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub ok: bool,
    /// `HTTP 200`, `exit code 0`, `timed out after 30s`, `cannot run: …`.
    pub detail: String,
    /// The end of the hook's output (response body, or stdout and stderr).
    pub output: String,
    pub duration_ms: u64,
    /// A command's exit status (128+N for a signal); `None` for HTTP and commands that did not
    /// finish.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i32>,
}

/// Runs hooks. Cloning shares the HTTP client and the reaper.
#[derive(Debug, Clone)]
pub struct Runner {
    reaper: Arc<Reaper>,
    client: reqwest::Client,
}

impl Runner {
    pub fn new(reaper: Arc<Reaper>, client: reqwest::Client) -> Self {
        Self { reaper, client }
    }

    pub fn reaper(&self) -> &Reaper {
        &self.reaper
    }

    /// Runs `hook` for at most `timeout`. `name` is passed to a command as `PODKIT_HOOK`.
    pub async fn run(&self, hook: &Hook, name: &str, timeout: Duration) -> Outcome {
        self.run_with(hook, name, timeout, &Input::default()).await
    }

    /// Like [`Runner::run`], handing the hook `input`: environment variables for a command,
    /// a JSON body for an HTTP request.
    pub async fn run_with(&self, hook: &Hook, name: &str, timeout: Duration, input: &Input) -> Outcome {
        let start = Instant::now();
        let (ok, detail, output, exit_status) = match hook {
            Hook::Http { method, url } => {
                let (ok, detail, output) = self.http(method.clone(), url, timeout, input.json.as_ref()).await;
                (ok, detail, output, None)
            }
            Hook::Exec(argv) => self.exec(argv, name, timeout, &input.env).await,
        };
        Outcome { ok, detail, output, duration_ms: start.elapsed().as_millis() as u64, exit_status }
    }

    async fn http(
        &self,
        method: reqwest::Method,
        url: &reqwest::Url,
        timeout: Duration,
        json: Option<&serde_json::Value>,
    ) -> (bool, String, String) {
        let mut req = self.client.request(method, url.clone()).timeout(timeout);
        if let Some(body) = json {
            req = req.json(body);
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                (status.is_success(), format!("HTTP {}", status.as_u16()), tail(body.as_bytes()))
            }
            Err(e) if e.is_timeout() => (false, format!("timed out after {}", humantime(timeout)), String::new()),
            Err(e) => (false, format!("request failed: {}", error_chain(&e)), String::new()),
        }
    }

    async fn exec(
        &self,
        argv: &Argv,
        name: &str,
        timeout: Duration,
        env: &[(String, String)],
    ) -> (bool, String, String, Option<i32>) {
        let args: Vec<OsString> = argv.as_slice().iter().map(OsString::from).collect();
        let mut cmd = process::command(&args, false);
        cmd.stdin(std::process::Stdio::null()).env("PODKIT_HOOK", name);
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        // Both streams share one pipe, so the output keeps its interleaving.
        let (reader, writer) = match std::io::pipe() {
            Ok(p) => p,
            Err(e) => return (false, format!("cannot create a pipe: {e}"), String::new(), None),
        };
        let writer2 = match writer.try_clone() {
            Ok(w) => w,
            Err(e) => return (false, format!("cannot create a pipe: {e}"), String::new(), None),
        };
        cmd.stdout(writer).stderr(writer2);
        let spawned = self.reaper.spawn(&mut cmd);
        drop(cmd); // closes podkit's copies of the write ends
        let spawned = match spawned {
            Ok(s) => s,
            Err(e) => return (false, format!("cannot run `{}`: {e}", argv.program()), String::new(), None),
        };
        // Whatever happens to this future (done, timed out, or dropped because the caller went
        // away), the hook's process group does not outlive it.
        let _kill = process::KillGroupOnDrop(spawned.pid);
        let mut rx = match tokio::net::unix::pipe::Receiver::from_owned_fd(reader.into()) {
            Ok(rx) => Some(rx),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the hook's output");
                None
            }
        };
        let mut exit = spawned.exit;
        let mut exited = None;
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut deadline = tokio::time::Instant::now() + timeout;
        loop {
            tokio::select! {
                r = async { rx.as_mut().expect("guarded").read(&mut chunk).await }, if rx.is_some() => match r {
                    Ok(n) if n > 0 => {
                        out.extend_from_slice(&chunk[..n]);
                        if out.len() > 4 * OUTPUT_TAIL {
                            out.drain(..out.len() - OUTPUT_TAIL);
                        }
                    }
                    _ => rx = None,
                },
                e = &mut exit, if exited.is_none() => {
                    exited = Some(e.unwrap_or(Exit::Signal(Signal::SIGKILL as i32)));
                    // A process the hook left behind may hold the pipe open: read what is
                    // already there, briefly, and no more.
                    deadline = deadline.min(tokio::time::Instant::now() + OUTPUT_DRAIN);
                }
                _ = tokio::time::sleep_until(deadline) => break,
            }
            if exited.is_some() && rx.is_none() {
                break;
            }
        }
        match exited {
            Some(exit) => (exit.success(), exit.to_string(), tail(&out), Some(exit.status())),
            None => (false, format!("timed out after {}", humantime(timeout)), tail(&out), None),
        }
    }
}

fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(OUTPUT_TAIL);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

fn humantime(d: Duration) -> String {
    crate::Duration(d).to_string()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
