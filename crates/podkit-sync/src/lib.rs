//! `podkit sync`: the content-sync sidecar. It keeps a directory filled with the current
//! content of a git repository or an HTTP source, published with git-sync's contract (a
//! symlink switched by one rename, or with `--copy` a directory swapped in one step), on a
//! period, on SIGHUP, or on an authenticated trigger. See `docs/sync.md`.
//!
//! The parts: [`publish`] (versions on disk and the atomic switch), [`git`] and [`http`] (the
//! sources), [`trigger`] ("sync now" from outside), [`hooks`] (exechook and webhook).

mod git;
mod hooks;
mod http;
mod publish;
mod trigger;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Json;
use axum::routing::get;
use clap::Args;
use podkit_core::backoff::BackoffPolicy;
use podkit_core::{AdminBuilder, Argv, CommonArgs, Component, Context, Listen, StartError};
use podkit_process::Reaper;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use serde::Serialize;
use tokio::sync::Notify;

pub use crate::git::{Gc, Submodules};
use crate::git::{GitOptions, GitSource, Verify};
pub use crate::hooks::When;
use crate::hooks::{ExecHook, HookLabel, Hooks, Pending, WebHook};
use crate::http::{HttpOptions, HttpSource};
use crate::publish::Publisher;
use crate::trigger::TriggerLabel;

/// The admin listener's default address for `podkit sync`.
const DEFAULT_ADMIN: &str = "127.0.0.1:9197";

