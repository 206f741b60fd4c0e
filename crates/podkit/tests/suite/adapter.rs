//! `podkit adapter` against real memcached, Redis, nutcracker, Debian's redis_exporter and a
//! real Prometheus server.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use podkit_testkit::{
    assert_eventually, memcached, memcached_on, nutcracker, prometheus, redis, redis_exporter, wait_for_file,
};

use crate::support::{Mode, Podkit, promtool, run_plain};

/// Starts the adapter with `args`; returns it and its metrics address.
fn adapter(args: &[&str]) -> (Podkit, String) {
    let dir = tempfile::tempdir().unwrap();
    let addr_file = dir.path().join("listen.addr");
    let addr_file = addr_file.to_str().unwrap().to_string();
    let mut all = vec!["adapter", "--listen", "127.0.0.1:0", "--listen-addr-file", &addr_file];
    all.extend_from_slice(args);
    let p = Podkit::start(Mode::Subreaper, &all);
    let addr = wait_for_file(std::path::Path::new(&addr_file), Duration::from_secs(10));
    std::mem::forget(dir);
    (p, format!("http://{}", addr.trim()))
}

fn get(url: &str) -> String {
    podkit_testkit::install_crypto_provider();
    reqwest::blocking::get(url).unwrap().text().unwrap()
}

/// (family name → (type, label names)) and (series text → value), from a text exposition.
#[derive(Debug, Default)]
struct Parsed {
    families: BTreeMap<String, (String, BTreeSet<String>)>,
    values: BTreeMap<String, f64>,
}

/// Parses the text format well enough to compare two exporters: `# TYPE` lines and samples
/// whose label values hold no commas or braces (true of everything compared here).
fn parse(body: &str) -> Parsed {
    let mut p = Parsed::default();
    let mut types = BTreeMap::new();
    for line in body.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (n, k) = t.split_once(' ').unwrap();
            types.insert(n.to_string(), k.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut names = BTreeSet::new();
        let mut pairs = BTreeMap::new();
        for pair in labels.split("\",").filter(|s| !s.is_empty()) {
            let (k, v) = pair.split_once("=\"").unwrap();
            names.insert(k.trim_start_matches(',').to_string());
            pairs.insert(k.trim_start_matches(',').to_string(), v.trim_end_matches('"').to_string());
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s).filter(|b| types.get(*b).is_some_and(|t| t == "summary" || t == "histogram"))
            })
            .unwrap_or(name);
        names.remove("quantile");
        names.remove("le");
        let kind = types.get(family).cloned().unwrap_or_else(|| "untyped".into());
        p.families.entry(family.to_string()).or_insert((kind, names));
        let key = format!("{name}{{{}}}", pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","));
        p.values.insert(key, value.parse().unwrap_or(f64::NAN));
    }
    p
}

/// What `promtool check metrics` says about a body: its lint complaints. A body it cannot
/// parse fails the test.
fn promtool_complaints(body: &str) -> BTreeSet<String> {
    let (_, said) = promtool(body);
    assert!(
        !said.contains("error while linting") && !said.contains("parsing error"),
        "promtool cannot read it: {said}\n{body}"
    );
    said.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect()
}

fn redis_cli(addr: SocketAddr, args: &[&str]) {
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(cmd.as_bytes()).unwrap();
    let mut buf = [0u8; 512];
    let _ = s.read(&mut buf).unwrap();
}

/// Sends memcached text commands on one connection and reads until the last answer.
fn memcache(addr: SocketAddr, commands: &str, answers: usize) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(commands.as_bytes()).unwrap();
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    while got.matches("END\r\n").count()
        + got.matches("STORED\r\n").count()
        + got.matches("EXISTS\r\n").count()
        + got.matches("NOT_FOUND\r\n").count()
        < answers
    {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "memcached closed: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    got
}

/// Families of redis_exporter's own, not about Redis.
fn exporter_own(name: &str) -> bool {
    name.starts_with("go_")
        || name.starts_with("process_")
        || name.starts_with("promhttp_")
        || name.starts_with("redis_exporter_")
        || name == "redis_target_scrape_request_errors_total"
        || name == "redis_last_key_groups_scrape_duration_milliseconds"
}

