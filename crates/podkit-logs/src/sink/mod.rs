//! Where records go. Each `--sink` gets its own pipeline (its own reading of the files, its own
//! checkpoint, its own retries), so a dead sink holds up nobody else and needs no buffer
//! beyond the one batch it is being sent.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use crate::record::Record;

mod file;
mod stdout;

pub(crate) use file::FileSink;
pub(crate) use stdout::StdoutSink;

/// A `--sink` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SinkUrl {
    Stdout,
    /// `file:///PATH[?max_size=BYTES&keep=N]`
    File {
        path: PathBuf,
        max_size: u64,
        keep: u32,
    },
}

impl SinkUrl {
    /// The sink's name: its metrics label, readiness key and checkpoint file name.
    pub(crate) fn name(&self) -> String {
        match self {
            SinkUrl::Stdout => "stdout".to_string(),
            SinkUrl::File { path, .. } => format!("file:{}", path.display()),
        }
    }

    /// The checkpoint file's name in `--state-dir`: safe as a file name, distinct per sink.
    pub(crate) fn checkpoint_name(&self) -> String {
        let name = self.name();
        let safe: String =
            name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
        format!("{safe}-{:08x}.json", xxhash_rust::xxh3::xxh3_64(name.as_bytes()) as u32)
    }
}

pub(crate) const DEFAULT_MAX_SIZE: u64 = 100 * 1024 * 1024;
pub(crate) const DEFAULT_KEEP: u32 = 5;

/// Parses a `--sink` value.
pub(crate) fn parse_sink(s: &str) -> Result<SinkUrl, String> {
    if s == "stdout" || s == "-" {
        return Ok(SinkUrl::Stdout);
    }
    let url = url::Url::parse(s).map_err(|e| format!("{s}: not a URL ({e}); expected stdout or file:///PATH"))?;
    match url.scheme() {
        "file" => {
            if url.host_str().is_some_and(|h| !h.is_empty()) {
                return Err(format!("{s}: a file URL has no host: file:///PATH"));
            }
            let path = PathBuf::from(url.path());
            if url.path().ends_with('/') || url.path().is_empty() {
                return Err(format!("{s}: the file sink needs a file path, not a directory"));
            }
            let (mut max_size, mut keep) = (DEFAULT_MAX_SIZE, DEFAULT_KEEP);
            for (k, v) in url.query_pairs() {
                match &*k {
                    "max_size" => {
                        max_size = v
                            .parse()
                            .ok()
                            .filter(|&n| n > 0)
                            .ok_or_else(|| format!("{s}: max_size={v}: expected a positive number of bytes"))?
                    }
                    "keep" => keep = v.parse().map_err(|_| format!("{s}: keep={v}: expected a number of files"))?,
                    other => return Err(format!("{s}: unknown option {other} (known: max_size, keep)")),
                }
            }
            Ok(SinkUrl::File { path, max_size, keep })
        }
        other => Err(format!("{s}: unknown sink scheme {other}: (known: stdout, file)")),
    }
}

/// Why a batch was not delivered.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// Worth trying again (the sink is down, full, or slow).
    #[error("{0}")]
    Retry(String),
}

/// A sink. `send` returns once the sink holds the whole batch durably (or fails, and then
/// none of it counts as delivered: the batch is sent again).
pub(crate) trait Sink: Send + 'static {
    /// Delivers `records` in order; returns how many the sink dropped as already delivered
    /// (a batch sent again after a restart). The records are shared, not copied, so a retry
    /// costs no copy of the batch.
    fn send(&mut self, records: Arc<[Record]>) -> impl Future<Output = Result<Delivered, SendError>> + Send;
}

/// What a sink did with a batch.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Delivered {
    pub(crate) records: u64,
    pub(crate) bytes: u64,
    /// Records it already had (sent again after a crash), dropped.
    pub(crate) duplicates: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_urls_parse_or_say_why_not() {
        assert_eq!(parse_sink("stdout").unwrap(), SinkUrl::Stdout);
        assert_eq!(
            parse_sink("file:///var/log/out.ndjson?max_size=1000&keep=2").unwrap(),
            SinkUrl::File { path: "/var/log/out.ndjson".into(), max_size: 1000, keep: 2 }
        );
        assert!(parse_sink("kafka://x:1").unwrap_err().contains("unknown sink scheme kafka"));
        assert!(parse_sink("file:///tmp/").unwrap_err().contains("not a directory"));
        assert!(parse_sink("file:///tmp/x?max_size=0").unwrap_err().contains("max_size"));
        assert!(parse_sink("file:///tmp/x?colour=red").unwrap_err().contains("unknown option colour"));
    }

    #[test]
    fn checkpoint_names_are_distinct_file_names() {
        let a = parse_sink("file:///a/b.log").unwrap().checkpoint_name();
        let b = parse_sink("file:///a_b.log").unwrap().checkpoint_name();
        assert_ne!(a, b);
        assert!(!a.contains('/'));
    }
}