/// Options of `podkit sync`. Their doc comments are the `--help` text; docs/sync.md maps each
/// to its git-sync flag.
#[derive(Debug, Clone, Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// The git repository to sync (https://, ssh://, git://, file:// or a path; git itself
    /// does the transport, so credential helpers, ~/.ssh/config and proxies apply).
    #[arg(
        long,
        value_name = "URL",
        required_unless_present = "http",
        conflicts_with = "http",
        help_heading = "Source"
    )]
    pub repo: Option<String>,

    /// Sync from HTTP instead: a .tar.gz, .tgz, .tar or .zip archive (unpacked), or a single
    /// file. Asked for with If-None-Match / If-Modified-Since; the version name is the
    /// content's SHA-256.
    #[arg(long, value_name = "URL", help_heading = "Source")]
    pub http: Option<podkit_core::HttpUrl>,

    /// The branch, tag or full commit hash to publish.
    #[arg(long = "ref", value_name = "REF", default_value = "HEAD", help_heading = "Source")]
    pub reference: String,

    /// How many commits of history to fetch (0: all of it).
    #[arg(long, value_name = "N", default_value_t = 1, help_heading = "Source")]
    pub depth: u32,

    /// Check out submodules: recursive, shallow (first level only) or off.
    #[arg(long, value_enum, default_value = "recursive", help_heading = "Source")]
    pub submodules: Submodules,

    /// A file of sparse-checkout patterns (git's non-cone syntax): only matching paths are
    /// checked out.
    #[arg(long, value_name = "FILE", help_heading = "Source")]
    pub sparse_checkout_file: Option<PathBuf>,

    /// A partial-clone filter for the fetch (blob:none, tree:0, …).
    #[arg(long, value_name = "SPEC", help_heading = "Source")]
    pub filter: Option<String>,

    /// The user name for HTTPS authentication (its password comes from --password-file).
    #[arg(long, value_name = "NAME", help_heading = "Credentials")]
    pub username: Option<String>,

    /// A file holding the password or token, read again at each sync.
    #[arg(long, value_name = "FILE", requires = "username", help_heading = "Credentials")]
    pub password_file: Option<PathBuf>,

    /// The SSH private key for ssh:// repositories.
    #[arg(long, value_name = "FILE", help_heading = "Credentials")]
    pub ssh_key_file: Option<PathBuf>,

    /// The known_hosts file the server's key must be in (strict host key checking).
    #[arg(long, value_name = "FILE", help_heading = "Credentials")]
    pub ssh_known_hosts_file: Option<PathBuf>,

    /// With --http: a file holding a bearer token, read again at each sync.
    #[arg(long, value_name = "FILE", requires = "http", help_heading = "Credentials")]
    pub http_bearer_file: Option<PathBuf>,

    /// With --http: the SHA-256 (hex) the content must have; anything else is refused.
    #[arg(long, value_name = "HEX", requires = "http", value_parser = parse_sha256, help_heading = "Source")]
    pub sha256: Option<String>,

    /// Where versions are kept: DIR/.worktrees/VERSION, published as DIR/LINK.
    #[arg(long, value_name = "DIR", help_heading = "Publishing")]
    pub root: PathBuf,

    /// The published name under --root (or an absolute path): a symlink to the current version.
    /// Default: the repository's name (git-sync's default), or "current" for --http.
    #[arg(long, value_name = "NAME", help_heading = "Publishing")]
    pub link: Option<PathBuf>,

    /// How many previous versions to keep besides the published one.
    #[arg(long, value_name = "N", default_value_t = 1, help_heading = "Publishing")]
    pub keep: usize,

    /// Publish a real directory (a copy, swapped in with one rename) instead of a symlink, for
    /// consumers that do not follow links.
    #[arg(long, help_heading = "Publishing")]
    pub copy: bool,

    /// Run `git gc` after syncs: auto (when git thinks it is due), always, aggressive, off.
    #[arg(long, value_enum, default_value = "auto", help_heading = "Publishing")]
    pub git_gc: Gc,

    /// Check each commit's signature before publishing it (with --allowed-signers or
    /// --gpg-home); an unsigned or wrongly signed commit is not published.
    #[arg(long, help_heading = "Verification")]
    pub verify_signatures: bool,

    /// SSH signatures: the allowed-signers file (`ssh-keygen -Y verify`'s format).
    #[arg(
        long,
        value_name = "FILE",
        requires = "verify_signatures",
        conflicts_with = "gpg_home",
        help_heading = "Verification"
    )]
    pub allowed_signers: Option<PathBuf>,

    /// OpenPGP signatures: a GnuPG home directory holding the trusted keys.
    #[arg(long, value_name = "DIR", requires = "verify_signatures", help_heading = "Verification")]
    pub gpg_home: Option<PathBuf>,

    /// How often to look for a new version.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = podkit_core::Duration::parse_positive, help_heading = "When")]
    pub period: podkit_core::Duration,

    /// Bound on each git command or HTTP request.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = podkit_core::Duration::parse_positive, help_heading = "When")]
    pub sync_timeout: podkit_core::Duration,

    /// Sync once, publish, and exit: 0 when published, non-zero when not (an init container).
    #[arg(long, help_heading = "When")]
    pub one_time: bool,

    /// Consecutive failed syncs before exiting with status 69 (-1: keep trying forever, with
    /// backoff, serving the last good version meanwhile).
    #[arg(long, value_name = "N", default_value_t = -1, allow_negative_numbers = true, help_heading = "When")]
    pub max_failures: i64,

    /// Sync at once on this signal. SIGHUP always does; the option exists for git-sync's
    /// command lines.
    #[arg(long, value_name = "SIGNAL", value_parser = parse_sync_signal, help_heading = "When")]
    pub sync_on_signal: Option<String>,

    /// Listen here for `POST /sync` triggers (needs --trigger-secret-file).
    #[arg(
        long,
        value_name = "ADDR",
        requires = "trigger_secret_file",
        help_heading = "Trigger",
        value_parser = podkit_core::config::parse_listen_addr
    )]
    pub trigger_listen: Option<SocketAddr>,

    /// Write the trigger listener's bound address here once it listens.
    #[arg(long, value_name = "FILE", requires = "trigger_listen", help_heading = "Trigger")]
    pub trigger_listen_addr_file: Option<PathBuf>,

    /// The secret a trigger must prove it knows (GitHub HMAC signature, GitLab token or bearer
    /// token); read again for each request.
    #[arg(long, value_name = "FILE", requires = "trigger_listen", help_heading = "Trigger")]
    pub trigger_secret_file: Option<PathBuf>,

    /// Triggered syncs are at least this far apart; triggers in between are coalesced.
    #[arg(long, value_name = "DURATION", default_value = "1s", help_heading = "Trigger")]
    pub trigger_min_interval: podkit_core::Duration,

    /// A command run in the new version's directory, with GITSYNC_HASH and PODKIT_SYNC_VERSION
    /// set to its name (split like a shell would, not run by one).
    #[arg(long, value_name = "COMMAND", help_heading = "Hooks")]
    pub exechook_command: Option<Argv>,

    /// When the exechook runs: post-publish (retried until it succeeds), or pre-publish (a
    /// failure keeps the old version published).
    #[arg(long, value_enum, default_value = "post-publish", help_heading = "Hooks")]
    pub exechook_when: When,

    /// Bound on one exechook run.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = podkit_core::Duration::parse_positive, help_heading = "Hooks")]
    pub exechook_timeout: podkit_core::Duration,

    /// A URL called after each publish (header Gitsync-Hash and a JSON body naming the
    /// version), retried with backoff until it succeeds.
    #[arg(long, value_name = "URL", help_heading = "Hooks")]
    pub webhook_url: Option<podkit_core::HttpUrl>,

    /// The webhook's method.
    #[arg(long, value_name = "METHOD", default_value = "POST", help_heading = "Hooks")]
    pub webhook_method: reqwest::Method,

    /// Bound on one webhook call.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = podkit_core::Duration::parse_positive, help_heading = "Hooks")]
    pub webhook_timeout: podkit_core::Duration,

    /// The status that counts as the webhook's success (default: any 2xx).
    #[arg(long, value_name = "CODE", help_heading = "Hooks")]
    pub webhook_success_status: Option<u16>,
}

