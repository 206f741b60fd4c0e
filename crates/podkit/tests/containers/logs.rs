//! The log saver as a sidecar: the app container writes and rotates its log on a shared volume,
//! the sidecar container ships it, and is SIGKILLed and started again along the way. Every line
//! arrives, once.

use std::collections::BTreeMap;
use std::time::Duration;

use podkit_testkit::assert_eventually;
use podkit_testkit::docker::{Container, Network};

use crate::support::{Pod, podkit, rsyslog_image, shared_dir, tools};

#[test]
fn a_killed_and_restarted_sidecar_loses_no_line_while_the_app_rotates() {
    let net = Network::new(true);
    let (logs, saved, state) = (shared_dir(), shared_dir(), shared_dir());
    let mut pod = Pod::new(&net, &[]);
    let tools = tools();
    let lines = 3000;
    let vol = |d: &std::path::Path, at: &str| format!("{}:{at}", d.display());
    pod.add(
        "app",
        &[
            "-v", &vol(&logs, "/logs"), &tools, "sh", "-c",
            &format!("cd /logs; for i in $(seq 1 {lines}); do echo \"line $i\" >> app.log; if [ $((i % 250)) = 0 ]; then mv app.log app.log.$i; fi; if [ $((i % 10)) = 0 ]; then sleep 0.02; fi; done; touch done; sleep 100000"),
        ],
    );
    let image = podkit();
    let net_ns = pod.netns();
    let (lv, sv, stv) = (vol(&logs, "/logs"), vol(&saved, "/saved"), vol(&state, "/state"));
    let sidecar = || {
        Container::run(
            "logs",
            &[
                "--network",
                &net_ns,
                "-v",
                &lv,
                "-v",
                &sv,
                "-v",
                &stv,
                &image,
                "logs",
                "--path",
                "/logs/app.log*",
                "--sink",
                "file:///saved/app.ndjson",
                "--state-dir",
                "/state",
            ],
        )
    };
    let count = || std::fs::read_to_string(saved.join("app.ndjson")).map(|t| t.lines().count()).unwrap_or(0);
    let mut current = sidecar();
    for _ in 0..4 {
        let before = count();
        assert_eventually!(
            timeout = Duration::from_secs(30),
            count() > before + 100,
            "no progress: {}",
            current.logs()
        );
        current.kill("KILL");
        current = sidecar();
    }
    assert_eventually!(timeout = Duration::from_secs(60), logs.join("done").exists(), "the app never finished");
    let wanted: usize = lines;
    assert_eventually!(
        timeout = Duration::from_secs(60),
        count() >= wanted,
        "{} of {wanted} lines: {}",
        count(),
        current.logs()
    );
    let text = std::fs::read_to_string(saved.join("app.ndjson")).unwrap();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for record in text.lines() {
        let v: serde_json::Value = serde_json::from_str(record).unwrap();
        *seen.entry(v["line"].as_str().unwrap().to_string()).or_default() += 1;
    }
    let missing: Vec<usize> = (1..=lines).filter(|i| !seen.contains_key(&format!("line {i}"))).collect();
    let twice: Vec<&String> = seen.iter().filter(|(_, n)| **n > 1).map(|(l, _)| l).collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    assert!(twice.is_empty(), "twice: {twice:?}");
}

/// The sidecar ships over syslog to an rsyslog container it finds by name on the pod's network:
/// every line arrives, in order.
#[test]
fn the_sidecar_ships_to_an_rsyslog_container_found_by_its_name() {
    let net = Network::new(true);
    let (logs, received) = (shared_dir(), shared_dir());
    let vol = |d: &std::path::Path, at: &str| format!("{}:{at}", d.display());
    let (lv, rv) = (vol(&logs, "/logs"), vol(&received, "/out"));
    let rsyslog =
        Container::run("rsyslog", &["--network", &net.name, "--network-alias", "syslog", "-v", &rv, &rsyslog_image()]);
    let lines = 500;
    let mut pod = Pod::new(&net, &[]);
    let tools = tools();
    pod.add(
        "app",
        &[
            "-v",
            &lv,
            &tools,
            "sh",
            "-c",
            &format!("cd /logs; for i in $(seq 1 {lines}); do echo \"line $i\" >> app.log; done; sleep 100000"),
        ],
    );
    let image = podkit();
    let sidecar = pod.add(
        "logs",
        &[
            "-v",
            &lv,
            &image,
            "logs",
            "--path",
            "/logs/app.log",
            "--sink",
            "syslog+tcp://syslog:5140?app=app",
            "--state-dir",
            "/tmp",
        ],
    );
    let got = || std::fs::read_to_string(received.join("received.log")).unwrap_or_default();
    assert_eventually!(
        timeout = Duration::from_secs(60),
        got().lines().count() >= lines,
        "{} of {lines} lines; podkit: {}; rsyslog: {}",
        got().lines().count(),
        sidecar.logs(),
        rsyslog.logs()
    );
    let want: Vec<String> = (1..=lines).map(|i| format!("app line {i}")).collect();
    assert_eq!(got().lines().collect::<Vec<_>>(), want);
}
