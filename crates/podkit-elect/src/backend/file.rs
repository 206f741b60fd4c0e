//! The embedded backend: one lease file per election in a directory, for replicas on one host.
//!
//! `NAME.lease` holds the leader, the fencing token and the lease's expiry; every change is a
//! read-modify-write under an exclusive `flock` on `NAME.lock` (a separate file, so the atomic
//! rename of the lease file never swaps the locked inode). Expiry is measured on
//! `CLOCK_BOOTTIME`: one clock for every process on the host, never set back by NTP or an
//! operator, and still counting across a suspend. The token counter lives in the same file and
//! is fsynced before it is used, so it never goes backwards, even across a crash.
//!
//! Several hosts cannot share this backend (a network file system's locks and clocks are not
//! to be trusted with leadership): use etcd there.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use nix::time::{ClockId, clock_gettime};
use serde::{Deserialize, Serialize};

use super::{Acquired, Backend, BackendError, Lease, Observed};

/// How often a waiting follower looks at the lease file.
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Clone)]
pub(crate) struct FileBackend {
    dir: PathBuf,
}

/// The lease file's content.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Record {
    leader: Option<String>,
    token: u64,
    /// CLOCK_BOOTTIME milliseconds at which the lease ends.
    expires_ms: u64,
}

impl Record {
    fn live_leader(&self, now_ms: u64) -> Option<&str> {
        self.leader.as_deref().filter(|_| now_ms < self.expires_ms)
    }
}

fn boottime_ms() -> u64 {
    let ts = clock_gettime(ClockId::CLOCK_BOOTTIME).expect("CLOCK_BOOTTIME exists on Linux");
    ts.tv_sec() as u64 * 1000 + ts.tv_nsec() as u64 / 1_000_000
}

impl FileBackend {
    /// Opens (creating if needed) the lease directory and checks that podkit can write every
    /// file it will need for `elections`.
    pub(crate) fn open(dir: &Path, elections: &[String]) -> Result<FileBackend, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create lease directory {}: {e}", dir.display()))?;
        nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK)
            .map_err(|e| format!("lease directory {} is not writable by this user: {e}", dir.display()))?;
        let backend = FileBackend { dir: dir.to_path_buf() };
        for election in elections {
            for path in [backend.lock_path(election), backend.lease_path(election)] {
                if path.exists() {
                    OpenOptions::new().append(true).open(&path).map_err(|e| {
                        format!("{} is not writable by this user ({e}); is it owned by another user?", path.display())
                    })?;
                }
            }
            // The file must also be readable and well-formed.
            backend.read_locked(election, FlockArg::LockShared).map_err(|e| e.to_string())?;
        }
        Ok(backend)
    }

    fn lease_path(&self, election: &str) -> PathBuf {
        self.dir.join(format!("{election}.lease"))
    }

    fn lock_path(&self, election: &str) -> PathBuf {
        self.dir.join(format!("{election}.lock"))
    }

    fn io_err(path: &Path, source: std::io::Error) -> BackendError {
        BackendError::File { path: path.display().to_string(), source }
    }

    fn lock(&self, election: &str, how: FlockArg) -> Result<Flock<File>, BackendError> {
        let path = self.lock_path(election);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .read(true)
            .open(&path)
            .map_err(|e| Self::io_err(&path, e))?;
        Flock::lock(file, how).map_err(|(_, e)| Self::io_err(&path, e.into()))
    }

    fn read(&self, election: &str) -> Result<Record, BackendError> {
        let path = self.lease_path(election);
        let mut text = String::new();
        match File::open(&path) {
            Ok(mut f) => f.read_to_string(&mut text).map_err(|e| Self::io_err(&path, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Record::default()),
            Err(e) => return Err(Self::io_err(&path, e)),
        };
        serde_json::from_str(&text)
            .map_err(|e| BackendError::Corrupt { path: path.display().to_string(), reason: e.to_string() })
    }

    fn read_locked(&self, election: &str, how: FlockArg) -> Result<Record, BackendError> {
        let _lock = self.lock(election, how)?;
        self.read(election)
    }

    /// Writes through a temporary file, fsync and rename: a reader sees the old or the new
    /// record, and a crash never loses a token that was handed out.
    fn write(&self, election: &str, record: &Record) -> Result<(), BackendError> {
        let path = self.lease_path(election);
        let tmp = self.dir.join(format!(".{election}.lease.tmp"));
        let body = serde_json::to_vec(record).expect("record serializes");
        let mut f = File::create(&tmp).map_err(|e| Self::io_err(&tmp, e))?;
        f.write_all(&body).and_then(|_| f.sync_all()).map_err(|e| Self::io_err(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Self::io_err(&path, e))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| Self::io_err(&self.dir, e))
    }

    fn observed(record: &Record, now_ms: u64) -> Observed {
        let leader = record.live_leader(now_ms).map(str::to_string);
        let remaining = leader.as_ref().map(|_| Duration::from_millis(record.expires_ms - now_ms));
        let version = (record.token as i64) * 2 + i64::from(leader.is_some());
        Observed { leader, token: record.token, remaining, version }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(FileBackend) -> Result<T, BackendError> + Send + 'static,
    ) -> Result<T, BackendError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(me)).await.expect("lease file task panicked")
    }
}

