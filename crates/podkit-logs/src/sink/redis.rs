//! `redis://[:PASSWORD@]host:port[/DB]?stream=NAME`: each record an entry of a Redis stream
//! (`XADD`), with the fields `id`, `ts`, `path`, `offset`, `stream` (CRI and Docker), `line`
//! (or `fields`, the JSON text of a json record), `split`/`invalid_utf8` when set, and the
//! labels.
//!
//! A batch is added by one Lua script, which Redis runs atomically, and which keeps for each
//! source file the offset of the last record it added (in the hash `marks=`, by default
//! `podkit:marks:STREAM`). A record at or below its file's mark is one sent again (after a
//! crash, or a reply lost with the connection) and is not added twice. So the stream holds
//! every line once. `maxlen=N` trims the stream to about N entries (`MAXLEN ~`). Use a
//! single Redis (or a primary): the stream and the marks hash must live on one node.

use std::sync::Arc;
use std::time::Duration;

use super::{Delivered, SendError, Sink};
use crate::record::{Body, Record};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RedisOptions {
    /// The server's URL without podkit's options (it may hold a password: never shown).
    pub(crate) url: String,
    /// `host:port/db`, what metrics and logs show.
    pub(crate) display: String,
    pub(crate) stream: String,
    pub(crate) marks: String,
    pub(crate) maxlen: Option<u64>,
    pub(crate) timeout: Duration,
}

impl RedisOptions {
    pub(crate) fn parse(given: &str, url: &url::Url) -> Result<RedisOptions, String> {
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| format!("{given}: no host"))?;
        let port = url.port().unwrap_or(6379);
        let db = url.path().trim_matches('/');
        if !db.is_empty() && db.parse::<u32>().is_err() {
            return Err(format!("{given}: the path is the database number (redis://host:port/0)"));
        }
        let (mut stream, mut marks, mut maxlen, mut timeout) = (None, None, None, DEFAULT_TIMEOUT);
        for (k, v) in url.query_pairs() {
            match &*k {
                "stream" if !v.is_empty() => stream = Some(v.into_owned()),
                "marks" if !v.is_empty() => marks = Some(v.into_owned()),
                "maxlen" => {
                    maxlen = Some(
                        v.parse()
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| format!("{given}: maxlen={v}: a positive number"))?,
                    )
                }
                "timeout" => timeout = super::parse_timeout(given, &v)?,
                other => {
                    return Err(format!("{given}: unknown option {other} (known: stream, marks, maxlen, timeout)"));
                }
            }
        }
        let stream = stream.ok_or_else(|| format!("{given}: name the stream: redis://HOST:PORT/DB?stream=NAME"))?;
        let mut server = url.clone();
        server.set_query(None);
        let db = if db.is_empty() { "0" } else { db };
        Ok(RedisOptions {
            url: server.to_string(),
            display: format!("{host}:{port}/{db}"),
            marks: marks.unwrap_or_else(|| format!("podkit:marks:{stream}")),
            stream,
            maxlen,
            timeout,
        })
    }
}

/// KEYS: the stream, the marks hash. ARGV: MAXLEN (0: none), then per record its file key,
/// its offset, its field count and the fields. Returns {added, duplicates, error or ''}.
const ADD: &str = r"
local stream, marks = KEYS[1], KEYS[2]
local maxlen = tonumber(ARGV[1])
local seen = {}
local i, added, dups, failed = 2, 0, 0, ''
while i <= #ARGV do
  local key, offset, n = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local fields = {unpack(ARGV, i + 3, i + 2 + 2 * n)}
  i = i + 3 + 2 * n
  local mark = seen[key]
  if mark == nil then
    mark = tonumber(redis.call('HGET', marks, key)) or -1
  end
  if offset <= mark then
    dups = dups + 1
  else
    local r
    if maxlen > 0 then
      r = redis.pcall('XADD', stream, 'MAXLEN', '~', maxlen, '*', unpack(fields))
    else
      r = redis.pcall('XADD', stream, '*', unpack(fields))
    end
    if type(r) == 'table' and r.err then
      -- What was added stays, and its marks are written below: the batch sent again adds
      -- only the rest.
      failed = r.err
      break
    end
    mark = offset
    added = added + 1
  end
  seen[key] = mark
end
for key, mark in pairs(seen) do
  if mark >= 0 then
    redis.call('HSET', marks, key, mark)
  end
end
return {added, dups, failed}
";

pub(crate) struct RedisSink {
    opts: RedisOptions,
    client: redis::Client,
    conn: Option<redis::aio::MultiplexedConnection>,
    script: redis::Script,
}

