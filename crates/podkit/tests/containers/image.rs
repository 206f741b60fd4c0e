//! The podkit image: what it holds, and `podkit run` as a container's init, beside Docker's own
//! (`docker run --init`, tini).

use std::time::Duration;

use podkit_testkit::assert_eventually;
use podkit_testkit::docker::{Container, Network, docker};

use crate::support::{http_get, podkit, redis, tools};

#[test]
fn the_image_runs_podkit_as_nonroot_with_a_writable_tmp_names_and_profiles() {
    let image = podkit();
    let config = docker(&["image", "inspect", &image, "--format", "{{json .Config}}"]);
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["User"], "65532:65532");
    assert_eq!(config["Entrypoint"], serde_json::json!(["/podkit"]));
    for label in
        ["org.opencontainers.image.version", "org.opencontainers.image.revision", "org.opencontainers.image.source"]
    {
        assert!(config["Labels"][label].as_str().is_some_and(|v| !v.is_empty()), "{label}: {config}");
    }
    assert!(docker(&["run", "--rm", &image, "--version"]).starts_with("podkit "));

    // A Redis found by its container name: a static binary in an empty image resolves names.
    let net = Network::new(true);
    let redis = redis(&net, "cache");
    assert_eventually!(redis.logs().contains("Ready to accept connections"), "redis never started: {}", redis.logs());
    // `docker` asserts the command succeeded: the name resolved and Redis answered.
    let status =
        docker(&["run", "--rm", "--network", &net.name, &image, "queue", "status", "--store", "redis://cache:6379/0"]);
    assert!(status.starts_with("QUEUE"), "{status}");

    // The admin port, and a CPU profile (it needs a writable TMPDIR) with its flame graph.
    let pk = Container::run(
        "podkit",
        &[
            "--network",
            &net.name,
            &image,
            "run",
            "--admin",
            "0.0.0.0:9190",
            "--",
            "/podkit",
            "elect",
            "--backend",
            "file:///tmp/leases",
            "--admin",
            "127.0.0.1:0",
        ],
    );
    let admin = format!("{}:9190", pk.ip(&net));
    assert_eventually!(http_get(&admin, "/healthz").0 == 200, "no admin port: {}", pk.logs());
    let (code, body) = http_get(&admin, "/debug/pprof/profile?seconds=1");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    assert!(!body.is_empty());
    let (code, svg) = http_get(&admin, "/debug/pprof/profile?seconds=1&format=svg");
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&svg).contains("<svg"), "{}", String::from_utf8_lossy(&svg));
}

/// The same program under `podkit run` (in the podkit image, with busybox as its shell) and
/// under Docker's `--init`: a HUP reaches it, an orphan is reaped, `docker stop` ends it with
/// its own status; podkit also runs the pre-stop hook first.
#[test]
fn podkit_run_is_a_correct_init_beside_docker_init() {
    // The TERM trap says whether the pre-stop hook (which writes /tmp/drained) ran before it.
    let script = "trap 'echo got HUP' HUP; trap 'test -e /tmp/drained && echo drained first; echo got TERM; exit 7' TERM; (sleep 0.3 &); echo started; while :; do sleep 0.1; done";
    let image = podkit();
    let under_podkit = Container::run(
        "init-podkit",
        &[
            "-v",
            "/bin/busybox:/bin/sh:ro",
            &image,
            "run",
            "--pre-stop-exec",
            "/bin/sh -c 'echo > /tmp/drained'",
            "--",
            "/bin/sh",
            "-c",
            script,
        ],
    );
    let tools = tools();
    let under_tini = Container::run("init-tini", &["--init", &tools, "sh", "-c", script]);
    for (name, c) in [("podkit", &under_podkit), ("docker --init", &under_tini)] {
        assert_eventually!(c.logs().contains("started"), "{name}: the program never started: {}", c.logs());
        c.kill("HUP");
        assert_eventually!(c.logs().contains("got HUP"), "{name}: HUP was not forwarded: {}", c.logs());
        // The orphaned sleep exited: PID 1 must have reaped it.
        assert_eventually!(
            timeout = Duration::from_secs(10),
            !docker(&["top", &c.name, "-o", "pid,stat,args"])
                .lines()
                .any(|l| l.split_whitespace().nth(1).is_some_and(|s| s.starts_with('Z'))),
            "{name}: a zombie is left: {}",
            docker(&["top", &c.name, "-o", "pid,stat,args"])
        );
        assert_eq!(c.stop(Duration::from_secs(10)), 7, "{name}: {}", c.logs());
        assert!(c.logs().contains("got TERM"), "{name}: {}", c.logs());
    }
    assert!(
        under_podkit.logs().contains("drained first"),
        "the hook runs before the program is stopped: {}",
        under_podkit.logs()
    );
}

/// rustls with no system libraries: the image's podkit talks TLS to etcd (a test CA, and a
/// user and password), and leads.
#[test]
fn the_image_speaks_tls_to_etcd() {
    let etcd = podkit_testkit::etcd_tls(true);
    let dir = crate::support::shared_dir();
    std::fs::copy(etcd.dir().join("ca.pem"), dir.join("ca.pem")).unwrap();
    std::fs::write(dir.join("password"), "secret\n").unwrap();
    let mount = format!("{}:/tls:ro", dir.display());
    let image = podkit();
    let backend = format!("etcd://{}/tls-test", etcd.addr);
    let c = Container::run(
        "elect-tls",
        &[
            "--network",
            "host",
            "-v",
            &mount,
            &image,
            "elect",
            "--backend",
            &backend,
            "--etcd-ca-file",
            "/tls/ca.pem",
            "--etcd-user",
            "root",
            "--etcd-password-file",
            "/tls/password",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ],
    );
    assert_eventually!(c.logs().contains("elected leader"), "no leadership over TLS: {}", c.logs());
}
