//! `podkit elect` end to end: real podkit processes, real etcd (one node and three members) and
//! the lease-file backend.

// Tests start servers and podkit itself directly, outside any podkit reaper.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::support::{Mode, Podkit, TestHttp, run_plain};
use nix::sys::signal::Signal;
use podkit_testkit::{AdminClient, EtcdCluster, assert_eventually};
use serde_json::Value;

const TTL: Duration = Duration::from_secs(2);
/// Scheduling slack on a busy 2-core CI machine, added to every bound the issue states.
const SLACK: Duration = Duration::from_secs(2);

/// One sidecar: the podkit process and a client for its election API.
struct Sidecar {
    id: String,
    proc: Podkit,
    api: AdminClient,
}

impl Sidecar {
    fn start(id: &str, backend: &str, extra: &[&str]) -> Sidecar {
        Self::start_ttl(id, backend, TTL, extra)
    }

    fn start_ttl(id: &str, backend: &str, ttl: Duration, extra: &[&str]) -> Sidecar {
        let dir = tempfile::tempdir().unwrap();
        let addr_file = dir.path().join("api.addr");
        let ttl = format!("{}ms", ttl.as_millis());
        let mut args = vec!["elect", "--id", id, "--backend", backend, "--ttl", &ttl, "--listen", "127.0.0.1:0"];
        let addr_arg = addr_file.to_str().unwrap().to_string();
        args.extend(["--listen-addr-file", &addr_arg]);
        args.extend(extra);
        let proc = Podkit::start(Mode::Subreaper, &args);
        let api = AdminClient::from_addr_file(&addr_file);
        std::mem::forget(dir); // the address file's directory lives as long as the test
        Sidecar { id: id.to_string(), proc, api }
    }

    fn status(&self, election: &str) -> Value {
        self.api.get(&format!("/v1/elections/{election}")).json()
    }

    fn is_leader(&self, election: &str) -> bool {
        self.status(election)["is_leader"] == true
    }
}

fn leaders(sidecars: &[Sidecar], election: &str) -> Vec<String> {
    sidecars.iter().filter(|s| s.is_leader(election)).map(|s| s.id.clone()).collect()
}

fn wait_for_one_leader(sidecars: &[Sidecar], election: &str, timeout: Duration) -> usize {
    let mut found;
    assert_eventually!(
        timeout = timeout,
        {
            found = leaders(sidecars, election);
            found.len() == 1
        },
        "expected exactly one leader, saw {found:?}"
    );
    sidecars.iter().position(|s| s.id == found[0]).unwrap()
}

// === the history recorder ===

/// One answer of one sidecar, in the order the recorder got them (it polls one at a time, so
/// the order is a real-time order).
#[derive(Debug, Clone)]
struct Seen {
    sidecar: String,
    is_leader: bool,
    token: u64,
}

/// Polls every sidecar's view in turn, until stopped.
struct Recorder {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    thread: Option<JoinHandle<()>>,
}

impl Recorder {
    fn start(targets: Vec<(String, AdminClient)>, election: &str) -> Recorder {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (st, se, election) = (stop.clone(), seen.clone(), election.to_string());
        let thread = std::thread::spawn(move || {
            let http = reqwest::blocking::Client::builder().timeout(Duration::from_millis(500)).build().unwrap();
            while !st.load(Ordering::Relaxed) {
                for (id, api) in &targets {
                    // A stopped or dead sidecar does not answer; that is not a claim.
                    let Ok(resp) = http.get(format!("{}/v1/elections/{election}", api.base())).send() else {
                        continue;
                    };
                    let Ok(v) = resp.json::<Value>() else { continue };
                    se.lock().unwrap().push(Seen {
                        sidecar: id.clone(),
                        is_leader: v["is_leader"] == true,
                        token: v["token"].as_u64().unwrap_or(0),
                    });
                }
            }
        });
        Recorder { stop, seen, thread: Some(thread) }
    }

    /// Stops recording and checks the history: no two sidecars claimed leadership at once,
    /// each term's token is larger than the one before, and no sidecar saw a token go back.
    fn finish(mut self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        let seen = self.seen.lock().unwrap().clone();
        assert!(seen.iter().any(|s| s.is_leader), "the recorder never saw a leader: {seen:?}");
        check_history(&seen);
        seen
    }
}