#[test]
fn redis_series_are_the_exporters_with_the_same_types_labels_and_counts() {
    let r = redis();
    for i in 0..20 {
        redis_cli(r.addr, &["SET", &format!("k{i}"), "v"]);
    }
    redis_cli(r.addr, &["EXPIRE", "k0", "1000"]);
    redis_cli(r.addr, &["SELECT", "3"]);
    redis_cli(r.addr, &["GET", "k1"]);
    for _ in 0..7 {
        redis_cli(r.addr, &["GET", "k1"]);
    }
    redis_cli(r.addr, &["NOSUCHCOMMAND"]);
    let exporter = redis_exporter(r.addr);
    let (_a, url) = adapter(&["--redis", &format!("redis://{}", r.addr)]);

    let theirs_body = get(&format!("http://{}/metrics", exporter.addr));
    let ours_body = get(&format!("{url}/metrics"));
    let (theirs, ours) = (parse(&theirs_body), parse(&ours_body));
    let mut missing = Vec::new();
    for (name, (kind, labels)) in &theirs.families {
        if exporter_own(name) {
            continue;
        }
        match ours.families.get(name) {
            Some((k, l)) if k == kind && l == labels => {}
            Some(other) => missing.push(format!("{name}: theirs {kind} {labels:?}, ours {other:?}")),
            None => missing.push(format!("{name}: missing")),
        }
    }
    assert!(
        missing.is_empty(),
        "series that differ from redis_exporter's:\n{}\n\nours:\n{ours_body}",
        missing.join("\n")
    );
    assert!(ours.families.len() >= 100, "only {} families", ours.families.len());

    // Counters agree after the known workload (these commands are not the exporters' own).
    for key in [
        "redis_commands_total{cmd=set}",
        "redis_commands_total{cmd=get}",
        "redis_db_keys{db=db0}",
        "redis_db_keys_expiring{db=db0}",
        "redis_db_keys{db=db3}",
        "redis_errors_total{err=ERR}",
    ] {
        assert_eq!(ours.values.get(key), theirs.values.get(key), "{key}");
    }
    assert_eq!(ours.values["redis_commands_total{cmd=set}"], 20.0);
    assert_eq!(ours.values["redis_up{}"], 1.0);

    // Both parse; ours has no lint complaint redis_exporter's names do not have themselves.
    let theirs_lint = promtool_complaints(&theirs_body);
    let extra: Vec<_> = promtool_complaints(&ours_body).into_iter().filter(|c| !theirs_lint.contains(c)).collect();
    assert!(extra.is_empty(), "lint complaints of our own: {extra:?}");
}

#[test]
fn memcached_counts_a_known_workload_under_the_exporters_names() {
    let m = memcached();
    // 3 sets (one large, in another slab class), 2 hits, 1 miss, a CAS hit and a CAS miss.
    let big = "x".repeat(300);
    memcache(
        m.addr,
        &format!("set a 0 0 1\r\n1\r\nset b 0 0 1\r\n2\r\nset big 0 0 300\r\n{big}\r\nget a\r\nget b\r\nget nope\r\n"),
        6,
    );
    let gets = memcache(m.addr, "gets a\r\n", 1);
    let cas = gets.split_whitespace().nth(4).unwrap().to_string();
    memcache(m.addr, &format!("cas a 0 0 1 {cas}\r\n9\r\ncas zz 0 0 1 1\r\n9\r\n"), 2);
    let (_a, url) = adapter(&["--memcached", &m.addr.to_string()]);
    let body = get(&format!("{url}/metrics"));
    let p = parse(&body);
    let v = |k: &str| p.values.get(k).copied().unwrap_or_else(|| panic!("no {k} in\n{body}"));
    assert_eq!(v("memcached_up{}"), 1.0);
    assert_eq!(v("memcached_commands_total{command=get,status=hit}"), 3.0); // the gets too
    assert_eq!(v("memcached_commands_total{command=get,status=miss}"), 1.0);
    assert_eq!(v("memcached_commands_total{command=cas,status=hit}"), 1.0);
    assert_eq!(v("memcached_commands_total{command=cas,status=miss}"), 1.0);
    // cmd_set counts the two CAS commands again: set hits are the three plain sets.
    assert_eq!(v("memcached_commands_total{command=set,status=hit}"), 3.0);
    assert_eq!(v("memcached_current_items{}"), 3.0);
    assert_eq!(v("memcached_max_connections{}"), 1024.0);
    let slabs: BTreeSet<_> = p.values.keys().filter(|k| k.starts_with("memcached_slab_current_items{")).collect();
    assert_eq!(slabs.len(), 2, "two slab classes in use: {slabs:?}");
    for (name, kind) in [
        ("memcached_items_evicted_total", "counter"),
        ("memcached_limit_bytes", "gauge"),
        ("memcached_read_bytes_total", "counter"),
        ("memcached_slab_chunk_size_bytes", "gauge"),
        ("memcached_version", "gauge"),
    ] {
        assert_eq!(p.families.get(name).map(|f| f.0.as_str()), Some(kind), "{name}");
    }
    // The only lint complaints are about memcached_exporter's own names: counters without
    // `_total`.
    let lint = promtool_complaints(&body);
    assert!(
        lint.iter()
            .all(|c| c.starts_with("memcached_") && c.ends_with("counter metrics should have \"_total\" suffix")),
        "{lint:?}"
    );
}

