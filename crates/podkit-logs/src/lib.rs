//! `podkit logs`: the log-saver sidecar. It follows log files (globs, re-scanned) through every
//! kind of rotation and ships their lines to one or more sinks, each with its own checkpoint
//! that moves only once the sink has acknowledged the records. Nothing is lost across
//! rotation, crash or a sink outage; after a kill -9 at most the batch in flight is sent again,
//! with the same record ids, and the file sink drops those.
//!
//! The parts: [`identity`] (what makes a file the same file), [`tail`] (following files and
//! reading batches), [`record`] (input formats, the record), [`sink`] (where records go),
//! [`pipeline`] (one sink's read → deliver → checkpoint loop).

mod identity;
mod pipeline;
mod record;
mod sink;
mod tail;
mod watch;

/// Entry points for the fuzz targets in /fuzz (not an API).
#[doc(hidden)]
pub mod fuzzing {
    /// Reads `data` as a followed file would be read, in every `--format`, and checks what
    /// every read keeps (see `tail::check_reading`). The first two bytes choose where the file
    /// is cut between two reads, and the maximum record size.
    pub fn reading(dir: &std::path::Path, data: &[u8]) {
        let [a, b, data @ ..] = data else { return };
        let cut = usize::from(*a) * data.len() / 256;
        let max_record = 64 + usize::from(*b) * 4;
        for (i, format) in [
            crate::record::Format::Raw,
            crate::record::Format::Cri,
            crate::record::Format::Docker,
            crate::record::Format::Json,
        ]
        .into_iter()
        .enumerate()
        {
            crate::tail::check_reading(&dir.join(format!("in{i}.log")), format, data, cut, max_record);
        }
    }
}

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::routing::get;
use clap::Args;
use podkit_core::backoff::BackoffPolicy;
use podkit_core::{AdminBuilder, CommonArgs, Component, Context, StartError};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::pipeline::{Metrics, OnFull, Parts, Timing, Views};
use crate::record::Format;
use crate::sink::{ElasticsearchSink, FileSink, HttpSink, LokiSink, RedisSink, SinkUrl, StdoutSink, SyslogSink};
use crate::tail::{Overlong, Settings, Tailer};

/// The admin listener's default address for `podkit logs`.
const DEFAULT_ADMIN: &str = "127.0.0.1:9196";

