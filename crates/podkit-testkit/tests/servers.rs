//! Each server the test kit starts answers its own protocol on the port it reports.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use podkit_testkit::{EtcdCluster, assert_eventually};

fn roundtrip(addr: std::net::SocketAddr, request: &str, lines: usize) -> Vec<String> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    (0..lines)
        .map(|_| {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            l.trim_end().to_string()
        })
        .collect()
}

#[test]
fn memcached_stores_and_returns_a_value() {
    let m = podkit_testkit::memcached();
    let got = roundtrip(m.addr, "set k 0 0 1\r\nv\r\nget k\r\n", 4);
    assert_eq!(got, ["STORED", "VALUE k 0 1", "v", "END"]);
}

#[test]
fn redis_stores_and_returns_a_value() {
    let r = podkit_testkit::redis();
    let got = roundtrip(r.addr, "SET k v\r\nGET k\r\n", 3);
    assert_eq!(got, ["+OK", "$1", "v"]);
}

#[test]
fn nats_greets_and_answers_ping() {
    let n = podkit_testkit::nats();
    let got = roundtrip(n.addr, "CONNECT {\"verbose\":false}\r\nPING\r\n", 2);
    assert!(got[0].starts_with("INFO "), "{got:?}");
    assert_eq!(got[1], "PONG");
}

#[test]
fn nutcracker_proxies_to_memcached() {
    let m = podkit_testkit::memcached();
    let backend = m.addr;
    let n = podkit_testkit::nutcracker(&|listen| {
        format!("pool:\n  listen: {listen}\n  hash: fnv1a_64\n  distribution: ketama\n  servers:\n    - {backend}:1\n")
    });
    let got = roundtrip(n.addr, "set k 0 0 2\r\nhi\r\nget k\r\n", 4);
    assert_eq!(got, ["STORED", "VALUE k 0 2", "hi", "END"]);
    // And the value really is in memcached.
    assert_eq!(roundtrip(m.addr, "get k\r\n", 3), ["VALUE k 0 2", "hi", "END"]);
}

#[test]
fn etcd_one_node_is_healthy() {
    let e = podkit_testkit::etcd();
    let body = podkit_testkit::AdminClient::new(e.addr).get("/version").body;
    assert!(body.contains("etcdserver"), "{body}");
}

#[test]
fn etcd_cluster_survives_a_member_and_takes_it_back() {
    let mut c = EtcdCluster::start();
    c.stop(2);
    assert_eventually!(
        timeout = Duration::from_secs(30),
        c.healthy(0) && c.healthy(1),
        "two of three members did not keep quorum:\n{}",
        c.logs()
    );
    c.start_member(2);
    assert_eventually!(timeout = Duration::from_secs(30), c.healthy(2), "member 2 did not rejoin:\n{}", c.logs());
}