#[test]
fn a_dead_source_reports_down_while_the_others_keep_scraping_and_comes_back() {
    let mut m = memcached();
    let port = m.port();
    let r = redis();
    let (_a, url) =
        adapter(&["--memcached", &m.addr.to_string(), "--redis", &format!("redis://{}", r.addr), "--timeout", "1s"]);
    let scrape = || parse(&get(&format!("{url}/metrics")));
    assert_eq!(scrape().values.get("memcached_up{}"), Some(&1.0));
    m.kill();
    let p = scrape();
    assert_eq!(p.values.get("memcached_up{}"), Some(&0.0));
    assert_eq!(p.values.get(&format!("podkit_adapter_source_up{{kind=memcached,source={}}}", m.addr)), Some(&0.0));
    assert_eq!(p.values.get("redis_up{}"), Some(&1.0));
    assert!(p.values.contains_key("redis_db_keys{db=db0}"));
    assert!(!p.values.contains_key("memcached_current_items{}"));
    let _m = memcached_on(port);
    assert_eventually!(scrape().values.get("memcached_up{}") == Some(&1.0), "memcached never came back");
}

#[test]
fn twemproxy_and_ambassador_stats_become_pool_and_server_series() {
    let m = memcached();
    let pool = |l: &str| {
        format!(
            "alpha:\n  listen: {l}\n  hash: fnv1a_64\n  distribution: ketama\n  servers:\n    - {}:1 cache0\n",
            m.addr
        )
    };
    let twem = nutcracker(&|l| pool(&l.to_string()));
    let stats = SocketAddr::from(([127, 0, 0, 1], twem.extra_ports[0]));
    memcache(twem.addr, "set a 0 0 1\r\n1\r\nget a\r\n", 2);

    // podkit ambassador reads the same file and serves the same stats document.
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nutcracker.yml");
    std::fs::write(&conf, pool("127.0.0.1:0")).unwrap();
    let amb = Podkit::start(Mode::Subreaper, &["ambassador", "-c", conf.to_str().unwrap(), "-s", "0"]);
    let stats_of = || {
        let pools = amb.admin().get("/pools");
        if pools.status == 200 { pools.json()["stats"].as_str().map(String::from) } else { None }
    };
    assert_eventually!(stats_of().is_some(), "the ambassador never reported its stats address");
    let amb_stats = stats_of().unwrap();

    let (_a, url) = adapter(&["--config", &{
        let f = dir.path().join("adapter.yaml");
        std::fs::write(
                &f,
                format!(
                    "sources:\n  - twemproxy: {stats}\n    name: nutcracker\n    labels: {{proxy: nutcracker}}\n  - twemproxy: {}\n    name: ambassador\n    labels: {{proxy: podkit}}\n",
                    amb_stats.trim()
                ),
            )
            .unwrap();
        f.to_str().unwrap().to_string()
    }]);
    let body = get(&format!("{url}/metrics"));
    let p = parse(&body);
    assert_eq!(p.values.get("twemproxy_up{proxy=nutcracker}"), Some(&1.0), "{body}");
    assert_eq!(p.values.get("twemproxy_up{proxy=podkit}"), Some(&1.0), "{body}");
    assert_eq!(p.values.get("twemproxy_pool_client_connections{pool=alpha,proxy=podkit}"), Some(&0.0), "{body}");
    // nutcracker updates its stats every 30 s by default: the request count may lag, the
    // series are there.
    assert!(
        p.values.contains_key("twemproxy_server_requests_total{pool=alpha,proxy=nutcracker,server=cache0}"),
        "{body}"
    );
    assert_eq!(p.families.get("twemproxy_server_requests_total").map(|f| f.0.as_str()), Some("counter"));
    promtool_complaints(&body);
    drop(amb);
}

