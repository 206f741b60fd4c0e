//! The ambassador as a sidecar: an app container writes through localhost:22121 to memcached
//! containers on the pod's network; keys land where nutcracker puts them; a killed server fails
//! fast for its keys only, a partitioned one times out and is ejected, and serves again once
//! reconnected.

use std::time::Duration;

use podkit_testkit::assert_eventually;
use podkit_testkit::docker::{Container, Network};

use crate::support::{Pod, file, memcache, memcached, podkit, server_image, tools};

/// Servers by their names on the network (resolved at each connect, as nutcracker does).
const POOL: &str = "cache:\n  listen: 0.0.0.0:22121\n  hash: fnv1a_64\n  distribution: ketama\n  timeout: 400\n  auto_eject_hosts: true\n  server_failure_limit: 1\n  server_retry_timeout: 1000\n  servers:\n    - cache-a:11211:1 cache-a\n    - cache-b:11211:1 cache-b\n";

/// What the app gets for `get KEY` through the ambassador, from inside the pod.
fn app_get(app: &Container, key: &str) -> String {
    let out = app.exec(&["sh", "-c", &format!("printf 'get {key}\\r\\nquit\\r\\n' | nc 127.0.0.1 22121")]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn keys_land_where_nutcracker_puts_them_and_failures_stay_with_their_server() {
    let net = Network::new(true);
    let (a, b) = (memcached(&net, "cache-a"), memcached(&net, "cache-b"));
    let (ip_a, ip_b) = (a.ip(&net), b.ip(&net));
    for (c, ip) in [(&a, &ip_a), (&b, &ip_b)] {
        assert_eventually!(
            memcache(&format!("{ip}:11211"), "version\r\n").starts_with("VERSION"),
            "memcached never answered: {}",
            c.logs()
        );
    }
    // podkit's file adds eject_mode (nutcracker would refuse the key); nutcracker reads the rest.
    let conf = file("nutcracker.yml", &format!("{POOL}  eject_mode: fail_fast\n"));
    let mount = format!("{}:/etc/nutcracker.yml:ro", conf.display());
    let plain = file("nutcracker.yml", POOL);
    let plain_mount = format!("{}:/etc/nutcracker.yml:ro", plain.display());
    let mut pod = Pod::new(&net, &[]);
    let image = podkit();
    pod.add(
        "ambassador",
        &["-v", &mount, &image, "ambassador", "-c", "/etc/nutcracker.yml", "--admin", "0.0.0.0:9192"],
    );
    let tools = tools();
    pod.add("app", &[&tools, "sleep", "100000000"]);
    let app = &pod.containers[1];
    let ambassador = &pod.containers[0];
    assert_eventually!(
        app.exec(&["sh", "-c", "printf 'version\\r\\nquit\\r\\n' | nc 127.0.0.1 22121"]).stdout.starts_with(b"VERSION"),
        "the ambassador never answered in the pod: {}",
        ambassador.logs()
    );
    // The app writes 40 keys through localhost.
    // (Names this alike all land on one server under twemproxy's fnv1a_64 ketama: vary them.)
    let keys: Vec<String> = (0..40).map(|i| format!("session-{}-{i}", i * 7919)).collect();
    let script: String = keys.iter().map(|k| format!("set {k} 0 0 1\\r\\nx\\r\\n")).collect();
    let out = app.exec(&["sh", "-c", &format!("printf '{script}quit\\r\\n' | nc 127.0.0.1 22121")]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).matches("STORED").count(), 40);

    // nutcracker with the same file finds every key where podkit put it.
    let nutcracker = Container::run(
        "nutcracker",
        &[
            "--network",
            &net.name,
            "-v",
            &plain_mount,
            &server_image("nutcracker", "nutcracker", "nutcracker"),
            "/usr/sbin/nutcracker",
            "-c",
            "/etc/nutcracker.yml",
            "-o",
            "/dev/stderr",
        ],
    );
    let twem = format!("{}:22121", nutcracker.ip(&net));
    let gets: String = keys.iter().map(|k| format!("get {k}\r\n")).collect();
    assert_eventually!(memcache(&twem, "version\r\n").starts_with("VERSION"), "nutcracker: {}", nutcracker.logs());
    assert_eq!(memcache(&twem, &gets).matches("VALUE").count(), 40, "nutcracker places keys elsewhere");
    // Each server holds some of them.
    let on = |ip: &str| {
        keys.iter()
            .filter(|k| memcache(&format!("{ip}:11211"), &format!("get {k}\r\n")).contains("VALUE"))
            .cloned()
            .collect::<Vec<_>>()
    };
    let (on_a, on_b) = (on(&ip_a), on(&ip_b));
    assert!(!on_a.is_empty() && !on_b.is_empty() && on_a.len() + on_b.len() == 40, "{on_a:?} {on_b:?}");

    // A killed server: its keys fail at once, the other server's are still served.
    a.kill("KILL");
    assert_eventually!(app_get(app, &on_a[0]).starts_with("SERVER_ERROR"), "{}", app_get(app, &on_a[0]));
    assert!(app_get(app, &on_a[0]).contains("cache-a"), "the error names the server: {}", app_get(app, &on_a[0]));
    for k in &on_b {
        assert!(app_get(app, k).contains("VALUE"), "{k}: {}", app_get(app, k));
    }

    // A partitioned server: its requests time out, then it is ejected; reconnected, it serves.
    b.disconnect(&net);
    assert_eventually!(
        timeout = Duration::from_secs(20),
        app_get(app, &on_b[0]).contains("is ejected"),
        "never ejected: {}",
        app_get(app, &on_b[0])
    );
    b.connect(&net, &["cache-b"]);
    assert_eventually!(
        timeout = Duration::from_secs(30),
        app_get(app, &on_b[0]).contains("VALUE"),
        "cache-b never served again: {} {}",
        app_get(app, &on_b[0]),
        ambassador.logs()
    );
}
