//! What runs when a version is published: `--exechook-command` (in the version's directory,
//! with its name in the environment, as git-sync's exechook) and `--webhook-url` (a request
//! naming it, as git-sync's webhook). A pre-publish exechook that fails stops the publish; a
//! post-publish hook or webhook that fails is tried again with backoff until it succeeds or a
//! newer version supersedes it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use podkit_core::Argv;
use podkit_core::backoff::BackoffPolicy;
use podkit_process::{Exec, Reaper};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::task::AbortHandle;

/// When the exechook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum When {
    /// Before the link moves; a failure keeps the old version published.
    PrePublish,
    /// After the link moved (git-sync's behaviour).
    PostPublish,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HookLabel {
    pub(crate) hook: &'static str,
    pub(crate) result: &'static str,
}

#[derive(Debug, Clone)]
pub(crate) struct ExecHook {
    pub(crate) argv: Argv,
    pub(crate) timeout: Duration,
    pub(crate) when: When,
}

#[derive(Debug, Clone)]
pub(crate) struct WebHook {
    pub(crate) url: reqwest::Url,
    pub(crate) method: reqwest::Method,
    pub(crate) timeout: Duration,
    /// The status that counts as success; any 2xx when `None`, any answer at all for 0.
    pub(crate) success: Option<u16>,
    /// Built only when there is a webhook: a git sync needs no HTTP client (nor CA roots).
    pub(crate) client: reqwest::Client,
}

#[derive(Debug, Clone)]
pub(crate) struct Hooks {
    pub(crate) exec: Option<ExecHook>,
    pub(crate) web: Option<WebHook>,
    pub(crate) reaper: Arc<Reaper>,
    pub(crate) runs: Family<HookLabel, Counter>,
}

/// The retries of the last version's post-publish hooks: a newer version aborts them.
#[derive(Debug, Default)]
pub(crate) struct Pending(Vec<AbortHandle>);

impl Drop for Pending {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

const RETRY: BackoffPolicy = BackoffPolicy::jittered(Duration::from_secs(1), Duration::from_secs(30));

impl Hooks {
    /// Runs the exechook once in `dir`; `Err` says what it said.
    async fn exec_once(&self, hook: &ExecHook, dir: &std::path::Path, version: &str) -> Result<(), String> {
        let mut argv = vec![hook.argv.program().to_string()];
        argv.extend(hook.argv.args().iter().cloned());
        let spec =
            Exec::new(argv, hook.timeout).cwd(dir).env("GITSYNC_HASH", version).env("PODKIT_SYNC_VERSION", version);
        let out = podkit_process::exec(&self.reaper, &spec).await.map_err(|e| e.to_string())?;
        let result = if out.exit.success() { "success" } else { "error" };
        self.runs.get_or_create(&HookLabel { hook: "exechook", result }).inc();
        if out.exit.success() { Ok(()) } else { Err(format!("exited with {}: {}", out.exit.status(), out.said())) }
    }

    /// The pre-publish exechook, if there is one.
    pub(crate) async fn before_publish(&self, dir: &std::path::Path, version: &str) -> Result<(), String> {
        match &self.exec {
            Some(h) if h.when == When::PrePublish => {
                self.exec_once(h, dir, version).await.map_err(|e| format!("the pre-publish exechook failed: {e}"))
            }
            _ => Ok(()),
        }
    }

    /// Starts the post-publish exechook and the webhook for `version`, each retried until it
    /// succeeds; replaces (aborts) those of the previous version.
    pub(crate) fn after_publish(&self, pending: &mut Pending, dir: PathBuf, version: String) {
        *pending = Pending::default();
        if let Some(h) = self.exec.clone().filter(|h| h.when == When::PostPublish) {
            let (hooks, dir, version) = (self.clone(), dir.clone(), version.clone());
            pending.0.push(
                tokio::spawn(async move {
                    let mut backoff = RETRY.start();
                    while let Err(e) = hooks.exec_once(&h, &dir, &version).await {
                        let delay = backoff.next_delay();
                        tracing::warn!(version = %version, error = %e, retry_in = ?delay, "the exechook failed");
                        tokio::time::sleep(delay).await;
                    }
                    tracing::info!(version = %version, "exechook done");
                })
                .abort_handle(),
            );
        }
        if let Some(w) = self.web.clone() {
            let hooks = self.clone();
            pending.0.push(
                tokio::spawn(async move {
                    let mut backoff = RETRY.start();
                    loop {
                        let r = hooks.call_webhook(&w, &version).await;
                        let result = if r.is_ok() { "success" } else { "error" };
                        hooks.runs.get_or_create(&HookLabel { hook: "webhook", result }).inc();
                        match r {
                            Ok(()) => break,
                            Err(e) => {
                                let delay = backoff.next_delay();
                                tracing::warn!(version = %version, error = %e, retry_in = ?delay, "the webhook failed");
                                tokio::time::sleep(delay).await;
                            }
                        }
                    }
                })
                .abort_handle(),
            );
        }
    }

    /// `--one-time`: the post-publish exechook and the webhook, once each, waited for (as
    /// git-sync does); `Err` if either failed.
    pub(crate) async fn after_publish_once(&self, dir: &std::path::Path, version: &str) -> Result<(), String> {
        if let Some(h) = self.exec.as_ref().filter(|h| h.when == When::PostPublish) {
            self.exec_once(h, dir, version).await.map_err(|e| format!("the exechook failed: {e}"))?;
        }
        if let Some(w) = &self.web {
            let r = self.call_webhook(w, version).await;
            let result = if r.is_ok() { "success" } else { "error" };
            self.runs.get_or_create(&HookLabel { hook: "webhook", result }).inc();
            r.map_err(|e| format!("the webhook failed: {e}"))?;
        }
        Ok(())
    }

    async fn call_webhook(&self, w: &WebHook, version: &str) -> Result<(), String> {
        let resp = w
            .client
            .request(w.method.clone(), w.url.clone())
            .timeout(w.timeout)
            .header("Gitsync-Hash", version)
            .json(&serde_json::json!({ "version": version }))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let ok = match w.success {
            // git-sync's 0: any answer will do (fire and forget).
            Some(0) => true,
            Some(code) => status.as_u16() == code,
            None => status.is_success(),
        };
        if ok { Ok(()) } else { Err(format!("{} {} answered {status}", w.method, w.url)) }
    }
}
