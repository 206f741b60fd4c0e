//! Where records go. Each `--sink` gets its own pipeline (its own reading of the files, its own
//! checkpoint, its own retries), so a dead sink holds up nobody else and needs no buffer
//! beyond the one batch it is being sent.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use crate::record::Record;

mod elasticsearch;
mod file;
mod http;
mod loki;
mod redis;
mod stdout;
mod syslog;

pub(crate) use elasticsearch::ElasticsearchSink;
pub(crate) use file::FileSink;
pub(crate) use http::{HttpOptions, HttpSink};
pub(crate) use loki::LokiSink;
pub(crate) use redis::{RedisOptions, RedisSink};
pub(crate) use stdout::StdoutSink;
pub(crate) use syslog::{SyslogOptions, SyslogSink};

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
    /// `http(s)://…`: NDJSON POSTs.
    Http(HttpOptions),
    /// `loki+http(s)://host:port`
    Loki(HttpOptions),
    /// `elasticsearch+http(s)://host:port/INDEX`
    Elasticsearch {
        http: HttpOptions,
        index: String,
    },
    /// `syslog+tcp://host:port`, `syslog+tls://host:port`
    Syslog(SyslogOptions),
    /// `redis://host:port/DB?stream=NAME`
    Redis(RedisOptions),
}

impl SinkUrl {
    /// The sink's name: its metrics label, readiness key and checkpoint file name.
    pub(crate) fn name(&self) -> String {
        match self {
            SinkUrl::Stdout => "stdout".to_string(),
            SinkUrl::File { path, .. } => format!("file:{}", path.display()),
            SinkUrl::Http(o) => o.display(""),
            SinkUrl::Loki(o) => o.display("loki+"),
            SinkUrl::Elasticsearch { http, index } => {
                let mut u = http.url.clone();
                u.set_query(None);
                u.set_path(index);
                format!("elasticsearch+{u}")
            }
            SinkUrl::Syslog(o) => {
                let kind = if o.tls.is_some() { "tls" } else { "tcp" };
                format!("syslog+{kind}://{}:{}", o.host, o.port)
            }
            SinkUrl::Redis(o) => format!("redis://{}?stream={}", o.display, o.stream),
        }
    }

    /// The checkpoint file's name in `--state-dir`: safe as a file name, distinct per sink.
    pub(crate) fn checkpoint_name(&self) -> String {
        format!("{}.json", self.file_stem())
    }

    /// The dead-letter file's name in `--state-dir`: NDJSON of the records the sink refused.
    pub(crate) fn dead_letter_name(&self) -> String {
        format!("{}.dead-letter.ndjson", self.file_stem())
    }

    fn file_stem(&self) -> String {
        let name = self.name();
        let safe: String =
            name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
        format!("{safe}-{:08x}", xxhash_rust::xxh3::xxh3_64(name.as_bytes()) as u32)
    }
}

pub(crate) const DEFAULT_MAX_SIZE: u64 = 100 * 1024 * 1024;
pub(crate) const DEFAULT_KEEP: u32 = 5;

