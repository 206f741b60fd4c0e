//! `podkit run` end to end: the real binary, as PID 1 of a new PID namespace and as a
//! subreaper, wrapping real processes.

// Tests start servers and podkit itself directly, outside any podkit reaper.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::{Mode, Podkit, TestHttp, alive, run_plain};
use nix::sys::signal::Signal;
use podkit_testkit::assert_eventually;

/// A program that records the signals it gets in `signals` and says it is ready in `ready`.
fn trapping_script(dir: &std::path::Path, signals: &[&str], extra: &str) -> String {
    let log = dir.join("signals").display().to_string();
    let ready = dir.join("ready").display().to_string();
    let traps: String = signals.iter().map(|s| format!("trap 'echo {s} >> {log}' {s}; ")).collect();
    format!("{traps}{extra} echo $$ > {ready}; while :; do sleep 1 & wait $!; done")
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

// === exit status ===

#[test]
fn exit_status_is_the_programs() {
    for mode in [Mode::Pid1, Mode::Subreaper] {
        let mut p = Podkit::start(mode, &["run", "--", "sh", "-c", "exit 7"]);
        assert_eq!(p.wait(), 7, "{mode:?}");
        let mut p = Podkit::start(mode, &["run", "--", "sh", "-c", "kill -USR1 $$"]);
        assert_eq!(p.wait(), 128 + 10, "{mode:?}: killed by SIGUSR1 is 128+10");
    }
}

#[test]
fn missing_program_exits_127_with_a_clear_error() {
    // With a probe configured too: nothing may hold the exit up (the grace period is long).
    let mut p =
        Podkit::start(Mode::Subreaper, &["run", "--ready-exec", "true", "--grace", "1h", "--", "/no/such/program"]);
    assert_eq!(p.wait(), 127);
    let err = p.log_records("cannot start the program");
    assert_eq!(err.len(), 1, "{}", p.stderr());
    assert!(err[0]["error"].as_str().unwrap().contains("No such file"));
}

// === reaping ===

#[test]
fn orphans_are_reaped_as_pid1() {
    // The program double-forks a short-lived process, then waits for it to disappear from
    // /proc: only PID 1 can reap it, so the program exits 0 only if podkit did.
    let script = r#"
        sh -c 'sleep 0.2 & echo $! > orphan'
        o=$(cat orphan)
        i=0
        while [ -e /proc/$o ]; do
            i=$((i+1)); [ $i -gt 400 ] && { cat /proc/$o/stat; exit 1; }
            sleep 0.05
        done
    "#;
    let mut p = Podkit::start(Mode::Pid1, &["run", "--", "sh", "-c", script]);
    assert_eq!(p.wait(), 0, "orphan not reaped:\n{}\n{}", p.stdout(), p.stderr());
}

#[test]
fn orphans_are_reaped_as_subreaper() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("orphan");
    let script = format!("sh -c 'sleep 0.2 & echo $! > {0}'; sleep 1000", pidfile.display());
    let mut p = Podkit::start(Mode::Subreaper, &["run", "--", "sh", "-c", &script]);
    let orphan: i32 = podkit_testkit::wait_for_file(&pidfile, Duration::from_secs(10)).trim().parse().unwrap();
    let admin = p.admin();
    assert_eventually!(!std::path::Path::new(&format!("/proc/{orphan}")).exists(), "orphan {orphan} was never reaped");
    assert_eventually!(admin.metric("podkit_run_orphans_reaped_total").unwrap_or(0.0) >= 1.0, "{}", admin.metrics());
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait(), 143);
}

// === signals ===

