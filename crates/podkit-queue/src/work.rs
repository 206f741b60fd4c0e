//! `podkit queue work`: take items, run the stage on each, commit the outputs.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use podkit_core::{Argv, Context};
use podkit_process::hook::{Hook, Input, Runner};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::time::Instant;

use crate::store::{Claimed, Output, Store};

/// How long an idle worker waits before looking for items again.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// What a worker does with each item.
#[derive(Debug, Clone)]
pub(crate) enum Stage {
    /// run(): a command with `{input}` and `{output}` in its arguments.
    Exec(Vec<String>),
    /// The sidecar form: POST the input to a co-located app; its answer is the output.
    Http(reqwest::Url),
}

/// Where outputs go.
#[derive(Debug, Clone)]
pub(crate) enum Sink {
    Store,
    Next(String),
    Dir(PathBuf),
}

#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) queue: String,
    pub(crate) stage: Stage,
    pub(crate) sink: Sink,
    pub(crate) concurrency: usize,
    pub(crate) timeout: Duration,
    pub(crate) lease: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) exit_when_empty: bool,
    pub(crate) owner: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabel {
    pub(crate) result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StateLabel {
    pub(crate) queue: String,
    pub(crate) state: &'static str,
}

#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    /// Attempts by result: done, retry, dead, lost (lease lost), released (stopped).
    pub(crate) attempts: Family<ResultLabel, Counter>,
    pub(crate) run_seconds: Histogram,
    pub(crate) lease_renewals: Counter,
    pub(crate) in_flight: Gauge,
    pub(crate) items: Family<StateLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            attempts: Family::default(),
            run_seconds: Histogram::new([0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0]),
            lease_renewals: Counter::default(),
            in_flight: Gauge::default(),
            items: Family::default(),
        }
    }
}

/// The worker pool of one process.
#[derive(Debug)]
pub(crate) struct Worker<S> {
    pub(crate) store: S,
    pub(crate) settings: Arc<Settings>,
    pub(crate) runner: Runner,
    pub(crate) client: reqwest::Client,
    pub(crate) metrics: Metrics,
    /// Largest output accepted (the store's item limit).
    pub(crate) max_item_size: usize,
}

impl<S: Store> Worker<S> {
    /// Runs `concurrency` slots until a stop (or, with --exit-when-empty, until the queue has
    /// nothing pending or running). In-flight items finish within the grace period or are
    /// released for another worker.
    pub(crate) async fn run(self: Arc<Self>, ctx: Context) -> i32 {
        tracing::info!(
            store = %self.store.describe(), queue = %self.settings.queue, concurrency = self.settings.concurrency,
            "worker started"
        );
        ctx.tasks.spawn(self.clone().gauge_loop(ctx.clone()));
        let mut slots = Vec::new();
        for slot in 0..self.settings.concurrency {
            slots.push(tokio::spawn(self.clone().slot(slot, ctx.clone())));
        }
        let mut code = 0;
        for s in slots {
            match s.await {
                Ok(Ok(())) => {}
                Ok(Err(c)) => code = code.max(c),
                Err(e) => {
                    tracing::error!(error = %e, "a worker slot failed");
                    code = 70;
                }
            }
        }
        if !ctx.shutdown.is_triggered() {
            ctx.shutdown.trigger(podkit_core::StopReason::Completed);
        }
        code
    }

