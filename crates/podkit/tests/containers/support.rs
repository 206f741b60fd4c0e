//! What the container tests share: the images, a pod, and small clients.

#![allow(dead_code)] // each test file uses a different part

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use podkit_testkit::docker::{Container, ImageSpec, Network, host_image, podkit_image, tools_image};
use podkit_testkit::require_program;

/// The podkit image under test.
pub(crate) fn podkit() -> String {
    podkit_image()
}

/// The tools image: busybox's shell and applets.
pub(crate) fn tools() -> String {
    tools_image()
}

/// A server image from this machine's binary (and its libraries).
pub(crate) fn server_image(name: &str, program: &str, package: &str) -> String {
    let path = require_program(program, package);
    host_image(name, &ImageSpec { programs: vec![path], dirs: vec!["/tmp".into()], ..ImageSpec::default() })
}

pub(crate) fn memcached_image() -> String {
    server_image("memcached", "memcached", "memcached")
}

/// A memcached container on `net`, known there as `alias`, run as an unprivileged user.
pub(crate) fn memcached(net: &Network, alias: &str) -> Container {
    Container::run(
        "memcached",
        &[
            "--network",
            &net.name,
            "--network-alias",
            alias,
            "--user",
            "65534:65534",
            &memcached_image(),
            "/usr/bin/memcached",
            "-l",
            "0.0.0.0",
            "-p",
            "11211",
            "-U",
            "0",
            "-m",
            "16",
        ],
    )
}

/// A pod: the infra container holding the network namespace, on `net` (with `aliases`).
pub(crate) struct Pod {
    pub(crate) infra: Container,
    pub(crate) containers: Vec<Container>,
}

impl Pod {
    pub(crate) fn new(net: &Network, aliases: &[&str]) -> Pod {
        let mut args = vec!["--network", &net.name];
        for a in aliases {
            args.push("--network-alias");
            args.push(a);
        }
        let tools = tools();
        args.extend(["--init", &tools, "sleep", "100000000"]);
        Pod { infra: Container::run("infra", &args), containers: Vec::new() }
    }

    /// `--network container:INFRA`, for a container joining the pod.
    pub(crate) fn netns(&self) -> String {
        format!("container:{}", self.infra.name)
    }

    /// Adds a container to the pod; `args` are docker run's options, the image and its command.
    pub(crate) fn add(&mut self, prefix: &str, args: &[&str]) -> &Container {
        let net = self.netns();
        let mut all = vec!["--network", net.as_str()];
        all.extend_from_slice(args);
        self.containers.push(Container::run(prefix, &all));
        self.containers.last().expect("just added")
    }

    pub(crate) fn ip(&self, net: &Network) -> String {
        self.infra.ip(net)
    }
}

/// A file with `text` in a directory that lives as long as the test (to mount into a container).
pub(crate) fn file(name: &str, text: &str) -> PathBuf {
    let dir = tempfile::Builder::new().prefix("podkit-ctest-").tempdir().unwrap().keep();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    // Readable by the containers' unprivileged users.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    p
}

