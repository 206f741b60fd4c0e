//! `podkit logs` end to end: the real binary following files that a writer rotates while it
//! runs, killed with SIGKILL and started again; every sequence number written must be in the
//! file sink's output exactly once.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::{Mode, Podkit, run_plain};
use nix::sys::signal::Signal;
use podkit_testkit::assert_eventually;

/// Appends lines `seq N …` for every N in `seqs`.
fn append(path: &Path, seqs: std::ops::Range<u32>) {
    let mut f = std::io::BufWriter::new(OpenOptions::new().create(true).append(true).open(path).unwrap());
    for n in seqs {
        writeln!(f, "seq {n:08} {}", "x".repeat(180)).unwrap();
    }
    f.flush().unwrap();
}

/// Sequence number → how many times it is in the NDJSON output (all rotated parts).
fn delivered(out: &Path) -> BTreeMap<u32, u32> {
    let mut counts = BTreeMap::new();
    let dir = out.parent().unwrap();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(out.file_name().unwrap().to_str().unwrap()) || name.ends_with(".marks") {
            continue;
        }
        for line in std::fs::read_to_string(entry.path()).unwrap_or_default().lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            if let Some(n) = v["line"].as_str().and_then(|l| l.get(4..12)).and_then(|s| s.parse().ok()) {
                *counts.entry(n).or_insert(0) += 1;
            }
        }
    }
    counts
}

#[track_caller]
fn assert_exactly_once(counts: &BTreeMap<u32, u32>, n: u32) {
    let missing = (0..n).filter(|i| !counts.contains_key(i)).count();
    let doubled: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).map(|(i, _)| *i).take(10).collect();
    assert!(missing == 0 && doubled.is_empty(), "{missing} of {n} lines lost, doubled: {doubled:?}…");
}

struct Setup {
    _dir: tempfile::TempDir,
    logs: PathBuf,
    state: PathBuf,
    out: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let out = dir.path().join("out").join("saved.ndjson");
    Setup { logs, state: dir.path().join("state"), out, _dir: dir }
}

fn start(s: &Setup, glob: &str, extra: &[&str]) -> Podkit {
    let path = format!("{}/{glob}", s.logs.display());
    let sink = format!("file://{}", s.out.display());
    let mut args = vec!["logs", "--path", &path, "--state-dir", s.state.to_str().unwrap(), "--sink", &sink];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--rotate-wait", "1s", "--scan-interval", "200ms"]);
    let p = Podkit::start(Mode::Subreaper, &args);
    // Ready: the directories are watched, so files created from now on are all seen.
    assert_eventually!(p.admin().ready(), "never ready: {:?}\n{}", p.admin().not_ready_reasons(), p.stderr());
    p
}

fn wait_for(s: &Setup, n: u32, p: &Podkit) {
    assert_eventually!(
        timeout = Duration::from_secs(60),
        delivered(&s.out).len() as u32 >= n,
        "{} of {n} lines delivered, missing {:?}…\n{}",
        delivered(&s.out).len(),
        {
            let d = delivered(&s.out);
            (0..n).filter(|i| !d.contains_key(i)).take(20).collect::<Vec<_>>()
        },
        p.stderr()
    );
}

#[test]
fn rename_rotation_at_full_speed_loses_and_doubles_nothing() {
    let s = setup();
    let mut p = start(&s, "app.log", &[]);
    let log = s.logs.join("app.log");
    // logrotate's default (rename, create) every 5,000 lines, as fast as the writer goes; the
    // rotated names are outside the glob.
    for part in 0..10u32 {
        append(&log, part * 5000..(part + 1) * 5000);
        std::fs::rename(&log, s.logs.join(format!("app.log.{part}"))).unwrap();
    }
    append(&log, 50_000..51_000);
    wait_for(&s, 51_000, &p);
    assert_exactly_once(&delivered(&s.out), 51_000);
    let files = p.admin().get("/files").json();
    let sink = &files[format!("file:{}", s.out.display())];
    assert_eventually!(
        p.admin().get("/files").json()[format!("file:{}", s.out.display())]["files"].as_array().map(Vec::len)
            == Some(1),
        "rotated files are closed once read: {sink}"
    );
    assert_eq!(p.admin().metric_sum("podkit_logs_lost_bytes_total"), 0.0);
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait(), 0, "{}", p.stderr());
}

