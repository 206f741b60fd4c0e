//! Records: what one log line (or one joined CRI line) becomes, and how the input formats are
//! read.

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};

/// How the lines of the input files are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Format {
    /// A line is a record.
    Raw,
    /// Kubernetes' CRI log files (`/var/log/pods/*/*/*.log`): `TIMESTAMP STREAM P|F TEXT`,
    /// partial (`P`) lines joined to the next full (`F`) one.
    Cri,
    /// Docker's json-file driver: `{"log":"…\n","stream":"stdout","time":"…"}`.
    Docker,
    /// Each line is a JSON object, kept as the record's fields.
    Json,
}

/// One record, ready for a sink.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    /// The source file's identity key ([`crate::identity::FileId::key`]).
    pub(crate) key: Arc<str>,
    pub(crate) path: Arc<str>,
    /// Where the record starts in the file; with `key` it is the record's stable id.
    pub(crate) offset: u64,
    /// The timestamp the format gave, or the time the line was read (RFC 3339).
    pub(crate) ts: String,
    pub(crate) stream: Option<String>,
    pub(crate) body: Body,
    /// The line was longer than `--max-record-size` and this is a piece of it.
    pub(crate) split: bool,
    /// The line was not valid UTF-8; invalid bytes are replaced by U+FFFD.
    pub(crate) invalid_utf8: bool,
    pub(crate) labels: Arc<Vec<(String, String)>>,
}

#[derive(Debug, Clone)]
pub(crate) enum Body {
    Line(String),
    Fields(Map<String, Value>),
}

impl Record {
    /// Whether the record itself has a field named `key` (a label of that name is then left
    /// out: the record's own fields come first).
    fn has_field(&self, key: &str) -> bool {
        match key {
            "id" | "ts" | "path" | "offset" => true,
            "stream" => self.stream.is_some(),
            "line" => matches!(self.body, Body::Line(_)),
            "fields" => matches!(self.body, Body::Fields(_)),
            "split" => self.split,
            "invalid_utf8" => self.invalid_utf8,
            _ => false,
        }
    }
}

/// The record as one JSON object, written straight from its fields (no intermediate value:
/// this runs for every line shipped).
impl Serialize for Record {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        /// `KEY:OFFSET`: the same line of the same file always has the same id, so a sink can
        /// drop what a restart sends again.
        struct Id<'a>(&'a Record);
        impl Serialize for Id<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(&format_args!("{}:{}", self.0.key, self.0.offset))
            }
        }
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", &Id(self))?;
        m.serialize_entry("ts", &self.ts)?;
        m.serialize_entry("path", &*self.path)?;
        m.serialize_entry("offset", &self.offset)?;
        if let Some(stream) = &self.stream {
            m.serialize_entry("stream", stream)?;
        }
        match &self.body {
            Body::Line(l) => m.serialize_entry("line", l)?,
            Body::Fields(f) => m.serialize_entry("fields", f)?,
        }
        if self.split {
            m.serialize_entry("split", &true)?;
        }
        if self.invalid_utf8 {
            m.serialize_entry("invalid_utf8", &true)?;
        }
        for (i, (k, v)) in self.labels.iter().enumerate() {
            // The first of several labels with one name wins, as the record's own fields do.
            if !self.has_field(k) && !self.labels[..i].iter().any(|(earlier, _)| earlier == k) {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

/// Appends `record` to `buf` as one NDJSON line.
pub(crate) fn write_ndjson(buf: &mut Vec<u8>, record: &Record) {
    serde_json::to_writer(&mut *buf, record).expect("a record serializes");
    buf.push(b'\n');
}

/// A line decoded by its format: its timestamp and stream if the format has them, its text,
/// and (CRI) whether it continues on the next line.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) ts: Option<String>,
    pub(crate) stream: Option<String>,
    pub(crate) body: Body,
    pub(crate) partial: bool,
}

/// Decodes one line (without its newline) by `format`. A line the format cannot read is kept
/// as raw text rather than dropped, and `Err` says why (it is counted).
pub(crate) fn decode(format: Format, line: &str) -> (Decoded, Result<(), &'static str>) {
    let raw = |why| (Decoded { ts: None, stream: None, body: Body::Line(line.to_string()), partial: false }, Err(why));
    match format {
        Format::Raw => (Decoded { ts: None, stream: None, body: Body::Line(line.to_string()), partial: false }, Ok(())),
        Format::Cri => {
            let mut parts = line.splitn(4, ' ');
            let (Some(ts), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
                return raw("not a CRI log line");
            };
            let text = parts.next().unwrap_or("");
            let partial = match tag.split(':').next() {
                Some("P") => true,
                Some("F") => false,
                _ => return raw("not a CRI log line"),
            };
            let decoded = Decoded {
                ts: Some(ts.to_string()),
                stream: Some(stream.to_string()),
                body: Body::Line(text.to_string()),
                partial,
            };
            (decoded, Ok(()))
        }
        Format::Docker => {
            #[derive(serde::Deserialize)]
            struct DockerLine {
                log: String,
                stream: Option<String>,
                time: Option<String>,
            }
            match serde_json::from_str::<DockerLine>(line) {
                Ok(d) => {
                    // json-file splits long lines at 16 KiB: a piece without its newline
                    // continues in the next entry.
                    let partial = !d.log.ends_with('\n');
                    let text = d.log.strip_suffix('\n').unwrap_or(&d.log);
                    let text = text.strip_suffix('\r').unwrap_or(text).to_string();
                    (Decoded { ts: d.time, stream: d.stream, body: Body::Line(text), partial }, Ok(()))
                }
                Err(_) => raw("not a Docker json-file line"),
            }
        }
        Format::Json => match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(m)) => (Decoded { ts: None, stream: None, body: Body::Fields(m), partial: false }, Ok(())),
            _ => raw("not a JSON object"),
        },
    }
}