/// Sends memcache text commands to `addr` and reads `answers` lines that end an answer
/// (`END`, `STORED`, an error…).
pub(crate) fn memcache(addr: &str, commands: &str) -> String {
    let mut s = match TcpStream::connect(addr) {
        Ok(s) => s,
        // Not listening (yet): an answer no check takes for success.
        Err(e) => return format!("cannot connect to {addr}: {e}"),
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(commands.as_bytes()).unwrap();
    s.write_all(b"quit\r\n").unwrap();
    let mut out = String::new();
    let _ = BufReader::new(s).read_to_string(&mut out);
    out
}

/// GET over HTTP/1.0 without a client library (the body).
pub(crate) fn http_get(addr: &str, path: &str) -> (u16, Vec<u8>) {
    let mut s = match TcpStream::connect(addr) {
        Ok(s) => s,
        // Not listening (yet): status 0, and why.
        Err(e) => return (0, format!("cannot connect to {addr}: {e}").into_bytes()),
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let code = status.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
    }
    let mut body = Vec::new();
    let _ = r.read_to_end(&mut body);
    (code, body)
}

pub(crate) fn redis_image() -> String {
    server_image("redis", "redis-server", "redis-server")
}

/// A Redis container on `net`, known there as `alias`.
pub(crate) fn redis(net: &Network, alias: &str) -> Container {
    Container::run(
        "redis",
        &[
            "--network",
            &net.name,
            "--network-alias",
            alias,
            "--user",
            "65534:65534",
            &redis_image(),
            "/usr/bin/redis-server",
            "--bind",
            "0.0.0.0",
            "--port",
            "6379",
            "--save",
            "",
            "--dir",
            "/tmp",
            "--protected-mode",
            "no",
        ],
    )
}

/// A directory on the host, writable by the containers' users, mounted into containers as a
/// shared volume; it lives as long as the test.
pub(crate) fn shared_dir() -> PathBuf {
    let dir = tempfile::Builder::new().prefix("podkit-cvol-").tempdir().unwrap().keep();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    dir
}

/// The podkit binary of the image under test, copied out of it (once per image).
pub(crate) fn podkit_binary() -> PathBuf {
    let image = podkit();
    let id = podkit_testkit::docker::docker(&["image", "inspect", &image, "--format", "{{.Id}}"]);
    let id = id.trim().trim_start_matches("sha256:");
    let path = std::env::temp_dir().join(format!("podkit-image-{}", &id[..16]));
    if !path.exists() {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let name = format!("podkit-copy-{}", std::process::id());
        podkit_testkit::docker::docker(&["create", "--name", &name, &image]);
        let out = podkit_testkit::docker::docker_output(&["cp", &format!("{name}:/podkit"), tmp.to_str().unwrap()]);
        podkit_testkit::docker::docker(&["rm", &name]);
        assert!(out.status.success(), "docker cp: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::rename(&tmp, &path).unwrap();
    }
    path
}

/// Debian's git, with its libraries; the daemon and the exec path git runs it from.
fn git_spec() -> ImageSpec {
    let (git, daemon) = (PathBuf::from("/usr/bin/git"), PathBuf::from("/usr/lib/git-core/git-daemon"));
    for p in [&git, &daemon] {
        assert!(p.exists(), "{} is missing: install Debian's git (scripts/setup does)", p.display());
    }
    ImageSpec {
        programs: vec![git, daemon],
        dirs: vec!["/tmp".into()],
        texts: vec![
            (
                "/etc/passwd".into(),
                "root:x:0:0:root:/tmp:/bin/false\nnonroot:x:65532:65532:nonroot:/tmp:/bin/false\n".into(),
                0o644,
            ),
            ("/etc/group".into(), "root:x:0:\nnonroot:x:65532:\n".into(), 0o644),
        ],
        changes: vec!["ENV PATH=/usr/bin:/usr/lib/git-core".into(), "ENV HOME=/tmp".into()],
        ..ImageSpec::default()
    }
}

/// A git server image: `git daemon` from this machine's git.
pub(crate) fn git_image() -> String {
    host_image("git", &git_spec())
}

/// The podkit binary of the image under test beside Debian's git, as a user builds an image
/// for `podkit sync --repo` (podkit's own image has no git): ENTRYPOINT /podkit, user 65532.
pub(crate) fn podkit_git_image() -> String {
    let mut spec = git_spec();
    spec.files.push((podkit_binary(), "/podkit".into()));
    spec.changes.extend(["ENTRYPOINT [\"/podkit\"]".into(), "USER 65532:65532".into()]);
    host_image("podkit-git", &spec)
}

/// rsyslog from this machine's package, with the modules a plain TCP input needs, taking RFC
/// 5424 over TCP on port 5140 and writing `APP-NAME MSG` lines to `/out/received.log` (mount a
/// shared directory there).
pub(crate) fn rsyslog_image() -> String {
    let modules = "/usr/lib/x86_64-linux-gnu/rsyslog";
    let rsyslogd = require_program("rsyslogd", "rsyslog");
    let entrypoint =
        format!(r#"ENTRYPOINT ["{}", "-n", "-f", "/etc/rsyslog.conf", "-i", "/tmp/rsyslog.pid"]"#, rsyslogd.display());
    let mut programs = vec![rsyslogd];
    programs.extend(
        ["imtcp", "lmnet", "lmnetstrms", "lmnsd_ptcp", "lmtcpsrv"].map(|m| PathBuf::from(format!("{modules}/{m}.so"))),
    );
    let conf = concat!(
        // Names of senders are not looked up: the network has no reverse DNS to wait for.
        "global(workDirectory=\"/tmp\" net.enableDNS=\"off\")\n",
        "module(load=\"imtcp\")\n",
        "input(type=\"imtcp\" port=\"5140\")\n",
        "template(name=\"received\" type=\"string\" string=\"%app-name% %msg%\\n\")\n",
        "action(type=\"omfile\" file=\"/out/received.log\" template=\"received\")\n",
    );
    host_image(
        "rsyslog",
        &ImageSpec {
            programs,
            texts: vec![("/etc/rsyslog.conf".into(), conf.into(), 0o644)],
            dirs: vec!["/tmp".into()],
            changes: vec![entrypoint],
            ..ImageSpec::default()
        },
    )
}
