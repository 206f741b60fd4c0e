//! The Redis store, for workers on many hosts: one Redis Stream per queue, read through a
//! consumer group.
//!
//! An item is a hash (`podkit:q:{Q}:i:ID`: input, state, attempts…) plus an entry in the stream
//! `podkit:q:{Q}:s` while it waits or runs. Workers take entries with `XREADGROUP`; an entry
//! whose worker stopped renewing (its idle time in the group's pending list passed the lease)
//! is taken back with `XAUTOCLAIM`. Renewing is `XCLAIM … JUSTID` by the owner, which resets
//! the idle time. Every move is one Lua script that first checks the lease (the pending entry's
//! consumer and the attempt number), so, as with SQLite, a worker that lost its lease can never
//! complete, fail or renew the item, and completion commits the output with the
//! acknowledgement. The `{Q}` hash tag keeps one queue's keys together; a pipeline's `--to`
//! touches two queues in one script, so use one Redis (with replicas), not Redis Cluster.

use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;

use super::{Claimed, Counts, DeadItem, NewItem, Output, Store, StoreError, now_ms};

const GROUP: &str = "podkit";

fn stream(q: &str) -> String {
    format!("podkit:q:{{{q}}}:s")
}
fn item_prefix(q: &str) -> String {
    format!("podkit:q:{{{q}}}:i:")
}
fn item_key(q: &str, id: &str) -> String {
    format!("{}{id}", item_prefix(q))
}
fn counters(q: &str) -> String {
    format!("podkit:q:{{{q}}}:n")
}
fn dead_set(q: &str) -> String {
    format!("podkit:q:{{{q}}}:dead")
}
fn done_times(q: &str) -> String {
    format!("podkit:q:{{{q}}}:done")
}
const QUEUES: &str = "podkit:queues";

/// Checks the lease: the entry is pending for `owner` and the item is on `attempt`.
const CHECK: &str = r#"
local function owns(stream, sid, owner, item, attempt)
  local p = redis.call('XPENDING', stream, 'podkit', sid, sid, 1)
  if #p == 0 or p[1][2] ~= owner then return false end
  return redis.call('HGET', item, 'state') == 'running' and tonumber(redis.call('HGET', item, 'attempts')) == tonumber(attempt)
end
"#;

const PUSH: &str = r#"
-- KEYS: stream, item, counters   ARGV: id, name, input, now
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[2], 'input', ARGV[3], 'name', ARGV[2], 'state', 'pending', 'attempts', 0, 'failures', 0, 'created', ARGV[4])
redis.call('XADD', KEYS[1], '*', 'id', ARGV[1])
redis.call('HINCRBY', KEYS[3], 'pending', 1)
return 1
"#;

const CLAIM: &str = r#"
-- KEYS: stream, counters, dead   ARGV: owner, lease_ms, max_attempts, item prefix
local entries = {}
local expired = true
-- XAUTOCLAIM looks at a bounded stretch of the pending list per call: follow its cursor
-- through the whole list (as long as the running items; bounded all the same).
local cursor = '0-0'
for _ = 1, 1000 do
  local r = redis.call('XAUTOCLAIM', KEYS[1], 'podkit', ARGV[1], ARGV[2], cursor, 'COUNT', 1)
  entries = r[2]
  cursor = r[1]
  if #entries > 0 or cursor == '0-0' then break end
end
if #entries == 0 then
  expired = false
  local rr = redis.call('XREADGROUP', 'GROUP', 'podkit', ARGV[1], 'COUNT', 1, 'STREAMS', KEYS[1], '>')
  if not rr then return false end
  entries = rr[1][2]
  if #entries == 0 then return false end
end
local sid = entries[1][1]
local id = entries[1][2][2]
local item = ARGV[4] .. id
if redis.call('EXISTS', item) == 0 then
  -- An entry without its item (a purge raced a push): drop it, look again.
  redis.call('XACK', KEYS[1], 'podkit', sid)
  redis.call('XDEL', KEYS[1], sid)
  return {'skip'}
