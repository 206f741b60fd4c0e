//! Real servers on free loopback ports.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer its first ping.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How many ports to try when another process takes the one picked first.
const PORT_ATTEMPTS: usize = 5;

/// A loopback port that was free a moment ago. The operating system picks it (port 0), so
/// parallel tests do not collide; a server that then loses the race is restarted on another.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("bind 127.0.0.1:0")
}

/// The path of `program`, or a panic that says which package provides it.
pub fn require_program(program: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin".into(), "/sbin".into()]);
    for dir in dirs {
        let candidate = dir.join(program);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("`{program}` is not installed (Debian package `{package}`): run scripts/setup");
}

// === impl Server ===

/// A running server process; killed (and its directory removed) on drop.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    /// The address clients connect to.
    pub addr: SocketAddr,
    /// Other ports the server listens on (peer, stats…), in the order the starter gave them.
    pub extra_ports: Vec<u16>,
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl Server {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The server's working directory (data, config files, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the server wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server now (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_logged(mut cmd: Command, log: &Path) -> Child {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("server log file");
    let err = out.try_clone().expect("server log file");
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    cmd.spawn().unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()))
}

fn wait_ready(server: &mut Server, ready: &dyn Fn(SocketAddr, &Path) -> bool) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(child) = server.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            server.child = None;
            return Err(format!("exited with {status}"));
        }
        if ready(server.addr, server.dir.path()) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("no answer within {START_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `program` with the arguments `args(dir, ports)` on `nports` fresh ports (the first
/// is the client port), retrying on other ports if it cannot start.
fn start(
    name: &'static str,
    program: PathBuf,
    nports: usize,
    args: &dyn Fn(&Path, &[u16]) -> Vec<String>,
    ready: &dyn Fn(SocketAddr, &Path) -> bool,
) -> Server {
    let mut last_error = String::new();
    for _ in 0..PORT_ATTEMPTS {
        let ports: Vec<u16> = (0..nports).map(|_| free_port()).collect();
        let dir = tempfile::Builder::new().prefix(&format!("podkit-{name}-")).tempdir().expect("tempdir");
        let log = dir.path().join("server.log");
        let mut cmd = Command::new(&program);
        cmd.args(args(dir.path(), &ports)).current_dir(dir.path());
        let child = spawn_logged(cmd, &log);
        let mut server = Server {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], ports[0])),
            extra_ports: ports[1..].to_vec(),
            dir,
            log,
        };
        match wait_ready(&mut server, ready) {
            Ok(()) => return server,
            Err(e) => last_error = format!("{e}\n{}", server.log()),
        }
    }
    panic!("{name} did not start: {last_error}");
}

/// Sends `request` and reads until the answer contains `expect`.
fn ping(addr: SocketAddr, request: &[u8], expect: &str) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if !request.is_empty() && s.write_all(request).is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while let Ok(n) = s.read(&mut chunk) {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if String::from_utf8_lossy(&buf).contains(expect) {
            return true;
        }
    }
    false
}

fn http_get_contains(addr: SocketAddr, path: &str, expect: &str) -> bool {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    ping(addr, req.as_bytes(), expect)
}

// === servers ===

/// A memcached server.
pub fn memcached() -> Server {
    let program = require_program("memcached", "memcached");
    start("memcached", program, 1, &|_, p| memcached_args(p[0]), &|a, _| ping(a, b"version\r\n", "VERSION"))
}

fn memcached_args(port: u16) -> Vec<String> {
    // -U 0: no UDP; -u root: memcached refuses to run as root without it.
    ["-l", "127.0.0.1", "-p", &port.to_string(), "-U", "0", "-m", "64", "-u", "root"].map(String::from).to_vec()
}

