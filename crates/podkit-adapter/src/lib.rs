//! `podkit adapter`: the adapter pattern. One Prometheus `/metrics` over the programs beside
//! it (memcached, Redis, twemproxy or `podkit ambassador`, JSON status pages, other `/metrics`
//! endpoints), under
//! the metric names their usual exporters use, so dashboards carry over. See docs/adapter.md.
//!
//! Every scrape asks every source at once, each bounded by its own timeout: a dead or slow
//! source shows `up 0` and never delays or fails the others.

mod config;
mod conn;
pub mod expo;
#[doc(hidden)]
pub mod fuzzing;
mod json;
mod memcached;
pub mod promtext;
mod redis;
mod statsd;
mod twemproxy;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Args;
use podkit_core::{AdminBuilder, CommonArgs, Component, Context, Listen, StartError};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::config::SourceKind;
use crate::config::{FileConfig, SourceConfig};
use crate::expo::{Labels, Scrape};

/// The admin listener's default address for `podkit adapter`.
const DEFAULT_ADMIN: &str = "127.0.0.1:9198";

/// Options of `podkit adapter`. Their doc comments are the `--help` text.
#[derive(Debug, Clone, Args)]
pub struct AdapterArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// The adapter's file: its sources, each with its options and labels (see
    /// docs/adapter.md). Podkit's own options file is --options here.
    #[arg(short = 'c', long = "config", id = "sources_file", value_name = "FILE")]
    pub sources_file: Option<PathBuf>,

    /// Serve the translated metrics here, at /metrics and /scrape (apart from the admin port,
    /// so Prometheus scrapes it as it would scrape an exporter).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9199", value_parser = podkit_core::config::parse_listen_addr)]
    pub listen: SocketAddr,

    /// Write the metrics listener's bound address to this file once it listens.
    #[arg(long, value_name = "FILE")]
    pub listen_addr_file: Option<PathBuf>,

    /// A memcached server to translate (HOST:PORT); repeatable.
    #[arg(long, value_name = "HOST:PORT", help_heading = "Sources")]
    pub memcached: Vec<String>,

    /// A Redis server to translate (redis://[user:password@]host:port, rediss:// for TLS);
    /// repeatable.
    #[arg(long, value_name = "URL", help_heading = "Sources")]
    pub redis: Vec<String>,

    /// A twemproxy (nutcracker) or podkit ambassador stats port (HOST:PORT); repeatable.
    #[arg(long, value_name = "HOST:PORT", help_heading = "Sources")]
    pub twemproxy: Vec<String>,

    /// Another process's /metrics endpoint to re-export; repeatable.
    #[arg(long, value_name = "URL", help_heading = "Sources")]
    pub prometheus: Vec<podkit_core::HttpUrl>,

    /// A JSON document to translate with the `default` module; repeatable.
    #[arg(long, value_name = "URL", help_heading = "Sources")]
    pub json: Vec<podkit_core::HttpUrl>,

    /// json_exporter's config.yml: its modules, as they are.
    #[arg(long, value_name = "FILE", help_heading = "Sources")]
    pub json_config: Option<PathBuf>,

    /// Listen for StatsD on this address, over UDP and TCP (statsd_exporter's :9125; a bare
    /// :PORT means every interface, as there).
    #[arg(long, value_name = "ADDR", help_heading = "Sources")]
    pub statsd: Option<String>,

    /// statsd_exporter's mapping file, for --statsd.
    #[arg(long, value_name = "FILE", requires = "statsd", help_heading = "Sources")]
    pub statsd_mapping_config: Option<PathBuf>,

    /// Write the StatsD listener's bound address to this file, for --statsd.
    #[arg(long, value_name = "FILE", requires = "statsd", help_heading = "Sources")]
    pub statsd_addr_file: Option<PathBuf>,

    /// Bound on each source's scrape, unless the source sets its own.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = podkit_core::Duration::parse_positive, help_heading = "Sources")]
    pub timeout: podkit_core::Duration,

    /// Hosts /scrape?target= may ask (comma-separated; `*` allows any). Without it, only
    /// loopback targets: /scrape makes podkit connect where the caller says.
    #[arg(
        long,
        value_name = "HOSTS",
        value_delimiter = ',',
        default_value = "127.0.0.1,localhost,::1",
        help_heading = "Sources"
    )]
    pub scrape_allow: Vec<String>,
}

