//! Hooks and probes: calls into the app beside podkit, by HTTP or by running a command.

use std::sync::Arc;
use std::time::{Duration, Instant};

use podkit_core::Argv;
use serde::Serialize;

use crate::exec::{self, Exec, ExecError, Keep};
use crate::reaper::Reaper;

/// How much of a hook's output is kept in its outcome.
const OUTPUT_TAIL: usize = 4096;

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
            Err(e) => (false, format!("request failed: {}", podkit_core::exit::error_chain(&e)), String::new()),
        }
    }

    async fn exec(
        &self,
        argv: &Argv,
        name: &str,
        timeout: Duration,
        env: &[(String, String)],
    ) -> (bool, String, String, Option<i32>) {
        let mut spec = Exec::new(argv.as_slice(), timeout).env("PODKIT_HOOK", name);
        spec.env.extend(env.iter().map(|(k, v)| (k.into(), v.into())));
        spec.stdout = Keep::Tail(OUTPUT_TAIL);
        match exec::exec(&self.reaper, &spec).await {
            Ok(done) => (done.exit.success(), done.exit.to_string(), tail(&done.stdout), Some(done.exit.status())),
            Err(ExecError::TimedOut { output, .. }) => {
                (false, format!("timed out after {}", humantime(timeout)), tail(&output), None)
            }
            Err(e) => (false, e.to_string(), String::new(), None),
        }
    }
}

fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(OUTPUT_TAIL);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

fn humantime(d: Duration) -> String {
    podkit_core::Duration(d).to_string()
}
