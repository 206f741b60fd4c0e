//! Logging: records go to stderr or `--log-file` (text on a terminal, JSON lines otherwise) and
//! into a bounded ring that the admin `/logs` endpoint serves and streams.
//!
//! Two things can change while podkit runs, as a classic daemon's log does: the file is
//! reopened on request (logrotate moved it away: [`reopen`]) and the level goes up or down
//! ([`more_verbose`], [`less_verbose`]).

use std::collections::VecDeque;
use std::fmt;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use serde::{Serialize, Serializer};
use serde_json::{Map, Value};
use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

use crate::config::LogFormat;

// === impl Level ===

/// Severity, ordered from least to most severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

impl From<&tracing::Level> for Level {
    fn from(l: &tracing::Level) -> Self {
        match *l {
            tracing::Level::TRACE => Level::Trace,
            tracing::Level::DEBUG => Level::Debug,
            tracing::Level::INFO => Level::Info,
            tracing::Level::WARN => Level::Warn,
            tracing::Level::ERROR => Level::Error,
        }
    }
}

impl FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "trace" => Ok(Level::Trace),
            "debug" => Ok(Level::Debug),
            "info" => Ok(Level::Info),
            "warn" | "warning" => Ok(Level::Warn),
            "error" => Ok(Level::Error),
            _ => Err(format!("unknown level {s:?}; expected trace, debug, info, warn or error")),
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Level {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

// === impl Record ===

/// One log record as `/logs` serves it.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Position in this process' log, starting at 1; lets a client resume with `since_seq`.
    pub seq: u64,
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    pub level: Level,
    pub target: String,
    /// For lines of a process podkit runs: `stdout` or `stderr`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    pub message: String,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub fields: Map<String, Value>,
}

fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

// === impl LogRing ===

/// The bounded buffer behind `/logs`. Cloning shares it.
#[derive(Clone, Debug)]
pub struct LogRing {
    inner: Arc<RingInner>,
}

#[derive(Debug)]
struct RingInner {
    records: Mutex<VecDeque<Arc<Record>>>,
    capacity: usize,
    seq: AtomicU64,
    live: broadcast::Sender<Arc<Record>>,
}

impl LogRing {
    pub fn new(capacity: usize) -> Self {
        let (live, _) = broadcast::channel(1024);
        Self {
            inner: Arc::new(RingInner {
                records: Mutex::new(VecDeque::new()),
                capacity: capacity.max(1),
                seq: AtomicU64::new(0),
                live,
            }),
        }
    }

    /// Adds a record built from its parts; `seq` and `time` are filled in here.
    pub fn push(&self, level: Level, target: &str, stream: Option<&str>, message: String, fields: Map<String, Value>) {
        let mut records = self.inner.records.lock().unwrap_or_else(|e| e.into_inner());
        // The sequence number is taken under the lock so the ring stays in seq order.
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let record = Arc::new(Record {
            seq,
            time: SystemTime::now(),
            level,
            target: target.to_string(),
            stream: stream.map(str::to_string),
            message,
            fields,
        });
        if records.len() == self.inner.capacity {
            records.pop_front();
        }
        records.push_back(record.clone());
        // Sent under the lock, so followers receive records in sequence order. No receiver is
        // the normal case (nobody follows); that is not an error.
        let _ = self.inner.live.send(record);
    }

    /// The most recent `limit` records that pass `filter`, oldest first.
    pub fn query(&self, filter: &LogFilter, limit: usize) -> Vec<Arc<Record>> {
        let records = self.inner.records.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = records.iter().rev().filter(|r| filter.matches(r)).take(limit).cloned().collect();
        out.reverse();
        out
    }