/// Options of `podkit logs`. Their doc comments are the `--help` text.
#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Files to follow: a glob (`/var/log/app/*.log`), repeatable. Globs are looked at again
    /// every --scan-interval, so new files are picked up.
    #[arg(long = "path", value_name = "GLOB", required = true, value_parser = parse_glob, help_heading = "Input")]
    pub paths: Vec<glob::Pattern>,

    /// How the lines are written: raw (a line is a record), cri (Kubernetes /var/log/pods),
    /// docker (the json-file driver), json (each line a JSON object).
    #[arg(long, value_enum, default_value = "raw", help_heading = "Input")]
    pub format: FormatArg,

    /// Longest record, in bytes. Longer lines are split into pieces this long (or truncated,
    /// with --overlong truncate), marked "split", and counted; the file is never dropped.
    #[arg(long, value_name = "BYTES", default_value = "262144", value_parser = clap::value_parser!(u64).range(64..=64 * 1024 * 1024), help_heading = "Input")]
    pub max_record_size: u64,

    /// What a longer line than --max-record-size becomes.
    #[arg(long, value_enum, default_value = "split", help_heading = "Input")]
    pub overlong: OverlongArg,

    /// A rotated (renamed or deleted) file is closed once read to its end and idle this long:
    /// a writer may still append to it for a moment after the rotation.
    #[arg(long, value_name = "DURATION", default_value = "5s", help_heading = "Input")]
    pub rotate_wait: podkit_core::Duration,

    /// How often the globs are looked at again (new files, rotations, truncations).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = podkit_core::Duration::parse_positive, help_heading = "Input")]
    pub scan_interval: podkit_core::Duration,

    /// How long to wait before reading again once every file is read to its end.
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = podkit_core::Duration::parse_positive, help_heading = "Input")]
    pub poll_interval: podkit_core::Duration,

    /// Join lines into multiline records (stack traces): a line that matches this regular
    /// expression starts a record, and the lines after it that do not match are added to it,
    /// joined with "\n". Lines with no record open (before a file's first match) start one of
    /// their own. The record's id is its first line's. Applies to every --format (CRI and Docker
    /// lines once their pieces are joined; JSON lines are joined, then decoded).
    #[arg(long, value_name = "REGEX", value_parser = tail::parse_multiline_start, help_heading = "Input")]
    pub multiline_start: Option<regex::Regex>,

    /// A file's last multiline record is saved once the file has been idle this long (the
    /// next start line, a rotation or --max-record-size end it sooner).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = podkit_core::Duration::parse_positive, requires = "multiline_start", help_heading = "Input")]
    pub multiline_timeout: podkit_core::Duration,

    /// Where records go, repeatable: stdout; file:///PATH[?max_size=BYTES&keep=N];
    /// http(s)://HOST/PATH (NDJSON POSTs); loki+http(s)://HOST:PORT;
    /// elasticsearch+http(s)://HOST:PORT/INDEX; syslog+tcp://HOST:PORT; syslog+tls://HOST:PORT;
    /// redis://HOST:PORT/DB?stream=NAME. Options ride in the query (docs/logs.md). Each sink
    /// has its own checkpoint and retries.
    #[arg(long = "sink", value_name = "URL", default_value = "stdout", value_parser = parse_sink_arg, help_heading = "Output")]
    pub sinks: Vec<SinkArg>,

    /// A field added to every record (k=v), repeatable.
    #[arg(long = "label", value_name = "K=V", value_parser = parse_label, help_heading = "Output")]
    pub labels: Vec<(String, String)>,

    /// Where each sink's checkpoint (how far every file was delivered) is kept.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/podkit/logs", help_heading = "Delivery")]
    pub state_dir: PathBuf,

    /// Most bytes read into one batch (one batch per sink is in flight: this bounds memory).
    #[arg(long, value_name = "BYTES", default_value = "1048576", value_parser = clap::value_parser!(u64).range(1024..=256 * 1024 * 1024), help_heading = "Delivery")]
    pub batch_bytes: u64,

    /// Most records in one batch.
    #[arg(long, value_name = "N", default_value = "10000", value_parser = clap::value_parser!(u64).range(1..=1_000_000), help_heading = "Delivery")]
    pub batch_records: u64,

    /// Longest pause between two attempts to deliver a batch to a failing sink (attempts go on
    /// until it takes the batch).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = podkit_core::Duration::parse_positive, help_heading = "Delivery")]
    pub retry_max: podkit_core::Duration,

    /// What to do while a sink does not take batches: block (stop reading and keep trying;
    /// nothing is lost) or drop (drop a batch once it has failed for --drop-after, counted in
    /// podkit_logs_records_dropped_total, and read on).
    #[arg(long, value_enum, default_value = "block", help_heading = "Delivery")]
    pub on_full: OnFullArg,

    /// With --on-full drop: how long a batch is tried before it is dropped.
    #[arg(long, value_name = "DURATION", default_value = "1m", help_heading = "Delivery")]
    pub drop_after: podkit_core::Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnFullArg {
    Block,
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatArg {
    Raw,
    Cri,
    Docker,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OverlongArg {
    Split,
    Truncate,
}

/// A parsed `--sink` value.
#[derive(Debug, Clone)]
pub struct SinkArg(SinkUrl);

fn parse_sink_arg(s: &str) -> Result<SinkArg, String> {
    sink::parse_sink(s).map(SinkArg)
}

fn parse_glob(s: &str) -> Result<glob::Pattern, String> {
    if !s.starts_with('/') {
        return Err(format!("{s}: give an absolute path (the checkpoints record absolute paths)"));
    }
    glob::Pattern::new(s).map_err(|e| format!("{s}: not a glob: {e}"))
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s}: expected KEY=VALUE")),
    }
}

/// Errors that end `podkit logs` while it runs.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error("{0}")]
    Checkpoint(String),
}

impl podkit_core::ExitStatus for LogsError {
    fn exit_status(&self) -> i32 {
        podkit_core::EX_SOFTWARE
    }
}

/// The `podkit logs` component.
#[derive(Debug)]
pub struct Logs {
    args: LogsArgs,
    settings: Arc<Settings>,
    metrics: Metrics,
    views: Views,
    /// The sinks, opened in prepare, each with its checkpoint path and what it held.
    opened: Vec<Opened>,
}

#[derive(Debug)]
enum OpenedSink {
    Stdout(StdoutSink),
    File(FileSink),
    Http(HttpSink),
    Loki(LokiSink),
    Elasticsearch(ElasticsearchSink),
    Syslog(SyslogSink),
    Redis(RedisSink),
}

#[derive(Debug)]
struct Opened {
    name: String,
    sink: OpenedSink,
    checkpoint: PathBuf,
    dead_letter: PathBuf,
    restore: Vec<tail::Saved>,
}

