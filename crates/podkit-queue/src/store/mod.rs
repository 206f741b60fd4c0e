//! Where items live, and the one API every store offers ([`Store`]): the SQLite store (one file,
//! shared by every worker process on a host) and the Redis store (workers on many hosts).
//!
//! An item moves `pending → running → done`, or back to `pending` when an attempt fails or its
//! lease runs out, or to `dead` after `max_attempts`. Every move is atomic and guarded by the
//! lease (owner and attempt number), so a worker that lost its lease can never complete, fail or
//! renew an item another worker now holds: the first completion wins and a redelivered item
//! never commits a second output.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

mod redis;
mod sqlite;

pub(crate) use self::redis::RedisStore;
pub(crate) use self::sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("queue store {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("item {id} is {size} bytes; the limit is {limit} (--max-item-size)")]
    TooLarge { id: String, size: usize, limit: usize },
    #[error("queue store {url}: {source}")]
    Redis {
        url: String,
        #[source]
        source: ::redis::RedisError,
    },
    #[error("queue store {0}: no answer within 5s")]
    Unreachable(String),
}

/// An item to push: its id, its name (the pushed file's, if any) and its input.
pub(crate) type NewItem = (String, Option<String>, Vec<u8>);

/// An item handed to a worker.
#[derive(Debug, Clone)]
pub(crate) struct Claimed {
    pub(crate) queue: String,
    pub(crate) id: String,
    pub(crate) name: Option<String>,
    pub(crate) input: Vec<u8>,
    /// 1 for the first attempt.
    pub(crate) attempt: u32,
    /// The store's own handle on this lease (Redis: the stream entry).
    pub(crate) handle: Option<String>,
}

/// A dead item, as `podkit queue dead` lists it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DeadItem {
    pub(crate) queue: String,
    pub(crate) id: String,
    pub(crate) attempts: u32,
    pub(crate) exit_status: Option<i32>,
    pub(crate) error: Option<String>,
    pub(crate) stderr_tail: Option<String>,
}

/// Per-queue counts, as `podkit queue status` shows them.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) queue: String,
    pub(crate) pending: u64,
    pub(crate) running: u64,
    pub(crate) done: u64,
    pub(crate) dead: u64,
    /// Failed attempts so far (items that were retried or died).
    pub(crate) failed_attempts: u64,
    /// Items completed in the last minute.
    pub(crate) done_last_minute: u64,
}

/// Where a completed item's output goes, in the same transaction as its completion.
#[derive(Debug, Clone)]
pub(crate) enum Output {
    /// Kept in the store (`podkit queue` without --to or --out-dir).
    Stored(Vec<u8>),
    /// Becomes item `id` of queue `next` (a pipeline stage).
    Next { queue: String, data: Vec<u8> },
    /// Already written to a file keyed by the item id (--out-dir).
    External,
}

/// Wall-clock milliseconds: what both stores record and compare lease and completion times in.
fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A store of queues. Cloning shares the connection, so each stage of a pipeline holds its own
/// handle on one store.
///
/// Every call that moves a claimed item (`renew`, `complete`, `fail`, `release`) first checks
/// the lease, `owner` and `item.attempt` together, and does nothing when it no longer holds:
/// it then answers `Ok(false)`, and the caller drops the item (another worker has it).
pub(crate) trait Store: Clone + Send + Sync + 'static {
    /// For logs and errors: `sqlite /var/lib/podkit/q.db`, `redis redis://host:6379/0`.
    fn describe(&self) -> String;

    /// Adds items; an id that already exists in the queue is left as it is (idempotent push).
    /// Returns how many were new. An item over the store's size limit refuses the whole batch
    /// before anything is written.
    fn push(&self, queue: &str, items: Vec<NewItem>) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// Hands the oldest claimable item to `owner` for `lease`: a pending one, or a running one
    /// whose lease ran out (its worker died). Expired leases come first: an item whose worker
    /// died must not wait behind the whole pending backlog. An expired item that already used
    /// `max_attempts` is dead-lettered instead. A claim is exclusive: until its lease runs out,
    /// no other call hands out the same item.
    fn claim(
        &self,
        queue: &str,
        owner: &str,
        lease: Duration,
        max_attempts: u32,
    ) -> impl Future<Output = Result<Option<Claimed>, StoreError>> + Send;

    /// Extends the lease by `lease` from now; `false` when the item is no longer this worker's.
    /// (Redis measures a lease as the idle time since the last renewal, so it gets the length
    /// again at each claim and ignores it here.)
    fn renew(
        &self,
        item: &Claimed,
        owner: &str,
        lease: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Marks the item done and commits its output, atomically. `false`: the lease was lost
    /// (another worker holds the item or already completed it) and nothing was written. Only
    /// the lease holder completes, and only once. [`Output::Next`] adds item `id` to the next
    /// queue unless it is there already, so a pipeline stage never gets a second copy. An output
    /// over the store's size limit is an error, and nothing is written.
    fn complete(
        &self,
        item: &Claimed,
        owner: &str,
        output: Output,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Records a failed attempt: back to pending, or dead after `max_attempts`, with the exit
    /// status, error and stderr tail that `dead` shows. `false`: the lease was lost.
    fn fail(
        &self,
        item: &Claimed,
        owner: &str,
        max_attempts: u32,
        exit_status: Option<i32>,
        error: &str,
        stderr_tail: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Gives an item back untouched (a graceful stop interrupted it): pending again, and the
    /// interrupted attempt does not count. `false`: the lease was lost.
    fn release(&self, item: &Claimed, owner: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Counts per queue (all queues, or one), ordered by queue name; a queue the store has no
    /// items of is left out.
    fn counts(&self, queue: Option<&str>) -> impl Future<Output = Result<Vec<Counts>, StoreError>> + Send;

    /// Dead-lettered items (of all queues, or one) with their last error and stderr tail.
    fn dead(&self, queue: Option<&str>) -> impl Future<Output = Result<Vec<DeadItem>, StoreError>> + Send;

    /// Puts dead items back to pending with a fresh attempt count: the ids given, or, with none,
    /// every dead item of the queue. Returns how many went back.
    fn retry(&self, queue: &str, ids: Vec<String>) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// Removes a queue and everything in it. Returns how many items went.
    fn purge(&self, queue: &str) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// A done item's stored output (when the worker had neither --to nor --out-dir); `None`
    /// for an item that is not done or whose output went elsewhere.
    // No command reads stored outputs yet; both stores keep them, so the call is here for the
    // one that will.
    #[cfg_attr(not(test), expect(dead_code, reason = "no command reads stored outputs yet; the tests do"))]
    fn output(&self, queue: &str, id: &str) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;
}
