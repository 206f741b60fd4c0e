//! Following a set of files through every kind of rotation, and reading them into batches.
//!
//! A file is followed through its open descriptor, not its name: a rename (logrotate's
//! default) leaves the descriptor on the old file, which is read to its end, however long that
//! takes, and closed only once it has been idle for `--rotate-wait` with everything read
//! acknowledged. The path is looked at again on every scan: a different inode there is a new
//! file, read from its start. Truncation (copytruncate, `> file`) is seen as a size below the
//! read position or a changed head, and starts a new generation from offset 0. When the copy
//! that copytruncate made shows up under the glob, its head matches the old generation's, so
//! it is read from where the old generation was acknowledged, not again from the start.
//!
//! Reading and acknowledging are apart: a batch moves `read_to`; only [`Tailer::commit`],
//! called once the sink has acknowledged the batch, moves `offset`, and only `offset` is
//! checkpointed. A crash between the two sends the batch again, never skips it.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::identity::{FINGERPRINT_BYTES, FileId, Inode, fingerprint};
use crate::record::{self, Body, Format, Record};
use crate::watch::Watch;

/// What a longer line than `--max-record-size` becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Overlong {
    /// Pieces of at most the maximum size, each a record marked `"split": true`.
    Split,
    /// The first piece, marked `"split": true`; the rest of the line is skipped (and counted).
    Truncate,
}

#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) patterns: Vec<glob::Pattern>,
    pub(crate) format: Format,
    pub(crate) max_record: usize,
    pub(crate) overlong: Overlong,
    pub(crate) rotate_wait: Duration,
    pub(crate) labels: Vec<(String, String)>,
    /// Lines joined into records (`--multiline-start`), if set.
    pub(crate) multiline: Option<Multiline>,
}

/// How lines are joined into records: a line that matches `start` begins one, the lines after
/// it that do not match are added to it (joined with `\n`). A line that does not match with no
/// record open begins one too, so lines before a file's first match are joined among
/// themselves, and so are the lines after a record that was ended early (by the timeout or the
/// size limit). A record ends at the next start, at a line of another stream (CRI, Docker), at
/// an overlong line, once its file has been idle for `timeout` with nothing after it, at the
/// end of a rotated file, and before a line that would take it past `--max-record-size` (then
/// it is marked split).
#[derive(Debug, Clone)]
pub(crate) struct Multiline {
    pub(crate) start: regex::Regex,
    pub(crate) timeout: Duration,
}

/// Parses `--multiline-start`.
pub(crate) fn parse_multiline_start(s: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(s).map_err(|e| format!("not a regular expression: {e}"))
}

/// One file as the checkpoint keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Saved {
    pub(crate) id: FileId,
    pub(crate) path: PathBuf,
    /// Everything before this offset was acknowledged by the sink.
    pub(crate) offset: u64,
    /// The file's size when last looked at: what a file deleted while podkit was stopped had.
    pub(crate) size: u64,
    /// The generations before the last truncations (the newest last), and how far each was
    /// acknowledged: a copy of one (copytruncate's `.1`) continues from there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) previous: Vec<(FileId, u64)>,
}

/// How many earlier generations of a file are remembered: copytruncate can rotate several
/// times between two scans, and each copy must find its own generation.
const PREVIOUS_KEPT: usize = 16;

/// What happened to the files, for metrics and logs. Each field counts since the last call of
/// [`Tailer::take_events`].
#[derive(Debug, Default, Clone)]
pub(crate) struct Events {
    pub(crate) opened: u64,
    pub(crate) closed: u64,
    pub(crate) truncated: u64,
    /// Bytes that were never read and can no longer be: (path, bytes).
    pub(crate) lost: Vec<(String, u64)>,
    /// Bytes of overlong lines skipped under `--overlong truncate`.
    pub(crate) skipped_bytes: u64,
    pub(crate) bad_lines: u64,
}

/// One followed file.
#[derive(Debug)]
struct Tracked {
    id: FileId,
    key: Arc<str>,
    path: PathBuf,
    path_str: Arc<str>,
    file: File,
    offset: u64,
    read_to: u64,
    size: u64,
    /// When its path stopped naming it (renamed away or deleted).
    rotated_at: Option<Instant>,
    /// When it last grew or was read.
    active_at: Instant,
    /// Inside an overlong line being skipped (`--overlong truncate`).
    skipping: bool,
    previous: Vec<(FileId, u64)>,
    /// Per truncated generation, the bytes the truncation took before they were read, and
    /// when: lost unless a copy of that generation turns up under the glob within
    /// `--rotate-wait` (copytruncate's `.1`).
    pending_loss: Vec<(FileId, u64, Instant)>,
    /// When the last truncation was seen.
    truncated_at: Option<Instant>,
    labels: Arc<Vec<(String, String)>>,
}

