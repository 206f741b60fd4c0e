//! `podkit logs` network sinks end to end: the real binary shipping to real rsyslog and Redis
//! servers, and to HTTP receivers (Loki's and Elasticsearch's APIs as those servers answer
//! them) that this module runs. Every sequence number written must arrive; where the sink can
//! tell duplicates apart (Elasticsearch ids, the Redis marks), exactly once.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{Mode, Podkit, run_plain};
use nix::sys::signal::Signal;
use podkit_testkit::{SyslogTransport, assert_eventually};

/// Appends lines `seq N …` for every N in `seqs`.
fn append(path: &Path, seqs: std::ops::Range<u32>) {
    let mut f = std::io::BufWriter::new(std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap());
    for n in seqs {
        writeln!(f, "seq {n:08} {}", "x".repeat(120)).unwrap();
    }
    f.flush().unwrap();
}

/// The sequence number in a text holding `seq NNNNNNNN`.
fn seq_of(text: &str) -> Option<u32> {
    let at = text.find("seq ")?;
    text.get(at + 4..at + 12)?.parse().ok()
}

fn counts(seqs: impl IntoIterator<Item = u32>) -> BTreeMap<u32, u32> {
    let mut c = BTreeMap::new();
    for n in seqs {
        *c.entry(n).or_insert(0) += 1;
    }
    c
}

fn missing(c: &BTreeMap<u32, u32>, n: u32) -> Vec<u32> {
    (0..n).filter(|i| !c.contains_key(i)).take(20).collect()
}

#[track_caller]
fn assert_all_arrived(c: &BTreeMap<u32, u32>, n: u32, once: bool) {
    let lost = (0..n).filter(|i| !c.contains_key(i)).count();
    let doubled: Vec<_> = c.iter().filter(|(_, k)| **k > 1).map(|(i, _)| *i).take(10).collect();
    assert!(lost == 0, "{lost} of {n} lines lost: {:?}…", missing(c, n));
    if once {
        assert!(doubled.is_empty(), "lines doubled: {doubled:?}…");
    }
}

struct Setup {
    dir: tempfile::TempDir,
    logs: PathBuf,
    state: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir(&logs).unwrap();
        Setup { logs, state: dir.path().join("state"), dir }
    }

    fn log(&self) -> PathBuf {
        self.logs.join("app.log")
    }

    fn start(&self, sink: &str, extra: &[&str]) -> Podkit {
        let path = format!("{}/app.log", self.logs.display());
        let mut args = vec!["logs", "--path", &path, "--state-dir", self.state.to_str().unwrap(), "--sink", sink];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--rotate-wait", "1s", "--scan-interval", "200ms", "--retry-max", "500ms"]);
        let p = Podkit::start(Mode::Subreaper, &args);
        assert_eventually!(p.admin().healthy(), "never healthy: {}", p.stderr());
        p
    }

    /// The dead-letter file of the only sink.
    fn dead_letters(&self) -> Vec<serde_json::Value> {
        let Ok(entries) = std::fs::read_dir(&self.state) else { return Vec::new() };
        let mut out = Vec::new();
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().ends_with(".dead-letter.ndjson") {
                for l in std::fs::read_to_string(e.path()).unwrap().lines() {
                    out.push(serde_json::from_str(l).unwrap());
                }
            }
        }
        out
    }
}

fn stop(mut p: Podkit) {
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait(), 0, "{}", p.stderr());
}

// === an HTTP receiver ===

