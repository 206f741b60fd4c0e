//! `podkit elect`: the leader-election sidecar.
//!
//! It runs beside each replica of an app and offers it, on localhost, the paper's
//! `becomeLeader` / `renewLeadership` API with fencing tokens: a lease file for replicas on one
//! host, etcd v3 for a cluster. See `docs/elect.md`.

mod api;
mod backend;
mod election;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use podkit_core::{AdminBuilder, Argv, CommonArgs, Component, Context, Listen, StartError};
use podkit_process::hook::{Hook, Runner};
use podkit_process::reaper::Reaper;

use crate::backend::Backend;
use crate::backend::etcd::{EtcdBackend, EtcdOptions};
use crate::backend::file::FileBackend;
use crate::election::{CampaignMode, Election, Metrics, RenewMode, Settings};

/// The admin listener's default address for `podkit elect`.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9191";

/// Options of `podkit elect`. Their doc comments are the `--help` text.
#[derive(Debug, Clone, Args)]
pub struct ElectArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// This replica's identity, as other replicas and apps see it (default: the host name, which
    /// is the pod name on Kubernetes).
    #[arg(long, value_name = "ID", value_parser = parse_id)]
    pub id: Option<String>,

    /// Where leases live: `file:///DIR` (one lease file per election; for replicas on one host)
    /// or `etcd://HOST:PORT[,HOST:PORT…][/PREFIX]`.
    #[arg(long, value_name = "URL", default_value = "file:///run/podkit/elect", value_parser = parse_backend)]
    pub backend: BackendUrl,

    /// The HTTP API for the app.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:4040",
        value_parser = podkit_core::config::parse_listen_addr
    )]
    pub listen: SocketAddr,

    /// Write the API listener's bound address to this file once it listens (with --listen
    /// 127.0.0.1:0).
    #[arg(long, value_name = "PATH")]
    pub listen_addr_file: Option<PathBuf>,

    /// Lease length. A leader that cannot renew stops claiming leadership before it ends;
    /// a dead leader is replaced about this long after it died.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_ttl)]
    pub ttl: podkit_core::Duration,

    /// An election to take part in (repeat for several: one per shard, each independent).
    #[arg(long = "election", value_name = "NAME", default_value = "default", value_parser = parse_name)]
    pub elections: Vec<String>,

    /// auto: campaign from the start; manual: only once the app calls POST …/campaign.
    #[arg(long, value_enum, default_value_t = CampaignMode::Auto)]
    pub campaign: CampaignMode,

    /// auto: the sidecar renews the lease; app: only while the app calls POST …/renew at least
    /// once per ttl/3, so leadership follows the app's health.
    #[arg(long, value_enum, default_value_t = RenewMode::Auto)]
    pub renew: RenewMode,

    /// Run this command (argv, no shell) when this replica becomes leader. It gets
    /// PODKIT_ELECTION, PODKIT_TOKEN, PODKIT_LEADER and PODKIT_ID.
    #[arg(long, value_name = "CMD", help_heading = "Hooks")]
    pub on_elected: Option<Argv>,

    /// Run this command (argv, no shell) when this replica stops being leader.
    #[arg(long, value_name = "CMD", help_heading = "Hooks")]
    pub on_demoted: Option<Argv>,

    /// POST a JSON event to this URL on every change of this replica's leadership.
    #[arg(long, value_name = "URL", help_heading = "Hooks")]
    pub notify_url: Option<podkit_core::HttpUrl>,

    /// How long a hook may run.
    #[arg(long, value_name = "DURATION", default_value = "30s", help_heading = "Hooks")]
    pub hook_timeout: podkit_core::Duration,

    /// CA certificate (PEM) to verify etcd with; turns TLS on.
    #[arg(long, value_name = "PATH", help_heading = "etcd")]
    pub etcd_ca_file: Option<PathBuf>,

    /// Client certificate (PEM) for etcd; needs --etcd-key-file.
    #[arg(long, value_name = "PATH", requires = "etcd_key_file", help_heading = "etcd")]
    pub etcd_cert_file: Option<PathBuf>,

    /// Client key (PEM) for etcd.
    #[arg(long, value_name = "PATH", requires = "etcd_cert_file", help_heading = "etcd")]
    pub etcd_key_file: Option<PathBuf>,

    /// etcd user; the password is read from --etcd-password-file.
    #[arg(long, value_name = "USER", requires = "etcd_password_file", help_heading = "etcd")]
    pub etcd_user: Option<String>,

    /// File holding the etcd user's password.
    #[arg(long, value_name = "PATH", requires = "etcd_user", help_heading = "etcd")]
    pub etcd_password_file: Option<PathBuf>,

    /// Bound on each etcd request and on connecting at start.
    #[arg(long, value_name = "DURATION", default_value = "5s", help_heading = "etcd")]
    pub etcd_timeout: podkit_core::Duration,
}