/// A memcached server on a given port (to bring one back where it was); panics if it cannot
/// start there.
pub fn memcached_on(port: u16) -> Server {
    let program = require_program("memcached", "memcached");
    let dir = tempfile::Builder::new().prefix("podkit-memcached-").tempdir().expect("tempdir");
    let log = dir.path().join("server.log");
    let mut cmd = Command::new(program);
    cmd.args(memcached_args(port));
    let child = spawn_logged(cmd, &log);
    let mut server =
        Server { child: Some(child), addr: SocketAddr::from(([127, 0, 0, 1], port)), extra_ports: vec![], dir, log };
    if let Err(e) = wait_ready(&mut server, &|a, _| ping(a, b"version\r\n", "VERSION")) {
        panic!("memcached did not start on port {port}: {e}\n{}", server.log());
    }
    server
}

/// A Redis server without persistence.
pub fn redis() -> Server {
    let program = require_program("redis-server", "redis-server");
    start(
        "redis",
        program,
        1,
        &|dir, p| {
            let port = p[0].to_string();
            let dir = dir.display().to_string();
            [
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &dir,
                "--daemonize",
                "no",
            ]
            .map(String::from)
            .to_vec()
        },
        &|a, _| ping(a, b"PING\r\n", "+PONG"),
    )
}

/// How an rsyslog test server takes connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyslogTransport {
    Tcp,
    /// TLS only (gtls), any client.
    Tls,
    /// TLS only, and the client must present a certificate the test CA signed.
    TlsClientCert,
}

/// rsyslog receiving RFC 5424 over TCP (imtcp, octet-counted or LF framing), writing each
/// message to `out` as `APP-NAME STRUCTURED-DATA MSG`, one per line. Over TLS it has a test CA
/// at `dir()/ca.pem` and a certificate for 127.0.0.1 and localhost (`server.pem`,
/// `server.key`, which a client may present too: the CA signed it).
pub fn rsyslog(out: &Path, transport: SyslogTransport) -> Server {
    let program = require_program("rsyslogd", "rsyslog");
    let out = out.to_path_buf();
    start(
        "rsyslog",
        program,
        1,
        &|dir, p| {
            if transport != SyslogTransport::Tcp {
                make_test_certificates(&require_program("openssl", "openssl"), dir);
            }
            rsyslog_args(dir, &out, p[0], transport)
        },
        &|a, _| TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok(),
    )
}

/// rsyslog (plain TCP) on a given port, writing to `out`: to bring one back where it was.
pub fn rsyslog_on(out: &Path, port: u16) -> Server {
    let program = require_program("rsyslogd", "rsyslog");
    let dir = tempfile::Builder::new().prefix("podkit-rsyslog-").tempdir().expect("tempdir");
    let log = dir.path().join("server.log");
    let mut cmd = Command::new(program);
    cmd.args(rsyslog_args(dir.path(), out, port, SyslogTransport::Tcp)).current_dir(dir.path());
    let child = spawn_logged(cmd, &log);
    let mut server =
        Server { child: Some(child), addr: SocketAddr::from(([127, 0, 0, 1], port)), extra_ports: vec![], dir, log };
    if let Err(e) = wait_ready(&mut server, &|a, _| TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok())
    {
        panic!("rsyslog did not start on port {port}: {e}\n{}", server.log());
    }
    server
}

fn rsyslog_args(dir: &Path, out: &Path, port: u16, transport: SyslogTransport) -> Vec<String> {
    let d = dir.display();
    let auth = if transport == SyslogTransport::TlsClientCert { "x509/certvalid" } else { "anon" };
    let (global_tls, module_tls) = if transport != SyslogTransport::Tcp {
        (
            format!(
                " defaultNetstreamDriver=\"gtls\" defaultNetstreamDriverCAFile=\"{d}/ca.pem\" \
                 defaultNetstreamDriverCertFile=\"{d}/server.pem\" defaultNetstreamDriverKeyFile=\"{d}/server.key\""
            ),
            format!(" streamDriver.name=\"gtls\" streamDriver.mode=\"1\" streamDriver.authMode=\"{auth}\""),
        )
    } else {
        (String::new(), String::new())
    };
    let conf = format!(
        "global(workDirectory=\"{d}\" maxMessageSize=\"256k\"{global_tls})\n\
         module(load=\"imtcp\"{module_tls})\n\
         input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{port}\")\n\
         template(name=\"received\" type=\"string\" string=\"%app-name% %structured-data% %msg%\\n\")\n\
         action(type=\"omfile\" file=\"{}\" template=\"received\")\n",
        out.display()
    );
    let conf_path = dir.join("rsyslog.conf");
    std::fs::write(&conf_path, conf).expect("write rsyslog.conf");
    ["-n", "-f", &conf_path.display().to_string(), "-i", &format!("{d}/rsyslog.pid")].map(String::from).to_vec()
}