/// A file as `/files` shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FileView {
    pub(crate) path: String,
    pub(crate) key: String,
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) generation: u32,
    pub(crate) offset: u64,
    pub(crate) size: u64,
    /// Bytes written to the file and not yet acknowledged by the sink.
    pub(crate) lag: u64,
    pub(crate) rotated: bool,
}

/// Records read but not yet acknowledged, and how far each file was read for them.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) records: Vec<Record>,
    pub(crate) bytes: usize,
    /// (file key, read position after the batch).
    ends: Vec<(Arc<str>, u64)>,
    /// Lines read, per file path (for metrics).
    pub(crate) lines: Vec<(Arc<str>, u64, u64)>,
}

impl Batch {
    pub(crate) fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

#[derive(Debug)]
pub(crate) struct Tailer {
    settings: Arc<Settings>,
    files: Vec<Tracked>,
    /// Checkpointed files not found again yet (only before the first scan after a start).
    restore: Vec<Saved>,
    events: Events,
    /// Where the next batch starts reading, so that every file gets its turn.
    next: usize,
    warned_empty: bool,
    watch: Watch,
    /// New files that may be copytruncate's copy of a followed file, not read yet.
    held: Vec<Held>,
    /// The read buffer, kept between batches (a chunk is at least 256 KiB).
    buf: Vec<u8>,
    /// The files most recently closed after being read to their end.
    closed: VecDeque<Saved>,
}

/// How many closed files are remembered (for a file found again after it was closed).
const CLOSED_KEPT: usize = 1024;

/// A new file whose head matches a followed file's: copytruncate copies first and truncates
/// after, so a scan in between sees a copy of lines that are also still in the original.
/// It is held, unread, until the original's truncation says where the copy takes over, or
/// until it has been idle for `--rotate-wait` with no truncation (then it is a file of its
/// own, read from its start).
#[derive(Debug)]
struct Held {
    path: PathBuf,
    file: File,
    id: FileId,
    size: u64,
    active_at: Instant,
}

impl Tailer {
    pub(crate) fn new(settings: Arc<Settings>, restore: Vec<Saved>) -> Tailer {
        let watch = Watch::new(&settings.patterns);
        Tailer {
            settings,
            files: Vec::new(),
            restore,
            events: Events::default(),
            next: 0,
            warned_empty: false,
            watch,
            held: Vec::new(),
            buf: Vec::new(),
            closed: VecDeque::new(),
        }
    }

    /// Notified when a new file was opened between scans: scan now.
    pub(crate) fn wake(&self) -> Arc<tokio::sync::Notify> {
        self.watch.wake()
    }

    pub(crate) fn take_events(&mut self) -> Events {
        std::mem::take(&mut self.events)
    }

    /// The checkpoint: every followed file and how far it was acknowledged.
    pub(crate) fn saved(&self) -> Vec<Saved> {
        let mut out: Vec<Saved> = self.files.iter().map(Tracked::saved).collect();
        // Files not found again since the start stay in the checkpoint until a scan settles them.
        out.extend(self.restore.iter().cloned());
        out
    }

    pub(crate) fn views(&self) -> Vec<FileView> {
        self.files
            .iter()
            .map(|t| FileView {
                path: t.path_str.to_string(),
                key: t.key.to_string(),
                dev: t.id.dev,
                ino: t.id.ino,
                generation: t.id.generation,
                offset: t.offset,
                size: t.size,
                lag: t.size.saturating_sub(t.offset),
                rotated: t.rotated_at.is_some(),
            })
            .collect()
    }

    fn labels_for(&self, path: &str) -> Arc<Vec<(String, String)>> {
        let mut labels = self.settings.labels.clone();
        if self.settings.format == Format::Cri {
            for (k, v) in record::cri_path_labels(path) {
                if !labels.iter().any(|(l, _)| *l == k) {
                    labels.push((k, v));
                }
            }
        }
        Arc::new(labels)
    }

    fn track(&mut self, path: PathBuf, file: File, id: FileId, offset: u64, previous: Vec<(FileId, u64)>) {
        let path_str: Arc<str> = Arc::from(path.to_string_lossy().as_ref());
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        tracing::info!(path = %path_str, offset, "following file");
        self.events.opened += 1;
        let labels = self.labels_for(&path_str);
        self.files.push(Tracked {
            key: Arc::from(id.key().as_str()),
            id,
            path,
            path_str,
            file,
            offset,
            read_to: offset,
            size,
            rotated_at: None,
            active_at: Instant::now(),
            skipping: false,
            previous,
            pending_loss: Vec::new(),
            truncated_at: None,
            labels,
        });
    }