fn check_history(seen: &[Seen]) {
    // Tokens a sidecar reports never go backwards.
    let mut last: std::collections::HashMap<&str, u64> = Default::default();
    for s in seen {
        let prev = last.insert(&s.sidecar, s.token).unwrap_or(0);
        assert!(s.token >= prev, "{} reported token {} after {prev}", s.sidecar, s.token);
    }
    // Leadership terms (sidecar, token) as intervals of the observation sequence.
    let mut terms: Vec<(String, u64, usize, usize)> = Vec::new();
    for (i, s) in seen.iter().enumerate().filter(|(_, s)| s.is_leader) {
        match terms.iter_mut().find(|t| t.0 == s.sidecar && t.1 == s.token) {
            Some(t) => t.3 = i,
            None => terms.push((s.sidecar.clone(), s.token, i, i)),
        }
    }
    terms.sort_by_key(|t| t.2);
    for w in terms.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        assert!(
            a.3 < b.2,
            "{} (token {}) still claimed leadership after {} (token {}) did: {:?}",
            a.0,
            a.1,
            b.0,
            b.1,
            terms
        );
        assert!(b.1 > a.1, "token went from {} ({}) to {} ({})", a.1, a.0, b.1, b.0);
    }
}

// === scenarios shared by both backends ===

fn failover_scenario(backend: &str) {
    let sidecars: Vec<Sidecar> = (0..3).map(|i| Sidecar::start(&format!("r{i}"), backend, &[])).collect();
    let recorder = Recorder::start(sidecars.iter().map(|s| (s.id.clone(), s.api.clone())).collect(), "default");
    let first = wait_for_one_leader(&sidecars, "default", TTL * 3);
    let first_token = sidecars[first].status("default")["token"].as_u64().unwrap();
    assert!(first_token >= 1);

    // SIGTERM: the leader resigns as it exits; another takes over at once.
    sidecars[first].proc.signal(Signal::SIGTERM);
    let started = Instant::now();
    let rest: Vec<&Sidecar> = sidecars.iter().enumerate().filter(|(i, _)| *i != first).map(|(_, s)| s).collect();
    assert_eventually!(
        timeout = Duration::from_secs(1) + SLACK,
        rest.iter().any(|s| s.is_leader("default")),
        "no new leader after SIGTERM"
    );
    let sigterm_handoff = started.elapsed();
    let second = rest.iter().position(|s| s.is_leader("default")).unwrap();
    let second_token = rest[second].status("default")["token"].as_u64().unwrap();
    assert!(second_token > first_token);

    // kill -9: nothing is released; the lease must run out first.
    let killed = rest[second].proc.pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(killed), Signal::SIGKILL).unwrap();
    let started = Instant::now();
    let last = rest[1 - second];
    assert_eventually!(timeout = TTL + TTL / 10 + SLACK, last.is_leader("default"), "no new leader after kill -9");
    let kill_failover = started.elapsed();
    assert!(last.status("default")["token"].as_u64().unwrap() > second_token);
    let history = recorder.finish();
    eprintln!(
        "{backend}: SIGTERM handoff {sigterm_handoff:?}, kill -9 failover {kill_failover:?}, {} observations",
        history.len()
    );
}