/// A parsed `--backend`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendUrl {
    File(PathBuf),
    Etcd { endpoints: Vec<String>, prefix: String },
}

fn parse_backend(s: &str) -> Result<BackendUrl, String> {
    if let Some(path) = s.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err("expected an absolute path, as in file:///run/podkit/elect".into());
        }
        return Ok(BackendUrl::File(PathBuf::from(path)));
    }
    if let Some(rest) = s.strip_prefix("etcd://") {
        let (hosts, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let prefix = if prefix.is_empty() { "/podkit/elect".to_string() } else { prefix.to_string() };
        let mut endpoints = Vec::new();
        for host in hosts.split(',').filter(|h| !h.is_empty()) {
            let with_port = if host.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
                host.to_string()
            } else {
                format!("{host}:2379")
            };
            endpoints.push(with_port);
        }
        if endpoints.is_empty() {
            return Err("no etcd endpoint; expected etcd://HOST:PORT[,HOST:PORT…][/PREFIX]".into());
        }
        return Ok(BackendUrl::Etcd { endpoints, prefix });
    }
    Err("expected file:///DIR or etcd://HOST:PORT[,HOST:PORT…][/PREFIX]".into())
}

fn parse_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(s.to_string())
    } else {
        Err("expected 1-128 letters, digits, '-', '_' or '.', not starting with '.'".into())
    }
}

fn parse_id(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 253 || s.chars().any(|c| c.is_control()) {
        return Err("expected 1-253 printable characters".into());
    }
    Ok(s.to_string())
}

fn parse_ttl(s: &str) -> Result<podkit_core::Duration, String> {
    let d: podkit_core::Duration = s.parse()?;
    if d.get() < Duration::from_millis(500) {
        return Err("the lease must last at least 500ms".into());
    }
    Ok(d)
}

// === impl Elect ===

/// The `podkit elect` component.
#[derive(Debug)]
pub struct Elect {
    args: ElectArgs,
    settings: Arc<Settings>,
    elections: Arc<BTreeMap<String, Arc<Election>>>,
    metrics: Metrics,
    prepared: Option<(Prepared, tokio::net::TcpListener)>,
}

impl Elect {
    pub fn new(args: ElectArgs) -> Self {
        let id = args.id.clone().unwrap_or_else(|| {
            nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "podkit".into())
        });
        let settings = Arc::new(Settings {
            id,
            ttl: args.ttl.get(),
            campaign: args.campaign,
            renew: args.renew,
            on_elected: args.on_elected.clone().map(Hook::Exec),
            on_demoted: args.on_demoted.clone().map(Hook::Exec),
            notify: args
                .notify_url
                .clone()
                .map(|url| Hook::Http { method: reqwest::Method::POST, url: url.into_inner() }),
            hook_timeout: args.hook_timeout.get(),
        });
        let metrics = Metrics::new();
        let mut elections = BTreeMap::new();
        for name in &args.elections {
            elections.insert(name.clone(), Election::new(name, &settings, metrics.clone()));
        }
        Self { args, settings, elections: Arc::new(elections), metrics, prepared: None }
    }
}

