//! `podkit pod`: a whole pod (init containers, native sidecars, main containers) run as local
//! programs with Kubernetes' semantics, plus the paper's priorities and independent updates;
//! and the same file rendered for Kubernetes. See docs/pod.md.

mod cgroup;
mod probe;
pub mod render;
pub mod runtime;
pub mod spec;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use clap::{Args, Subcommand};
use podkit_core::{AdminBuilder, CommonArgs, Component, Context, StartError};
use tokio::sync::{mpsc, oneshot};

use crate::runtime::{Command as PodCommand, Metrics, Pod, SharedView, View};
use crate::spec::PodFile;

/// The admin listener's default address for `podkit pod run`.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9193";

/// `podkit pod` and its subcommands.
#[derive(Debug, Clone, Args)]
pub struct PodArgs {
    #[command(subcommand)]
    command: PodSubcommand,
}

#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Subcommand)]
enum PodSubcommand {
    /// Run the pod in FILE (a Kubernetes Pod manifest, or a Deployment's or Job's) until it
    /// completes or is stopped.
    Run(RunArgs),
    /// Check FILE as `podkit pod run` would, and say what would not be honoured locally.
    Check(FileArg),
    /// Write FILE as a manifest for Kubernetes: podkit containers get the podkit image, probes
    /// on their admin port and a preStop hook.
    Render(RenderArgs),
    /// Apply an edited FILE to the running pod: only the containers whose spec changed are
    /// restarted, in order, each ready before the next.
    Apply(ClientFileArgs),
    /// Restart one container of the running pod.
    Restart(NameArgs),
    /// One container's output (`-f`: and follow it).
    Logs(LogsArgs),
    /// The running pod's containers: state, readiness, restarts, pid, CPU, memory.
    Ps(ClientArgs),
}

#[derive(Debug, Clone, Args)]
struct RunArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// The pod file.
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

#[derive(Debug, Clone, Args)]
struct FileArg {
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

#[derive(Debug, Clone, Args)]
struct RenderArgs {
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The image of containers that run `podkit …`.
    #[arg(long, value_name = "IMAGE", default_value = concat!("podkit:", env!("CARGO_PKG_VERSION")))]
    image: String,
}

/// How to reach a running pod.
#[derive(Debug, Clone, Args)]
struct ClientArgs {
    /// The running pod's admin address.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_ADMIN)]
    admin: String,
    /// The bearer token the pod's admin port wants (its --admin-token-file).
    #[arg(long, value_name = "PATH")]
    admin_token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
struct ClientFileArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

#[derive(Debug, Clone, Args)]
struct NameArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The container.
    #[arg(value_name = "NAME")]
    name: String,
}

#[derive(Debug, Clone, Args)]
struct LogsArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[arg(value_name = "NAME")]
    name: String,
    /// Keep printing lines as they come.
    #[arg(short, long)]
    follow: bool,
}

// `check`, `render`, `ps`, `logs`, `apply` and `restart` print their results: that is their
// output, not logging.
#[allow(clippy::print_stdout)]
impl podkit_core::Command for PodArgs {
    const NAME: &'static str = "pod";

    fn augment(cmd: clap::Command) -> clap::Command {
        cmd.mut_subcommand("run", |r| podkit_core::config::with_admin_default(r, DEFAULT_ADMIN))
    }

    fn main(self, effective: serde_json::Value) -> i32 {
        match self.command {
            PodSubcommand::Run(args) => {
                let file = match spec::load(&args.file) {
                    Ok(f) => f,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return podkit_core::EX_USAGE;
                    }
                };
                let mut common = args.common.clone();
                // podkit's own stop takes as long as the pod's: the mains' grace and every
                // sidecar's budget.
                let sidecars: Duration = file.sidecars.iter().map(|s| s.stop_grace.unwrap_or(file.grace / 10)).sum();
                common.grace = podkit_core::Duration(file.grace + sidecars + Duration::from_secs(5));
                podkit_core::launch(PodComponent::new(file, args.file), &common, effective)
            }
            PodSubcommand::Check(a) => match spec::load(&a.file) {
                Ok(f) => {
                    for w in &f.warnings {
                        println!("warning: {w}");
                    }
                    println!(
                        "{}: pod {} is good: {} init, {} sidecar(s), {} main container(s)",
                        a.file.display(),
                        f.name,
                        f.init.len(),
                        f.sidecars.len(),
                        f.mains.len()
                    );
                    0
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    podkit_core::EX_USAGE
                }
            },
            PodSubcommand::Render(a) => match render::render_file(&a.file, &a.image) {
                Ok(text) => {
                    print!("{text}");
                    0
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    podkit_core::EX_USAGE
                }
            },
            other => client(other),
        }
    }
}