fn parse_sha256(s: &str) -> Result<String, String> {
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!("{s}: expected 64 hex digits"))
    }
}

fn parse_sync_signal(s: &str) -> Result<String, String> {
    match s.trim_start_matches("SIG") {
        "HUP" | "1" => Ok("SIGHUP".into()),
        other => Err(format!("{other}: only SIGHUP triggers a sync (SIGTERM and SIGINT stop podkit)")),
    }
}

/// Errors that end `podkit sync`.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0}")]
    Failed(String),
    #[error("{failures} syncs failed in a row (--max-failures {max}); the last: {last}")]
    TooManyFailures { failures: u64, max: i64, last: String },
}

impl podkit_core::ExitStatus for SyncError {
    fn exit_status(&self) -> i32 {
        // The work failed (exit.rs' table): a source that cannot be reached is one reason, a
        // missing ref or a bad signature others; the log line says which.
        1
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone)]
struct Metrics {
    syncs: Family<ResultLabel, Counter>,
    duration: Histogram,
    last_success: Gauge<f64, std::sync::atomic::AtomicU64>,
    fetched_bytes: Counter,
    refused: Counter,
    triggers: Family<TriggerLabel, Counter>,
    hooks: Family<HookLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            syncs: Family::default(),
            duration: Histogram::new([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
            last_success: Gauge::default(),
            fetched_bytes: Counter::default(),
            refused: Counter::default(),
            triggers: Family::default(),
            hooks: Family::default(),
        }
    }
}

/// What `GET /status` shows.
#[derive(Debug, Clone, Default, Serialize)]
struct Status {
    source: String,
    /// The published version (a commit hash, or the content's SHA-256).
    version: Option<String>,
    published_at: Option<String>,
    last_attempt_at: Option<String>,
    last_error: Option<String>,
    consecutive_failures: u64,
}

/// The source, settled in prepare.
enum Source {
    Git(GitSource),
    Http(HttpSource),
}

/// The `podkit sync` component.
pub struct Sync {
    args: SyncArgs,
    metrics: Metrics,
    status: Arc<Mutex<Status>>,
    prepared: Option<Prepared>,
}

impl std::fmt::Debug for Sync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sync").field("args", &self.args).finish_non_exhaustive()
    }
}

struct Prepared {
    source: Source,
    publisher: Publisher,
    hooks: Hooks,
    trigger: Option<tokio::net::TcpListener>,
}

impl Sync {
    pub fn new(args: SyncArgs) -> Self {
        Sync { args, metrics: Metrics::default(), status: Arc::default(), prepared: None }
    }