fn sigstop_scenario(backend: &str) {
    let sidecars: Vec<Sidecar> = (0..3).map(|i| Sidecar::start(&format!("s{i}"), backend, &[])).collect();
    let recorder = Recorder::start(sidecars.iter().map(|s| (s.id.clone(), s.api.clone())).collect(), "default");
    let first = wait_for_one_leader(&sidecars, "default", TTL * 3);
    let paused = &sidecars[first];
    paused.proc.signal(Signal::SIGSTOP);
    let others: Vec<&Sidecar> = sidecars.iter().enumerate().filter(|(i, _)| *i != first).map(|(_, s)| s).collect();
    assert_eventually!(
        timeout = TTL * 2 + SLACK,
        others.iter().any(|s| s.is_leader("default")),
        "nobody took over from a paused leader"
    );
    // A request sent while it is paused is answered the moment it resumes: it must already
    // say "not leader". The kernel completes the connection and buffers the request while the
    // process is stopped, so once `write_all` returns the request is waiting for it.
    let addr = paused.api.base().trim_start_matches("http://").to_string();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    let request = format!("GET /v1/elections/default HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).unwrap();
    paused.proc.signal(Signal::SIGCONT);
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    let answer: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"));
    assert_eq!(answer["is_leader"], false, "a paused leader claimed leadership on resume: {answer}");
    assert_ne!(answer["leader"], paused.id.as_str(), "{answer}");
    recorder.finish();
}

// === etcd ===

#[test]
fn etcd_one_leader_then_failover_on_sigterm_and_kill() {
    let etcd = podkit_testkit::etcd();
    failover_scenario(&format!("etcd://{}/failover", etcd.addr));
}

#[test]
fn etcd_paused_leader_says_not_leader_on_resume() {
    let etcd = podkit_testkit::etcd();
    sigstop_scenario(&format!("etcd://{}/paused", etcd.addr));
}

#[test]
fn etcd_cluster_member_loss_and_total_outage() {
    let mut cluster = EtcdCluster::start();
    let backend = format!("etcd://{}/cluster", cluster.endpoints());
    let sidecars: Vec<Sidecar> = (0..3).map(|i| Sidecar::start(&format!("c{i}"), &backend, &[])).collect();
    let recorder = Recorder::start(sidecars.iter().map(|s| (s.id.clone(), s.api.clone())).collect(), "default");
    let leader = wait_for_one_leader(&sidecars, "default", TTL * 5);
    let token = sidecars[leader].status("default")["token"].as_u64().unwrap();

    // One member of three down: quorum holds and so does the leadership.
    cluster.stop(0);
    let until = Instant::now() + TTL * 2;
    while Instant::now() < until {
        let s = sidecars[leader].status("default");
        assert_eq!(s["is_leader"], true, "leadership lost with two of three members up: {s}");
        assert_eq!(s["token"], token);
        std::thread::sleep(Duration::from_millis(50));
    }

    // All down: the leader steps down by its deadline, and nobody else claims.
    cluster.stop(1);
    cluster.stop(2);
    assert_eventually!(
        timeout = TTL + SLACK,
        leaders(&sidecars, "default").is_empty(),
        "a leader kept claiming without etcd: {:?}",
        leaders(&sidecars, "default")
    );

    // etcd back: one leader again.
    for i in 0..3 {
        cluster.start_member(i);
    }
    wait_for_one_leader(&sidecars, "default", Duration::from_secs(30));
    recorder.finish();
}

#[test]
fn etcd_over_tls_with_a_user_and_password() {
    let etcd = podkit_testkit::etcd_tls(true);
    let ca = etcd.dir().join("ca.pem");
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "secret\n").unwrap();
    let backend = format!("etcd://{}/tls", etcd.addr);
    let (ca_s, pw_s) = (ca.to_str().unwrap().to_string(), password.to_str().unwrap().to_string());
    let a =
        Sidecar::start("a", &backend, &["--etcd-ca-file", &ca_s, "--etcd-user", "root", "--etcd-password-file", &pw_s]);
    assert_eventually!(timeout = TTL * 3, a.is_leader("default"), "not elected over TLS: {}", a.proc.stderr());
    // The admin /config never shows the password (only the file's path).
    assert!(!a.proc.admin().get("/config").body.contains("secret"));

    // A wrong password, or no CA, is a clear failure at start.
    std::fs::write(&password, "wrong").unwrap();
    let (code, stderr) = run_plain(
        &[
            "elect",
            "--backend",
            &backend,
            "--etcd-ca-file",
            &ca_s,
            "--etcd-user",
            "root",
            "--etcd-password-file",
            &pw_s,
            "--etcd-timeout",
            "2s",
            "--admin",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert_eq!(code, 69, "{stderr}");
    // etcd's own answer, with its gRPC code, not tonic's Debug dump of it.
    let expected = format!("cannot reach etcd {}: invalid argument: etcdserver: authentication failed", etcd.addr);
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!stderr.contains("code: '"), "{stderr}");

    // Without the CA podkit speaks plain HTTP/2 to a TLS port: the transport error's chain.
    let (code, stderr) = run_plain(
        &["elect", "--backend", &backend, "--etcd-timeout", "2s", "--admin", "127.0.0.1:0", "--listen", "127.0.0.1:0"],
        &[],
    );
    assert_eq!(code, 69, "{stderr}");
    assert!(stderr.contains(&format!("cannot reach etcd {}: ", etcd.addr)), "{stderr}");
    assert!(!stderr.contains("tonic::") && !stderr.contains("code: '"), "{stderr}");
}

// === file backend ===

#[test]
fn file_one_leader_then_failover_on_sigterm_and_kill() {
    let dir = tempfile::tempdir().unwrap();
    failover_scenario(&format!("file://{}", dir.path().display()));
}

#[test]
fn file_paused_leader_says_not_leader_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    sigstop_scenario(&format!("file://{}", dir.path().display()));
}

// === the API ===