// === the component ===

pub struct PodComponent {
    file: Option<PodFile>,
    path: PathBuf,
    view: SharedView,
    metrics: Metrics,
    commands: Option<(mpsc::UnboundedSender<PodCommand>, mpsc::UnboundedReceiver<PodCommand>)>,
}

impl std::fmt::Debug for PodComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodComponent").field("path", &self.path).finish_non_exhaustive()
    }
}

impl PodComponent {
    fn new(file: PodFile, path: PathBuf) -> Self {
        Self {
            file: Some(file),
            path,
            view: Arc::new(Mutex::new(View::default())),
            metrics: Metrics::default(),
            commands: Some(runtime::channel()),
        }
    }
}

/// Errors that end `podkit pod run`.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("cannot start supervising: {0}")]
    Start(#[source] std::io::Error),
}

impl podkit_core::ExitStatus for PodError {
    fn exit_status(&self) -> i32 {
        podkit_core::EX_SOFTWARE
    }
}

#[derive(Clone)]
struct Api {
    view: SharedView,
    commands: mpsc::UnboundedSender<PodCommand>,
}

impl Component for PodComponent {
    const NAME: &'static str = "pod";
    const DEFAULT_ADMIN: &'static str = DEFAULT_ADMIN;
    type Error = PodError;

