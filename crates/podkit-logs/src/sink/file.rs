//! The file sink: NDJSON appended to a file, fsynced per batch, rotated by size, and free of
//! duplicates across crashes.
//!
//! Beside the output, `PATH.marks` records for each source file the highest record offset
//! written, and how long the output was then. It is written (durably) after each batch. After
//! a crash, the output may hold one batch more than the marks say, and its last line may be
//! torn: at open, the torn line is cut off and the records past the marked length are read
//! back into the marks. A batch podkit sends again after the crash is then recognised record
//! by record (by source file and offset) and dropped, so the output never holds a line twice.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Delivered, SendError, Sink};
use crate::record::{self, Record};

#[derive(Debug, Default, Serialize, Deserialize)]
struct Marks {
    /// The output's length when these marks were written.
    len: u64,
    /// Per source file key: the offset of the last record written.
    keys: HashMap<String, u64>,
}

#[derive(Debug)]
struct Output {
    path: PathBuf,
    marks_path: PathBuf,
    file: File,
    len: u64,
    max_size: u64,
    keep: u32,
    marks: Marks,
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct FileSink {
    /// Taken by the blocking task that writes a batch, and put back after.
    out: Option<Output>,
}

impl FileSink {
    /// Opens (creating it and its directory if needed) the output, and recovers from a crash.
    pub(crate) fn open(path: &Path, max_size: u64, keep: u32) -> std::io::Result<FileSink> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut marks_path = path.as_os_str().to_owned();
        marks_path.push(".marks");
        let marks_path = PathBuf::from(marks_path);
        let mut marks: Marks = match std::fs::read(&marks_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", marks_path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Marks::default(),
            Err(e) => return Err(e),
        };
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(path)?;
        let len = file.metadata()?.len();
        // What was written after the marks: at most the batch in flight at a crash. (A
        // rotation after the marks leaves a shorter file: then all of it is.)
        let from = if marks.len <= len { marks.len } else { 0 };
        file.seek(SeekFrom::Start(from))?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail)?;
        let complete = tail.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if complete < tail.len() {
            tracing::warn!(path = %path.display(), bytes = tail.len() - complete, "cutting off a torn last line (the write a crash interrupted)");
            file.set_len(from + complete as u64)?;
            file.sync_all()?;
        }
        for line in tail[..complete].split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let Some((key, offset)) = id_of(line) else { continue };
            let m = marks.keys.entry(key).or_insert(offset);
            *m = (*m).max(offset);
        }
        let len = from + complete as u64;
        Ok(FileSink { out: Some(Output { path: path.to_path_buf(), marks_path, file, len, max_size, keep, marks }) })
    }
}

/// The source file key and offset of an output line's `"id": "KEY:OFFSET"`.
fn id_of(line: &[u8]) -> Option<(String, u64)> {
    #[derive(Deserialize)]
    struct Id {
        id: String,
    }
    let id: Id = serde_json::from_slice(line).ok()?;
    let (key, offset) = id.id.rsplit_once(':')?;
    Some((key.to_string(), offset.parse().ok()?))
}