/// A request as the receiver saw it (the body un-gzipped).
#[derive(Debug, Clone)]
struct Request {
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

type Handler = dyn Fn(&Request) -> (u16, String) + Send + Sync;

/// An HTTP/1.1 server (keep-alive, one thread per connection) answering with `handler`.
struct Receiver {
    addr: SocketAddr,
}

impl Receiver {
    fn start(handler: impl Fn(&Request) -> (u16, String) + Send + Sync + 'static) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handler: Arc<Handler> = Arc::new(handler);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let handler = handler.clone();
                std::thread::spawn(move || {
                    let mut out = conn.try_clone().unwrap();
                    let mut r = BufReader::new(conn);
                    while let Some(req) = read_request(&mut r) {
                        let (status, body) = handler(&req);
                        let head = format!(
                            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                            body.len()
                        );
                        if out.write_all(head.as_bytes()).and_then(|()| out.write_all(body.as_bytes())).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Receiver { addr }
    }
}

fn read_request(r: &mut BufReader<std::net::TcpStream>) -> Option<Request> {
    let mut first = String::new();
    if r.read_line(&mut first).ok()? == 0 {
        return None;
    }
    let path = first.split(' ').nth(1)?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        if h == "\r\n" {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    if headers.get("content-encoding").is_some_and(|e| e == "gzip") {
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut plain).ok()?;
        body = plain;
    }
    Some(Request { path, headers, body })
}

// === HTTP (NDJSON) ===

#[test]
fn http_sink_retries_what_fails_and_dead_letters_what_is_refused() {
    let s = Setup::new();
    let token = s.dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let got = Arc::new(Mutex::new(Vec::<u32>::new()));
    let requests = Arc::new(Mutex::new(0u32));
    let (g, n) = (got.clone(), requests.clone());
    let rx = Receiver::start(move |req| {
        let mut n = n.lock().unwrap();
        *n += 1;
        if req.headers.get("authorization").map(String::as_str) != Some("Bearer s3cret") {
            return (401, "who are you".into());
        }
        // Down for the first three attempts: retried, not lost.
        if *n <= 3 {
            return (503, "starting".into());
        }
        let text = String::from_utf8(req.body.clone()).unwrap();
        if text.contains("poison") {
            return (400, "{\"error\":\"cannot parse\"}".into());
        }
        for l in text.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["env"], "test", "labels ride along");
            g.lock().unwrap().extend(seq_of(v["line"].as_str().unwrap()));
        }
        (200, "{}".into())
    });
    append(&s.log(), 0..2000);
    let sink = format!("http://{}/ingest?gzip=true&bearer_file={}", rx.addr, token.display());
    let p = s.start(&sink, &["--label", "env=test", "--batch-records", "500"]);
    assert_eventually!(
        got.lock().unwrap().len() >= 2000,
        "{} of 2000 delivered\n{}",
        got.lock().unwrap().len(),
        p.stderr()
    );
    assert!(p.admin().metric_sum("podkit_logs_retries_total") >= 3.0);
    // A line the receiver refuses: kept in the dead-letter file, counted, and not retried.
    std::fs::OpenOptions::new().append(true).open(s.log()).unwrap().write_all(b"poison pill\n").unwrap();
    assert_eventually!(s.dead_letters().len() == 1, "not dead-lettered: {:?}\n{}", s.dead_letters(), p.stderr());
    let dead = &s.dead_letters()[0];
    assert_eq!(dead["record"]["line"], "poison pill");
    assert!(dead["reason"].as_str().unwrap().contains("400"), "{dead}");
    assert_eq!(p.admin().metric_sum("podkit_logs_records_dead_lettered_total"), 1.0);
    append(&s.log(), 2000..3000);
    assert_eventually!(got.lock().unwrap().len() >= 3000, "{} of 3000 delivered", got.lock().unwrap().len());
    assert_all_arrived(&counts(got.lock().unwrap().iter().copied()), 3000, true);
    assert!(p.admin().ready(), "{:?}", p.admin().not_ready_reasons());
    stop(p);
}

#[test]
fn a_sink_down_while_files_rotate_gets_every_line_once_it_is_back() {
    let s = Setup::new();
    let up = Arc::new(Mutex::new(false));
    let got = Arc::new(Mutex::new(Vec::<u32>::new()));
    let (u, g) = (up.clone(), got.clone());
    let rx = Receiver::start(move |req| {
        if !*u.lock().unwrap() {
            return (503, "down".into());
        }
        for l in std::str::from_utf8(&req.body).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            g.lock().unwrap().extend(seq_of(v["line"].as_str().unwrap()));
        }
        (204, String::new())
    });
    let p = s.start(&format!("http://{}/in", rx.addr), &["--batch-records", "1000"]);
    for part in 0..5u32 {
        append(&s.log(), part * 3000..(part + 1) * 3000);
        std::fs::rename(s.log(), s.logs.join(format!("app.log.{part}"))).unwrap();
    }
    append(&s.log(), 15_000..16_000);
    let admin = p.admin();
    assert_eventually!(!admin.ready(), "ready while the sink fails");
    assert_eventually!(admin.metric_sum("podkit_logs_sink_up") == 0.0, "{}", admin.metrics());
    *up.lock().unwrap() = true;
    assert_eventually!(
        timeout = Duration::from_secs(60),
        got.lock().unwrap().len() >= 16_000,
        "{} of 16000 delivered\n{}",
        got.lock().unwrap().len(),
        p.stderr()
    );
    assert_all_arrived(&counts(got.lock().unwrap().iter().copied()), 16_000, true);
    assert_eq!(admin.metric_sum("podkit_logs_lost_bytes_total"), 0.0);
    assert_eventually!(admin.ready(), "not ready again: {:?}", admin.not_ready_reasons());
    stop(p);
}

#[test]
fn on_full_drop_drops_what_the_sink_does_not_take_and_counts_it() {
    let s = Setup::new();
    let up = Arc::new(Mutex::new(false));
    let got = Arc::new(Mutex::new(Vec::<u32>::new()));
    let (u, g) = (up.clone(), got.clone());
    let rx = Receiver::start(move |req| {
        if !*u.lock().unwrap() {
            return (503, "down".into());
        }
        for l in std::str::from_utf8(&req.body).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            g.lock().unwrap().extend(seq_of(v["line"].as_str().unwrap()));
        }
        (200, String::new())
    });
    append(&s.log(), 0..100);
    let p = s.start(&format!("http://{}/in", rx.addr), &["--on-full", "drop", "--drop-after", "1s"]);
    let admin = p.admin();
    assert_eventually!(admin.metric_sum("podkit_logs_records_dropped_total") == 100.0, "{}", admin.metrics());
    *up.lock().unwrap() = true;
    append(&s.log(), 100..200);
    assert_eventually!(got.lock().unwrap().len() >= 100, "{} delivered\n{}", got.lock().unwrap().len(), p.stderr());
    assert_eq!(*got.lock().unwrap(), (100..200).collect::<Vec<_>>(), "after the drop, reading goes on");
    stop(p);
}

