//! `podkit queue`: the work-queue pattern. The developer supplies a program that turns an
//! input file into an output file; podkit does the rest: storage, leases, retries, dead
//! letters, pipelines, status. See `docs/queue.md`.

mod store;
mod work;

use std::ffi::OsString;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use podkit_core::{AdminBuilder, CommonArgs, Component, Context, EX_UNAVAILABLE, EX_USAGE, StartError};
use podkit_process::hook::Runner;

use crate::store::{NewItem, RedisStore, SqliteStore, Store};
use crate::work::{Sink, Stage, Worker};

/// The admin listener's default address for `podkit queue work`.
const DEFAULT_ADMIN: &str = "127.0.0.1:9194";

/// `podkit queue` and its subcommands.
#[derive(Debug, Clone, Args)]
pub struct QueueArgs {
    #[command(subcommand)]
    command: QueueCommand,
}

// Parsed once per process; the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Subcommand)]
enum QueueCommand {
    /// Add items: files, the files of a directory, or one item per line of stdin (`-`).
    Push(PushArgs),
    /// Take items and run a stage on each until stopped (or until the queue is drained).
    Work(WorkArgs),
    /// Items per state, per queue.
    Status(StatusArgs),
    /// Dead-lettered items with their last error and stderr tail.
    Dead(StatusArgs),
    /// Put dead items back (all of a queue, or the ids given).
    Retry(RetryArgs),
    /// Remove a queue and all its items.
    Purge(PurgeArgs),
    /// Run every stage of a pipeline described in a YAML file until the whole pipeline is
    /// drained.
    Pipeline(PipelineArgs),
}

/// Where the queue lives.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StoreUrl {
    Sqlite(PathBuf),
    /// `redis://HOST:PORT/DB` (or `rediss://` for TLS), passed to the Redis client as is.
    Redis(String),
}

fn parse_store(s: &str) -> Result<StoreUrl, String> {
    if let Some(path) = s.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err("expected a file, as in sqlite:///var/lib/podkit/q.db".into());
        }
        return Ok(StoreUrl::Sqlite(PathBuf::from(path)));
    }
    if s.starts_with("redis://") || s.starts_with("rediss://") {
        redis::Client::open(s).map_err(|e| format!("{e}; expected redis://HOST:PORT/DB"))?;
        return Ok(StoreUrl::Redis(s.to_string()));
    }
    Err("expected sqlite:///PATH or redis://HOST:PORT/DB".into())
}

fn parse_lease(s: &str) -> Result<podkit_core::Duration, String> {
    let d: podkit_core::Duration = s.parse()?;
    if d.get() < Duration::from_secs(1) {
        return Err("a lease must last at least 1s".into());
    }
    Ok(d)
}

fn parse_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 200
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok { Ok(s.to_string()) } else { Err("expected 1-200 letters, digits, '-', '_', '.' or ':'".into()) }
}

#[derive(Debug, Clone, Args)]
struct StoreArgs {
    /// The store: sqlite:///PATH (one file shared by every worker on a host) or
    /// redis://HOST:PORT/DB (workers on many hosts).
    #[arg(long, value_name = "URL", value_parser = parse_store)]
    store: StoreUrl,

    /// Largest item (input or output), in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    max_item_size: usize,
}

impl StoreArgs {
    async fn open(&self) -> Result<OpenStore, String> {
        open_store(&self.store, self.max_item_size).await
    }
}

/// An open store of either kind. Each command matches on it once, at start, and from there on
/// runs code generic over [`Store`].
#[derive(Debug)]
enum OpenStore {
    Sqlite(SqliteStore),
    Redis(RedisStore),
}

async fn open_store(url: &StoreUrl, max_item_size: usize) -> Result<OpenStore, String> {
    match url {
        StoreUrl::Sqlite(path) => {
            SqliteStore::open(path, max_item_size).map(OpenStore::Sqlite).map_err(|e| e.to_string())
        }
        StoreUrl::Redis(url) => {
            RedisStore::open(url, max_item_size).await.map(OpenStore::Redis).map_err(|e| e.to_string())
        }
    }
}