/// `git daemon` serving every repository under `base` over git:// (read-only).
pub fn git_daemon(base: &Path) -> Server {
    let program = require_program("git", "git");
    let base = base.to_path_buf();
    start(
        "git-daemon",
        program,
        1,
        &|_, p| {
            [
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
                &format!("--port={}", p[0]),
                &format!("--base-path={}", base.display()),
                &base.display().to_string(),
            ]
            .map(String::from)
            .to_vec()
        },
        &|a, _| TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok(),
    )
}

/// An sshd on loopback that lets the current user in with the throwaway key `dir()/client_key`
/// (and nothing else). Its host key line for a known_hosts file is in `dir()/known_hosts`.
pub fn sshd() -> Server {
    let program = require_program("sshd", "openssh-server");
    let keygen = require_program("ssh-keygen", "openssh-client");
    // sshd insists on its privilege-separation directory, which only a booted system creates.
    let _ = std::fs::create_dir_all("/run/sshd");
    start(
        "sshd",
        program,
        1,
        &|dir, p| {
            let d = |f: &str| dir.join(f).display().to_string();
            for key in ["host_key", "client_key"] {
                let out = Command::new(&keygen)
                    .args(["-q", "-t", "ed25519", "-N", "", "-f", &d(key)])
                    .output()
                    .expect("run ssh-keygen");
                assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
            }
            std::fs::copy(d("client_key.pub"), d("authorized_keys")).expect("authorized_keys");
            let host = std::fs::read_to_string(d("host_key.pub")).expect("host key");
            std::fs::write(d("known_hosts"), format!("[127.0.0.1]:{} {host}", p[0])).expect("known_hosts");
            let config = format!(
                "Port {}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPidFile {}\n\
                 StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nLogLevel ERROR\n",
                p[0],
                d("host_key"),
                d("authorized_keys"),
                d("sshd.pid")
            );
            std::fs::write(d("sshd_config"), config).expect("sshd_config");
            ["-D", "-e", "-f", &d("sshd_config")].map(String::from).to_vec()
        },
        &|a, _| ping(a, b"", "SSH-2.0"),
    )
}

/// A NATS server with JetStream, its store in the server's directory.
pub fn nats() -> Server {
    let program = require_program("nats-server", "nats-server");
    start(
        "nats",
        program,
        1,
        &|dir, p| {
            let port = p[0].to_string();
            let store = dir.join("jetstream").display().to_string();
            ["-a", "127.0.0.1", "-p", &port, "-js", "-sd", &store].map(String::from).to_vec()
        },
        &|a, _| ping(a, b"", "INFO"),
    )
}

/// nutcracker (twemproxy) with the pools `config(listen_addr)` returns as YAML. Its stats port
/// is `extra_ports[0]`.
pub fn nutcracker(config: &dyn Fn(SocketAddr) -> String) -> Server {
    let program = require_program("nutcracker", "nutcracker");
    start(
        "nutcracker",
        program,
        2,
        &|dir, p| {
            let conf = dir.join("nutcracker.yml");
            std::fs::write(&conf, config(SocketAddr::from(([127, 0, 0, 1], p[0])))).expect("write nutcracker.yml");
            let conf = conf.display().to_string();
            let stats = p[1].to_string();
            ["-c", &conf, "-s", &stats, "-a", "127.0.0.1"].map(String::from).to_vec()
        },
        &|a, _| TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok(),
    )
}

