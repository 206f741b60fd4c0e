//! `podkit ambassador` end to end: the real binary between raw clients and real memcached,
//! Redis and nutcracker processes on loopback.

// Tests start servers and podkit itself directly, outside any podkit reaper.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::support::{Mode, PODKIT, Podkit, alive, run_plain};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use podkit_testkit::{Server, assert_eventually, memcached, memcached_on, nutcracker, redis};
use serde_json::Value;

/// A running ambassador and its configuration file.
struct Ambassador {
    proc: Podkit,
    conf: tempfile::TempDir,
}

impl Ambassador {
    fn start(yaml: &str, extra: &[&str]) -> Ambassador {
        let conf = tempfile::tempdir().unwrap();
        let path = conf.path().join("nutcracker.yml");
        std::fs::write(&path, yaml).unwrap();
        let path = path.to_str().unwrap().to_string();
        let mut args = vec!["ambassador", "--config", &path, "--stats-port", "0"];
        args.extend(extra);
        let proc = Podkit::start(Mode::Subreaper, &args);
        let a = Ambassador { proc, conf };
        assert_eventually!(
            std::fs::metadata(a.proc.path("admin.addr")).is_ok_and(|m| m.len() > 0) && a.proc.admin().ready(),
            "the ambassador never became ready: {}",
            a.proc.stderr()
        );
        a
    }

    fn conf_path(&self) -> std::path::PathBuf {
        self.conf.path().join("nutcracker.yml")
    }

    fn pools(&self) -> Value {
        self.proc.admin().get("/pools").json()
    }

    /// The bound address of the pool `name`.
    fn listen(&self, name: &str) -> SocketAddr {
        let pools = self.pools();
        let pool = pools["pools"].as_array().unwrap().iter().find(|p| p["name"] == name).expect("pool exists");
        pool["listen"].as_str().unwrap().parse().unwrap()
    }

    /// A metric summed over its label sets (pools, servers).
    fn metric(&self, name: &str) -> f64 {
        self.proc.admin().metric_sum(name)
    }
}

/// A blocking text-protocol client.
struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let w = TcpStream::connect(addr).unwrap();
        w.set_nodelay(true).unwrap();
        w.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let r = BufReader::new(w.try_clone().unwrap());
        Conn { w, r }
    }

    fn send(&mut self, bytes: &[u8]) -> &mut Self {
        self.w.write_all(bytes).unwrap();
        self
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).unwrap();
        l.trim_end_matches(['\r', '\n']).to_string()
    }

    /// Lines up to and including `END`.
    fn until_end(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let l = self.line();
            let done = l == "END" || l.is_empty() || l.contains("ERROR");
            lines.push(l);
            if done {
                return lines;
            }
        }
    }

    /// One RESP answer, flattened into a readable string (`[a, nil, 3]`).
    fn resp(&mut self) -> String {
        let l = self.line();
        match l.as_bytes().first() {
            Some(b'+' | b'-' | b':') => l,
            Some(b'$') => {
                let n: i64 = l[1..].parse().unwrap();
                if n < 0 {
                    return "nil".into();
                }
                let mut data = vec![0; n as usize + 2];
                self.r.read_exact(&mut data).unwrap();
                String::from_utf8_lossy(&data[..n as usize]).into_owned()
            }
            Some(b'*') => {
                let n: i64 = l[1..].parse().unwrap();
                let items: Vec<String> = (0..n.max(0)).map(|_| self.resp()).collect();
                format!("[{}]", items.join(", "))
            }
            _ => format!("unexpected: {l:?}"),
        }
    }

    fn cmd(&mut self, args: &[&str]) -> String {
        let mut b = format!("*{}\r\n", args.len());
        for a in args {
            b.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.send(b.as_bytes());
        self.resp()
    }

    /// True once the other side closed the connection.
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.r.read(&mut b), Ok(0) | Err(_))
    }
}

fn servers_yaml(servers: &[&Server]) -> String {
    servers.iter().map(|s| format!("    - 127.0.0.1:{}:1\n", s.port())).collect()
}

/// How many items a memcached holds.
fn items(s: &Server) -> u64 {
    let mut c = Conn::open(s.addr);
    c.send(b"stats\r\n");
    c.until_end()
        .iter()
        .find_map(|l| l.strip_prefix("STAT curr_items ").map(|v| v.parse().unwrap()))
        .expect("curr_items")
}

