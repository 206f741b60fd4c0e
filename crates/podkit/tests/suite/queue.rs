//! `podkit queue` end to end: real worker processes over a SQLite store, killed at random.

// Tests start servers and podkit itself directly, outside any podkit reaper.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{Mode, PODKIT, Podkit, pids_running, run_plain};
use nix::sys::signal::Signal;
use podkit_testkit::{TestLeaf, assert_eventually};
use serde_json::Value;

struct Fixture {
    dir: tempfile::TempDir,
    store: String,
    _redis: Option<podkit_testkit::Server>,
}

/// Which store a scenario runs against: the same suite runs against both.
#[derive(Debug, Clone, Copy)]
enum Store {
    Sqlite,
    Redis,
}

impl Fixture {
    fn new(store: Store) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        match store {
            Store::Sqlite => {
                let store = format!("sqlite://{}", dir.path().join("q.db").display());
                Fixture { dir, store, _redis: None }
            }
            Store::Redis => {
                let redis = podkit_testkit::redis();
                let store = format!("redis://{}/0", redis.addr);
                Fixture { dir, store, _redis: Some(redis) }
            }
        }
    }

    /// `podkit queue push … -`, one item per line.
    fn push_lines(&self, queue: &str, lines: &[String]) {
        let mut child = Command::new(PODKIT)
            .args(["queue", "push", "--store", &self.store, "--queue", queue, "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(lines.join("\n").as_bytes()).unwrap();
        assert!(child.wait().unwrap().success());
    }

    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(PODKIT).args(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn status(&self) -> BTreeMap<String, Value> {
        let (code, out, err) = self.cli(&["queue", "status", "--store", &self.store, "--json"]);
        assert_eq!(code, 0, "{err}");
        let all: Vec<Value> = serde_json::from_str(&out).unwrap();
        all.into_iter().map(|q| (q["queue"].as_str().unwrap().to_string(), q)).collect()
    }

    fn worker(&self, queue: &str, extra: &[&str], cmd: &[&str]) -> Podkit {
        let mut args = vec!["queue", "work", "--store", &self.store, "--queue", queue];
        args.extend(extra);
        args.push("--");
        args.extend(cmd);
        Podkit::start(Mode::Subreaper, &args)
    }
}

fn a_two_stage_pipeline_survives_workers_killed_at_random(store: Store) {
    let f = Fixture::new(store);
    let out = f.dir.path().join("out");
    let lines: Vec<String> = (0..500).map(|i| format!("item-{i:04}")).collect();
    f.push_lines("stage1", &lines);
    let out_s = out.to_str().unwrap().to_string();
    let stage1 = |f: &Fixture| {
        f.worker(
            "stage1",
            &["--to", "stage2", "--lease", "1s", "--concurrency", "2"],
            &["sh", "-c", "{ cat {input}; echo; echo s1; } > {output}"],
        )
    };
    let stage2 = |f: &Fixture| {
        f.worker(
            "stage2",
            &["--out-dir", &out_s, "--lease", "1s", "--concurrency", "2"],
            &["sh", "-c", "cat {input} > {output} && echo s2 >> {output}"],
        )
    };
    let mut workers = vec![stage1(&f), stage1(&f), stage2(&f), stage2(&f)];

    // Chaos: SIGKILL a random worker a dozen times while the pipeline runs, starting a
    // replacement each time.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut kills = 0;
    while kills < 12 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let victim = (seed % workers.len() as u64) as usize;
        let done = |f: &Fixture| f.status().get("stage2").map_or(0, |q| q["done"].as_u64().unwrap());
        let before = done(&f);
        // Let some work happen between kills (the condition, not a sleep, paces the chaos).
        assert_eventually!(
            timeout = Duration::from_secs(60),
            done(&f) > before || f.status().get("stage1").is_some_and(|q| q["pending"] == 0),
            "no progress"
        );
        workers[victim].signal(Signal::SIGKILL);
        workers[victim].wait();
        workers[victim] = if victim < 2 { stage1(&f) } else { stage2(&f) };
        kills += 1;
    }

    // Everything drains: both stages done, exactly once.
    assert_eventually!(
        timeout = Duration::from_secs(120),
        {
            let s = f.status();
            s.get("stage2").is_some_and(|q| q["done"] == 500) && s.get("stage1").is_some_and(|q| q["done"] == 500)
        },
        "the pipeline did not drain: {:?}",
        f.status()
    );
    for w in &mut workers {
        w.signal(Signal::SIGTERM);
        assert_eq!(w.wait(), 0);
    }
    let s = f.status();
    for q in ["stage1", "stage2"] {
        assert_eq!(
            (s[q]["pending"].as_u64(), s[q]["running"].as_u64(), s[q]["dead"].as_u64()),
            (Some(0), Some(0), Some(0)),
            "{q}"
        );
    }
    let files: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert_eq!(files.len(), 500, "one output per item at the last stage");
    for e in files {
        let text = std::fs::read_to_string(e.path()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{:?}: {text:?}", e.path());
        assert!(lines[0].starts_with("item-") && lines[1] == "s1" && lines[2] == "s2", "{text:?}");
    }
}

fn a_poison_item_is_dead_lettered_while_the_others_complete(store: Store) {
    let f = Fixture::new(store);
    let lines: Vec<String> = (0..20).map(|i| if i == 7 { "poison".to_string() } else { format!("ok-{i}") }).collect();
    f.push_lines("q", &lines);
    let script = "if grep -q poison {input}; then echo 'cannot digest poison' >&2; exit 3; fi; cp {input} {output}";
    let mut w = f.worker("q", &["--max-attempts", "2", "--exit-when-empty"], &["sh", "-c", script]);
    // The batch did not fully succeed: the exit status says so, and so does a summary line.
    assert_eq!(w.wait(), 1);
    let stderr = std::fs::read_to_string(w.path("stderr")).unwrap();
    assert!(stderr.contains("drained with dead items") && stderr.contains("\"dead\":1"), "{stderr}");
    let s = f.status();
    assert_eq!((s["q"]["done"].as_u64(), s["q"]["dead"].as_u64()), (Some(19), Some(1)));
    let (code, out, _) = f.cli(&["queue", "dead", "--store", &f.store, "--queue", "q", "--json"]);
    assert_eq!(code, 0);
    let dead: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(dead[0]["attempts"], 2);
    assert_eq!(dead[0]["exit_status"], 3);
    assert_eq!(dead[0]["error"], "exit code 3");
    assert_eq!(dead[0]["stderr_tail"], "cannot digest poison\n");

    // An id that is not dead is said, and nothing is retried.
    let (code, _, err) = f.cli(&["queue", "retry", "--store", &f.store, "--queue", "q", "no-such-id"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("not dead-lettered in queue q: no-such-id"), "{err}");
    assert_eq!(f.status()["q"]["dead"], 1);
    // Retried, it dies again; purged, it is gone.
    let (_, out, _) = f.cli(&["queue", "retry", "--store", &f.store, "--queue", "q"]);
    assert!(out.contains("1 item(s)"), "{out}");
    assert_eq!(f.status()["q"]["pending"], 1);
    let (_, out, _) = f.cli(&["queue", "purge", "--store", &f.store, "--queue", "q"]);
    assert!(out.contains("20 item(s)"), "{out}");
    assert!(f.status().is_empty());
}

fn an_app_that_is_not_up_yet_costs_no_attempt(store: Store) {
    let f = Fixture::new(store);
    f.push_lines("q", &["a".into(), "b".into(), "c".into()]);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", podkit_testkit::free_port()).parse().unwrap();
    let url = format!("http://{addr}/work");
    let out = f.dir.path().join("out");
    // One attempt each: a refused connection must not use it up.
    let mut w = f.worker(
        "q",
        &["--http", &url, "--max-attempts", "1", "--out-dir", out.to_str().unwrap(), "--exit-when-empty"],
        &[],
    );
    assert_eventually!(
        w.admin().get("/readyz").body.contains("the app cannot be reached"),
        "readyz never said the app is down: {}",
        w.admin().get("/readyz").body
    );
    assert_eq!(f.status()["q"]["dead"], 0);
    let _app = TestLeaf::start_on(addr, &["--echo"]);
    assert_eq!(w.wait(), 0, "{}", std::fs::read_to_string(w.path("stderr")).unwrap());
    let s = f.status();
    assert_eq!((s["q"]["done"].as_u64(), s["q"]["dead"].as_u64()), (Some(3), Some(0)));
}

fn graceful_stop_finishes_or_releases_what_is_running(store: Store) {
    let f = Fixture::new(store);
    f.push_lines("fast", &["a".into(), "b".into()]);
    // Items that take a moment: a stop with time to spare lets them finish.
    let started = f.dir.path().join("started");
    let script = format!("touch {}; sleep 0.5; cp {{input}} {{output}}", started.display());
    let mut w = f.worker("fast", &["--concurrency", "2", "--grace", "10s"], &["sh", "-c", &script]);
    assert_eventually!(started.exists(), "no item started");
    w.signal(Signal::SIGTERM);
    assert_eq!(w.wait(), 0);
    let s = f.status();
    assert_eq!((s["fast"]["running"].as_u64(), s["fast"]["done"].as_u64()), (Some(0), Some(2)), "{s:?}");

    // An item that cannot finish within the grace period is given back, its attempt uncounted.
    f.push_lines("slow", &["z".into()]);
    let started = f.dir.path().join("started-slow");
    let script = format!("touch {}; sleep 1000", started.display());
    let mut w = f.worker("slow", &["--grace", "1s"], &["sh", "-c", &script]);
    assert_eventually!(started.exists(), "the slow item never started");
    w.signal(Signal::SIGTERM);
    assert_eq!(w.wait(), 0);
    let s = f.status();
    assert_eq!((s["slow"]["running"].as_u64(), s["slow"]["pending"].as_u64()), (Some(0), Some(1)), "{s:?}");
    assert_eq!(s["slow"]["failed_attempts"], 0);
    assert!(w.log_records("stopping: released the item for another worker").len() == 1, "{}", w.stderr());
}

fn env_ids_and_the_sidecar_form(store: Store) {
    let f = Fixture::new(store);
    let file = f.dir.path().join("report.csv");
    std::fs::write(&file, "a,b\n").unwrap();
    let file_s = file.to_str().unwrap();
    let (code, out, err) = f.cli(&["queue", "push", "--store", &f.store, "--queue", "q", "--id", "r1", file_s]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("pushed 1 new item"));
    let (_, out, _) = f.cli(&["queue", "push", "--store", &f.store, "--queue", "q", "--id", "r1", file_s]);
    assert!(out.contains("pushed 0 new item(s) to q (1 already there)"), "{out}");

    // The command sees the item's id and attempt, and its input keeps the file's name.
    let out_dir = f.dir.path().join("out");
    let out_s = out_dir.to_str().unwrap().to_string();
    let script = "echo $PODKIT_ITEM_ID $PODKIT_ATTEMPT $(basename {input}) > {output}";
    let mut w = f.worker("q", &["--out-dir", &out_s, "--exit-when-empty"], &["sh", "-c", script]);
    assert_eq!(w.wait(), 0);
    assert_eq!(std::fs::read_to_string(out_dir.join("r1")).unwrap(), "r1 1 report.csv\n");

    // --http: the input is POSTed to the app beside the worker; its answer is the output.
    let app = TestLeaf::start(&["--echo"]);
    f.push_lines("h", &["hello".into()]);
    let url = format!("{}/transform", app.url());
    let mut w = f.worker("h", &["--http", &url, "--out-dir", &out_s, "--exit-when-empty"], &[]);
    assert_eq!(w.wait(), 0);
    let produced: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| !p.ends_with("r1"))
        .collect();
    assert_eq!(produced.len(), 1);
    let echoed: Value = serde_json::from_str(&std::fs::read_to_string(&produced[0]).unwrap()).unwrap();
    assert_eq!(
        (echoed["method"].as_str(), echoed["target"].as_str(), echoed["body"].as_str()),
        (Some("POST"), Some("/transform"), Some("hello"))
    );
}

fn a_described_pipeline_runs_every_stage_until_drained(store: Store) {
    let f = Fixture::new(store);
    let out = f.dir.path().join("final");
    let file = f.dir.path().join("pipeline.yaml");
    std::fs::write(
        &file,
        format!(
            "store: {}\nstages:\n  - queue: upper\n    command: [sh, -c, 'tr a-z A-Z < {{input}} > {{output}}']\n    to: reverse\n    concurrency: 2\n  - queue: reverse\n    command: [sh, -c, 'rev < {{input}} > {{output}}']\n    out_dir: {}\n",
            f.store,
            out.display()
        ),
    )
    .unwrap();
    let lines: Vec<String> = (0..30).map(|i| format!("abc{i:02}")).collect();
    f.push_lines("upper", &lines);
    let mut p = Podkit::start(Mode::Subreaper, &["queue", "pipeline", file.to_str().unwrap()]);
    assert_eq!(p.wait(), 0, "{}", p.stderr());
    let drained = p.log_records("pipeline drained");
    assert_eq!(drained.len(), 1, "{}", p.stderr());
    assert_eq!(drained[0]["done_at_last_stage"], 30);
    let mut outputs: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()).collect();
    outputs.sort();
    assert_eq!(outputs.len(), 30);
    assert_eq!(outputs[0], "00CBA");

    std::fs::write(&file, format!("store: {}\nstages:\n  - queue: x\n    comand: [true]\n", f.store)).unwrap();
    let (code, stderr) = run_plain(&["queue", "pipeline", file.to_str().unwrap(), "--admin", "127.0.0.1:0"], &[]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("comand"), "{stderr}");
}

/// Runs each scenario once per store.
macro_rules! on_both_stores {
    ($($scenario:ident),* $(,)?) => {
        $(
            mod $scenario {
                #[test]
                fn sqlite() {
                    super::$scenario(super::Store::Sqlite);
                }
                #[test]
                fn redis() {
                    super::$scenario(super::Store::Redis);
                }
            }
        )*
    };
}

on_both_stores!(
    a_two_stage_pipeline_survives_workers_killed_at_random,
    a_poison_item_is_dead_lettered_while_the_others_complete,
    graceful_stop_finishes_or_releases_what_is_running,
    env_ids_and_the_sidecar_form,
    a_described_pipeline_runs_every_stage_until_drained,
    an_app_that_is_not_up_yet_costs_no_attempt,
);

#[test]
fn a_pipeline_that_drains_with_dead_items_exits_1() {
    let f = Fixture::new(Store::Sqlite);
    f.push_lines("first", &["ok".into(), "bad".into()]);
    let file = f.dir.path().join("pipeline.yaml");
    std::fs::write(
        &file,
        format!(
            "store: {}\nstages:\n  - queue: first\n    command: [sh, -c, '! grep -q bad \"$PODKIT_INPUT\" && cp \"$PODKIT_INPUT\" \"$PODKIT_OUTPUT\"']\n    max_attempts: 1\n    to: second\n  - queue: second\n    command: [cp, '{{input}}', '{{output}}']\n",
            f.store
        ),
    )
    .unwrap();
    let mut p = Podkit::start(Mode::Subreaper, &["queue", "pipeline", file.to_str().unwrap()]);
    assert_eq!(p.wait(), 1);
    let stderr = std::fs::read_to_string(p.path("stderr")).unwrap();
    assert!(stderr.contains("pipeline drained with dead items") && stderr.contains("first: 1"), "{stderr}");
    assert_eq!(f.status()["second"]["done"], 1);
}

#[test]
fn hostile_file_names_stay_data_in_sh_c_scripts() {
    let f = Fixture::new(Store::Sqlite);
    let inputs = f.dir.path().join("in");
    std::fs::create_dir(&inputs).unwrap();
    let names = ["a;echo INJECTED;.txt", "c d.txt", "$(touch PWNED).txt", "x\ny.txt", "`touch PWNED2`"];
    for n in names {
        std::fs::write(inputs.join(n), format!("hello {}", n.len())).unwrap();
    }
    let (code, _, err) =
        f.cli(&["queue", "push", "--store", &f.store, "--queue", "q", "--id-from-name", inputs.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let out = f.dir.path().join("out");
    let out_s = out.to_str().unwrap().to_string();
    // The README's recipe, with the placeholders inside a shell script, and the item's name as
    // data in $PODKIT_ITEM_NAME.
    let script = "tr a-z A-Z < {input} > {output} && printf '|%s' \"$PODKIT_ITEM_NAME\" >> {output}";
    let mut w = f.worker("q", &["--out-dir", &out_s, "--exit-when-empty"], &["sh", "-c", script]);
    assert_eq!(w.wait(), 0, "{}", std::fs::read_to_string(w.path("stderr")).unwrap());
    for n in names {
        let got = std::fs::read_to_string(out.join(n)).unwrap_or_else(|e| panic!("{n:?}: {e}"));
        assert_eq!(got, format!("HELLO {}|{n}", n.len()), "{n:?}");
    }
    let stderr = std::fs::read_to_string(w.path("stderr")).unwrap();
    assert!(!stderr.contains("INJECTED"), "{stderr}");
    for pwned in ["PWNED", "PWNED2"] {
        assert!(!w.path(pwned).exists() && !std::path::Path::new(pwned).exists(), "{pwned} was created");
    }
}

#[test]
fn a_sigkilled_worker_leaves_no_process_of_its_items_and_no_item_directory() {
    let f = Fixture::new(Store::Sqlite);
    let tmp = f.dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    f.push_lines("q", &["one".into(), "two".into()]);
    // Each item starts a grandchild in the background and waits on another: neither is the
    // worker's own child.
    let args = [
        "queue",
        "work",
        "--store",
        &f.store,
        "--queue",
        "q",
        "--concurrency",
        "2",
        "--lease",
        "1s",
        "--",
        "sh",
        "-c",
        "sleep 987654 & sleep 987655; cat {input} > {output}",
    ];
    let mut w = Podkit::start_with(Mode::Subreaper, &args, |c| {
        c.env("TMPDIR", &tmp);
    });
    let items_dirs = || {
        std::fs::read_dir(&tmp)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("podkit-item-"))
            .count()
    };
    assert_eventually!(
        pids_running(&["sleep", "987654"]).len() == 2 && pids_running(&["sleep", "987655"]).len() == 2,
        "the items never started"
    );
    assert_eq!(items_dirs(), 2);
    w.signal(Signal::SIGKILL);
    w.wait();
    assert_eventually!(
        pids_running(&["sleep", "987654"]).is_empty() && pids_running(&["sleep", "987655"]).is_empty(),
        "the items' processes outlived the worker: {:?} {:?}",
        pids_running(&["sleep", "987654"]),
        pids_running(&["sleep", "987655"])
    );
    assert_eventually!(items_dirs() == 0, "the items' directories (with their inputs) were left in {}", tmp.display());

    // A directory left by a worker whose shim died too is removed when a worker starts.
    let stale = tmp.join("podkit-item-stale");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join(".podkit-owner"), "999999999 1").unwrap();
    std::fs::write(stale.join("input"), "secret").unwrap();
    let out = f.dir.path().join("out");
    let args = [
        "queue",
        "work",
        "--store",
        &f.store,
        "--queue",
        "q",
        "--out-dir",
        out.to_str().unwrap(),
        "--exit-when-empty",
        "--lease",
        "1s",
        "--",
        "sh",
        "-c",
        "cat {input} > {output}",
    ];
    let mut again = Podkit::start_with(Mode::Subreaper, &args, |c| {
        c.env("TMPDIR", &tmp);
    });
    assert_eq!(again.wait(), 0);
    assert!(!stale.exists());
    assert_eq!(items_dirs(), 0);
}

#[test]
fn bad_input_gets_clear_errors() {
    let f = Fixture::new(Store::Sqlite);
    let (code, _, err) = f.cli(&["queue", "status", "--store", "postgres://x"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("expected sqlite:///PATH or redis://"), "{err}");

    let nobody = format!("redis://127.0.0.1:{}/0", podkit_testkit::free_port());
    let (code, _, err) = f.cli(&["queue", "status", "--store", &nobody]);
    assert_eq!(code, 69, "{err}");
    assert!(err.contains(&nobody), "{err}");

    let big = f.dir.path().join("big");
    std::fs::write(&big, vec![b'x'; 2048]).unwrap();
    let (code, _, err) = f.cli(&[
        "queue",
        "push",
        "--store",
        &f.store,
        "--queue",
        "q",
        "--max-item-size",
        "1024",
        big.to_str().unwrap(),
    ]);
    assert_eq!(code, 64);
    assert!(err.contains("is 2048 bytes; the limit is 1024"), "{err}");

    let (code, stderr) =
        run_plain(&["queue", "work", "--store", &f.store, "--queue", "q", "--admin", "127.0.0.1:0"], &[]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("no command given"), "{stderr}");

    let (code, _, err) = f.cli(&["queue", "push", "--store", &f.store, "--queue", "../q", "x"]);
    assert_eq!(code, 64);
    assert!(err.contains("'../q' for '--queue"), "{err}");

    // An uncreatable --out-dir is a configuration error, reported before the admin port opens.
    let admin_file = f.dir.path().join("admin");
    let (code, stderr) = run_plain(
        &[
            "queue",
            "work",
            "--store",
            &f.store,
            "--queue",
            "q",
            "--out-dir",
            "/proc/1/no-such-dir/out",
            "--admin",
            "127.0.0.1:0",
            "--admin-addr-file",
            admin_file.to_str().unwrap(),
            "--",
            "cp",
            "{input}",
            "{output}",
        ],
        &[],
    );
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("cannot create --out-dir /proc/1/no-such-dir/out"), "{stderr}");
    assert!(!admin_file.exists(), "the admin listener opened before the error");

    let unreadable = "/proc/1/nonexistent-dir/q.db";
    let (code, _, err) = f.cli(&["queue", "status", "--store", &format!("sqlite://{unreadable}")]);
    assert_eq!(code, 69, "{err}");
    assert!(err.contains(unreadable), "{err}");
}
