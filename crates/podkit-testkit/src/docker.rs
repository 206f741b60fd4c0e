//! Docker for the container tests: images assembled FROM scratch from this machine's binaries
//! (there is no registry to pull from), private networks, and containers removed on drop.
//!
//! An image is a tar of files loaded with `docker import` and tagged by the hash of its
//! content, so a second run builds nothing. Every network and container carries the label
//! `dev.podkit.test=PID` of the test process; leftovers of a test process that is gone (killed
//! before its drops ran) are removed by the next one.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

const LABEL: &str = "dev.podkit.test";

/// Runs `docker ARGS…` and returns its output; panics, with what docker said, if it fails.
pub fn docker(args: &[&str]) -> String {
    let out = docker_output(args);
    assert!(
        out.status.success(),
        "docker {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs `docker ARGS…`, whatever its status.
pub fn docker_output(args: &[&str]) -> Output {
    Command::new("docker").args(args).stdin(Stdio::null()).output().expect("run docker")
}

/// Checks that a Docker engine answers. Without one the test fails (it never skips): the
/// machine's engine is started before the tests run.
pub fn require_docker() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let out = Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]).output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!("no Docker engine answers: {}", String::from_utf8_lossy(&o.stderr).trim()),
            Err(e) => panic!("the docker command cannot run ({e}): install docker.io and start its engine"),
        }
        remove_leftovers();
    });
}

/// Removes the containers and networks of test processes that are gone.
fn remove_leftovers() {
    for kind in ["container", "network"] {
        let list = docker(
            &[kind, "ls", "-a", "--filter", &format!("label={LABEL}"), "--format", "{{.ID}} {{.Labels}}"]
                .into_iter()
                .filter(|a| !(kind == "network" && *a == "-a"))
                .collect::<Vec<_>>(),
        );
        for line in list.lines() {
            let Some((id, labels)) = line.split_once(' ') else { continue };
            let pid = labels
                .split(',')
                .find_map(|l| l.strip_prefix(&format!("{LABEL}=")))
                .and_then(|p| p.parse::<i32>().ok());
            if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                let _ = docker_output(&[kind, "rm", "-f", id]);
            }
        }
    }
}

/// A unique name for this test process.
fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

// === images ===

/// What goes into an image built from host files.
#[derive(Debug, Default)]
pub struct ImageSpec {
    /// Programs, each copied with every library `ldd` lists for it.
    pub programs: Vec<PathBuf>,
    /// Other files: (host path, path in the image).
    pub files: Vec<(PathBuf, String)>,
    /// Files written from text: (path in the image, content, mode).
    pub texts: Vec<(String, String, u32)>,
    /// Empty directories (mode 1777, for /tmp-like use).
    pub dirs: Vec<String>,
    /// Symbolic links: (path in the image, target).
    pub links: Vec<(String, String)>,
    /// `docker import --change` lines (ENTRYPOINT, ENV, USER, …).
    pub changes: Vec<String>,
}

