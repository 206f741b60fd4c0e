//! Opening new files the moment they appear.
//!
//! Scanning the globs finds every file that stays under its name for a scan interval. A writer
//! that rotates faster than that (a busy app whose logger rotates every few MiB) can create a
//! file, fill it and rename it out of the glob between two scans, and a tailer that only scans
//! never sees it at all. So the directories the globs live in are also watched (inotify), and
//! a file created or renamed under a glob is opened as soon as its event is read: from then on
//! podkit holds a descriptor, and a rename or a delete can no longer take the file's lines
//! away. The scans stay: they are what catches up after an inotify queue overflow, and what
//! finds files in directories that did not exist yet.
//!
//! The watch asks the kernel for creations and renames only (`IN_CREATE`, `IN_MOVED_FROM`,
//! `IN_MOVED_TO`). A watch that also asks for modifications (as general-purpose watchers do)
//! has the kernel queue an event on every `write()` the app makes, which slowed a writer of
//! 2,000,000 lines from about 4.5 s to about 8.7 s in `bench/logs`.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use tokio::sync::Notify;

/// Files opened by the watcher since the last scan.
type Opened = Arc<Mutex<Vec<(PathBuf, File)>>>;

/// Watched directories by watch descriptor: the directory, and whether its subdirectories are
/// watched too.
type Dirs = Arc<Mutex<HashMap<WatchDescriptor, (PathBuf, bool)>>>;

const MASK: WatchMask =
    WatchMask::CREATE.union(WatchMask::MOVED_FROM).union(WatchMask::MOVED_TO).union(WatchMask::ONLYDIR);

pub(crate) struct Watch {
    /// None when inotify is not available: scans alone find the files then.
    watches: Option<Watches>,
    inotify: Option<Inotify>,
    /// (directory, recursive) for each glob.
    roots: Vec<(PathBuf, bool)>,
    watched: HashSet<PathBuf>,
    dirs: Dirs,
    patterns: Arc<Vec<glob::Pattern>>,
    opened: Opened,
    wake: Arc<Notify>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("roots", &self.roots).field("watched", &self.watched).finish_non_exhaustive()
    }
}

/// The directory to watch for a glob: its longest literal prefix, recursively when a wildcard
/// is in a directory part (`/var/log/pods/*/*/*.log` watches `/var/log/pods` and below).
pub(crate) fn watch_dir(pattern: &str) -> (PathBuf, bool) {
    let parts: Vec<&str> = pattern.split('/').collect();
    let wild = |p: &str| p.contains(['*', '?', '[']);
    let first_wild = parts.iter().position(|p| wild(p));
    match first_wild {
        // A literal path: its directory.
        None => (Path::new(pattern).parent().unwrap_or(Path::new("/")).to_path_buf(), false),
        Some(i) => {
            let dir = parts[..i].join("/");
            let dir = if dir.is_empty() { PathBuf::from("/") } else { PathBuf::from(dir) };
            (dir, i < parts.len() - 1)
        }
    }
}