#[test]
fn copytruncate_with_the_copies_in_the_glob_loses_and_doubles_nothing() {
    let s = setup();
    let mut p = start(&s, "app.log*", &[]);
    let log = s.logs.join("app.log");
    for part in 0..5u32 {
        append(&log, part * 4000..(part + 1) * 4000);
        // logrotate copytruncate: copy, then truncate the original in place.
        std::fs::copy(&log, s.logs.join(format!("app.log.{part}"))).unwrap();
        OpenOptions::new().write(true).open(&log).unwrap().set_len(0).unwrap();
    }
    append(&log, 20_000..21_000);
    wait_for(&s, 21_000, &p);
    assert_exactly_once(&delivered(&s.out), 21_000);
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait(), 0, "{}", p.stderr());
}

#[test]
fn kill_9_in_the_middle_then_a_restart_delivers_every_line_once() {
    let s = setup();
    let log = s.logs.join("app.log");
    append(&log, 0..100_000);
    let mut p = start(&s, "app.log", &["--batch-records", "500"]);
    assert_eventually!(
        timeout = Duration::from_secs(60),
        delivered(&s.out).len() > 20_000,
        "nothing delivered: {}",
        p.stderr()
    );
    p.signal(Signal::SIGKILL);
    assert_eq!(p.wait(), 128 + 9);
    // Rotated and written to while podkit was down.
    std::fs::rename(&log, s.logs.join("app.log.1")).unwrap();
    append(&log, 100_000..110_000);
    let mut p = start(&s, "app.log", &["--batch-records", "500"]);
    wait_for(&s, 110_000, &p);
    assert_exactly_once(&delivered(&s.out), 110_000);
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait(), 0, "{}", p.stderr());
}

#[test]
fn a_stop_and_start_resumes_where_it_was() {
    let s = setup();
    let log = s.logs.join("app.log");
    append(&log, 0..1000);
    let mut p = start(&s, "app.log", &[]);
    wait_for(&s, 1000, &p);
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait(), 0, "{}", p.stderr());
    append(&log, 1000..2000);
    let mut p = start(&s, "app.log", &[]);
    wait_for(&s, 2000, &p);
    let files = p.admin().get("/files").json();
    let f = &files[format!("file:{}", s.out.display())]["files"][0];
    assert_eq!(f["offset"], f["size"], "{files}");
    assert_eq!(f["lag"], 0);
    assert_exactly_once(&delivered(&s.out), 2000);
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait(), 0);
}

#[test]
fn a_glob_that_matches_nothing_runs_and_says_so() {
    let s = setup();
    let p = start(&s, "none-*.log", &[]);
    let admin = p.admin();
    assert_eventually!(admin.ready(), "not ready: {:?}", admin.not_ready_reasons());
    assert_eventually!(
        !p.log_records("no file matches the paths yet; looking again on every scan").is_empty(),
        "no warning: {}",
        p.stderr()
    );
    // A file that appears later is picked up.
    append(&s.logs.join("none-1.log"), 0..10);
    wait_for(&s, 10, &p);
}

#[test]
fn bad_configuration_exits_64_before_starting() {
    let cases: &[(&[&str], &str)] = &[
        (&["logs", "--path", "/tmp/x/*.log", "--sink", "kafka://h:1"], "unknown sink scheme kafka"),
        (&["logs", "--path", "relative/*.log"], "give an absolute path"),
        (&["logs", "--path", "/tmp/[x.log"], "not a glob"),
        (&["logs", "--path", "/tmp/x/*.log", "--state-dir", "/dev/null/state"], "--state-dir /dev/null/state"),
        (
            &["logs", "--path", "/tmp/x/*.log", "--state-dir", "/tmp", "--sink", "file:///dev/null/out.ndjson"],
            "cannot open /dev/null/out.ndjson",
        ),
        (&["logs", "--path", "/tmp/x/*.log", "--label", "novalue"], "expected KEY=VALUE"),
    ];
    for (args, says) in cases {
        let mut argv = args.to_vec();
        argv.extend_from_slice(&["--admin", "127.0.0.1:0"]);
        let (status, stderr) = run_plain(&argv, &[]);
        assert_eq!(status, 64, "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?} should say {says:?}: {stderr}");
    }
}