/// Errors that end `podkit adapter`.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("the metrics listener failed: {0}")]
    Serve(std::io::Error),
}

/// A listener that fails after it was bound: the work failed (1), as for `podkit scatter`.
impl podkit_core::ExitStatus for AdapterError {}

// === impl Source ===

enum Collector {
    Memcached(memcached::MemcachedSource),
    Redis(redis::RedisSource),
    Twemproxy(twemproxy::TwemproxySource),
    Prometheus(PromSource),
    Json(json::JsonSource),
    Statsd(Arc<statsd::Statsd>),
}

struct PromSource {
    url: reqwest::Url,
    client: reqwest::Client,
}

/// The JSON modules by name.
type Modules = BTreeMap<String, Arc<json::Module>>;

/// What a translation left out (a series it could not read), for the scrape's log line and
/// `podkit_adapter_source_translation_errors`.
#[derive(Debug, Default)]
pub(crate) struct Problems {
    pub(crate) count: u64,
    pub(crate) first: Option<String>,
}

impl Problems {
    pub(crate) fn add(&mut self, what: String) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(what);
        }
    }
}

/// One configured source.
struct Source {
    name: String,
    kind: SourceKind,
    /// A JSON source's module name, as configured.
    module: Option<String>,
    labels: Labels,
    timeout: Duration,
    collector: Collector,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source").field("name", &self.name).field("kind", &self.kind).finish_non_exhaustive()
    }
}

impl Source {
    fn build(
        cfg: &SourceConfig,
        default_timeout: Duration,
        client: &reqwest::Client,
        modules: &Modules,
    ) -> Result<Source, String> {
        let (kind, addr) = cfg.kind()?;
        let name = cfg.name.clone().unwrap_or_else(|| podkit_core::http::shown_url(addr));
        let err = |e: String| format!("source {name} ({} {}): {e}", kind.as_str(), podkit_core::http::shown_url(addr));
        for k in cfg.labels.keys() {
            if !expo::valid_label_name(k) {
                return Err(err(format!("label name {k:?} is not valid; expected [a-zA-Z_][a-zA-Z0-9_]*")));
            }
        }
        let redis_only = [
            ("password_file", cfg.password_file.is_some()),
            ("ca_file", cfg.ca_file.is_some()),
            ("cert_file", cfg.cert_file.is_some()),
            ("key_file", cfg.key_file.is_some()),
        ];
        if kind != SourceKind::Redis
            && let Some((k, _)) = redis_only.iter().find(|(_, given)| *given)
        {
            return Err(err(format!("{k} is for redis: sources")));
        }
        if kind != SourceKind::Json && cfg.module.is_some() {
            return Err(err("module is for json: sources".into()));
        }
        let statsd_only = [
            ("mapping_file", cfg.mapping_file.is_some()),
            ("udp", cfg.udp.is_some()),
            ("tcp", cfg.tcp.is_some()),
            ("unixgram", cfg.unixgram.is_some()),
            ("read_buffer", cfg.read_buffer.is_some()),
            ("addr_file", cfg.addr_file.is_some()),
        ];
        if kind != SourceKind::Statsd
            && let Some((k, _)) = statsd_only.iter().find(|(_, given)| *given)
        {
            return Err(err(format!("{k} is for statsd: sources")));
        }
        let collector = match kind {
            SourceKind::Memcached => {
                Collector::Memcached(memcached::MemcachedSource::new(host_port(addr).map_err(err)?))
            }
            SourceKind::Twemproxy => {
                Collector::Twemproxy(twemproxy::TwemproxySource::new(host_port(addr).map_err(err)?))
            }
            SourceKind::Redis => Collector::Redis(
                redis::RedisSource::new(redis::RedisOptions {
                    url: addr.to_string(),
                    password_file: cfg.password_file.clone(),
                    ca_file: cfg.ca_file.clone(),
                    cert_file: cfg.cert_file.clone(),
                    key_file: cfg.key_file.clone(),
                })
                .map_err(err)?,
            ),
            SourceKind::Prometheus => {
                let url: podkit_core::HttpUrl = addr.parse().map_err(err)?;
                Collector::Prometheus(PromSource { url: url.into_inner(), client: client.clone() })
            }
            SourceKind::Json => {
                let url: podkit_core::HttpUrl = addr.parse().map_err(err)?;
                let name = cfg.module.as_deref().unwrap_or("default");
                let module = modules.get(name).ok_or_else(|| {
                    err(format!(
                        "no JSON module {name:?}; the modules are {:?} (from modules: in --config, or --json-config)",
                        modules.keys().collect::<Vec<_>>()
                    ))
                })?;
                Collector::Json(json::JsonSource::new(url.into_inner(), module.clone()))
            }
            SourceKind::Statsd => {
                let listen = match addr.strip_prefix(':') {
                    Some(port) => format!("0.0.0.0:{port}"),
                    None => addr.to_string(),
                };
                let opts = statsd::Options {
                    addr: podkit_core::config::parse_listen_addr(&listen).map_err(err)?,
                    udp: cfg.udp.unwrap_or(true),
                    tcp: cfg.tcp.unwrap_or(true),
                    unixgram: cfg.unixgram.clone(),
                    addr_file: cfg.addr_file.clone(),
                    read_buffer: cfg.read_buffer,
                };
                Collector::Statsd(Arc::new(statsd::Statsd::new(opts, cfg.mapping_file.as_deref()).map_err(err)?))
            }
        };
        Ok(Source {
            name,
            kind,
            module: cfg.module.clone(),
            labels: cfg.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            timeout: cfg.timeout.map(|t| t.get()).unwrap_or(default_timeout),
            collector,
        })
    }

