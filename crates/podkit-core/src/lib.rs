//! The contract every podkit command keeps.
//!
//! A command is a [`Component`]: it registers its metrics and admin routes in
//! [`Component::setup`], then does its work in [`Component::run`] until it finishes or its
//! [`Shutdown`] is triggered. [`launch`] supplies everything around it: logging, the admin
//! listener, signal handling, the grace period, the exit status.

pub mod admin;
pub mod backoff;
pub mod config;
pub mod daemon;
pub mod exit;
pub mod http;
pub mod logs;
pub mod metrics;
pub mod procstat;
mod profile;
pub mod readiness;
pub mod shutdown;
pub mod types;

use std::future::Future;
use std::path::Path;

use serde_json::Value;
use tokio_util::task::TaskTracker;

pub use admin::AdminBuilder;
pub use config::CommonArgs;
pub use exit::{EX_SOFTWARE, EX_UNAVAILABLE, EX_USAGE, ExitStatus, StartError, error_chain};
pub use logs::LogRing;
pub use readiness::Readiness;
pub use shutdown::{Every, Reload, Shutdown, StopReason};
pub use tokio::runtime::Builder as RuntimeBuilder;
pub use types::{Argv, Duration, HttpUrl};

/// A subcommand as the binary registers it: its options, how it adjusts its clap definition
/// (its default admin address, say), and how it runs. The binary lists commands and nothing
/// else.
pub trait Command: clap::Args + clap::FromArgMatches + Sized {
    /// The subcommand's name (`run`, `elect`, …).
    const NAME: &'static str;

    /// The admin listener's default address, for a command that has one.
    const DEFAULT_ADMIN: Option<&'static str> = None;

    /// Adjusts the subcommand's clap definition before parsing: by default, sets the default
    /// admin address.
    fn augment(cmd: clap::Command) -> clap::Command {
        match Self::DEFAULT_ADMIN {
            Some(addr) => config::with_admin_default(cmd, addr),
            None => cmd,
        }
    }

    /// Runs it with the effective configuration `GET /config` serves; returns the exit status.
    fn main(self, effective: Value) -> i32;
}

/// One podkit command.
///
/// Its life: built from its arguments (a constructor that rejects bad values), then
/// [`Component::prepare`] opens what it needs, then [`Component::setup`] registers its admin
/// parts, then the admin listener opens, then [`Component::run`]. Every configuration error
/// surfaces before the admin listener opens and before `--admin-addr-file` is written.
pub trait Component: Send + 'static {
    /// Short name: the metrics prefix (`podkit_<name>_`) and the log target.
    const NAME: &'static str;

    /// Errors that end [`Component::run`]; each knows its exit status.
    type Error: std::error::Error + ExitStatus + Send + Sync + 'static;

    /// The admin listener's default address: each command has its own fixed port, so the
    /// commands of one pod (which share localhost) do not collide.
    const DEFAULT_ADMIN: &'static str;

    /// The runtime the command runs on. Most commands are idle and latency-bound: one thread
    /// keeps podkit's own footprint small (the blocking pool still serves file I/O and
    /// profiles).
    fn runtime() -> tokio::runtime::Builder {
        tokio::runtime::Builder::new_current_thread()
    }

    /// Opens what the command needs before anything is served: its listeners (see [`listen`]),
    /// files, certificates. A [`StartError`] here ends podkit with its status (64 for bad
    /// configuration) before the admin listener opens.
    fn prepare(&mut self, ctx: &Context) -> impl Future<Output = Result<(), StartError>> + Send {
        let _ = ctx;
        std::future::ready(Ok(()))
    }

    /// Registers metrics and admin routes. Runs before the admin listener opens.
    fn setup(&mut self, admin: &mut AdminBuilder, ctx: &Context);

    /// Does the work until it is done or `ctx.shutdown` is triggered, then drains within
    /// `ctx.grace`. Returns the process exit status.
    fn run(self, ctx: Context) -> impl Future<Output = Result<i32, Self::Error>> + Send;
}

/// What a running command is handed.
#[derive(Debug, Clone)]
pub struct Context {
    pub shutdown: Shutdown,
    pub reload: Reload,
    pub readiness: Readiness,
    pub logs: LogRing,
    pub grace: std::time::Duration,
    /// Tasks the command spawns that must finish before the process exits; [`launch`] waits for
    /// them (within the grace period) after [`Component::run`] returns.
    pub tasks: TaskTracker,
    /// The bearer token from `--admin-token-file`, for commands that guard listeners of their
    /// own the same way (`podkit elect`'s API).
    pub admin_token: Option<String>,
}