    /// Looks at the globs and at every followed file: new files, rotations, truncations, and
    /// files that are done. Call it only with no batch in flight.
    pub(crate) fn scan(&mut self) {
        let now = Instant::now();
        self.watch.ensure();
        // Opened by the watcher the moment they appeared: some may be gone from the glob by now.
        let early = self.watch.take_opened();
        let mut seen: HashMap<Inode, PathBuf> = HashMap::new();
        for pattern in &self.settings.patterns {
            let Ok(paths) = glob::glob_with(pattern.as_str(), glob::MatchOptions::new()) else { continue };
            for path in paths.flatten() {
                if let Ok(meta) = std::fs::metadata(&path)
                    && meta.is_file()
                {
                    seen.entry(Inode::of(&meta)).or_insert(path);
                }
            }
        }
        if seen.is_empty() && self.files.is_empty() && !self.warned_empty {
            let globs: Vec<&str> = self.settings.patterns.iter().map(|p| p.as_str()).collect();
            tracing::warn!(?globs, "no file matches the paths yet; looking again on every scan");
            self.warned_empty = true;
        }

        // Losses from earlier truncations that no copy made up for.
        for t in &mut self.files {
            let wait = self.settings.rotate_wait;
            let (lost, pending) = t.pending_loss.drain(..).partition(|(_, _, at)| now.duration_since(*at) >= wait);
            t.pending_loss = pending;
            for (_, bytes, _) in lost {
                self.events.lost.push((t.path_str.to_string(), bytes));
            }
        }

        // Followed files: renamed, rotated away, truncated, grown.
        for t in &mut self.files {
            match seen.remove(&t.id.inode()) {
                Some(path) => {
                    if path != t.path {
                        t.path_str = Arc::from(path.to_string_lossy().as_ref());
                        t.path = path;
                    }
                    t.rotated_at = None;
                }
                None if t.rotated_at.is_none() => {
                    tracing::debug!(path = %t.path_str, "the path no longer names this file: reading it to its end");
                    t.rotated_at = Some(now);
                }
                None => {}
            }
            check_rewritten(t, now, &mut self.events);
        }

        // Files done: rotated away, read and acknowledged to the end, idle for rotate_wait.
        let wait = self.settings.rotate_wait;
        let before = self.files.len();
        let closed = &mut self.closed;
        self.files.retain(|t| {
            let done = t.rotated_at.is_some()
                && t.offset == t.size
                && t.read_to == t.size
                && now.duration_since(t.active_at) >= wait
                && t.rotated_at.is_some_and(|r| now.duration_since(r) >= wait);
            if done {
                tracing::info!(path = %t.path_str, offset = t.offset, "closed a rotated file, read to its end");
                if closed.len() == CLOSED_KEPT {
                    closed.pop_front();
                }
                closed.push_back(t.saved());
            }
            !done
        });
        self.events.closed += (before - self.files.len()) as u64;

        // Held files: a truncation may have settled what they are.
        for h in std::mem::take(&mut self.held) {
            self.settle(h, now);
        }

        // New files (and, after a start, checkpointed files found again): those the watcher
        // opened, then those the glob found.
        let mut found: Vec<(Inode, PathBuf)> = seen.into_iter().collect();
        found.sort_by(|a, b| a.1.cmp(&b.1));
        let opened = found.into_iter().filter_map(|(inode, path)| {
            let file = File::open(&path).ok()?;
            Some((path, file, Some(inode)))
        });
        let candidates: Vec<(PathBuf, File, Option<Inode>)> =
            early.into_iter().map(|(p, f)| (p, f, None)).chain(opened).collect();
        for (path, file, inode) in candidates {
            let Ok(id) = FileId::read(&file) else { continue };
            if inode.is_some_and(|i| i != id.inode()) {
                continue; // replaced between the glob and the open: the next scan sees it
            }
            if self.files.iter().any(|t| t.id.inode() == id.inode())
                || self.held.iter().any(|h| h.id.inode() == id.inode())
            {
                continue; // already followed (the watcher and the glob both found it)
            }
            self.add(path, file, id);
        }

        // Checkpointed files that no glob matches any more: rotated (renamed out of the glob)
        // or deleted while podkit was stopped. A renamed one is still in its directory.
        for saved in std::mem::take(&mut self.restore) {
            match find_in_dir(&saved) {
                Some((path, file)) => {
                    self.resume(path, file, saved);
                    if let Some(t) = self.files.last_mut() {
                        t.rotated_at = Some(now);
                    }
                }
                None => {
                    let unread = saved.size.saturating_sub(saved.offset);
                    if unread > 0 {
                        tracing::warn!(path = %saved.path.display(), bytes = unread, "a file was deleted before it was read to its end");
                        self.events.lost.push((saved.path.to_string_lossy().into_owned(), unread));
                    }
                }
            }
        }
    }

    /// Starts following a file seen for the first time since the start.
    fn add(&mut self, path: PathBuf, file: File, id: FileId) {
        if let Some(i) = self.restore.iter().position(|s| s.id.inode() == id.inode()) {
            let saved = self.restore.swap_remove(i);
            self.resume(path, file, saved);
            return;
        }
        // A file closed once it was read to its end, found again (a late watcher event for
        // its rename, or a glob that matches its new name): it goes on from where it ended.
        if let Some(i) = self.closed.iter().position(|s| s.id.inode() == id.inode()) {
            let saved = self.closed.remove(i).expect("found");
            self.resume(path, file, saved);
            return;
        }
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        self.settle(Held { path, file, id, size, active_at: Instant::now() }, Instant::now());
    }