fn etcd_args(name: &str, dir: &Path, client: u16, peer: u16, cluster: &str, state: &str) -> Vec<String> {
    let c = format!("http://127.0.0.1:{client}");
    let p = format!("http://127.0.0.1:{peer}");
    vec![
        "--name".into(),
        name.into(),
        "--data-dir".into(),
        dir.join(name).display().to_string(),
        "--listen-client-urls".into(),
        c.clone(),
        "--advertise-client-urls".into(),
        c,
        "--listen-peer-urls".into(),
        p.clone(),
        "--initial-advertise-peer-urls".into(),
        p,
        "--initial-cluster".into(),
        cluster.into(),
        "--initial-cluster-state".into(),
        state.into(),
        "--initial-cluster-token".into(),
        "podkit-test".into(),
        // Faster raft elections than the defaults (100 ms / 1 s), so tests that stop members
        // spend less time without a raft leader.
        "--heartbeat-interval".into(),
        "50".into(),
        "--election-timeout".into(),
        "500".into(),
    ]
}

fn etcd_healthy(a: SocketAddr) -> bool {
    http_get_contains(a, "/health", "\"health\":\"true\"")
}

/// A one-node etcd. Its peer port is `extra_ports[0]`.
pub fn etcd() -> Server {
    let program = require_program("etcd", "etcd-server");
    start(
        "etcd",
        program,
        2,
        &|dir, p| etcd_args("n0", dir, p[0], p[1], &format!("n0=http://127.0.0.1:{}", p[1]), "new"),
        &|a, _| etcd_healthy(a),
    )
}

/// A one-node etcd serving clients over TLS only, with a test CA. The CA certificate is
/// `dir()/ca.pem`. With `auth`, user `root` with password `secret` must log in.
pub fn etcd_tls(auth: bool) -> Server {
    let program = require_program("etcd", "etcd-server");
    let openssl = require_program("openssl", "openssl");
    let etcdctl = require_program("etcdctl", "etcd-client");
    let args = |dir: &Path, p: &[u16]| {
        make_test_certificates(&openssl, dir);
        let mut a = etcd_args("n0", dir, p[0], p[1], &format!("n0=http://127.0.0.1:{}", p[1]), "new");
        for (i, v) in a.iter_mut().enumerate() {
            // Client URLs become https; peers stay plain (one node).
            if i > 0 && v.starts_with(&format!("http://127.0.0.1:{}", p[0])) {
                *v = v.replacen("http://", "https://", 1);
            }
        }
        let d = |f: &str| dir.join(f).display().to_string();
        a.extend(["--cert-file".into(), d("server.pem"), "--key-file".into(), d("server.key")]);
        a
    };
    let healthy = |a: SocketAddr, dir: &Path| {
        TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok()
            && Command::new(&etcdctl)
                .env("ETCDCTL_API", "3")
                .args([format!("--endpoints=https://{a}"), format!("--cacert={}", dir.join("ca.pem").display())])
                .args(["endpoint", "health"])
                .output()
                .is_ok_and(|o| o.status.success())
    };
    let server = start("etcd-tls", program, 2, &args, &healthy);
    if auth {
        let ctl = |args: &[&str]| {
            let out = Command::new(&etcdctl)
                .env("ETCDCTL_API", "3")
                .args([
                    format!("--endpoints=https://{}", server.addr),
                    format!("--cacert={}", server.dir().join("ca.pem").display()),
                ])
                .args(args)
                .output()
                .expect("run etcdctl");
            assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        ctl(&["user", "add", "root:secret"]);
        ctl(&["auth", "enable"]);
    }
    server
}

/// A CA and a server certificate for 127.0.0.1 and localhost, written into `dir`.
fn make_test_certificates(openssl: &Path, dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new(openssl).args(args).current_dir(dir).output().expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=podkit test CA"],
    ]
    .concat());
    run(&[&["req"][..], &ec, &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]].concat());
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").expect("write san.ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
}