    fn link(&self) -> PathBuf {
        let name = match (&self.args.link, &self.args.repo) {
            (Some(l), _) => l.clone(),
            (None, Some(repo)) => {
                let leaf = repo.trim_end_matches('/').rsplit(['/', ':']).next().unwrap_or("repo");
                PathBuf::from(leaf.strip_suffix(".git").unwrap_or(leaf))
            }
            (None, None) => PathBuf::from("current"),
        };
        self.args.root.join(name)
    }
}

impl podkit_core::Command for SyncArgs {
    const NAME: &'static str = "sync";
    const DEFAULT_ADMIN: Option<&'static str> = Some(DEFAULT_ADMIN);

    fn main(self, effective: serde_json::Value) -> i32 {
        let common = self.common.clone();
        podkit_core::launch(Sync::new(self), &common, effective)
    }
}

/// A file podkit must be able to read at start: a config error otherwise.
fn readable(option: &str, path: &std::path::Path) -> Result<(), StartError> {
    std::fs::File::open(path).map(drop).map_err(|e| StartError::usage(format!("{option} {}: {e}", path.display())))
}

impl Component for Sync {
    const NAME: &'static str = "sync";
    const DEFAULT_ADMIN: &'static str = DEFAULT_ADMIN;
    type Error = SyncError;

