//! The README's examples, run as a user pastes them: every shell block under one heading as one
//! bash script (`cargo build` lines left out, `./target/release/` pointing at the binaries under
//! test), which must succeed, print what the README says it prints, and leave nothing running.

// Tests start servers and podkit itself directly, outside any podkit reaper.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::PODKIT;

/// What each example must print, by the words of its heading.
const EXPECTED: &[(&str, &[&str])] = &[
    ("`podkit run`", &["tick", "podkit_run_child_", "saving state", "exit status 143"]),
    (
        "`podkit elect`",
        &[
            "\"leader\":\"replica-0\",\"token\":1",
            "replica-0 readyz: 200",
            "\"leader\":\"replica-1\",\"token\":2,\"is_leader\":true",
            "replica-1 readyz: 200",
        ],
    ),
    ("`podkit ambassador`", &["VALUE a 0 1\r\n1\r\nVALUE b 0 1\r\n2\r\nEND", "\"cache\""]),
    ("`podkit scatter`", &["[{\"shard\":2,\"score\":2},{\"shard\":1,\"score\":1}]"]),
    ("`podkit queue`", &["1 OLLEH", "2 OLLEH", "3 OLLEH", "upper"]),
    ("`podkit logs`", &["\"line\":\"line 1\"", "\"line\":\"line 4\"", "line 3"]),
    ("`podkit sync`", &["v1\n", ".worktrees/"]),
    ("`podkit adapter`", &["memcached_up 1", "orders{region=\"eu\"} 1", "checkout_count 1"]),
    ("`podkit pod`", &["CONTAINER", "leaf-1", "top: [{\"shard\":2,\"score\":20},{\"shard\":1,\"score\":10}]"]),
];

/// (heading, script) for every heading with shell blocks, but the first section's two commands.
fn examples(readme: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut heading = String::new();
    let mut block: Option<String> = None;
    for line in readme.lines() {
        if let Some(b) = block.as_mut() {
            if line.starts_with("```") {
                let script = block.take().unwrap_or_default();
                match out.last_mut() {
                    Some((h, s)) if *h == heading => s.push_str(&script),
                    _ => out.push((heading.clone(), script)),
                }
            } else if !line.starts_with("cargo build") {
                b.push_str(line);
                b.push('\n');
            }
            continue;
        }
        if let Some(h) = line.strip_prefix("### ") {
            heading = h.to_string();
        } else if line == "```sh" || line == "```bash" {
            block = Some(String::new());
        }
    }
    out.retain(|(h, _)| !h.is_empty());
    out
}

/// The processes of process group `pgrp` still alive.
fn alive_in_group(pgrp: i32) -> Vec<String> {
    let mut left = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else { continue };
        let f: Vec<&str> = after.split_whitespace().collect();
        if f.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgrp) && !matches!(f[0], "Z" | "X") {
            left.push(format!(
                "{pid} {}",
                std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default().replace('\0', " ")
            ));
        }
    }
    left
}

#[test]
fn every_readme_example_runs_as_written_and_shows_what_it_says() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap();
    let bin_dir = Path::new(PODKIT).parent().unwrap().to_str().unwrap().to_string();
    assert!(
        Path::new(&bin_dir).join("podkit-testleaf").exists(),
        "{bin_dir}/podkit-testleaf is not built: run the suite with --workspace (scripts/test does)"
    );
    let examples = examples(&readme);
    for (needle, _) in EXPECTED {
        assert!(examples.iter().any(|(h, _)| h.contains(needle)), "no README example under a heading with {needle}");
    }
    for (heading, script) in examples {
        let Some((_, expected)) = EXPECTED.iter().find(|(n, _)| heading.contains(n)) else {
            panic!("the README example under {heading:?} has no expectations in this test: add them");
        };
        let script =
            script.replace("./target/release/", &format!("{bin_dir}/")).replace("$PWD/target/release", &bin_dir);
        let tmp = tempfile::tempdir().unwrap();
        // From the repository's root, as a reader runs them (examples/… paths).
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut child = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(&root)
            .env("TMPDIR", tmp.path())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let pgrp = child.id() as i32;
        let deadline = Instant::now() + Duration::from_secs(90);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let left = alive_in_group(pgrp);
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgrp), nix::sys::signal::Signal::SIGKILL);
        let out = child.wait_with_output().unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let Some(status) = status else { panic!("{heading}: did not finish within 90 s:\n{said}") };
        assert!(status.success(), "{heading}: {status}\n{said}");
        for e in *expected {
            assert!(said.contains(e), "{heading}: expected {e:?} in\n{said}");
        }
        assert!(left.is_empty(), "{heading}: left running: {left:?}");
    }
}