    /// New records as they are pushed.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Record>> {
        self.inner.live.subscribe()
    }

    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// Records that pass `filter` as they arrive, after the `backlog` most recent ones that
    /// already did. A follower that falls behind the live channel catches up from the ring, so
    /// it only loses records that the ring itself has dropped.
    pub fn follow(
        &self,
        filter: LogFilter,
        backlog: usize,
    ) -> impl futures_util::Stream<Item = Arc<Record>> + Send + 'static {
        // Subscribe before reading the backlog so nothing falls between the two.
        let live = self.subscribe();
        let queue: std::collections::VecDeque<_> = self.query(&filter, backlog).into();
        let state = Follow { ring: self.clone(), live, filter, last: 0, queue };
        futures_util::stream::unfold(state, |mut st| async move {
            loop {
                if let Some(r) = st.queue.pop_front() {
                    if r.seq > st.last {
                        st.last = r.seq;
                        return Some((r, st));
                    }
                    continue;
                }
                match st.live.recv().await {
                    Ok(r) if r.seq > st.last && st.filter.matches(&r) => {
                        st.last = r.seq;
                        return Some((r, st));
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let after = LogFilter { after_seq: Some(st.last), ..st.filter.clone() };
                        st.queue = st.ring.query(&after, st.ring.capacity()).into();
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }
}

struct Follow {
    ring: LogRing,
    live: broadcast::Receiver<Arc<Record>>,
    filter: LogFilter,
    last: u64,
    queue: std::collections::VecDeque<Arc<Record>>,
}

/// Which records a `/logs` caller wants.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    /// This level and more severe.
    pub min_level: Option<Level>,
    /// Records at or after this time.
    pub since: Option<SystemTime>,
    /// Records with a greater sequence number.
    pub after_seq: Option<u64>,
    /// Only lines of this stream (`stdout`, `stderr`), or only podkit's own records (`podkit`).
    pub stream: Option<String>,
    /// Only records of this target (a program's output lines carry the program's name).
    pub target: Option<String>,
}

impl LogFilter {
    pub fn matches(&self, r: &Record) -> bool {
        self.min_level.is_none_or(|l| r.level >= l)
            && self.since.is_none_or(|t| r.time >= t)
            && self.after_seq.is_none_or(|s| r.seq > s)
            && self.stream.as_deref().is_none_or(|s| r.stream.as_deref().unwrap_or("podkit") == s)
            && self.target.as_deref().is_none_or(|t| r.target == t)
    }
}

// === impl RingLayer ===

/// A tracing layer that copies every event that passes the filter into the ring.
struct RingLayer {
    ring: LogRing,
}

impl<S: Subscriber> Layer<S> for RingLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut visitor = FieldVisitor::default();
        event.record(&mut visitor);
        let meta = event.metadata();
        self.ring.push(meta.level().into(), meta.target(), None, visitor.message, visitor.fields);
    }
}

#[derive(Default)]
struct FieldVisitor {
    message: String,
    fields: Map<String, Value>,
}

impl Visit for FieldVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
}

impl FieldVisitor {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
        } else {
            self.fields.insert(field.name().to_string(), value);
        }
    }
}

// === impl LogFile ===

/// A log file opened for appending, which [`reopen`] replaces with a new file at the same path
/// (after logrotate renamed the old one).
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl LogFile {
    /// Opens (creating) `path` for appending. A relative path is kept as it was given: commands
    /// that change directory make it absolute first.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Ok(LogFile { path: path.to_path_buf(), file: Mutex::new(append(path)?) })
    }

    fn reopen(&self) -> std::io::Result<()> {
        let new = append(&self.path)?;
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = new;
        Ok(())
    }
}

fn append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().create(true).append(true).open(path)
}

impl std::io::Write for &LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.lock().unwrap_or_else(|e| e.into_inner()).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// === the running log ===

/// What can be changed in the installed log.
struct Control {
    filter: reload::Handle<EnvFilter, Registry>,
    level: Mutex<Level>,
    file: Option<Arc<LogFile>>,
}

static CONTROL: OnceLock<Control> = OnceLock::new();

/// Opens the log file again at its path, so that lines go to the new file once logrotate has
/// renamed the old one. Returns the path, or `None` when the log goes to stderr.
pub fn reopen() -> std::io::Result<Option<&'static Path>> {
    match CONTROL.get().and_then(|c| c.file.as_ref()) {
        Some(f) => f.reopen().map(|()| Some(f.path.as_path())),
        None => Ok(None),
    }
}

/// Logs one level more (error → warn → info → debug → trace); returns the new level.
/// Per-target directives of `--log-level` give way to the one level.
pub fn more_verbose() -> Option<Level> {
    step_level(-1)
}

/// Logs one level less (trace → debug → info → warn → error); returns the new level.
pub fn less_verbose() -> Option<Level> {
    step_level(1)
}

/// Moves the level `by` steps in [`Level`]'s order (negative: more verbose), within its ends.
fn step_level(by: isize) -> Option<Level> {
    const LEVELS: [Level; 5] = [Level::Trace, Level::Debug, Level::Info, Level::Warn, Level::Error];
    let control = CONTROL.get()?;
    let mut level = control.level.lock().unwrap_or_else(|e| e.into_inner());
    let at = LEVELS.iter().position(|l| l == &*level).unwrap_or(2) as isize;
    *level = LEVELS[(at + by).clamp(0, LEVELS.len() as isize - 1) as usize];
    control.filter.reload(EnvFilter::new(level.as_str())).ok()?;
    Some(*level)
}

