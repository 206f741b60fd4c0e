//! `podkit scatter` end to end: the real binary in front of real HTTP leaves on loopback.

use std::time::Duration;

use crate::support::{Mode, Podkit, run_plain};
use nix::sys::signal::Signal;
use podkit_testkit::{AdminClient, TestLeaf, assert_eventually};
use serde_json::{Value, json};

/// A root and a client for it.
struct Root {
    proc: Podkit,
    base: String,
    http: reqwest::blocking::Client,
}

/// One answer of the root.
#[derive(Debug)]
struct Reply {
    status: u16,
    partial: Option<String>,
    missing: Option<String>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

impl Root {
    fn start(leaves: &str, extra: &[&str]) -> Root {
        let dir = tempfile::tempdir().unwrap();
        let addr_file = dir.path().join("listen.addr");
        let addr_arg = addr_file.to_str().unwrap().to_string();
        let mut args = vec!["scatter", "--listen", "127.0.0.1:0", "--listen-addr-file", &addr_arg, "--leaves", leaves];
        args.extend(extra);
        let proc = Podkit::start(Mode::Subreaper, &args);
        let admin = AdminClient::from_addr_file(&addr_file); // also installs the TLS provider
        std::mem::forget(dir);
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        Root { proc, base: admin.base().to_string(), http }
    }

    fn send(&self, method: &str, target: &str, body: &str) -> Reply {
        let req = self.http.request(method.parse().unwrap(), format!("{}{target}", self.base)).body(body.to_string());
        let resp = req.send().unwrap();
        let h = |n: &str| resp.headers().get(n).map(|v| v.to_str().unwrap().to_string());
        let (status, partial, missing) = (resp.status().as_u16(), h("x-podkit-partial"), h("x-podkit-missing"));
        Reply { status, partial, missing, body: resp.text().unwrap() }
    }