impl Backend for FileBackend {
    fn describe(&self) -> String {
        format!("file {}", self.dir.display())
    }

    async fn acquire(&self, election: &str, id: &str, ttl: Duration) -> Result<Acquired, BackendError> {
        let (election, id) = (election.to_string(), id.to_string());
        self.blocking(move |b| {
            let _lock = b.lock(&election, FlockArg::LockExclusive)?;
            let mut record = b.read(&election)?;
            let now = boottime_ms();
            if record.live_leader(now).is_some() {
                return Ok(Acquired::Lost(Self::observed(&record, now)));
            }
            record.token += 1;
            record.leader = Some(id);
            record.expires_ms = now + ttl.as_millis() as u64;
            b.write(&election, &record)?;
            Ok(Acquired::Won(Lease { election, token: record.token, handle: 0 }))
        })
        .await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool, BackendError> {
        let lease = lease.clone();
        self.blocking(move |b| {
            let _lock = b.lock(&lease.election, FlockArg::LockExclusive)?;
            let mut record = b.read(&lease.election)?;
            let now = boottime_ms();
            if record.token != lease.token || record.live_leader(now).is_none() {
                return Ok(false);
            }
            record.expires_ms = now + ttl.as_millis() as u64;
            b.write(&lease.election, &record)?;
            Ok(true)
        })
        .await
    }

    async fn release(&self, lease: &Lease) -> Result<(), BackendError> {
        let lease = lease.clone();
        self.blocking(move |b| {
            let _lock = b.lock(&lease.election, FlockArg::LockExclusive)?;
            let mut record = b.read(&lease.election)?;
            if record.token == lease.token && record.leader.is_some() {
                record.leader = None;
                record.expires_ms = 0;
                b.write(&lease.election, &record)?;
            }
            Ok(())
        })
        .await
    }

    async fn observe(&self, election: &str) -> Result<Observed, BackendError> {
        let election = election.to_string();
        self.blocking(move |b| {
            let record = b.read_locked(&election, FlockArg::LockShared)?;
            Ok(Self::observed(&record, boottime_ms()))
        })
        .await
    }

    async fn changed(&self, election: &str, since: &Observed, max: Duration) -> Result<(), BackendError> {
        let deadline = tokio::time::Instant::now() + max;
        loop {
            let now = self.observe(election).await?;
            if now.leader != since.leader || now.token != since.token {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(());
            }
            tokio::time::sleep(POLL.min(deadline - tokio::time::Instant::now())).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_leader_tokens_increase_and_expiry_frees_the_lease() {
        let dir = tempfile::tempdir().unwrap();
        let b = FileBackend::open(dir.path(), &["e".into()]).unwrap();
        let ttl = Duration::from_millis(200);
        let Acquired::Won(a) = b.acquire("e", "a", ttl).await.unwrap() else { panic!("a should win") };
        assert_eq!(a.token, 1);
        let Acquired::Lost(seen) = b.acquire("e", "b", ttl).await.unwrap() else { panic!("b must lose") };
        assert_eq!(seen.leader.as_deref(), Some("a"));
        assert!(b.renew(&a, ttl).await.unwrap());

        b.release(&a).await.unwrap();
        assert!(!b.renew(&a, ttl).await.unwrap(), "a released: its lease is gone");
        let Acquired::Won(bl) = b.acquire("e", "b", ttl).await.unwrap() else { panic!("b should win") };
        assert_eq!(bl.token, 2);

        // Let b's lease run out without renewing it.
        let since = b.observe("e").await.unwrap();
        b.changed("e", &since, Duration::from_secs(5)).await.unwrap();
        assert_eq!(b.observe("e").await.unwrap().leader, None);
        assert!(!b.renew(&bl, ttl).await.unwrap(), "an expired lease cannot be renewed");
        let Acquired::Won(c) = b.acquire("e", "c", ttl).await.unwrap() else { panic!("c should win") };
        assert_eq!(c.token, 3);
    }

    #[test]
    fn corrupt_lease_file_is_reported_at_open() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("e.lease"), "{not json").unwrap();
        let err = FileBackend::open(dir.path(), &["e".into()]).unwrap_err();
        assert!(err.contains("corrupt"), "{err}");
    }
}