    /// Scrapes the source into `out` (with its labels), bounded by its timeout. Returns what
    /// the translation left out, or why the source did not answer.
    async fn scrape(&self, out: &mut Scrape) -> Result<Problems, String> {
        let none = |r: Result<(), String>| r.map(|()| Problems::default());
        let collect = async {
            match &self.collector {
                Collector::Memcached(m) => none(m.collect(out, self.timeout).await),
                Collector::Redis(r) => none(r.collect(out, self.timeout).await),
                Collector::Twemproxy(t) => none(t.collect(out, self.timeout).await),
                Collector::Prometheus(p) => none(p.collect(out, &self.labels).await),
                Collector::Json(j) => j.collect(out, self.timeout).await,
                Collector::Statsd(s) => {
                    s.collect(out);
                    Ok(Problems::default())
                }
            }
        };
        match tokio::time::timeout(self.timeout, collect).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }
}

impl PromSource {
    async fn collect(&self, out: &mut Scrape, labels: &Labels) -> Result<(), String> {
        let resp = self
            .client
            .get(self.url.clone())
            .header(
                header::ACCEPT,
                "text/plain;version=0.0.4;q=1,application/openmetrics-text;version=1.0.0;q=0.5,*/*;q=0.1",
            )
            .send()
            .await
            .map_err(|e| podkit_core::error_chain(&e))?;
        if !resp.status().is_success() {
            return Err(format!("{} answered {}", self.url, resp.status()));
        }
        let body = resp.text().await.map_err(|e| podkit_core::error_chain(&e))?;
        // The source's labels are added while parsing (its own same-named labels become
        // exported_*), not by the scrape's base.
        let mut own = Scrape::new();
        promtext::parse_into(&body, labels, &mut own).map_err(|e| format!("{}: {e}", self.url))?;
        out.merge(own);
        Ok(())
    }
}

/// `host:port` checked (a port is required; names are resolved at each connect).
fn host_port(addr: &str) -> Result<String, String> {
    let addr = addr.strip_prefix("tcp://").unwrap_or(addr);
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(addr.to_string()),
        _ => Err(format!("{addr:?}: expected HOST:PORT")),
    }
}