impl Output {
    fn write(&mut self, records: &[Record]) -> std::io::Result<Delivered> {
        let mut buf = Vec::with_capacity(records.len() * 256);
        let mut delivered = Delivered::default();
        for r in records {
            if self.marks.keys.get(&*r.key).is_some_and(|&m| r.offset <= m) {
                delivered.duplicates += 1;
                continue;
            }
            record::write_ndjson(&mut buf, r);
            delivered.records += 1;
        }
        if buf.is_empty() {
            return Ok(delivered);
        }
        if self.len > 0 && self.len + buf.len() as u64 > self.max_size {
            self.rotate()?;
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()?;
        self.len += buf.len() as u64;
        for r in records {
            match self.marks.keys.get_mut(&*r.key) {
                Some(m) => *m = (*m).max(r.offset),
                None => {
                    self.marks.keys.insert(r.key.to_string(), r.offset);
                }
            }
        }
        self.marks.len = self.len;
        let marks = serde_json::to_vec(&self.marks).expect("marks serialize");
        podkit_core::write_durably(&self.marks_path, &marks)?;
        delivered.bytes = buf.len() as u64;
        Ok(delivered)
    }

    /// `PATH` becomes `PATH.1`, `PATH.1` becomes `PATH.2`, … up to `keep` old files.
    fn rotate(&mut self) -> std::io::Result<()> {
        let numbered = |n: u32| {
            let mut p = self.path.as_os_str().to_owned();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            for n in (1..self.keep).rev() {
                match std::fs::rename(numbered(n), numbered(n + 1)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        self.file = OpenOptions::new().read(true).append(true).create(true).open(&self.path)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        self.len = 0;
        tracing::info!(path = %self.path.display(), "rotated the output file");
        Ok(())
    }
}

impl Sink for FileSink {
    async fn send(&mut self, records: Arc<[Record]>) -> Result<Delivered, SendError> {
        let mut out = self.out.take().expect("one batch at a time");
        let (out, result) = tokio::task::spawn_blocking(move || {
            let r = out.write(&records);
            (out, r)
        })
        .await
        .map_err(|e| SendError::Retry(format!("file sink: {e}")))?;
        let path = out.path.display().to_string();
        self.out = Some(out);
        result.map_err(|e| SendError::Retry(format!("{path}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Body;

    fn record(key: &str, offset: u64) -> Record {
        Record {
            key: Arc::from(key),
            path: Arc::from("/x.log"),
            offset,
            ts: "t".into(),
            stream: None,
            body: Body::Line(format!("line at {offset}")),
            split: false,
            invalid_utf8: false,
            labels: Arc::new(Vec::new()),
        }
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path).unwrap().lines().map(str::to_string).collect()
    }

    #[tokio::test]
    async fn a_batch_sent_again_after_a_crash_is_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.ndjson");
        let mut sink = FileSink::open(&path, u64::MAX, 1).unwrap();
        sink.send(vec![record("a", 0), record("a", 10)].into()).await.unwrap();
        // A crash after the next batch was written but before the marks were: the output holds
        // it, the marks do not, and its last line is torn.
        let marks_before = std::fs::read(dir.path().join("out.ndjson.marks")).unwrap();
        sink.send(vec![record("a", 20), record("b", 0)].into()).await.unwrap();
        std::fs::write(dir.path().join("out.ndjson.marks"), marks_before).unwrap();
        OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"id\":\"a:3").unwrap();
        drop(sink);

        let mut sink = FileSink::open(&path, u64::MAX, 1).unwrap();
        let d = sink.send(vec![record("a", 20), record("b", 0), record("b", 7)].into()).await.unwrap();
        assert_eq!((d.records, d.duplicates), (1, 2));
        let ids: Vec<String> =
            lines(&path).iter().map(|l| id_of(l.as_bytes()).unwrap()).map(|(k, o)| format!("{k}:{o}")).collect();
        assert_eq!(ids, ["a:0", "a:10", "a:20", "b:0", "b:7"]);
    }

    #[tokio::test]
    async fn the_output_rotates_by_size_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.ndjson");
        let mut sink = FileSink::open(&path, 200, 2).unwrap();
        for i in 0..10 {
            sink.send(vec![record("a", i * 10), record("a", i * 10 + 5)].into()).await.unwrap();
        }
        let mut all = Vec::new();
        for p in [dir.path().join("out.ndjson.2"), dir.path().join("out.ndjson.1"), path.clone()] {
            assert!(std::fs::metadata(&p).unwrap().len() <= 400, "{} is bounded", p.display());
            all.extend(lines(&p));
        }
        assert!(!dir.path().join("out.ndjson.3").exists());
        // The newest records are all there, in order.
        let offsets: Vec<u64> = all.iter().map(|l| id_of(l.as_bytes()).unwrap().1).collect();
        assert_eq!(offsets.last(), Some(&95));
        assert!(offsets.windows(2).all(|w| w[0] < w[1]));
    }
}
