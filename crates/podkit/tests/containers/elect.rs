//! Leader election across three pods on three "hosts" (containers with their own addresses)
//! over a three-member etcd in containers, with a recorder polling every sidecar: a leader cut
//! off from etcd fences itself before anyone else leads, a paused leader answers not-leader when
//! it wakes, a killed etcd member changes nothing, and without an etcd majority nobody leads.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use podkit_testkit::assert_eventually;
use podkit_testkit::docker::{Container, Network};

use crate::support::{Pod, podkit, server_image};

/// One sidecar's answer: `Some((is_leader, token))`, or None when it did not answer in time.
fn status(addr: &str) -> Option<(bool, u64)> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(300))).ok()?;
    write!(s, "GET /v1/elections/default HTTP/1.0\r\n\r\n").ok()?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut body = String::new();
    r.read_to_string(&mut body).ok()?;
    let json = body.split("\r\n\r\n").nth(1)?;
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    Some((v["is_leader"].as_bool()?, v["token"].as_u64().unwrap_or(0)))
}

/// What the recorder saw: per polling round, each sidecar's answer.
type History = Arc<Mutex<Vec<(Instant, Vec<Option<(bool, u64)>>)>>>;

fn record(addrs: Vec<String>, stop: Arc<std::sync::atomic::AtomicBool>) -> (History, std::thread::JoinHandle<()>) {
    let history: History = Arc::default();
    let h = history.clone();
    let thread = std::thread::spawn(move || {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let round: Vec<_> = addrs.iter().map(|a| status(a)).collect();
            h.lock().unwrap().push((Instant::now(), round));
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    (history, thread)
}

/// The leaders of the latest round.
fn leaders(h: &History) -> Vec<usize> {
    let h = h.lock().unwrap();
    h.last()
        .map(|(_, r)| r.iter().enumerate().filter(|(_, s)| matches!(s, Some((true, _)))).map(|(i, _)| i).collect())
        .unwrap_or_default()
}

/// No two sidecars ever claimed leadership at once, and each new term's token is higher.
fn check_history(h: &History) {
    let h = h.lock().unwrap();
    let mut last: Option<(usize, u64)> = None;
    for (at, round) in h.iter() {
        let claiming: Vec<(usize, u64)> =
            round.iter().enumerate().filter_map(|(i, s)| s.filter(|(l, _)| *l).map(|(_, t)| (i, t))).collect();
        assert!(claiming.len() <= 1, "two leaders at {at:?}: {claiming:?}");
        if let Some(&(who, token)) = claiming.first() {
            if let Some((was, was_token)) = last
                && was != who
            {
                assert!(token > was_token, "replica {who} leads with token {token} after replica {was}'s {was_token}");
            }
            last = Some((who, token));
        }
    }
}

#[test]
fn leadership_over_etcd_in_containers_survives_partitions_pauses_and_member_loss() {
    let etcd_net = Network::new(true);
    let obs = Network::new(true);
    let image = server_image("etcd", "etcd", "etcd-server");
    let cluster = "etcd-0=http://etcd-0:2380,etcd-1=http://etcd-1:2380,etcd-2=http://etcd-2:2380";
    let etcd: Vec<Container> = (0..3)
        .map(|i| {
            let name = format!("etcd-{i}");
            Container::run(
                "etcd",
                &[
                    "--network",
                    &etcd_net.name,
                    "--network-alias",
                    &name,
                    "--user",
                    "65534:65534",
                    &image,
                    "/usr/bin/etcd",
                    "--name",
                    &name,
                    "--data-dir",
                    "/tmp/etcd",
                    "--listen-client-urls",
                    "http://0.0.0.0:2379",
                    "--advertise-client-urls",
                    &format!("http://{name}:2379"),
                    "--listen-peer-urls",
                    "http://0.0.0.0:2380",
                    "--initial-advertise-peer-urls",
                    &format!("http://{name}:2380"),
                    "--initial-cluster",
                    cluster,
                    "--initial-cluster-state",
                    "new",
                ],
            )
        })
        .collect();
    let image = podkit();
    let mut pods = Vec::new();
    for i in 0..3 {
        let mut pod = Pod::new(&etcd_net, &[]);
        pod.infra.connect(&obs, &[]);
        pod.add(
            "elect",
            &[
                &image,
                "elect",
                "--id",
                &format!("replica-{i}"),
                "--backend",
                "etcd://etcd-0:2379,etcd-1:2379,etcd-2:2379/pods",
                "--ttl",
                "3s",
                "--listen",
                "0.0.0.0:4040",
                "--admin",
                "0.0.0.0:9191",
            ],
        );
        pods.push(pod);
    }
    let addrs: Vec<String> = pods.iter().map(|p| format!("{}:4040", p.infra.ip(&obs))).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (history, recorder) = record(addrs.clone(), stop.clone());
    let one_leader = |timeout: Duration| -> usize {
        let mut found;
        assert_eventually!(
            timeout = timeout,
            {
                found = leaders(&history);
                found.len() == 1
            },
            "no single leader: {found:?} / {}",
            pods[0].containers[0].logs()
        );
        found[0]
    };
    let first = one_leader(Duration::from_secs(60));

    // The leader's host loses etcd: it stops claiming before anyone else can lead.
    pods[first].infra.disconnect(&etcd_net);
    assert_eventually!(
        timeout = Duration::from_secs(30),
        leaders(&history).first().is_some_and(|l| *l != first),
        "nobody took over from replica {first}"
    );
    let second = one_leader(Duration::from_secs(5));
    pods[first].infra.connect(&etcd_net, &[]);

    // The new leader is frozen past its ttl: when it wakes, it answers not-leader at once.
    pods[second].containers[0].pause();
    assert_eventually!(
        timeout = Duration::from_secs(30),
        leaders(&history).iter().any(|l| *l != second),
        "nobody took over from the paused replica {second}"
    );
    let woke = history.lock().unwrap().len();
    pods[second].containers[0].unpause();
    assert_eventually!(
        history.lock().unwrap()[woke..].iter().any(|(_, r)| r[second].is_some()),
        "the unpaused replica never answered"
    );
    let first_answer = history.lock().unwrap()[woke..].iter().find_map(|(_, r)| r[second]).unwrap();
    assert!(!first_answer.0, "replica {second} claimed leadership right after a pause past its ttl");

    // One etcd member killed: there is still a leader.
    etcd[2].kill("KILL");
    let _ = one_leader(Duration::from_secs(30));
    // No majority (one member of three reachable): nobody leads.
    etcd[1].disconnect(&etcd_net);
    assert_eventually!(
        timeout = Duration::from_secs(30),
        leaders(&history).is_empty(),
        "still a leader without an etcd majority"
    );
    // The majority back: a leader again.
    etcd[1].connect(&etcd_net, &["etcd-1"]);
    let _ = one_leader(Duration::from_secs(60));

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    recorder.join().unwrap();
    check_history(&history);
}