/// Scrapes every source at once into one scrape, with podkit's per-source series.
async fn scrape_all(sources: &[Source], metrics: &Metrics) -> Scrape {
    let results = futures_util::future::join_all(sources.iter().map(|s| async move {
        let started = Instant::now();
        let mut out = Scrape::with_base(if matches!(s.collector, Collector::Prometheus(_)) {
            Labels::new()
        } else {
            s.labels.clone()
        });
        let r = s.scrape(&mut out).await;
        (s, out, r, started.elapsed())
    }))
    .await;
    let mut all = Scrape::new();
    for (s, mut out, r, took) in results {
        let l = [("source", s.name.as_str()), ("kind", s.kind.as_str())];
        let (up, left_out) = match r {
            Ok(p) => {
                if let Some(first) = &p.first {
                    tracing::warn!(source = %s.name, kind = s.kind.as_str(), left_out = p.count, first = %first, "series left out of the scrape");
                }
                (1.0, p.count)
            }
            Err(e) => {
                tracing::warn!(source = %s.name, kind = s.kind.as_str(), error = %e, "scrape failed");
                (0.0, 0)
            }
        };
        if let Some((name, help)) = s.kind.up_metric() {
            out.gauge(name, help, &[], up);
        }
        metrics
            .scrapes
            .get_or_create(&ScrapeLabel { source: s.name.clone(), result: if up == 1.0 { "ok" } else { "error" } })
            .inc();
        all.merge(out);
        all.gauge("podkit_adapter_source_up", "Whether the source answered the last scrape (1) or not (0)", &l, up);
        all.gauge(
            "podkit_adapter_source_scrape_duration_seconds",
            "How long the source's scrape took",
            &l,
            took.as_secs_f64(),
        );
        all.gauge(
            "podkit_adapter_source_translation_errors",
            "Series of the source left out of this scrape because they could not be read",
            &l,
            left_out as f64,
        );
    }
    if all.conflicts > 0 {
        metrics.conflicts.inc_by(all.conflicts);
    }
    all
}

// === impl Adapter ===

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScrapeLabel {
    source: String,
    result: &'static str,
}

#[derive(Debug, Clone, Default)]
struct Metrics {
    scrapes: Family<ScrapeLabel, Counter>,
    conflicts: Counter,
}

/// The `podkit adapter` component.
pub struct Adapter {
    args: AdapterArgs,
    sources: Vec<Source>,
    modules: Modules,
    /// Found while reading the config, logged once podkit's log is set up.
    warnings: Vec<String>,
    client: reqwest::Client,
    listener: Option<tokio::net::TcpListener>,
    metrics: Metrics,
    statsd_metrics: statsd::Metrics,
}

impl std::fmt::Debug for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adapter").field("args", &self.args).field("sources", &self.sources).finish_non_exhaustive()
    }
}