#[test]
fn memcache_commands_are_sharded_and_multi_gets_merged_in_order() {
    let m: Vec<Server> = (0..3).map(|_| memcached()).collect();
    let a = Ambassador::start(
        &format!(
            "cache:\n  listen: 127.0.0.1:0\n  hash: md5\n  servers:\n{}",
            servers_yaml(&m.iter().collect::<Vec<_>>())
        ),
        &[],
    );
    let mut c = Conn::open(a.listen("cache"));
    for i in 0..90 {
        c.send(format!("set key:{i} {i} 0 {}\r\nvalue-{i}\r\n", format!("value-{i}").len()).as_bytes());
    }
    for _ in 0..90 {
        assert_eq!(c.line(), "STORED");
    }
    let held: Vec<u64> = m.iter().map(items).collect();
    assert_eq!(held.iter().sum::<u64>(), 90);
    assert!(held.iter().all(|&n| n > 0), "keys were not spread: {held:?}");

    // One get over every server, with misses and a repeated key: memcached's order.
    let keys: Vec<String> = [5, 77, 1000, 3, 5, 42].iter().map(|i| format!("key:{i}")).collect();
    c.send(format!("get {}\r\n", keys.join(" ")).as_bytes());
    let got = c.until_end();
    let expected: Vec<String> = [5, 77, 3, 5, 42]
        .iter()
        .flat_map(|i| [format!("VALUE key:{i} {i} {}", format!("value-{i}").len()), format!("value-{i}")])
        .chain(["END".to_string()])
        .collect();
    assert_eq!(got, expected);
    assert!(a.metric("podkit_ambassador_fragments_total") > 0.0);

    // gets, cas, incr, touch, gat, delete, noreply, append.
    c.send(b"gets key:1\r\n");
    let cas = c.line().split(' ').nth(4).unwrap().to_string();
    c.until_end();
    c.send(format!("cas key:1 0 0 1 {cas}\r\nX\r\ncas key:1 0 0 1 {cas}\r\nY\r\n").as_bytes());
    assert_eq!((c.line(), c.line()), ("STORED".into(), "EXISTS".into()));
    c.send(b"set n 0 0 2\r\n40\r\nincr n 2\r\ndecr n 50\r\ntouch n 100\r\ntouch nope 1\r\n");
    assert_eq!([c.line(), c.line(), c.line(), c.line(), c.line()], ["STORED", "42", "0", "TOUCHED", "NOT_FOUND"]);
    c.send(b"gat 100 n key:2\r\n");
    assert_eq!(c.until_end().len(), 5);
    c.send(b"set q 0 0 1 noreply\r\nq\r\nappend q 0 0 1 noreply\r\nr\r\ndelete key:2 noreply\r\nget q key:2\r\n");
    assert_eq!(c.until_end(), ["VALUE q 0 2", "qr", "END"]);

    // Meta commands, quiet mode and base64 keys.
    c.send(b"ms meta 2 T0 F5\r\nhi\r\nmg meta v f\r\nmg missing v q\r\nmg bWV0YQ== b v\r\nmn\r\n");
    assert_eq!(
        [c.line(), c.line(), c.line(), c.line(), c.line(), c.line()],
        ["HD", "VA 2 f5", "hi", "VA 2", "hi", "MN"]
    );
    c.send(b"ma n D8 v\r\nmd meta q\r\nmd meta\r\n");
    assert_eq!([c.line(), c.line(), c.line()], ["VA 1", "8", "NF"]);

    // flush_all and verbosity go to every server; version and stats are answered.
    c.send(b"version\r\nverbosity 1\r\nstats\r\n");
    assert!(c.line().starts_with("VERSION 1."));
    assert_eq!(c.line(), "OK");
    let stats = c.until_end();
    assert!(stats.contains(&"STAT servers 3".to_string()), "{stats:?}");
    c.send(format!("flush_all\r\nget {}\r\n", keys.join(" ")).as_bytes());
    assert_eq!(c.line(), "OK");
    assert_eq!(c.until_end(), ["END"], "flush_all did not reach every server");
}

#[test]
fn bad_memcache_input_gets_memcacheds_answer_and_the_connection_stays_usable() {
    let m = memcached();
    let a = Ambassador::start(
        &format!("cache:\n  listen: 127.0.0.1:0\n  servers:\n{}", servers_yaml(&[&m])),
        &["--max-request-bytes", "1024"],
    );
    let mut c = Conn::open(a.listen("cache"));
    let big = vec![b'x'; 5000];
    c.send(b"bogus command\r\nset k 0 0 2\r\nabcd\r\nset k abc 0 1\r\nincr k notanumber\r\nget\r\n");
    c.send(format!("set big 0 0 {}\r\n", big.len()).as_bytes()).send(&big).send(b"\r\n");
    c.send(&[b'k'; 70_000]).send(b"\r\n");
    c.send(b"set k 0 0 2\r\nok\r\nget k\r\n");
    let answers: Vec<String> = (0..10).map(|_| c.line()).collect();
    assert_eq!(
        answers,
        [
            "ERROR",
            "CLIENT_ERROR bad data chunk",
            "ERROR",
            "CLIENT_ERROR bad command line format",
            "CLIENT_ERROR invalid numeric delta argument",
            "ERROR",
            "SERVER_ERROR object too large for cache",
            "CLIENT_ERROR line too long",
            "STORED",
            "VALUE k 0 2",
        ]
    );
    assert_eq!(c.until_end(), ["ok", "END"]);
    assert!(a.metric("podkit_ambassador_client_requests_refused_total") >= 7.0);
}

