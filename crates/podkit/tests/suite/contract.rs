//! The contract every long-running command keeps, checked the same way for each: health,
//! readiness with reasons, metrics a real Prometheus parser accepts in both formats, logs,
//! config, a CPU profile, a graceful SIGTERM, and a bad flag that exits 64 naming it. A new
//! command is added to `commands()` when it lands.

// Tests start servers and podkit itself directly, outside any podkit reaper.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use crate::support::{Mode, Podkit, promtool, run_plain};
use nix::sys::signal::Signal;
use podkit_testkit::assert_eventually;

/// Each command with arguments that start it on embedded defaults in `dir`.
fn commands(dir: &std::path::Path) -> Vec<(&'static str, Vec<String>)> {
    let d = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let pools = d("nutcracker.yml");
    std::fs::write(&pools, "cache:\n  listen: 127.0.0.1:0\n  servers:\n    - 127.0.0.1:1:1\n").unwrap();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        ("run", s(&["run", "--", "sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"])),
        ("elect", s(&["elect", "--backend", &format!("file://{}", d("leases")), "--listen", "127.0.0.1:0"])),
        ("ambassador", s(&["ambassador", "-c", &pools, "-s", "0"])),
        ("logs", s(&["logs", "--path", &format!("{}/*.log", d("logs")), "--state-dir", &d("logs-state")])),
        ("scatter", s(&["scatter", "--leaves", "http://127.0.0.1:1", "--listen", "127.0.0.1:0"])),
        ("adapter", s(&["adapter", "--memcached", "127.0.0.1:1", "--listen", "127.0.0.1:0"])),
        ("sync", s(&["sync", "--repo", &format!("file://{}", d("no-repo.git")), "--root", &d("sync-root")])),
        (
            "queue",
            s(&[
                "queue",
                "work",
                "--store",
                &format!("sqlite://{}", d("q.db")),
                "--queue",
                "q",
                "--",
                "cp",
                "{input}",
                "{output}",
            ]),
        ),
    ]
}

fn promtool_check(what: &str, body: &str) {
    let (ok, said) = promtool(body);
    assert!(ok && said.trim().is_empty(), "{what}: promtool check metrics: {said}\n{body}");
}

#[test]
fn every_command_keeps_the_admin_contract() {
    let dir = tempfile::tempdir().unwrap();
    for (name, args) in commands(dir.path()) {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut p = Podkit::start(Mode::Subreaper, &argv);
        let admin = p.admin();
        assert!(admin.healthy(), "{name}: /healthz");

        let ready = admin.get("/readyz");
        assert!(ready.status == 200 || ready.status == 503, "{name}: /readyz {}", ready.status);
        if ready.status == 503 {
            let reasons = ready.json()["reasons"].as_array().cloned().unwrap_or_default();
            assert!(!reasons.is_empty(), "{name}: a 503 /readyz says why: {}", ready.body);
        }

        // The classic text format (what curl and promtool get) and OpenMetrics (what
        // Prometheus asks for) both pass Prometheus' own parser.
        let text = admin.metrics();
        assert!(text.contains("podkit_build_info{"), "{name}: {text}");
        promtool_check(&format!("{name} text format"), &text);
        let om = reqwest::blocking::Client::new()
            .get(format!("{}/metrics", admin.base()))
            .header("accept", "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3")
            .send()
            .unwrap();
        let ct = om.headers()["content-type"].to_str().unwrap().to_string();
        let om = om.text().unwrap();
        assert!(ct.starts_with("application/openmetrics-text"), "{name}: {ct}");
        assert!(om.trim_end().ends_with("# EOF"), "{name}: OpenMetrics ends with # EOF");

        let logs = admin.get("/logs?limit=5");
        assert_eq!(logs.status, 200, "{name}: /logs");
        assert!(logs.json().is_array(), "{name}: /logs is a JSON array");
        let config = admin.config();
        assert!(config.is_object(), "{name}: /config is a JSON object: {config}");

        let profile = admin.get("/debug/pprof/profile?seconds=1");
        assert_eq!(profile.status, 200, "{name}: profile");

        p.signal(Signal::SIGTERM);
        assert_eq!(p.wait(), 0, "{name}: SIGTERM drains and exits 0\n{}", p.stderr());

        let mut bad = argv.clone();
        let at = bad.iter().position(|a| *a == "--").unwrap_or(bad.len());
        bad.insert(at, "--no-such-flag");
        let (code, stderr) = run_plain(&bad, &[]);
        assert_eq!(code, 64, "{name}: a bad flag exits 64: {stderr}");
        assert!(stderr.contains("--no-such-flag"), "{name}: the error names the flag: {stderr}");
    }
}