impl Watch {
    pub(crate) fn new(patterns: &[glob::Pattern]) -> Watch {
        let inotify = match Inotify::init() {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch directories for new files; finding them by scanning only");
                None
            }
        };
        Watch {
            watches: inotify.as_ref().map(Inotify::watches),
            inotify,
            roots: patterns.iter().map(|p| watch_dir(p.as_str())).collect(),
            watched: HashSet::new(),
            dirs: Dirs::default(),
            patterns: Arc::new(patterns.to_vec()),
            opened: Opened::default(),
            wake: Arc::new(Notify::new()),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Notified each time the watcher opened a new file, so a scan can take it at once.
    pub(crate) fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Starts watching the globs' directories that exist now and were not watched yet. The
    /// thread that reads the events starts with the first watch (a read with no watch would
    /// never return).
    pub(crate) fn ensure(&mut self) {
        let Some(watches) = self.watches.as_mut() else { return };
        for (dir, recursive) in &self.roots {
            if self.watched.contains(dir) || !dir.is_dir() {
                continue;
            }
            watch_tree(watches, &self.dirs, dir, *recursive);
            self.watched.insert(dir.clone());
        }
        if !self.watched.is_empty()
            && let Some(inotify) = self.inotify.take()
        {
            let reader = Reader {
                inotify,
                watches: watches.clone(),
                dirs: self.dirs.clone(),
                patterns: self.patterns.clone(),
                opened: self.opened.clone(),
                wake: self.wake.clone(),
                stop: self.stop.clone(),
                moved_from: HashSet::new(),
            };
            if let Err(e) = std::thread::Builder::new().name("podkit-logs-watch".into()).spawn(move || reader.run()) {
                tracing::warn!(error = %e, "cannot start the directory watcher; finding files by scanning only");
            }
        }
    }

    /// The files opened since the last call.
    pub(crate) fn take_opened(&self) -> Vec<(PathBuf, File)> {
        std::mem::take(&mut *self.opened.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Drop for Watch {
    /// Stops the reader: removing the watches queues `IN_IGNORED` events, which wake its read.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(watches) = self.watches.as_mut() {
            let wds: Vec<WatchDescriptor> = lock(&self.dirs).keys().cloned().collect();
            for wd in wds {
                let _ = watches.remove(wd);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Watches `dir`, and with `recursive` every directory below it.
fn watch_tree(watches: &mut Watches, dirs: &Dirs, dir: &Path, recursive: bool) {
    match watches.add(dir, MASK) {
        Ok(wd) => {
            lock(dirs).insert(wd, (dir.to_path_buf(), recursive));
        }
        Err(e) => {
            tracing::debug!(dir = %dir.display(), error = %e, "cannot watch; scanning finds its files");
            return;
        }
    }
    if recursive && let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                watch_tree(watches, dirs, &entry.path(), true);
            }
        }
    }
}

/// The thread that reads inotify events and opens the files they name.
struct Reader {
    inotify: Inotify,
    watches: Watches,
    dirs: Dirs,
    patterns: Arc<Vec<glob::Pattern>>,
    opened: Opened,
    wake: Arc<Notify>,
    stop: Arc<AtomicBool>,
    /// Rename cookies whose source path was under a glob: the file keeps being one to read to
    /// its end, whatever its new name.
    moved_from: HashSet<u32>,
}

impl Reader {
    fn run(mut self) {
        let mut buf = vec![0u8; 64 * 1024];
        while !self.stop.load(Ordering::Acquire) {
            let events: Vec<(WatchDescriptor, EventMask, u32, Option<std::ffi::OsString>)> =
                match self.inotify.read_events_blocking(&mut buf) {
                    Ok(events) => events.map(|e| (e.wd, e.mask, e.cookie, e.name.map(OsStr::to_os_string))).collect(),
                    Err(e) => {
                        tracing::warn!(error = %e, "reading directory events failed; finding files by scanning only");
                        return;
                    }
                };
            let mut any = false;
            for (wd, mask, cookie, name) in events {
                any |= self.event(wd, mask, cookie, name.as_deref());
            }
            if any {
                self.wake.notify_one();
            }
        }
    }

    /// Handles one event; true when it opened a file.
    fn event(&mut self, wd: WatchDescriptor, mask: EventMask, cookie: u32, name: Option<&OsStr>) -> bool {
        if mask.contains(EventMask::IGNORED) {
            lock(&self.dirs).remove(&wd);
            return false;
        }
        let (Some(name), Some((dir, recursive))) = (name, lock(&self.dirs).get(&wd).cloned()) else { return false };
        let path = dir.join(name);
        if mask.contains(EventMask::ISDIR) {
            if recursive && mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
                watch_tree(&mut self.watches, &self.dirs, &path, true);
                // Files created in it before its watch was in place: the next scan finds them.
            }
            return false;
        }
        let under_glob = self.patterns.iter().any(|p| p.matches_path(&path));
        if mask.contains(EventMask::MOVED_FROM) {
            if under_glob {
                if self.moved_from.len() > 1024 {
                    self.moved_from.clear(); // pairs whose other half never came (moved elsewhere)
                }
                self.moved_from.insert(cookie);
            }
            return false;
        }
        // A file created or moved under a glob, or renamed away from one (a rotation whose
        // creation went unseen: this is the last chance to hold it).
        let renamed_away = mask.contains(EventMask::MOVED_TO) && self.moved_from.remove(&cookie);
        if !(under_glob || renamed_away) {
            return false;
        }
        match File::open(&path) {
            Ok(file) if file.metadata().is_ok_and(|m| m.is_file()) => {
                lock(&self.opened).push((path, file));
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_glob_watches_its_literal_prefix() {
        assert_eq!(watch_dir("/var/log/app.log"), (PathBuf::from("/var/log"), false));
        assert_eq!(watch_dir("/var/log/*.log"), (PathBuf::from("/var/log"), false));
        assert_eq!(watch_dir("/var/log/pods/*/*/*.log"), (PathBuf::from("/var/log/pods"), true));
        assert_eq!(watch_dir("/*.log"), (PathBuf::from("/"), false));
    }
}
