//! One sink's pipeline: scan, read a batch, deliver it (retrying until the sink takes it),
//! then move the offsets and write the checkpoint. One batch is in flight at a time, so memory
//! is bounded by `--batch-bytes` whatever the sink does, and a dead sink simply stops the
//! reading.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use podkit_core::Context;
use podkit_core::backoff::BackoffPolicy;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Serialize};

use crate::record::Record;
use crate::sink::{Delivered, SendError, Sink};
use crate::tail::{FileView, Saved, Tailer};

/// The checkpoint file's content.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    pub(crate) version: u32,
    pub(crate) sink: String,
    pub(crate) files: Vec<Saved>,
}

/// Reads a checkpoint; a missing one is an empty start.
pub(crate) fn load_checkpoint(path: &std::path::Path) -> Result<Vec<Saved>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice::<Checkpoint>(&bytes).map(|c| c.files).map_err(|e| {
            format!(
                "checkpoint {}: {e}; it is written atomically, so something else changed it (remove it to read every file from its start)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("checkpoint {}: {e}", path.display())),
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SinkLabel {
    pub(crate) sink: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FileLabels {
    pub(crate) sink: String,
    pub(crate) path: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PathLabel {
    pub(crate) path: String,
}

/// The counters of every pipeline, as families.
#[derive(Debug, Default, Clone)]
pub(crate) struct Metrics {
    pub(crate) lines_read: Family<FileLabels, Counter>,
    pub(crate) bytes_read: Family<FileLabels, Counter>,
    pub(crate) delivered: Family<SinkLabel, Counter>,
    pub(crate) delivered_bytes: Family<SinkLabel, Counter>,
    pub(crate) duplicates: Family<SinkLabel, Counter>,
    pub(crate) retries: Family<SinkLabel, Counter>,
    pub(crate) lost_bytes: Family<PathLabel, Counter>,
    pub(crate) truncations: Family<SinkLabel, Counter>,
    pub(crate) opened: Family<SinkLabel, Counter>,
    pub(crate) closed: Family<SinkLabel, Counter>,
    pub(crate) skipped_bytes: Family<SinkLabel, Counter>,
    pub(crate) bad_lines: Family<SinkLabel, Counter>,
    pub(crate) dead_lettered: Family<SinkLabel, Counter>,
    pub(crate) dropped: Family<SinkLabel, Counter>,
}

/// What `/files` and the gauges show, per sink.
pub(crate) type Views = Arc<Mutex<HashMap<String, SinkView>>>;

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct SinkView {
    pub(crate) up: bool,
    pub(crate) last_error: Option<String>,
    pub(crate) files: Vec<FileView>,
}

#[derive(Debug, Clone)]
pub(crate) struct Timing {
    pub(crate) poll: Duration,
    pub(crate) scan: Duration,
    pub(crate) batch_bytes: usize,
    pub(crate) batch_records: usize,
    pub(crate) backoff: BackoffPolicy,
    pub(crate) on_full: OnFull,
}

/// What a pipeline does with a batch its sink keeps failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnFull {
    /// Keep it and keep trying (reading stops meanwhile): nothing is lost.
    Block,
    /// Drop it (counted) once it has failed for this long, and read on.
    Drop(Duration),
}

/// Everything a pipeline has but its sink.
pub(crate) struct Parts {
    pub(crate) name: String,
    pub(crate) tailer: Tailer,
    pub(crate) checkpoint: PathBuf,
    /// Where records the sink refused for good are kept.
    pub(crate) dead_letter: PathBuf,
    pub(crate) metrics: Metrics,
    pub(crate) views: Views,
    pub(crate) timing: Timing,
}

impl Parts {
    pub(crate) fn with<S: Sink>(self, sink: S) -> Pipeline<S> {
        Pipeline { parts: self, sink }
    }
}

pub(crate) struct Pipeline<S> {
    parts: Parts,
    sink: S,
}

/// Runs `f` on the tailer on the blocking pool (file reads and fsyncs must not stall the
/// runtime that serves the admin endpoints).
async fn blocking<T: Send + 'static>(
    tailer: &mut Option<Tailer>,
    f: impl FnOnce(&mut Tailer) -> T + Send + 'static,
) -> T {
    let mut t = tailer.take().expect("the tailer is home between calls");
    let (t, out) = tokio::task::spawn_blocking(move || {
        let out = f(&mut t);
        (t, out)
    })
    .await
    .expect("tailer work does not panic");
    *tailer = Some(t);
    out
}

impl<S: Sink> Pipeline<S> {
    pub(crate) async fn run(self, ctx: Context) -> Result<(), String> {
        let Pipeline { parts: Parts { name, tailer, checkpoint, dead_letter, metrics, views, timing }, mut sink } =
            self;
        let label = SinkLabel { sink: name.clone() };
        let wake = tailer.wake();
        let mut tailer = Some(tailer);
        let mut last_scan: Option<Instant> = None;
        let readiness_key = format!("sink:{name}");
        let mut first_scan = true;
        loop {
            if ctx.shutdown.is_triggered() {
                break;
            }
            if last_scan.is_none_or(|t| t.elapsed() >= timing.scan) {
                let events = blocking(&mut tailer, |t| {
                    t.scan();
                    t.take_events()
                })
                .await;
                count_events(&metrics, &label, events);
                last_scan = Some(Instant::now());
                publish(&views, &name, tailer.as_ref().expect("home"));
                if first_scan {
                    // Ready once the directories are watched: from now on no new file is missed.
                    ctx.readiness.ready(&readiness_key);
                    first_scan = false;
                }
            }
            let (bb, br) = (timing.batch_bytes, timing.batch_records);
            let (mut batch, events) = blocking(&mut tailer, move |t| {
                let b = t.read_batch(bb, br);
                (b, t.take_events())
            })
            .await;
            count_events(&metrics, &label, events);
            if batch.is_empty() {
                tokio::select! {
                    _ = ctx.shutdown.triggered() => {}
                    _ = tokio::time::sleep(timing.poll) => {}
                    // A new file: take it now, before it can be rotated away.
                    _ = wake.notified() => last_scan = None,
                }
                continue;
            }
            let full = batch.bytes >= timing.batch_bytes || batch.records.len() >= timing.batch_records;
            let records: Arc<[Record]> = std::mem::take(&mut batch.records).into();
            let to = Target {
                ctx: &ctx,
                metrics: &metrics,
                label: &label,
                timing: &timing,
                views: &views,
                readiness_key: &readiness_key,
                dead_letter: &dead_letter,
            };
            match deliver(&mut sink, &records, &to).await {
                Delivery::Done => {
                    for (path, lines, bytes) in &batch.lines {
                        let l = FileLabels { sink: name.clone(), path: path.to_string() };
                        metrics.lines_read.get_or_create(&l).inc_by(*lines);
                        metrics.bytes_read.get_or_create(&l).inc_by(*bytes);
                    }
                    let cp = checkpoint.clone();
                    let sink_name = name.clone();
                    let saved = blocking(&mut tailer, move |t| {
                        t.commit(&batch);
                        save(&cp, &sink_name, t.saved())
                    })
                    .await;
                    if let Err(e) = saved {
                        // The records are delivered; only their checkpoint is not. A restart
                        // would send them again (and a deduplicating sink drops them).
                        tracing::error!(sink = %name, error = %e, "cannot write the checkpoint");
                    }
                    publish(&views, &name, tailer.as_ref().expect("home"));
                }
                Delivery::GaveUp => {
                    tailer.as_mut().expect("home").rewind();
                    break;
                }
            }
            if !full {
                // Caught up: give writers a moment rather than spinning on small reads.
                tokio::select! {
                    _ = ctx.shutdown.triggered() => {}
                    _ = tokio::time::sleep(timing.poll) => {}
                    _ = wake.notified() => last_scan = None,
                }
            }
        }
        let t = tailer.take().expect("home");
        let files = t.saved();
        save(&checkpoint, &name, files).map_err(|e| format!("checkpoint {}: {e}", checkpoint.display()))?;
        tracing::info!(sink = %name, "checkpoint written at stop");
        Ok(())
    }
}

enum Delivery {
    /// The sink took the batch (or refused records of it, now in the dead-letter file; or it
    /// was dropped by `--on-full drop`): the checkpoint moves past it.
    Done,
    /// The stop's grace ran out with the batch undelivered: it is read again at the next start.
    GaveUp,
}

/// Where a batch goes, besides its sink.
struct Target<'a> {
    ctx: &'a Context,
    metrics: &'a Metrics,
    label: &'a SinkLabel,
    timing: &'a Timing,
    views: &'a Views,
    readiness_key: &'a str,
    dead_letter: &'a PathBuf,
}

async fn deliver<S: Sink>(sink: &mut S, records: &Arc<[Record]>, to: &Target<'_>) -> Delivery {
    let Target { ctx, metrics, label, timing, views, readiness_key, dead_letter } = *to;
    let name = label.sink.as_str();
    let mut backoff = timing.backoff.start();
    let mut stop_deadline: Option<tokio::time::Instant> = None;
    let first_try = tokio::time::Instant::now();
    loop {
        let outcome = match sink.send(records.clone()).await {
            Ok(d) if d.rejected.is_empty() => Ok(d),
            Ok(mut d) => {
                let rejected = std::mem::take(&mut d.rejected);
                keep_dead(dead_letter, name, records, rejected).await.map(|n| {
                    metrics.dead_lettered.get_or_create(label).inc_by(n);
                    d
                })
            }
            Err(SendError::Reject(why)) => {
                let all = (0..records.len()).map(|i| (i, why.clone())).collect();
                keep_dead(dead_letter, name, records, all).await.map(|n| {
                    metrics.dead_lettered.get_or_create(label).inc_by(n);
                    Delivered::default()
                })
            }
            Err(SendError::Retry(why)) => Err(why),
        };
        match outcome {
            Ok(d) => {
                metrics.delivered.get_or_create(label).inc_by(d.records);
                metrics.delivered_bytes.get_or_create(label).inc_by(d.bytes);
                metrics.duplicates.get_or_create(label).inc_by(d.duplicates);
                ctx.readiness.ready(readiness_key);
                set_up(views, name, true, None);
                return Delivery::Done;
            }
            Err(why) => {
                metrics.retries.get_or_create(label).inc();
                if let OnFull::Drop(after) = timing.on_full
                    && first_try.elapsed() >= after
                {
                    tracing::error!(sink = %name, records = records.len(), error = %why, "dropping a batch the sink did not take for {after:?} (--on-full drop)");
                    metrics.dropped.get_or_create(label).inc_by(records.len() as u64);
                    ctx.readiness.not_ready(readiness_key.to_string(), format!("sink {name} failing: {why}"));
                    set_up(views, name, false, Some(why));
                    return Delivery::Done;
                }
                let delay = backoff.next_delay();
                tracing::warn!(sink = %name, error = %why, retry_in = ?delay, "delivery failed; the batch is kept and sent again");
                ctx.readiness.not_ready(readiness_key.to_string(), format!("sink {name} failing: {why}"));
                set_up(views, name, false, Some(why));
                if ctx.shutdown.is_triggered() {
                    let deadline = *stop_deadline.get_or_insert_with(|| tokio::time::Instant::now() + ctx.grace);
                    if tokio::time::Instant::now() + delay >= deadline {
                        tracing::warn!(sink = %name, records = records.len(), "stopping with a batch undelivered; it is sent again at the next start");
                        return Delivery::GaveUp;
                    }
                    tokio::time::sleep(delay).await;
                } else {
                    // A stop during the wait still gets its grace for one more try.
                    tokio::select! {
                        _ = ctx.shutdown.triggered() => {}
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

/// Appends the `rejected` records (index in the batch, reason) to the dead-letter file, durably;
/// returns how many. A failure to keep them is a failed delivery: the batch is tried again.
async fn keep_dead(
    path: &std::path::Path,
    sink: &str,
    records: &Arc<[Record]>,
    rejected: Vec<(usize, String)>,
) -> Result<u64, String> {
    let (path, sink_name, records) = (path.to_path_buf(), sink.to_string(), records.clone());
    let n = rejected.len() as u64;
    let first_reason = rejected.first().map(|(_, r)| r.clone()).unwrap_or_default();
    let path_shown = path.display().to_string();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Write;
        #[derive(Serialize)]
        struct Dead<'a> {
            sink: &'a str,
            reason: &'a str,
            record: &'a Record,
        }
        let mut buf = Vec::new();
        for (i, reason) in &rejected {
            serde_json::to_writer(&mut buf, &Dead { sink: &sink_name, reason, record: &records[*i] })
                .expect("serializes");
            buf.push(b'\n');
        }
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        f.write_all(&buf)?;
        f.sync_data()
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r.map_err(|e| e.to_string()))
    .map_err(|e| {
        format!("the sink refused {n} records ({first_reason}) and they cannot be kept in {path_shown}: {e}")
    })?;
    tracing::warn!(sink = %sink, records = n, reason = %first_reason, dead_letter = %path_shown, "the sink refused records for good; they are kept in the dead-letter file");
    Ok(n)
}

fn count_events(metrics: &Metrics, label: &SinkLabel, e: crate::tail::Events) {
    metrics.opened.get_or_create(label).inc_by(e.opened);
    metrics.closed.get_or_create(label).inc_by(e.closed);
    metrics.truncations.get_or_create(label).inc_by(e.truncated);
    metrics.skipped_bytes.get_or_create(label).inc_by(e.skipped_bytes);
    metrics.bad_lines.get_or_create(label).inc_by(e.bad_lines);
    for (path, bytes) in e.lost {
        tracing::warn!(sink = %label.sink, path = %path, bytes, "bytes lost: the file was truncated or deleted before they were read");
        metrics.lost_bytes.get_or_create(&PathLabel { path }).inc_by(bytes);
    }
}

fn publish(views: &Views, name: &str, tailer: &Tailer) {
    let mut v = views.lock().unwrap_or_else(|p| p.into_inner());
    v.entry(name.to_string()).or_insert_with(|| SinkView { up: true, ..SinkView::default() }).files = tailer.views();
}

fn set_up(views: &Views, name: &str, up: bool, error: Option<String>) {
    let mut v = views.lock().unwrap_or_else(|p| p.into_inner());
    let e = v.entry(name.to_string()).or_default();
    e.up = up;
    if error.is_some() || up {
        e.last_error = error;
    }
}

fn save(path: &std::path::Path, sink: &str, files: Vec<Saved>) -> std::io::Result<()> {
    let c = Checkpoint { version: 1, sink: sink.to_string(), files };
    podkit_core::write_durably(path, &serde_json::to_vec(&c).expect("a checkpoint serializes"))
}
