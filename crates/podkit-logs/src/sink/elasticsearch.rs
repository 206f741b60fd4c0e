//! `elasticsearch+http(s)://host:port/INDEX`: the `_bulk` API.
//!
//! Each record is a `create` of a document whose `_id` is the record's id, with `@timestamp`
//! added (data streams require it, and `create` is the only operation they take). A record
//! sent twice is therefore stored once: its second `create` answers 409, counted as a
//! duplicate. The answer is read item by item: a document Elasticsearch refuses (a mapping
//! conflict, a malformed field: 400) goes to the dead-letter file; an item that failed for a
//! passing reason (429, 5xx) makes the whole batch go again, which the ids make harmless. Works
//! with OpenSearch, which speaks the same API.

use std::sync::Arc;

use serde::Deserialize;

use super::http::{HttpOptions, HttpTarget};
use super::{Delivered, SendError, Sink};
use crate::record::Record;

#[derive(Debug)]
pub(crate) struct ElasticsearchSink {
    target: HttpTarget,
    index: String,
}

impl ElasticsearchSink {
    pub(crate) fn open(opts: HttpOptions, index: String) -> Result<ElasticsearchSink, String> {
        Ok(ElasticsearchSink { target: HttpTarget::open(opts)?, index })
    }
}

/// The bulk body: an action line and a document line per record. The index is in the URL
/// (`/INDEX/_bulk`), so an action names only the id.
fn encode(records: &[Record]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(records.len() * 320);
    for r in records {
        buf.extend_from_slice(b"{\"create\":{\"_id\":\"");
        // The id is hex, a colon and digits: nothing in it needs escaping.
        buf.extend_from_slice(r.key.as_bytes());
        buf.push(b':');
        buf.extend_from_slice(r.offset.to_string().as_bytes());
        buf.extend_from_slice(b"\"}}\n{\"@timestamp\":");
        serde_json::to_writer(&mut buf, &r.ts).expect("a string serializes");
        buf.push(b',');
        // The record's own object without its opening brace: `{"@timestamp":…,"id":…}`.
        let start = buf.len();
        serde_json::to_writer(&mut buf, r).expect("a record serializes");
        buf.remove(start);
        buf.push(b'\n');
    }
    buf
}

#[derive(Deserialize)]
struct BulkAnswer {
    errors: bool,
    #[serde(default)]
    items: Vec<std::collections::HashMap<String, Item>>,
}

#[derive(Deserialize)]
struct Item {
    status: u16,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// What the items of one answer say.
#[derive(Debug, Default, PartialEq, Eq)]
struct Outcome {
    created: u64,
    duplicates: u64,
    /// (record index, why) of documents refused for good.
    rejected: Vec<(usize, String)>,
    /// The first passing failure, if any: the batch goes again.
    retry: Option<String>,
}

fn read_items(answer: &[u8], n: usize) -> Result<Outcome, String> {
    let a: BulkAnswer = serde_json::from_slice(answer).map_err(|e| format!("not a _bulk answer: {e}"))?;
    if !a.errors {
        return Ok(Outcome { created: n as u64, ..Outcome::default() });
    }
    if a.items.len() != n {
        return Err(format!("the answer has {} items for {n} documents", a.items.len()));
    }
    let mut o = Outcome::default();
    for (i, item) in a.items.into_iter().enumerate() {
        let Some(item) = item.into_values().next() else { return Err(format!("item {i} is empty")) };
        let why = || {
            item.error.as_ref().map_or_else(|| format!("status {}", item.status), |e| format!("{}: {e}", item.status))
        };
        match item.status {
            200..=299 => o.created += 1,
            409 => o.duplicates += 1,
            429 | 500..=599 => {
                o.retry.get_or_insert_with(why);
            }
            _ => o.rejected.push((i, why())),
        }
    }
    Ok(o)
}

impl Sink for ElasticsearchSink {
    async fn send(&mut self, records: Arc<[Record]>) -> Result<Delivered, SendError> {
        let body = self.target.body(&records, encode).await?;
        let mut url = self.target.opts.url.clone();
        url.path_segments_mut()
            .map_err(|()| SendError::Retry("the URL cannot have a path".into()))?
            .pop_if_empty()
            .extend([self.index.as_str(), "_bulk"]);
        // Only what is read back: a whole answer for 10,000 documents is megabytes.
        url.query_pairs_mut().append_pair("filter_path", "errors,items.*.status,items.*.error");
        let answer = self.target.post(url, &body, "application/x-ndjson").await?;
        if !answer.status.is_success() {
            return Err(answer.failure());
        }
        let o = read_items(&answer.body, records.len()).map_err(SendError::Retry)?;
        if let Some(why) = o.retry {
            return Err(SendError::Retry(format!("some documents were not taken ({why}); the batch goes again")));
        }
        Ok(Delivered { records: o.created, bytes: body.len, duplicates: o.duplicates, rejected: o.rejected })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Body;

    #[test]
    fn the_bulk_body_pairs_a_create_with_each_document() {
        let r = Record {
            key: Arc::from("00ab"),
            path: Arc::from("/a.log"),
            offset: 42,
            ts: "2026-12-02T10:00:00Z".into(),
            stream: None,
            body: Body::Line("hello \"world\"".into()),
            split: false,
            invalid_utf8: false,
            labels: Arc::new(Vec::new()),
        };
        let body = String::from_utf8(encode(&[r])).unwrap();
        let lines: Vec<serde_json::Value> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[0], serde_json::json!({"create": {"_id": "00ab:42"}}));
        assert_eq!(lines[1]["@timestamp"], "2026-12-02T10:00:00Z");
        assert_eq!(lines[1]["id"], "00ab:42");
        assert_eq!(lines[1]["line"], "hello \"world\"");
    }

    #[test]
    fn items_are_read_one_by_one() {
        let answer = br#"{"errors":true,"items":[
            {"create":{"status":201}},
            {"create":{"status":409,"error":{"type":"version_conflict_engine_exception"}}},
            {"create":{"status":400,"error":{"type":"mapper_parsing_exception"}}},
            {"create":{"status":201}}]}"#;
        let o = read_items(answer, 4).unwrap();
        assert_eq!((o.created, o.duplicates, o.retry), (2, 1, None));
        assert_eq!(o.rejected.len(), 1);
        assert_eq!(o.rejected[0].0, 2);
        assert!(o.rejected[0].1.contains("mapper_parsing_exception"));

        let busy = br#"{"errors":true,"items":[{"create":{"status":201}},{"create":{"status":429}}]}"#;
        assert!(read_items(busy, 2).unwrap().retry.is_some());
        assert_eq!(read_items(br#"{"errors":false}"#, 3).unwrap().created, 3);
        assert!(read_items(br#"{"errors":true,"items":[]}"#, 1).is_err());
        assert!(read_items(b"<html>", 1).is_err());
    }
}
