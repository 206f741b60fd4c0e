//! Placement is checked against a real nutcracker: keys are written through it, each backend
//! memcached is asked which keys it holds, and podkit's choice must be the same server, for
//! every hash and for ketama and modula.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use podkit_ambassador::hashkit::{Continuum, Distribution, Hash, ServerSpec};

fn conn(addr: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(addr).unwrap();
    // Requests go one at a time: without this, Nagle and delayed ACKs cost 40 ms each.
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

fn line(r: &mut BufReader<TcpStream>) -> String {
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    l.trim_end().to_string()
}

/// The keys under test: short and long, ASCII and bytes ≥ 0x80 (which C reads as negative).
fn keys() -> Vec<Vec<u8>> {
    let mut k: Vec<Vec<u8>> = (0..200).map(|i| format!("key-{i}").into_bytes()).collect();
    k.extend((0..50).map(|i| format!("clé:{i}:ünïcödé").into_bytes()));
    k.extend((0..30).map(|i| format!("{}/{i}", "x".repeat(i * 7)).into_bytes()));
    k.push(b"a".to_vec());
    k
}

#[test]
fn every_hash_and_distribution_places_keys_where_nutcracker_does() {
    let memcached: Vec<_> = (0..4).map(|_| podkit_testkit::memcached()).collect();
    let specs: Vec<ServerSpec> = memcached
        .iter()
        .enumerate()
        .map(|(i, m)| ServerSpec {
            host: "127.0.0.1".into(),
            port: m.port(),
            weight: [1, 2, 1, 3][i],
            name: (i == 2).then(|| "named-cache".to_string()),
        })
        .collect();
    let keys = keys();
    let mut mismatches = Vec::new();
    for dist in [Distribution::Ketama, Distribution::Modula] {
        let dist_name = if dist == Distribution::Ketama { "ketama" } else { "modula" };
        for hash in Hash::ALL {
            let servers: String = specs
                .iter()
                .map(|s| match &s.name {
                    Some(n) => format!("    - {}:{}:{} {n}\n", s.host, s.port, s.weight),
                    None => format!("    - {}:{}:{}\n", s.host, s.port, s.weight),
                })
                .collect();
            let proxy = podkit_testkit::nutcracker(&|listen| {
                format!(
                    "pool:\n  listen: {listen}\n  hash: {}\n  distribution: {dist_name}\n  auto_eject_hosts: false\n  servers:\n{servers}",
                    hash.name()
                )
            });
            // Write every key through nutcracker.
            let (mut w, mut r) = conn(proxy.addr);
            for k in &keys {
                w.write_all(b"set ").unwrap();
                w.write_all(k).unwrap();
                w.write_all(b" 0 0 1\r\nv\r\n").unwrap();
            }
            for _ in &keys {
                assert_eq!(line(&mut r), "STORED", "{} {dist_name}", hash.name());
            }
            // Ask each backend which keys it holds.
            let mut holder = vec![None; keys.len()];
            for (i, m) in memcached.iter().enumerate() {
                let (mut w, mut r) = conn(m.addr);
                for (ki, k) in keys.iter().enumerate() {
                    w.write_all(&[b"get ", k.as_slice(), b"\r\n"].concat()).unwrap();
                    let first = line(&mut r);
                    if first.starts_with("VALUE") {
                        line(&mut r);
                        assert_eq!(line(&mut r), "END");
                        holder[ki] = Some(i);
                    }
                }
                w.write_all(b"flush_all\r\n").unwrap();
                assert_eq!(line(&mut r), "OK");
            }
            let c = Continuum::new(dist, hash, &specs, None);
            for (ki, k) in keys.iter().enumerate() {
                let ours = c.pick(k, 0);
                if holder[ki] != Some(ours) {
                    mismatches.push(format!(
                        "{} {dist_name} {:?}: nutcracker {:?}, podkit {ours}",
                        hash.name(),
                        String::from_utf8_lossy(k),
                        holder[ki]
                    ));
                }
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches, first: {:#?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(10)]
    );
}