#[test]
fn signals_are_forwarded_to_the_program() {
    for mode in [Mode::Pid1, Mode::Subreaper] {
        let dir = tempfile::tempdir().unwrap();
        let sigs = ["HUP", "USR1", "USR2", "QUIT", "WINCH"];
        let script = trapping_script(dir.path(), &sigs, "");
        let mut p = Podkit::start(mode, &["run", "--", "sh", "-c", &script]);
        podkit_testkit::wait_for_file(&dir.path().join("ready"), Duration::from_secs(10));
        for (i, (name, sig)) in sigs
            .iter()
            .zip([Signal::SIGHUP, Signal::SIGUSR1, Signal::SIGUSR2, Signal::SIGQUIT, Signal::SIGWINCH])
            .enumerate()
        {
            p.signal(sig);
            let log = || std::fs::read_to_string(dir.path().join("signals")).unwrap_or_default();
            assert_eventually!(log().lines().count() == i + 1, "{mode:?}: {name} not forwarded: {:?}", log());
            assert_eq!(log().lines().last(), Some(*name));
        }
        p.signal(Signal::SIGTERM);
        assert_eq!(p.wait(), 143, "{mode:?}: the program dies of the forwarded SIGTERM");
    }
}

#[test]
fn signal_group_reaches_the_programs_children() {
    let dir = tempfile::tempdir().unwrap();
    let child_log = dir.path().join("child-signals");
    let child_ready = dir.path().join("child-ready");
    // A background job of a non-interactive shell stays in the shell's process group.
    let extra = format!(
        "sh -c \"trap 'echo USR1 >> {}' USR1; touch {}; while :; do sleep 1 & wait \\$!; done\" & ",
        child_log.display(),
        child_ready.display()
    );
    let script = trapping_script(dir.path(), &["USR1"], &extra);
    let mut p = Podkit::start(Mode::Pid1, &["run", "--signal-group", "--", "sh", "-c", &script]);
    podkit_testkit::wait_for_file(&dir.path().join("ready"), Duration::from_secs(10));
    assert_eventually!(child_ready.exists(), "background job never started");
    p.signal(Signal::SIGUSR1);
    let read = |f: &std::path::Path| std::fs::read_to_string(f).unwrap_or_default();
    assert_eventually!(read(&child_log).contains("USR1"), "the group member did not get USR1");
    assert_eventually!(read(&dir.path().join("signals")).contains("USR1"), "the program did not get USR1");
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait(), 143);
}

// === stopping ===

#[test]
fn stop_escalates_to_sigkill_after_the_grace_period() {
    for mode in [Mode::Pid1, Mode::Subreaper] {
        let dir = tempfile::tempdir().unwrap();
        // The program ignores SIGTERM (it only logs it).
        let script = trapping_script(dir.path(), &["TERM"], "");
        let mut p = Podkit::start(mode, &["run", "--grace", "500ms", "--", "sh", "-c", &script]);
        podkit_testkit::wait_for_file(&dir.path().join("ready"), Duration::from_secs(10));
        p.signal(Signal::SIGTERM);
        assert_eq!(p.wait(), 137, "{mode:?}: killed by SIGKILL after the grace period");
        assert_eq!(std::fs::read_to_string(dir.path().join("signals")).unwrap().trim(), "TERM");
        assert_eq!(
            p.log_records(
                "the program did not stop within the grace period; sending SIGKILL to it and everything it started"
            )
            .len(),
            1
        );
    }
}

#[test]
fn pre_stop_exec_runs_before_the_stop_signal() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("signals");
    let script = format!(
        "trap 'echo TERM >> {0}; exit 0' TERM; echo $$ > {1}; while :; do sleep 1 & wait $!; done",
        log.display(),
        dir.path().join("ready").display()
    );
    let hook = format!("sh -c 'echo pre-stop:$PODKIT_HOOK >> {}'", log.display());
    let mut p = Podkit::start(Mode::Pid1, &["run", "--pre-stop-exec", &hook, "--", "sh", "-c", &script]);
    podkit_testkit::wait_for_file(&dir.path().join("ready"), Duration::from_secs(10));
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait(), 0, "the program exits 0 from its TERM trap");
    assert_eq!(lines(&std::fs::read_to_string(&log).unwrap()), ["pre-stop:pre-stop", "TERM"]);
}