    async fn slot(self: Arc<Self>, slot: usize, ctx: Context) -> Result<(), i32> {
        let s = &self.settings;
        loop {
            if ctx.shutdown.is_triggered() {
                return Ok(());
            }
            let claimed = match self.store.claim(&s.queue, &s.owner, s.lease, s.max_attempts).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "cannot take an item; retrying");
                    self.idle(&ctx).await;
                    continue;
                }
            };
            let Some(item) = claimed else {
                if s.exit_when_empty && self.drained().await {
                    tracing::debug!(slot, "queue drained");
                    return Ok(());
                }
                self.idle(&ctx).await;
                continue;
            };
            if ctx.shutdown.is_triggered() {
                // Taken just as the stop began: give it straight back.
                let _ = self.store.release(&item, &s.owner).await;
                return Ok(());
            }
            self.metrics.in_flight.inc();
            self.process(item, &ctx).await;
            self.metrics.in_flight.dec();
        }
    }

    async fn idle(&self, ctx: &Context) {
        tokio::select! {
            _ = tokio::time::sleep(IDLE_POLL) => {}
            _ = ctx.shutdown.triggered() => {}
        }
    }

    /// Nothing pending or running in this queue (so nothing can come back either).
    async fn drained(&self) -> bool {
        match self.store.counts(Some(&self.settings.queue)).await {
            Ok(c) => c.first().is_none_or(|c| c.pending == 0 && c.running == 0),
            Err(_) => false,
        }
    }

    /// One attempt at one item, with its lease renewed while it runs.
    async fn process(&self, item: Claimed, ctx: &Context) {
        let s = &self.settings;
        let started = Instant::now();
        tracing::debug!(id = %item.id, attempt = item.attempt, "running item");
        let work = self.attempt(&item);
        tokio::pin!(work);
        let mut renew = tokio::time::interval_at(Instant::now() + s.lease / 3, s.lease / 3);
        // The grace period starts when the stop does: past it, the item is released.
        let mut release_at: Option<Instant> = None;
        let result = loop {
            let stop_deadline = async {
                match release_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = &mut work => break Some(r),
                _ = renew.tick() => {
                    match self.store.renew(&item, &s.owner, s.lease).await {
                        Ok(true) => {
                            self.metrics.lease_renewals.inc();
                        }
                        Ok(false) => {
                            tracing::warn!(id = %item.id, "lost the item's lease (another worker has it): abandoning this attempt");
                            self.count("lost");
                            return;
                        }
                        Err(e) => tracing::warn!(id = %item.id, error = %e, "cannot renew the lease; retrying"),
                    }
                }
                _ = ctx.shutdown.triggered(), if release_at.is_none() => {
                    // Leave a margin inside the grace period to give the item back.
                    release_at = Some(Instant::now() + ctx.grace.saturating_sub(Duration::from_secs(1)).max(Duration::from_millis(100)));
                }
                _ = stop_deadline => break None,
            }
        };
        self.metrics.run_seconds.observe(started.elapsed().as_secs_f64());
        let Some(result) = result else {
            // Dropping `work` killed the command's process group.
            match self.store.release(&item, &s.owner).await {
                Ok(_) => tracing::info!(id = %item.id, "stopping: released the item for another worker"),
                Err(e) => tracing::error!(id = %item.id, error = %e, "cannot release the item; its lease will expire"),
            }
            self.count("released");
            return;
        };
        match result {
            Ok(output) => match self.store.complete(&item, &s.owner, output).await {
                Ok(true) => {
                    tracing::debug!(id = %item.id, "item done");
                    self.count("done");
                }
                Ok(false) => {
                    tracing::warn!(id = %item.id, "the item's lease was lost before its output was committed; discarded");
                    self.count("lost");
                }
                Err(e) => {
                    tracing::error!(id = %item.id, error = %e, "cannot commit the output");
                    let _ = self.store.fail(&item, &s.owner, s.max_attempts, None, &e.to_string(), "").await;
                    self.count(if item.attempt >= s.max_attempts { "dead" } else { "retry" });
                }
            },
            Err(f) if f.lost => {
                tracing::warn!(id = %item.id, "lost the item's lease before its output was written; discarded");
                self.count("lost");
            }
            Err(f) => {
                let dead = item.attempt >= s.max_attempts;
                if dead {
                    tracing::warn!(id = %item.id, attempts = item.attempt, error = %f.error, "item dead-lettered");
                } else {
                    tracing::info!(id = %item.id, attempt = item.attempt, error = %f.error, "attempt failed; will retry");
                }
                match self.store.fail(&item, &s.owner, s.max_attempts, f.exit_status, &f.error, &f.stderr_tail).await {
                    Ok(_) => self.count(if dead { "dead" } else { "retry" }),
                    Err(e) => {
                        tracing::error!(id = %item.id, error = %e, "cannot record the failure; the lease will expire")
                    }
                }
            }
        }
    }

    fn count(&self, result: &'static str) {
        self.metrics.attempts.get_or_create(&ResultLabel { result }).inc();
    }

    /// mount() and run(): the input in a fresh private directory, the stage, the output.
    async fn attempt(&self, item: &Claimed) -> Result<Output, Failure> {
        let s = &self.settings;
        match &s.stage {
            Stage::Http(url) => {
                let resp = self
                    .client
                    .post(url.clone())
                    .header("x-podkit-item-id", &item.id)
                    .header("x-podkit-attempt", item.attempt.to_string())
                    .timeout(s.timeout)
                    .body(item.input.clone())
                    .send()
                    .await
                    .map_err(|e| Failure::new(format!("POST {url}: {e}")))?;
                let status = resp.status();
                let body = resp.bytes().await.map_err(|e| Failure::new(format!("reading the answer of {url}: {e}")))?;
                if !status.is_success() {
                    return Err(Failure {
                        stderr_tail: String::from_utf8_lossy(&body[body.len().saturating_sub(2048)..]).into_owned(),
                        ..Failure::new(format!("HTTP {}", status.as_u16()))
                    });
                }
                self.sink(item, body.to_vec()).await
            }
            Stage::Exec(template) => {
                let dir = tempfile::Builder::new()
                    .prefix("podkit-item-")
                    .tempdir()
                    .map_err(|e| Failure::new(format!("cannot create the item directory: {e}")))?;
                let name = safe_name(item.name.as_deref().unwrap_or("input"));
                let input = dir.path().join("in").join(&name);
                let output = dir.path().join("out").join(&name);
                for d in [input.parent(), output.parent()].into_iter().flatten() {
                    std::fs::create_dir_all(d)
                        .map_err(|e| Failure::new(format!("cannot create {}: {e}", d.display())))?;
                }
                let (path, data) = (input.clone(), item.input.clone());
                tokio::task::spawn_blocking(move || std::fs::write(&path, &data))
                    .await
                    .map_err(|e| Failure::new(e.to_string()))?
                    .map_err(|e| Failure::new(format!("cannot write the input: {e}")))?;
                let argv: Vec<String> = template
                    .iter()
                    .map(|a| {
                        a.replace("{input}", &input.to_string_lossy()).replace("{output}", &output.to_string_lossy())
                    })
                    .collect();
                let argv = Argv::new(argv).map_err(Failure::new)?;
                let env = vec![
                    ("PODKIT_ITEM_ID".to_string(), item.id.clone()),
                    ("PODKIT_ATTEMPT".to_string(), item.attempt.to_string()),
                    ("PODKIT_QUEUE".to_string(), item.queue.clone()),
                    ("PODKIT_INPUT".to_string(), input.to_string_lossy().into_owned()),
                    ("PODKIT_OUTPUT".to_string(), output.to_string_lossy().into_owned()),
                ];
                let outcome =
                    self.runner.run_with(&Hook::Exec(argv), "item", s.timeout, &Input { env, json: None }).await;
                if !outcome.ok {
                    return Err(Failure {
                        exit_status: outcome.exit_status,
                        stderr_tail: outcome.output,
                        ..Failure::new(outcome.detail)
                    });
                }
                let size = match std::fs::metadata(&output) {
                    Ok(m) => m.len(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(Failure {
                            exit_status: Some(0),
                            stderr_tail: outcome.output,
                            ..Failure::new("exit code 0 but no output file was written")
                        });
                    }
                    Err(e) => return Err(Failure::new(format!("cannot read the output: {e}"))),
                };
                if size > self.max_item_size as u64 {
                    return Err(Failure::new(format!(
                        "the output is {size} bytes; the limit is {} (--max-item-size)",
                        self.max_item_size
                    )));
                }
                let data = tokio::task::spawn_blocking(move || std::fs::read(&output))
                    .await
                    .map_err(|e| Failure::new(e.to_string()))?
                    .map_err(|e| Failure::new(format!("cannot read the output: {e}")))?;
                self.sink(item, data).await
            }
        }
    }

    async fn sink(&self, item: &Claimed, data: Vec<u8>) -> Result<Output, Failure> {
        match &self.settings.sink {
            Sink::Store => Ok(Output::Stored(data)),
            Sink::Next(q) => Ok(Output::Next { queue: q.clone(), data }),
            Sink::Dir(dir) => {
                // Keyed by item id and renamed into place: a redelivered item rewrites the same
                // file, so there is one output per item whatever happens. A worker that lost
                // its lease must not rename over the winner's file: renewing just before the
                // rename proves the lease is still ours, for a whole lease from now.
                let path = dir.join(safe_name(&item.id));
                let tmp = dir.join(format!(".{}.{}.tmp", safe_name(&item.id), item.attempt));
                let (t, d) = (tmp.clone(), data);
                tokio::task::spawn_blocking(move || write_synced(&t, &d))
                    .await
                    .map_err(|e| Failure::new(e.to_string()))?
                    .map_err(|e| Failure::new(format!("cannot write {}: {e}", tmp.display())))?;
                match self.store.renew(item, &self.settings.owner, self.settings.lease).await {
                    Ok(true) => {}
                    Ok(false) => {
                        let _ = std::fs::remove_file(&tmp);
                        return Err(Failure::lost());
                    }
                    Err(e) => {
                        let _ = std::fs::remove_file(&tmp);
                        return Err(Failure::new(format!("cannot confirm the lease before writing the output: {e}")));
                    }
                }
                let (t, p, d) = (tmp, path.clone(), dir.clone());
                tokio::task::spawn_blocking(move || rename_synced(&t, &p, &d))
                    .await
                    .map_err(|e| Failure::new(e.to_string()))?
                    .map_err(|e| Failure::new(format!("cannot write {}: {e}", path.display())))?;
                Ok(Output::External)
            }
        }
    }

    /// Keeps the per-state gauges current for /metrics.
    async fn gauge_loop(self: Arc<Self>, ctx: Context) {
        let mut every = ctx.shutdown.every(Duration::from_secs(2));
        while every.tick().await {
            if let Ok(all) = self.store.counts(None).await {
                for c in all {
                    for (state, n) in
                        [("pending", c.pending), ("running", c.running), ("done", c.done), ("dead", c.dead)]
                    {
                        self.metrics.items.get_or_create(&StateLabel { queue: c.queue.clone(), state }).set(n as i64);
                    }
                }
            }
        }
    }
}