/// Runs `component` under the podkit contract and returns the process exit status.
///
/// `effective` is the configuration `GET /config` serves (already redacted); the runtime is
/// the one [`Component::runtime`] asks for.
pub fn launch<C: Component>(mut component: C, common: &CommonArgs, effective: Value) -> i32 {
    let mut runtime = C::runtime();
    let token = match common.admin_token_file.as_deref().map(read_token).transpose() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return EX_USAGE;
        }
    };
    let ring = LogRing::new(common.log_buffer as usize);
    let file = match common.log_file.as_deref().map(|p| logs::LogFile::open(p).map_err(|e| (p, e))).transpose() {
        Ok(f) => f,
        Err((path, e)) => {
            eprintln!("error: --log-file {}: cannot open it for appending: {e}", path.display());
            return EX_USAGE;
        }
    };
    if let Err(e) = logs::init(common.log_format, &common.log_level, ring.clone(), file) {
        eprintln!("error: cannot start logging: {e}");
        return EX_SOFTWARE;
    }
    let rt = match runtime.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return EX_SOFTWARE;
        }
    };

    let code = rt.block_on(async {
        let shutdown = Shutdown::new();
        let reload = match shutdown::install_signal_handlers(shutdown.clone()) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot install signal handlers");
                return EX_SOFTWARE;
            }
        };
        let ctx = Context {
            shutdown: shutdown.clone(),
            reload,
            readiness: Readiness::new(),
            logs: ring.clone(),
            grace: common.grace.get(),
            tasks: TaskTracker::new(),
            admin_token: token.clone(),
        };
        if let Err(e) = component.prepare(&ctx).await {
            tracing::error!(status = e.status, "{}", e.message);
            return e.status;
        }
        let mut admin = AdminBuilder::new(C::NAME);
        component.setup(&mut admin, &ctx);
        let router = admin.build(admin::AdminParts {
            readiness: ctx.readiness.clone(),
            logs: ring.clone(),
            shutdown: shutdown.clone(),
            config: effective,
            token,
        });

        let admin_addr = Listen {
            addr: common.admin,
            addr_file: common.admin_addr_file.as_deref(),
            what: "admin listener",
            option: "--admin",
        };
        let listener = match listen(&admin_addr).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(status = e.status, "{}", e.message);
                return e.status;
            }
        };
        tracing::info!(component = C::NAME, version = env!("CARGO_PKG_VERSION"), "started");
        daemon::started();
        tokio::spawn(async move {
            if let Err(e) = admin::serve(listener, router).await {
                tracing::error!(error = %e, "admin listener failed");
            }
        });

        // Readiness fails as soon as a stop begins, so load balancers stop sending work first.
        tokio::spawn({
            let (shutdown, readiness) = (shutdown.clone(), ctx.readiness.clone());
            async move {
                let reason = shutdown.triggered().await;
                readiness.not_ready("stopping", format!("stopping ({reason})"));
            }
        });

        let grace = ctx.grace;
        let tasks = ctx.tasks.clone();
        let run = component.run(ctx);
        // Watchdog: a command that overruns its grace period by more than a margin is stuck;
        // exit rather than hold up the orchestrator. The margin leaves a command that escalates
        // at `grace` (podkit run) time to do so itself.
        let watchdog = async {
            shutdown.triggered().await;
            tokio::time::sleep(grace + std::time::Duration::from_secs(5)).await;
        };
        let code = tokio::select! {
            r = run => match r {
                Ok(code) => code,
                Err(e) => {
                    tracing::error!(error = %exit::error_chain(&e), "{} failed", C::NAME);
                    e.exit_status()
                }
            },
            _ = watchdog => {
                tracing::error!(grace = ?grace, "did not stop within the grace period; exiting");
                shutdown.force_exit(1);
            }
        };
        tasks.close();
        if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
            tracing::warn!("background tasks still running at exit");
        }
        if let Some(path) = &common.admin_addr_file {
            let _ = std::fs::remove_file(path);
        }
        code
    });
    // Blocking reads (stdin, a hung hook) must not hold the exit up.
    rt.shutdown_background();
    code
}

/// A listener a command opens, and how to name it in errors.
#[derive(Debug, Clone, Copy)]
pub struct Listen<'a> {
    pub addr: std::net::SocketAddr,
    /// Where to write the bound address (the option `<option>-addr-file`).
    pub addr_file: Option<&'a Path>,
    /// `admin listener`, `client listener`, …
    pub what: &'a str,
    /// The option that sets the address, for the hint in errors.
    pub option: &'a str,
}

/// Binds a listener, writes its bound address to its address file, and logs it. Every listener
/// a command opens goes through here, in [`Component::prepare`], so a busy or bad address
/// stops podkit (exit 64) before it reports healthy.
pub async fn listen(l: &Listen<'_>) -> Result<tokio::net::TcpListener, StartError> {
    let listener = tokio::net::TcpListener::bind(l.addr).await.map_err(|e| {
        StartError::usage(format!(
            "cannot open the {} on {}: {e}; choose another address with {} (port 0 picks a free one)",
            l.what, l.addr, l.option
        ))
    })?;
    let bound = listener.local_addr().unwrap_or(l.addr);
    if let Some(path) = l.addr_file {
        write_atomically(path, &bound.to_string())
            .map_err(|e| StartError::usage(format!("cannot write {}-addr-file {}: {e}", l.option, path.display())))?;
    }
    tracing::info!(addr = %bound, "{} listening", l.what);
    Ok(listener)
}

fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--admin-token-file {}: cannot read it: {e}", path.display()))?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(format!("--admin-token-file {}: the file is empty; expected a token", path.display()));
    }
    Ok(token)
}

/// The temporary file a replacement of `path` is written to: in the same directory (so the
/// rename stays on one file system), named after this process (so two writers never share it).
fn tmp_beside(path: &Path) -> std::path::PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    tmp.into()
}

/// Writes `contents` to `path` through a temporary file and a rename, so a reader never sees a
/// half-written file.
pub fn write_atomically(path: &Path, contents: &str) -> std::io::Result<()> {
    let tmp = tmp_beside(path);
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}

/// Replaces `path` with `contents` so that after a crash or power loss it holds either the old
/// contents or the new, whole: the new file is fsynced before the rename, and the directory
/// after it. For state that must survive (checkpoints); [`write_atomically`] is enough for
/// files another process only reads while podkit runs.
pub fn write_durably(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = tmp_beside(path);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}