#[test]
fn prometheus_scrapes_the_adapter_and_a_reexported_endpoint_gets_its_labels() {
    let m = memcached();
    memcache(m.addr, "set a 0 0 1\r\n1\r\nset b 0 0 1\r\n2\r\n", 2);
    // Another podkit's admin /metrics (OpenMetrics), re-exported with the container's labels.
    let app = Podkit::start(Mode::Subreaper, &["run", "--", "sleep", "600"]);
    let app_metrics = format!("{}/metrics", app.admin().base());
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("adapter.yaml");
    std::fs::write(
        &f,
        format!("sources:\n  - memcached: {}\n  - prometheus: {app_metrics}\n    labels: {{container: app}}\n", m.addr),
    )
    .unwrap();
    let (_a, url) = adapter(&["--config", f.to_str().unwrap()]);
    let body = get(&format!("{url}/metrics"));
    assert!(body.contains("podkit_run_"), "{body}");
    assert!(body.lines().filter(|l| l.starts_with("podkit_run_")).all(|l| l.contains("container=\"app\"")), "{body}");
    assert!(!body.contains("# EOF"), "{body}");
    promtool_complaints(&body);

    // gzip, as Prometheus asks for it.
    let z = reqwest::blocking::Client::new()
        .get(format!("{url}/metrics"))
        .header("Accept-Encoding", "gzip")
        .send()
        .unwrap();
    assert_eq!(z.headers()["content-encoding"], "gzip");
    let mut text = String::new();
    flate2::read::GzDecoder::new(z).read_to_string(&mut text).unwrap();
    assert!(text.contains("memcached_current_items 2"), "{text}");

    let target: SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let prom = prometheus(&[target]);
    let query = |q: &str| -> serde_json::Value {
        let u = format!("http://{}/api/v1/query", prom.addr);
        reqwest::blocking::get(reqwest::Url::parse_with_params(&u, &[("query", q)]).unwrap()).unwrap().json().unwrap()
    };
    assert_eventually!(
        timeout = Duration::from_secs(30),
        query("memcached_current_items")["data"]["result"][0]["value"][1] == "2",
        "Prometheus never saw memcached_current_items = 2: {}",
        query("memcached_current_items")
    );
    let up = query("podkit_adapter_source_up");
    assert_eq!(up["data"]["result"].as_array().map(Vec::len), Some(2), "{up}");
    let r = query("count({__name__=~\"podkit_run_.+\",container=\"app\"})");
    assert!(r["data"]["result"].as_array().is_some_and(|a| !a.is_empty()), "{r}");
}

#[test]
fn bad_configuration_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let cases = [
        (vec!["adapter".to_string()], "no source"),
        (
            vec![
                "adapter".into(),
                "--config".into(),
                write("a.yaml", "sources:\n  - redis: redis://127.0.0.1:1\n    pasword_file: x\n"),
            ],
            "pasword_file",
        ),
        (
            vec![
                "adapter".into(),
                "--config".into(),
                write("b.yaml", "sources:\n  - redis: redis://127.0.0.1:1\n  - redis: redis://127.0.0.1:2\n"),
            ],
            "same labels",
        ),
        (vec!["adapter".into(), "--config".into(), write("c.yaml", "sources:\n  - {}\n")], "give one of"),
        (vec!["adapter".into(), "--memcached".into(), "127.0.0.1".into()], "expected HOST:PORT"),
        (
            vec![
                "adapter".into(),
                "--config".into(),
                write("d.yaml", "sources:\n  - memcached: 127.0.0.1:1\n    labels: {\"bad-name\": x}\n"),
            ],
            "bad-name",
        ),
        (
            vec![
                "adapter".into(),
                "--config".into(),
                write("e.yaml", "sources:\n  - memcached: 127.0.0.1:1\n    password_file: /x\n"),
            ],
            "is for redis",
        ),
        (
            vec![
                "adapter".into(),
                "--config".into(),
                write("f.yaml", "sources:\n  - json: http://127.0.0.1:1/\n    module: app\n"),
            ],
            "no JSON module \"app\"",
        ),
        (
            vec![
                "adapter".into(),
                "--config".into(),
                write(
                    "g.yaml",
                    "sources:\n  - json: http://127.0.0.1:1/\nmodules:\n  default:\n    metrics:\n    - {name: x, path: '{.a[?(@.b ==}'}\n",
                ),
            ],
            "module default: metrics[0] (x): path",
        ),
    ];
    for (args, says) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out) = run_plain(&args, &[]);
        assert_eq!(code, 64, "{args:?}: {out}");
        assert!(out.contains(says), "{args:?} should say {says:?}: {out}");
    }
}