#[test]
fn pre_stop_http_is_posted_before_the_stop_signal() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("signals");
    let http = TestHttp::start(Some(log.clone()));
    let script = format!(
        "trap 'echo TERM >> {0}; exit 0' TERM; echo $$ > {1}; while :; do sleep 1 & wait $!; done",
        log.display(),
        dir.path().join("ready").display()
    );
    let url = http.url("/drain");
    let mut p = Podkit::start(Mode::Subreaper, &["run", "--pre-stop-http", &url, "--", "sh", "-c", &script]);
    podkit_testkit::wait_for_file(&dir.path().join("ready"), Duration::from_secs(10));
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait(), 0);
    assert_eq!(lines(&std::fs::read_to_string(&log).unwrap()), ["POST /drain HTTP/1.1", "TERM"]);
}

#[test]
fn stop_kills_every_descendant_as_subreaper() {
    let dir = tempfile::tempdir().unwrap();
    let gc = dir.path().join("grandchild");
    // A daemonized grandchild (new session, reparented to podkit) that ignores SIGTERM.
    let extra = format!("setsid sh -c \"trap '' TERM; echo \\$\\$ > {}; while :; do sleep 1; done\" & ", gc.display());
    let script = trapping_script(dir.path(), &[], &extra);
    let mut p = Podkit::start(Mode::Subreaper, &["run", "--grace", "500ms", "--", "sh", "-c", &script]);
    podkit_testkit::wait_for_file(&dir.path().join("ready"), Duration::from_secs(10));
    let gc_pid: i32 = podkit_testkit::wait_for_file(&gc, Duration::from_secs(10)).trim().parse().unwrap();
    assert!(alive(gc_pid));
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait(), 143, "the program itself dies of SIGTERM");
    assert!(!alive(gc_pid), "grandchild {gc_pid} outlived podkit run");
}

#[test]
fn leftovers_are_stopped_when_the_program_exits() {
    let dir = tempfile::tempdir().unwrap();
    let bg = dir.path().join("bg");
    let script = format!("sleep 1000 & echo $! > {}; exit 0", bg.display());
    let mut p = Podkit::start(Mode::Subreaper, &["run", "--", "sh", "-c", &script]);
    assert_eq!(p.wait(), 0);
    let bg_pid: i32 = std::fs::read_to_string(&bg).unwrap().trim().parse().unwrap();
    assert!(!alive(bg_pid), "background process {bg_pid} outlived podkit run");
}

#[test]
fn second_signal_exits_at_once_and_kills_everything() {
    let dir = tempfile::tempdir().unwrap();
    let script = trapping_script(dir.path(), &["TERM"], "");
    let mut p = Podkit::start(Mode::Subreaper, &["run", "--grace", "1h", "--", "sh", "-c", &script]);
    let child: i32 =
        podkit_testkit::wait_for_file(&dir.path().join("ready"), Duration::from_secs(10)).trim().parse().unwrap();
    p.signal(Signal::SIGTERM);
    assert_eventually!(!p.log_records("stopping the program").is_empty(), "{}", p.stderr());
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait(), 143);
    assert!(!alive(child), "the program outlived a forced exit");
}

#[test]
fn admin_shutdown_stops_like_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let script = trapping_script(dir.path(), &[], "");
    let mut p = Podkit::start(Mode::Subreaper, &["run", "--", "sh", "-c", &script]);
    podkit_testkit::wait_for_file(&dir.path().join("ready"), Duration::from_secs(10));
    let answer = p.admin().shutdown();
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(p.wait(), 143);
}