#[test]
fn every_url_option_rejects_a_non_http_url_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("q.db").display());
    for args in [
        vec!["run", "--pre-stop-http", "ftp://h/x", "--", "true"],
        vec!["elect", "--notify-url", "ftp://h/x"],
        vec!["scatter", "--leaves", "http://127.0.0.1:1", "--merge-http", "ftp://h/x"],
        vec!["queue", "work", "--store", &db, "--queue", "q", "--http", "ftp://h/x"],
        vec!["sync", "--http", "ftp://h/x.tar.gz", "--root", "/tmp/x"],
        vec!["sync", "--repo", "file:///x", "--root", "/tmp/x", "--webhook-url", "ftp://h/x"],
    ] {
        let (code, stderr) = run_plain(&args, &[]);
        assert_eq!(code, 64, "{args:?}: {stderr}");
        assert!(stderr.contains("scheme \"ftp\" is not supported"), "{args:?}: {stderr}");
    }
}

#[test]
fn mistakes_get_errors_that_name_what_is_wrong() {
    // A misspelt log level would have silenced every log.
    let (code, err) = run_plain(&["run", "--log-level", "debugg", "--", "true"], &[]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("\"debugg\" is not a level"), "{err}");
    // A program given without `--`.
    let (code, err) = run_plain(&["run", "sleep", "1"], &[]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("goes after `--`"), "{err}");
    // A host name for a listener.
    let (code, err) = run_plain(&["run", "--admin", "example.com:9190", "--", "true"], &[]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("expected IP:PORT"), "{err}");
    // A leaf without its scheme.
    let (code, err) = run_plain(&["scatter", "--leaves", "127.0.0.1:80"], &[]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("give http://127.0.0.1:80"), "{err}");
    // A mis-indented server line in nutcracker.yml: refused, not read as a name.
    let dir = tempfile::tempdir().unwrap();
    let yml = dir.path().join("nutcracker.yml");
    std::fs::write(&yml, "cache:\n  listen: 127.0.0.1:0\n  servers:\n    - 127.0.0.1:1:1\n     - 127.0.0.1:2:1\n")
        .unwrap();
    let (code, err) = run_plain(&["ambassador", "-c", yml.to_str().unwrap(), "-t"], &[]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("indented differently"), "{err}");
}

#[test]
fn redis_store_errors_are_redis_own_at_once_and_never_show_the_password() {
    let server = podkit_testkit::redis();
    let mut conn = redis::Client::open(format!("redis://{}/0", server.addr)).unwrap().get_connection().unwrap();
    let _: () = redis::cmd("CONFIG").arg("SET").arg("requirepass").arg("right-one").query(&mut conn).unwrap();
    let status = |url: &str| run_plain(&["queue", "status", "--store", url], &[]);
    let (code, err) = status(&format!("redis://:hunter2@{}/0", server.addr));
    assert_ne!(code, 0);
    assert!(!err.contains("hunter2"), "the password is shown: {err}");
    assert!(err.contains("***"), "{err}");
    assert!(err.to_ascii_lowercase().contains("pass"), "Redis' own reason: {err}");
    let (_, err) = status(&format!("redis://:right-one@{}/99", server.addr));
    assert!(err.contains("DB index is out of range"), "{err}");
    assert!(!err.contains("right-one"), "{err}");
    let (_, err) = status(&format!("redis://127.0.0.1:{}/0", podkit_testkit::free_port()));
    // Redis' own error, not the 5 s "no answer" that hid every cause.
    assert!(err.contains("refused") && !err.contains("no answer"), "{err}");
}

#[test]
fn one_commands_variables_are_not_read_by_another_nor_passed_to_programs() {
    // elect's id in the environment: a push of three lines still makes three items.
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("q.db").display());
    let mut push = std::process::Command::new(crate::support::PODKIT)
        .args(["queue", "push", "--store", &store, "--queue", "q", "-"])
        .env("PODKIT_ELECT_ID", "replica-1")
        .env("PODKIT_ID", "replica-1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    push.stdin.take().unwrap().write_all(b"a\nb\nc\n").unwrap();
    let out = push.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("pushed 3 new item(s)"), "{out:?}");
    // podkit's own variables do not reach the program it runs (a podkit inside would read them).
    let seen = dir.path().join("env");
    let script = format!("env > {}", seen.display());
    let mut p = Podkit::start_with(Mode::Subreaper, &["run", "--", "sh", "-c", &script], |c| {
        c.env("PODKIT_GRACE", "7s").env("PODKIT_RUN_RESTART", "never").env("APP_SETTING", "kept");
    });
    assert_eq!(p.wait(), 0);
    let env = std::fs::read_to_string(&seen).unwrap();
    assert!(env.lines().any(|l| l == "APP_SETTING=kept"), "{env}");
    let podkit_vars: Vec<&str> =
        env.lines().filter(|l| l.starts_with("PODKIT_") && !l.starts_with("PODKIT_TREE=")).collect();
    assert!(podkit_vars.is_empty(), "passed on: {podkit_vars:?}");
}