impl Adapter {
    /// Reads the file and the flags, and builds every source; every error names the source.
    pub fn new(args: AdapterArgs) -> Result<Adapter, String> {
        let mut file = match &args.sources_file {
            Some(p) => config::load(p)?,
            None => FileConfig::default(),
        };
        let flag = |f: fn(&mut SourceConfig, String), v: &str| {
            let mut c = SourceConfig::default();
            f(&mut c, v.to_string());
            c
        };
        file.sources.extend(args.memcached.iter().map(|a| flag(|c, v| c.memcached = Some(v), a)));
        file.sources.extend(args.redis.iter().map(|a| flag(|c, v| c.redis = Some(v), a)));
        file.sources.extend(args.twemproxy.iter().map(|a| flag(|c, v| c.twemproxy = Some(v), a)));
        file.sources.extend(args.prometheus.iter().map(|a| flag(|c, v| c.prometheus = Some(v), a.as_str())));
        file.sources.extend(args.json.iter().map(|a| flag(|c, v| c.json = Some(v), a.as_str())));
        if let Some(addr) = &args.statsd {
            let mut c = flag(|c, v| c.statsd = Some(v), addr);
            c.mapping_file = args.statsd_mapping_config.clone();
            c.addr_file = args.statsd_addr_file.clone();
            file.sources.push(c);
        }
        if file.sources.is_empty() {
            return Err(
                "no source: give --memcached, --redis, --twemproxy, --prometheus, --json or --statsd, or sources in --config FILE"
                    .into(),
            );
        }
        let mut warnings = Vec::new();
        let modules = json_modules(&args, &file, &mut warnings)?;
        // One client for every endpoint source and /scrape; each scrape is bounded by its
        // source's own timeout, not by the client.
        let client = podkit_core::http::client(podkit_core::Duration::MAX.get())?;
        let mut sources: Vec<Source> = Vec::new();
        for (i, cfg) in file.sources.iter().enumerate() {
            let s =
                Source::build(cfg, args.timeout.get(), &client, &modules).map_err(|e| format!("sources[{i}]: {e}"))?;
            if let Some(other) = sources.iter().find(|o| o.name == s.name) {
                return Err(format!(
                    "sources[{i}]: the name {:?} is taken by another {} source; give each a name:",
                    s.name,
                    other.kind.as_str()
                ));
            }
            // Two sources of one kind would write the same series: their labels must differ.
            // (Endpoints bring their own names; JSON sources share names only through a module.)
            if let Some(other) = sources.iter().find(|o| {
                o.kind == s.kind && o.labels == s.labels && s.kind != SourceKind::Prometheus && o.module == s.module
            }) {
                return Err(format!(
                    "sources[{i}]: {} and {} are both {} sources with the same labels, so their series would collide; give each labels: (e.g. {{instance: …}}), or scrape them through /scrape?target=",
                    other.name,
                    s.name,
                    s.kind.as_str()
                ));
            }
            sources.push(s);
        }
        for s in &sources {
            if let Collector::Statsd(st) = &s.collector {
                warnings.extend(st.warnings().iter().map(|w| format!("source {}: mapping_file {w}", s.name)));
            }
        }
        Ok(Adapter {
            args,
            sources,
            modules,
            warnings,
            client,
            listener: None,
            metrics: Metrics::default(),
            statsd_metrics: statsd::Metrics::default(),
        })
    }
}

/// Compiles the JSON modules: those of --config's `modules:` and those of json_exporter's own
/// file (`json_exporter_config:` or --json-config).
fn json_modules(args: &AdapterArgs, file: &FileConfig, warnings: &mut Vec<String>) -> Result<Modules, String> {
    let mut all: Vec<(String, String, json::ModuleConfig)> =
        file.modules.iter().map(|(k, v)| ("--config modules".to_string(), k.clone(), v.clone())).collect();
    for (path, what) in [(&file.json_exporter_config, "json_exporter_config"), (&args.json_config, "--json-config")] {
        if let Some(p) = path {
            let f = config::load_json_exporter(p, what)?;
            all.extend(f.modules.into_iter().map(|(k, v)| (format!("{what} {}", p.display()), k, v)));
        }
    }
    let mut modules = Modules::new();
    for (from, name, cfg) in all {
        if modules.contains_key(&name) {
            return Err(format!("{from}: module {name:?} is defined twice"));
        }
        let mut warn = Vec::new();
        let m = json::Module::compile(&cfg, &mut warn).map_err(|e| format!("{from}: module {name}: {e}"))?;
        warnings.extend(warn.into_iter().map(|w| format!("module {name}: {w}")));
        modules.insert(name, Arc::new(m));
    }
    Ok(modules)
}

impl podkit_core::Command for AdapterArgs {
    const NAME: &'static str = "adapter";

    fn augment(cmd: clap::Command) -> clap::Command {
        // --config is the adapter's own file here; podkit's options file is --options.
        podkit_core::config::with_own_config_file(cmd, DEFAULT_ADMIN)
    }

    fn main(self, effective: serde_json::Value) -> i32 {
        let common = self.common.clone();
        match Adapter::new(self) {
            Ok(a) => podkit_core::launch(a, &common, effective),
            Err(e) => {
                eprintln!("error: {e}");
                podkit_core::EX_USAGE
            }
        }
    }
}

impl Component for Adapter {
    const NAME: &'static str = "adapter";
    const DEFAULT_ADMIN: &'static str = DEFAULT_ADMIN;
    type Error = AdapterError;