// === impl EtcdCluster ===

/// A three-member etcd cluster; members can be stopped and started again.
#[derive(Debug)]
pub struct EtcdCluster {
    program: PathBuf,
    dir: tempfile::TempDir,
    cluster: String,
    /// (client port, peer port) per member.
    ports: Vec<(u16, u16)>,
    members: Vec<Option<Child>>,
}

impl EtcdCluster {
    pub fn start() -> EtcdCluster {
        let program = require_program("etcd", "etcd-server");
        let dir = tempfile::Builder::new().prefix("podkit-etcd3-").tempdir().expect("tempdir");
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = EtcdCluster { program, dir, cluster, ports, members: vec![None, None, None] };
        for i in 0..3 {
            c.spawn(i, "new");
        }
        let deadline = Instant::now() + START_TIMEOUT;
        while !(0..3).all(|i| etcd_healthy(c.client_addr(i))) {
            assert!(Instant::now() < deadline, "etcd cluster did not become healthy:\n{}", c.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let (client, peer) = self.ports[i];
        let mut cmd = Command::new(&self.program);
        cmd.args(etcd_args(&format!("m{i}"), self.dir.path(), client, peer, &self.cluster, state));
        let log = self.dir.path().join(format!("m{i}.log"));
        self.members[i] = Some(spawn_logged(cmd, &log));
    }

    pub fn client_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports[i].0))
    }

    /// `host:port,host:port,host:port` of every member's client URL.
    pub fn endpoints(&self) -> String {
        (0..3).map(|i| self.client_addr(i).to_string()).collect::<Vec<_>>().join(",")
    }

    /// Kills member `i` (SIGKILL).
    pub fn stop(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a stopped member again with its data and waits until it is healthy.
    pub fn start_member(&mut self, i: usize) {
        assert!(self.members[i].is_none(), "member {i} is running");
        self.spawn(i, "existing");
    }

    pub fn healthy(&self, i: usize) -> bool {
        etcd_healthy(self.client_addr(i))
    }

    pub fn logs(&self) -> String {
        (0..3)
            .map(|i| {
                let log = std::fs::read_to_string(self.dir.path().join(format!("m{i}.log"))).unwrap_or_default();
                format!("--- m{i}\n{}", log.lines().rev().take(20).collect::<Vec<_>>().join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..3 {
            self.stop(i);
        }
    }
}

/// Debian's prometheus-redis-exporter, translating the Redis at `redis`: the adapter's peer.
/// Its /metrics is at `addr`.
pub fn redis_exporter(redis: SocketAddr) -> Server {
    let program = require_program("prometheus-redis-exporter", "prometheus-redis-exporter");
    start(
        "redis-exporter",
        program,
        1,
        &|_, p| vec![format!("--redis.addr=redis://{redis}"), format!("--web.listen-address=127.0.0.1:{}", p[0])],
        &|a, _| http_get_contains(a, "/metrics", "redis_up"),
    )
}

/// A Prometheus server scraping `targets` (HOST:PORT, path /metrics) every second. Its HTTP API
/// is at `addr`.
pub fn prometheus(targets: &[SocketAddr]) -> Server {
    let program = require_program("prometheus", "prometheus");
    let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    start(
        "prometheus",
        program,
        1,
        &|dir, p| {
            let conf = dir.join("prometheus.yml");
            let yaml = format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n  - job_name: podkit\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            );
            std::fs::write(&conf, yaml).expect("write prometheus.yml");
            vec![
                format!("--config.file={}", conf.display()),
                format!("--storage.tsdb.path={}", dir.join("data").display()),
                format!("--web.listen-address=127.0.0.1:{}", p[0]),
            ]
        },
        &|a, _| http_get_contains(a, "/-/ready", "Ready"),
    )
}