#[test]
fn admin_token_guards_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let mut p =
        Podkit::start(Mode::Subreaper, &["run", "--admin-token-file", token.to_str().unwrap(), "--", "sleep", "1000"]);
    let admin = p.admin();
    assert_eq!(admin.shutdown().status, 401);
    assert_eq!(admin.clone().with_token("nope").shutdown().status, 401);
    assert!(admin.healthy(), "read-only endpoints stay open");
    assert_eq!(admin.with_token("s3cret").shutdown().status, 202);
    assert_eq!(p.wait(), 143);
}

// === upward API ===

#[test]
fn output_passes_through_unchanged_and_lands_in_logs() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "printf 'out-1\\nout-2\\r\\npartial'; echo err-1 >&2; echo $$ > {}; exec sleep 1000",
        dir.path().join("ready").display()
    );
    let mut p = Podkit::start(Mode::Pid1, &["run", "--", "sh", "-c", &script]);
    podkit_testkit::wait_for_file(&dir.path().join("ready"), Duration::from_secs(10));
    let admin = p.admin();
    let messages =
        |q: &str| -> Vec<String> { admin.logs(q).iter().map(|r| r["message"].as_str().unwrap().to_string()).collect() };
    assert_eventually!(messages("stream=stdout") == ["out-1", "out-2"], "{:?}", messages("stream=stdout"));
    assert_eventually!(messages("stream=stderr") == ["err-1"], "{:?}", messages("stream=stderr"));
    let rec = &admin.logs("stream=stderr")[0];
    assert_eq!(rec["target"], "child");
    assert!(messages("stream=podkit").contains(&"program started".to_string()));
    assert_eq!(messages("stream=stdout&limit=1"), ["out-2"]);
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait(), 143);
    assert_eq!(p.stdout(), "out-1\nout-2\r\npartial", "stdout passes through byte for byte");
    assert!(p.stderr().lines().any(|l| l == "err-1"), "{}", p.stderr());
}

#[test]
fn logs_follow_streams_new_lines() {
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    // The program prints a line each time the test creates `go`.
    let script = format!(
        "n=0; while :; do if [ -e {0} ]; then rm {0}; n=$((n+1)); echo line-$n; fi; sleep 0.02; done",
        go.display()
    );
    let mut p = Podkit::start(Mode::Subreaper, &["run", "--", "sh", "-c", &script]);
    let admin = p.admin();
    let resp = admin.stream("/logs?follow=1&stream=stdout");
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let mut reader = BufReader::new(resp);
    for n in 1..=2 {
        std::fs::write(&go, "").unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["message"], format!("line-{n}"));
        assert_eq!(v["stream"], "stdout");
    }
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait(), 143);
}

#[test]
fn metrics_describe_the_program() {
    let mut p = Podkit::start(Mode::Pid1, &["run", "--", "sleep", "1000"]);
    let admin = p.admin();
    assert_eventually!(admin.metric("podkit_run_up") == Some(1.0), "{}", admin.metrics());
    let m = |name: &str| admin.metric(name).unwrap_or_else(|| panic!("no {name} in\n{}", admin.metrics()));
    assert!(m("podkit_run_child_resident_memory_bytes") > 0.0);
    assert_eq!(m("podkit_run_child_threads"), 1.0);
    assert!(m("podkit_run_child_open_fds") >= 3.0);
    assert!(m("podkit_run_child_cpu_seconds_total") >= 0.0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let started = m("podkit_run_child_start_time_seconds");
    assert!((now - 60.0..=now + 1.0).contains(&started), "start time {started} vs now {now}");
    assert_eq!(m("podkit_run_restarts_total"), 0.0);
    assert_eq!(m("podkit_run_last_exit_code"), -1.0);
    assert!(m("podkit_process_resident_memory_bytes") > 0.0);
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait(), 143);
}