    async fn prepare(&mut self, _ctx: &Context) -> Result<(), StartError> {
        let a = &self.args;
        for (option, path) in [
            ("--password-file", &a.password_file),
            ("--ssh-key-file", &a.ssh_key_file),
            ("--ssh-known-hosts-file", &a.ssh_known_hosts_file),
            ("--sparse-checkout-file", &a.sparse_checkout_file),
            ("--allowed-signers", &a.allowed_signers),
            ("--http-bearer-file", &a.http_bearer_file),
        ] {
            if let Some(p) = path {
                readable(option, p)?;
            }
        }
        if let Some(f) = &a.trigger_secret_file {
            trigger::read_secret(f).map_err(|e| StartError::usage(format!("--trigger-secret-file {e}")))?;
        }
        let verify = match (a.verify_signatures, &a.allowed_signers, &a.gpg_home) {
            (false, _, _) => None,
            (true, Some(f), _) => Some(Verify::AllowedSigners(f.clone())),
            (true, None, Some(d)) => Some(Verify::GpgHome(d.clone())),
            (true, None, None) => {
                return Err(StartError::usage("--verify-signatures needs --allowed-signers FILE or --gpg-home DIR"));
            }
        };
        if a.repo.is_some() && (a.http_bearer_file.is_some() || a.sha256.is_some()) {
            return Err(StartError::usage("--http-bearer-file and --sha256 are for --http"));
        }
        if a.http.is_some() {
            let git_only = [
                ("--verify-signatures", a.verify_signatures),
                ("--username", a.username.is_some()),
                ("--ssh-key-file", a.ssh_key_file.is_some()),
                ("--ssh-known-hosts-file", a.ssh_known_hosts_file.is_some()),
                ("--sparse-checkout-file", a.sparse_checkout_file.is_some()),
                ("--filter", a.filter.is_some()),
                ("--ref", a.reference != "HEAD"),
            ];
            if let Some((option, _)) = git_only.iter().find(|(_, given)| *given) {
                return Err(StartError::usage(format!("{option} is for --repo (a git source), not --http")));
            }
        }
        // Absolute, so the worktrees' paths and the link's relative target are computed from
        // one place whatever the working directory.
        self.args.root = std::path::absolute(&self.args.root)
            .map_err(|e| StartError::usage(format!("--root {}: {e}", self.args.root.display())))?;
        let link = self.link();
        if link.parent().is_none_or(|p| p.as_os_str().is_empty()) || link == self.args.root {
            return Err(StartError::usage(format!("--link {}: name a path under a directory", link.display())));
        }
        if link.parent() == Some(self.args.root.as_path())
            && link
                .file_name()
                .is_some_and(|n| [".git", ".worktrees", ".podkit-sync.json"].contains(&&*n.to_string_lossy()))
        {
            return Err(StartError::usage(format!(
                "--link {}: that name is podkit's own under --root",
                link.display()
            )));
        }
        let (publisher, removed) = Publisher::open(&self.args.root, &link, self.args.keep, self.args.copy)
            .map_err(|e| StartError::usage(format!("--root {}: {e}", self.args.root.display())))?;
        if !removed.is_empty() {
            tracing::info!(removed = ?removed, "removed what an interrupted sync left behind");
        }
        let reaper = Reaper::start().map_err(|e| StartError::software(format!("cannot start the reaper: {e}")))?;
        let a = &self.args;
        let source = match (&a.repo, &a.http) {
            (Some(repo), _) => Source::Git(GitSource::new(
                GitOptions {
                    repo: repo.clone(),
                    reference: a.reference.clone(),
                    depth: a.depth,
                    submodules: a.submodules,
                    sparse_checkout_file: a.sparse_checkout_file.clone(),
                    filter: a.filter.clone(),
                    username: a.username.clone(),
                    password_file: a.password_file.clone(),
                    ssh_key_file: a.ssh_key_file.clone(),
                    ssh_known_hosts_file: a.ssh_known_hosts_file.clone(),
                    gc: a.git_gc,
                    verify,
                    timeout: a.sync_timeout.get(),
                },
                &a.root,
                reaper.clone(),
            )),
            (None, Some(url)) => Source::Http(
                HttpSource::new(HttpOptions {
                    url: url.clone().into_inner(),
                    sha256: a.sha256.clone(),
                    timeout: a.sync_timeout.get(),
                    bearer_file: a.http_bearer_file.clone(),
                })
                .map_err(|e| StartError::usage(format!("--http {url}: {e}")))?,
            ),
            (None, None) => return Err(StartError::usage("give --repo URL or --http URL")),
        };
        let hooks = Hooks {
            exec: a.exechook_command.clone().map(|argv| ExecHook {
                argv,
                timeout: a.exechook_timeout.get(),
                when: a.exechook_when,
            }),
            web: match a.webhook_url.clone() {
                Some(url) => Some(WebHook {
                    url: url.into_inner(),
                    method: a.webhook_method.clone(),
                    timeout: a.webhook_timeout.get(),
                    success: a.webhook_success_status,
                    client: podkit_core::http::build(
                        reqwest::Client::builder().user_agent(concat!("podkit/", env!("CARGO_PKG_VERSION"))),
                    )
                    .map_err(|e| StartError::software(format!("--webhook-url: {e}")))?,
                }),
                None => None,
            },
            reaper,
            runs: self.metrics.hooks.clone(),
        };
        let trigger = match a.trigger_listen {
            Some(addr) => Some(
                podkit_core::listen(&Listen {
                    addr,
                    addr_file: a.trigger_listen_addr_file.as_deref(),
                    what: "trigger listener",
                    option: "--trigger-listen",
                })
                .await?,
            ),
            None => None,
        };
        let source_name = match (&a.repo, &a.http) {
            (Some(r), _) => format!("{} {}", git::shown_repo(r), a.reference),
            (_, Some(u)) => {
                let mut u = u.clone().into_inner();
                let _ = u.set_password(None);
                u.to_string()
            }
            _ => String::new(),
        };
        {
            let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
            s.source = source_name;
            if let Some(v) = publisher.current() {
                s.version = Some(v.name.clone());
                s.published_at = Some(v.published_at.clone());
            }
        }
        self.prepared = Some(Prepared { source, publisher, hooks, trigger });
        Ok(())
    }