/// Parses a `--sink` value.
pub(crate) fn parse_sink(s: &str) -> Result<SinkUrl, String> {
    if s == "stdout" || s == "-" {
        return Ok(SinkUrl::Stdout);
    }
    let url = url::Url::parse(s).map_err(|e| format!("{s}: not a URL ({e}); expected stdout or a sink URL"))?;
    // `loki+https://…` is an https URL underneath: the url crate keeps a scheme it does not
    // know as opaque, so the inner URL is parsed anew.
    let inner = |prefix: &str| url::Url::parse(&s[prefix.len()..]).map_err(|e| format!("{s}: {e}"));
    match url.scheme() {
        "http" | "https" => Ok(SinkUrl::Http(HttpOptions::parse(s, url.clone(), &[], true)?.0)),
        "loki+http" | "loki+https" => {
            let (mut o, extra) = HttpOptions::parse(s, inner("loki+")?, &["tenant"], false)?;
            if !matches!(o.url.path(), "" | "/") {
                return Err(format!("{s}: give Loki's address only (the push path is added)"));
            }
            if let Some(t) = extra.get("tenant") {
                o.headers.push(("X-Scope-OrgID".into(), t.clone()));
            }
            Ok(SinkUrl::Loki(o))
        }
        "elasticsearch+http" | "elasticsearch+https" => {
            let (o, _) = HttpOptions::parse(s, inner("elasticsearch+")?, &["api_key_file"], false)?;
            let mut segments: Vec<&str> =
                o.url.path_segments().into_iter().flatten().filter(|p| !p.is_empty()).collect();
            let index = match segments.len() {
                1 => segments.remove(0).to_string(),
                _ => return Err(format!("{s}: give the index as the path: elasticsearch+http://HOST:PORT/INDEX")),
            };
            if index.starts_with(['_', '-', '+'])
                || index.chars().any(|c| c.is_ascii_uppercase() || "\\/*?\"<>| ,#".contains(c))
            {
                return Err(format!("{s}: {index} is not a valid index name (lowercase, not starting with _ - +)"));
            }
            let mut http = o;
            http.url.set_path("/");
            Ok(SinkUrl::Elasticsearch { http, index })
        }
        "syslog+tcp" => Ok(SinkUrl::Syslog(SyslogOptions::parse(s, &inner("syslog+")?, false)?)),
        "syslog+tls" => Ok(SinkUrl::Syslog(SyslogOptions::parse(s, &inner("syslog+")?, true)?)),
        "redis" => Ok(SinkUrl::Redis(RedisOptions::parse(s, &url)?)),
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
        other => Err(format!(
            "{s}: unknown sink scheme {other} (known: stdout, file, http(s), loki+http(s), elasticsearch+http(s), syslog+tcp, syslog+tls, redis)"
        )),
    }
}

/// A sink URL's `timeout=` option, for every network sink.
fn parse_timeout(given: &str, v: &str) -> Result<std::time::Duration, String> {
    podkit_core::Duration::parse_positive(v).map(|d| d.get()).map_err(|e| format!("{given}: timeout={v}: {e}"))
}

/// Why a batch was not delivered.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// Worth trying again (the sink is down, full, or slow).
    #[error("{0}")]
    Retry(String),
    /// The sink refused the whole batch for good (it says the records are malformed for it):
    /// sending it again would fail again, so it goes to the dead-letter file.
    #[error("{0}")]
    Reject(String),
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
#[derive(Debug, Default, Clone)]
pub(crate) struct Delivered {
    pub(crate) records: u64,
    pub(crate) bytes: u64,
    /// Records it already had (sent again after a crash), dropped.
    pub(crate) duplicates: u64,
    /// Records it refused for good, by index in the batch, with the reason: they go to the
    /// dead-letter file.
    pub(crate) rejected: Vec<(usize, String)>,
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
        let SinkUrl::Loki(l) = parse_sink("loki+https://u@logs:3100?tenant=team-a&gzip=true").unwrap() else {
            panic!("a loki URL")
        };
        assert_eq!(l.url.as_str(), "https://logs:3100/");
        assert_eq!(l.headers, [("X-Scope-OrgID".to_string(), "team-a".to_string())]);
        assert!(parse_sink("loki+http://logs:3100/loki/api/v1/push").unwrap_err().contains("address only"));
        let es = parse_sink("elasticsearch+http://es:9200/app-logs").unwrap();
        assert_eq!(es.name(), "elasticsearch+http://es:9200/app-logs");
        assert!(parse_sink("elasticsearch+http://es:9200").unwrap_err().contains("index"));
        assert!(parse_sink("elasticsearch+http://es:9200/App").unwrap_err().contains("not a valid index"));
        assert_eq!(parse_sink("syslog+tls://rs:6514").unwrap().name(), "syslog+tls://rs:6514");
        assert_eq!(parse_sink("redis://:pw@r:6379/1?stream=logs").unwrap().name(), "redis://r:6379/1?stream=logs");
        assert_eq!(parse_sink("http://u:pw@h:8080/in?token=t").unwrap().name(), "http://h:8080/in");
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