#[test]
fn api_manual_campaign_resign_long_poll_and_compat() {
    let dir = tempfile::tempdir().unwrap();
    let backend = format!("file://{}", dir.path().display());
    let a = Sidecar::start("a", &backend, &["--campaign", "manual", "--election", "x", "--election", "y"]);
    let b = Sidecar::start("b", &backend, &["--campaign", "manual", "--election", "x", "--election", "y"]);
    assert_eq!(a.status("x")["is_leader"], false, "manual: no campaign yet");

    let won = a.api.post("/v1/elections/x/campaign?timeout=5s");
    assert_eq!(won.status, 200, "{}", won.body);
    let token = won.json()["token"].as_u64().unwrap();
    assert_eq!(a.status("y")["leader"], Value::Null, "elections are independent");

    let lost = b.api.post("/v1/elections/x/campaign?timeout=200ms");
    assert_eq!(lost.status, 408, "{}", lost.body);

    // b long-polls with what it saw; a resigns; b's campaign (still running) wins, and the
    // long poll answers with the change.
    let api = b.api.clone();
    let poll = std::thread::spawn(move || api.get(&format!("/v1/elections/x?wait=10s&token={token}")).json());
    let resigned = a.api.post("/v1/elections/x/resign");
    assert_eq!(resigned.json()["resigned"], true);
    assert_eq!(a.status("x")["is_leader"], false);
    let changed = poll.join().unwrap();
    assert_ne!(changed["token"].as_u64().unwrap(), token, "{changed}");
    assert_eventually!(b.is_leader("x"), "b's campaign did not win after a resigned");
    assert!(b.status("x")["token"].as_u64().unwrap() > token);

    // leader-elector compatibility and the list.
    assert_eq!(b.api.get("/").json()["name"], "b");
    let all = b.api.get("/v1/elections").json();
    assert_eq!(all["elections"].as_array().unwrap().len(), 2);

    // readiness follows leadership per election; unknown elections are named.
    let admin_b = b.proc.admin();
    assert_eq!(admin_b.get("/readyz?election=x").status, 200);
    assert_eq!(a.proc.admin().get("/readyz?election=x").status, 503);
    let unknown = b.api.get("/v1/elections/nope");
    assert_eq!(unknown.status, 404);
    assert!(unknown.body.contains("x, y"), "{}", unknown.body);
    assert_eq!(admin_b.metric("podkit_elect_is_leader"), Some(1.0), "{}", admin_b.metrics());
    assert!(admin_b.metrics().contains(r#"podkit_elect_is_leader{election="x"} 1"#));

    let bad = b.api.get("/v1/elections/x?wait=soon");
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"].as_str().unwrap().starts_with("wait=soon: "), "{}", bad.body);
    // A bad token gets the same JSON error, naming the parameter, the value and what is expected.
    let bad = b.api.get("/v1/elections/x?wait=5s&token=latest");
    assert_eq!(bad.status, 400, "{}", bad.body);
    let error = bad.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(error.starts_with("token=latest: expected a whole number"), "{}", bad.body);
    let bad = b.api.get("/v1/elections/x?wait=5s&wait=6s");
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.json()["error"].as_str().is_some_and(|e| e.starts_with("bad query string")), "{}", bad.body);
}

#[test]
fn renew_app_mode_follows_the_apps_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let backend = format!("file://{}", dir.path().display());
    let a = Sidecar::start("a", &backend, &["--renew", "app"]);
    // Without heartbeats the sidecar does not even campaign.
    std::thread::sleep(TTL / 2);
    assert!(!a.is_leader("default"), "campaigned without a heartbeat");
    assert_eventually!(a.api.post("/v1/elections/default/renew").status == 200, "never elected while heartbeating");
    // The app heartbeats for a while: leadership holds.
    let until = Instant::now() + TTL;
    while Instant::now() < until {
        assert_eq!(a.api.post("/v1/elections/default/renew").status, 200);
        std::thread::sleep(TTL / 8);
    }
    assert!(a.is_leader("default"));
    // The app stops: the sidecar resigns within ttl/3 (plus slack).
    assert_eventually!(timeout = TTL / 3 + SLACK, !a.is_leader("default"), "kept leadership without heartbeats");
    assert_eq!(a.api.post("/v1/elections/default/renew").status, 409);
}

