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
        if matches!(self.settings.stage, Stage::Exec(_)) {
            let tmp = std::env::temp_dir();
            let swept = tokio::task::spawn_blocking(move || sweep_stale_attempts(&tmp)).await.unwrap_or(0);
            if swept > 0 {
                tracing::info!(directories = swept, "removed the item directories of workers that died");
            }
        }
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
            // Drained (--exit-when-empty): a batch whose items died did not succeed.
            if let Ok(counts) = self.store.counts(Some(&self.settings.queue)).await
                && let Some(c) = counts.first()
            {
                if c.dead > 0 {
                    tracing::warn!(
                        queue = %self.settings.queue, done = c.done, dead = c.dead,
                        "drained with dead items; `podkit queue dead --queue {}` shows why, `podkit queue retry` runs them again",
                        self.settings.queue
                    );
                    code = code.max(1);
                } else {
                    tracing::info!(queue = %self.settings.queue, done = c.done, "drained");
                }
            }
            ctx.shutdown.trigger(podkit_core::StopReason::Completed);
        }
        code
    }

    async fn slot(self: Arc<Self>, slot: usize, ctx: Context) -> Result<(), i32> {
        let s = &self.settings;
        // While the app of --http cannot be reached, items are given back and the slot waits.
        let mut unreachable =
            podkit_core::backoff::BackoffPolicy::exact(Duration::from_millis(100), Duration::from_secs(5)).start();
        let mut down = false;
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
            let reached = self.process(item, &ctx).await;
            self.metrics.in_flight.dec();
            match reached {
                Reached::Yes => {
                    if down {
                        tracing::info!(slot, "the app answers again");
                        ctx.readiness.ready("app");
                        down = false;
                    }
                    unreachable.reset();
                }
                Reached::No(error) => {
                    if !down {
                        tracing::warn!(slot, %error, "the app cannot be reached; items wait (not counted as attempts) until it can");
                        ctx.readiness.not_ready("app", format!("the app cannot be reached: {error}"));
                        down = true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(unreachable.next_delay()) => {}
                        _ = ctx.shutdown.triggered() => {}
                    }
                }
            }
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

    /// One attempt at one item, with its lease renewed while it runs. Says whether the stage
    /// could be reached at all.
    async fn process(&self, item: Claimed, ctx: &Context) -> Reached {
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
                            return Reached::Yes;
                        }
                        Err(e) => tracing::warn!(id = %item.id, error = %e, "cannot renew the lease; retrying"),
                    }
                }
                _ = ctx.shutdown.triggered(), if release_at.is_none() => {
                    // Keep a tenth of the grace period (at most 1 s) to give the item back.
                    release_at = Some(Instant::now() + ctx.grace - release_margin(ctx.grace));
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
            return Reached::Yes;
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
            Err(f) if f.unreachable => {
                // Not an attempt: the item did not get to the app.
                if let Err(e) = self.store.release(&item, &s.owner).await {
                    tracing::error!(id = %item.id, error = %e, "cannot give the item back; its lease will expire");
                }
                self.count("released");
                return Reached::No(f.error);
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
        Reached::Yes
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
                    .map_err(|e| {
                        let f = Failure::new(format!("POST {url}: {}", podkit_core::error_chain(&e)));
                        // Refused or unresolvable: the app is not up (yet); not the item's fault.
                        if e.is_connect() { Failure { unreachable: true, ..f } } else { f }
                    })?;
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
                    .prefix(ATTEMPT_PREFIX)
                    .tempdir()
                    .map_err(|e| Failure::new(format!("cannot create the item directory: {e}")))?;
                // Who owns it, for the sweep of a worker that died without cleaning up.
                std::fs::write(dir.path().join(OWNER_FILE), owner_stamp())
                    .map_err(|e| Failure::new(format!("cannot write in the item directory: {e}")))?;
                // The paths the command sees hold only [A-Za-z0-9._-]: a pushed file's name can
                // never become shell syntax in `sh -c '… {input} …'`. The name itself is data,
                // in $PODKIT_ITEM_NAME.
                let name = path_safe_name(item.name.as_deref().unwrap_or("input"));
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
                // Contained: the item's whole process tree (and its directory) goes if this
                // worker is killed, even with SIGKILL.
                let argv: Vec<String> = podkit_process::contain::wrap(
                    &argv.into_iter().map(OsString::from).collect::<Vec<_>>(),
                    Some(dir.path()),
                )
                .into_iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
                let argv = Argv::new(argv).map_err(Failure::new)?;
                let env = vec![
                    ("PODKIT_ITEM_NAME".to_string(), item.name.clone().unwrap_or_default()),
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

/// Whether an attempt reached its stage.
#[derive(Debug)]
enum Reached {
    Yes,
    /// The app of `--http` could not be connected to.
    No(String),
}

/// Why an attempt failed.
#[derive(Debug)]
struct Failure {
    error: String,
    exit_status: Option<i32>,
    stderr_tail: String,
    lost: bool,
    /// The app could not be connected to: the item is given back, not failed.
    unreachable: bool,
}

impl Failure {
    fn new(error: impl Into<String>) -> Self {
        Self { error: error.into(), exit_status: None, stderr_tail: String::new(), lost: false, unreachable: false }
    }

    /// The lease went to another worker: not a failure of the item, nothing to record.
    fn lost() -> Self {
        Self { lost: true, ..Self::new("the lease was lost") }
    }
}

/// The part of the grace period kept, after a stop, for giving back the items still running: a
/// tenth of it, at most 1 s (`--grace 30s`: items get 29 s; `--grace 1s`: 0.9 s).
fn release_margin(grace: Duration) -> Duration {
    (grace / 10).min(Duration::from_secs(1))
}

/// The prefix of an attempt's private directory in `$TMPDIR`.
pub(crate) const ATTEMPT_PREFIX: &str = "podkit-item-";
/// The file in an attempt directory that names its worker (`PID START_TICKS`).
const OWNER_FILE: &str = ".podkit-owner";

/// This process as an attempt directory's owner: its pid and its start time in clock ticks
/// (a pid alone can be reused).
fn owner_stamp() -> String {
    let me = std::process::id() as i32;
    format!("{me} {}", start_ticks(me).unwrap_or(0))
}

fn start_ticks(pid: i32) -> Option<u64> {
    procfs::process::Process::new(pid).ok()?.stat().ok().map(|s| s.starttime)
}

/// Removes attempt directories in `tmp` whose worker is gone (it was killed before it could
/// remove them, and so was its item's shim). A directory without an owner file is removed
/// once it is a minute old (its worker died between creating it and writing the file).
/// Returns how many went.
pub(crate) fn sweep_stale_attempts(tmp: &Path) -> usize {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(entries) = std::fs::read_dir(tmp) else { return 0 };
    let uid = nix::unistd::geteuid().as_raw();
    let mut removed = 0;
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(ATTEMPT_PREFIX) {
            continue;
        }
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if !meta.is_dir() || meta.uid() != uid {
            continue;
        }
        let stale = match std::fs::read_to_string(path.join(OWNER_FILE)) {
            Ok(stamp) => {
                let mut f = stamp.split_whitespace().map(|x| x.parse::<u64>().ok());
                match (f.next().flatten(), f.next().flatten()) {
                    (Some(pid), Some(ticks)) => start_ticks(pid as i32) != Some(ticks),
                    _ => true,
                }
            }
            Err(_) => {
                meta.modified().ok().and_then(|m| m.elapsed().ok()).is_some_and(|age| age > Duration::from_secs(60))
            }
        };
        if stale && std::fs::remove_dir_all(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// A file name for the paths a command sees: only `[A-Za-z0-9._-]` (anything else becomes
/// `_`), not starting with `.` or `-`, at most 100 bytes; the extension is kept.
pub(crate) fn path_safe_name(name: &str) -> String {
    let base = safe_name(name);
    let mut out: String =
        base.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    out = out.trim_start_matches(['.', '-']).to_string();
    if out.len() > 100 {
        // Keep the end, where the extension is.
        out = out[out.len() - 100..].to_string();
    }
    if out.is_empty() { "input".to_string() } else { out }
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

    #[test]
    fn the_stop_keeps_a_tenth_of_the_grace_at_most_a_second() {
        assert_eq!(release_margin(Duration::from_secs(30)), Duration::from_secs(1));
        assert_eq!(release_margin(Duration::from_secs(1)), Duration::from_millis(100));
        assert_eq!(release_margin(Duration::from_secs(5)), Duration::from_millis(500));
    }

    #[test]
    fn the_paths_a_command_sees_hold_no_shell_syntax() {
        for (name, want) in [
            ("a;echo INJECTED;.txt", "a_echo_INJECTED_.txt"),
            ("c d.txt", "c_d.txt"),
            ("$(id).txt", "__id_.txt"),
            ("x\ny`z`.csv", "x_y_z_.csv"),
            ("../../etc/passwd", "passwd"),
            ("-rf", "rf"),
            ("'\"", "__"),
            ("photo.JPG", "photo.JPG"),
        ] {
            assert_eq!(path_safe_name(name), want, "{name:?}");
        }
        assert!(path_safe_name(&"a".repeat(300)).len() <= 100);
    }

    #[test]
    fn stale_attempt_directories_are_swept_and_live_ones_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let mk = |name: &str, owner: Option<&str>| {
            let d = tmp.path().join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("in"), "x").unwrap();
            if let Some(o) = owner {
                std::fs::write(d.join(OWNER_FILE), o).unwrap();
            }
            d
        };
        let live = mk("podkit-item-live", Some(&owner_stamp()));
        // A pid that does not run (or runs with another start time).
        let dead = mk("podkit-item-dead", Some("999999999 1"));
        let fresh = mk("podkit-item-fresh", None);
        let other = mk("something-else", Some("999999999 1"));
        assert_eq!(sweep_stale_attempts(tmp.path()), 1);
        assert!(live.exists() && fresh.exists() && other.exists());
        assert!(!dead.exists());
    }
}