// === Loki ===

#[test]
fn loki_sink_pushes_streams_with_labels_and_the_tenant() {
    let s = Setup::new();
    let password = s.dir.path().join("password");
    std::fs::write(&password, "pw").unwrap();
    let got = Arc::new(Mutex::new(Vec::<u32>::new()));
    let g = got.clone();
    let rx = Receiver::start(move |req| {
        assert_eq!(req.path, "/loki/api/v1/push");
        assert_eq!(req.headers.get("x-scope-orgid").map(String::as_str), Some("team-a"));
        // Basic auth of loki:pw.
        assert_eq!(req.headers.get("authorization").map(String::as_str), Some("Basic bG9raTpwdw=="));
        let push: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        for stream in push["streams"].as_array().unwrap() {
            assert_eq!(stream["stream"]["env"], "test");
            assert!(stream["stream"]["filename"].as_str().unwrap().ends_with("app.log"));
            for v in stream["values"].as_array().unwrap() {
                let ns: u128 = v[0].as_str().unwrap().parse().unwrap();
                assert!(ns > 1_700_000_000 * 1_000_000_000, "nanoseconds since the epoch: {ns}");
                g.lock().unwrap().extend(seq_of(v[1].as_str().unwrap()));
            }
        }
        (204, String::new())
    });
    append(&s.log(), 0..5000);
    let sink = format!("loki+http://loki@{}?tenant=team-a&password_file={}&gzip=true", rx.addr, password.display());
    let p = s.start(&sink, &["--label", "env=test", "--batch-records", "1000"]);
    assert_eventually!(got.lock().unwrap().len() >= 5000, "{} of 5000\n{}", got.lock().unwrap().len(), p.stderr());
    assert_all_arrived(&counts(got.lock().unwrap().iter().copied()), 5000, true);
    stop(p);
}