/// Errors that end `podkit elect`.
#[derive(Debug, thiserror::Error)]
pub enum ElectError {
    #[error("cannot start reaping hook processes: {0}")]
    Reaper(#[source] std::io::Error),
    #[error("hooks: {0}")]
    HttpClient(String),
    /// The backend cannot be reached.
    #[error("{0}")]
    Unavailable(String),
}

impl podkit_core::ExitStatus for ElectError {
    fn exit_status(&self) -> i32 {
        match self {
            ElectError::Unavailable(_) => podkit_core::EX_UNAVAILABLE,
            _ => podkit_core::EX_SOFTWARE,
        }
    }
}

impl podkit_core::Command for ElectArgs {
    const NAME: &'static str = "elect";
    const DEFAULT_ADMIN: Option<&'static str> = Some(DEFAULT_ADMIN);

    fn main(self, effective: serde_json::Value) -> i32 {
        let common = self.common.clone();
        podkit_core::launch(Elect::new(self), &common, effective)
    }
}

impl Component for Elect {
    const NAME: &'static str = "elect";
    const DEFAULT_ADMIN: &'static str = DEFAULT_ADMIN;
    type Error = ElectError;

    fn setup(&mut self, admin: &mut AdminBuilder, ctx: &Context) {
        let reg = admin.metrics();
        let m = &self.metrics;
        reg.register("is_leader", "1 while this replica leads the election", m.is_leader.clone());
        reg.register("token", "Fencing token of the current (or last) leader", m.token.clone());
        reg.register("transitions", "Times this replica became or stopped being leader", m.transitions.clone());
        reg.register("backend_errors", "Failed backend requests", m.backend_errors.clone());
        reg.register_with_unit(
            "renew_duration",
            "Time a successful lease renewal took",
            prometheus_client::registry::Unit::Seconds,
            m.renew_seconds.clone(),
        );
        let elections = self.elections.clone();
        admin.readiness_check(move |q| {
            let name = q.get("election")?;
            Some(match elections.get(name) {
                Some(e) if e.is_leader() => Ok(()),
                Some(_) => Err(vec![format!("not the leader of {name}")]),
                None => Err(vec![format!("unknown election {name:?}")]),
            })
        });
        ctx.readiness.not_ready("backend", "connecting");
    }

    async fn prepare(&mut self, _ctx: &Context) -> Result<(), StartError> {
        let backend = match self.args.backend.clone() {
            BackendUrl::File(dir) => Prepared::File(
                FileBackend::open(&dir, &self.args.elections)
                    .map_err(|e| StartError::usage(format!("cannot use the lease directory {}: {e}", dir.display())))?,
            ),
            BackendUrl::Etcd { endpoints, prefix } => Prepared::Etcd(
                self.etcd_options(endpoints, prefix)
                    .map_err(|e| StartError::usage(format!("bad etcd options: {e}")))?,
            ),
        };
        let listener = podkit_core::listen(&Listen {
            addr: self.args.listen,
            addr_file: self.args.listen_addr_file.as_deref(),
            what: "API listener",
            option: "--listen",
        })
        .await?;
        self.prepared = Some((backend, listener));
        Ok(())
    }