end
local attempts = tonumber(redis.call('HGET', item, 'attempts') or '0')
if expired and attempts >= tonumber(ARGV[3]) then
  -- Its worker died on the last allowed attempt: dead, not retried.
  redis.call('XACK', KEYS[1], 'podkit', sid)
  redis.call('XDEL', KEYS[1], sid)
  redis.call('HSET', item, 'state', 'dead', 'error', 'the worker stopped renewing its lease (killed?) on its last attempt')
  redis.call('HINCRBY', item, 'failures', 1)
  redis.call('SADD', KEYS[3], id)
  redis.call('HINCRBY', KEYS[2], 'running', -1)
  redis.call('HINCRBY', KEYS[2], 'dead', 1)
  redis.call('HINCRBY', KEYS[2], 'failures', 1)
  return {'dead'}
end
if not expired then
  redis.call('HINCRBY', KEYS[2], 'pending', -1)
  redis.call('HINCRBY', KEYS[2], 'running', 1)
end
attempts = attempts + 1
redis.call('HSET', item, 'state', 'running', 'attempts', attempts)
return {'item', id, sid, attempts, redis.call('HGET', item, 'name') or '', redis.call('HGET', item, 'input')}
"#;

const RENEW: &str = r#"
-- KEYS: stream, item   ARGV: owner, sid, attempt
if not owns(KEYS[1], ARGV[2], ARGV[1], KEYS[2], ARGV[3]) then return 0 end
redis.call('XCLAIM', KEYS[1], 'podkit', ARGV[1], 0, ARGV[2], 'JUSTID')
return 1
"#;

const COMPLETE: &str = r#"
-- KEYS: stream, item, counters, done, [next stream, next item, next counters]
-- ARGV: owner, sid, attempt, mode (stored|next|external), data, now, id, name
if not owns(KEYS[1], ARGV[2], ARGV[1], KEYS[2], ARGV[3]) then return 0 end
redis.call('XACK', KEYS[1], 'podkit', ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], 'state', 'done', 'done_ms', ARGV[6])
redis.call('HDEL', KEYS[2], 'input')
if ARGV[4] == 'stored' then redis.call('HSET', KEYS[2], 'output', ARGV[5]) end
redis.call('HINCRBY', KEYS[3], 'running', -1)
redis.call('HINCRBY', KEYS[3], 'done', 1)
redis.call('ZADD', KEYS[4], ARGV[6], ARGV[7])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', tonumber(ARGV[6]) - 60000)
if ARGV[4] == 'next' and redis.call('EXISTS', KEYS[6]) == 0 then
  redis.call('HSET', KEYS[6], 'input', ARGV[5], 'name', ARGV[8], 'state', 'pending', 'attempts', 0, 'failures', 0, 'created', ARGV[6])
  redis.call('XADD', KEYS[5], '*', 'id', ARGV[7])
  redis.call('HINCRBY', KEYS[7], 'pending', 1)
end
return 1
"#;

const FAIL: &str = r#"
-- KEYS: stream, item, counters, dead   ARGV: owner, sid, attempt, max, exit_status, error, stderr, id
if not owns(KEYS[1], ARGV[2], ARGV[1], KEYS[2], ARGV[3]) then return 0 end
redis.call('XACK', KEYS[1], 'podkit', ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], 'exit_status', ARGV[5], 'error', ARGV[6], 'stderr_tail', ARGV[7])
redis.call('HINCRBY', KEYS[2], 'failures', 1)
redis.call('HINCRBY', KEYS[3], 'failures', 1)
redis.call('HINCRBY', KEYS[3], 'running', -1)
if tonumber(ARGV[3]) >= tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[2], 'state', 'dead')
  redis.call('SADD', KEYS[4], ARGV[8])
  redis.call('HINCRBY', KEYS[3], 'dead', 1)
else
  redis.call('HSET', KEYS[2], 'state', 'pending')
  redis.call('XADD', KEYS[1], '*', 'id', ARGV[8])
  redis.call('HINCRBY', KEYS[3], 'pending', 1)
end
return 1
"#;

const RELEASE: &str = r#"
-- KEYS: stream, item, counters   ARGV: owner, sid, attempt, id
if not owns(KEYS[1], ARGV[2], ARGV[1], KEYS[2], ARGV[3]) then return 0 end
redis.call('XACK', KEYS[1], 'podkit', ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], 'state', 'pending')
redis.call('HINCRBY', KEYS[2], 'attempts', -1)
redis.call('XADD', KEYS[1], '*', 'id', ARGV[4])
redis.call('HINCRBY', KEYS[3], 'running', -1)
redis.call('HINCRBY', KEYS[3], 'pending', 1)
return 1
"#;