#[test]
fn a_redis_password_appears_nowhere_a_running_worker_shows() {
    let server = podkit_testkit::redis();
    let mut conn = redis::Client::open(format!("redis://{}/0", server.addr)).unwrap().get_connection().unwrap();
    let _: () = redis::cmd("CONFIG").arg("SET").arg("requirepass").arg("s3cr3t-pw").query(&mut conn).unwrap();
    let store = format!("redis://:s3cr3t-pw@{}/0", server.addr);
    // A value clap cannot parse is echoed in its error: without the password.
    let (code, err) = run_plain(&["queue", "status", "--store", "redis://:s3cr3t-pw@h:notaport/0"], &[]);
    assert_eq!(code, 64, "{err}");
    assert!(!err.contains("s3cr3t-pw") && err.contains("***"), "{err}");
    let (code, err) =
        run_plain(&["queue", "push", "--store", &store, "--queue", "q", "--id", "x", "/etc/hostname"], &[]);
    assert_eq!(code, 0, "{err}");
    // The item waits for the test to have looked at everything the worker shows, then fails.
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let script = format!("while [ ! -e {} ]; do sleep 0.05; done; false", go.display());
    let mut w = Podkit::start(
        Mode::Subreaper,
        &[
            "queue",
            "work",
            "--store",
            &store,
            "--queue",
            "q",
            "--max-attempts",
            "1",
            "--exit-when-empty",
            "--log-level",
            "debug",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    let admin = w.admin();
    assert_eventually!(admin.get("/metrics").body.contains("podkit_queue_in_flight 1"), "the item never started");
    let shown = [admin.get("/config").body, admin.get("/logs").body, admin.get("/metrics").body];
    std::fs::write(&go, "").unwrap();
    assert_eq!(w.wait(), 1);
    let stderr = std::fs::read_to_string(w.path("stderr")).unwrap();
    assert!(stderr.contains("drained with dead items"), "{stderr}");
    for (what, text) in ["/config", "/logs", "/metrics", "stderr"].iter().zip(shown.iter().chain([&stderr])) {
        assert!(!text.contains("s3cr3t-pw"), "{what} shows the password: {text}");
    }
}

/// The same kind of outcome exits with the same status whatever the command (the table in
/// podkit_core::exit and docs/architecture.md).
#[test]
fn one_table_of_exit_statuses_for_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let nobody = format!("redis://127.0.0.1:{}/0", podkit_testkit::free_port());
    let sqlite = format!("sqlite://{}", dir.path().join("q.db").display());
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'x'; 4096]).unwrap();
    let root = dir.path().join("root");
    let missing_repo = format!("file://{}", dir.path().join("no-such-repo").display());
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        // 64: bad configuration, nothing started.
        (vec!["run", "--grace", "soon", "--", "true"], 64, "a bad flag"),
        (
            vec!["queue", "push", "--store", &sqlite, "--queue", "q", "--max-item-size", "1024", big.to_str().unwrap()],
            64,
            "an item too large",
        ),
        // 69: a service podkit needs cannot be used.
        (vec!["queue", "status", "--store", &nobody], 69, "a store that is down"),
        (
            vec!["queue", "push", "--store", &nobody, "--queue", "q", "--id", "x", "/etc/hostname"],
            69,
            "a push to a store that is down",
        ),
        // 1: the work failed.
        (
            vec!["sync", "--repo", &missing_repo, "--root", root.to_str().unwrap(), "--one-time"],
            1,
            "a sync that failed",
        ),
        // 127: the program does not exist.
        (vec!["run", "--", "/no/such/program"], 127, "a missing program"),
    ];
    for (args, want, what) in cases {
        let (code, err) = run_plain(&args, &[]);
        assert_eq!(code, want, "{what} ({args:?}): {err}");
    }
}