    async fn prepare(&mut self, _ctx: &Context) -> Result<(), StartError> {
        for s in &self.sources {
            if let Collector::Statsd(st) = &s.collector {
                st.bind().await.map_err(|e| {
                    StartError::usage(format!("source {} (statsd): cannot listen: {e}; choose another address", s.name))
                })?;
            }
        }
        self.listener = Some(
            podkit_core::listen(&Listen {
                addr: self.args.listen,
                addr_file: self.args.listen_addr_file.as_deref(),
                what: "metrics listener",
                option: "--listen",
            })
            .await?,
        );
        Ok(())
    }

    fn setup(&mut self, admin: &mut AdminBuilder, ctx: &Context) {
        for w in &self.warnings {
            tracing::warn!("{w}");
        }
        let reg = admin.metrics();
        reg.register("scrapes", "Source scrapes, by source and result (ok, error)", self.metrics.scrapes.clone());
        reg.register(
            "series_conflicts",
            "Series left out of a scrape because their name came with another type",
            self.metrics.conflicts.clone(),
        );
        let statsd: Vec<_> = self
            .sources
            .iter()
            .filter_map(|s| match &s.collector {
                Collector::Statsd(st) => Some((s.name.clone(), st.clone())),
                _ => None,
            })
            .collect();
        if !statsd.is_empty() {
            self.statsd_metrics.register(reg);
            for (name, st) in statsd {
                st.counters(&self.statsd_metrics, &name);
            }
        }
        // The adapter serves as soon as it listens: a source that is down is reported in its
        // own `up` series, which is what Prometheus needs to see.
        ctx.readiness.ready("listening");
    }

    async fn run(self, ctx: Context) -> Result<i32, AdapterError> {
        let listener = self.listener.expect("prepared before run");
        for s in &self.sources {
            if let Collector::Statsd(st) = &s.collector {
                st.start(ctx.shutdown.token().clone(), &ctx.tasks);
            }
        }
        tracing::info!(
            sources = ?self.sources.iter().map(|s| format!("{} {}", s.kind.as_str(), s.name)).collect::<Vec<_>>(),
            "translating"
        );
        let state = Arc::new(Served {
            sources: self.sources,
            metrics: self.metrics,
            timeout: self.args.timeout.get(),
            allow: self.args.scrape_allow,
            client: self.client,
            modules: self.modules,
        });
        let app = axum::Router::new()
            .route("/metrics", get(metrics_handler))
            .route("/scrape", get(scrape_handler))
            .route("/probe", get(probe_handler))
            .route(
                "/",
                get(|| async {
                    "podkit adapter: /metrics, /scrape?target=…&kind=…, /probe?module=…&target=…\n"
                }),
            )
            .with_state(state);
        let stop = ctx.shutdown.clone();
        // Headers and body go out in separate writes: without TCP_NODELAY the body can wait
        // for the scraper's delayed ACK.
        use axum::serve::ListenerExt as _;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                stop.triggered().await;
            })
            .await
            .map_err(AdapterError::Serve)?;
        Ok(0)
    }
}

struct Served {
    sources: Vec<Source>,
    metrics: Metrics,
    timeout: Duration,
    allow: Vec<String>,
    client: reqwest::Client,
    modules: Modules,
}

const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The body, gzipped when the scraper accepts it (Prometheus does).
fn respond(headers: &HeaderMap, body: String) -> Response {
    let gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().split(';').next() == Some("gzip")));
    if gzip {
        use std::io::Write as _;
        let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
        if enc.write_all(body.as_bytes()).is_ok()
            && let Ok(z) = enc.finish()
        {
            return ([(header::CONTENT_TYPE, TEXT_FORMAT), (header::CONTENT_ENCODING, "gzip")], z).into_response();
        }
    }
    ([(header::CONTENT_TYPE, TEXT_FORMAT)], body).into_response()
}

async fn metrics_handler(State(s): State<Arc<Served>>, headers: HeaderMap) -> Response {
    let scrape = scrape_all(&s.sources, &s.metrics).await;
    respond(&headers, scrape.render())
}

#[derive(Debug, serde::Deserialize)]
struct ScrapeQuery {
    target: String,
    kind: Option<String>,
    module: Option<String>,
}