/// Labels a CRI path carries: `/var/log/pods/NAMESPACE_POD_UID/CONTAINER/N.log`.
pub(crate) fn cri_path_labels(path: &str) -> Vec<(String, String)> {
    let parts: Vec<&str> = path.rsplit('/').take(3).collect();
    let [_file, container, pod_dir] = parts[..] else { return Vec::new() };
    let mut pod = pod_dir.splitn(3, '_');
    match (pod.next(), pod.next(), pod.next()) {
        (Some(ns), Some(name), Some(_uid)) if !ns.is_empty() && !name.is_empty() => vec![
            ("namespace".to_string(), ns.to_string()),
            ("pod".to_string(), name.to_string()),
            ("container".to_string(), container.to_string()),
        ],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_lines_decode_with_their_partial_flag() {
        let (d, ok) = decode(Format::Cri, "2016-10-06T00:17:09.669794202Z stdout P part one");
        assert!(ok.is_ok() && d.partial);
        assert_eq!(d.stream.as_deref(), Some("stdout"));
        assert!(matches!(d.body, Body::Line(ref l) if l == "part one"));
        let (d, _) = decode(Format::Cri, "2016-10-06T00:17:09.669794202Z stderr F");
        assert!(!d.partial && matches!(d.body, Body::Line(ref l) if l.is_empty()));
        let (d, ok) = decode(Format::Cri, "garbage");
        assert!(ok.is_err() && matches!(d.body, Body::Line(ref l) if l == "garbage"));
    }

    #[test]
    fn docker_lines_lose_their_newline_and_keep_their_time() {
        let (d, ok) = decode(Format::Docker, r#"{"log":"hello\n","stream":"stderr","time":"2024-01-01T00:00:00Z"}"#);
        assert!(ok.is_ok() && !d.partial);
        assert_eq!(d.ts.as_deref(), Some("2024-01-01T00:00:00Z"));
        assert!(matches!(d.body, Body::Line(ref l) if l == "hello"));
        let (d, _) = decode(Format::Docker, r#"{"log":"no newline","stream":"stdout"}"#);
        assert!(d.partial);
    }

    #[test]
    fn json_lines_keep_their_fields_and_others_stay_text() {
        let (d, ok) = decode(Format::Json, r#"{"level":"info","n":1}"#);
        assert!(ok.is_ok());
        assert!(matches!(d.body, Body::Fields(ref m) if m["n"] == 1));
        let (_, ok) = decode(Format::Json, "[1,2]");
        assert!(ok.is_err());
    }

    #[test]
    fn cri_paths_name_the_pod() {
        let l = cri_path_labels("/var/log/pods/default_web-0_0f3c/nginx/0.log");
        assert_eq!(
            l,
            [("namespace", "default"), ("pod", "web-0"), ("container", "nginx")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert!(cri_path_labels("/tmp/x.log").is_empty());
    }
}