    async fn run(mut self, ctx: Context) -> Result<i32, ElectError> {
        let reaper = Reaper::start().map_err(ElectError::Reaper)?;
        let client = podkit_core::http::client(Duration::from_secs(30)).map_err(ElectError::HttpClient)?;
        let runner = Runner::new(reaper, client);
        let (backend, listener) = self.prepared.take().expect("prepared before run");
        match backend {
            Prepared::File(b) => self.serve(b, listener, runner, ctx).await,
            Prepared::Etcd(opts) => {
                // The error names the endpoints: "cannot reach etcd 127.0.0.1:2379: …".
                let b = EtcdBackend::connect(opts)
                    .await
                    .map_err(|e| ElectError::Unavailable(format!("cannot reach {e}")))?;
                self.serve(b, listener, runner, ctx).await
            }
        }
    }
}

/// What [`Component::prepare`] opened: the backend (or, for etcd, its checked options) and the
/// API listener.
enum Prepared {
    File(FileBackend),
    Etcd(EtcdOptions),
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Prepared::File(_) => "Prepared::File",
            Prepared::Etcd(_) => "Prepared::Etcd",
        })
    }
}

impl Elect {
    fn etcd_options(&self, endpoints: Vec<String>, prefix: String) -> Result<EtcdOptions, String> {
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let ca_pem = self.args.etcd_ca_file.as_ref().map(read).transpose()?;
        let client_cert_pem = match (&self.args.etcd_cert_file, &self.args.etcd_key_file) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            _ => None,
        };
        let user = match (&self.args.etcd_user, &self.args.etcd_password_file) {
            (Some(u), Some(p)) => {
                let password = String::from_utf8(read(p)?).map_err(|_| format!("{}: not UTF-8", p.display()))?;
                Some((u.clone(), password.trim_end_matches(['\r', '\n']).to_string()))
            }
            _ => None,
        };
        Ok(EtcdOptions { endpoints, prefix, ca_pem, client_cert_pem, user, timeout: self.args.etcd_timeout.get() })
    }

    async fn serve<B: Backend>(
        self,
        backend: B,
        listener: tokio::net::TcpListener,
        runner: Runner,
        ctx: Context,
    ) -> Result<i32, ElectError> {
        let backend = Arc::new(backend);
        let token = ctx.admin_token.clone();
        let api = api::Api { elections: self.elections.clone(), renew: self.settings.renew };
        let router = api::router(api, token);
        let bound = listener.local_addr().unwrap_or(self.args.listen);
        tokio::spawn(async move {
            let svc = router.into_make_service_with_connect_info::<SocketAddr>();
            if let Err(e) = axum::serve(listener, svc).await {
                tracing::error!(error = %e, "API listener failed");
            }
        });
        tracing::info!(
            api = %bound, id = %self.settings.id, backend = %backend.describe(),
            elections = ?self.args.elections, ttl = %self.args.ttl, "taking part in elections"
        );
        ctx.readiness.ready("backend");

        let mut loops = Vec::new();
        for election in self.elections.values() {
            loops.push(tokio::spawn(election::run(
                election.clone(),
                backend.clone(),
                self.settings.clone(),
                runner.clone(),
                ctx.shutdown.clone(),
            )));
        }
        for l in loops {
            let _ = l.await;
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_urls_parse() {
        assert_eq!(parse_backend("file:///run/x").unwrap(), BackendUrl::File("/run/x".into()));
        assert!(parse_backend("file://relative").is_err());
        assert_eq!(
            parse_backend("etcd://a:1,b/p/q/").unwrap(),
            BackendUrl::Etcd { endpoints: vec!["a:1".into(), "b:2379".into()], prefix: "/p/q".into() }
        );
        assert_eq!(
            parse_backend("etcd://h:2379").unwrap(),
            BackendUrl::Etcd { endpoints: vec!["h:2379".into()], prefix: "/podkit/elect".into() }
        );
        assert!(parse_backend("etcd:///x").is_err());
        assert!(parse_backend("zk://x").unwrap_err().contains("expected"));
    }

    #[test]
    fn election_names_are_confined_to_their_directory() {
        assert!(parse_name("shard-1.a_b").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "a b"] {
            assert!(parse_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ttl_has_a_floor() {
        assert!(parse_ttl("100ms").is_err());
        assert_eq!(parse_ttl("2s").unwrap().get(), Duration::from_secs(2));
    }
}