#[derive(Debug, Clone, Args)]
struct PushArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The queue: a name of letters, digits and `-_.:` (items of different queues never mix).
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    queue: String,
    /// The item's id (one item only): pushing the same id again adds nothing.
    #[arg(long, value_name = "ID", value_parser = parse_name, conflicts_with = "id_from_name")]
    id: Option<String>,
    /// Use each file's name as its id, so pushing a directory again adds only new files.
    #[arg(long)]
    id_from_name: bool,
    /// Files, directories (their files), or `-` for one item per line of stdin.
    #[arg(required = true, value_name = "FILE")]
    inputs: Vec<PathBuf>,
}

#[derive(Debug, Clone, Args)]
struct WorkArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    store: StoreArgs,
    /// The queue: a name of letters, digits and `-_.:` (items of different queues never mix).
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    queue: String,
    /// Items run at once (default: the number of cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    concurrency: Option<u32>,
    /// Longest run of one attempt; then it is killed and counts as a failure.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = podkit_core::Duration::parse_positive)]
    timeout: podkit_core::Duration,
    /// Attempts before an item is dead-lettered.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    max_attempts: u32,
    /// Lease on a running item, renewed every third of it; a worker that dies loses its items
    /// after this long.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_lease)]
    lease: podkit_core::Duration,
    /// Make each output an item of this queue (the next stage).
    #[arg(long, value_name = "NAME", value_parser = parse_name, conflicts_with = "out_dir")]
    to: Option<String>,
    /// Write each output to DIR/<item id>.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
    /// Exit 0 once the queue has nothing pending or running.
    #[arg(long)]
    exit_when_empty: bool,
    /// Instead of a command, POST each input to this URL; the answer's body is the output.
    #[arg(long, value_name = "URL", conflicts_with = "command")]
    http: Option<podkit_core::HttpUrl>,
    /// The stage: a command (argv, no shell) in which `{input}` and `{output}` become paths.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<OsString>,
}

#[derive(Debug, Clone, Args)]
struct StatusArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// One queue (default: all).
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    queue: Option<String>,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Show it again every second (with a progress bar on a terminal) until interrupted.
    #[arg(long, conflicts_with = "json")]
    watch: bool,
}

#[derive(Debug, Clone, Args)]
struct RetryArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The queue: a name of letters, digits and `-_.:` (items of different queues never mix).
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    queue: String,
    /// Only these items (default: every dead item of the queue).
    ids: Vec<String>,
}

#[derive(Debug, Clone, Args)]
struct PurgeArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The queue: a name of letters, digits and `-_.:` (items of different queues never mix).
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    queue: String,
}

// === one-shot commands ===

/// Runs a one-shot subcommand (everything but `work`), printing its result. Returns the exit
/// status.
impl podkit_core::Command for QueueArgs {
    const NAME: &'static str = "queue";

    fn augment(cmd: clap::Command) -> clap::Command {
        // Only the long-running subcommands have an admin listener.
        cmd.mut_subcommand("work", |w| podkit_core::config::with_admin_default(w, DEFAULT_ADMIN))
            .mut_subcommand("pipeline", |w| podkit_core::config::with_admin_default(w, DEFAULT_ADMIN))
    }

    fn main(self, effective: serde_json::Value) -> i32 {
        match self.command {
            QueueCommand::Work(args) => {
                let common = args.common.clone();
                podkit_core::launch(Work::new(args), &common, effective)
            }
            QueueCommand::Pipeline(args) => {
                let common = args.common.clone();
                podkit_core::launch(Pipeline::new(args), &common, effective)
            }
            other => run_oneshot(other),
        }
    }
}

/// The commands that do one thing and exit (push, status, dead, retry, purge).
fn run_oneshot(cmd: QueueCommand) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return 70;
        }
    };
    rt.block_on(async move {
        match oneshot(cmd).await {
            Ok(()) => 0,
            Err((code, msg)) => {
                eprintln!("error: {msg}");
                code
            }
        }
    })
}

type CmdResult = Result<(), (i32, String)>;

