//! What makes a log file the same file: where it lives on disk (device and inode), when that
//! inode was born, how often its content was replaced in place, and a fingerprint of its first
//! bytes.
//!
//! An inode alone is reused: delete a file, create another, and the new one often gets the old
//! number, so a tailer that trusts inodes skips the new file's head (the lines up to the old
//! offset) or reads the old one twice. The birth time (statx `btime`) tells a reused inode
//! apart; where the file system has none, the fingerprint does. A file shorter than the
//! fingerprint is fingerprinted over what it has, and the fingerprint grows with the file, so
//! two short files are never confused with each other (they differ in inode or birth) and a
//! short file that grows keeps its identity.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};

use serde::{Deserialize, Serialize};

/// How many leading bytes the fingerprint covers once the file is that long.
pub(crate) const FINGERPRINT_BYTES: u64 = 1024;

/// A file's identity as the checkpoints record it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct FileId {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    /// Birth time in nanoseconds since the epoch; 0 where the file system does not record it.
    pub(crate) born: u64,
    /// Bumped each time the file was truncated or rewritten in place (copytruncate): offsets
    /// start again from 0, so the records' ids must not repeat the earlier content's.
    pub(crate) generation: u32,
    /// How many leading bytes `fingerprint` covers (less than [`FINGERPRINT_BYTES`] while the
    /// file is shorter).
    pub(crate) fp_len: u32,
    pub(crate) fingerprint: u64,
}

/// Where a file is on disk, without reading it: enough to tell whether a path still names an
/// open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Inode {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) born: u64,
}

impl Inode {
    pub(crate) fn of(meta: &std::fs::Metadata) -> Inode {
        let born = meta
            .created()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64);
        Inode { dev: meta.dev(), ino: meta.ino(), born }
    }
}

impl FileId {
    /// Reads the identity of an open file.
    pub(crate) fn read(file: &File) -> std::io::Result<FileId> {
        let meta = file.metadata()?;
        let inode = Inode::of(&meta);
        let (fp_len, fingerprint) = fingerprint(file, meta.len().min(FINGERPRINT_BYTES))?;
        Ok(FileId { dev: inode.dev, ino: inode.ino, born: inode.born, generation: 0, fp_len, fingerprint })
    }

    pub(crate) fn inode(&self) -> Inode {
        Inode { dev: self.dev, ino: self.ino, born: self.born }
    }

    /// Whether `file` (of this inode) still starts with the bytes this identity was taken
    /// over. `false` means its content was replaced in place.
    pub(crate) fn same_head(&self, file: &File) -> std::io::Result<bool> {
        if self.fp_len == 0 {
            return Ok(true);
        }
        let (len, fp) = fingerprint(file, u64::from(self.fp_len))?;
        Ok(len == self.fp_len && fp == self.fingerprint)
    }

    /// Extends the fingerprint over more of the file once it has grown. The bytes it already
    /// covered are read again with the new ones, and the fingerprint grows only if they are
    /// unchanged: a file rewritten in the meantime keeps its old fingerprint, so the rewrite
    /// is still seen, instead of the new content taking over the old identity.
    pub(crate) fn grow(&mut self, file: &File, size: u64) -> std::io::Result<()> {
        let old = u64::from(self.fp_len);
        if old < FINGERPRINT_BYTES && size > old {
            let head = read_head(file, size.min(FINGERPRINT_BYTES))?;
            if head.len() as u64 > old && xxhash_rust::xxh3::xxh3_64(&head[..old as usize]) == self.fingerprint {
                self.fp_len = head.len() as u32;
                self.fingerprint = xxhash_rust::xxh3::xxh3_64(&head);
            }
        }
        Ok(())
    }

    /// The identity of this file's new content after it was truncated or rewritten in place.
    pub(crate) fn next_generation(&self, file: &File) -> std::io::Result<FileId> {
        let size = file.metadata()?.len();
        let (fp_len, fingerprint) = fingerprint(file, size.min(FINGERPRINT_BYTES))?;
        Ok(FileId { generation: self.generation + 1, fp_len, fingerprint, ..*self })
    }

    /// A short stable key for record ids and metrics: the same file (and generation) always
    /// gets the same key, across restarts and podkit versions (xxh3 is a fixed algorithm,
    /// unlike std's hasher).
    pub(crate) fn key(&self) -> String {
        let mut buf = [0u8; 28];
        buf[..8].copy_from_slice(&self.dev.to_le_bytes());
        buf[8..16].copy_from_slice(&self.ino.to_le_bytes());
        buf[16..24].copy_from_slice(&self.born.to_le_bytes());
        buf[24..].copy_from_slice(&self.generation.to_le_bytes());
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&buf))
    }
}

/// The xxh3 of the first `len` bytes of `file` (fewer if it is shorter), and how many it covered.
pub(crate) fn fingerprint(file: &File, len: u64) -> std::io::Result<(u32, u64)> {
    let head = read_head(file, len)?;
    Ok((head.len() as u32, xxhash_rust::xxh3::xxh3_64(&head)))
}

/// The first `len` bytes of `file`, fewer if it is shorter.
fn read_head(file: &File, len: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_short_file_keeps_its_identity_as_it_grows_and_loses_it_when_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let mut w = File::create(&path).unwrap();
        w.write_all(b"one\n").unwrap();
        let r = File::open(&path).unwrap();
        let mut id = FileId::read(&r).unwrap();
        assert_eq!(id.fp_len, 4);
        w.write_all(&vec![b'x'; 2000]).unwrap();
        assert!(id.same_head(&r).unwrap(), "growing keeps the head");
        id.grow(&r, 2004).unwrap();
        assert_eq!(u64::from(id.fp_len), FINGERPRINT_BYTES);
        assert!(id.same_head(&r).unwrap());
        // copytruncate: the same inode, new content.
        w.set_len(0).unwrap();
        std::fs::write(&path, b"two\n").unwrap();
        assert!(!id.same_head(&r).unwrap());
        let next = id.next_generation(&r).unwrap();
        assert_eq!((next.generation, next.inode()), (1, id.inode()));
        assert_ne!(next.key(), id.key(), "a new generation has new record ids");
    }

    #[test]
    fn two_files_with_the_same_short_content_are_two_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"same\n").unwrap();
        std::fs::write(dir.path().join("b"), b"same\n").unwrap();
        let a = FileId::read(&File::open(dir.path().join("a")).unwrap()).unwrap();
        let b = FileId::read(&File::open(dir.path().join("b")).unwrap()).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_ne!(a, b);
        assert_ne!(a.key(), b.key());
    }
}