const RETRY: &str = r#"
-- KEYS: stream, item, counters, dead   ARGV: id
if redis.call('SREM', KEYS[4], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], 'state', 'pending', 'attempts', 0)
redis.call('XADD', KEYS[1], '*', 'id', ARGV[1])
redis.call('HINCRBY', KEYS[3], 'dead', -1)
redis.call('HINCRBY', KEYS[3], 'pending', 1)
return 1
"#;

/// The Redis store. Cloning shares the (reconnecting) connection.
#[derive(Clone)]
pub(crate) struct RedisStore {
    url: String,
    conn: ConnectionManager,
    max_item_size: usize,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("url", &self.url).finish()
    }
}

/// The lease handle a Redis claim needs besides the item: the stream entry.
fn sid_of(item: &Claimed) -> &str {
    item.handle.as_deref().unwrap_or("0-0")
}

impl RedisStore {
    pub(crate) async fn open(url: &str, max_item_size: usize) -> Result<RedisStore, StoreError> {
        // Messages, logs and metrics show the URL without its password.
        let shown = podkit_core::http::shown_url(url);
        let err = |e: redis::RedisError| StoreError::Redis { url: shown.clone(), source: e };
        let client = redis::Client::open(url).map_err(err)?;
        // One plain connection first: a refused connection, a wrong password or a database out
        // of range is Redis' own error, at once. (The connection manager retries quietly, so
        // alone it would only say, after the timeout, that nothing answered.)
        let mut probe = tokio::time::timeout(Duration::from_secs(5), client.get_multiplexed_async_connection())
            .await
            .map_err(|_| StoreError::Unreachable(shown.clone()))?
            .map_err(err)?;
        let _: String = redis::cmd("PING").query_async(&mut probe).await.map_err(err)?;
        drop(probe);
        let conn = tokio::time::timeout(Duration::from_secs(5), ConnectionManager::new(client))
            .await
            .map_err(|_| StoreError::Unreachable(shown.clone()))?
            .map_err(err)?;
        Ok(RedisStore { url: shown, conn, max_item_size })
    }

    fn err(&self, source: redis::RedisError) -> StoreError {
        StoreError::Redis { url: self.url.clone(), source }
    }

    async fn ensure_group(&self, q: &str) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let r: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream(q))
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut c)
            .await;
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    fn script(body: &str) -> redis::Script {
        redis::Script::new(&format!("{CHECK}\n{body}"))
    }
}

impl Store for RedisStore {
    fn describe(&self) -> String {
        format!("redis {}", self.url)
    }

    async fn push(&self, queue: &str, items: Vec<NewItem>) -> Result<usize, StoreError> {
        for (id, _, data) in &items {
            if data.len() > self.max_item_size {
                return Err(StoreError::TooLarge { id: id.clone(), size: data.len(), limit: self.max_item_size });
            }
        }
        self.ensure_group(queue).await?;
        let mut c = self.conn.clone();
        let _: () = c.sadd(QUEUES, queue).await.map_err(|e| self.err(e))?;
        let script = Self::script(PUSH);
        let mut added = 0;
        for (id, name, data) in items {
            let n: i64 = script
                .key(stream(queue))
                .key(item_key(queue, &id))
                .key(counters(queue))
                .arg(&id)
                .arg(name.unwrap_or_default())
                .arg(data)
                .arg(now_ms())
                .invoke_async(&mut c)
                .await
                .map_err(|e| self.err(e))?;
            added += n as usize;
        }
        Ok(added)
    }

