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
use std::time::Duration;

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
            let ours = match marker_of(pid) {
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
    zombie: bool,
}

fn snapshot() -> HashMap<i32, Proc> {
    let Ok(all) = procfs::process::all_processes() else {
        return HashMap::new();
    };
    all.flatten()
        .filter_map(|p| p.stat().ok())
        .map(|s| (s.pid, Proc { ppid: s.ppid, pgrp: s.pgrp, zombie: matches!(s.state, 'Z' | 'X') }))
        .collect()
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
fn marker_of(pid: i32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{TREE_VAR}=");
    environ
        .split(|&b| b == 0)
        .find_map(|entry| entry.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

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
}
