//! Hooks and probes: calls into the app beside podkit, by HTTP or by running a command.

use std::ffi::OsString;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::Serialize;

use crate::Argv;
use crate::process;
use crate::reaper::Reaper;

/// How much of a hook's output is kept in its outcome.
const OUTPUT_TAIL: usize = 4096;

/// A call into the app.
#[derive(Debug, Clone)]
pub enum Hook {
    /// An HTTP request; any 2xx status is success.
    Http {
        method: reqwest::Method,
        url: reqwest::Url,
    },
    /// A command (argv, no shell); exit status 0 is success.
    Exec(Argv),
}

impl Hook {
    pub fn from_options(
        http: Option<&reqwest::Url>,
        exec: Option<&Argv>,
        method: reqwest::Method,
    ) -> Option<Hook> {
        match (http, exec) {
            (Some(url), _) => Some(Hook::Http {
                method,
                url: url.clone(),
            }),
            (None, Some(argv)) => Some(Hook::Exec(argv.clone())),
            (None, None) => None,
        }
    }
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
        let start = Instant::now();
        let (ok, detail, output) = match hook {
            Hook::Http { method, url } => self.http(method.clone(), url, timeout).await,
            Hook::Exec(argv) => self.exec(argv, name, timeout).await,
        };
        Outcome {
            ok,
            detail,
            output,
            duration_ms: start.elapsed().as_millis() as u64,
        }
    }

    async fn http(
        &self,
        method: reqwest::Method,
        url: &reqwest::Url,
        timeout: Duration,
    ) -> (bool, String, String) {
        let req = self.client.request(method, url.clone()).timeout(timeout);
        match req.send().await {
            Ok(resp) => {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                (
                    status.is_success(),
                    format!("HTTP {}", status.as_u16()),
                    tail(body.as_bytes()),
                )
            }
            Err(e) if e.is_timeout() => (
                false,
                format!("timed out after {}", humantime(timeout)),
                String::new(),
            ),
            Err(e) => (
                false,
                format!("request failed: {}", error_chain(&e)),
                String::new(),
            ),
        }
    }

    async fn exec(&self, argv: &Argv, name: &str, timeout: Duration) -> (bool, String, String) {
        let args: Vec<OsString> = argv.as_slice().iter().map(OsString::from).collect();
        let mut cmd = process::command(&args, false);
        cmd.stdin(std::process::Stdio::null())
            .env("PODKIT_HOOK", name);
        // Both streams share one pipe, so the output keeps its interleaving.
        let (reader, writer) = match std::io::pipe() {
            Ok(p) => p,
            Err(e) => return (false, format!("cannot create a pipe: {e}"), String::new()),
        };
        let writer2 = match writer.try_clone() {
            Ok(w) => w,
            Err(e) => return (false, format!("cannot create a pipe: {e}"), String::new()),
        };
        cmd.stdout(writer).stderr(writer2);
        let spawned = self.reaper.spawn(&mut cmd);
        drop(cmd); // closes podkit's copies of the write ends
        let spawned = match spawned {
            Ok(s) => s,
            Err(e) => {
                return (
                    false,
                    format!("cannot run `{}`: {e}", argv.program()),
                    String::new(),
                );
            }
        };
        let output = tokio::task::spawn_blocking(move || {
            let mut reader = reader;
            let mut buf = Vec::new();
            let _ = reader.read_to_end(&mut buf);
            buf
        });
        let pid = spawned.pid;
        match tokio::time::timeout(timeout, spawned.exit).await {
            Ok(Ok(exit)) => {
                // The hook's own children may keep the pipe open; they belong to its group.
                process::signal(pid, Signal::SIGKILL, true);
                let out = output.await.unwrap_or_default();
                (exit.success(), exit.to_string(), tail(&out))
            }
            Ok(Err(_)) => (
                false,
                "the reaper lost the hook's exit status".into(),
                String::new(),
            ),
            Err(_) => {
                process::signal(pid, Signal::SIGKILL, true);
                let out = output.await.unwrap_or_default();
                (
                    false,
                    format!("timed out after {}", humantime(timeout)),
                    tail(&out),
                )
            }
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