#[test]
fn readiness_follows_an_exec_probe() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("app-ready");
    let probe = format!("test -e {}", flag.display());
    let mut p = Podkit::start(
        Mode::Subreaper,
        &["run", "--ready-exec", &probe, "--ready-interval", "50ms", "--", "sleep", "1000"],
    );
    let admin = p.admin();
    assert!(!admin.ready());
    assert_eventually!(
        admin.not_ready_reasons().iter().any(|r| r.contains("readiness probe failed: exit code 1")),
        "{:?}",
        admin.not_ready_reasons()
    );
    std::fs::write(&flag, "").unwrap();
    assert_eventually!(admin.ready(), "{:?}", admin.not_ready_reasons());
    std::fs::remove_file(&flag).unwrap();
    assert_eventually!(!admin.ready(), "readiness did not follow the probe back down");
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait(), 143);
}

#[test]
fn readiness_follows_an_http_probe_and_fails_while_stopping() {
    let http = TestHttp::start(None);
    http.status.store(503, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let script = trapping_script(dir.path(), &["TERM"], "");
    let url = http.url("/ready");
    let mut p = Podkit::start(
        Mode::Subreaper,
        &["run", "--ready-http", &url, "--ready-interval", "50ms", "--grace", "2s", "--", "sh", "-c", &script],
    );
    let admin = p.admin();
    assert_eventually!(
        admin.not_ready_reasons().iter().any(|r| r.contains("HTTP 503")),
        "{:?}",
        admin.not_ready_reasons()
    );
    http.status.store(200, Ordering::SeqCst);
    assert_eventually!(admin.ready(), "{:?}", admin.not_ready_reasons());
    assert!(http.seen.lock().unwrap().iter().all(|l| l == "GET /ready HTTP/1.1"));
    // The program ignores SIGTERM, so podkit stays in its grace period for a while: readiness
    // must already say it is stopping.
    podkit_testkit::wait_for_file(&dir.path().join("ready"), Duration::from_secs(10));
    p.signal(Signal::SIGTERM);
    assert_eventually!(
        admin.not_ready_reasons().iter().any(|r| r.contains("stopping")),
        "{:?}",
        admin.not_ready_reasons()
    );
    assert_eq!(p.wait(), 137);
}

#[test]
fn save_hook_runs_on_request_and_reports_its_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("saved");
    let hook = format!("sh -c 'echo saving; echo state > {}'", saved.display());
    let mut p = Podkit::start(Mode::Subreaper, &["run", "--save-exec", &hook, "--", "sleep", "1000"]);
    let admin = p.admin();
    let a = admin.post("/lifecycle/save");
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    assert_eq!(v["ok"], true);
    assert_eq!(v["detail"], "exit code 0");
    assert_eq!(v["output"], "saving\n");
    assert_eq!(std::fs::read_to_string(&saved).unwrap(), "state\n");
    assert!(admin.metrics().contains(r#"podkit_run_hook_runs_total{hook="save",result="ok"} 1"#));
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait(), 143);

    // A failing hook is reported as such, with its output.
    let mut p = Podkit::start(
        Mode::Subreaper,
        &["run", "--save-exec", "sh -c 'echo disk full >&2; exit 3'", "--", "sleep", "1000"],
    );
    let a = p.admin().post("/lifecycle/save");
    assert_eq!(a.status, 502);
    assert_eq!(a.json()["detail"], "exit code 3");
    assert_eq!(a.json()["output"], "disk full\n");
    p.signal(Signal::SIGTERM);
    p.wait();

    // Without a hook the endpoint says how to configure one.
    let mut p = Podkit::start(Mode::Subreaper, &["run", "--", "sleep", "1000"]);
    let a = p.admin().post("/lifecycle/save");
    assert_eq!(a.status, 404);
    assert!(a.body.contains("--save-exec"));
    p.signal(Signal::SIGTERM);
    p.wait();
}

#[test]
fn save_hook_times_out() {
    let mut p = Podkit::start(
        Mode::Subreaper,
        &["run", "--save-exec", "sleep 1000", "--save-timeout", "200ms", "--", "sleep", "1000"],
    );
    let a = p.admin().post("/lifecycle/save");
    assert_eq!(a.status, 502);
    assert_eq!(a.json()["detail"], "timed out after 200ms");
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait(), 143);
}