    fn setup(&mut self, admin: &mut AdminBuilder, ctx: &Context) {
        let m = &self.metrics;
        let reg = admin.metrics();
        reg.register("syncs", "Syncs, by result (published, unchanged, error)", m.syncs.clone());
        reg.register(
            "sync_duration_seconds",
            "How long a sync took (looking, fetching, publishing)",
            m.duration.clone(),
        );
        reg.register(
            "last_success_timestamp_seconds",
            "When a sync last succeeded (published or found nothing new), Unix time",
            m.last_success.clone(),
        );
        reg.register("fetched_bytes", "Bytes downloaded by the HTTP source", m.fetched_bytes.clone());
        reg.register(
            "verification_refusals",
            "Commits not published because their signature did not verify",
            m.refused.clone(),
        );
        reg.register("triggers", "POST /sync requests, by result (accepted, refused, error)", m.triggers.clone());
        reg.register("hook_runs", "Exechook and webhook runs, by hook and result", m.hooks.clone());
        let status = self.status.clone();
        admin.route(
            "/status",
            get(move || {
                let status = status.clone();
                async move { Json(status.lock().unwrap_or_else(|p| p.into_inner()).clone()) }
            }),
        );
        let published = self.prepared.as_ref().is_some_and(|p| p.publisher.current().is_some());
        if published {
            // A version from before the restart is published and complete: consumers can read.
            ctx.readiness.ready("published");
        } else {
            ctx.readiness.not_ready("published", "no version published yet");
        }
    }

    async fn run(mut self, ctx: Context) -> Result<i32, SyncError> {
        let Prepared { mut source, mut publisher, hooks, trigger } = self.prepared.take().expect("prepared before run");
        let wake = Arc::new(Notify::new());
        if let (Some(listener), Some(secret)) = (trigger, self.args.trigger_secret_file.clone()) {
            let router = trigger::router(secret, wake.clone(), self.metrics.triggers.clone());
            let stop = ctx.shutdown.clone();
            tokio::spawn(async move {
                let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
                    stop.triggered().await;
                });
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "trigger listener failed");
                }
            });
        }
        let mut reload = ctx.reload.clone();
        let period = self.args.period.get();
        let min_interval = self.args.trigger_min_interval.get();
        let mut backoff = BackoffPolicy::jittered(Duration::from_secs(1), period.max(Duration::from_secs(1))).start();
        let mut failures = 0u64;
        let mut pending = Pending::default();
        let mut last_sync: Option<Instant> = None;
        let mut first_sync = true;
        tracing::info!(source = %self.status.lock().unwrap_or_else(|p| p.into_inner()).source, root = %self.args.root.display(), "syncing");
        loop {
            if let Some(at) = last_sync {
                let wait = if failures > 0 { backoff.next_delay() } else { period };
                let asked = tokio::select! {
                    _ = ctx.shutdown.triggered() => break,
                    _ = tokio::time::sleep_until((at + wait).into()) => false,
                    _ = reload.requested() => { tracing::info!("SIGHUP: syncing now"); true }
                    _ = wake.notified() => { tracing::info!("triggered: syncing now"); true }
                };
                if asked {
                    // Coalesce bursts: at most one asked-for sync per --trigger-min-interval.
                    let earliest = at + min_interval;
                    tokio::select! {
                        _ = ctx.shutdown.triggered() => break,
                        _ = tokio::time::sleep_until(earliest.into()) => {}
                    }
                }
            }
            last_sync = Some(Instant::now());
            let started = Instant::now();
            // Looking and fetching stop at once on SIGTERM (git is killed; what it left is
            // removed at the next start). The publish itself, a few renames, always finishes.
            let fetched = tokio::select! {
                _ = ctx.shutdown.triggered() => break,
                f = fetch(&mut source, &publisher, &hooks, &self.metrics) => f,
            };
            let outcome = match fetched {
                Ok(Some(name)) => publish(&mut source, &mut publisher, name).await,
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            };
            let one_time = self.args.one_time;
            match &outcome {
                Ok(Some(name)) if one_time => {
                    if let Err(e) = hooks.after_publish_once(&publisher.version_dir(name), name).await {
                        return Err(SyncError::Failed(e));
                    }
                }
                Ok(Some(name)) => hooks.after_publish(&mut pending, publisher.version_dir(name), name.clone()),
                // At start, the hooks run for the version already published, as git-sync's do.
                Ok(None) if first_sync => {
                    if let Some(v) = publisher.current().map(|v| v.name.clone()) {
                        if one_time {
                            if let Err(e) = hooks.after_publish_once(&publisher.version_dir(&v), &v).await {
                                return Err(SyncError::Failed(e));
                            }
                        } else {
                            hooks.after_publish(&mut pending, publisher.version_dir(&v), v);
                        }
                    }
                }
                _ => {}
            }
            first_sync = false;
            self.metrics.duration.observe(started.elapsed().as_secs_f64());
            let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
            let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
            status.last_attempt_at = Some(now.clone());
            match outcome {
                Ok(published) => {
                    let result = if published.is_some() { "published" } else { "unchanged" };
                    self.metrics.syncs.get_or_create(&ResultLabel { result }).inc();
                    let unix = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
                    self.metrics.last_success.set(unix.as_secs_f64());
                    if let Some(v) = published {
                        tracing::info!(version = %v, "published");
                        status.version = Some(v);
                        status.published_at = Some(now);
                    }
                    status.last_error = None;
                    status.consecutive_failures = 0;
                    failures = 0;
                    backoff.reset();
                    if status.version.is_some() {
                        ctx.readiness.ready("published");
                    }
                }
                Err(e) => {
                    failures += 1;
                    self.metrics.syncs.get_or_create(&ResultLabel { result: "error" }).inc();
                    tracing::error!(error = %e, failures, current = ?status.version, "sync failed; the current version stays published");
                    status.last_error = Some(e.clone());
                    status.consecutive_failures = failures;
                    if self.args.one_time {
                        return Err(SyncError::Failed(e));
                    }
                    if self.args.max_failures >= 0 && failures > self.args.max_failures as u64 {
                        return Err(SyncError::TooManyFailures { failures, max: self.args.max_failures, last: e });
                    }
                }
            }
            drop(status);
            if self.args.one_time {
                break;
            }
        }
        Ok(0)
    }
}