#[test]
fn a_damaged_checkpoint_stops_the_start_and_names_the_file() {
    let s = setup();
    std::fs::create_dir_all(&s.state).unwrap();
    let mut p = start(&s, "app.log", &[]);
    assert_eventually!(p.admin().ready(), "never ready");
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait(), 0);
    let cp = std::fs::read_dir(&s.state).unwrap().flatten().next().unwrap().path();
    std::fs::write(&cp, b"{ half").unwrap();
    let path = format!("{}/app.log", s.logs.display());
    let sink = format!("file://{}", s.out.display());
    let (status, stderr) = run_plain(
        &["logs", "--admin", "127.0.0.1:0", "--path", &path, "--state-dir", s.state.to_str().unwrap(), "--sink", &sink],
        &[],
    );
    assert_eq!(status, 64, "{stderr}");
    assert!(stderr.contains(&cp.display().to_string()), "{stderr}");
}

/// (line, offset) of every record in the file sink's output.
fn saved_records(out: &Path) -> Vec<(String, u64)> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| (v["line"].as_str().unwrap_or_default().to_string(), v["offset"].as_u64().unwrap_or(u64::MAX)))
        .collect()
}

#[test]
fn multiline_records_are_joined_and_survive_a_restart_in_their_middle() {
    let s = setup();
    let log = s.logs.join("app.log");
    let head = "INFO start\nERROR boom\n  at a.b(C.java:1)\n  at d.e(F.java:2)\nINFO after\n  at the end\n";
    std::fs::write(&log, head).unwrap();
    let mut p = start(&s, "app.log", &["--multiline-start", r"^\S", "--multiline-timeout", "300ms"]);
    // The last record is saved once the file has been idle for the timeout.
    assert_eventually!(saved_records(&s.out).len() == 3, "{:?}\n{}", saved_records(&s.out), p.stderr());
    let expected = [
        ("INFO start".to_string(), 0),
        ("ERROR boom\n  at a.b(C.java:1)\n  at d.e(F.java:2)".to_string(), 11),
        ("INFO after\n  at the end".to_string(), head.find("INFO after").unwrap() as u64),
    ];
    assert_eq!(saved_records(&s.out), expected);
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait(), 0, "{}", p.stderr());

    // Stopped in the middle of a record (a timeout too long to end it): the next start reads
    // it again from its first line.
    let mut p = start(&s, "app.log", &["--multiline-start", r"^\S", "--multiline-timeout", "1h"]);
    write_all(&log, b"ERROR two\n  at x\n");
    assert_eventually!(
        p.admin().get("/files").json()[format!("file:{}", s.out.display())]["files"][0]["size"]
            == serde_json::json!(head.len() + 17),
        "the file's growth never seen: {}",
        p.stderr()
    );
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait(), 0, "{}", p.stderr());
    assert_eq!(saved_records(&s.out).len(), 3, "an open record is not saved");
    write_all(&log, b"  at y\nINFO three\n");
    let mut p = start(&s, "app.log", &["--multiline-start", r"^\S", "--multiline-timeout", "300ms"]);
    assert_eventually!(saved_records(&s.out).len() == 5, "{:?}\n{}", saved_records(&s.out), p.stderr());
    let saved = saved_records(&s.out);
    assert_eq!(saved[..3], expected);
    assert_eq!(saved[3], ("ERROR two\n  at x\n  at y".to_string(), head.len() as u64));
    assert_eq!(saved[4], ("INFO three".to_string(), head.len() as u64 + 24));
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait(), 0, "{}", p.stderr());
}

fn write_all(path: &Path, data: &[u8]) {
    OpenOptions::new().append(true).open(path).unwrap().write_all(data).unwrap();
}

#[test]
fn a_bad_multiline_option_exits_64_before_starting() {
    let cases: &[(&[&str], &str)] = &[
        (&["--multiline-start", "(unclosed"], "--multiline-start"),
        (&["--multiline-timeout", "2s"], "--multiline-start"),
        (&["--multiline-start", "^x", "--multiline-timeout", "0s"], "--multiline-timeout"),
    ];
    for (extra, says) in cases {
        let mut argv = vec!["logs", "--path", "/tmp/x/*.log", "--admin", "127.0.0.1:0"];
        argv.extend_from_slice(extra);
        let (status, stderr) = run_plain(&argv, &[]);
        assert_eq!(status, 64, "{extra:?}: {stderr}");
        assert!(stderr.contains(says), "{extra:?} should name {says:?}: {stderr}");
    }
}