/// A one-shot command with everything it needs but the store.
enum OneShot {
    Push(PushArgs, Vec<NewItem>),
    Status(StatusArgs),
    Dead(StatusArgs),
    Retry(RetryArgs),
    Purge(PurgeArgs),
}

async fn oneshot(cmd: QueueCommand) -> CmdResult {
    let cmd = match cmd {
        // push reads its inputs before it opens the store: a bad input is reported as such
        // (status 64) and opens nothing, whatever state the store is in.
        QueueCommand::Push(a) => {
            let batch = push_batch(&a)?;
            OneShot::Push(a, batch)
        }
        QueueCommand::Status(a) => OneShot::Status(a),
        QueueCommand::Dead(a) => OneShot::Dead(a),
        QueueCommand::Retry(a) => OneShot::Retry(a),
        QueueCommand::Purge(a) => OneShot::Purge(a),
        QueueCommand::Work(_) | QueueCommand::Pipeline(_) => unreachable!("long-running commands are launched"),
    };
    let store_args = match &cmd {
        OneShot::Push(a, _) => &a.store,
        OneShot::Status(a) | OneShot::Dead(a) => &a.store,
        OneShot::Retry(a) => &a.store,
        OneShot::Purge(a) => &a.store,
    };
    match store_args.open().await.map_err(|e| (EX_UNAVAILABLE, e))? {
        OpenStore::Sqlite(s) => cmd.run(&s).await,
        OpenStore::Redis(s) => cmd.run(&s).await,
    }
}

impl OneShot {
    async fn run<S: Store>(self, store: &S) -> CmdResult {
        match self {
            OneShot::Push(a, batch) => push(store, a, batch).await,
            OneShot::Status(a) => status(store, a).await,
            OneShot::Dead(a) => dead(store, a).await,
            OneShot::Retry(a) => retry(store, a).await,
            OneShot::Purge(a) => purge(store, a).await,
        }
    }
}

#[allow(clippy::print_stdout)] // these commands' results are their output
fn say(line: &str) {
    println!("{line}");
}

fn random_id() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mut r = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut r);
    }
    format!("{t:x}-{}", u64::from_le_bytes(r) & 0xffff_ffff_ffff)
}