/// Starts `podkit elect` (the app whose JSON status page is translated) and waits until it leads.
fn elect_leading(dir: &std::path::Path) -> (Podkit, String) {
    let addr_file = dir.join("elect.addr");
    let backend = format!("file://{}", dir.join("leases").display());
    let p = Podkit::start(
        Mode::Subreaper,
        &[
            "elect",
            "--id",
            "web-1",
            "--backend",
            &backend,
            "--listen",
            "127.0.0.1:0",
            "--listen-addr-file",
            addr_file.to_str().unwrap(),
        ],
    );
    let url = format!("http://{}/v1/elections/default", wait_for_file(&addr_file, Duration::from_secs(10)).trim());
    assert_eventually!(get(&url).contains("\"is_leader\":true"), "elect never led: {}", get(&url));
    (p, url)
}

#[test]
fn a_json_status_page_becomes_series_through_a_module_and_through_probe() {
    let dir = tempfile::tempdir().unwrap();
    let (_elect, status) = elect_leading(dir.path());
    // The module is json_exporter's format, inline in the adapter's file.
    let config = dir.path().join("adapter.yaml");
    std::fs::write(
        &config,
        format!(
            r#"sources:
  - json: {status}
    module: election
    labels: {{container: elect}}
modules:
  election:
    metrics:
    - name: election_is_leader
      path: '{{.is_leader}}'
      valuetype: gauge
      help: Whether this replica leads
      labels: {{leader: '{{.leader}}', election: '{{.election}}'}}
    - name: election
      type: object
      path: '{{$}}'
      valuetype: counter
      values: {{terms_total: '{{.token}}'}}
    - name: election_missing
      path: '{{.no_such_field}}'
"#
        ),
    )
    .unwrap();
    let (_a, url) = adapter(&["--config", config.to_str().unwrap()]);
    let body = get(&format!("{url}/metrics"));
    let p = parse(&body);
    assert_eq!(p.values.get("election_is_leader{container=elect,election=default,leader=web-1}"), Some(&1.0), "{body}");
    assert_eq!(p.families.get("election_is_leader").map(|f| f.0.as_str()), Some("gauge"));
    assert_eq!(p.values.get("election_terms_total{container=elect}"), Some(&1.0), "{body}");
    assert_eq!(p.families.get("election_terms_total").map(|f| f.0.as_str()), Some("counter"));
    // The field that is not there is left out, counted, and the source is still up.
    assert!(!body.contains("election_missing"), "{body}");
    let source = format!("kind=json,source={status}");
    assert_eq!(p.values.get(&format!("podkit_adapter_source_translation_errors{{{source}}}")), Some(&1.0), "{body}");
    assert_eq!(p.values.get(&format!("podkit_adapter_source_up{{{source}}}")), Some(&1.0), "{body}");
    assert!(promtool_complaints(&body).is_empty(), "{body}");

    // json_exporter's own /probe form, as its Prometheus jobs ask it.
    let probe = get(&format!("{url}/probe?module=election&target={status}"));
    assert!(probe.contains("election_is_leader{election=\"default\",leader=\"web-1\"} 1"), "{probe}");
    let r = reqwest::blocking::get(format!("{url}/probe?module=nope&target={status}")).unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().unwrap().contains("no JSON module \"nope\""));
}