// === restarts ===

#[test]
fn restart_on_failure_until_success() {
    let dir = tempfile::tempdir().unwrap();
    let count = dir.path().join("count");
    let script =
        format!("n=$(cat {0} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {0}; [ $n -ge 3 ]", count.display());
    let mut p = Podkit::start(
        Mode::Subreaper,
        &["run", "--restart", "on-failure", "--restart-delay", "10ms", "--", "sh", "-c", &script],
    );
    assert_eq!(p.wait(), 0);
    assert_eq!(std::fs::read_to_string(&count).unwrap().trim(), "3");
    let restarts = p.log_records("restarting the program");
    assert_eq!(restarts.len(), 2);
    assert_eq!(restarts[0]["delay"], "10ms");
    assert_eq!(restarts[1]["delay"], "20ms", "the delay doubles");
}

#[test]
fn restart_always_until_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let count = dir.path().join("count");
    // The SIGTERM below may land while a run is under way: that run then exits 0 too.
    let script =
        format!("trap 'exit 0' TERM; n=$(cat {0} 2>/dev/null || echo 0); echo $((n+1)) > {0}", count.display());
    let mut p = Podkit::start(
        Mode::Pid1,
        &[
            "run",
            "--restart",
            "always",
            "--restart-delay",
            "10ms",
            "--restart-delay-max",
            "20ms",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    let read = || std::fs::read_to_string(&count).unwrap_or_default().trim().parse::<u32>().unwrap_or(0);
    assert_eventually!(read() >= 3, "only {} runs", read());
    let admin = p.admin();
    assert!(admin.metric("podkit_run_restarts_total").unwrap() >= 2.0);
    p.signal(Signal::SIGTERM);
    // The stop ends the restarts. Its status is the last run's: 0 when the signal lands between
    // runs (or in the program's trap), 143 when it lands as a run starts, before its trap is
    // set (seen on a loaded machine).
    let status = p.wait();
    assert!(status == 0 || status == 143, "status {status}");
}

// === configuration ===

#[test]
fn bad_configuration_exits_64_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    // (flags, environment, what the message must contain)
    type Case<'a> = (Vec<String>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["--grace".into(), "soon".into()], vec![], "'soon' for '--grace"),
        (vec!["--stop-signal".into(), "SIGNOPE".into()], vec![], "SIGNOPE"),
        (vec!["--pre-stop-http".into(), "ftp://x/".into()], vec![], "expected an http:// or https:// URL"),
        (vec!["--restart".into(), "sometimes".into()], vec![], "sometimes"),
        (vec!["--ready-exec".into(), "echo 'oops".into()], vec![], "unbalanced quotes"),
        (vec![], vec![("PODKIT_GRACE", "lots")], "'lots' for '--grace"),
        (vec![], vec![("PODKIT_GRACE", "lots")], "came from the environment variable PODKIT_GRACE"),
        (
            vec![],
            vec![("PODKIT_RUN_RESTART_DELAY", "often")],
            "came from the environment variable PODKIT_RUN_RESTART_DELAY",
        ),
        (vec!["--admin-token-file".into(), "/no/such/token".into()], vec![], "/no/such/token"),
        (vec!["--admin".into(), "localhost".into()], vec![], "'localhost' for '--admin"),
    ];
    for (args, env, expect) in cases {
        let mut full = vec!["run".to_string()];
        full.extend(args.clone());
        full.extend(["--", "true"].map(String::from));
        let argv: Vec<&str> = full.iter().map(String::as_str).collect();
        let (code, stderr) = run_plain(&argv, &env);
        assert_eq!(code, 64, "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains(expect), "{args:?} {env:?}: expected {expect:?} in {stderr}");
    }

    let file = dir.path().join("podkit.yaml");
    std::fs::write(&file, "grace: 5s\nrestart: sometimes\n").unwrap();
    let (code, stderr) = run_plain(&["run", "--config", file.to_str().unwrap(), "--", "true"], &[]);
    assert_eq!(code, 64);
    assert!(stderr.contains("key `restart`") && stderr.contains("sometimes"), "{stderr}");

    std::fs::write(&file, "grace: 5s\ngraec: 5s\n").unwrap();
    let (code, stderr) = run_plain(&["run", "--config", file.to_str().unwrap(), "--", "true"], &[]);
    assert_eq!(code, 64);
    assert!(stderr.contains("unknown key `graec`"), "{stderr}");

    let (code, stderr) = run_plain(&["run"], &[]);
    assert_eq!(code, 64, "a command is required: {stderr}");
}