/// The items `push` was given, each with its id.
fn push_batch(a: &PushArgs) -> Result<Vec<NewItem>, (i32, String)> {
    let mut items = Vec::new();
    for input in &a.inputs {
        if input.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).map_err(|e| (EX_USAGE, format!("reading stdin: {e}")))?;
            for line in text.lines().filter(|l| !l.is_empty()) {
                items.push((None, line.as_bytes().to_vec()));
            }
        } else if input.is_dir() {
            let mut files: Vec<_> = std::fs::read_dir(input)
                .map_err(|e| (EX_USAGE, format!("{}: {e}", input.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            for f in files {
                let data = std::fs::read(&f).map_err(|e| (EX_USAGE, format!("{}: {e}", f.display())))?;
                items.push((Some(work::safe_name(&f.to_string_lossy())), data));
            }
        } else {
            let data = std::fs::read(input).map_err(|e| (EX_USAGE, format!("{}: {e}", input.display())))?;
            items.push((Some(work::safe_name(&input.to_string_lossy())), data));
        }
    }
    if a.id.is_some() && items.len() != 1 {
        return Err((EX_USAGE, format!("--id names one item, but {} were given", items.len())));
    }
    let batch: Vec<_> = items
        .into_iter()
        .map(|(name, data)| {
            let id = match (&a.id, a.id_from_name, &name) {
                (Some(id), _, _) => id.clone(),
                (None, true, Some(n)) => n.clone(),
                _ => random_id(),
            };
            (id, name, data)
        })
        .collect();
    Ok(batch)
}

async fn push<S: Store>(store: &S, a: PushArgs, batch: Vec<NewItem>) -> CmdResult {
    let total = batch.len();
    let added = store.push(&a.queue, batch).await.map_err(|e| {
        // An item too large is bad input; anything else is the store.
        let status = if matches!(e, store::StoreError::TooLarge { .. }) { EX_USAGE } else { EX_UNAVAILABLE };
        (status, e.to_string())
    })?;
    say(&format!("pushed {added} new item(s) to {} ({} already there)", a.queue, total - added));
    Ok(())
}

async fn status<S: Store>(store: &S, a: StatusArgs) -> CmdResult {
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    loop {
        let counts = store.counts(a.queue.as_deref()).await.map_err(|e| (EX_UNAVAILABLE, e.to_string()))?;
        if a.json {
            say(&serde_json::to_string(&counts).unwrap_or_default());
            return Ok(());
        }
        if a.watch && tty {
            // Clear the screen and go home: the table redraws in place.
            say("\x1b[2J\x1b[H");
        }
        say(&format!(
            "{:<24} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>10}  {}",
            "QUEUE", "PENDING", "RUNNING", "DONE", "DEAD", "FAILED", "RATE/s", "ETA", "PROGRESS"
        ));
        for c in counts {
            let rate = c.done_last_minute as f64 / 60.0;
            let left = c.pending + c.running;
            let eta = if left == 0 {
                "-".to_string()
            } else if rate > 0.0 {
                podkit_core::Duration(Duration::from_secs((left as f64 / rate).ceil() as u64)).to_string()
            } else {
                "?".to_string()
            };
            let total = c.pending + c.running + c.done + c.dead;
            let finished = c.done + c.dead;
            let width = 20usize;
            // An empty queue counts as finished.
            let percent = (finished * 100).checked_div(total).unwrap_or(100);
            let filled = (percent as usize * width) / 100;
            let bar = format!("[{}{}] {percent:>3}%", "#".repeat(filled), ".".repeat(width - filled));
            say(&format!(
                "{:<24} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8.1} {:>10}  {bar}",
                c.queue, c.pending, c.running, c.done, c.dead, c.failed_attempts, rate, eta
            ));
        }
        if !a.watch {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn dead<S: Store>(store: &S, a: StatusArgs) -> CmdResult {
    let items = store.dead(a.queue.as_deref()).await.map_err(|e| (EX_UNAVAILABLE, e.to_string()))?;
    if a.json {
        say(&serde_json::to_string(&items).unwrap_or_default());
        return Ok(());
    }
    for d in items {
        say(&format!(
            "{}/{}: {} attempt(s), {}{}",
            d.queue,
            d.id,
            d.attempts,
            d.error.unwrap_or_default(),
            d.exit_status.map(|s| format!(" (status {s})")).unwrap_or_default()
        ));
        if let Some(t) = d.stderr_tail.filter(|t| !t.is_empty()) {
            for line in t.lines() {
                say(&format!("    | {line}"));
            }
        }
    }
    Ok(())
}

async fn retry<S: Store>(store: &S, a: RetryArgs) -> CmdResult {
    if !a.ids.is_empty() {
        // An id that is not dead (unknown, a typo, or not failed) is said, not silently skipped.
        let dead: std::collections::HashSet<String> = store
            .dead(Some(&a.queue))
            .await
            .map_err(|e| (EX_UNAVAILABLE, e.to_string()))?
            .into_iter()
            .map(|d| d.id)
            .collect();
        let not_dead: Vec<&str> = a.ids.iter().filter(|id| !dead.contains(*id)).map(String::as_str).collect();
        if !not_dead.is_empty() {
            return Err((
                EX_USAGE,
                format!(
                    "not dead-lettered in queue {}: {} (unknown, or pending, running or done); `podkit queue dead --queue {}` lists the dead ones; nothing was retried",
                    a.queue,
                    not_dead.join(", "),
                    a.queue
                ),
            ));
        }
    }
    let n = store.retry(&a.queue, a.ids).await.map_err(|e| (EX_UNAVAILABLE, e.to_string()))?;
    say(&format!("{n} item(s) of {} back to pending", a.queue));
    Ok(())
}

async fn purge<S: Store>(store: &S, a: PurgeArgs) -> CmdResult {
    let n = store.purge(&a.queue).await.map_err(|e| (EX_UNAVAILABLE, e.to_string()))?;
    say(&format!("removed queue {} ({n} item(s))", a.queue));
    Ok(())
}

// === pipelines ===

#[derive(Debug, Clone, Args)]
struct PipelineArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// The pipeline (YAML): `store`, and `stages`, each with `queue`, `command` (a list, with
    /// `{input}`/`{output}`) or `http`, and `to` (the next stage's queue) or `out_dir`, plus
    /// optional `concurrency`, `timeout`, `lease`, `max_attempts`.
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineFile {
    store: String,
    #[serde(default = "default_item_size")]
    max_item_size: usize,
    stages: Vec<StageFile>,
}

fn default_item_size() -> usize {
    64 << 20
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StageFile {
    queue: String,
    #[serde(default)]
    command: Vec<String>,
    http: Option<String>,
    to: Option<String>,
    out_dir: Option<PathBuf>,
    concurrency: Option<usize>,
    timeout: Option<String>,
    lease: Option<String>,
    max_attempts: Option<u32>,
}

/// A pipeline file, checked: every error names the stage and the field.
async fn load_pipeline(path: &std::path::Path) -> Result<(OpenStore, Vec<work::Settings>, usize), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file: PipelineFile = serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if file.stages.is_empty() {
        return Err(format!("{}: no stages", path.display()));
    }
    let url = parse_store(&file.store).map_err(|e| format!("store: {e}"))?;
    let store = open_store(&url, file.max_item_size).await?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    let dur = |stage: &str, field: &str, v: &Option<String>, default: Duration| -> Result<Duration, String> {
        match v {
            None => Ok(default),
            Some(s) => podkit_core::Duration::parse_positive(s)
                .map(|d| d.get())
                .map_err(|e| format!("stage {stage}: {field}: {e}")),
        }
    };
    let mut stages = Vec::new();
    for st in file.stages {
        let q = parse_name(&st.queue).map_err(|e| format!("stage {:?}: queue: {e}", st.queue))?;
        let stage = match (&st.http, st.command.is_empty()) {
            (Some(url), true) => Stage::Http(reqwest::Url::parse(url).map_err(|e| format!("stage {q}: http: {e}"))?),
            (None, false) => Stage::Exec(st.command.clone()),
            _ => return Err(format!("stage {q}: give either command (a list) or http")),
        };
        let sink = match (&st.to, &st.out_dir) {
            (Some(next), None) => Sink::Next(parse_name(next).map_err(|e| format!("stage {q}: to: {e}"))?),
            (None, Some(dir)) => {
                std::fs::create_dir_all(dir).map_err(|e| format!("stage {q}: out_dir {}: {e}", dir.display()))?;
                Sink::Dir(dir.clone())
            }
            (None, None) => Sink::Store,
            (Some(_), Some(_)) => return Err(format!("stage {q}: give to or out_dir, not both")),
        };
        stages.push(work::Settings {
            queue: q.clone(),
            stage,
            sink,
            concurrency: st.concurrency.unwrap_or(cores).max(1),
            timeout: dur(&q, "timeout", &st.timeout, Duration::from_secs(300))?,
            lease: dur(&q, "lease", &st.lease, Duration::from_secs(30))?.max(Duration::from_secs(1)),
            max_attempts: st.max_attempts.unwrap_or(3).max(1),
            exit_when_empty: false,
            owner: format!("{host}:{}:{}", std::process::id(), random_id()),
        });
    }
    Ok((store, stages, file.max_item_size))
}

/// The `podkit queue pipeline` component.
#[derive(Debug)]
struct Pipeline {
    args: PipelineArgs,
    metrics: work::Metrics,
    /// The store, stages and item size limit, once [`Component::prepare`] has read the file.
    loaded: Option<(OpenStore, Vec<work::Settings>, usize)>,
}

impl Pipeline {
    fn new(args: PipelineArgs) -> Self {
        Self { args, metrics: work::Metrics::default(), loaded: None }
    }
}

impl Component for Pipeline {
    const NAME: &'static str = "queue";
    const DEFAULT_ADMIN: &'static str = DEFAULT_ADMIN;
    type Error = WorkError;

    async fn prepare(&mut self, _ctx: &Context) -> Result<(), StartError> {
        let loaded =
            load_pipeline(&self.args.file).await.map_err(|e| StartError::usage(format!("bad pipeline: {e}")))?;
        self.loaded = Some(loaded);
        Ok(())
    }

    fn setup(&mut self, admin: &mut AdminBuilder, _ctx: &Context) {
        register(admin, &self.metrics);
    }

    async fn run(mut self, ctx: Context) -> Result<i32, WorkError> {
        let (store, stages, max_item_size) = self.loaded.take().expect("prepared before run");
        match store {
            OpenStore::Sqlite(s) => self.serve(s, stages, max_item_size, ctx).await,
            OpenStore::Redis(s) => self.serve(s, stages, max_item_size, ctx).await,
        }
    }
}

impl Pipeline {
    /// Runs every stage on `store` until the pipeline is drained or a stop.
    async fn serve<S: Store>(
        self,
        store: S,
        stages: Vec<work::Settings>,
        max_item_size: usize,
        ctx: Context,
    ) -> Result<i32, WorkError> {
        let reaper = podkit_process::reaper::Reaper::start().map_err(WorkError::Reaper)?;
        let client = podkit_core::http::client(Duration::from_secs(3600)).map_err(WorkError::HttpClient)?;
        let queues: Vec<String> = stages.iter().map(|s| s.queue.clone()).collect();
        let mut running = Vec::new();
        for settings in stages {
            let worker = Arc::new(Worker {
                store: store.clone(),
                settings: Arc::new(settings),
                runner: Runner::new(reaper.clone(), client.clone()),
                client: client.clone(),
                metrics: self.metrics.clone(),
                max_item_size,
            });
            running.push(tokio::spawn(worker.run(ctx.clone())));
        }
        // Drained: every stage has nothing pending or running at one moment. Nothing can appear
        // later, because only a running item of an earlier stage adds items to the next.
        let mut every = ctx.shutdown.every(Duration::from_millis(200));
        let mut failed = false;
        while every.tick().await {
            if let Ok(all) = store.counts(None).await {
                let busy = all.iter().filter(|c| queues.contains(&c.queue)).any(|c| c.pending + c.running > 0);
                if !busy {
                    let done: u64 = all.iter().filter(|c| queues.last() == Some(&c.queue)).map(|c| c.done).sum();
                    let dead: u64 = all.iter().filter(|c| queues.contains(&c.queue)).map(|c| c.dead).sum();
                    if dead > 0 {
                        let per: Vec<String> = all
                            .iter()
                            .filter(|c| queues.contains(&c.queue) && c.dead > 0)
                            .map(|c| format!("{}: {}", c.queue, c.dead))
                            .collect();
                        tracing::warn!(stages = queues.len(), done_at_last_stage = done, dead, dead_by_stage = %per.join(", "),
                            "pipeline drained with dead items; `podkit queue dead` shows why, `podkit queue retry` runs them again");
                        failed = true;
                    } else {
                        tracing::info!(stages = queues.len(), done_at_last_stage = done, "pipeline drained");
                    }
                    ctx.shutdown.trigger(podkit_core::StopReason::Completed);
                    break;
                }
            }
        }
        let mut code = if failed { 1 } else { 0 };
        for r in running {
            code = code.max(r.await.unwrap_or(70));
        }
        Ok(code)
    }
}

fn register(admin: &mut AdminBuilder, m: &work::Metrics) {
    let reg = admin.metrics();
    reg.register("attempts", "Attempts by result (done, retry, dead, lost, released)", m.attempts.clone());
    reg.register_with_unit(
        "run_duration",
        "Time one attempt took",
        prometheus_client::registry::Unit::Seconds,
        m.run_seconds.clone(),
    );
    reg.register("lease_renewals", "Leases renewed on running items", m.lease_renewals.clone());
    reg.register("in_flight", "Items running in this worker", m.in_flight.clone());
    reg.register("items", "Items per queue and state in the store", m.items.clone());
}

// === impl Work ===

/// The `podkit queue work` component.
#[derive(Debug)]
struct Work {
    args: WorkArgs,
    metrics: work::Metrics,
    /// The stage, the sink and the open store, once [`Component::prepare`] has checked them.
    prepared: Option<(Stage, Sink, OpenStore)>,
}

#[derive(Debug, thiserror::Error)]
enum WorkError {
    #[error("cannot start reaping item processes: {0}")]
    Reaper(#[source] std::io::Error),
    #[error("{0}")]
    HttpClient(String),
}

impl podkit_core::ExitStatus for WorkError {
    fn exit_status(&self) -> i32 {
        podkit_core::EX_SOFTWARE
    }
}

impl Work {
    fn new(args: WorkArgs) -> Self {
        Self { args, metrics: work::Metrics::default(), prepared: None }
    }
}

impl Component for Work {
    const NAME: &'static str = "queue";
    const DEFAULT_ADMIN: &'static str = DEFAULT_ADMIN;
    type Error = WorkError;

    async fn prepare(&mut self, _ctx: &Context) -> Result<(), StartError> {
        let a = &self.args;
        let stage = match (&a.http, work::check_template(&a.command)) {
            (Some(url), _) => Stage::Http(url.clone().into_inner()),
            (None, Ok(t)) => Stage::Exec(t),
            (None, Err(e)) => return Err(StartError::usage(format!("bad stage: {e}"))),
        };
        let sink = match (&a.to, &a.out_dir) {
            (Some(q), _) => Sink::Next(q.clone()),
            (None, Some(dir)) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StartError::usage(format!("cannot create --out-dir {}: {e}", dir.display())))?;
                Sink::Dir(dir.clone())
            }
            (None, None) => Sink::Store,
        };
        let store = a.store.open().await.map_err(|e| StartError::unavailable(format!("cannot open the store: {e}")))?;
        self.prepared = Some((stage, sink, store));
        Ok(())
    }

    fn setup(&mut self, admin: &mut AdminBuilder, _ctx: &Context) {
        register(admin, &self.metrics);
    }

    async fn run(mut self, ctx: Context) -> Result<i32, WorkError> {
        let (stage, sink, store) = self.prepared.take().expect("prepared before run");
        match store {
            OpenStore::Sqlite(s) => self.serve(s, stage, sink, ctx).await,
            OpenStore::Redis(s) => self.serve(s, stage, sink, ctx).await,
        }
    }
}

impl Work {
    /// Runs the worker pool on `store` until a stop (or, with --exit-when-empty, a drained queue).
    async fn serve<S: Store>(self, store: S, stage: Stage, sink: Sink, ctx: Context) -> Result<i32, WorkError> {
        let a = self.args;
        let reaper = podkit_process::reaper::Reaper::start().map_err(WorkError::Reaper)?;
        let client = podkit_core::http::client(a.timeout.get()).map_err(WorkError::HttpClient)?;
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
        let settings = work::Settings {
            queue: a.queue.clone(),
            stage,
            sink,
            concurrency: a.concurrency.map_or(cores, |c| c as usize),
            timeout: a.timeout.get(),
            lease: a.lease.get(),
            max_attempts: a.max_attempts,
            exit_when_empty: a.exit_when_empty,
            owner: format!("{host}:{}:{}", std::process::id(), random_id()),
        };
        let worker = Arc::new(Worker {
            store,
            settings: Arc::new(settings),
            runner: Runner::new(reaper, client.clone()),
            client,
            metrics: self.metrics,
            max_item_size: a.store.max_item_size,
        });
        Ok(worker.run(ctx).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_parse() {
        assert_eq!(parse_store("sqlite:///var/q.db").unwrap(), StoreUrl::Sqlite("/var/q.db".into()));
        assert!(parse_store("sqlite://").is_err());
        assert_eq!(parse_store("redis://h:6379/0").unwrap(), StoreUrl::Redis("redis://h:6379/0".into()));
        assert!(parse_store("postgres://x").unwrap_err().contains("expected sqlite:///PATH or redis://"));
    }
}