/// Builds (or finds, by content hash) an image named `podkit-test/NAME:HASH` from `spec`.
pub fn host_image(name: &str, spec: &ImageSpec) -> String {
    require_docker();
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    for program in &spec.programs {
        files.insert(program.to_string_lossy().into_owned(), program.clone());
        for lib in libraries(program) {
            files.insert(lib.to_string_lossy().into_owned(), lib);
        }
    }
    for (host, inside) in &spec.files {
        files.insert(inside.clone(), host.clone());
    }
    let mut hash = Sha256::new();
    for (inside, host) in &files {
        hash.update(inside.as_bytes());
        hash.update(std::fs::read(host).unwrap_or_else(|e| panic!("{}: {e}", host.display())));
    }
    for (path, text, mode) in &spec.texts {
        hash.update(format!("{path}\0{text}\0{mode}").as_bytes());
    }
    for d in &spec.dirs {
        hash.update(d.as_bytes());
    }
    for (path, target) in &spec.links {
        hash.update(format!("{path}\0{target}").as_bytes());
    }
    for c in &spec.changes {
        hash.update(c.as_bytes());
    }
    let digest = hash.finalize();
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let tag = format!("podkit-test/{name}:{hex}");
    if docker_output(&["image", "inspect", &tag]).status.success() {
        return tag;
    }
    let mut args = vec!["import".to_string()];
    for c in &spec.changes {
        args.push("--change".into());
        args.push(c.clone());
    }
    args.push("-".into());
    args.push(tag.clone());
    let mut child = Command::new("docker")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker import");
    {
        let stdin = child.stdin.take().expect("stdin");
        let mut tar = tar::Builder::new(stdin);
        tar.follow_symlinks(true);
        let mut dirs_done = std::collections::BTreeSet::new();
        let done = &mut dirs_done;
        let add_dirs = |tar: &mut tar::Builder<_>, done: &mut std::collections::BTreeSet<PathBuf>, path: &str| {
            let mut p = Path::new(path).parent();
            let mut parents = Vec::new();
            while let Some(d) = p.filter(|d| !d.as_os_str().is_empty() && *d != Path::new("/")) {
                parents.push(d.to_path_buf());
                p = d.parent();
            }
            for d in parents.into_iter().rev() {
                if done.insert(d.clone()) {
                    let mut h = tar::Header::new_gnu();
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    tar.append_data(&mut h, d.strip_prefix("/").unwrap_or(&d), std::io::empty()).expect("tar");
                }
            }
        };
        for (inside, host) in &files {
            add_dirs(&mut tar, done, inside);
            let data = std::fs::read(host).expect("read");
            let mode = std::fs::metadata(host)
                .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
                .unwrap_or(0o755);
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(mode & 0o7777);
            tar.append_data(&mut h, inside.trim_start_matches('/'), data.as_slice()).expect("tar");
        }
        for (inside, text, mode) in &spec.texts {
            add_dirs(&mut tar, done, inside);
            let mut h = tar::Header::new_gnu();
            h.set_size(text.len() as u64);
            h.set_mode(*mode);
            tar.append_data(&mut h, inside.trim_start_matches('/'), text.as_bytes()).expect("tar");
        }
        for d in &spec.dirs {
            add_dirs(&mut tar, done, d);
            if !done.insert(PathBuf::from(d)) {
                continue;
            }
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o1777);
            h.set_size(0);
            tar.append_data(&mut h, format!("{}/", d.trim_start_matches('/')), std::io::empty()).expect("tar");
        }
        for (inside, target) in &spec.links {
            add_dirs(&mut tar, done, inside);
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_size(0);
            tar.append_link(&mut h, inside.trim_start_matches('/'), target).expect("tar");
        }
        tar.into_inner().expect("tar").flush().expect("flush");
    }
    let out = child.wait_with_output().expect("docker import");
    assert!(out.status.success(), "docker import {tag}: {}", String::from_utf8_lossy(&out.stderr));
    tag
}

/// The shared libraries `ldd` lists for `program`, the dynamic loader included; none for a
/// static binary.
fn libraries(program: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(program).output().expect("ldd");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim().split(' ').next().unwrap_or(""),
            None => line.split(' ').next().unwrap_or(""),
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    libs
}

/// An image holding host programs (with their libraries) and busybox as `/bin/sh` and its
/// applets, so a test's "app" container has a shell, `nc`, `wget`, `sleep`.
pub fn tools_image() -> String {
    let busybox = crate::require_program("busybox", "busybox-static");
    let mut spec = ImageSpec { dirs: vec!["/tmp".into()], ..ImageSpec::default() };
    spec.files.push((busybox, "/bin/busybox".into()));
    // busybox runs the applet its link is named after.
    for applet in [
        "sh", "nc", "wget", "sleep", "cat", "echo", "ls", "printf", "grep", "seq", "kill", "mv", "rm", "tr", "date",
        "sync", "head", "tail", "wc", "test", "true", "false", "env", "mkdir", "touch", "sort", "uniq", "ps", "httpd",
        "hostname", "tar", "gzip", "ln", "cp", "readlink",
    ] {
        spec.links.push((format!("/bin/{applet}"), "busybox".into()));
    }
    spec.changes.push("ENV PATH=/bin".into());
    host_image("tools", &spec)
}