    /// Follows `h` as the copy of a truncated file, holds it while it may still become one, or
    /// follows it as a file of its own.
    fn settle(&mut self, mut h: Held, now: Instant) {
        let size = h.file.metadata().map(|m| m.len()).unwrap_or(h.size);
        if size != h.size {
            h.size = size;
            h.active_at = now;
        }
        // The copy of a generation that was truncated: it continues where that generation was
        // acknowledged.
        let copy_of = self.files.iter_mut().find_map(|t| {
            let i = t.previous.iter().position(|(old, _)| old.fp_len > 0 && same_head_as(&h.file, old))?;
            let (old, offset) = t.previous.remove(i);
            t.pending_loss.retain(|(id, _, _)| *id != old);
            Some((old, offset))
        });
        if let Some((old, offset)) = copy_of {
            tracing::info!(path = %h.path.display(), offset, "a copy of a truncated file: reading it from where the original was acknowledged");
            let id = FileId { dev: h.id.dev, ino: h.id.ino, born: h.id.born, ..old };
            self.track_as(h.path, h.file, id, old.key(), offset);
            return;
        }
        let wait = self.settings.rotate_wait;
        let idle = now.duration_since(h.active_at) >= wait;
        if !idle && self.may_be_copy(&h.file, size, now) {
            self.held.push(h);
            return;
        }
        // Its identity was taken when it was found; it may have grown since.
        let mut id = h.id;
        let _ = id.grow(&h.file, size);
        self.track(h.path, h.file, id, 0, Vec::new());
    }

    /// Whether a new file's content so far is the head of a followed file (copytruncate
    /// copied it and has not truncated yet), or could be the start of a copy of a file that
    /// was just truncated.
    fn may_be_copy(&self, file: &File, size: u64, now: Instant) -> bool {
        let len = size.min(FINGERPRINT_BYTES);
        let Ok((got, fp)) = fingerprint(file, len) else { return false };
        self.files.iter().any(|t| {
            let just_truncated = t.truncated_at.is_some_and(|at| now.duration_since(at) < self.settings.rotate_wait);
            let short_of_previous = t.previous.iter().any(|(old, _)| u64::from(got) < u64::from(old.fp_len));
            let same_as_current = t.size >= u64::from(got)
                && t.rotated_at.is_none()
                && fingerprint(&t.file, u64::from(got)).is_ok_and(|(n, f)| n == got && f == fp);
            same_as_current || (just_truncated && short_of_previous)
        })
    }

    /// Follows a checkpointed file again: from its acknowledged offset if its content is the
    /// same, from 0 as a new generation if it was truncated or rewritten meanwhile.
    fn resume(&mut self, path: PathBuf, file: File, saved: Saved) {
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        if size >= saved.offset && saved.id.same_head(&file).unwrap_or(false) {
            self.track(path, file, saved.id, saved.offset, saved.previous);
        } else {
            let unread = saved.size.saturating_sub(saved.offset);
            if unread > 0 {
                self.events.lost.push((saved.path.to_string_lossy().into_owned(), unread));
            }
            self.events.truncated += 1;
            let id = saved.id.next_generation(&file).unwrap_or(saved.id);
            let mut previous = saved.previous;
            remember(&mut previous, (saved.id, saved.offset));
            self.track(path, file, id, 0, previous);
        }
    }

    fn track_as(&mut self, path: PathBuf, file: File, id: FileId, key: String, offset: u64) {
        self.track(path, file, id, offset, Vec::new());
        if let Some(t) = self.files.last_mut() {
            t.key = Arc::from(key.as_str());
        }
    }

    /// Reads up to `max_bytes` / `max_records` of complete records past each file's read
    /// position, files in turn. Moves only `read_to`.
    pub(crate) fn read_batch(&mut self, max_bytes: usize, max_records: usize) -> Batch {
        let mut batch = Batch::default();
        let n = self.files.len();
        let now_ts = humantime::format_rfc3339_nanos(SystemTime::now()).to_string();
        for i in 0..n {
            if batch.bytes >= max_bytes || batch.records.len() >= max_records {
                break;
            }
            let idx = (self.next + i) % n;
            let settings = self.settings.clone();
            let t = &mut self.files[idx];
            // A file truncated and written past the read position since the last look would
            // otherwise be read on from there, its new lines taken for the old content's.
            check_rewritten(t, Instant::now(), &mut self.events);
            let before = (batch.records.len(), t.read_to, batch.bytes);
            read_file(t, &settings, &mut self.buf, &mut batch, max_bytes, max_records, &now_ts, &mut self.events);
            if t.read_to != before.1 && !t.id.same_head(&t.file).unwrap_or(true) {
                // Rewritten while it was read: what was read may be new content at old offsets.
                // Drop it; the next look starts the new generation (and a copy of the old one,
                // if it turns up, goes on from the acknowledged offset).
                batch.records.truncate(before.0);
                (t.read_to, batch.bytes) = (before.1, before.2);
                continue;
            }
            if t.read_to != before.1 {
                let lines = (batch.records.len() - before.0) as u64;
                batch.ends.push((t.key.clone(), t.read_to));
                batch.lines.push((t.path_str.clone(), lines, t.read_to - before.1));
                t.active_at = Instant::now();
                // The fingerprint covers what was read, so that a copy of this content
                // (copytruncate) is recognised even when no scan saw the file grow.
                let _ = t.id.grow(&t.file, t.read_to);
            }
        }
        if n > 0 {
            self.next = (self.next + 1) % n;
        }
        batch
    }

