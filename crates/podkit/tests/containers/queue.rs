//! Queue workers in three containers over Redis in a container, killed at random with
//! `docker kill`: every item's output exists exactly once, with the right content.

use std::time::Duration;

use podkit_testkit::assert_eventually;
use podkit_testkit::docker::{Container, Network, docker};

use crate::support::{podkit, redis, shared_dir};

#[test]
fn workers_killed_at_random_leave_every_output_exactly_once() {
    let net = Network::new(true);
    let r = redis(&net, "queue-redis");
    assert_eventually!(r.logs().contains("Ready to accept connections"), "redis: {}", r.logs());
    let image = podkit();
    let store = "redis://queue-redis:6379/0";
    let out = shared_dir();
    let items = 150;
    let lines: String = (0..items).map(|i| format!("item-{i:03}\n")).collect();
    let input = shared_dir().join("items.txt");
    std::fs::write(&input, lines).unwrap();
    let mount_in = format!("{}:/in/items.txt:ro", input.display());
    // One item per line of stdin.
    docker(&[
        "run",
        "--rm",
        "--network",
        &net.name,
        "-v",
        &mount_in,
        "--entrypoint",
        "/bin/sh",
        "-v",
        "/bin/busybox:/bin/sh:ro",
        &image,
        "-c",
        &format!("/podkit queue push --store {store} --queue q - < /in/items.txt"),
    ]);
    let mount_out = format!("{}:/out", out.display());
    let worker = || {
        Container::run(
            "worker",
            &[
                "--network",
                &net.name,
                "-v",
                &mount_out,
                "-v",
                "/bin/busybox:/bin/sh:ro",
                &image,
                "queue",
                "work",
                "--store",
                store,
                "--queue",
                "q",
                "--lease",
                "2s",
                "--concurrency",
                "2",
                "--out-dir",
                "/out",
                "--",
                "/bin/sh",
                "-c",
                "sleep 0.05; { cat \"$PODKIT_INPUT\"; echo; echo done; } > \"$PODKIT_OUTPUT\"",
            ],
        )
    };
    let mut workers = [worker(), worker(), worker()];
    let files = || {
        std::fs::read_dir(&out)
            .unwrap()
            .filter(|e| !e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.'))
            .count()
    };
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..6 {
        let before = files();
        assert_eventually!(timeout = Duration::from_secs(60), files() > before || files() == items, "no progress");
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let victim = (seed % 3) as usize;
        workers[victim].kill("KILL");
        workers[victim] = worker();
    }
    let status =
        || docker(&["run", "--rm", "--network", &net.name, &image, "queue", "status", "--store", store, "--json"]);
    assert_eventually!(
        timeout = Duration::from_secs(120),
        {
            let s: serde_json::Value = serde_json::from_str(&status()).unwrap();
            s[0]["done"] == items
        },
        "not drained: {}",
        status()
    );
    let s: serde_json::Value = serde_json::from_str(&status()).unwrap();
    assert_eq!(
        (s[0]["dead"].as_u64(), s[0]["pending"].as_u64(), s[0]["running"].as_u64()),
        (Some(0), Some(0), Some(0)),
        "{s}"
    );
    let mut seen = Vec::new();
    for e in std::fs::read_dir(&out).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{:?}: {text:?}", e.path());
        assert!(lines[0].starts_with("item-") && lines[1] == "done", "{text:?}");
        seen.push(lines[0].to_string());
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), items, "one output per item");
}