// === Elasticsearch ===

/// `_bulk` as Elasticsearch answers it: `create` of an id it has is 409; a document with an
/// `unmappable` line is refused (400, a mapping error); the very first bulk has one item
/// answered 429.
fn elasticsearch(docs: Arc<Mutex<HashMap<String, serde_json::Value>>>) -> Receiver {
    let first = Arc::new(Mutex::new(true));
    Receiver::start(move |req| {
        assert!(req.path.starts_with("/app-logs/_bulk?"), "{}", req.path);
        let text = std::str::from_utf8(&req.body).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mut items = Vec::new();
        let mut first = first.lock().unwrap();
        let mut docs = docs.lock().unwrap();
        for (i, pair) in lines.chunks(2).enumerate() {
            let action: serde_json::Value = serde_json::from_str(pair[0]).unwrap();
            let doc: serde_json::Value = serde_json::from_str(pair[1]).unwrap();
            assert!(doc["@timestamp"].is_string());
            let id = action["create"]["_id"].as_str().unwrap().to_string();
            let status = match docs.entry(id) {
                _ if *first && i == 1 => 429,
                std::collections::hash_map::Entry::Occupied(_) => 409,
                std::collections::hash_map::Entry::Vacant(_)
                    if doc["line"].as_str().unwrap().contains("unmappable") =>
                {
                    400
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(doc);
                    201
                }
            };
            let error = match status {
                400 => serde_json::json!({"type": "mapper_parsing_exception", "reason": "failed to parse"}),
                409 => serde_json::json!({"type": "version_conflict_engine_exception"}),
                429 => serde_json::json!({"type": "es_rejected_execution_exception"}),
                _ => serde_json::Value::Null,
            };
            items.push(serde_json::json!({"create": {"status": status, "error": error}}));
        }
        *first = false;
        let errors = items.iter().any(|i| i["create"]["status"] != 201);
        (200, serde_json::json!({"errors": errors, "items": items}).to_string())
    })
}

#[test]
fn elasticsearch_sink_stores_each_record_once_across_retries_and_kill_9() {
    let s = Setup::new();
    let docs = Arc::new(Mutex::new(HashMap::new()));
    let rx = elasticsearch(docs.clone());
    append(&s.log(), 0..10_000);
    std::fs::OpenOptions::new().append(true).open(s.log()).unwrap().write_all(b"an unmappable line\n").unwrap();
    let sink = format!("elasticsearch+http://{}/app-logs", rx.addr);
    let mut p = s.start(&sink, &["--batch-records", "500"]);
    assert_eventually!(docs.lock().unwrap().len() >= 3000, "{}", p.stderr());
    // The first bulk had one item answered 429, so that batch went again, and its other 499
    // documents were answered 409: duplicates, dropped.
    assert!(p.admin().metric_sum("podkit_logs_duplicates_dropped_total") >= 499.0, "{}", p.admin().metrics());
    p.signal(Signal::SIGKILL);
    assert_eq!(p.wait(), 128 + 9);
    append(&s.log(), 10_000..12_000);
    let p = s.start(&sink, &["--batch-records", "500"]);
    assert_eventually!(
        timeout = Duration::from_secs(60),
        docs.lock().unwrap().len() >= 12_000,
        "{} of 12000\n{}",
        docs.lock().unwrap().len(),
        p.stderr()
    );
    let stored = counts(docs.lock().unwrap().values().filter_map(|d| seq_of(d["line"].as_str().unwrap())));
    assert_all_arrived(&stored, 12_000, true);
    assert_eq!(docs.lock().unwrap().len(), 12_000, "nothing else stored");
    let dead = s.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0]["reason"].as_str().unwrap().contains("mapper_parsing_exception"), "{}", dead[0]);
    stop(p);
}