    /// The sink acknowledged `batch`: its files' offsets move to where it was read.
    pub(crate) fn commit(&mut self, batch: &Batch) {
        for (key, end) in &batch.ends {
            if let Some(t) = self.files.iter_mut().find(|t| t.key == *key) {
                t.offset = *end;
                t.size = t.size.max(*end);
            }
        }
    }

    /// The sink failed for good: read the batch again next time (after a restart, from the
    /// checkpoint, it would be read again anyway).
    pub(crate) fn rewind(&mut self) {
        for t in &mut self.files {
            t.read_to = t.offset;
        }
    }
}

/// Looks at a followed file's size and head: truncated or rewritten in place, it starts a new
/// generation from offset 0 (its old generation kept as `previous`, for a copy of it to go on
/// from); grown, its fingerprint grows too. Call it only with no batch of it in flight.
fn check_rewritten(t: &mut Tracked, now: Instant, events: &mut Events) {
    let Ok(meta) = t.file.metadata() else { return };
    let size = meta.len();
    let rewritten = size < t.read_to || !t.id.same_head(&t.file).unwrap_or(true);
    if rewritten {
        let unread = t.size.saturating_sub(t.offset);
        tracing::info!(path = %t.path_str, offset = t.offset, size, "file truncated: reading it again from its start");
        if unread > 0 {
            t.pending_loss.push((t.id, unread, now));
        }
        t.truncated_at = Some(now);
        events.truncated += 1;
        remember(&mut t.previous, (t.id, t.offset));
        if let Ok(next) = t.id.next_generation(&t.file) {
            t.id = next;
        }
        t.key = Arc::from(t.id.key().as_str());
        t.offset = 0;
        t.read_to = 0;
        t.skipping = false;
        t.active_at = now;
    } else {
        if size != t.size {
            t.active_at = now;
        }
        let _ = t.id.grow(&t.file, size);
    }
    t.size = size;
}

/// Keeps an earlier generation, forgetting the oldest beyond [`PREVIOUS_KEPT`].
fn remember(previous: &mut Vec<(FileId, u64)>, generation: (FileId, u64)) {
    if previous.len() == PREVIOUS_KEPT {
        previous.remove(0);
    }
    previous.push(generation);
}

fn same_head_as(file: &File, id: &FileId) -> bool {
    id.same_head(file).unwrap_or(false)
}

/// A checkpointed file renamed within its directory while podkit was stopped.
fn find_in_dir(saved: &Saved) -> Option<(PathBuf, File)> {
    let dir = saved.path.parent()?;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if meta.is_file() && Inode::of(&meta) == saved.id.inode() {
            let file = File::open(&path).ok()?;
            return Some((path, file));
        }
    }
    None
}

/// How much is read from a file at once.
fn chunk_size(max_record: usize) -> usize {
    (max_record + 64 * 1024).max(256 * 1024)
}

/// A CRI or Docker line being joined from its partial pieces, or, under `--multiline-start`,
/// a record being joined from lines.
struct Joining {
    offset: u64,
    /// Where its last piece or line ends in the file (past the newline).
    end: u64,
    text: String,
    ts: Option<String>,
    stream: Option<String>,
    invalid_utf8: bool,
}

impl Joining {
    /// A raw line (or a piece of one) at `offset..end`.
    fn raw(line: &[u8], offset: u64, end: u64) -> Joining {
        let (text, invalid_utf8) = utf8(line);
        Joining { offset, end, text: text.into_owned(), ts: None, stream: None, invalid_utf8 }
    }

    fn into_record(self, t: &Tracked, now_ts: &str, split: bool) -> Record {
        t.record(self.offset, self.ts, now_ts, self.stream, Body::Line(self.text), split, self.invalid_utf8)
    }
}

impl Tracked {
    fn saved(&self) -> Saved {
        Saved {
            id: self.id,
            path: self.path.clone(),
            offset: self.offset,
            size: self.size,
            previous: self.previous.clone(),
        }
    }

    /// A record of this file; `ts` is the read time unless the format gave one.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        offset: u64,
        ts: Option<String>,
        now_ts: &str,
        stream: Option<String>,
        body: Body,
        split: bool,
        invalid_utf8: bool,
    ) -> Record {
        Record {
            key: self.key.clone(),
            path: self.path_str.clone(),
            offset,
            ts: ts.unwrap_or_else(|| now_ts.to_string()),
            stream,
            body,
            split,
            invalid_utf8,
            labels: self.labels.clone(),
        }
    }
}

