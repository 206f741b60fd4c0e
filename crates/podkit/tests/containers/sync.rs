//! The sync sidecar fills a shared volume from a web server container's archive while an app
//! container reads it: the app never sees two versions at once.

use std::time::Duration;

use podkit_testkit::assert_eventually;
use podkit_testkit::docker::{Container, Network};

use crate::support::{Pod, podkit, shared_dir, tools};

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
    let (www, srv, seen) = (shared_dir(), shared_dir(), shared_dir());
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
    let mut pod = Pod::new(&net, &[]);
    let image = podkit();
    let srv_vol = format!("{}:/srv", srv.display());
    pod.add(
        "sync",
        &[
            "-v",
            &srv_vol,
            &image,
            "sync",
            "--http",
            "http://web:8080/site.tar.gz",
            "--root",
            "/srv",
            "--link",
            "site",
            "--period",
            "200ms",
        ],
    );
    // The app reads both files of the published directory, each time through one `cd`, as a
    // reader that wants one version does.
    pod.add(
        "app",
        &[
            "-v", &srv_vol, "-v", &format!("{}:/seen", seen.display()), &tools, "sh", "-c",
            "while :; do if cd /srv/site 2>/dev/null; then echo \"$(cat a.txt) $(cat b.txt)\" >> /seen/log; cd /; fi; sleep 0.01; done",
        ],
    );
    let log = || std::fs::read_to_string(seen.join("log")).unwrap_or_default();
    assert_eventually!(
        timeout = Duration::from_secs(30),
        log().contains("v1 v1"),
        "v1 never read: {}",
        pod.containers[0].logs()
    );
    for v in 2..=6 {
        publish(v);
        let want = format!("v{v} v{v}");
        assert_eventually!(
            timeout = Duration::from_secs(30),
            log().contains(&want),
            "v{v} never read: {}",
            pod.containers[0].logs()
        );
    }
    for line in log().lines() {
        let (a, b) = line.split_once(' ').unwrap_or((line, ""));
        assert_eq!(a, b, "a mixed version was read: {line:?}");
    }
}
