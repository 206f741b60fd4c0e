//! The SQLite store: one file, shared by every worker process on a host.
//!
//! An item is a row of `items`. Every move is one transaction guarded by the lease (owner and
//! attempt number), so a worker that lost its lease can never complete, fail or renew an item
//! another worker now holds: the first completion wins and a redelivered item never commits a
//! second output.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Claimed, Counts, DeadItem, NewItem, Output, Store, StoreError, now_ms};

/// The SQLite store. Cloning shares the connection.
#[derive(Debug, Clone)]
pub(crate) struct SqliteStore {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
    max_item_size: usize,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS items (
    queue TEXT NOT NULL,
    id TEXT NOT NULL,
    name TEXT,
    state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'dead')),
    input BLOB NOT NULL,
    output BLOB,
    attempts INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until INTEGER,
    created_ms INTEGER NOT NULL,
    done_ms INTEGER,
    exit_status INTEGER,
    error TEXT,
    stderr_tail TEXT,
    PRIMARY KEY (queue, id)
);
CREATE INDEX IF NOT EXISTS items_claim ON items (queue, state, created_ms);
";

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`.
    pub(crate) fn open(path: &Path, max_item_size: usize) -> Result<SqliteStore, StoreError> {
        let err = |source| StoreError::Sqlite { path: path.display().to_string(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path).map_err(err)?;
        // WAL: readers never block the writer, and many worker processes share the file.
        // busy_timeout: writers queue for the lock instead of failing at once.
        conn.busy_timeout(Duration::from_secs(30)).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(SqliteStore { path: path.to_path_buf(), conn: Arc::new(Mutex::new(conn)), max_item_size })
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite { path: self.path.display().to_string(), source }
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        let r = tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut c)
        })
        .await
        .expect("store task panicked");
        r.map_err(|e| self.err(e))
    }
}

impl Store for SqliteStore {
    fn describe(&self) -> String {
        format!("sqlite {}", self.path.display())
    }

    async fn push(&self, queue: &str, items: Vec<NewItem>) -> Result<usize, StoreError> {
        for (id, _, data) in &items {
            if data.len() > self.max_item_size {
                return Err(StoreError::TooLarge { id: id.clone(), size: data.len(), limit: self.max_item_size });
            }
        }
        let queue = queue.to_string();
        self.with(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut added = 0;
            {
                let mut stmt = tx.prepare(
                    "INSERT OR IGNORE INTO items (queue, id, name, state, input, created_ms) VALUES (?1, ?2, ?3, 'pending', ?4, ?5)",
                )?;
                let now = now_ms();
                for (id, name, data) in items {
                    added += stmt.execute(params![queue, id, name, data, now])?;
                }
            }
            tx.commit()?;
            Ok(added)
        })
        .await
    }

    async fn claim(
        &self,
        queue: &str,
        owner: &str,
        lease: Duration,
        max_attempts: u32,
    ) -> Result<Option<Claimed>, StoreError> {
        let (queue, owner) = (queue.to_string(), owner.to_string());
        self.with(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let now = now_ms();
            // Leases that ran out on their last allowed attempt: dead, not retried.
            tx.execute(
                "UPDATE items SET state = 'dead', lease_owner = NULL, lease_until = NULL, failures = failures + 1,
                        error = 'the worker stopped renewing its lease (killed?) on its last attempt'
                 WHERE queue = ?1 AND state = 'running' AND lease_until < ?2 AND attempts >= ?3",
                params![queue, now, max_attempts],
            )?;
            // Two queries rather than one with OR: each walks the (queue, state, created_ms)
            // index to its first row instead of scanning the queue.
            let pick = |sql: &str| {
                tx.query_row(sql, params![queue, now], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?, r.get::<_, Vec<u8>>(2)?, r.get::<_, u32>(3)?))
                })
                .optional()
            };
            // Expired leases first: an item whose worker died must not wait behind the whole
            // pending backlog.
            let row = match pick(
                "SELECT id, name, input, attempts FROM items
                 WHERE queue = ?1 AND state = 'running' AND lease_until < ?2 ORDER BY created_ms, id LIMIT 1",
            )? {
                Some(r) => Some(r),
                None => pick(
                    "SELECT id, name, input, attempts FROM items
                     WHERE queue = ?1 AND state = 'pending' AND ?2 = ?2 ORDER BY created_ms, id LIMIT 1",
                )?,
            };
            let Some((id, name, input, attempts)) = row else {
                tx.commit()?;
                return Ok(None);
            };
            let attempt = attempts + 1;
            tx.execute(
                "UPDATE items SET state = 'running', attempts = ?3, lease_owner = ?4, lease_until = ?5 WHERE queue = ?1 AND id = ?2",
                params![queue, id, attempt, owner, now + lease.as_millis() as i64],
            )?;
            tx.commit()?;
            Ok(Some(Claimed { queue, id, name, input, attempt, handle: None }))
        })
        .await
    }

    async fn renew(&self, item: &Claimed, owner: &str, lease: Duration) -> Result<bool, StoreError> {
        let (queue, id, owner, attempt) = (item.queue.clone(), item.id.clone(), owner.to_string(), item.attempt);
        self.with(move |c| {
            let n = c.execute(
                "UPDATE items SET lease_until = ?5 WHERE queue = ?1 AND id = ?2 AND state = 'running' AND lease_owner = ?3 AND attempts = ?4",
                params![queue, id, owner, attempt, now_ms() + lease.as_millis() as i64],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn complete(&self, item: &Claimed, owner: &str, output: Output) -> Result<bool, StoreError> {
        if let Output::Stored(d) | Output::Next { data: d, .. } = &output
            && d.len() > self.max_item_size
        {
            return Err(StoreError::TooLarge { id: item.id.clone(), size: d.len(), limit: self.max_item_size });
        }
        let (queue, id, name, owner, attempt) =
            (item.queue.clone(), item.id.clone(), item.name.clone(), owner.to_string(), item.attempt);
        self.with(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let stored = match &output {
                Output::Stored(d) => Some(d.clone()),
                _ => None,
            };
            let n = tx.execute(
                "UPDATE items SET state = 'done', output = ?5, done_ms = ?6, lease_owner = NULL, lease_until = NULL
                 WHERE queue = ?1 AND id = ?2 AND state = 'running' AND lease_owner = ?3 AND attempts = ?4",
                params![queue, id, owner, attempt, stored, now_ms()],
            )?;
            if n != 1 {
                return Ok(false); // dropping the transaction rolls back
            }
            if let Output::Next { queue: next, data } = output {
                tx.execute(
                    "INSERT OR IGNORE INTO items (queue, id, name, state, input, created_ms) VALUES (?1, ?2, ?3, 'pending', ?4, ?5)",
                    params![next, id, name, data, now_ms()],
                )?;
            }
            tx.commit()?;
            Ok(true)
        })
        .await
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
        let (queue, id, owner, attempt) = (item.queue.clone(), item.id.clone(), owner.to_string(), item.attempt);
        let (error, stderr_tail) = (error.to_string(), stderr_tail.to_string());
        self.with(move |c| {
            let state = if attempt >= max_attempts { "dead" } else { "pending" };
            let n = c.execute(
                "UPDATE items SET state = ?5, failures = failures + 1, exit_status = ?6, error = ?7, stderr_tail = ?8,
                        lease_owner = NULL, lease_until = NULL
                 WHERE queue = ?1 AND id = ?2 AND state = 'running' AND lease_owner = ?3 AND attempts = ?4",
                params![queue, id, owner, attempt, state, exit_status, error, stderr_tail],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn release(&self, item: &Claimed, owner: &str) -> Result<bool, StoreError> {
        let (queue, id, owner, attempt) = (item.queue.clone(), item.id.clone(), owner.to_string(), item.attempt);
        self.with(move |c| {
            let n = c.execute(
                "UPDATE items SET state = 'pending', attempts = attempts - 1, lease_owner = NULL, lease_until = NULL
                 WHERE queue = ?1 AND id = ?2 AND state = 'running' AND lease_owner = ?3 AND attempts = ?4",
                params![queue, id, owner, attempt],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn counts(&self, queue: Option<&str>) -> Result<Vec<Counts>, StoreError> {
        let queue = queue.map(str::to_string);
        self.with(move |c| {
            let minute_ago = now_ms() - 60_000;
            let mut stmt = c.prepare(
                "SELECT queue,
                        SUM(state = 'pending'), SUM(state = 'running'), SUM(state = 'done'), SUM(state = 'dead'),
                        SUM(failures), SUM(state = 'done' AND done_ms >= ?2)
                 FROM items WHERE ?1 IS NULL OR queue = ?1 GROUP BY queue ORDER BY queue",
            )?;
            let rows = stmt.query_map(params![queue, minute_ago], |r| {
                Ok(Counts {
                    queue: r.get(0)?,
                    pending: r.get::<_, i64>(1)? as u64,
                    running: r.get::<_, i64>(2)? as u64,
                    done: r.get::<_, i64>(3)? as u64,
                    dead: r.get::<_, i64>(4)? as u64,
                    failed_attempts: r.get::<_, i64>(5)? as u64,
                    done_last_minute: r.get::<_, i64>(6)? as u64,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn dead(&self, queue: Option<&str>) -> Result<Vec<DeadItem>, StoreError> {
        let queue = queue.map(str::to_string);
        self.with(move |c| {
            let mut stmt = c.prepare(
                "SELECT queue, id, attempts, exit_status, error, stderr_tail FROM items
                 WHERE state = 'dead' AND (?1 IS NULL OR queue = ?1) ORDER BY queue, created_ms, id",
            )?;
            let rows = stmt.query_map(params![queue], |r| {
                Ok(DeadItem {
                    queue: r.get(0)?,
                    id: r.get(1)?,
                    attempts: r.get(2)?,
                    exit_status: r.get(3)?,
                    error: r.get(4)?,
                    stderr_tail: r.get(5)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn retry(&self, queue: &str, ids: Vec<String>) -> Result<usize, StoreError> {
        let queue = queue.to_string();
        self.with(move |c| {
            let tx = c.transaction()?;
            let mut n = 0;
            if ids.is_empty() {
                n = tx.execute("UPDATE items SET state = 'pending', attempts = 0 WHERE queue = ?1 AND state = 'dead'", params![queue])?;
            } else {
                for id in ids {
                    n += tx.execute(
                        "UPDATE items SET state = 'pending', attempts = 0 WHERE queue = ?1 AND id = ?2 AND state = 'dead'",
                        params![queue, id],
                    )?;
                }
            }
            tx.commit()?;
            Ok(n)
        })
        .await
    }

    async fn purge(&self, queue: &str) -> Result<usize, StoreError> {
        let queue = queue.to_string();
        self.with(move |c| c.execute("DELETE FROM items WHERE queue = ?1", params![queue])).await
    }

    async fn output(&self, queue: &str, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let (queue, id) = (queue.to_string(), id.to_string());
        self.with(move |c| {
            c.query_row(
                "SELECT output FROM items WHERE queue = ?1 AND id = ?2 AND state = 'done'",
                params![queue, id],
                |r| r.get::<_, Option<Vec<u8>>>(0),
            )
            .optional()
            .map(Option::flatten)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("q.db"), 1024).unwrap();
        (dir, s)
    }

    fn item(id: &str) -> (String, Option<String>, Vec<u8>) {
        (id.to_string(), None, id.as_bytes().to_vec())
    }

    #[tokio::test]
    async fn push_is_idempotent_and_claims_are_exclusive() {
        let (_d, s) = store().await;
        assert_eq!(s.push("q", vec![item("a"), item("b")]).await.unwrap(), 2);
        assert_eq!(s.push("q", vec![item("a")]).await.unwrap(), 0, "same id again");
        let a = s.claim("q", "w1", Duration::from_secs(60), 3).await.unwrap().unwrap();
        let b = s.claim("q", "w2", Duration::from_secs(60), 3).await.unwrap().unwrap();
        assert_ne!(a.id, b.id);
        assert!(s.claim("q", "w3", Duration::from_secs(60), 3).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn only_the_lease_holder_completes_and_only_once() {
        let (_d, s) = store().await;
        s.push("q", vec![item("a")]).await.unwrap();
        let first = s.claim("q", "w1", Duration::from_millis(1), 5).await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await; // let the 1 ms lease run out
        let second = s.claim("q", "w2", Duration::from_secs(60), 5).await.unwrap().unwrap();
        assert_eq!(second.attempt, 2);
        let next = Output::Next { queue: "q2".into(), data: b"out".to_vec() };
        assert!(!s.complete(&first, "w1", next.clone()).await.unwrap(), "w1 lost its lease");
        assert!(!s.renew(&first, "w1", Duration::from_secs(1)).await.unwrap());
        assert!(s.complete(&second, "w2", next.clone()).await.unwrap());
        assert!(!s.complete(&second, "w2", next).await.unwrap(), "no second completion");
        let counts = s.counts(None).await.unwrap();
        assert_eq!(counts[0].done, 1);
        assert_eq!(counts[1].queue, "q2");
        assert_eq!(counts[1].pending, 1, "exactly one output at the next stage");
    }

    #[tokio::test]
    async fn stored_outputs_are_read_back_once_done() {
        let (_d, s) = store().await;
        s.push("q", vec![item("a")]).await.unwrap();
        let a = s.claim("q", "w", Duration::from_secs(60), 3).await.unwrap().unwrap();
        assert_eq!(s.output("q", "a").await.unwrap(), None, "not done yet");
        assert!(s.complete(&a, "w", Output::Stored(b"out".to_vec())).await.unwrap());
        assert_eq!(s.output("q", "a").await.unwrap().as_deref(), Some(&b"out"[..]));
        assert_eq!(s.output("q", "nope").await.unwrap(), None);
    }

    #[tokio::test]
    async fn failures_retry_then_dead_letter() {
        let (_d, s) = store().await;
        s.push("q", vec![item("p")]).await.unwrap();
        for attempt in 1..=2 {
            let c = s.claim("q", "w", Duration::from_secs(60), 2).await.unwrap().unwrap();
            assert_eq!(c.attempt, attempt);
            assert!(s.fail(&c, "w", 2, Some(3), "exit code 3", "boom").await.unwrap());
        }
        assert!(s.claim("q", "w", Duration::from_secs(60), 2).await.unwrap().is_none());
        let dead = s.dead(Some("q")).await.unwrap();
        assert_eq!((dead[0].attempts, dead[0].exit_status, dead[0].stderr_tail.as_deref()), (2, Some(3), Some("boom")));
        assert_eq!(s.retry("q", vec![]).await.unwrap(), 1);
        assert_eq!(s.claim("q", "w", Duration::from_secs(60), 2).await.unwrap().unwrap().attempt, 1);
    }

    #[tokio::test]
    async fn too_large_items_are_refused_whole() {
        let (_d, s) = store().await;
        let err = s.push("q", vec![item("ok"), ("big".into(), None, vec![0; 2048])]).await.unwrap_err();
        assert!(err.to_string().contains("item big is 2048 bytes; the limit is 1024"), "{err}");
        assert!(s.counts(None).await.unwrap().is_empty(), "nothing of the batch was accepted");
    }
}