/// Reads complete records of one file into `batch`.
#[allow(clippy::too_many_arguments)]
fn read_file(
    t: &mut Tracked,
    s: &Settings,
    buf: &mut Vec<u8>,
    batch: &mut Batch,
    max_bytes: usize,
    max_records: usize,
    now_ts: &str,
    events: &mut Events,
) {
    let chunk = chunk_size(s.max_record);
    buf.resize(chunk, 0);
    // A rotated file that has been idle for rotate_wait will never get the newline of its
    // last line: that line is a record as it is.
    let now = Instant::now();
    let final_line = t.rotated_at.is_some_and(|r| now.duration_since(r) >= s.rotate_wait)
        && now.duration_since(t.active_at) >= s.rotate_wait;
    // A record being joined from lines that ends the file is complete once the file has been
    // idle for --multiline-timeout.
    let idle = s.multiline.as_ref().is_some_and(|m| now.duration_since(t.active_at) >= m.timeout);
    'chunks: while batch.bytes < max_bytes && batch.records.len() < max_records {
        let got = match read_full(&t.file, buf, t.read_to) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(path = %t.path_str, error = %e, "reading failed; trying again on the next turn");
                break;
            }
        };
        let data = &buf[..got];
        let base = t.read_to;
        let mut pos = 0usize;
        let mut join: Option<Joining> = None;
        // The record being joined from lines (--multiline-start).
        let mut multi: Option<Joining> = None;
        // Where the records emitted so far end: read_to moves here, never into a line, a
        // join or a multiline record that is not complete.
        let mut consumed = 0usize;
        while pos < data.len() {
            if batch.bytes >= max_bytes || batch.records.len() >= max_records {
                break;
            }
            let Some(nl) = memchr::memchr(b'\n', &data[pos..]) else {
                let rest = data.len() - pos;
                if t.skipping {
                    events.skipped_bytes += rest as u64;
                    consumed = data.len();
                    pos = data.len();
                    break;
                }
                if rest >= s.max_record && join.is_none() {
                    // A line longer than the maximum, with no newline in sight.
                    let offset = base + pos as u64;
                    let piece = Joining::raw(&data[pos..pos + s.max_record], offset, offset + s.max_record as u64);
                    line_done(t, s, batch, &mut multi, piece, true, now_ts, events);
                    pos += s.max_record;
                    consumed = pos;
                    if s.overlong == Overlong::Truncate {
                        t.skipping = true;
                    }
                    continue;
                }
                if got < chunk && final_line && join.is_none() {
                    // The last line of a rotated file, which will never get its newline.
                    let last = Joining::raw(&data[pos..], base + pos as u64, base + data.len() as u64);
                    if let Some(c) = line_done(t, s, batch, &mut multi, last, false, now_ts, events) {
                        consumed = c;
                    }
                    pos = data.len();
                }
                break;
            };
            let line_end = pos + nl;
            let next = line_end + 1;
            if t.skipping {
                events.skipped_bytes += nl as u64;
                t.skipping = false;
                pos = next;
                consumed = next;
                continue;
            }
            let mut line = &data[pos..line_end];
            let offset = base + pos as u64;
            if line.len() > s.max_record {
                // Overlong, but complete in this chunk. A join it interrupts ends here, as a
                // split record, so that records stay in file order.
                if let Some(mut j) = join.take() {
                    j.end = offset;
                    line_done(t, s, batch, &mut multi, j, true, now_ts, events);
                }
                let mut start = 0;
                while start < line.len() {
                    let end = (start + s.max_record).min(line.len());
                    let piece = Joining::raw(&line[start..end], offset + start as u64, offset + end as u64);
                    line_done(t, s, batch, &mut multi, piece, true, now_ts, events);
                    if s.overlong == Overlong::Truncate {
                        events.skipped_bytes += (line.len() - end) as u64;
                        break;
                    }
                    start = end;
                }
                pos = next;
                consumed = next;
                continue;
            }
            if line.ends_with(b"\r") && s.format == Format::Raw {
                line = &line[..line.len() - 1];
            }
            let end = base + next as u64;
            match s.format {
                Format::Raw | Format::Json => {
                    let whole = Joining::raw(line, offset, end);
                    if let Some(c) = line_done(t, s, batch, &mut multi, whole, false, now_ts, events) {
                        consumed = c;
                    }
                }
                Format::Cri | Format::Docker => {
                    let (text, invalid) = utf8(line);
                    let (decoded, ok) = record::decode(s.format, &text);
                    if ok.is_err() {
                        events.bad_lines += 1;
                    }
                    let Body::Line(piece) = decoded.body else { unreachable!("CRI and Docker decode to lines") };
                    let j = join.get_or_insert_with(|| Joining {
                        offset,
                        end,
                        text: String::new(),
                        ts: decoded.ts.clone(),
                        stream: decoded.stream.clone(),
                        invalid_utf8: false,
                    });
                    j.text.push_str(&piece);
                    j.invalid_utf8 |= invalid;
                    let too_long = j.text.len() >= s.max_record;
                    if !decoded.partial || too_long {
                        let mut j = join.take().expect("just set");
                        j.end = end;
                        let split = too_long && decoded.partial;
                        if let Some(c) = line_done(t, s, batch, &mut multi, j, split, now_ts, events) {
                            consumed = c;
                        }
                    }
                }
            }
            pos = next;
        }
        if let Some(mut j) = join.take_if(|_| final_line && got < chunk) {
            // A rotated file that ends inside a join (its last piece was partial): it will
            // never get its full line, so what there is is the record, marked split.
            j.end = base + pos as u64;
            if let Some(c) = line_done(t, s, batch, &mut multi, j, true, now_ts, events) {
                consumed = c;
            }
        }
        if got < chunk
            && pos == data.len()
            && join.is_none()
            && (final_line || idle)
            && let Some(m) = multi.take()
        {
            // The record being joined from lines ends the file, and nothing more came for
            // --multiline-timeout (or the file was rotated away): it is complete.
            consumed = emit(t, s, batch, m, false, now_ts, events);
        }
        if consumed == 0 && got == chunk {
            if let Some(m) = multi.take() {
                // A multiline record that takes a whole chunk of the file (many short lines):
                // what there is becomes a record rather than blocking the file, marked split
                // unless the line after it is seen to start the next one.
                let next_starts = join.is_none()
                    && pos < data.len()
                    && matches!(s.format, Format::Raw | Format::Json)
                    && s.multiline.as_ref().is_some_and(|ml| ml.start.is_match(&utf8(&data[pos..]).0));
                consumed = emit(t, s, batch, m, !next_starts, now_ts, events);
            } else if let Some(mut j) = join.take() {
                // A join of pieces longer than a whole chunk (many tiny pieces): what there is
                // becomes a split record rather than blocking the file.
                j.end = base + pos as u64;
                consumed = emit(t, s, batch, j, true, now_ts, events);
            }
        }
        if consumed == 0 {
            break 'chunks;
        }
        t.read_to += consumed as u64;
        if got < chunk {
            break;
        }
    }
}