    async fn prepare(&mut self, _ctx: &Context) -> Result<(), StartError> {
        // Ports the pod's containers will listen on must be free before anything starts.
        if let Some(f) = &self.file {
            for c in f.containers() {
                for p in &c.ports {
                    if std::net::TcpListener::bind(("127.0.0.1", *p)).is_err() {
                        return Err(StartError::usage(format!(
                            "{}: port {p} is already in use on this host; the pod's containers share its localhost",
                            c.name
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    fn setup(&mut self, admin: &mut AdminBuilder, _ctx: &Context) {
        self.metrics.register(admin.metrics());
        let (tx, _) = self.commands.as_ref().expect("set up once");
        let api = Api { view: self.view.clone(), commands: tx.clone() };
        admin.route("/", get(page));
        admin.route("/pod", get(status).with_state(api.clone()));
        admin.protected_route("/pod/apply", post(apply).with_state(api.clone()));
        admin.protected_route("/pod/containers/{name}/restart", post(restart).with_state(api));
    }

    async fn run(mut self, ctx: Context) -> Result<i32, PodError> {
        let host = podkit_process::supervised::host(ctx.logs.clone(), podkit_core::Readiness::new())
            .map_err(PodError::Start)?;
        let file = self.file.take().expect("run once");
        let (tx, rx) = self.commands.take().expect("run once");
        let pod = Pod::new(file, host, ctx.readiness.clone(), self.view.clone(), self.metrics.clone())
            .map_err(PodError::Start)?;
        // SIGHUP: apply the file as it is on disk now.
        let reload = {
            let (mut reload, path, tx) = (ctx.reload.clone(), self.path.clone(), tx.clone());
            tokio::spawn(async move {
                loop {
                    reload.requested().await;
                    match spec::load(&path) {
                        Ok(f) => {
                            let (reply, answer) = oneshot::channel();
                            let _ = tx.send(PodCommand::Apply { file: Box::new(f), reply });
                            match answer.await {
                                Ok(Ok(a)) => {
                                    tracing::info!(restarted = ?a.restarted, started = ?a.started, stopped = ?a.stopped, "SIGHUP: applied")
                                }
                                Ok(Err(e)) => tracing::error!(error = %e, "SIGHUP: not applied"),
                                Err(_) => return,
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "SIGHUP: the pod file is not valid; nothing changed"),
                    }
                }
            })
        };
        let outcome = pod.run(ctx.clone(), rx).await;
        reload.abort();
        drop(tx);
        tracing::info!(status = outcome.status(), "pod ended");
        if !ctx.shutdown.is_triggered() {
            ctx.shutdown.trigger(podkit_core::StopReason::Completed);
        }
        Ok(outcome.status())
    }
}

async fn status(State(api): State<Api>) -> Response {
    let v = api.view.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut v = v;
    v.ready = v.containers.iter().filter(|c| c.role != "init").all(|c| c.ready || c.state.starts_with("held"));
    axum::Json(v).into_response()
}

async fn restart(State(api): State<Api>, UrlPath(name): UrlPath<String>) -> Response {
    let (reply, answer) = oneshot::channel();
    let _ = api.commands.send(PodCommand::Restart { name, reply });
    match answer.await {
        Ok(Ok(())) => (StatusCode::OK, axum::Json(serde_json::json!({"restarting": true}))).into_response(),
        Ok(Err(e)) => (StatusCode::NOT_FOUND, axum::Json(serde_json::json!({"error": e}))).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({"error": "the pod is stopping"})))
            .into_response(),
    }
}

async fn apply(State(api): State<Api>, body: String) -> Response {
    let file = match spec::parse(&body) {
        Ok(f) => f,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, axum::Json(serde_json::json!({"error": e.to_string()}))).into_response();
        }
    };
    let (reply, answer) = oneshot::channel();
    let _ = api.commands.send(PodCommand::Apply { file: Box::new(file), reply });
    match answer.await {
        Ok(Ok(a)) => axum::Json(a).into_response(),
        Ok(Err(e)) => (StatusCode::CONFLICT, axum::Json(serde_json::json!({"error": e}))).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({"error": "the pod is stopping"})))
            .into_response(),
    }
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

// === the client commands ===

/// `apply`, `restart`, `logs`, `ps`: calls to a running pod's admin API.
fn client(cmd: PodSubcommand) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return podkit_core::EX_SOFTWARE;
        }
    };
    rt.block_on(async move {
        match call(cmd).await {
            Ok(()) => 0,
            Err((code, msg)) => {
                eprintln!("error: {msg}");
                code
            }
        }
    })
}

type Fail = (i32, String);

#[allow(clippy::print_stdout)] // the client commands' results are their output
async fn call(cmd: PodSubcommand) -> Result<(), Fail> {
    let c = match &cmd {
        PodSubcommand::Apply(a) => &a.client,
        PodSubcommand::Restart(a) => &a.client,
        PodSubcommand::Logs(a) => &a.client,
        PodSubcommand::Ps(a) => a,
        _ => unreachable!("handled by main"),
    };
    let addr: SocketAddr = podkit_core::config::parse_listen_addr(&c.admin)
        .map_err(|e| (podkit_core::EX_USAGE, format!("--admin {e}")))?;
    let token = match &c.admin_token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| (podkit_core::EX_USAGE, format!("--admin-token-file {}: {e}", p.display())))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let http = podkit_core::http::client(Duration::from_secs(3600)).map_err(|e| (podkit_core::EX_SOFTWARE, e))?;
    let base = format!("http://{addr}");
    let unreachable = |e: reqwest::Error| {
        (podkit_core::EX_UNAVAILABLE, format!("no pod answers on {addr}: {}", podkit_core::error_chain(&e)))
    };
    let auth = |r: reqwest::RequestBuilder| match &token {
        Some(t) => r.bearer_auth(t),
        None => r,
    };
    let answer = |status: reqwest::StatusCode, body: String| -> Result<String, Fail> {
        if status.is_success() {
            return Ok(body);
        }
        let msg = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(body);
        Err((1, msg))
    };
    match cmd {
        PodSubcommand::Apply(a) => {
            let text = std::fs::read_to_string(&a.file)
                .map_err(|e| (podkit_core::EX_USAGE, format!("{}: {e}", a.file.display())))?;
            // Checked here first, so a bad file says so with its path.
            spec::parse(&text).map_err(|e| (podkit_core::EX_USAGE, format!("{}: {e}", a.file.display())))?;
            let r = auth(http.post(format!("{base}/pod/apply")).body(text)).send().await.map_err(unreachable)?;
            let (s, body) = (r.status(), r.text().await.unwrap_or_default());
            let body = answer(s, body)?;
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            for (what, key) in
                [("restarted", "restarted"), ("started", "started"), ("stopped", "stopped"), ("unchanged", "unchanged")]
            {
                let names: Vec<&str> = v[key].as_array().into_iter().flatten().filter_map(|n| n.as_str()).collect();
                if !names.is_empty() {
                    println!("{what}: {}", names.join(", "));
                }
            }
            for w in v["warnings"].as_array().into_iter().flatten().filter_map(|w| w.as_str()) {
                println!("warning: {w}");
            }
        }
        PodSubcommand::Restart(a) => {
            let r = auth(http.post(format!("{base}/pod/containers/{}/restart", a.name)))
                .send()
                .await
                .map_err(unreachable)?;
            let (s, body) = (r.status(), r.text().await.unwrap_or_default());
            answer(s, body)?;
            println!("restarting {}", a.name);
        }
        PodSubcommand::Logs(a) => {
            let url = format!("{base}/logs?target={}&limit=1000{}", a.name, if a.follow { "&follow=1" } else { "" });
            let mut r = http.get(url).send().await.map_err(unreachable)?;
            if !r.status().is_success() {
                let (s, body) = (r.status(), r.text().await.unwrap_or_default());
                answer(s, body)?;
                return Ok(());
            }
            let mut pending = String::new();
            let print = |text: &str| {
                for record in text.lines().filter(|l| !l.trim().is_empty()) {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(record) {
                        let items = if let Some(a) = v.as_array() { a.clone() } else { vec![v] };
                        for item in items {
                            println!("{}", item["message"].as_str().unwrap_or_default());
                        }
                    }
                }
            };
            if a.follow {
                while let Some(chunk) = r.chunk().await.map_err(unreachable)? {
                    pending.push_str(&String::from_utf8_lossy(&chunk));
                    if let Some(end) = pending.rfind('\n') {
                        let done: String = pending.drain(..=end).collect();
                        print(&done);
                    }
                }
            } else {
                let body = r.text().await.map_err(unreachable)?;
                print(&body);
            }
        }
        PodSubcommand::Ps(_) => {
            let r = http.get(format!("{base}/pod")).send().await.map_err(unreachable)?;
            let (s, body) = (r.status(), r.text().await.unwrap_or_default());
            let body = answer(s, body)?;
            let v: View = serde_json::from_str(&body)
                .map_err(|e| (podkit_core::EX_SOFTWARE, format!("unexpected answer: {e}")))?;
            println!("pod {} ({}, {})", v.name, v.phase, if v.ready { "ready" } else { "not ready" });
            println!(
                "{:<16} {:<8} {:<22} {:<6} {:>8} {:>7} {:>9} {:>10}",
                "CONTAINER", "ROLE", "STATE", "READY", "RESTARTS", "PID", "CPU(s)", "MEMORY"
            );
            for c in v.containers {
                println!(
                    "{:<16} {:<8} {:<22} {:<6} {:>8} {:>7} {:>9.2} {:>10}",
                    c.name,
                    c.role,
                    c.state,
                    if c.ready { "yes" } else { "no" },
                    c.restarts,
                    c.pid.map_or("-".to_string(), |p| p.to_string()),
                    c.cpu_seconds,
                    format!("{:.1}MiB", c.rss_bytes as f64 / 1048576.0)
                );
            }
        }
        _ => {}
    }
    Ok(())
}