#[test]
fn admin_address_in_use_is_a_clear_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = run_plain(&["run", "--admin", &addr, "--log-format", "json", "--", "true"], &[]);
    assert_eq!(code, 64);
    assert!(stderr.contains("cannot open the admin listener") && stderr.contains(&addr), "{stderr}");
}

#[test]
fn config_layers_flags_over_env_over_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("podkit.toml");
    std::fs::write(
        &file,
        "grace = \"5s\"\nrestart-delay = \"3s\"\nready-timeout = \"4s\"\ncommand = [\"sleep\", \"1000\"]\n",
    )
    .unwrap();
    let file_s = file.to_str().unwrap().to_string();
    let mut p = Podkit::start_with(Mode::Subreaper, &["run", "--config", &file_s, "--ready-timeout", "9s"], |c| {
        c.env("PODKIT_GRACE", "7s").env("PODKIT_RUN_RESTART_DELAY", "2s");
    });
    let cfg = p.admin().config();
    assert_eq!(cfg["command"], "run");
    assert_eq!(cfg["values"]["grace"], "7s");
    assert_eq!(cfg["sources"]["grace"], "env");
    assert_eq!(cfg["values"]["restart-delay"], "2s");
    assert_eq!(cfg["values"]["ready-timeout"], "9s");
    assert_eq!(cfg["sources"]["ready-timeout"], "flag");
    assert_eq!(cfg["values"]["command"], serde_json::json!(["sleep", "1000"]));
    assert_eq!(cfg["sources"]["command"], "file");
    assert_eq!(cfg["values"]["stop-signal"], "SIGTERM");
    assert_eq!(cfg["sources"]["stop-signal"], "default");
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait(), 143);
}

#[test]
fn flags_take_usual_boolean_spellings_and_beat_conflicting_file_keys() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("podkit.yaml");
    std::fs::write(&file, "pre-stop-exec: \"true\"\ncommand: [sleep, \"1000\"]\n").unwrap();
    let file_s = file.to_str().unwrap().to_string();
    let mut p = Podkit::start_with(
        Mode::Subreaper,
        &["run", "--config", &file_s, "--pre-stop-http", "http://127.0.0.1:9/x"],
        |c| {
            c.env("PODKIT_RUN_NO_CAPTURE", "1");
        },
    );
    let cfg = p.admin().config();
    assert_eq!(cfg["values"]["no-capture"], true);
    assert_eq!(cfg["values"]["pre-stop-http"], "http://127.0.0.1:9/x");
    assert!(cfg["values"].get("pre-stop-exec").is_none(), "the file's conflicting key is dropped: {cfg}");
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait(), 143);
}

#[test]
fn version_and_help() {
    let (code, _) = run_plain(&["--version"], &[]);
    assert_eq!(code, 0);
    let out = std::process::Command::new(crate::support::PODKIT).args(["help", "run"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--pre-stop-exec") && help.contains("PODKIT_GRACE"), "{help}");
    let out = std::process::Command::new(crate::support::PODKIT).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("run"));
}
