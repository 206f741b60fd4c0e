//! Two supervised programs side by side: stopping, restarting and killing one leaves every
//! process of the other untouched, checked by pid.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use podkit_core::backoff::BackoffPolicy;
use podkit_core::{LogRing, Readiness};
use podkit_process::supervised::{self, Ended, Handle, Host, Phase};
use podkit_process::{Program, Restart, RestartPolicy, StopPolicy, StopRequest};

/// A program whose tree has three live processes: the shell, a child in its group, and a
/// daemon that left the group with `setsid` and was orphaned to the test process.
fn program(name: &str) -> Program {
    Program {
        name: name.into(),
        source: name.into(),
        argv: ["sh", "-c", "sleep 1000 & (setsid sleep 1000 &); wait"].map(Into::into).to_vec(),
        env: Vec::new(),
        cwd: None,
        capture: false,
        terminal: false,
        prefix: None,
        stop: StopPolicy { pre_stop: None, signal: Signal::SIGTERM, grace: Duration::from_secs(10), group: false },
        restart: RestartPolicy {
            when: Restart::Never,
            backoff: BackoffPolicy::exact(Duration::from_millis(100), Duration::from_secs(1)),
            reset_after: Duration::from_secs(10),
        },
    }
}

fn host() -> Host {
    supervised::host(LogRing::new(1000), Readiness::new()).expect("host")
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| !s[i + 1..].trim_start().starts_with(['Z', 'X'])))
        .unwrap_or(false)
}

/// The tree's pids once all three processes are up.
async fn full_tree(h: &Handle) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pids = h.pids().await;
        if pids.len() == 3 && h.status().phase == Phase::Running {
            return pids;
        }
        assert!(Instant::now() < deadline, "{}: tree never had 3 processes: {pids:?}", h.name());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn all_gone(pids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while pids.iter().any(|&p| alive(p)) {
        assert!(Instant::now() < deadline, "still alive: {:?}", pids.iter().filter(|&&p| alive(p)).collect::<Vec<_>>());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_restarting_and_killing_one_tree_leaves_the_other_untouched() {
    let host = host();
    let mut a = supervised::spawn(program("a"), host.clone());
    let mut b = supervised::spawn(program("b"), host.clone());
    let a_pids = full_tree(&a).await;
    let b_pids = full_tree(&b).await;
    assert!(a_pids.iter().all(|p| !b_pids.contains(p)), "trees overlap: {a_pids:?} {b_pids:?}");

    // Stop: the stop signal, then the sweep of what the shell left (its child and its daemon).
    a.stop(StopRequest::default());
    assert!(matches!(a.wait().await, Ended::Stopped(_)));
    all_gone(&a_pids).await;
    assert!(b_pids.iter().all(|&p| alive(p)), "stopping a touched b: {b_pids:?}");
    assert_eq!(b.pids().await, b_pids);

    // Restart: the old tree goes, a new one comes, b keeps every pid.
    let mut a = supervised::spawn(program("a"), host.clone());
    let first = full_tree(&a).await;
    a.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    let second = loop {
        let pids = full_tree(&a).await;
        if pids.iter().all(|p| !first.contains(p)) {
            break pids;
        }
        assert!(Instant::now() < deadline, "no new tree after restart: {pids:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    all_gone(&first).await;
    assert_eq!(a.status().restarts, 1);
    assert_eq!(b.pids().await, b_pids, "restarting a touched b");

    // Kill: SIGKILL to a's whole tree only.
    a.kill();
    assert!(matches!(a.wait().await, Ended::Stopped(e) if e.status() == 128 + 9));
    all_gone(&second).await;
    assert_eq!(b.pids().await, b_pids, "killing a touched b");

    b.stop(StopRequest::default());
    b.wait().await;
    all_gone(&b_pids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_that_exits_is_restarted_by_policy_and_its_leftovers_swept() {
    let host = host();
    let mut p = program("flaky");
    // Leaves a daemon behind, then fails.
    p.argv = ["sh", "-c", "(setsid sleep 1000 &); exit 3"].map(Into::into).to_vec();
    p.restart.when = Restart::OnFailure;
    let mut h = supervised::spawn(p, host.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    while h.status().restarts < 2 {
        assert!(Instant::now() < deadline, "not restarted: {:?}", h.status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.status().last_exit.map(|e| e.status()), Some(3));
    h.stop(StopRequest::default());
    h.wait().await;
    assert!(h.pids().await.is_empty(), "leftovers of failed runs survive");
    assert!(
        host.readiness.reasons().iter().any(|r| r.starts_with("flaky: ")),
        "readiness names the program: {:?}",
        host.readiness.reasons()
    );
}