/// Looks for a new version and writes it; `Ok(Some(name))` when there is one to publish (its
/// pre-publish hook passed).
async fn fetch(
    source: &mut Source,
    publisher: &Publisher,
    hooks: &Hooks,
    metrics: &Metrics,
) -> Result<Option<String>, String> {
    let current = publisher.current().map(|v| v.name.clone());
    let versions = publisher.versions_dir();
    let complete = publisher.complete();
    let name = match source {
        Source::Git(g) => match g.sync(&versions, current.as_deref(), &complete).await {
            Ok(n) => n,
            Err(e @ git::GitError::Unverified { .. }) => {
                metrics.refused.inc();
                return Err(e.to_string());
            }
            Err(e) => return Err(e.to_string()),
        },
        Source::Http(h) => match h.fetch(&versions, current.as_deref()).await? {
            Some(f) => {
                metrics.fetched_bytes.inc_by(f.bytes);
                (current.as_deref() != Some(f.name.as_str())).then_some(f.name)
            }
            None => None,
        },
    };
    let Some(name) = name else { return Ok(None) };
    let dir = publisher.version_dir(&name);
    if let Err(e) = hooks.before_publish(&dir, &name).await {
        // A refused version is not kept (unless it is one published before).
        if !complete.contains(&name) {
            let _ = std::fs::remove_dir_all(&dir);
        }
        return Err(e);
    }
    Ok(Some(name))
}

/// Publishes `name`, then tidies the repository. `Ok(Some(name))` once published.
async fn publish(source: &mut Source, publisher: &mut Publisher, name: String) -> Result<Option<String>, String> {
    // Renames and fsyncs, and with --copy a whole tree copied: beside the runtime, which keeps
    // serving the admin endpoints meanwhile.
    let mut p = publisher.clone();
    let n = name.clone();
    let (p, removed) = tokio::task::spawn_blocking(move || {
        let r = p.publish(&n);
        (p, r)
    })
    .await
    .map_err(|e| format!("publishing {name}: {e}"))?;
    *publisher = p;
    let removed = removed.map_err(|e| format!("publishing {name}: {e}"))?;
    if !removed.is_empty() {
        tracing::info!(removed = ?removed, "removed versions beyond --keep");
    }
    if let Source::Git(g) = source
        && let Err(e) = g.tidy().await
    {
        tracing::warn!(error = %e, "tidying the repository failed (the version is published)");
    }
    Ok(Some(name))
}