// === syslog, against rsyslog ===

fn received(out: &Path) -> Vec<String> {
    std::fs::read_to_string(out).unwrap_or_default().lines().map(str::to_string).collect()
}

#[test]
fn syslog_sink_delivers_to_rsyslog_across_a_receiver_restart() {
    let s = Setup::new();
    let out = s.dir.path().join("received.log");
    let mut rs = podkit_testkit::rsyslog(&out, SyslogTransport::Tcp);
    let port = rs.port();
    append(&s.log(), 0..20_000);
    let p = s.start(&format!("syslog+tcp://127.0.0.1:{port}?app=web&facility=local3"), &["--batch-records", "2000"]);
    let seqs = |out: &Path| counts(received(out).iter().filter_map(|l| seq_of(l)));
    assert_eventually!(
        timeout = Duration::from_secs(60),
        seqs(&out).len() >= 20_000,
        "{} of 20000\n{}\n{}",
        seqs(&out).len(),
        p.stderr(),
        rs.log()
    );
    let first = received(&out).into_iter().next().unwrap();
    assert!(first.starts_with("web [podkit@32473 id=\""), "{first}");
    assert!(first.contains(" path=\"") && first.contains(" offset=\"0\""), "{first}");
    assert_all_arrived(&seqs(&out), 20_000, true);

    // The receiver goes away with lines still to come; they wait, and arrive once it is back.
    rs.kill();
    append(&s.log(), 20_000..30_000);
    let admin = p.admin();
    assert_eventually!(!admin.ready(), "ready with the receiver down");
    let rs = podkit_testkit::rsyslog_on(&out, port);
    assert_eventually!(
        timeout = Duration::from_secs(60),
        seqs(&out).len() >= 30_000,
        "{} of 30000 after the restart, missing {:?}\n{}\n{}",
        seqs(&out).len(),
        missing(&seqs(&out), 30_000),
        p.stderr(),
        rs.log()
    );
    // A batch the dead receiver had not acknowledged is sent again: at least once, not lost.
    assert_all_arrived(&seqs(&out), 30_000, false);
    stop(p);
}

#[test]
fn syslog_over_tls_checks_the_receivers_certificate() {
    let s = Setup::new();
    let out = s.dir.path().join("received.log");
    let rs = podkit_testkit::rsyslog(&out, SyslogTransport::Tls);
    let ca = rs.dir().join("ca.pem");
    append(&s.log(), 0..3000);
    let sink = format!("syslog+tls://localhost:{}?ca={}", rs.port(), ca.display());
    let p = s.start(&sink, &[]);
    let seqs = || counts(received(&out).iter().filter_map(|l| seq_of(l)));
    assert_eventually!(seqs().len() >= 3000, "{} of 3000\n{}\n{}", seqs().len(), p.stderr(), rs.log());
    assert_all_arrived(&seqs(), 3000, true);
    stop(p);

    // A certificate that does not chain to the given CA: nothing is sent, and it says why.
    let other = Setup::new();
    let wrong_ca = other.dir.path().join("wrong-ca.pem");
    let server_cert = std::fs::read(rs.dir().join("server.pem")).unwrap();
    std::fs::write(&wrong_ca, server_cert).unwrap();
    append(&other.log(), 0..10);
    let mut p =
        other.start(&format!("syslog+tls://localhost:{}?ca={}", rs.port(), wrong_ca.display()), &["--grace", "1s"]);
    let admin = p.admin();
    assert_eventually!(
        admin.not_ready_reasons().iter().any(|r| r.contains("TLS handshake")),
        "{:?}\n{}",
        admin.not_ready_reasons(),
        p.stderr()
    );
    // A stop gives the batch its grace, then leaves it for the next start.
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait(), 0, "{}", p.stderr());
    assert!(!p.log_records("stopping with a batch undelivered; it is sent again at the next start").is_empty());
}

