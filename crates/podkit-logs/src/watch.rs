//! Opening new files the moment they appear.
//!
//! Scanning the globs finds every file that stays under its name for a scan interval. A writer
//! that rotates faster than that (a busy app whose logger rotates every few MiB) can create a
//! file, fill it and rename it out of the glob between two scans, and a tailer that only scans
//! never sees it at all. So the directories the globs live in are also watched (inotify), and
//! a file created or renamed under a glob is opened right in the event callback: from then on
//! podkit holds a descriptor, and a rename or a delete can no longer take the file's lines
//! away. The scans stay: they are what catches up after an inotify queue overflow, and what
//! finds files in directories that did not exist yet.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::Notify;

/// Files opened by the watcher since the last scan.
type Opened = Arc<Mutex<Vec<(PathBuf, File)>>>;

pub(crate) struct Watch {
    watcher: Option<notify::RecommendedWatcher>,
    /// (directory, recursive) for each glob, and whether it is being watched.
    dirs: Vec<(PathBuf, bool)>,
    watched: HashSet<PathBuf>,
    opened: Opened,
    wake: Arc<Notify>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("dirs", &self.dirs).field("watched", &self.watched).finish_non_exhaustive()
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
        let opened: Opened = Arc::default();
        let wake = Arc::new(Notify::new());
        let (o, w, pats) = (opened.clone(), wake.clone(), patterns.to_vec());
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(event) = res else { return };
            let created =
                matches!(event.kind, EventKind::Create(_) | EventKind::Modify(notify::event::ModifyKind::Name(_)));
            if !created {
                return;
            }
            // A file renamed out of the glob (a rotation) is still one to read to its end: if
            // its creation went unseen, this is the last chance to hold it.
            let renamed_away = matches!(
                event.kind,
                EventKind::Modify(notify::event::ModifyKind::Name(notify::event::RenameMode::Both))
            ) && event.paths.first().is_some_and(|from| pats.iter().any(|p| p.matches_path(from)));
            let mut any = false;
            for (i, path) in event.paths.iter().enumerate() {
                if (pats.iter().any(|p| p.matches_path(path)) || (renamed_away && i == 1))
                    && let Ok(file) = File::open(path)
                    && file.metadata().is_ok_and(|m| m.is_file())
                {
                    o.lock().unwrap_or_else(|p| p.into_inner()).push((path.clone(), file));
                    any = true;
                }
            }
            if any {
                w.notify_one();
            }
        });
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch directories for new files; finding them by scanning only");
                None
            }
        };
        let dirs = patterns.iter().map(|p| watch_dir(p.as_str())).collect();
        Watch { watcher, dirs, watched: HashSet::new(), opened, wake }
    }

    /// Notified each time the watcher opened a new file, so a scan can take it at once.
    pub(crate) fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Starts watching directories that exist now and were not watched yet.
    pub(crate) fn ensure(&mut self) {
        let Some(watcher) = self.watcher.as_mut() else { return };
        for (dir, recursive) in &self.dirs {
            if self.watched.contains(dir) || !dir.is_dir() {
                continue;
            }
            let mode = if *recursive { RecursiveMode::Recursive } else { RecursiveMode::NonRecursive };
            match watcher.watch(dir, mode) {
                Ok(()) => {
                    self.watched.insert(dir.clone());
                }
                Err(e) => tracing::debug!(dir = %dir.display(), error = %e, "cannot watch; scanning finds its files"),
            }
        }
    }

    /// The files opened since the last call.
    pub(crate) fn take_opened(&self) -> Vec<(PathBuf, File)> {
        std::mem::take(&mut *self.opened.lock().unwrap_or_else(|p| p.into_inner()))
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