// === networks and containers ===

/// A user-defined bridge network, removed on drop. `internal`: no route out of it.
#[derive(Debug)]
pub struct Network {
    pub name: String,
}

impl Network {
    pub fn new(internal: bool) -> Network {
        require_docker();
        let name = unique("podkit-net");
        let label = format!("{LABEL}={}", std::process::id());
        let mut args = vec!["network", "create", "--label", &label];
        if internal {
            args.push("--internal");
        }
        args.push(&name);
        docker(&args);
        Network { name }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = docker_output(&["network", "rm", &self.name]);
    }
}

/// A container, removed (with its anonymous volumes) on drop.
#[derive(Debug)]
pub struct Container {
    pub name: String,
}

impl Container {
    /// `docker run -d --name NAME [ARGS…]` (ARGS: options, then the image and its command).
    pub fn run(prefix: &str, args: &[&str]) -> Container {
        require_docker();
        let name = unique(prefix);
        let label = format!("{LABEL}={}", std::process::id());
        let mut all = vec!["run", "-d", "--name", &name, "--label", &label];
        all.extend_from_slice(args);
        docker(&all);
        Container { name }
    }

    /// The container's address on `network`.
    pub fn ip(&self, network: &Network) -> String {
        docker(&[
            "inspect",
            "--format",
            &format!("{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}", network.name),
            &self.name,
        ])
    }

    /// What the container wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        let out = docker_output(&["logs", &self.name]);
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    /// `docker exec NAME CMD…`.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        let mut all = vec!["exec", self.name.as_str()];
        all.extend_from_slice(cmd);
        docker_output(&all)
    }

    /// Whether it is running.
    pub fn running(&self) -> bool {
        docker_output(&["inspect", "--format", "{{.State.Running}}", &self.name]).stdout.starts_with(b"true")
    }

    /// Waits for it to exit and returns its status.
    pub fn wait(&self) -> i32 {
        docker(&["wait", &self.name]).parse().unwrap_or(-1)
    }

    pub fn kill(&self, signal: &str) {
        docker(&["kill", "--signal", signal, &self.name]);
    }

    /// `docker stop -t GRACE`: SIGTERM, then SIGKILL after the grace. Returns the exit status.
    pub fn stop(&self, grace: Duration) -> i32 {
        docker(&["stop", "-t", &grace.as_secs().to_string(), &self.name]);
        self.wait()
    }

    pub fn pause(&self) {
        docker(&["pause", &self.name]);
    }

    pub fn unpause(&self) {
        docker(&["unpause", &self.name]);
    }

    pub fn disconnect(&self, network: &Network) {
        docker(&["network", "disconnect", "--force", &network.name, &self.name]);
    }

    pub fn connect(&self, network: &Network, aliases: &[&str]) {
        let mut args = vec!["network", "connect"];
        for a in aliases {
            args.push("--alias");
            args.push(a);
        }
        args.push(&network.name);
        args.push(&self.name);
        docker(&args);
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker_output(&["rm", "-f", "-v", &self.name]);
    }
}

/// The podkit image under test: `podkit:test`, which `scripts/test` builds with
/// `scripts/image --tag podkit:test` before the suite runs (a release build of the static
/// binary is too long for a test to do).
pub fn podkit_image() -> String {
    require_docker();
    let tag = "podkit:test";
    let out = docker_output(&[
        "image",
        "inspect",
        tag,
        "--format",
        "{{index .Config.Labels \"org.opencontainers.image.revision\"}}",
    ]);
    assert!(
        out.status.success(),
        "there is no {tag} image: build it with `scripts/image --tag {tag}` (scripts/test does)"
    );
    let built_from = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let head = Command::new("git").args(["rev-parse", "HEAD"]).current_dir(env!("CARGO_MANIFEST_DIR")).output();
    if let Ok(h) = head
        && h.status.success()
        && String::from_utf8_lossy(&h.stdout).trim() != built_from
    {
        eprintln!(
            "note: {tag} was built from {built_from}, not from HEAD: run scripts/image --tag {tag} to test this tree"
        );
    }
    tag.to_string()
}