#[test]
fn syslog_over_tls_presents_a_client_certificate_when_asked() {
    let s = Setup::new();
    let out = s.dir.path().join("received.log");
    let rs = podkit_testkit::rsyslog(&out, SyslogTransport::TlsClientCert);
    let d = rs.dir();
    append(&s.log(), 0..2000);
    let sink = format!(
        "syslog+tls://127.0.0.1:{}?ca={}&cert={}&key={}&server_name=localhost",
        rs.port(),
        d.join("ca.pem").display(),
        d.join("server.pem").display(),
        d.join("server.key").display()
    );
    let p = s.start(&sink, &[]);
    let seqs = || counts(received(&out).iter().filter_map(|l| seq_of(l)));
    assert_eventually!(seqs().len() >= 2000, "{} of 2000\n{}\n{}", seqs().len(), p.stderr(), rs.log());
    assert_all_arrived(&seqs(), 2000, true);
    stop(p);
}

// === Redis streams ===

#[test]
fn redis_sink_adds_each_line_once_across_kill_9() {
    let s = Setup::new();
    let server = podkit_testkit::redis();
    append(&s.log(), 0..30_000);
    let sink = format!("redis://{}/0?stream=applogs", server.addr);
    let mut p = s.start(&sink, &["--batch-records", "1000", "--label", "env=test"]);
    let client = redis::Client::open(format!("redis://{}/0", server.addr)).unwrap();
    let mut conn = client.get_connection().unwrap();
    let len = |c: &mut redis::Connection| -> u64 { redis::cmd("XLEN").arg("applogs").query(c).unwrap() };
    assert_eventually!(len(&mut conn) >= 5000, "{}", p.stderr());
    p.signal(Signal::SIGKILL);
    assert_eq!(p.wait(), 128 + 9);
    let p = s.start(&sink, &["--batch-records", "1000", "--label", "env=test"]);
    assert_eventually!(timeout = Duration::from_secs(60), len(&mut conn) >= 30_000, "{}", p.stderr());
    let entries: Vec<(String, HashMap<String, String>)> =
        redis::cmd("XRANGE").arg("applogs").arg("-").arg("+").query(&mut conn).unwrap();
    assert_eq!(entries[0].1["env"], "test");
    assert!(entries[0].1["id"].ends_with(":0"), "{:?}", entries[0].1);
    assert_all_arrived(&counts(entries.iter().filter_map(|(_, f)| seq_of(&f["line"]))), 30_000, true);
    assert_eq!(entries.len(), 30_000);
    stop(p);
}

// === configuration ===

#[test]
fn bad_sink_urls_exit_64_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().display().to_string();
    let cases: &[(&str, &str)] = &[
        ("http://h:1/in?bearer_file=/nonexistent/token", "/nonexistent/token"),
        ("loki+http://h:3100?colour=red", "unknown option colour"),
        ("elasticsearch+http://h:9200", "give the index"),
        ("syslog+tcp://h", "give the port"),
        ("syslog+tls://h:6514?ca=/nonexistent/ca.pem", "/nonexistent/ca.pem"),
        ("redis://h:6379/0", "name the stream"),
    ];
    for (sink, says) in cases {
        let (code, err) = run_plain(&["logs", "--path", "/tmp/x/*.log", "--state-dir", &state, "--sink", sink], &[]);
        assert_eq!(code, 64, "{sink}: {err}");
        assert!(err.contains(says), "{sink}: expected {says:?} in {err}");
    }
}
