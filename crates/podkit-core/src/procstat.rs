//! What /proc says about a process: CPU, memory, threads, descriptors, start time, and its
//! descendants.

use std::collections::HashMap;

use procfs::process::Process;

/// A snapshot of one process, as exported on `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub threads: i64,
    pub open_fds: u64,
    /// Seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

/// Reads `pid`'s stats; `None` if it has gone (or /proc is not mounted).
pub fn stats(pid: i32) -> Option<ProcStats> {
    let proc = Process::new(pid).ok()?;
    let stat = proc.stat().ok()?;
    let ticks = procfs::ticks_per_second() as f64;
    let page = procfs::page_size();
    let boot = procfs::boot_time_secs().ok()? as f64;
    Some(ProcStats {
        cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
        resident_bytes: stat.rss * page,
        virtual_bytes: stat.vsize,
        threads: stat.num_threads,
        open_fds: proc.fd_count().map(|n| n as u64).unwrap_or(0),
        start_time_seconds: boot + stat.starttime as f64 / ticks,
    })
}

/// Every live descendant of `root` (children, their children, …), found by walking parent
/// links in /proc. Zombies are included: they are reaped, not killed, but a caller may want to
/// know they exist.
pub fn descendants(root: i32) -> Vec<i32> {
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for proc in all.flatten() {
        if let Ok(stat) = proc.stat() {
            children.entry(stat.ppid).or_default().push(stat.pid);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_stats_are_plausible() {
        let s = stats(std::process::id() as i32).expect("own /proc entry");
        assert!(s.resident_bytes > 0);
        assert!(s.threads >= 1);
        assert!(s.open_fds >= 3);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(s.start_time_seconds <= now + 1.0 && s.start_time_seconds > now - 86_400.0 * 365.0);
    }

    #[test]
    fn finds_children_and_grandchildren() {
        let mut child = std::process::Command::new("sh").args(["-c", "sleep 30 & wait"]).spawn().unwrap();
        let me = std::process::id() as i32;
        let pid = child.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let found = loop {
            let d = descendants(me);
            if d.contains(&pid) && d.len() >= 2 {
                break d;
            }
            assert!(std::time::Instant::now() < deadline, "grandchild never appeared: {d:?}");
            std::thread::yield_now();
        };
        assert!(found.contains(&pid));
        for p in descendants(pid) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::Signal::SIGKILL);
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