impl std::fmt::Debug for RedisSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSink").field("server", &self.opts.display).field("stream", &self.opts.stream).finish()
    }
}

impl RedisSink {
    /// Checks the URL; connects at the first batch (a Redis that is down at start is retried,
    /// like one that goes down later).
    pub(crate) fn open(opts: RedisOptions) -> Result<RedisSink, String> {
        let client = redis::Client::open(opts.url.as_str()).map_err(|e| format!("redis://{}: {e}", opts.display))?;
        Ok(RedisSink { opts, client, conn: None, script: redis::Script::new(ADD) })
    }

    /// Adds the batch; returns (added, duplicates, bytes of fields sent).
    async fn add(&mut self, records: &[Record]) -> Result<(u64, u64, u64), String> {
        let conn = match &mut self.conn {
            Some(c) => c,
            None => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.opts.timeout.min(Duration::from_secs(10))))
                    .set_response_timeout(Some(self.opts.timeout));
                let c = self
                    .client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(|e| format!("connecting: {e}"))?;
                self.conn.insert(c)
            }
        };
        let mut inv = self.script.key(&self.opts.stream);
        inv.key(&self.opts.marks).arg(self.opts.maxlen.unwrap_or(0));
        let mut fields: Vec<(&str, std::borrow::Cow<'_, str>)> = Vec::with_capacity(16);
        let mut bytes = 0;
        for r in records {
            fields.clear();
            fields.push(("id", format!("{}:{}", r.key, r.offset).into()));
            fields.push(("ts", r.ts.as_str().into()));
            fields.push(("path", (*r.path).into()));
            fields.push(("offset", r.offset.to_string().into()));
            if let Some(s) = &r.stream {
                fields.push(("stream", s.as_str().into()));
            }
            match &r.body {
                Body::Line(l) => fields.push(("line", l.as_str().into())),
                Body::Fields(f) => fields.push(("fields", serde_json::to_string(f).expect("fields serialize").into())),
            }
            if r.split {
                fields.push(("split", "true".into()));
            }
            if r.invalid_utf8 {
                fields.push(("invalid_utf8", "true".into()));
            }
            let own = fields.len();
            for (i, (k, v)) in r.labels.iter().enumerate() {
                // The record's own fields come first, and the first label of a name wins.
                if !fields[..own].iter().any(|(n, _)| n == k) && !r.labels[..i].iter().any(|(e, _)| e == k) {
                    fields.push((k.as_str(), v.as_str().into()));
                }
            }
            inv.arg(&*r.key).arg(r.offset).arg(fields.len());
            for (k, v) in &fields {
                bytes += (k.len() + v.len()) as u64;
                inv.arg(*k).arg(&**v);
            }
        }
        let r: redis::RedisResult<(u64, u64, String)> = inv.invoke_async(conn).await;
        let (added, dups, failed) = r.map_err(|e| {
            // The next batch gets a fresh connection rather than one in an unknown state.
            self.conn = None;
            e.to_string()
        })?;
        if !failed.is_empty() {
            return Err(format!("XADD failed after {added} records: {failed}"));
        }
        Ok((added, dups, bytes))
    }
}

impl Sink for RedisSink {
    async fn send(&mut self, records: Arc<[Record]>) -> Result<Delivered, SendError> {
        let (added, duplicates, bytes) = self
            .add(&records)
            .await
            .map_err(|e| SendError::Retry(format!("redis {} stream {}: {e}", self.opts.display, self.opts.stream)))?;
        Ok(Delivered { records: added, bytes, duplicates, ..Delivered::default() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<RedisOptions, String> {
        RedisOptions::parse(s, &url::Url::parse(s).unwrap())
    }

    #[test]
    fn urls_name_a_stream_and_hide_the_password() {
        let o = parse("redis://:secret@h:7000/2?stream=logs&maxlen=1000").unwrap();
        assert_eq!(o.url, "redis://:secret@h:7000/2");
        assert_eq!(o.display, "h:7000/2");
        assert_eq!((o.stream.as_str(), o.marks.as_str(), o.maxlen), ("logs", "podkit:marks:logs", Some(1000)));
        assert!(parse("redis://h:1/0").unwrap_err().contains("name the stream"));
        assert!(parse("redis://h:1/x?stream=s").unwrap_err().contains("database number"));
        assert!(parse("redis://h:1/0?stream=s&maxlen=0").unwrap_err().contains("maxlen"));
        assert!(parse("redis://h:1/0?stream=s&colour=red").unwrap_err().contains("unknown option colour"));
    }
}
