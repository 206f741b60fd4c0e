//! A supervised program's process tree: the program, everything it started, and what those
//! started after they were orphaned to podkit. Stopping, sweeping and killing one tree never
//! reaches another program's processes.
//!
//! Membership is read from /proc at the moment it is needed, by three marks, because no single
//! one survives everything a program can do:
//! - the parent chain (a child of a member is a member), which reparenting to podkit breaks;
//! - the process group (the program leads its own), which `setsid`/`setpgid` leave;
//! - a marker in the environment ([`TREE_VAR`]), which survives both and is lost only when a
//!   program clears its environment before `exec`.
//!
//! A marker names its tree exactly, so it also decides when a pid or group number was reused by
//! another tree's process.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// The environment variable that marks every process of one supervised program.
pub const TREE_VAR: &str = "PODKIT_TREE";

/// One program's tree. Cloning shares nothing but the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    marker: String,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl Tree {
    /// A tree with a marker no other tree of this podkit (or of another podkit on the host)
    /// carries.
    pub fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self { marker: format!("{}.{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)) }
    }

    /// The value of [`TREE_VAR`] for this tree's processes.
    pub fn marker(&self) -> &str {
        &self.marker
    }

    /// The live processes of this tree, given the pid of its current root (the program, which
    /// leads its process group), if any.
    pub fn members(&self, root: Option<i32>) -> Vec<i32> {
        let procs = snapshot();
        let me = std::process::id() as i32;
        let children = children(&procs);
        // Only podkit's descendants can belong to one of its trees (podkit is their reaper).
        let candidates = walk(&children, me);
        let mut seeds: Vec<i32> = Vec::new();
        for &pid in &candidates {
            let p = &procs[&pid];
            let ours = match marker_of(pid, p.env) {
                Some(m) => m == self.marker,
                None => root.is_some_and(|r| pid == r || p.pgrp == r),
            };
            if ours || root == Some(pid) {
                seeds.push(pid);
            }
        }
        // Everything below a member is a member, whatever its marker (a podkit inside the tree
        // marks its own children with its own trees).
        let mut out: HashSet<i32> = HashSet::new();
        for seed in seeds {
            if out.insert(seed) {
                out.extend(walk(&children, seed));
            }
        }
        let mut live: Vec<i32> = out.into_iter().filter(|pid| procs.get(pid).is_some_and(|p| !p.zombie)).collect();
        live.sort_unstable();
        live
    }

    /// Sends `sig` to the root's process group and to every member. Returns how many members
    /// were signalled.
    pub fn signal(&self, root: Option<i32>, sig: Signal) -> usize {
        if let Some(root) = root {
            let _ = killpg(Pid::from_raw(root), sig);
        }
        let mut n = 0;
        for pid in self.members(root) {
            if kill(Pid::from_raw(pid), sig).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// SIGKILLs the tree until none of it is left alive (zombies are left to the reaper). A
    /// process that forks while being killed is caught by the next pass. The /proc scans run on
    /// the blocking pool, so the runtime keeps serving meanwhile.
    pub async fn kill(&self, root: Option<i32>) {
        for _ in 0..200 {
            let tree = self.clone();
            let signalled = tokio::task::spawn_blocking(move || tree.signal(root, Signal::SIGKILL)).await.unwrap_or(0);
            if signalled == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tracing::error!(tree = %self.marker, "processes survived repeated SIGKILL (uninterruptible sleep?)");
    }

    /// [`Tree::members`] on the blocking pool.
    pub async fn members_async(&self, root: Option<i32>) -> Vec<i32> {
        let tree = self.clone();
        tokio::task::spawn_blocking(move || tree.members(root)).await.unwrap_or_default()
    }
}

/// SIGKILLs every live descendant of podkit, whatever tree it belongs to, until none is left:
/// for a forced exit, when podkit itself is going.
pub fn kill_everything() {
    let me = std::process::id() as i32;
    for _ in 0..200 {
        let procs = snapshot();
        let live: Vec<i32> = walk(&children(&procs), me).into_iter().filter(|pid| !procs[pid].zombie).collect();
        let mut n = 0;
        for pid in live {
            if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                n += 1;
            }
        }
        if n == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    tracing::error!("processes survived repeated SIGKILL (uninterruptible sleep?)");
}

#[derive(Debug)]
struct Proc {
    ppid: i32,
    pgrp: i32,
    /// Where the environment lies in the process' memory (see [`env_bounds`]).
    env: Option<(u64, u64)>,
    zombie: bool,
}

fn snapshot() -> HashMap<i32, Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| read_live(pid, || procfs::process::Process::new(pid).and_then(|p| p.stat()).ok()))
        .map(|s| {
            let p = Proc {
                ppid: s.ppid,
                pgrp: s.pgrp,
                env: s.env_start.zip(s.env_end),
                zombie: matches!(s.state, 'Z' | 'X'),
            };
            (s.pid, p)
        })
        .collect()
}

/// Reads something of a process, and reads it again while it fails but the process exists.
///
/// A process in the middle of `exec` can answer as if it were gone: its /proc entries give
/// ENOENT or ESRCH for a moment. A signal 0 asks the kernel whether the pid is alive without
/// going through /proc, so only a process that is really gone (or not podkit's to signal)
/// makes the read give up at once.
fn read_live<T>(pid: i32, read: impl Fn() -> Option<T>) -> Option<T> {
    let first = Instant::now();
    loop {
        if let Some(v) = read() {
            return Some(v);
        }
        if kill(Pid::from_raw(pid), None).is_err() || first.elapsed() >= GIVE_UP {
            return None;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// Each pid's children, from a snapshot.
fn children(procs: &HashMap<i32, Proc>) -> HashMap<i32, Vec<i32>> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for (&pid, p) in procs {
        children.entry(p.ppid).or_default().push(pid);
    }
    children
}

fn walk(children: &HashMap<i32, Vec<i32>>, root: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        if let Some(kids) = children.get(&pid) {
            for &kid in kids {
                out.push(kid);
                stack.push(kid);
            }
        }
    }
    out
}

/// The tree marker in `pid`'s environment, if it has one and podkit may read it.
///
/// A read without the marker is checked before it is believed, because `exec` makes
/// /proc/PID/environ lie for a moment: between its two halves the new environment is not laid
/// out yet and reads as empty, and a read that spans the switch stops short where the old
/// memory went away, maybe before the marker. Taken at its word, that would drop the process
/// from its tree for a moment, and a sweep that looked then would miss a daemon just starting.
/// So an unmarked read is believed only if the environment's bounds, read from stat before and
/// after it, held still and the read covered them whole. The bounds before the first read are
/// the snapshot's (`env_before`); those after one read serve as those before the next.
fn marker_of(pid: i32, env_before: Option<(u64, u64)>) -> Option<String> {
    let path = format!("/proc/{pid}/environ");
    let prefix = format!("{TREE_VAR}=");
    let first = Instant::now();
    let mut before = env_before;
    loop {
        let environ = read_live(pid, || std::fs::read(&path).ok())?;
        if let Some(marker) = environ.split(|&b| b == 0).find_map(|entry| entry.strip_prefix(prefix.as_bytes())) {
            return Some(String::from_utf8_lossy(marker).into_owned());
        }
        // Gone: no marker; a kernel older than 3.5 does not give the bounds: the read stands.
        let after @ (start, end) = env_bounds(pid)??;
        let whole = before == Some(after) && end != 0 && end - start == environ.len() as u64;
        if whole || first.elapsed() >= GIVE_UP {
            return None;
        }
        before = Some(after);
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// Where `pid`'s environment lies in its memory (`env_start`, `env_end`), as stat says; `None`
/// inside when the kernel does not say, and `None` outside when the process is gone.
fn env_bounds(pid: i32) -> Option<Option<(u64, u64)>> {
    let stat = read_live(pid, || procfs::process::Process::new(pid).and_then(|p| p.stat()).ok())?;
    if matches!(stat.state, 'Z' | 'X') {
        return None;
    }
    Some(stat.env_start.zip(stat.env_end))
}

/// How long a process that keeps failing to read, or reading as empty, is looked at before it
/// counts as gone or unmarked.
const GIVE_UP: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_unique() {
        assert_ne!(Tree::new(), Tree::new());
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // a process outside any tree, started as anyone would
    fn a_process_without_the_marker_is_not_a_member_without_a_root() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let tree = Tree::new();
        assert!(tree.members(None).is_empty());
        assert_eq!(tree.members(Some(child.id() as i32)), [child.id() as i32]);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Between the two halves of `exec` a process shows an empty environment; a member caught
    /// there is still a member. This one execs itself two thousand times while the tree is
    /// read again and again.
    #[test]
    #[allow(clippy::disallowed_methods)] // a marked process outside any supervision
    fn a_member_in_the_middle_of_exec_is_still_a_member() {
        let tree = Tree::new();
        let script = r#"if [ "$1" -gt 0 ]; then exec sh -c "$0" "$0" $(($1 - 1)); fi; exec sleep 1000"#;
        let argv = ["sh", "-c", script, script, "2000"].map(Into::into);
        let mut child = crate::command::command(&argv, false)
            .env(TREE_VAR, tree.marker())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // However the test ends, a failed run leaves nothing behind.
        let kill = crate::command::KillGroupOnDrop(pid);
        let mut scans = 0;
        // comm, like the rest of /proc, can fail for a moment during exec.
        while std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim() != "sleep" {
            assert!(tree.members(None).contains(&pid), "lost the member after {scans} scans");
            scans += 1;
        }
        drop(kill);
        child.wait().unwrap();
    }
}