/// The exporters' multi-target form: `/scrape?target=redis://host:port`, or
/// `target=host:port&kind=memcached`, or `target=URL&kind=json&module=NAME`.
async fn scrape_handler(
    State(s): State<Arc<Served>>,
    headers: HeaderMap,
    q: Result<Query<ScrapeQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    scrape_one(s, headers, q, None).await
}

/// json_exporter's `/probe?module=NAME&target=URL`, so its Prometheus jobs carry over.
async fn probe_handler(
    State(s): State<Arc<Served>>,
    headers: HeaderMap,
    q: Result<Query<ScrapeQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    scrape_one(s, headers, q, Some(SourceKind::Json)).await
}

async fn scrape_one(
    s: Arc<Served>,
    headers: HeaderMap,
    q: Result<Query<ScrapeQuery>, axum::extract::rejection::QueryRejection>,
    default_kind: Option<SourceKind>,
) -> Response {
    const KINDS: &str = "memcached|redis|twemproxy|prometheus|json";
    let bad = |m: String| (StatusCode::BAD_REQUEST, m).into_response();
    let Ok(Query(q)) = q else {
        return bad(format!("give ?target=ADDRESS (and &kind={KINDS} unless the address says it)\n"));
    };
    let kind = match (q.kind.as_deref(), default_kind) {
        (Some(k), _) => match SourceKind::parse(k) {
            Some(k) => k,
            None => return bad(format!("kind {k:?}: expected one of {KINDS}\n")),
        },
        (None, Some(k)) => k,
        (None, None) if q.module.is_some() => SourceKind::Json,
        (None, None) if q.target.starts_with("redis://") || q.target.starts_with("rediss://") => SourceKind::Redis,
        (None, None) if q.target.starts_with("http://") || q.target.starts_with("https://") => SourceKind::Prometheus,
        (None, None) => return bad(format!("target {:?}: add &kind={KINDS}\n", q.target)),
    };
    let host = target_host(&q.target);
    if !s.allow.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(&host)) {
        return (StatusCode::FORBIDDEN, format!("target host {host:?} is not in --scrape-allow\n")).into_response();
    }
    let mut cfg = SourceConfig::default();
    match kind {
        SourceKind::Memcached => cfg.memcached = Some(q.target.clone()),
        SourceKind::Redis => cfg.redis = Some(q.target.clone()),
        SourceKind::Twemproxy => cfg.twemproxy = Some(q.target.clone()),
        SourceKind::Prometheus => cfg.prometheus = Some(q.target.clone()),
        SourceKind::Json => {
            cfg.json = Some(q.target.clone());
            cfg.module = q.module.clone();
        }
        SourceKind::Statsd => {
            return bad("a StatsD source is a listener, not a target: its series are in /metrics\n".into());
        }
    }
    let source = match Source::build(&cfg, s.timeout, &s.client, &s.modules) {
        Ok(src) => src,
        Err(e) => return bad(format!("{e}\n")),
    };
    let scrape = scrape_all(std::slice::from_ref(&source), &s.metrics).await;
    respond(&headers, scrape.render())
}

/// The host a target names, for the allow list.
fn target_host(target: &str) -> String {
    if let Ok(u) = reqwest::Url::parse(target)
        && let Some(h) = u.host_str()
    {
        return h.trim_start_matches('[').trim_end_matches(']').to_string();
    }
    let t = target.strip_prefix("tcp://").unwrap_or(target);
    let host = t.rsplit_once(':').map_or(t, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_hosts() {
        assert_eq!(target_host("redis://:pw@10.0.0.1:6379/2"), "10.0.0.1");
        assert_eq!(target_host("127.0.0.1:11211"), "127.0.0.1");
        assert_eq!(target_host("[::1]:11211"), "::1");
        assert_eq!(target_host("http://localhost:9/metrics"), "localhost");
    }

    #[test]
    fn addresses() {
        assert!(host_port("127.0.0.1:11211").is_ok());
        assert!(host_port("cache:11211").is_ok());
        assert!(host_port("127.0.0.1").is_err());
        assert_eq!(podkit_core::http::shown_url("redis://u:secret@h:1"), "redis://u:***@h:1");
    }
}