    fn get(&self, target: &str) -> Reply {
        self.send("GET", target, "")
    }
}

fn leaves(n: usize, args: &[&str]) -> Vec<TestLeaf> {
    (0..n).map(|_| TestLeaf::start(args)).collect()
}

fn spec(leaves: &[TestLeaf]) -> String {
    leaves.iter().map(TestLeaf::url).collect::<Vec<_>>().join(",")
}

#[test]
fn every_merge_strategy_merges_in_shard_order() {
    let cases: [(&str, &str, Value); 5] = [
        ("concat", r#"[{"shard":{shard}}]"#, json!([{"shard":0},{"shard":1},{"shard":2}])),
        ("merge", r#"{"k{shard}":{shard},"same":{shard}}"#, json!({"k0":0,"k1":1,"k2":2,"same":2})),
        ("sum", r#"{"hits":{shard},"n":{"x":1},"label":"s{shard}"}"#, json!({"hits":3,"n":{"x":3},"label":"s0"})),
        (
            "topk:score:2",
            r#"[{"id":"a{shard}","score":{shard}},{"id":"b{shard}","score":-1}]"#,
            json!([{"id":"a2","score":2},{"id":"a1","score":1}]),
        ),
        ("ndjson", "{\"line\":{shard}}\n", json!("{\"line\":0}\n{\"line\":1}\n{\"line\":2}\n")),
    ];
    for (strategy, respond, expected) in cases {
        let l = leaves(3, &["--respond", respond]);
        let root = Root::start(&spec(&l), &["--merge", strategy]);
        let reply = root.get("/q");
        assert_eq!(reply.status, 200, "{strategy}: {}", reply.body);
        assert_eq!(reply.partial, None);
        let got = if strategy == "ndjson" { Value::String(reply.body.clone()) } else { reply.json() };
        assert_eq!(got, expected, "{strategy}");
    }
}

#[test]
fn the_leaves_key_order_is_kept() {
    // The README's example: each leaf writes "shard" before "score", and so does the root.
    let l = leaves(3, &["--respond", r#"[{"shard":{shard},"score":{shard}}]"#]);
    let root = Root::start(&spec(&l), &["--merge", "topk:score:2"]);
    assert_eq!(root.get("/search").body, r#"[{"shard":2,"score":2},{"shard":1,"score":1}]"#);
    let l = leaves(2, &["--respond", r#"{"zone":"z{shard}","id{shard}":{shard}}"#]);
    let root = Root::start(&spec(&l), &["--merge", "merge"]);
    assert_eq!(root.get("/").body, r#"{"zone":"z1","id0":0,"id1":1}"#);
}

#[test]
fn empty_answers_contribute_nothing_and_conflicts_can_be_errors() {
    let two = [TestLeaf::start(&["--respond", "[1,2]"]), TestLeaf::start(&["--respond", ""])];
    let root = Root::start(&spec(&two), &["--merge", "concat"]);
    let reply = root.get("/");
    assert_eq!((reply.status, reply.json()), (200, json!([1, 2])));

    let l = leaves(2, &["--respond", r#"{"same":{shard}}"#]);
    let root = Root::start(&spec(&l), &["--merge", "merge:error"]);
    let reply = root.get("/");
    assert_eq!(reply.status, 502);
    assert!(
        reply.json()["error"].as_str().unwrap().contains("\"same\" is set by more than one shard"),
        "{}",
        reply.body
    );
}

#[test]
fn dead_slow_invalid_and_failing_leaves_each_have_a_named_outcome() {
    let ok = TestLeaf::start(&[]);
    let mut dead = TestLeaf::start(&[]);
    dead.kill();
    let slow = TestLeaf::start(&["--delay", "3s"]);
    let invalid = TestLeaf::start(&["--respond", "this is not json"]);
    let failing = TestLeaf::start(&["--status", "500"]);
    let all = [ok, dead, slow, invalid, failing];

    let root = Root::start(&spec(&all), &["--deadline", "300ms", "--min-leaves", "1"]);
    let reply = root.get("/");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json(), json!([{"shard":0}]));
    assert_eq!(reply.partial.as_deref(), Some("1/5"));
    let missing = reply.missing.unwrap();
    for expected in ["1=cannot connect", "2=timed out after 300ms", "3=invalid JSON", "4=HTTP 500"] {
        assert!(missing.contains(expected), "{expected:?} not in {missing:?}");
    }

    // Requiring every shard turns the same round into an error that names each one.
    let root = Root::start(&spec(&all), &["--deadline", "300ms"]);
    let reply = root.get("/");
    assert_eq!(reply.status, 504, "{}", reply.body);
    let v = reply.json();
    assert_eq!(v["error"], "1 of 5 shards answered; 5 needed");
    assert_eq!(v["missing"].as_array().unwrap().len(), 4);
    assert_eq!(v["missing"][1], json!({"shard": 2, "error": "timed out after 300ms"}));
}

#[test]
fn a_two_level_tree_propagates_request_and_deadline() {
    let low: Vec<Vec<TestLeaf>> = (0..2).map(|_| leaves(2, &["--echo", "--respond", "[{echo}]"])).collect();
    let mids: Vec<Root> =
        low.iter().map(|l| Root::start(&spec(l), &["--merge", "concat", "--deadline", "5s"])).collect();
    let top_spec = mids.iter().map(|m| m.base.clone()).collect::<Vec<_>>().join(",");
    let top = Root::start(&top_spec, &["--merge", "concat", "--deadline", "500ms"]);
    let reply = top.send("POST", "/search?q=podkit", "the body");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let items = reply.json();
    let items = items.as_array().unwrap();
    assert_eq!(items.len(), 4, "{items:?}");
    for (i, item) in items.iter().enumerate() {
        assert_eq!(item["shard"], format!("{}/2", i % 2), "leaves see their shard within their root");
        assert_eq!(item["method"], "POST");
        assert_eq!(item["target"], "/search?q=podkit");
        assert_eq!(item["body"], "the body");
        let deadline: u64 = item["deadline_ms"].as_str().unwrap().parse().unwrap();
        assert!(deadline > 0 && deadline < 500, "the top root's 500 ms deadline reached the leaves as {deadline} ms");
    }
}

#[test]
fn hedging_answers_on_time_despite_a_slow_replica() {
    // One shard, two replicas; every 25th request to the first is slow (4 %, above its p95).
    let slow = TestLeaf::start(&["--slow-every", "25", "--slow-delay", "5s", "--respond", "[1]"]);
    let fast = TestLeaf::start(&["--respond", "[1]"]);
    let shard = format!("{}|{}", slow.url(), fast.url());
    let root = Root::start(&shard, &["--hedge", "--deadline", "2s"]);
    // Learn both replicas' latency first.
    for _ in 0..60 {
        assert_eq!(root.get("/").status, 200);
    }
    let slow_before = slow.count();
    for i in 0..100 {
        let reply = root.get("/");
        assert_eq!((reply.status, reply.partial.as_deref()), (200, None), "request {i}: {}", reply.body);
    }
    // Round-robin sends it about half of the 100 primaries (hedges may add a few).
    assert!(slow.count() - slow_before >= 40, "the slow replica did not take its turns");
    let admin = root.proc.admin();
    let hedges = admin.metrics().lines().filter(|l| l.starts_with("podkit_scatter_hedges_total")).count();
    assert!(hedges > 0, "no hedge was sent:\n{}", admin.metrics());
}

#[test]
fn connection_errors_are_retried_on_another_replica() {
    let mut dead = TestLeaf::start(&[]);
    dead.kill();
    let alive = TestLeaf::start(&["--respond", "[7]"]);
    let root = Root::start(&format!("{}|{}", dead.url(), alive.url()), &["--breaker-failures", "1000"]);
    for _ in 0..4 {
        let reply = root.get("/");
        assert_eq!((reply.status, reply.json()), (200, json!([7])));
    }
    assert!(root.proc.admin().metric("podkit_scatter_retries_total").unwrap() >= 1.0);
}

#[test]
fn an_open_breaker_skips_the_leaf_and_fails_readiness() {
    let mut dead = TestLeaf::start(&[]);
    dead.kill();
    let root = Root::start(&dead.url(), &["--breaker-failures", "2", "--breaker-cooldown", "1h", "--retries", "0"]);
    let admin = root.proc.admin();
    assert_eventually!(admin.ready(), "ready while the breaker is closed: {:?}", admin.not_ready_reasons());
    for _ in 0..2 {
        assert_eq!(root.get("/").status, 502);
    }
    let reply = root.get("/");
    assert_eq!(reply.json()["missing"][0]["error"], "circuit open");
    assert_eventually!(
        admin.not_ready_reasons().iter().any(|r| r.contains("0 of 1 shards reachable; 1 needed")),
        "{:?}",
        admin.not_ready_reasons()
    );
    assert_eq!(admin.metric("podkit_scatter_leaves_circuit_open"), Some(1.0));
}

#[test]
fn file_leaves_are_read_again_when_they_change() {
    let a = TestLeaf::start(&["--respond", "[\"a\"]"]);
    let b = TestLeaf::start(&["--respond", "[\"b\"]"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("leaves");
    std::fs::write(&file, format!("# shards, one per line\n{}\n", a.url())).unwrap();
    let root = Root::start(&format!("file://{}", file.display()), &["--resolve-interval", "50ms"]);
    assert_eq!(root.get("/").json(), json!(["a"]));
    std::fs::write(&file, format!("{}\n{}\n", a.url(), b.url())).unwrap();
    assert_eventually!(root.get("/").json() == json!(["a", "b"]), "the new leaf never joined");
}

#[test]
fn dns_leaves_are_every_address_a_name_resolves_to() {
    use std::net::ToSocketAddrs;
    let leaf = TestLeaf::start(&["--respond", "[\"dns\"]"]);
    let port = leaf.addr.port();
    let expected: std::collections::BTreeSet<_> =
        ("localhost", port).to_socket_addrs().unwrap().map(|a| a.ip()).collect();
    let root = Root::start(&format!("dns://localhost:{port}"), &["--min-leaves", "1", "--resolve-interval", "100ms"]);
    let admin = root.proc.admin();
    assert_eventually!(
        admin.metric("podkit_scatter_shards") == Some(expected.len() as f64),
        "expected one shard per address of localhost ({expected:?}):\n{}",
        admin.metrics()
    );
    // The leaf listens on 127.0.0.1; any other address of localhost (::1) is a missing shard.
    let reply = root.get("/");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.json().as_array().unwrap().contains(&json!("dns")));
}

#[test]
fn merge_containers_get_every_answer() {
    let l = leaves(2, &[]);
    // merge-exec: the command's stdout is the answer; `cat` answers with the document itself.
    let root = Root::start(&spec(&l), &["--merge-exec", "cat"]);
    let doc = root.get("/").json();
    assert_eq!(doc["responses"], json!([{"shard":0,"body":[{"shard":0}]},{"shard":1,"body":[{"shard":1}]}]));
    assert_eq!(doc["missing"], json!([]));

    // merge-http: an echoing app shows what it was POSTed.
    let merger = TestLeaf::start(&["--echo"]);
    let root = Root::start(&spec(&l), &["--merge-http", &format!("{}/merge", merger.url())]);
    let echoed = root.get("/").json();
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["target"], "/merge");
    let doc: Value = serde_json::from_str(echoed["body"].as_str().unwrap()).unwrap();
    assert_eq!(doc["responses"].as_array().unwrap().len(), 2);

    let root = Root::start(&spec(&l), &["--merge-exec", "sh -c 'echo broken >&2; exit 3'"]);
    let reply = root.get("/");
    assert_eq!(reply.status, 502);
    assert!(reply.body.contains("broken"), "{}", reply.body);
}

#[test]
fn a_late_leaf_leaves_the_merge_program_its_share_of_the_deadline() {
    let fast = TestLeaf::start(&["--echo", "--respond", "[{echo}]"]);
    let late = TestLeaf::start(&["--delay", "60s"]);
    let both = format!("{},{}", fast.url(), late.url());
    // The leaves get 1 s of the 3 s deadline; the merge program the 2 s after it. Had the
    // leaves the whole deadline, the late one would use it up and `cat` would get nothing.
    let args = ["--merge-exec", "cat", "--deadline", "3s", "--merge-time", "2s", "--min-leaves", "1"];
    let root = Root::start(&both, &args);
    let reply = root.get("/");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.partial.as_deref(), Some("1/2"));
    assert_eq!(reply.missing.as_deref(), Some("1=timed out after 1s"));
    let doc = reply.json();
    assert_eq!(doc["missing"], json!([{"shard": 1, "error": "timed out after 1s"}]));
    let deadline: u64 = doc["responses"][0]["body"][0]["deadline_ms"].as_str().unwrap().parse().unwrap();
    assert!(deadline <= 1000, "a leaf was given {deadline} ms of the leaves' 1 s");

    // By default the merge keeps a fifth of the deadline (at most 250 ms): leaves get 800 ms of 1 s.
    let root = Root::start(&fast.url(), &["--merge-exec", "cat", "--deadline", "1s"]);
    let doc = root.get("/").json();
    let deadline: u64 = doc["responses"][0]["body"][0]["deadline_ms"].as_str().unwrap().parse().unwrap();
    assert!(deadline <= 800, "a leaf was given {deadline} ms of the leaves' 800 ms");
}

#[test]
fn sigterm_finishes_requests_in_flight() {
    let l = leaves(2, &["--delay", "500ms"]);
    let mut root = Root::start(&spec(&l), &[]);
    assert_eq!(root.get("/").status, 200);
    let (base, http) = (root.base.clone(), root.http.clone());
    let pending = std::thread::spawn(move || http.get(format!("{base}/")).send().map(|r| r.status().as_u16()));
    assert_eventually!(l[0].count() >= 2, "the second request did not reach the leaves");
    root.proc.signal(Signal::SIGTERM);
    assert_eq!(pending.join().unwrap().unwrap(), 200, "the request in flight was answered");
    assert_eq!(root.proc.wait(), 0);
}

#[test]
fn a_callers_short_deadline_does_not_open_breakers_and_compression_is_not_asked_for() {
    let l = leaves(2, &["--echo", "--respond", "[{echo}]", "--delay", "50ms"]);
    let root = Root::start(&spec(&l), &["--breaker-failures", "2", "--deadline", "2s"]);
    for _ in 0..5 {
        let r = root.http.get(format!("{}/x", root.base)).header("x-podkit-deadline-ms", "5").send().unwrap();
        assert_eq!(r.status().as_u16(), 504);
    }
    let r = root.http.get(format!("{}/x", root.base)).header("accept-encoding", "gzip").send().unwrap();
    assert_eq!(r.status().as_u16(), 200, "the leaves were blamed for the caller's deadline");
    let items: Value = r.json().unwrap();
    assert_eq!(items.as_array().unwrap().len(), 2);
    assert_eq!(items[0]["accept_encoding"], "", "the root reads leaf answers and decodes no compression");
    assert!(root.proc.admin().ready());
}

#[test]
fn bad_options_exit_64() {
    for (args, expect) in [
        (vec!["scatter", "--leaves", "http://a:1", "--merge", "median"], "unknown merge strategy"),
        (vec!["scatter", "--leaves", "http://a:1", "--min-leaves", "0"], "expected a number of shards"),
        (vec!["scatter", "--leaves", "ftp://a"], "expected http://HOST:PORT"),
        (vec!["scatter", "--leaves", "http://a:1", "--hedge-budget", "200%"], "percentage"),
        (vec!["scatter", "--leaves", "http://a:1", "--merge-time", "100ms"], "a built-in --merge needs none"),
        (
            vec!["scatter", "--leaves", "http://a:1", "--merge-exec", "cat", "--merge-time", "1s"],
            "expected less than the deadline",
        ),
    ] {
        let (code, stderr) = run_plain(&args, &[]);
        assert_eq!(code, 64, "{args:?}: {stderr}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
    }
}

#[test]
fn a_busy_listen_port_exits_64_before_the_admin_port_opens() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let admin_file = dir.path().join("admin");
    let (code, stderr) = run_plain(
        &[
            "scatter",
            "--leaves",
            "http://127.0.0.1:1",
            "--listen",
            &addr,
            "--admin",
            "127.0.0.1:0",
            "--admin-addr-file",
            admin_file.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains(&addr) && stderr.contains("--listen"), "names the address and the option: {stderr}");
    assert!(!admin_file.exists(), "the admin listener opened before the error");
    assert!(!stderr.contains("admin listener listening"), "{stderr}");
}