#[test]
fn json_exporters_own_config_file_works_as_it_is_with_auth_post_and_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let app = crate::support::TestHttp::start(None);
    *app.reply.lock().unwrap() =
        r#"{"values": [{"id": "id-A", "count": 1, "state": "ACTIVE"}, {"id": "id-B", "count": 2, "state": "INACTIVE"}]}"#
            .to_string();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    // json_exporter's config.yml, including the camel-case key it ignores.
    let exporter = dir.path().join("config.yml");
    std::fs::write(
        &exporter,
        format!(
            r#"modules:
  default:
    headers: {{X-Probe: podkit}}
    body: {{content: '{{"q": 1}}'}}
    valid_status_codes: [200, 203]
    http_client_config:
      bearer_token_file: {}
    metrics:
    - name: example_value
      type: object
      path: '{{.values[?(@.state == "ACTIVE")]}}'
      epochTimestamp: '{{.timestamp}}'
      labels: {{id: '{{.id}}'}}
      values: {{count: '{{.count}}', active: 1}}
"#,
            token.display()
        ),
    )
    .unwrap();
    let (_a, url) = adapter(&["--json", &app.url("/status"), "--json-config", exporter.to_str().unwrap()]);
    let body = get(&format!("{url}/metrics"));
    assert!(body.contains("example_value_count{id=\"id-A\"} 1\n"), "{body}");
    assert!(body.contains("example_value_active{id=\"id-A\"} 1\n"), "{body}");
    assert!(!body.contains("id-B"), "{body}");
    let headers = app.headers.lock().unwrap().last().cloned().unwrap();
    for h in ["authorization: bearer s3cret", "x-probe: podkit", "accept: application/json"] {
        assert!(headers.iter().any(|l| l == h), "{h} not sent: {headers:?}");
    }
    assert_eq!(app.seen.lock().unwrap().last().unwrap(), "POST /status HTTP/1.1");
    assert_eq!(app.bodies.lock().unwrap().last().unwrap(), r#"{"q": 1}"#);
    let up = format!("podkit_adapter_source_up{{kind=json,source={}}}", app.url("/status"));
    // 203 is listed, so it is an answer.
    app.status.store(203, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(parse(&get(&format!("{url}/metrics"))).values.get(&up), Some(&1.0));
    // A status not in valid_status_codes, and a body that is not JSON: the source is down.
    app.status.store(500, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(parse(&get(&format!("{url}/metrics"))).values.get(&up), Some(&0.0));
    app.status.store(200, std::sync::atomic::Ordering::SeqCst);
    *app.reply.lock().unwrap() = "<html>not json</html>".into();
    let body = get(&format!("{url}/metrics"));
    assert_eq!(parse(&body).values.get(&up), Some(&0.0), "{body}");
    assert!(!body.contains("example_value"), "{body}");
}

/// Starts the adapter with a StatsD listener on a free port; returns it, its metrics URL and
/// the StatsD address.
fn statsd_adapter(dir: &std::path::Path, extra: &[&str]) -> (Podkit, String, SocketAddr) {
    let addr_file = dir.join("statsd.addr");
    let mut args = vec!["--statsd", "127.0.0.1:0", "--statsd-addr-file", addr_file.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (p, url) = adapter(&args);
    let statsd: SocketAddr = wait_for_file(&addr_file, Duration::from_secs(10)).trim().parse().unwrap();
    (p, url, statsd)
}

#[test]
fn statsd_lines_over_udp_and_tcp_become_the_mapped_series() {
    let dir = tempfile::tempdir().unwrap();
    let mapping = dir.path().join("mapping.yml");
    std::fs::write(
        &mapping,
        r#"defaults:
  observer_type: histogram
  histogram_options: {buckets: [0.05, 0.5, 5]}
mappings:
- match: "shop.*.orders"
  name: "shop_orders_total"
  labels: {region: "$1", job: shop}
- match: "shop.debug.*"
  action: drop
  name: dropped
- match: "shop.*.checkout_time"
  observer_type: summary
  name: "shop_checkout_seconds"
  labels: {region: "$1"}
"#,
    )
    .unwrap();
    let (a, url, statsd) = statsd_adapter(dir.path(), &["--statsd-mapping-config", mapping.to_str().unwrap()]);
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // One packet, several lines, as clients batch them.
    let packet = "shop.eu.orders:1|c\nshop.eu.orders:3|c|@0.5\nshop.us.orders:2|c\n\
                  queue.depth:10|g\nqueue.depth:+5|g\nqueue.depth:-3|g\n\
                  render:120|ms\nrender:2500|ms\nrender:40|ms|@0.25\n\
                  shop.debug.trace:1|c\n\
                  shop.eu.checkout_time:300|ms\n\
                  api.requests:1|c|#route:home,code:200\n\
                  not a statsd line\nsets:1|s\n";
    udp.send_to(packet.as_bytes(), statsd).unwrap();
    // The same series over TCP, lines ending in CRLF as some clients write them.
    let mut tcp = TcpStream::connect(statsd).unwrap();
    tcp.write_all(b"shop.eu.orders:4|c\r\napi.requests:1|c|#route:home,code:200\r\n").unwrap();
    drop(tcp);
    let scrape = || get(&format!("{url}/metrics"));
    assert_eventually!(
        parse(&scrape()).values.get("api_requests{code=200,route=home}") == Some(&2.0),
        "the TCP lines never arrived: {}",
        scrape()
    );
    let body = scrape();
    let p = parse(&body);
    let v = |k: &str| p.values.get(k).copied();
    // 1 + 3 at a rate of 0.5 + 4 over TCP.
    assert_eq!(v("shop_orders_total{job=shop,region=eu}"), Some(11.0), "{body}");
    assert_eq!(v("shop_orders_total{job=shop,region=us}"), Some(2.0), "{body}");
    assert_eq!(p.families["shop_orders_total"].0, "counter");
    assert_eq!(v("queue_depth{}"), Some(12.0), "{body}");
    // Timers in seconds, unmapped into the default histogram; 40 ms at 0.25 counts four times.
    assert_eq!(p.families["render"].0, "histogram");
    assert_eq!(v("render_bucket{le=0.05}"), Some(4.0), "{body}");
    assert_eq!(v("render_bucket{le=0.5}"), Some(5.0), "{body}");
    assert_eq!(v("render_bucket{le=+Inf}"), Some(6.0), "{body}");
    assert_eq!(v("render_count{}"), Some(6.0), "{body}");
    assert!((v("render_sum{}").unwrap() - 2.78).abs() < 1e-9, "{body}");
    assert_eq!(p.families["shop_checkout_seconds"].0, "summary");
    assert_eq!(v("shop_checkout_seconds{quantile=0.5,region=eu}").map(|q| (q * 100.0).round()), Some(30.0));
    assert!(!body.contains("debug") && !body.contains("sets"), "{body}");
    // promtool reads it; its only lint is the unmapped counter's name, which is the app's.
    let lints = promtool_complaints(&body);
    assert!(lints.iter().all(|l| l.contains("api_requests") && l.contains("_total")), "{lints:?}");
    // The lines that were not used are counted on the admin port, by reason.
    let admin = a.admin().get("/metrics").body;
    for line in [
        "podkit_adapter_statsd_sample_errors_total{source=\"127.0.0.1:0\",reason=\"malformed_line\"} 1",
        "podkit_adapter_statsd_sample_errors_total{source=\"127.0.0.1:0\",reason=\"illegal_event\"} 1",
        "podkit_adapter_statsd_events_dropped_total{source=\"127.0.0.1:0\"} 1",
        "podkit_adapter_statsd_tcp_connections_total{source=\"127.0.0.1:0\"} 1",
    ] {
        assert!(admin.lines().any(|l| l == line), "{line} not in\n{admin}");
    }
}

#[test]
fn a_statsd_metric_with_another_type_or_label_set_is_rejected_and_counted_and_the_rest_served() {
    let dir = tempfile::tempdir().unwrap();
    let (a, url, statsd) = statsd_adapter(dir.path(), &[]);
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.send_to(b"jobs:1|c|#queue:mail\njobs:1|g|#queue:mail\njobs:1|c|#queue:mail,pri:high\nok:7|g\n", statsd)
        .unwrap();
    let scrape = || parse(&get(&format!("{url}/metrics")));
    assert_eventually!(scrape().values.get("ok{}") == Some(&7.0), "nothing arrived");
    let p = scrape();
    assert_eq!(p.values.get("jobs{queue=mail}"), Some(&1.0));
    assert_eq!(p.families["jobs"], ("counter".to_string(), ["queue".to_string()].into()));
    let admin = a.admin().get("/metrics").body;
    for reason in ["type", "labels"] {
        let line = format!("podkit_adapter_statsd_conflicts_total{{source=\"127.0.0.1:0\",reason=\"{reason}\"}} 1");
        assert!(admin.lines().any(|l| l == line), "{line} not in\n{admin}");
    }
}