    async fn claim(
        &self,
        queue: &str,
        owner: &str,
        lease: Duration,
        max_attempts: u32,
    ) -> Result<Option<Claimed>, StoreError> {
        self.ensure_group(queue).await?;
        let mut c = self.conn.clone();
        let script = Self::script(CLAIM);
        loop {
            let r: redis::Value = script
                .key(stream(queue))
                .key(counters(queue))
                .key(dead_set(queue))
                .arg(owner)
                .arg(lease.as_millis() as u64)
                .arg(max_attempts)
                .arg(item_prefix(queue))
                .invoke_async(&mut c)
                .await
                .map_err(|e| self.err(e))?;
            let parts: Vec<redis::Value> = match r {
                redis::Value::Array(v) => v,
                _ => return Ok(None),
            };
            let text =
                |v: &redis::Value| -> Vec<u8> { redis::from_redis_value::<Vec<u8>>(v.clone()).unwrap_or_default() };
            if matches!(parts.first().map(text).as_deref(), Some(b"dead") | Some(b"skip")) {
                continue; // one expired item dead-lettered, or an orphan entry dropped: look again
            }
            let s = |i: usize| String::from_utf8_lossy(&text(&parts[i])).into_owned();
            let attempt: u32 = redis::from_redis_value(parts[3].clone()).unwrap_or(1);
            let name = s(4);
            return Ok(Some(Claimed {
                queue: queue.to_string(),
                id: s(1),
                name: (!name.is_empty()).then_some(name),
                input: text(&parts[5]),
                attempt,
                handle: Some(s(2)),
            }));
        }
    }

    async fn renew(&self, item: &Claimed, owner: &str, _lease: Duration) -> Result<bool, StoreError> {
        let mut c = self.conn.clone();
        let n: i64 = Self::script(RENEW)
            .key(stream(&item.queue))
            .key(item_key(&item.queue, &item.id))
            .arg(owner)
            .arg(sid_of(item))
            .arg(item.attempt)
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }

    async fn complete(&self, item: &Claimed, owner: &str, output: Output) -> Result<bool, StoreError> {
        let q = &item.queue;
        let script = Self::script(COMPLETE);
        let mut inv = script.prepare_invoke();
        inv.key(stream(q)).key(item_key(q, &item.id)).key(counters(q)).key(done_times(q));
        let (mode, data, next) = match output {
            Output::Stored(d) => ("stored", d, None),
            Output::Next { queue, data } => ("next", data, Some(queue)),
            Output::External => ("external", Vec::new(), None),
        };
        if data.len() > self.max_item_size {
            return Err(StoreError::TooLarge { id: item.id.clone(), size: data.len(), limit: self.max_item_size });
        }
        let mut c = self.conn.clone();
        if let Some(n) = &next {
            self.ensure_group(n).await?;
            let _: () = c.sadd(QUEUES, n).await.map_err(|e| self.err(e))?;
            inv.key(stream(n)).key(item_key(n, &item.id)).key(counters(n));
        }
        inv.arg(owner)
            .arg(sid_of(item))
            .arg(item.attempt)
            .arg(mode)
            .arg(data)
            .arg(now_ms())
            .arg(&item.id)
            .arg(item.name.clone().unwrap_or_default());
        let n: i64 = inv.invoke_async(&mut c).await.map_err(|e| self.err(e))?;
        Ok(n == 1)
    }

    async fn fail(
        &self,
        item: &Claimed,
        owner: &str,
        max_attempts: u32,
        exit_status: Option<i32>,
        error: &str,
        stderr_tail: &str,
    ) -> Result<bool, StoreError> {
        let q = &item.queue;
        let mut c = self.conn.clone();
        let n: i64 = Self::script(FAIL)
            .key(stream(q))
            .key(item_key(q, &item.id))
            .key(counters(q))
            .key(dead_set(q))
            .arg(owner)
            .arg(sid_of(item))
            .arg(item.attempt)
            .arg(max_attempts)
            .arg(exit_status.map(|s| s.to_string()).unwrap_or_default())
            .arg(error)
            .arg(stderr_tail)
            .arg(&item.id)
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }

    async fn release(&self, item: &Claimed, owner: &str) -> Result<bool, StoreError> {
        let q = &item.queue;
        let mut c = self.conn.clone();
        let n: i64 = Self::script(RELEASE)
            .key(stream(q))
            .key(item_key(q, &item.id))
            .key(counters(q))
            .arg(owner)
            .arg(sid_of(item))
            .arg(item.attempt)
            .arg(&item.id)
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }

    async fn counts(&self, queue: Option<&str>) -> Result<Vec<Counts>, StoreError> {
        let mut c = self.conn.clone();
        let mut queues: Vec<String> = match queue {
            Some(q) => vec![q.to_string()],
            None => c.smembers(QUEUES).await.map_err(|e| self.err(e))?,
        };
        queues.sort();
        // One MULTI for every queue: a consistent snapshot, so a pipeline is never seen drained
        // while an item moves from one stage to the next between two reads.
        let mut pipe = redis::pipe();
        pipe.atomic();
        for q in &queues {
            pipe.hgetall(counters(q)).zcount(done_times(q), now_ms() - 60_000, "+inf");
        }
        let replies: Vec<(std::collections::HashMap<String, i64>, i64)> = if queues.is_empty() {
            Vec::new()
        } else {
            let flat: Vec<redis::Value> = pipe.query_async(&mut c).await.map_err(|e| self.err(e))?;
            flat.chunks(2)
                .map(|p| {
                    (
                        redis::from_redis_value(p[0].clone()).unwrap_or_default(),
                        redis::from_redis_value(p.get(1).cloned().unwrap_or(redis::Value::Nil)).unwrap_or_default(),
                    )
                })
                .collect()
        };
        let mut out = Vec::new();
        for (q, (n, recent)) in queues.into_iter().zip(replies) {
            if n.is_empty() {
                continue;
            }
            let g = |k: &str| n.get(k).copied().unwrap_or(0).max(0) as u64;
            out.push(Counts {
                queue: q,
                pending: g("pending"),
                running: g("running"),
                done: g("done"),
                dead: g("dead"),
                failed_attempts: g("failures"),
                done_last_minute: recent.max(0) as u64,
            });
        }
        Ok(out)
    }

    async fn dead(&self, queue: Option<&str>) -> Result<Vec<DeadItem>, StoreError> {
        let mut out = Vec::new();
        let mut c = self.conn.clone();
        for counts in self.counts(queue).await? {
            let q = counts.queue;
            let mut ids: Vec<String> = c.smembers(dead_set(&q)).await.map_err(|e| self.err(e))?;
            ids.sort();
            for id in ids {
                let h: std::collections::HashMap<String, String> =
                    c.hgetall(item_key(&q, &id)).await.map_err(|e| self.err(e))?;
                out.push(DeadItem {
                    queue: q.clone(),
                    attempts: h.get("attempts").and_then(|v| v.parse().ok()).unwrap_or(0),
                    exit_status: h.get("exit_status").and_then(|v| v.parse().ok()),
                    error: h.get("error").cloned(),
                    stderr_tail: h.get("stderr_tail").cloned(),
                    id,
                });
            }
        }
        Ok(out)
    }

    async fn retry(&self, queue: &str, ids: Vec<String>) -> Result<usize, StoreError> {
        let mut c = self.conn.clone();
        let ids = if ids.is_empty() { c.smembers(dead_set(queue)).await.map_err(|e| self.err(e))? } else { ids };
        let script = Self::script(RETRY);
        let mut n = 0;
        for id in ids {
            let r: i64 = script
                .key(stream(queue))
                .key(item_key(queue, &id))
                .key(counters(queue))
                .key(dead_set(queue))
                .arg(&id)
                .invoke_async(&mut c)
                .await
                .map_err(|e| self.err(e))?;
            n += r as usize;
        }
        Ok(n)
    }

    async fn purge(&self, queue: &str) -> Result<usize, StoreError> {
        let mut c = self.conn.clone();
        let items: Vec<String> = {
            let mut iter: redis::AsyncIter<String> =
                c.scan_match(format!("{}*", item_prefix(queue))).await.map_err(|e| self.err(e))?;
            let mut v = Vec::new();
            while let Some(k) = futures_util::StreamExt::next(&mut iter).await {
                v.push(k.map_err(|e| self.err(e))?);
            }
            v
        };
        for chunk in items.chunks(500) {
            let _: () = c.del(chunk).await.map_err(|e| self.err(e))?;
        }
        let _: () = c
            .del(&[stream(queue), counters(queue), dead_set(queue), done_times(queue)])
            .await
            .map_err(|e| self.err(e))?;
        let _: () = c.srem(QUEUES, queue).await.map_err(|e| self.err(e))?;
        Ok(items.len())
    }

    async fn output(&self, queue: &str, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut c = self.conn.clone();
        let (state, output): (Option<String>, Option<Vec<u8>>) = redis::cmd("HMGET")
            .arg(item_key(queue, id))
            .arg("state")
            .arg("output")
            .query_async(&mut c)
            .await
            .map_err(|e| self.err(e))?;
        Ok(output.filter(|_| state.as_deref() == Some("done")))
    }
}