#[test]
fn memccapable_passes_through_the_proxy_as_it_does_directly() {
    podkit_testkit::require_program("memccapable", "libmemcached-tools");
    let m = memcached();
    let a = Ambassador::start(&format!("cache:\n  listen: 127.0.0.1:0\n  servers:\n{}", servers_yaml(&[&m])), &[]);
    let run = |addr: SocketAddr| {
        let out = std::process::Command::new("memccapable")
            .args(["-h", "127.0.0.1", "-p", &addr.port().to_string(), "-a", "-t", "10"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        let passed: Vec<String> = text
            .lines()
            .filter(|l| l.ends_with("[pass]"))
            .map(|l| l.trim_end_matches("[pass]").trim().to_string())
            .collect();
        (passed, text)
    };
    let (direct, _) = run(m.addr);
    let (proxied, text) = run(a.listen("cache"));
    assert!(direct.len() >= 20, "memccapable ran too few tests directly: {direct:?}");
    let missing: Vec<_> = direct.iter().filter(|t| !proxied.contains(t)).collect();
    assert!(missing.is_empty(), "pass directly but not through podkit: {missing:?}\n{text}");
}

#[test]
fn keys_are_where_nutcracker_put_them() {
    let m: Vec<Server> = (0..3).map(|_| memcached()).collect();
    let servers = format!(
        "    - 127.0.0.1:{}:1\n    - 127.0.0.1:{}:2 cache-b\n    - 127.0.0.1:{}:1\n",
        m[0].port(),
        m[1].port(),
        m[2].port()
    );
    for (hash, dist) in [("fnv1a_64", "ketama"), ("murmur", "modula"), ("crc32a", "ketama")] {
        let pool = |listen: &str| {
            format!("pool:\n  listen: {listen}\n  hash: {hash}\n  distribution: {dist}\n  servers:\n{servers}")
        };
        let twem = nutcracker(&|l| pool(&l.to_string()));
        let a = Ambassador::start(&pool("127.0.0.1:0"), &[]);
        let mut w = Conn::open(twem.addr);
        for i in 0..200 {
            w.send(format!("set user:{i}:profile 0 0 1\r\nv\r\n").as_bytes());
        }
        for _ in 0..200 {
            assert_eq!(w.line(), "STORED");
        }
        // Every key written through nutcracker is found through podkit: same servers.
        let mut r = Conn::open(a.listen("pool"));
        let keys: Vec<String> = (0..200).map(|i| format!("user:{i}:profile")).collect();
        r.send(format!("get {}\r\n", keys.join(" ")).as_bytes());
        let hits = r.until_end().iter().filter(|l| l.starts_with("VALUE")).count();
        assert_eq!(hits, 200, "{hash} {dist}: podkit found only {hits} of 200 keys nutcracker wrote");
        r.send(b"flush_all\r\n");
        assert_eq!(r.line(), "OK");
    }
}

#[test]
fn redis_commands_are_sharded_merged_or_refused_clearly() {
    let r: Vec<Server> = (0..2).map(|_| redis()).collect();
    let a = Ambassador::start(
        &format!(
            "r:\n  listen: 127.0.0.1:0\n  redis: true\n  hash: md5\n  hash_tag: \"{{}}\"\n  servers:\n{}",
            servers_yaml(&r.iter().collect::<Vec<_>>())
        ),
        &[],
    );
    let mut c = Conn::open(a.listen("r"));
    let mut mset = vec!["MSET"];
    let kv: Vec<String> = (0..20).flat_map(|i| [format!("k{i}"), format!("v{i}")]).collect();
    mset.extend(kv.iter().map(String::as_str));
    assert_eq!(c.cmd(&mset), "+OK");
    let sizes: Vec<String> = r.iter().map(|s| Conn::open(s.addr).cmd(&["DBSIZE"])).collect();
    assert!(sizes.iter().all(|s| s != ":0"), "MSET was not split: {sizes:?}");
    assert_eq!(c.cmd(&["MGET", "k3", "nope", "k17", "k3"]), "[v3, nil, v17, v3]");
    assert_eq!(c.cmd(&["EXISTS", "k1", "k2", "nope", "k1"]), ":3");
    assert_eq!(c.cmd(&["DEL", "k1", "k2", "k3", "nope"]), ":3");
    assert_eq!(c.cmd(&["INCRBY", "counter", "5"]), ":5");
    assert_eq!(c.cmd(&["HSET", "h", "f", "1"]), ":1");
    assert_eq!(c.cmd(&["ping"]), "+PONG");
    assert_eq!(c.cmd(&["ECHO", "hi"]), "hi");
    // Multi-key commands run where all their keys are (a hash tag puts them together).
    assert_eq!(c.cmd(&["SET", "{user:1}:a", "x"]), "+OK");
    assert_eq!(c.cmd(&["RENAME", "{user:1}:a", "{user:1}:b"]), "+OK");
    assert_eq!(c.cmd(&["GET", "{user:1}:b"]), "x");
    assert_eq!(c.cmd(&["EVAL", "return redis.call('GET', KEYS[1])", "1", "{user:1}:b"]), "x");
    // Keys on different servers, keyless and blocking commands: a clear error, still usable.
    let cross = (0..20)
        .map(|i| c.cmd(&["RENAME", "k10", &format!("other{i}")]))
        .find(|a| a.contains("different servers"))
        .expect("some pair of keys lands on different servers");
    assert!(cross.contains("hash tag such as {x}"), "{cross}");
    assert!(c.cmd(&["KEYS", "*"]).starts_with("-ERR 'KEYS' is not supported"));
    assert!(c.cmd(&["BLPOP", "l", "0"]).contains("blocking"));
    let multi = c.cmd(&["MULTI"]);
    assert!(multi.starts_with("-ERR 'MULTI' is not supported through the proxy: a transaction"), "{multi}");
    assert!(multi.contains("hash tag") && multi.contains("talk to Redis directly"), "{multi}");
    assert!(c.cmd(&["GET"]).contains("wrong number of arguments"));
    assert!(c.cmd(&["SELECT", "3"]).starts_with("-ERR"));
    assert_eq!(c.cmd(&["SELECT", "0"]), "+OK");
    assert_eq!(c.cmd(&["GET", "k5"]), "v5");
    // Inline commands work; malformed RESP is a protocol error and closes, as Redis does.
    c.send(b"GET k5\r\n");
    assert_eq!(c.resp(), "v5");
    c.send(b"*1\r\n$x\r\n");
    assert!(c.resp().starts_with("-ERR Protocol error"));
    assert!(c.closed());
    // QUIT answers +OK and closes.
    let mut q = Conn::open(a.listen("r"));
    assert_eq!(q.cmd(&["QUIT"]), "+OK");
    assert!(q.closed());
}

#[test]
fn redis_auth_and_db_are_the_pools() {
    let r = redis();
    assert_eq!(Conn::open(r.addr).cmd(&["CONFIG", "SET", "requirepass", "s3cret"]), "+OK");
    let a = Ambassador::start(
        &format!(
            "r:\n  listen: 127.0.0.1:0\n  redis: true\n  redis_auth: s3cret\n  redis_db: 2\n  servers:\n{}",
            servers_yaml(&[&r])
        ),
        &[],
    );
    let mut c = Conn::open(a.listen("r"));
    assert!(c.cmd(&["GET", "a"]).starts_with("-NOAUTH"));
    assert_eq!(c.cmd(&["AUTH", "wrong"]), "-ERR invalid password");
    assert!(c.cmd(&["SET", "a", "1"]).starts_with("-NOAUTH"));
    assert_eq!(c.cmd(&["AUTH", "s3cret"]), "+OK");
    assert_eq!(c.cmd(&["SET", "a", "1"]), "+OK");
    assert_eq!(c.cmd(&["SELECT", "2"]), "+OK");
    // The key is in database 2 of the server, where the pool's redis_db put it.
    let mut direct = Conn::open(r.addr);
    assert_eq!(direct.cmd(&["AUTH", "s3cret"]), "+OK");
    assert_eq!(direct.cmd(&["GET", "a"]), "nil");
    assert_eq!(direct.cmd(&["SELECT", "2"]), "+OK");
    assert_eq!(direct.cmd(&["GET", "a"]), "1");
}

#[test]
fn reload_on_sighup_and_on_file_change_keeps_client_connections() {
    let (m1, m2) = (memcached(), memcached());
    let pool = |servers: &[&Server]| format!("cache:\n  listen: 127.0.0.1:0\n  servers:\n{}", servers_yaml(servers));
    let a = Ambassador::start(&pool(&[&m1]), &["--watch-interval", "100ms"]);
    let mut c = Conn::open(a.listen("cache"));
    c.send(b"set before 0 0 1\r\n1\r\n");
    assert_eq!(c.line(), "STORED");

    // SIGHUP: the pool now has m2 only; the same client connection goes on.
    std::fs::write(a.conf_path(), pool(&[&m2])).unwrap();
    a.proc.signal(Signal::SIGHUP);
    assert_eventually!(a.metric("podkit_ambassador_config_reloads_total") >= 1.0, "no reload");
    c.send(b"set after 0 0 1\r\n2\r\n");
    assert_eq!(c.line(), "STORED");
    assert_eq!(items(&m2), 1, "the new server did not get the key");

    // A broken file is refused; the running configuration stays.
    std::fs::write(a.conf_path(), "cache:\n  listen: 127.0.0.1:0\n  hash: nope\n  servers: [127.0.0.1:1:1]\n").unwrap();
    a.proc.signal(Signal::SIGHUP);
    assert_eventually!(
        a.proc.stderr().contains("configuration not reloaded") && a.proc.stderr().contains("unknown hash"),
        "the bad file was not reported: {}",
        a.proc.stderr()
    );
    c.send(b"get after\r\n");
    assert_eq!(c.until_end(), ["VALUE after 0 1", "2", "END"]);

    // A changed file is picked up without a signal; a new pool starts listening.
    let both = format!("{}other:\n  listen: 127.0.0.1:0\n  servers:\n{}", pool(&[&m1]), servers_yaml(&[&m2]));
    std::fs::write(a.conf_path(), both).unwrap();
    assert_eventually!(a.pools()["pools"].as_array().unwrap().len() == 2, "the file change was not noticed");
    c.send(b"get before\r\n");
    assert_eq!(c.until_end(), ["VALUE before 0 1", "1", "END"]);
    let mut o = Conn::open(a.listen("other"));
    o.send(b"get after\r\n");
    assert_eq!(o.until_end(), ["VALUE after 0 1", "2", "END"]);

    // POST /reload answers with the outcome.
    let answer = a.proc.admin().post("/reload");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(a.metric("podkit_ambassador_client_connections_open"), 2.0, "a client connection was dropped");
}

/// Two pools over the same three servers: one rehashes, one fails fast. One server dies.
#[test]
fn a_dead_server_is_ejected_rehash_moves_its_keys_fail_fast_keeps_the_ring() {
    let mut m: Vec<Server> = (0..3).map(|_| memcached()).collect();
    let servers = servers_yaml(&m.iter().collect::<Vec<_>>());
    let pool = |name: &str, mode: &str| {
        format!(
            "{name}:\n  listen: 127.0.0.1:0\n  hash: md5\n  timeout: 500\n  auto_eject_hosts: true\n  server_failure_limit: 1\n  server_retry_timeout: 60000\n  eject_mode: {mode}\n  servers:\n{servers}"
        )
    };
    let a = Ambassador::start(&(pool("rehash", "rehash") + &pool("failfast", "fail_fast")), &[]);
    let (mut rh, mut ff) = (Conn::open(a.listen("rehash")), Conn::open(a.listen("failfast")));
    let keys: Vec<String> = (0..60).map(|i| format!("k{i}")).collect();
    for k in &keys {
        ff.send(format!("set {k} 0 0 1\r\nv\r\n").as_bytes());
        assert_eq!(ff.line(), "STORED");
    }
    let dead_port = m[1].port();
    m[1].kill();

    // Each pool notices on its first failed request and ejects the server.
    let probe = |c: &mut Conn| -> Vec<String> {
        keys.iter()
            .map(|k| {
                c.send(format!("set {k} 0 0 1\r\nw\r\n").as_bytes());
                c.line()
            })
            .collect()
    };
    let first = probe(&mut ff);
    assert!(first.iter().any(|l| l.starts_with("SERVER_ERROR")), "no error for the dead server's keys");
    assert_eventually!(a.metric("podkit_ambassador_server_ejected") >= 1.0, "no ejection");
    // Fail fast: the dead server's keys fail at once, the others' keys stay where they were.
    let started = Instant::now();
    let after = probe(&mut ff);
    let failed = after.iter().filter(|l| l.contains("is ejected")).count();
    assert!(failed > 0 && failed < keys.len(), "{after:?}");
    assert_eq!(after.iter().filter(|l| *l == "STORED").count() + failed, keys.len());
    // The error names the server that is down, not the pool.
    let expected = format!("SERVER_ERROR podkit: 127.0.0.1:{dead_port} is ejected (down); its keys fail fast");
    assert!(after.iter().filter(|l| l.contains("is ejected")).all(|l| *l == expected), "{after:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "failing fast took {:?}", started.elapsed());

    // Rehash: after its own ejection every key is served by the two left.
    let _ = probe(&mut rh);
    assert_eventually!(probe(&mut rh).iter().all(|l| l == "STORED"), "rehash still fails some keys");

    // twemproxy's stats port shows the ejection.
    let stats: Value = {
        let addr: SocketAddr = a.pools()["stats"].as_str().unwrap().parse().unwrap();
        let mut s = String::new();
        TcpStream::connect(addr).unwrap().read_to_string(&mut s).unwrap();
        serde_json::from_str(&s).unwrap()
    };
    let dead = format!("127.0.0.1:{dead_port}");
    assert!(stats["failfast"][&dead]["server_ejected_at"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["failfast"]["server_ejects"].as_u64().unwrap() >= 1);
    assert_eq!(stats["service"], "nutcracker");
}

#[test]
fn a_killed_server_fails_requests_fast_and_a_health_check_brings_it_back() {
    let mut m = memcached();
    let port = m.port();
    let a = Ambassador::start(
        &format!(
            "cache:\n  listen: 127.0.0.1:0\n  timeout: 1000\n  auto_eject_hosts: true\n  server_failure_limit: 1\n  server_retry_timeout: 600000\n  health_check_interval: 100ms\n  eject_mode: fail_fast\n  servers:\n{}",
            servers_yaml(&[&m])
        ),
        &[],
    );
    let addr = a.listen("cache");
    // Load from a pipelining client while the server is killed: every request gets an answer
    // (a value or an error), none hangs.
    let load = std::thread::spawn(move || {
        let mut c = Conn::open(addr);
        let (mut ok, mut errors) = (0, 0);
        let until = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < until {
            c.send(b"set k 0 0 1\r\nv\r\nget k\r\nget k\r\n");
            for _ in 0..3 {
                let l = c.line();
                if l.starts_with("SERVER_ERROR") {
                    errors += 1;
                } else if l.starts_with("VALUE") {
                    c.until_end();
                    ok += 1;
                } else {
                    ok += 1;
                }
            }
        }
        (ok, errors)
    });
    std::thread::sleep(Duration::from_millis(300)); // let some traffic through first
    m.kill();
    let (ok, errors) = load.join().unwrap();
    assert!(ok > 0 && errors > 0, "ok {ok}, errors {errors}");

    // The server comes back on its port; the health check returns it long before the retry
    // timeout (10 minutes) would.
    let _m = memcached_on(port);
    let mut c = Conn::open(addr);
    assert_eventually!(
        {
            c.send(b"set back 0 0 1\r\n1\r\n");
            c.line() == "STORED"
        },
        "the server was not returned by the health check: {}",
        a.proc.stderr()
    );
}

#[test]
fn a_stopped_server_times_out_instead_of_hanging() {
    let m = memcached();
    let a = Ambassador::start(
        &format!("cache:\n  listen: 127.0.0.1:0\n  timeout: 300\n  servers:\n{}", servers_yaml(&[&m])),
        &[],
    );
    let mut c = Conn::open(a.listen("cache"));
    c.send(b"set k 0 0 1\r\nv\r\n");
    assert_eq!(c.line(), "STORED");
    let pid = Pid::from_raw(m.pid().unwrap() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    let stopped = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
    };
    assert_eventually!(stopped(), "memcached did not stop");
    c.send(b"get k\r\n");
    let answer = c.line();
    kill(pid, Signal::SIGCONT).unwrap();
    // nutcracker's words first (clients match on them), podkit's detail after.
    assert!(answer.starts_with("SERVER_ERROR Connection timed out"), "{answer}");
    assert!(answer.contains("did not answer in time"), "{answer}");
    assert!(a.metric("podkit_ambassador_server_timeouts_total") >= 1.0);
    // The next request opens a new connection and works.
    assert_eventually!(
        {
            c.send(b"get k\r\n");
            c.until_end().first().is_some_and(|l| l.starts_with("VALUE"))
        },
        "no recovery after SIGCONT"
    );
}

#[test]
fn a_client_leaving_mid_pipeline_leaves_nothing_behind() {
    let m = memcached();
    let a = Ambassador::start(&format!("cache:\n  listen: 127.0.0.1:0\n  servers:\n{}", servers_yaml(&[&m])), &[]);
    let addr = a.listen("cache");
    let value = "v".repeat(1000);
    let mut c = Conn::open(addr);
    c.send(format!("set big 0 0 {}\r\n{value}\r\n", value.len()).as_bytes());
    assert_eq!(c.line(), "STORED");
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr).unwrap();
        let burst: Vec<u8> = b"get big\r\n".repeat(2000);
        s.write_all(&burst).unwrap();
        drop(s);
    }
    assert_eventually!(
        a.metric("podkit_ambassador_client_connections_open") == 1.0
            && a.metric("podkit_ambassador_server_in_flight") == 0.0,
        "connections or requests left behind: {}",
        a.proc.admin().metrics()
    );
    c.send(b"get big\r\n");
    assert_eq!(c.until_end().len(), 3);
}

#[test]
fn bad_configuration_exits_64_and_dash_t_checks_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("n.yml");
    std::fs::write(&path, "alpha:\n  listen: 127.0.0.1:0\n  distribution: circle\n  servers: [127.0.0.1:1:1]\n")
        .unwrap();
    let p = path.to_str().unwrap();
    let (code, err) = run_plain(&["ambassador", "-c", p, "--admin", "127.0.0.1:0"], &[]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("pool `alpha`: distribution") && err.contains("ketama, modula or random"), "{err}");
    let (code, _) = run_plain(&["ambassador", "-t", "-c", p], &[]);
    assert_eq!(code, 64);
    // A value of the wrong type names its pool and key, what was written and what is expected.
    std::fs::write(&path, "cache:\n  listen: 127.0.0.1:0\n  timeout: 4s\n  servers: [127.0.0.1:1:1]\n").unwrap();
    let (code, err) = run_plain(&["ambassador", "-t", "-c", p], &[]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains(r#"pool `cache`: timeout: "4s" is not a number of milliseconds; write 4000"#), "{err}");
    std::fs::write(&path, "alpha:\n  listen: 127.0.0.1:0\n  servers: [127.0.0.1:1:1]\n").unwrap();
    let (code, err) = run_plain(&["ambassador", "-t", "-c", p], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("syntax is ok"));
}

#[test]
fn a_refused_redis_auth_reaches_the_client_as_redis_said_it() {
    let r = redis();
    assert_eq!(Conn::open(r.addr).cmd(&["CONFIG", "SET", "requirepass", "s3cret"]), "+OK");
    let pool =
        |auth: &str| format!("r:\n  listen: 127.0.0.1:0\n  redis: true\n{auth}  servers:\n{}", servers_yaml(&[&r]));
    // A wrong redis_auth: the server's own WRONGPASS, as nutcracker's clients get it.
    let a = Ambassador::start(&pool("  redis_auth: wrong\n"), &[]);
    let mut c = Conn::open(a.listen("r"));
    assert_eq!(c.cmd(&["AUTH", "wrong"]), "+OK", "podkit checks the client's AUTH itself");
    let answer = c.cmd(&["GET", "a"]);
    assert!(answer.starts_with("-WRONGPASS"), "{answer}");
    // No redis_auth at all: the server's NOAUTH.
    let b = Ambassador::start(&pool(""), &[]);
    let answer = Conn::open(b.listen("r")).cmd(&["GET", "a"]);
    assert!(answer.starts_with("-NOAUTH"), "{answer}");
}

/// A memcache pool's bound address, as a `listen:` line can name it.
fn pool_yaml(name: &str, listen: &str, servers: &[&Server]) -> String {
    format!("{name}:\n  listen: {listen}\n  servers:\n{}", servers_yaml(servers))
}

/// Writes `yaml` as the configuration, reloads with SIGHUP and waits for the outcome.
fn reload(a: &Ambassador, yaml: &str) {
    let before = a.metric("podkit_ambassador_config_reloads_total");
    std::fs::write(a.conf_path(), yaml).unwrap();
    a.proc.signal(Signal::SIGHUP);
    assert_eventually!(a.metric("podkit_ambassador_config_reloads_total") > before, "no reload");
    let stderr = a.proc.stderr();
    assert!(!stderr.contains("configuration not reloaded"), "the reload failed: {stderr}");
}

#[test]
fn a_reload_hands_a_listening_socket_to_a_renamed_pool_or_one_that_takes_its_address() {
    let (m1, m2) = (memcached(), memcached());
    let a = Ambassador::start(
        &(pool_yaml("one", "127.0.0.1:0", &[&m1]) + &pool_yaml("two", "127.0.0.1:0", &[&m2])),
        &["--watch-interval", "0"],
    );
    let (p1, p2) = (a.listen("one").to_string(), a.listen("two").to_string());
    let mut held = Conn::open(a.listen("one"));
    held.send(b"set held 0 0 1\r\nh\r\n");
    assert_eq!(held.line(), "STORED");

    // Rename `one` to `uno` on the same address: nutcracker's users do this, and a bind would
    // fail with "Address already in use" while `one` still listens.
    reload(&a, &(pool_yaml("uno", &p1, &[&m1]) + &pool_yaml("two", &p2, &[&m2])));
    let mut names: Vec<String> =
        a.pools()["pools"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect();
    names.sort();
    assert_eq!(names, ["two", "uno"]);
    assert_eq!(a.listen("uno").to_string(), p1);
    let mut c = Conn::open(p1.parse().unwrap());
    c.send(b"get held\r\n");
    assert_eq!(c.until_end(), ["VALUE held 0 1", "h", "END"], "the address no longer reaches m1");
    held.send(b"get held\r\n");
    assert_eq!(held.until_end(), ["VALUE held 0 1", "h", "END"], "the client connected before lost its pool");

    // Swap the two pools' addresses in one reload: each takes the socket the other gives up.
    reload(&a, &(pool_yaml("uno", &p2, &[&m1]) + &pool_yaml("two", &p1, &[&m2])));
    assert_eq!(a.listen("uno").to_string(), p2);
    assert_eq!(a.listen("two").to_string(), p1);
    let mut c = Conn::open(p1.parse().unwrap());
    c.send(b"set swapped 0 0 1\r\ns\r\n");
    assert_eq!(c.line(), "STORED");
    assert_eq!((items(&m1), items(&m2)), (1, 1), "p1 now leads to m2");
    assert_eq!(a.metric("podkit_ambassador_config_reloads_total"), 2.0);
}

#[test]
fn servers_added_and_removed_under_load_cost_no_client_an_error() {
    let m: Vec<Server> = (0..3).map(|_| memcached()).collect();
    let a = Ambassador::start(&pool_yaml("cache", "127.0.0.1:0", &[&m[0], &m[1]]), &["--watch-interval", "0"]);
    let addr = a.listen("cache");
    // The pool keeps this address from now on, so each reload changes it in place (a pool whose
    // address changes is a new pool; its clients stay with the old one until they leave).
    reload(&a, &pool_yaml("cache", &addr.to_string(), &[&m[0], &m[1]]));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let served = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let clients: Vec<_> = (0..4)
        .map(|t| {
            let (stop, served) = (stop.clone(), served.clone());
            std::thread::spawn(move || {
                let mut c = Conn::open(addr);
                let (mut done, mut errors) = (0u64, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = format!("k{t}-{}", done % 500);
                    c.send(format!("set {key} 0 0 1\r\nv\r\nget {key}\r\n").as_bytes());
                    let stored = c.line();
                    let got = c.until_end();
                    if stored != "STORED" || got.first().is_none_or(|l| !l.starts_with("VALUE")) {
                        errors.push(format!("{stored} / {got:?}"));
                    }
                    done += 1;
                    served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                (done, errors)
            })
        })
        .collect();
    let served = || served.load(std::sync::atomic::Ordering::Relaxed);
    let mut last = served();
    for servers in [&[&m[0], &m[1], &m[2]][..], &[&m[0], &m[2]], &[&m[1]], &[&m[0], &m[1], &m[2]]] {
        reload(&a, &pool_yaml("cache", &addr.to_string(), servers));
        // Traffic flows under each configuration before the next change.
        assert_eventually!(served() > last + 200, "the clients stalled after a reload");
        last = served();
    }
    assert!(items(&m[2]) > 0, "the added server never got a key");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        let (done, errors) = c.join().unwrap();
        assert!(done > 0);
        assert!(errors.is_empty(), "{} client errors, first: {}", errors.len(), errors[0]);
    }
}

/// A process podkit left running in the background: killed when the test ends, whatever
/// happened.
struct Daemon(i32);

impl Drop for Daemon {
    fn drop(&mut self) {
        if alive(self.0) {
            let _ = kill(Pid::from_raw(self.0), Signal::SIGKILL);
        }
    }
}

/// Debian's nutcracker package: the init script starts `nutcracker -d $DAEMON_OPTS` with
/// `-c … -o … -p …` from /etc/default/nutcracker, stops and reloads through the pid file, and
/// logrotate renames the log, creates a new one and sends SIGHUP.
#[test]
fn a_nutcracker_command_line_runs_as_a_daemon_and_its_log_survives_logrotate() {
    let m = memcached();
    let dir = tempfile::tempdir().unwrap();
    let (conf, log, pid_file, admin) = (
        dir.path().join("nutcracker.yml"),
        dir.path().join("nutcracker.log"),
        dir.path().join("nutcracker.pid"),
        dir.path().join("admin.addr"),
    );
    std::fs::write(&conf, pool_yaml("cache", "127.0.0.1:0", &[&m])).unwrap();
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let start = std::process::Command::new(PODKIT)
        .args(["ambassador", "-d", "-c", &s(&conf), "-o", &s(&log), "-p", &s(&pid_file), "-v", "6"])
        .args(["-s", "0", "-m", "16384", "-i", "30000", "--admin", "127.0.0.1:0", "--admin-addr-file", &s(&admin)])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let foreground = start.id() as i32;
    let out = start.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "the foreground process did not report a start");
    let pid: i32 = std::fs::read_to_string(&pid_file).expect("no pid file").trim().parse().unwrap();
    let _daemon = Daemon(pid);
    assert_ne!(pid, foreground, "podkit did not go to the background");
    assert!(alive(pid));
    // In a session of its own, away from the terminal.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let session: i32 = stat.rsplit_once(')').unwrap().1.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert_eq!(session, pid);

    let admin = podkit_testkit::AdminClient::from_addr_file(&admin);
    let pools: Value = admin.get("/pools").json();
    let listen: SocketAddr = pools["pools"][0]["listen"].as_str().unwrap().parse().unwrap();
    let mut c = Conn::open(listen);
    c.send(b"set k 0 0 1\r\nv\r\n");
    assert_eq!(c.line(), "STORED");
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    assert!(read(&log).contains("ambassador ready"), "the log file: {}", read(&log));
    assert!(read(&log).contains("has no effect"), "-m is not reported: {}", read(&log));

    // logrotate: rename, `create`, then `postrotate … kill -HUP $(cat pidfile)`.
    let rotated = dir.path().join("nutcracker.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    std::fs::File::create(&log).unwrap();
    kill(Pid::from_raw(pid), Signal::SIGHUP).unwrap();
    assert_eventually!(
        read(&log).contains("SIGHUP: log file reopened") && read(&log).contains("configuration reloaded"),
        "no lines in the new log file: {:?}",
        read(&log)
    );
    assert!(!read(&rotated).contains("log file reopened"), "lines went on in the rotated file");
    c.send(b"get k\r\n");
    assert_eq!(c.until_end(), ["VALUE k 0 1", "v", "END"], "the reload disturbed a client");

    // SIGUSR1 reopens the log too; SIGTTIN/SIGTTOU step the level; none of them stops podkit.
    std::fs::rename(&log, dir.path().join("nutcracker.log.2")).unwrap();
    kill(Pid::from_raw(pid), Signal::SIGUSR1).unwrap();
    assert_eventually!(read(&log).contains("SIGUSR1: log file reopened"), "SIGUSR1 did not reopen the log");
    kill(Pid::from_raw(pid), Signal::SIGTTIN).unwrap();
    assert_eventually!(
        read(&log).contains(r#""log_level":"debug""#),
        "SIGTTIN did not raise the level: {}",
        read(&log)
    );
    kill(Pid::from_raw(pid), Signal::SIGTTOU).unwrap();
    kill(Pid::from_raw(pid), Signal::SIGUSR2).unwrap();
    assert_eventually!(read(&log).contains("SIGUSR2"), "SIGUSR2 was not noted");
    assert!(alive(pid));
    c.send(b"get k\r\n");
    assert_eq!(c.until_end(), ["VALUE k 0 1", "v", "END"]);

    // The init script's stop: SIGTERM to the pid in the file; the pid file goes with podkit.
    drop(c);
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    assert_eventually!(!alive(pid), "podkit did not stop on SIGTERM");
    assert!(!pid_file.exists(), "the pid file was left behind");
}

#[test]
fn a_daemon_that_cannot_start_says_why_in_the_foreground() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("n.yml");
    std::fs::write(&conf, format!("cache:\n  listen: {}\n  servers: [127.0.0.1:1:1]\n", busy.local_addr().unwrap()))
        .unwrap();
    let pid_file = dir.path().join("n.pid");
    let (code, err) = run_plain(
        &[
            "ambassador",
            "-d",
            "-c",
            conf.to_str().unwrap(),
            "-p",
            pid_file.to_str().unwrap(),
            "-s",
            "0",
            "--admin",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("cannot listen on") && err.contains("pool `cache`"), "{err}");
    assert!(!pid_file.exists(), "a pid file of a process that never ran");
}

#[test]
fn dash_capital_d_describes_the_stats_and_every_nutcracker_flag_is_accepted() {
    let out = std::process::Command::new(PODKIT).args(["ambassador", "-D"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("pool stats:\n  client_eof "), "{text}");
    assert!(text.contains("\nserver stats:\n") && text.contains("  server_timedout "), "{text}");
    // nutcracker's help lists these; each one is in podkit's.
    let help = std::process::Command::new(PODKIT).args(["ambassador", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "-h, --help",
        "-V, --version",
        "-t, --test-conf",
        "-d, --daemonize",
        "-D, --describe-stats",
        "-v, --verbose",
        "-o, --log-file",
        "-c, --config",
        "-s, --stats-port",
        "-a, --stats-addr",
        "-i, --stats-interval",
        "-p, --pid-file",
        "-m, --mbuf-size",
    ] {
        assert!(help.contains(flag), "{flag} is missing from --help");
    }
    // Out of nutcracker's ranges: refused as nutcracker refuses them.
    let (code, err) = run_plain(&["ambassador", "-v", "12", "-t"], &[]);
    assert_eq!(code, 64, "{err}");
    let (code, err) = run_plain(&["ambassador", "-m", "100", "-t"], &[]);
    assert_eq!(code, 64, "{err}");
}