/// Installs the global subscriber: stderr (or `file`) in the chosen format, plus the ring.
///
/// Fails only if a subscriber is already installed (a second call in one process).
pub fn init(format: LogFormat, filter: &str, ring: LogRing, file: Option<LogFile>) -> Result<(), String> {
    let filter = EnvFilter::builder().parse(filter).map_err(|e| e.to_string())?;
    // The level TTIN/TTOU step from: the most verbose one the filter lets through.
    let level = filter.max_level_hint().and_then(|l| l.into_level()).map_or(Level::Error, |l| Level::from(&l));
    let (filter, handle) = reload::Layer::new(filter);
    let file = file.map(Arc::new);
    let terminal = file.is_none() && std::io::stderr().is_terminal();
    let writer = match &file {
        Some(f) => BoxMakeWriter::new(f.clone()),
        None => BoxMakeWriter::new(std::io::stderr),
    };
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !terminal,
    };
    let fmt_layer = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(writer)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().with_ansi(terminal).with_writer(writer).boxed()
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(RingLayer { ring })
        .try_init()
        .map_err(|e| e.to_string())?;
    let _ = CONTROL.set(Control { filter: handle, level: Mutex::new(level), file });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(ring: &LogRing, level: Level, stream: Option<&str>, msg: &str) {
        ring.push(level, "test", stream, msg.to_string(), Map::new());
    }

    #[test]
    fn ring_is_bounded_and_keeps_the_newest() {
        let ring = LogRing::new(3);
        for i in 0..5 {
            push(&ring, Level::Info, None, &format!("m{i}"));
        }
        let all = ring.query(&LogFilter::default(), 100);
        let msgs: Vec<_> = all.iter().map(|r| r.message.as_str()).collect();
        assert_eq!(msgs, ["m2", "m3", "m4"]);
        assert_eq!(all[0].seq, 3);
    }

    #[test]
    fn filters_by_level_stream_seq_and_limit() {
        let ring = LogRing::new(100);
        push(&ring, Level::Debug, None, "debug");
        push(&ring, Level::Warn, None, "warn");
        push(&ring, Level::Info, Some("stdout"), "out");
        push(&ring, Level::Info, Some("stderr"), "err");
        push(&ring, Level::Error, None, "error");

        let f = LogFilter { min_level: Some(Level::Warn), ..Default::default() };
        let got: Vec<_> = ring.query(&f, 100).iter().map(|r| r.message.clone()).collect();
        assert_eq!(got, ["warn", "error"]);

        let f = LogFilter { stream: Some("stdout".into()), ..Default::default() };
        assert_eq!(ring.query(&f, 100)[0].message, "out");
        let f = LogFilter { stream: Some("podkit".into()), ..Default::default() };
        assert_eq!(ring.query(&f, 100).len(), 3);

        let f = LogFilter { after_seq: Some(3), ..Default::default() };
        assert_eq!(ring.query(&f, 100).len(), 2);

        let got: Vec<_> = ring.query(&LogFilter::default(), 2).iter().map(|r| r.message.clone()).collect();
        assert_eq!(got, ["err", "error"], "limit keeps the newest");
    }

    #[test]
    fn record_serializes_with_rfc3339_time_and_lowercase_level() {
        let ring = LogRing::new(10);
        let mut fields = Map::new();
        fields.insert("pid".into(), Value::from(42));
        ring.push(Level::Warn, "podkit_run", Some("stderr"), "boom".into(), fields);
        let r = &ring.query(&LogFilter::default(), 1)[0];
        let v = serde_json::to_value(&**r).unwrap();
        assert_eq!(v["level"], "warn");
        assert_eq!(v["stream"], "stderr");
        assert_eq!(v["fields"]["pid"], 42);
        assert!(humantime::parse_rfc3339(v["time"].as_str().unwrap()).is_ok());
    }

    #[tokio::test]
    async fn a_follower_that_falls_behind_catches_up_from_the_ring() {
        use futures_util::StreamExt;
        let ring = LogRing::new(10_000);
        push(&ring, Level::Info, None, "before");
        let follow = ring.follow(LogFilter::default(), 1);
        // Far more than the live channel holds, before the follower reads anything.
        for i in 0..3000 {
            push(&ring, Level::Info, None, &format!("m{i}"));
        }
        let got: Vec<String> = follow.take(3001).map(|r| r.message.clone()).collect().await;
        assert_eq!(got[0], "before");
        assert_eq!(got.len(), 3001);
        for (i, m) in got[1..].iter().enumerate() {
            assert_eq!(*m, format!("m{i}"), "a record was lost or reordered");
        }
    }

    #[tokio::test]
    async fn subscribers_see_new_records() {
        let ring = LogRing::new(10);
        let mut rx = ring.subscribe();
        push(&ring, Level::Info, None, "live");
        assert_eq!(rx.recv().await.unwrap().message, "live");
    }
}