/// Why an attempt failed.
#[derive(Debug)]
struct Failure {
    error: String,
    exit_status: Option<i32>,
    stderr_tail: String,
    lost: bool,
}

impl Failure {
    fn new(error: impl Into<String>) -> Self {
        Self { error: error.into(), exit_status: None, stderr_tail: String::new(), lost: false }
    }

    /// The lease went to another worker: not a failure of the item, nothing to record.
    fn lost() -> Self {
        Self { lost: true, ..Self::new("the lease was lost") }
    }
}

/// A file name that stays inside its directory: the last path component, without leading dots.
pub(crate) fn safe_name(name: &str) -> String {
    let base = Path::new(name).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let trimmed = base.trim_start_matches('.');
    if trimmed.is_empty() { "item".to_string() } else { trimmed.to_string() }
}

fn write_synced(tmp: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(tmp)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Renames into place and fsyncs the directory, so the rename survives a crash.
fn rename_synced(tmp: &Path, path: &Path, dir: &Path) -> std::io::Result<()> {
    std::fs::rename(tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The command's argv with its `{input}`/`{output}` placeholders, checked.
pub(crate) fn check_template(cmd: &[OsString]) -> Result<Vec<String>, String> {
    let args: Vec<String> = cmd
        .iter()
        .map(|a| a.to_str().map(str::to_string).ok_or("the command must be valid UTF-8"))
        .collect::<Result<_, _>>()?;
    if args.is_empty() {
        return Err("no command given; expected `-- CMD ARGS…` (or --http URL)".into());
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_confined_to_the_item_directory() {
        assert_eq!(safe_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_name("/abs/x.csv"), "x.csv");
        assert_eq!(safe_name(".."), "item");
        assert_eq!(safe_name(".hidden"), "hidden");
    }
}
