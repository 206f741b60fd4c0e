//! `loki+http(s)://host:port`: Loki's push API (`POST /loki/api/v1/push`, JSON).
//!
//! A record's stream (its Loki labels) is `filename` (the source path), `stream` (stdout or
//! stderr, from CRI and Docker files), the `--label`s and the pod, namespace and container of a
//! CRI path. A batch is one push, its records grouped by stream in file order. Loki keeps one
//! copy of an entry sent twice with the same stream, timestamp and line, which is what a batch
//! sent again after a restart is for formats that carry their timestamp (cri, docker, json
//! with a time field); raw lines are stamped when read, so a resent raw batch may show twice.
//! `tenant=ID` sets `X-Scope-OrgID`.

use std::sync::Arc;

use serde::Serialize;

use super::http::{HttpOptions, HttpTarget};
use super::{Delivered, SendError, Sink};
use crate::record::{Body, Record};

#[derive(Debug)]
pub(crate) struct LokiSink {
    target: HttpTarget,
}

impl LokiSink {
    pub(crate) fn open(opts: HttpOptions) -> Result<LokiSink, String> {
        Ok(LokiSink { target: HttpTarget::open(opts)? })
    }
}

#[derive(Serialize)]
struct Push<'a> {
    streams: Vec<Stream<'a>>,
}

#[derive(Serialize)]
struct Stream<'a> {
    #[serde(serialize_with = "labels")]
    stream: Key<'a>,
    values: Vec<[String; 2]>,
}

/// What makes a record's Loki stream.
#[derive(PartialEq, Eq)]
struct Key<'a> {
    path: &'a str,
    stream: Option<&'a str>,
    labels: &'a [(String, String)],
}

fn labels<S: serde::Serializer>(k: &Key<'_>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(None)?;
    m.serialize_entry("filename", k.path)?;
    if let Some(stream) = k.stream {
        m.serialize_entry("stream", stream)?;
    }
    for (i, (name, v)) in k.labels.iter().enumerate() {
        let name = label_name(name);
        let taken = name == "filename"
            || (name == "stream" && k.stream.is_some())
            || k.labels[..i].iter().any(|(n, _)| label_name(n) == name);
        if !taken {
            m.serialize_entry(&name, v)?;
        }
    }
    m.end()
}

/// A Prometheus-style label name (`[a-zA-Z_][a-zA-Z0-9_]*`), as Loki requires.
fn label_name(name: &str) -> String {
    let mut out: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// Nanoseconds since the epoch of an RFC 3339 time; the read time's format always parses.
fn nanos(ts: &str) -> String {
    match ts.parse::<jiff::Timestamp>() {
        Ok(t) => t.as_nanosecond().to_string(),
        // A time field a json line carried that is not RFC 3339: now, rather than refusing the
        // line.
        Err(_) => jiff::Timestamp::now().as_nanosecond().to_string(),
    }
}

pub(crate) fn encode(records: &[Record]) -> Vec<u8> {
    let mut streams: Vec<Stream<'_>> = Vec::new();
    for r in records {
        let key = Key { path: &r.path, stream: r.stream.as_deref(), labels: &r.labels };
        let line = match &r.body {
            Body::Line(l) => l.clone(),
            Body::Fields(f) => serde_json::to_string(f).expect("fields serialize"),
        };
        let value = [nanos(&r.ts), line];
        // A batch holds few streams (one per file), so a linear search is the fast one.
        match streams.iter_mut().rev().find(|s| s.stream == key) {
            Some(s) => s.values.push(value),
            None => streams.push(Stream { stream: key, values: vec![value] }),
        }
    }
    serde_json::to_vec(&Push { streams }).expect("a push serializes")
}

impl Sink for LokiSink {
    async fn send(&mut self, records: Arc<[Record]>) -> Result<Delivered, SendError> {
        let body = self.target.body(&records, encode).await?;
        let mut url = self.target.opts.url.clone();
        url.set_path("/loki/api/v1/push");
        let answer = self.target.post(url, &body, "application/json").await?;
        if !answer.status.is_success() {
            return Err(answer.failure());
        }
        Ok(Delivered { records: records.len() as u64, bytes: body.len, ..Delivered::default() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(path: &str, stream: Option<&str>, ts: &str, line: &str) -> Record {
        Record {
            key: Arc::from("k"),
            path: Arc::from(path),
            offset: 0,
            ts: ts.into(),
            stream: stream.map(str::to_string),
            body: Body::Line(line.into()),
            split: false,
            invalid_utf8: false,
            labels: Arc::new(vec![("pod-name".into(), "web-1".into()), ("filename".into(), "x".into())]),
        }
    }

    #[test]
    fn records_group_into_streams_with_loki_label_names_and_nanosecond_times() {
        let batch = [
            record("/a.log", Some("stdout"), "2026-12-02T10:00:00.123456789Z", "one"),
            record("/a.log", Some("stderr"), "2026-12-02T10:00:01+01:00", "two"),
            record("/a.log", Some("stdout"), "2026-12-02T10:00:02Z", "three"),
        ];
        let v: serde_json::Value = serde_json::from_slice(&encode(&batch)).unwrap();
        let streams = v["streams"].as_array().unwrap();
        assert_eq!(streams.len(), 2);
        assert_eq!(
            streams[0]["stream"],
            serde_json::json!({"filename": "/a.log", "stream": "stdout", "pod_name": "web-1"})
        );
        assert_eq!(streams[0]["values"][0], serde_json::json!(["1796205600123456789", "one"]));
        assert_eq!(streams[0]["values"][1][1], "three");
        assert_eq!(streams[1]["values"][0], serde_json::json!(["1796202001000000000", "two"]));
    }
}