#[test]
fn hooks_run_on_election_and_demotion() {
    let dir = tempfile::tempdir().unwrap();
    let backend = format!("file://{}", dir.path().join("leases").display());
    let log = dir.path().join("hooks.log");
    let elected = format!("sh -c 'echo elected $PODKIT_ELECTION $PODKIT_TOKEN $PODKIT_ID >> {}'", log.display());
    let demoted = format!("sh -c 'echo demoted $PODKIT_ELECTION $PODKIT_TOKEN >> {}'", log.display());
    let notified = TestHttp::start(None);
    let url = notified.url("/events");
    let mut a =
        Sidecar::start("a", &backend, &["--on-elected", &elected, "--on-demoted", &demoted, "--notify-url", &url]);
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    assert_eventually!(read() == "elected default 1 a\n", "{:?}", read());
    a.proc.signal(Signal::SIGTERM);
    assert_eq!(a.proc.wait(), 0);
    assert_eq!(read(), "elected default 1 a\ndemoted default 1\n");
    let events: Vec<Value> = notified.bodies.lock().unwrap().iter().map(|b| serde_json::from_str(b).unwrap()).collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!((events[0]["event"].as_str(), events[0]["token"].as_u64()), (Some("elected"), Some(1)));
    assert_eq!((events[1]["event"].as_str(), events[1]["reason"].as_str()), (Some("demoted"), Some("shutting down")));
    assert!(notified.seen.lock().unwrap().iter().all(|l| l == "POST /events HTTP/1.1"));
}

// === bad input ===

#[test]
fn bad_input_gets_clear_errors() {
    let cases: [(&[&str], i32, &str); 5] = [
        (&["elect", "--ttl", "soon"], 64, "'soon' for '--ttl"),
        (&["elect", "--ttl", "100ms"], 64, "at least 500ms"),
        (&["elect", "--backend", "zk://x"], 64, "expected file:///DIR or etcd://"),
        (&["elect", "--election", "../up"], 64, "not starting with '.'"),
        (&["elect", "--campaign", "sometimes"], 64, "sometimes"),
    ];
    for (args, code, expect) in cases {
        let (got, stderr) = run_plain(args, &[]);
        assert_eq!(got, code, "{args:?}: {stderr}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
    }

    // An etcd nobody listens on.
    let port = podkit_testkit::free_port();
    let backend = format!("etcd://127.0.0.1:{port}");
    let (got, stderr) = run_plain(
        &["elect", "--backend", &backend, "--etcd-timeout", "1s", "--admin", "127.0.0.1:0", "--listen", "127.0.0.1:0"],
        &[],
    );
    assert_eq!(got, 69, "{stderr}");
    // The endpoint and the transport error's chain, not tonic's Debug output of it
    // (`source: tonic::transport::Error(Transport, ConnectError(… Os { code: 111 …`).
    let expected = format!("cannot reach etcd 127.0.0.1:{port}: tcp connect error: Connection refused");
    assert!(stderr.contains(&expected), "{stderr}");
    for debug in ["tonic::", "ConnectError(", "Os {", "code: '"] {
        assert!(!stderr.contains(debug), "{debug}: {stderr}");
    }
}

#[test]
fn listen_takes_localhost_port_as_admin_does() {
    let dir = tempfile::tempdir().unwrap();
    let backend = format!("file://{}", dir.path().join("leases").display());
    let addr_file = dir.path().join("api.addr");
    let addr_arg = addr_file.to_str().unwrap();
    let p = Podkit::start(
        Mode::Subreaper,
        &["elect", "--backend", &backend, "--listen", "localhost:0", "--listen-addr-file", addr_arg],
    );
    let api = AdminClient::from_addr_file(&addr_file);
    assert!(api.base().contains("127.0.0.1:"), "{} {}", api.base(), p.stderr());
    assert_eventually!(api.get("/v1/elections/default").json()["is_leader"] == true, "{}", p.stderr());

    let (got, stderr) = run_plain(&["elect", "--listen", "localhost:http"], &[]);
    assert_eq!(got, 64, "{stderr}");
    assert!(stderr.contains("is not a port number"), "{stderr}");
}

#[test]
fn lease_file_owned_by_another_user_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        panic!("this test switches users and must run as root");
    }
    let dir = tempfile::tempdir().unwrap();
    let leases = dir.path().join("leases");
    std::fs::create_dir(&leases).unwrap();
    std::fs::write(leases.join("default.lease"), r#"{"leader":null,"token":3,"expires_ms":0}"#).unwrap();
    // World-readable directory and file, owned by root: nobody may read but not write them.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&leases, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(leases.join("default.lease"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let backend = format!("file://{}", leases.display());
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", crate::support::PODKIT, "elect"])
        .args(["--backend", &backend, "--admin", "127.0.0.1:0", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("default.lease") && stderr.contains("owned by another user"), "{stderr}");
}
