//! The sync sidecar fills a shared volume from a web server container's archive, or from a git
//! server container, while an app container reads it: the app never sees two versions at once.

use std::time::Duration;

use podkit_testkit::assert_eventually;
use podkit_testkit::docker::{Container, Network};

use crate::support::{Pod, git_image, podkit, podkit_git_image, shared_dir, tools};

/// A .tar.gz of a.txt and b.txt, both holding `version`.
fn archive(version: u32) -> Vec<u8> {
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for name in ["a.txt", "b.txt"] {
        let text = format!("v{version}\n");
        let mut h = tar::Header::new_gnu();
        h.set_size(text.len() as u64);
        h.set_mode(0o644);
        tar.append_data(&mut h, name, text.as_bytes()).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

#[test]
fn a_reader_never_sees_a_mixed_version_while_the_sidecar_publishes() {
    let net = Network::new(true);
    let www = shared_dir();
    let publish = |v: u32| {
        let tmp = www.join(".site.tar.gz");
        std::fs::write(&tmp, archive(v)).unwrap();
        // busybox httpd's validators have a one-second grain (and every version has the same
        // size): give each version its own time, as versions published seconds apart would.
        let when = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + u64::from(v) * 60);
        std::fs::File::options().write(true).open(&tmp).unwrap().set_modified(when).unwrap();
        std::fs::rename(&tmp, www.join("site.tar.gz")).unwrap();
    };
    publish(1);
    let tools = tools();
    let _web = Container::run(
        "web",
        &[
            "--network",
            &net.name,
            "--network-alias",
            "web",
            "-v",
            &format!("{}:/www:ro", www.display()),
            &tools,
            "httpd",
            "-f",
            "-p",
            "8080",
            "-h",
            "/www",
        ],
    );
    sync_and_read(&net, &podkit(), &["--http", "http://web:8080/site.tar.gz"], 6, publish);
}

/// Runs the sync sidecar from `image`, fetching `source`, and the reader in a pod on `net`;
/// publishes versions 2 to `last` with `publish` once the one before is read. Each version is
/// read whole, and none mixed with another.
fn sync_and_read(net: &Network, image: &str, source: &[&str], last: u32, publish: impl Fn(u32)) {
    let (srv, seen) = (shared_dir(), shared_dir());
    let mut pod = Pod::new(net, &[]);
    let srv_vol = format!("{}:/srv", srv.display());
    let mut args = vec!["-v", &srv_vol, image, "sync"];
    args.extend_from_slice(source);
    args.extend(["--root", "/srv", "--link", "site", "--period", "200ms"]);
    pod.add("sync", &args);
    let log = reader(&mut pod, &srv_vol, &seen);
    wait_for_versions(&pod, &log, 1..=1);
    for v in 2..=last {
        publish(v);
        wait_for_versions(&pod, &log, v..=v);
    }
    assert_never_mixed(&log());
}

/// The app: reads both files of the published directory, each time through one `cd`, as a
/// reader that wants one version does, and writes what it read to the log this returns.
fn reader(pod: &mut Pod, srv_vol: &str, seen: &std::path::Path) -> impl Fn() -> String + use<> {
    let tools = tools();
    pod.add(
        "app",
        &[
            "-v", srv_vol, "-v", &format!("{}:/seen", seen.display()), &tools, "sh", "-c",
            "while :; do if cd /srv/site 2>/dev/null; then echo \"$(cat a.txt) $(cat b.txt)\" >> /seen/log; cd /; fi; sleep 0.01; done",
        ],
    );
    let path = seen.join("log");
    move || std::fs::read_to_string(&path).unwrap_or_default()
}

/// Waits until the reader has read each of `versions` whole (the sidecar's logs if not).
fn wait_for_versions(pod: &Pod, log: &impl Fn() -> String, versions: std::ops::RangeInclusive<u32>) {
    for v in versions {
        let want = format!("v{v} v{v}");
        assert_eventually!(
            timeout = Duration::from_secs(30),
            log().contains(&want),
            "v{v} never read: {}",
            pod.containers[0].logs()
        );
    }
}

fn assert_never_mixed(log: &str) {
    for line in log.lines() {
        let (a, b) = line.split_once(' ').unwrap_or((line, ""));
        assert_eq!(a, b, "a mixed version was read: {line:?}");
    }
}

/// Runs the host's git in `dir`.
fn git(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("/usr/bin/git").arg("-C").arg(dir).args(args).output().unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_sync_sidecar_follows_a_git_server_container_and_never_publishes_a_mixed_commit() {
    let net = Network::new(true);
    let repos = shared_dir();
    let bare = repos.join("site.git");
    std::fs::create_dir(&bare).unwrap();
    git(&bare, &["init", "-q", "--bare", "-b", "main"]);
    let work = tempfile::tempdir().unwrap();
    git(work.path(), &["init", "-q", "-b", "main"]);
    let commit = |v: u32| {
        for name in ["a.txt", "b.txt"] {
            std::fs::write(work.path().join(name), format!("v{v}\n")).unwrap();
        }
        git(work.path(), &["add", "."]);
        git(work.path(), &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", &format!("v{v}")]);
        git(work.path(), &["push", "-q", bare.to_str().unwrap(), "main"]);
    };
    commit(1);
    let git_image = git_image();
    let _server = Container::run(
        "git",
        &[
            "--network",
            &net.name,
            "--network-alias",
            "git",
            "-v",
            &format!("{}:/repos:ro", repos.display()),
            &git_image,
            "git",
            "daemon",
            "--export-all",
            "--base-path=/repos",
            "--reuseaddr",
            "--listen=0.0.0.0",
            "--port=9418",
            "--verbose",
            "/repos",
        ],
    );
    sync_and_read(&net, &podkit_git_image(), &["--repo", "git://git/site.git", "--ref", "main"], 4, commit);
}
