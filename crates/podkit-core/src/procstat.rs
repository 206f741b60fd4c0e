//! What /proc says about one process: CPU, memory, threads, descriptors, start time. Core
//! reads it for podkit's own metrics (part of every command's contract); what concerns the
//! processes podkit starts, and their trees, is in podkit-process.

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
}