/// A whole line at `line.offset..line.end` (a raw or JSON line, a CRI or Docker line joined
/// from its pieces, or, `split`, a piece of an overlong line): a record, or under
/// `--multiline-start` the start or the continuation of the record being joined in `multi`
/// (see [`Multiline`]). A split piece is a record of its own and ends the record being joined.
/// Returns where the records it emitted end in the chunk read at `t.read_to`, if it emitted any.
#[allow(clippy::too_many_arguments)]
fn line_done(
    t: &Tracked,
    s: &Settings,
    batch: &mut Batch,
    multi: &mut Option<Joining>,
    line: Joining,
    split: bool,
    now_ts: &str,
    events: &mut Events,
) -> Option<usize> {
    let Some(m) = &s.multiline else {
        return Some(emit(t, s, batch, line, split, now_ts, events));
    };
    let mut consumed = None;
    if let Some(open) = multi.take() {
        let starts = m.start.is_match(&line.text);
        let same_stream = open.stream == line.stream;
        if !split && !starts && same_stream && open.text.len() + 1 + line.text.len() <= s.max_record {
            let open = multi.insert(open);
            open.text.push('\n');
            open.text.push_str(&line.text);
            open.invalid_utf8 |= line.invalid_utf8;
            open.end = line.end;
            return None;
        }
        // The record ends here; cut short (split) if this line would have continued it.
        consumed = Some(emit(t, s, batch, open, !starts && same_stream, now_ts, events));
    }
    if split {
        consumed = Some(emit(t, s, batch, line, true, now_ts, events));
    } else {
        *multi = Some(line);
    }
    consumed
}

/// Adds a record read from `j.offset..j.end` to `batch`: a JSON line (or lines joined under
/// `--multiline-start`) is decoded unless it is a split piece. Returns where it ends in the
/// chunk read at `t.read_to`.
fn emit(
    t: &Tracked,
    s: &Settings,
    batch: &mut Batch,
    j: Joining,
    split: bool,
    now_ts: &str,
    events: &mut Events,
) -> usize {
    batch.bytes += (j.end - j.offset) as usize;
    let end = (j.end - t.read_to) as usize;
    let record = if s.format == Format::Json && !split {
        let (d, ok) = record::decode(Format::Json, &j.text);
        if ok.is_err() {
            events.bad_lines += 1;
        }
        t.record(j.offset, d.ts, now_ts, d.stream, d.body, false, j.invalid_utf8)
    } else {
        j.into_record(t, now_ts, split)
    };
    batch.records.push(record);
    end
}