impl Logs {
    pub fn new(args: LogsArgs) -> Self {
        let format = match args.format {
            FormatArg::Raw => Format::Raw,
            FormatArg::Cri => Format::Cri,
            FormatArg::Docker => Format::Docker,
            FormatArg::Json => Format::Json,
        };
        let settings = Arc::new(Settings {
            patterns: args.paths.clone(),
            format,
            max_record: args.max_record_size as usize,
            overlong: match args.overlong {
                OverlongArg::Split => Overlong::Split,
                OverlongArg::Truncate => Overlong::Truncate,
            },
            rotate_wait: args.rotate_wait.get(),
            labels: args.labels.clone(),
            multiline: args
                .multiline_start
                .clone()
                .map(|start| tail::Multiline { start, timeout: args.multiline_timeout.get() }),
        });
        Self { args, settings, metrics: Metrics::default(), views: Views::default(), opened: Vec::new() }
    }

    fn timing(&self) -> Timing {
        Timing {
            poll: self.args.poll_interval.get(),
            scan: self.args.scan_interval.get(),
            batch_bytes: self.args.batch_bytes as usize,
            batch_records: self.args.batch_records as usize,
            backoff: BackoffPolicy::jittered(Duration::from_millis(250), self.args.retry_max.get()),
            on_full: match self.args.on_full {
                OnFullArg::Block => OnFull::Block,
                OnFullArg::Drop => OnFull::Drop(self.args.drop_after.get()),
            },
        }
    }
}

impl podkit_core::Command for LogsArgs {
    const NAME: &'static str = "logs";
    const DEFAULT_ADMIN: Option<&'static str> = Some(DEFAULT_ADMIN);

    fn main(self, effective: serde_json::Value) -> i32 {
        let common = self.common.clone();
        podkit_core::launch(Logs::new(self), &common, effective)
    }
}

impl Component for Logs {
    const NAME: &'static str = "logs";
    const DEFAULT_ADMIN: &'static str = DEFAULT_ADMIN;
    type Error = LogsError;

    async fn prepare(&mut self, _ctx: &Context) -> Result<(), StartError> {
        tail::check_state_dir(&self.args.state_dir).map_err(StartError::usage)?;
        let mut names = std::collections::HashSet::new();
        for SinkArg(url) in &self.args.sinks {
            let name = url.name();
            if !names.insert(name.clone()) {
                return Err(StartError::usage(format!("--sink {name} is given twice")));
            }
            let usage = |e: String| StartError::usage(format!("--sink {name}: {e}"));
            let sink = match url.clone() {
                SinkUrl::Stdout => OpenedSink::Stdout(StdoutSink),
                SinkUrl::File { path, max_size, keep } => OpenedSink::File(
                    FileSink::open(&path, max_size, keep)
                        .map_err(|e| usage(format!("cannot open {}: {e}", path.display())))?,
                ),
                SinkUrl::Http(o) => OpenedSink::Http(HttpSink::open(o).map_err(usage)?),
                SinkUrl::Loki(o) => OpenedSink::Loki(LokiSink::open(o).map_err(usage)?),
                SinkUrl::Elasticsearch { http, index } => {
                    OpenedSink::Elasticsearch(ElasticsearchSink::open(http, index).map_err(usage)?)
                }
                SinkUrl::Syslog(o) => OpenedSink::Syslog(SyslogSink::open(o).map_err(usage)?),
                SinkUrl::Redis(o) => OpenedSink::Redis(RedisSink::open(o).map_err(usage)?),
            };
            let checkpoint = self.args.state_dir.join(url.checkpoint_name());
            let dead_letter = self.args.state_dir.join(url.dead_letter_name());
            let restore = pipeline::load_checkpoint(&checkpoint).map_err(StartError::usage)?;
            self.opened.push(Opened { name, sink, checkpoint, dead_letter, restore });
        }
        Ok(())
    }

