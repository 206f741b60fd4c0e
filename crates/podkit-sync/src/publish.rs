//! Publishing a version: git-sync's contract. Versions live in `ROOT/.worktrees/NAME`;
//! `ROOT/LINK` is a symlink to the current one (relative, so it resolves in any container that
//! mounts the volume elsewhere), switched by one `rename(2)` of a new link over the old. With
//! `--copy`, `LINK` is a real directory, swapped with the new copy by one
//! `renameat2(RENAME_EXCHANGE)`. Either way a reader sees the old version or the new one,
//! never a mix, and a crash at any point leaves a complete version published.
//!
//! Which versions are complete is recorded in `ROOT/.podkit-sync.json`, written durably before
//! the switch (naming the version being published) and after it. At start, a publish that
//! was under way is finished (the switch is done again: it is idempotent), and anything under
//! `.worktrees` the file does not list, and any temporary link or copy, is what a crash left
//! behind: it is removed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const STATE_FILE: &str = ".podkit-sync.json";
const VERSIONS: &str = ".worktrees";
/// Prefix of the temporary names beside the link.
const TMP: &str = ".podkit-tmp-";

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct State {
    /// Complete versions, the published one first.
    versions: Vec<Version>,
    /// A complete version whose publish was under way: the link may point at it or not yet.
    #[serde(default)]
    publishing: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Version {
    pub(crate) name: String,
    /// When it was published (RFC 3339).
    pub(crate) published_at: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Publisher {
    root: PathBuf,
    link: PathBuf,
    keep: usize,
    copy: bool,
    state: State,
}

impl Publisher {
    /// Opens (creating) `root`, and removes what an interrupted run left. Returns the names of
    /// the leftovers removed.
    pub(crate) fn open(root: &Path, link: &Path, keep: usize, copy: bool) -> io::Result<(Publisher, Vec<String>)> {
        fs::create_dir_all(root.join(VERSIONS))?;
        let state = match fs::read(root.join(STATE_FILE)) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", root.join(STATE_FILE).display()))
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(e),
        };
        if let Some(dir) = link.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut p = Publisher { root: root.to_path_buf(), link: link.to_path_buf(), keep, copy, state };
        // A root another tool (git-sync) published into, or a link switched just before a
        // crash: the version the link points at is the published one.
        if let Some(name) = p.linked_name()
            && p.version_dir(&name).is_dir()
            && p.current().is_none_or(|v| v.name != name)
        {
            p.state.versions.retain(|v| v.name != name);
            p.state.versions.insert(0, Version { name, published_at: now() });
        }
        let mut removed = Vec::new();
        if let Some(dir) = p.link.parent() {
            for e in fs::read_dir(dir)?.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(TMP) {
                    remove_any(&e.path())?;
                    removed.push(name);
                }
            }
        }
        let listed = |p: &Publisher, name: &str| {
            p.state.versions.iter().any(|v| v.name == name) || p.state.publishing.as_deref() == Some(name)
        };
        for e in fs::read_dir(root.join(VERSIONS))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !listed(&p, &name) {
                remove_any(&e.path())?;
                removed.push(name);
            }
        }
        // A listed version whose directory is gone (removed by hand) is forgotten.
        p.state.versions.retain(|v| p.root.join(VERSIONS).join(&v.name).is_dir());
        if let Some(name) = p.state.publishing.clone() {
            if p.version_dir(&name).is_dir() {
                tracing::info!(version = %name, "finishing the publish a stop interrupted");
                p.publish(&name)?;
            } else {
                p.state.publishing = None;
                p.save()?;
            }
        }
        Ok((p, removed))
    }

    /// Where version `name` lives (or is to be written).
    pub(crate) fn version_dir(&self, name: &str) -> PathBuf {
        self.root.join(VERSIONS).join(name)
    }

    /// The directory holding every version.
    pub(crate) fn versions_dir(&self) -> PathBuf {
        self.root.join(VERSIONS)
    }

    /// The published version.
    pub(crate) fn current(&self) -> Option<&Version> {
        self.state.versions.first()
    }

    /// The versions known to be whole (published now or before).
    pub(crate) fn complete(&self) -> Vec<String> {
        self.state.versions.iter().map(|v| v.name.clone()).collect()
    }

    /// The version the link points at, by its target's last component.
    fn linked_name(&self) -> Option<String> {
        let target = fs::read_link(&self.link).ok()?;
        Some(target.file_name()?.to_string_lossy().into_owned())
    }

    /// Publishes the complete version `name` (in [`Publisher::version_dir`]) and returns the
    /// names of the old versions removed beyond `--keep`.
    pub(crate) fn publish(&mut self, name: &str) -> io::Result<Vec<String>> {
        self.state.publishing = Some(name.to_string());
        self.save()?;
        self.switch(name)?;
        self.state.publishing = None;
        self.state.versions.retain(|v| v.name != name);
        self.state.versions.insert(0, Version { name: name.to_string(), published_at: now() });
        let mut removed = Vec::new();
        while self.state.versions.len() > self.keep + 1 {
            let old = self.state.versions.pop().expect("longer than keep + 1");
            removed.push(old.name);
        }
        self.save()?;
        for name in &removed {
            // The publish is done; a version that cannot be removed now is an orphan the next
            // start removes.
            if let Err(e) = remove_any(&self.version_dir(name)) {
                tracing::warn!(version = %name, error = %e, "cannot remove an old version");
            }
        }
        Ok(removed)
    }

    /// Points the link at `name` (or swaps its copy in), in one step. Idempotent.
    fn switch(&self, name: &str) -> io::Result<()> {
        let dir = self.link.parent().unwrap_or(Path::new("/")).to_path_buf();
        // git writes a checkout without fsync: the version is made durable before anything
        // can point at it.
        nix::unistd::syncfs(fs::File::open(self.version_dir(name))?).map_err(io::Error::from)?;
        let tmp = if self.copy {
            let tmp = dir.join(format!("{TMP}copy-{name}"));
            remove_any(&tmp)?;
            copy_tree(&self.version_dir(name), &tmp)?;
            sync_tree_dir(&tmp)?;
            tmp
        } else {
            let tmp = dir.join(format!("{TMP}link-{name}"));
            remove_any(&tmp)?;
            std::os::unix::fs::symlink(relative_target(&dir, &self.version_dir(name)), &tmp)?;
            tmp
        };
        match fs::symlink_metadata(&self.link) {
            // A link or a directory, whichever this and the previous mode made: exchanged in
            // one step, so even a switch between --copy and links is atomic.
            Ok(_) => {
                exchange(&tmp, &self.link)?;
                fs::File::open(&dir)?.sync_all()?;
                remove_any(&tmp)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::rename(&tmp, &self.link)?,
            Err(e) => return Err(e),
        }
        fs::File::open(&dir)?.sync_all()
    }

    fn save(&self) -> io::Result<()> {
        podkit_core::write_durably(
            &self.root.join(STATE_FILE),
            &serde_json::to_vec_pretty(&self.state).expect("the state serializes"),
        )
    }
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// `target` as seen from `from` (both absolute): a relative path, as git-sync writes it, so
/// the link resolves wherever the volume is mounted.
fn relative_target(from: &Path, target: &Path) -> PathBuf {
    let (f, t): (Vec<_>, Vec<_>) = (from.components().collect(), target.components().collect());
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    out
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Swaps two directories in one step.
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    renameat2(AT_FDCWD, a, AT_FDCWD, b, RenameFlags::RENAME_EXCHANGE).map_err(io::Error::from)
}

/// Copies a version's tree (files, directories, symlinks as links, modes), leaving out the
/// worktree's `.git` file: a copy is content only.
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir(to)?;
    fs::set_permissions(to, fs::metadata(from)?.permissions())?;
    for e in fs::read_dir(from)? {
        let e = e?;
        if e.file_name() == ".git" {
            continue;
        }
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let t = e.file_type()?;
        if t.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
        } else if t.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// Makes the copy durable before it is swapped in: every file, then every directory.
fn sync_tree_dir(dir: &Path) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            sync_tree_dir(&e.path())?;
        } else if t.is_file() {
            fs::File::open(e.path())?.sync_all()?;
        }
    }
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(p: &Publisher, name: &str, content: &str) {
        let d = p.version_dir(name);
        fs::create_dir_all(d.join("sub")).unwrap();
        fs::write(d.join("sub/file"), content).unwrap();
    }

    #[test]
    fn the_link_moves_to_each_new_version_and_keeps_n_old_ones() {
        let root = tempfile::tempdir().unwrap();
        let link = root.path().join("current");
        let (mut p, _) = Publisher::open(root.path(), &link, 1, false).unwrap();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            version(&p, name, &format!("v{i}"));
            let removed = p.publish(name).unwrap();
            assert_eq!(fs::read_to_string(link.join("sub/file")).unwrap(), format!("v{i}"));
            assert_eq!(removed, if i == 2 { vec!["a".to_string()] } else { vec![] });
        }
        assert_eq!(fs::read_link(&link).unwrap(), Path::new(".worktrees/c"), "relative: it resolves anywhere");
        assert!(!p.version_dir("a").exists());
        assert!(p.version_dir("b").exists());
    }

    #[test]
    fn a_crash_leaves_the_published_version_and_the_leftovers_are_removed() {
        let root = tempfile::tempdir().unwrap();
        let link = root.path().join("current");
        let (mut p, _) = Publisher::open(root.path(), &link, 1, false).unwrap();
        version(&p, "a", "old");
        p.publish("a").unwrap();
        // Killed while writing version b and the new link.
        version(&p, "b", "half");
        std::os::unix::fs::symlink(".worktrees/b", root.path().join(format!("{TMP}link-b"))).unwrap();
        drop(p);
        let (p, removed) = Publisher::open(root.path(), &link, 1, false).unwrap();
        assert_eq!(fs::read_to_string(link.join("sub/file")).unwrap(), "old");
        assert_eq!(p.current().unwrap().name, "a");
        assert!(removed.contains(&"b".to_string()) && removed.len() == 2, "{removed:?}");
        assert!(!p.version_dir("b").exists());
    }

    #[test]
    fn a_publish_interrupted_after_the_switch_is_finished_at_the_next_start() {
        let root = tempfile::tempdir().unwrap();
        let link = root.path().join("current");
        for copy in [false, true] {
            let (mut p, _) = Publisher::open(root.path(), &link, 1, copy).unwrap();
            let (a, b) = (format!("a{copy}"), format!("b{copy}"));
            version(&p, &a, "old");
            p.publish(&a).unwrap();
            version(&p, &b, "new");
            // Killed between the switch and the state's last save: the state still says
            // "publishing b", the link may already point at it.
            p.state.publishing = Some(b.clone());
            p.save().unwrap();
            p.switch(&b).unwrap();
            drop(p);
            let (p, _) = Publisher::open(root.path(), &link, 1, copy).unwrap();
            assert_eq!(p.current().unwrap().name, b, "copy={copy}");
            assert_eq!(fs::read_to_string(link.join("sub/file")).unwrap(), "new");
            assert!(p.version_dir(&b).is_dir() && p.version_dir(&a).is_dir());
        }
    }

    #[test]
    fn links_outside_the_root_are_relative_too() {
        assert_eq!(
            relative_target(Path::new("/srv/www"), Path::new("/data/root/.worktrees/x")),
            Path::new("../../data/root/.worktrees/x")
        );
        assert_eq!(
            relative_target(Path::new("/data/root"), Path::new("/data/root/.worktrees/x")),
            Path::new(".worktrees/x")
        );
    }

    #[test]
    fn copy_mode_publishes_a_real_directory_swapped_in_one_step() {
        let root = tempfile::tempdir().unwrap();
        let link = root.path().join("site");
        let (mut p, _) = Publisher::open(root.path(), &link, 0, true).unwrap();
        version(&p, "a", "one");
        fs::write(p.version_dir("a").join(".git"), "gitdir: …").unwrap();
        p.publish("a").unwrap();
        version(&p, "b", "two");
        p.publish("b").unwrap();
        assert!(fs::symlink_metadata(&link).unwrap().is_dir());
        assert_eq!(fs::read_to_string(link.join("sub/file")).unwrap(), "two");
        assert!(!link.join(".git").exists(), "a copy is content only");
        assert!(!p.version_dir("a").exists(), "keep 0");
        let leftovers: Vec<_> = fs::read_dir(root.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(TMP))
            .collect();
        assert!(leftovers.is_empty());
    }
}
