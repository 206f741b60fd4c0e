//! Test support for podkit: real servers on free loopback ports, `assert_eventually!`, and a
//! client for the admin API.
//!
//! Servers are the real programs (memcached, redis-server, etcd, nats-server, nutcracker, rsyslog),
//! started on free loopback ports in a temporary directory and killed when dropped. A missing
//! program fails the test with the command that installs it; it never skips.

// The test kit starts servers and podkit itself as a test would, outside any podkit reaper.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod admin;
pub mod docker;
pub mod leaf;
mod servers;

pub use admin::{AdminClient, install_crypto_provider};
pub use leaf::TestLeaf;
pub use servers::{
    EtcdCluster, Server, SyslogTransport, etcd, etcd_tls, free_port, git_daemon, memcached, memcached_on, nats,
    nutcracker, prometheus, redis, redis_exporter, require_program, rsyslog, rsyslog_on, sshd,
};

/// A small deterministic generator (xorshift64) for the parsers' randomized tests: every run
/// feeds the same inputs, so a failure can be replayed.
#[derive(Debug, Clone)]
pub struct Xorshift(u64);

impl Default for Xorshift {
    fn default() -> Self {
        Xorshift(0x9E37_79B9_7F4A_7C15)
    }
}

impl Xorshift {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Appends fewer than `max` pieces of `alphabet` to `out`, each chosen at random.
    pub fn pieces(&mut self, alphabet: &[&[u8]], max: u64, out: &mut Vec<u8>) {
        for _ in 0..self.next_u64() % max {
            out.extend_from_slice(alphabet[(self.next_u64() % alphabet.len() as u64) as usize]);
        }
    }
}

/// Waits until `cond` holds, checking it every few milliseconds, and panics with the message
/// if it still does not hold at the deadline (default 10 s).
///
/// ```text
/// assert_eventually!(admin.ready(), "the program never became ready");
/// assert_eventually!(timeout = Duration::from_secs(30), log.contains("done"), "no done line: {log}");
/// ```
#[macro_export]
macro_rules! assert_eventually {
    (timeout = $timeout:expr, $cond:expr, $($msg:tt)+) => {{
        let deadline = ::std::time::Instant::now() + $timeout;
        loop {
            if $cond {
                break;
            }
            if ::std::time::Instant::now() >= deadline {
                panic!("condition not met within {:?}: {}", $timeout, format!($($msg)+));
            }
            ::std::thread::sleep(::std::time::Duration::from_millis(10));
        }
    }};
    ($cond:expr, $($msg:tt)+) => {
        $crate::assert_eventually!(timeout = ::std::time::Duration::from_secs(10), $cond, $($msg)+)
    };
}

/// Reads a file's content once it exists and is not empty, within `timeout`.
pub fn wait_for_file(path: &std::path::Path, timeout: std::time::Duration) -> String {
    let read = || std::fs::read_to_string(path).unwrap_or_default();
    assert_eventually!(timeout = timeout, !read().trim().is_empty(), "{} was not written", path.display());
    read()
}