    fn setup(&mut self, admin: &mut AdminBuilder, ctx: &Context) {
        let m = &self.metrics;
        let reg = admin.metrics();
        reg.register("lines_read", "Lines read, per sink and file", m.lines_read.clone());
        reg.register("read_bytes", "Bytes read, per sink and file", m.bytes_read.clone());
        reg.register("records_delivered", "Records the sink acknowledged", m.delivered.clone());
        reg.register("delivered_bytes", "Bytes the sink acknowledged", m.delivered_bytes.clone());
        reg.register(
            "duplicates_dropped",
            "Records the sink already had (sent again after a crash)",
            m.duplicates.clone(),
        );
        reg.register("retries", "Failed delivery attempts (the batch is sent again)", m.retries.clone());
        reg.register("lost_bytes", "Bytes deleted or truncated away before they were read", m.lost_bytes.clone());
        reg.register("truncations", "Files seen truncated or rewritten in place", m.truncations.clone());
        reg.register("files_opened", "Files started being followed", m.opened.clone());
        reg.register("files_closed", "Rotated files closed once read to their end", m.closed.clone());
        reg.register(
            "overlong_skipped_bytes",
            "Bytes of overlong lines skipped (--overlong truncate)",
            m.skipped_bytes.clone(),
        );
        reg.register("bad_lines", "Lines the --format could not read (kept as raw text)", m.bad_lines.clone());
        reg.register(
            "records_dead_lettered",
            "Records the sink refused for good, kept in the sink's dead-letter file",
            m.dead_lettered.clone(),
        );
        reg.register(
            "records_dropped",
            "Records dropped because the sink did not take them (--on-full drop)",
            m.dropped.clone(),
        );
        reg.register_collector(Box::new(ViewCollector { views: self.views.clone() }));

        let views = self.views.clone();
        admin.route(
            "/files",
            get(move || {
                let views = views.clone();
                async move { Json(views.lock().unwrap_or_else(|p| p.into_inner()).clone()) }
            }),
        );
        for o in &self.opened {
            ctx.readiness.not_ready(format!("sink:{}", o.name), "starting");
        }
    }

    async fn run(mut self, ctx: Context) -> Result<i32, LogsError> {
        tracing::info!(
            paths = ?self.args.paths.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
            sinks = ?self.opened.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(),
            state_dir = %self.args.state_dir.display(),
            "following files"
        );
        let timing = self.timing();
        let mut runs = tokio::task::JoinSet::new();
        for o in std::mem::take(&mut self.opened) {
            let tailer = Tailer::new(self.settings.clone(), o.restore);
            let parts = Parts {
                name: o.name,
                tailer,
                checkpoint: o.checkpoint,
                dead_letter: o.dead_letter,
                metrics: self.metrics.clone(),
                views: self.views.clone(),
                timing: timing.clone(),
            };
            // The sink's kind is settled once here; each pipeline is generic over its sink.
            match o.sink {
                OpenedSink::Stdout(sink) => runs.spawn(parts.with(sink).run(ctx.clone())),
                OpenedSink::File(sink) => runs.spawn(parts.with(sink).run(ctx.clone())),
                OpenedSink::Http(sink) => runs.spawn(parts.with(sink).run(ctx.clone())),
                OpenedSink::Loki(sink) => runs.spawn(parts.with(sink).run(ctx.clone())),
                OpenedSink::Elasticsearch(sink) => runs.spawn(parts.with(sink).run(ctx.clone())),
                OpenedSink::Syslog(sink) => runs.spawn(parts.with(sink).run(ctx.clone())),
                OpenedSink::Redis(sink) => runs.spawn(parts.with(sink).run(ctx.clone())),
            };
        }
        let mut failed = None;
        while let Some(r) = runs.join_next().await {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failed = Some(LogsError::Checkpoint(e)),
                Err(e) => failed = Some(LogsError::Checkpoint(format!("a pipeline failed: {e}"))),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(0),
        }
    }
}

/// Gauges read from the pipelines' views at scrape time.
#[derive(Debug)]
struct ViewCollector {
    views: Views,
}

impl Collector for ViewCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let views = self.views.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut e =
            encoder.encode_descriptor("open_files", "Files being followed, per sink", None, MetricType::Gauge)?;
        for (sink, v) in &views {
            ConstGauge::new(v.files.len() as i64).encode(e.encode_family(&[("sink", sink.as_str())])?)?;
        }
        let mut e = encoder.encode_descriptor(
            "sink_up",
            "1 while the sink takes batches, 0 while it fails",
            None,
            MetricType::Gauge,
        )?;
        for (sink, v) in &views {
            ConstGauge::new(i64::from(v.up)).encode(e.encode_family(&[("sink", sink.as_str())])?)?;
        }
        let mut e = encoder.encode_descriptor(
            "lag_bytes",
            "Bytes written to a file and not yet acknowledged by the sink",
            None,
            MetricType::Gauge,
        )?;
        for (sink, v) in &views {
            for f in &v.files {
                ConstGauge::new(f.lag as i64)
                    .encode(e.encode_family(&[("sink", sink.as_str()), ("path", f.path.as_str())])?)?;
            }
        }
        Ok(())
    }
}
