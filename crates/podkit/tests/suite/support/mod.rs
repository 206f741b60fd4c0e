//! Running the real `podkit` binary in tests.

// Tests start servers and podkit itself directly, outside any podkit reaper.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]
#![allow(dead_code)] // each test file uses a different part

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use podkit_testkit::{AdminClient, assert_eventually};

pub(crate) const PODKIT: &str = env!("CARGO_BIN_EXE_podkit");

/// Where `podkit run` runs: as PID 1 of a new PID namespace, or as an ordinary process (then it
/// registers as a subreaper).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Pid1,
    Subreaper,
}

/// One podkit process with its own directory, admin address file and captured output.
pub(crate) struct Podkit {
    child: Child,
    pub(crate) dir: tempfile::TempDir,
    mode: Mode,
    status: Option<i32>,
}

impl Podkit {
    /// Starts `podkit ARGS…` with an admin listener on a free port.
    pub(crate) fn start(mode: Mode, args: &[&str]) -> Podkit {
        Self::start_with(mode, args, |_| {})
    }

    /// Like [`start`], with a chance to change the command (environment, say).
    pub(crate) fn start_with(mode: Mode, args: &[&str], tweak: impl FnOnce(&mut Command)) -> Podkit {
        let dir = tempfile::Builder::new().prefix("podkit-test-").tempdir().unwrap();
        let addr_file = dir.path().join("admin.addr");
        let mut cmd = match mode {
            Mode::Pid1 => {
                let mut c = Command::new("unshare");
                c.args(["--pid", "--fork", "--mount-proc", PODKIT]);
                c
            }
            Mode::Subreaper => Command::new(PODKIT),
        };
        // The subcommand path (`run`, `queue work`) comes before podkit's own options.
        let split = args.iter().position(|a| a.starts_with('-')).unwrap_or(args.len());
        let (sub, rest) = args.split_at(split);
        cmd.args(sub);
        cmd.args(["--admin", "127.0.0.1:0", "--admin-addr-file"]).arg(&addr_file);
        cmd.args(["--log-format", "json"]);
        cmd.args(rest);
        cmd.env_remove("RUST_LOG");
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap());
        tweak(&mut cmd);
        let child = cmd.spawn().expect("spawn podkit");
        Podkit { child, dir, mode, status: None }
    }

    /// A path inside this test's directory.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub(crate) fn admin(&self) -> AdminClient {
        AdminClient::from_addr_file(&self.path("admin.addr"))
    }

    /// podkit's pid as seen from the test (in PID-1 mode: the child of `unshare`).
    pub(crate) fn pid(&self) -> i32 {
        let outer = self.child.id() as i32;
        match self.mode {
            Mode::Subreaper => outer,
            Mode::Pid1 => {
                let children = format!("/proc/{outer}/task/{outer}/children");
                let read = || std::fs::read_to_string(&children).unwrap_or_default();
                assert_eventually!(!read().trim().is_empty(), "unshare never started podkit");
                read().split_whitespace().next().unwrap().parse().unwrap()
            }
        }
    }

    pub(crate) fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid()), sig).expect("signal podkit");
    }

    /// Waits for podkit to exit (at most 30 s) and returns its exit status.
    pub(crate) fn wait(&mut self) -> i32 {
        if let Some(s) = self.status {
            return s;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                use std::os::unix::process::ExitStatusExt;
                let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
                self.status = Some(code);
                return code;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("podkit did not exit within 30 s\nstderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub(crate) fn stdout(&self) -> String {
        std::fs::read_to_string(self.path("stdout")).unwrap_or_default()
    }

    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(self.path("stderr")).unwrap_or_default()
    }

    /// podkit's own log records (JSON lines on stderr) whose message is `message`.
    pub(crate) fn log_records(&self, message: &str) -> Vec<serde_json::Value> {
        self.stderr()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == message)
            .collect()
    }

    /// Reads a file in this test's directory (empty if it does not exist yet).
    pub(crate) fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }
}

impl Drop for Podkit {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The pids whose command line is exactly `cmdline` (NUL-separated in /proc).
pub(crate) fn pids_running(cmdline: &[&str]) -> Vec<i32> {
    let want = cmdline.join("\0") + "\0";
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want.as_bytes()))
        .collect()
}

/// True while `pid` exists and is not a zombie.
pub(crate) fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| !s[i + 1..].trim_start().starts_with(['Z', 'X'])))
        .unwrap_or(false)
}

/// Runs podkit to completion with no admin options added, returning (status, stderr).
pub(crate) fn run_plain(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out =
        Command::new(PODKIT).args(args).envs(env.iter().copied()).stdin(Stdio::null()).output().expect("run podkit");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A one-route HTTP server: records each request line in `seen` (and in `log`, if given) and
/// answers with the status in `status` and the body in `reply`.
pub(crate) struct TestHttp {
    pub addr: std::net::SocketAddr,
    pub status: Arc<AtomicU16>,
    pub seen: Arc<Mutex<Vec<String>>>,
    /// Request bodies, in arrival order.
    pub bodies: Arc<Mutex<Vec<String>>>,
    /// Request headers (lower-cased `name: value` lines), in arrival order.
    pub headers: Arc<Mutex<Vec<Vec<String>>>>,
    /// What each request is answered with (`hello` at first).
    pub reply: Arc<Mutex<String>>,
}

impl TestHttp {
    pub(crate) fn start(log: Option<std::path::PathBuf>) -> TestHttp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(200));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let headers = Arc::new(Mutex::new(Vec::new()));
        let reply = Arc::new(Mutex::new("hello".to_string()));
        let (st, sn, bd, hd, rp) = (status.clone(), seen.clone(), bodies.clone(), headers.clone(), reply.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut first = String::new();
                if reader.read_line(&mut first).is_err() {
                    continue;
                }
                let mut len = 0usize;
                let mut these = Vec::new();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    let lower = h.trim_end().to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    these.push(lower);
                }
                hd.lock().unwrap().push(these);
                let mut body = vec![0; len];
                let _ = reader.read_exact(&mut body);
                bd.lock().unwrap().push(String::from_utf8_lossy(&body).into_owned());
                let line = first.trim().to_string();
                if let Some(log) = &log {
                    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
                    writeln!(f, "{line}").unwrap();
                }
                sn.lock().unwrap().push(line);
                let code = st.load(Ordering::SeqCst);
                let body = rp.lock().unwrap().clone();
                let _ = write!(
                    conn,
                    "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        TestHttp { addr, status, seen, bodies, headers, reply }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Runs `promtool check metrics` on `body`: whether it passed, and what it said (lint
/// complaints, or why it could not parse the body).
pub(crate) fn promtool(body: &str) -> (bool, String) {
    let promtool = podkit_testkit::require_program("promtool", "prometheus");
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}