fn utf8(bytes: &[u8]) -> (std::borrow::Cow<'_, str>, bool) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (std::borrow::Cow::Borrowed(s), false),
        Err(_) => (String::from_utf8_lossy(bytes), true),
    }
}

/// Fills `buf` from `offset` as far as the file goes.
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Whether `path` is a directory podkit can write its checkpoints into.
pub(crate) fn check_state_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("--state-dir {}: cannot create it: {e}", dir.display()))?;
    let probe = dir.join(format!(".podkit-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| format!("--state-dir {}: not writable: {e}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

#[cfg(test)]
mod tests;

/// Reads `data` as a followed file of `format` would be read: the first `cut` bytes, then the
/// rest appended, then the file rotated away, in batches of at most 7 records. Panics if a
/// read breaks what every read keeps: offsets only go up and stay inside the file, no record
/// is longer than the maximum (plus a join's last piece), reading always makes progress, and
/// once rotated the file is read to its very end. It is read three times: line by line, then
/// with lines joined under `--multiline-start '^\S'`, first held back until the file is
/// rotated (a long timeout), then ended at every end of the data (no timeout). For the fuzz
/// targets and their regression tests.
pub(crate) fn check_reading(path: &Path, format: Format, data: &[u8], cut: usize, max_record: usize) {
    static START: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(r"^\S").expect("a valid regex"));
    let multiline = |timeout| Some(Multiline { start: START.clone(), timeout });
    for multiline in [None, multiline(Duration::from_secs(3600)), multiline(Duration::ZERO)] {
        check_reading_with(path, format, data, cut, max_record, multiline);
    }
}

fn check_reading_with(
    path: &Path,
    format: Format,
    data: &[u8],
    cut: usize,
    max_record: usize,
    multiline: Option<Multiline>,
) {
    use std::io::Write;
    let cut = cut.min(data.len());
    std::fs::write(path, &data[..cut]).expect("write the input");
    let file = File::open(path).expect("open the input");
    let id = FileId::read(&file).expect("identity");
    let joined = multiline.is_some();
    let settings = Settings {
        patterns: Vec::new(),
        format,
        max_record,
        overlong: Overlong::Split,
        rotate_wait: Duration::ZERO,
        labels: Vec::new(),
        multiline,
    };
    let past = Instant::now().checked_sub(Duration::from_secs(1)).unwrap_or_else(Instant::now);
    let mut t = Tracked {
        key: Arc::from(id.key().as_str()),
        id,
        path: path.to_path_buf(),
        path_str: Arc::from("fuzz"),
        file,
        offset: 0,
        read_to: 0,
        size: cut as u64,
        rotated_at: None,
        active_at: Instant::now(),
        skipping: false,
        previous: Vec::new(),
        pending_loss: Vec::new(),
        truncated_at: None,
        labels: Arc::new(Vec::new()),
    };
    let (mut buf, mut events) = (Vec::new(), Events::default());
    let mut last_offset: Option<u64> = None;
    let mut read = |t: &mut Tracked, len: u64| {
        for _ in 0..=len + 2 {
            let mut batch = Batch::default();
            let before = t.read_to;
            read_file(t, &settings, &mut buf, &mut batch, usize::MAX, 7, "now", &mut events);
            assert!(t.read_to >= before && t.read_to <= len, "read_to {} of {len}", t.read_to);
            for r in &batch.records {
                assert!(r.offset < len && r.offset >= before, "offset {} outside {before}..{len}", r.offset);
                assert!(last_offset.is_none_or(|l| r.offset > l), "offset {} after {last_offset:?}", r.offset);
                last_offset = Some(r.offset);
                if let Body::Line(l) = &r.body {
                    // A join stops once it reaches the maximum, so its last piece may pass it
                    // (by at most one line); U+FFFD for an invalid byte takes three.
                    assert!(l.len() <= 3 * 2 * max_record, "record of {} bytes, max {max_record}", l.len());
                    if joined && format == Format::Raw && l.contains('\n') {
                        // Raw lines joined: the record keeps to the maximum, and every line
                        // after its first is one that does not start a record.
                        assert!(l.len() <= max_record, "joined record of {} bytes, max {max_record}", l.len());
                        for rest in l.split('\n').skip(1) {
                            assert!(!rest.starts_with(|c: char| !c.is_whitespace()), "{rest:?} joined in {l:?}");
                        }
                    }
                }
            }
            if batch.records.is_empty() {
                return;
            }
            assert!(t.read_to > before, "records without progress");
        }
        panic!("reading never settled");
    };
    read(&mut t, cut as u64);
    std::fs::OpenOptions::new().append(true).open(path).and_then(|mut f| f.write_all(&data[cut..])).expect("append");
    read(&mut t, data.len() as u64);
    // Rotated away and idle: everything is read, the last line without its newline too.
    t.rotated_at = Some(past);
    t.active_at = past;
    read(&mut t, data.len() as u64);
    assert_eq!(t.read_to, data.len() as u64, "a rotated file is read to its end");
}
