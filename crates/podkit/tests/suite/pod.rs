//! `podkit pod` end to end: pod files of real programs (shell scripts, and podkit's own commands
//! as sidecars) run by the binary, checked through what the programs record and the pod's API.

// Tests start servers and podkit itself directly, outside any podkit reaper.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;
use podkit_testkit::{AdminClient, assert_eventually, memcached};
use serde_json::Value;

use crate::support::{Mode, PODKIT, Podkit, alive, pids_running, run_plain};

/// A test directory with the pod file written into it; `{dir}` in the text is the directory.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture { dir: tempfile::tempdir().unwrap() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> String {
        let p = self.path(name);
        std::fs::write(&p, text.replace("{dir}", self.dir.path().to_str().unwrap())).unwrap();
        p.to_str().unwrap().to_string()
    }

    /// The lines the containers appended to `{dir}/events`.
    fn events(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("events")).unwrap_or_default().lines().map(str::to_string).collect()
    }

    fn run(&self, file: &str) -> Podkit {
        Podkit::start(Mode::Subreaper, &["pod", "run", file])
    }
}

fn pod(p: &Podkit) -> Value {
    p.admin().get("/pod").json()
}

fn container(p: &Podkit, name: &str) -> Value {
    pod(p)["containers"].as_array().unwrap().iter().find(|c| c["name"] == name).cloned().unwrap_or(Value::Null)
}

fn index(events: &[String], what: &str) -> usize {
    events.iter().position(|e| e == what).unwrap_or_else(|| panic!("no {what:?} in {events:?}"))
}

/// Sidecars start in order, each only after the one before it has passed its startup probe;
/// the main containers start after all of them; a Job's pod ends when its main does, with its
/// status, stopping the sidecar that still runs.
#[test]
fn start_order_follows_startup_probes_and_a_job_ends_with_its_main() {
    let f = Fixture::new();
    let file = f.write(
        "pod.yaml",
        r#"apiVersion: v1
kind: Pod
metadata: {name: job}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 10
  initContainers:
    - name: migrate
      image: app
      command: [sh, -c, "echo migrate >> {dir}/events"]
    - name: proxy
      image: podkit
      restartPolicy: Always
      command: [sh, -c, "echo proxy-started >> {dir}/events; sleep 0.5; echo proxy-up >> {dir}/events; touch {dir}/proxy-up; trap 'echo proxy-stopped >> {dir}/events; exit 0' TERM; while :; do sleep 0.05; done"]
      startupProbe: {exec: {command: [test, -e, "{dir}/proxy-up"]}, periodSeconds: 1}
    - name: agent
      image: podkit
      restartPolicy: Always
      command: [sh, -c, "echo agent-started >> {dir}/events; touch {dir}/agent-up; trap 'echo agent-stopped >> {dir}/events; exit 0' TERM; while :; do sleep 0.05; done"]
      startupProbe: {exec: {command: [test, -e, "{dir}/agent-up"]}, periodSeconds: 1}
  containers:
    - name: main
      image: app
      command: [sh, -c, "echo main-started >> {dir}/events; exit 3"]
"#,
    );
    let mut p = f.run(&file);
    assert_eq!(p.wait(), 3, "the pod ends with its main's status: {}", p.stderr());
    let e = f.events();
    assert!(index(&e, "migrate") < index(&e, "proxy-started"), "{e:?}");
    assert!(index(&e, "proxy-up") < index(&e, "agent-started"), "the next sidecar waited for the startup probe: {e:?}");
    assert!(index(&e, "agent-started") < index(&e, "main-started"), "{e:?}");
    // The sidecars were stopped, in reverse order.
    assert!(index(&e, "agent-stopped") < index(&e, "proxy-stopped"), "{e:?}");
}

/// SIGTERM: the mains stop first (after their preStop), then the sidecars in reverse order,
/// each within its own grace (a slow one finishes its own cleanup); a sidecar that never
/// passed its startup probe is stopped too; nothing is left.
#[test]
fn termination_stops_mains_then_sidecars_in_reverse_each_with_its_own_grace() {
    let f = Fixture::new();
    let file = f.write(
        "pod.yaml",
        r#"apiVersion: v1
kind: Pod
metadata:
  name: web
  annotations:
    podkit.dev/sidecar-grace.slow: 5s
spec:
  terminationGracePeriodSeconds: 4
  initContainers:
    - name: slow
      image: podkit
      restartPolicy: Always
      command: [sh, -c, "trap 'sleep 1.5; echo slow-stopped >> {dir}/events; exit 0' TERM; while :; do sleep 0.05; done"]
    - name: fast
      image: podkit
      restartPolicy: Always
      command: [sh, -c, "trap 'echo fast-stopped >> {dir}/events; exit 0' TERM; while :; do sleep 0.05; done"]
  containers:
    - name: app
      image: app
      command: [sh, -c, "echo app-started >> {dir}/events; trap 'echo app-stopped >> {dir}/events; exit 0' TERM; while :; do sleep 0.05; done"]
      lifecycle: {preStop: {exec: {command: [sh, -c, "echo app-prestop >> {dir}/events"]}}}
"#,
    );
    let mut p = f.run(&file);
    assert_eventually!(f.events().contains(&"app-started".to_string()), "the app never started: {}", p.stderr());
    assert_eventually!(pod(&p)["ready"] == true, "never ready: {}", pod(&p));
    let pids: Vec<i64> = pod(&p)["containers"].as_array().unwrap().iter().filter_map(|c| c["pid"].as_i64()).collect();
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait(), 0, "{}", p.stderr());
    let e = f.events();
    assert_eq!(e, ["app-started", "app-prestop", "app-stopped", "fast-stopped", "slow-stopped"], "{}", p.stderr());
    for pid in pids {
        assert!(!alive(pid as i32), "{pid} outlived the pod");
    }

    // A sidecar whose startup probe never passes is still stopped.
    let file = f.write(
        "stuck.yaml",
        r#"apiVersion: v1
kind: Pod
metadata: {name: stuck}
spec:
  initContainers:
    - name: never
      image: podkit
      restartPolicy: Always
      command: [sh, -c, "echo $$$$ > {dir}/never.pid; exec sleep 1000"]
      startupProbe: {exec: {command: ["false"]}, periodSeconds: 1, failureThreshold: 1000}
  containers:
    - {name: app, image: app, command: [sleep, "1000"]}
"#,
    );
    let mut p = f.run(&file);
    let read_pid = || std::fs::read_to_string(f.path("never.pid")).ok().and_then(|s| s.trim().parse::<i32>().ok());
    assert_eventually!(read_pid().is_some(), "the sidecar never ran");
    let never = read_pid().unwrap();
    assert_eq!(container(&p, "never")["started"], false);
    assert_eq!(container(&p, "app")["state"], "waiting", "the app must wait for the sidecar");
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait(), 0);
    assert!(!alive(never), "the sidecar that never started was left running");
}

/// A crashing sidecar is restarted with backoff while the main keeps its pid; a liveness
/// failure restarts that container only; an edit to one sidecar's args restarts that sidecar
/// only (`podkit pod apply`); `ps`, `logs` and `restart` talk to the running pod.
#[test]
fn restarts_updates_and_the_pod_commands_reach_one_container_only() {
    let f = Fixture::new();
    let template = r#"apiVersion: v1
kind: Pod
metadata:
  name: web
  annotations: {podkit.dev/restart-backoff: 200ms}
spec:
  initContainers:
    - name: flaky
      image: podkit
      restartPolicy: Always
      command: [sh, -c, "sleep 0.3; exit 1"]
    - name: tuned
      image: podkit
      restartPolicy: Always
      command: [sh, -c, "echo tuned VERSION; exec sleep 1000"]
  containers:
    - name: app
      image: app
      command: [sh, -c, "echo app up; exec sleep 1000"]
    - name: watched
      image: app
      command: [sh, -c, "touch {dir}/alive-$$; exec sleep 1000"]
      livenessProbe: {exec: {command: [sh, -c, "! test -e {dir}/sick"]}, periodSeconds: 1, failureThreshold: 1}
"#;
    let file = f.write("pod.yaml", &template.replace("VERSION", "v1"));
    let p = f.run(&file);
    assert_eventually!(container(&p, "app")["pid"].is_i64(), "the app never started: {}", p.stderr());
    let app_pid = container(&p, "app")["pid"].clone();
    assert_eventually!(
        timeout = Duration::from_secs(20),
        container(&p, "flaky")["restarts"].as_u64() >= Some(2),
        "flaky was not restarted: {}",
        container(&p, "flaky")
    );
    assert_eq!(container(&p, "app")["pid"], app_pid, "the main kept running");

    // A liveness failure restarts that container only.
    let watched_pid = container(&p, "watched")["pid"].clone();
    std::fs::write(f.path("sick"), "").unwrap();
    assert_eventually!(
        container(&p, "watched")["pid"] != watched_pid && container(&p, "watched")["pid"].is_i64(),
        "not restarted"
    );
    std::fs::remove_file(f.path("sick")).unwrap();
    assert_eq!(container(&p, "app")["pid"], app_pid);

    // Apply an edit to one sidecar: it alone gets a new process, with the new args.
    let tuned_pid = container(&p, "tuned")["pid"].clone();
    f.write("pod.yaml", &template.replace("VERSION", "v2"));
    let admin = std::fs::read_to_string(p.path("admin.addr")).unwrap();
    let (code, out) = podkit_out(&["pod", "apply", &file, "--admin", admin.trim()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("restarted: tuned"), "{out}");
    assert!(out.contains("unchanged:") && out.contains("app"), "{out}");
    assert_ne!(container(&p, "tuned")["pid"], tuned_pid);
    assert_eq!(container(&p, "app")["pid"], app_pid, "the main kept its process");
    assert_eventually!(
        podkit_out(&["pod", "logs", "tuned", "--admin", admin.trim()]).1.contains("tuned v2"),
        "no v2 line"
    );

    // The client commands.
    let (code, out) = podkit_out(&["pod", "ps", "--admin", admin.trim()]);
    assert_eq!(code, 0, "{out}");
    for word in ["CONTAINER", "flaky", "tuned", "app", "watched", "sidecar", "main"] {
        assert!(out.contains(word), "{word} not in\n{out}");
    }
    let (code, out) = podkit_out(&["pod", "restart", "app", "--admin", admin.trim()]);
    assert_eq!(code, 0, "{out}");
    assert_eventually!(
        container(&p, "app")["pid"] != app_pid && container(&p, "app")["pid"].is_i64(),
        "app not restarted"
    );
    let (code, out) = podkit_out(&["pod", "restart", "nope", "--admin", admin.trim()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no container is named \"nope\""), "{out}");
}

/// Runs podkit to its end: (status, stdout and stderr).
fn podkit_out(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(PODKIT).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

/// kill -9 of `podkit pod` leaves none of the pod's processes, grandchildren included; an
/// essential container's exit stops the whole pod.
#[test]
fn nothing_outlives_a_killed_pod_and_an_essential_container_ends_it() {
    let f = Fixture::new();
    let file = f.write(
        "pod.yaml",
        r#"apiVersion: v1
kind: Pod
metadata: {name: doomed}
spec:
  initContainers:
    - {name: side, image: podkit, restartPolicy: Always, command: [sh, -c, "sleep 876541 & sleep 876542"]}
  containers:
    - {name: app, image: app, command: [sh, -c, "sleep 876543 & sleep 876544"]}
"#,
    );
    let mut p = f.run(&file);
    let marks = ["876541", "876542", "876543", "876544"];
    assert_eventually!(marks.iter().all(|m| pids_running(&["sleep", m]).len() == 1), "not all running: {}", p.stderr());
    p.signal(Signal::SIGKILL);
    p.wait();
    assert_eventually!(
        marks.iter().all(|m| pids_running(&["sleep", m]).is_empty()),
        "left running: {:?}",
        marks.iter().map(|m| pids_running(&["sleep", m])).collect::<Vec<_>>()
    );

    let file = f.write(
        "essential.yaml",
        r#"apiVersion: v1
kind: Pod
metadata:
  name: together
  annotations: {podkit.dev/essential.leader: "true"}
spec:
  initContainers:
    - {name: leader, image: podkit, restartPolicy: Always, command: [sh, -c, "sleep 0.5; exit 4"]}
  containers:
    - {name: app, image: app, command: [sleep, "1000"]}
"#,
    );
    let mut p = f.run(&file);
    assert_eq!(p.wait(), 4, "the pod ends with the essential container's status: {}", p.stderr());
}

/// podkit's own commands as sidecars: an ambassador the app writes memcache through, started
/// (its startup probe on its admin port) before the app; the pod is ready when both are.
#[test]
fn an_ambassador_sidecar_serves_the_app_that_starts_after_it() {
    let m = memcached();
    let f = Fixture::new();
    let port = podkit_testkit::free_port();
    let admin = podkit_testkit::free_port();
    f.write("nutcracker.yml", &format!("cache:\n  listen: 127.0.0.1:{port}\n  servers:\n    - {}:1\n", m.addr));
    let busybox = podkit_testkit::require_program("busybox", "busybox-static");
    let file = f.write(
        "pod.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: cached}}
spec:
  initContainers:
    - name: cache
      image: podkit
      restartPolicy: Always
      command: [{PODKIT}, ambassador, -c, "{{dir}}/nutcracker.yml", --admin, "127.0.0.1:{admin}"]
      startupProbe: {{httpGet: {{path: /readyz, port: {admin}}}, periodSeconds: 1}}
  containers:
    - name: app
      image: app
      command: [sh, -c, "printf 'set k 0 0 2\r\nok\r\nquit\r\n' | {busybox} nc 127.0.0.1 {port} > {{dir}}/answer; exec sleep 1000"]
      readinessProbe: {{exec: {{command: [grep, -q, STORED, "{{dir}}/answer"]}}, periodSeconds: 1}}
"#,
            busybox = busybox.display()
        ),
    );
    let p = f.run(&file);
    assert_eventually!(
        timeout = Duration::from_secs(20),
        pod(&p)["ready"] == true,
        "not ready: {} {}",
        pod(&p),
        p.stderr()
    );
    assert!(std::fs::read_to_string(f.path("answer")).unwrap().contains("STORED"));
    let c = AdminClient::from_addr_file(&p.path("admin.addr"));
    assert_eq!(c.get("/readyz").status, 200);
}

/// A main container eating memory makes the low-priority sidecar stop; when the memory is
/// free again the sidecar starts again; the main is never stopped.
#[test]
fn memory_pressure_stops_the_low_priority_sidecar_first_and_starts_it_again() {
    let f = Fixture::new();
    let file = f.write(
        "pod.yaml",
        r#"apiVersion: v1
kind: Pod
metadata:
  name: tight
  annotations:
    podkit.dev/priority.cache-warmer: low
    podkit.dev/memory-limit: 300Mi
spec:
  initContainers:
    - {name: cache-warmer, image: podkit, restartPolicy: Always, command: [sleep, "1000"]}
  containers:
    - name: app
      image: app
      # While {dir}/hog exists, tail holds 300 MB it cannot hand on (its reader waits).
      command: [sh, -c, "while :; do if [ -e {dir}/hog ]; then head -c 300000000 /dev/zero | tail -c 300000000 | { while [ -e {dir}/hog ]; do sleep 0.1; done; cat > /dev/null; }; fi; sleep 0.1; done"]
"#,
    );
    let p = f.run(&file);
    assert_eventually!(
        container(&p, "cache-warmer")["state"] == "running" && container(&p, "app")["pid"].is_i64(),
        "{}",
        pod(&p)
    );
    let app = container(&p, "app")["pid"].clone();
    std::fs::write(f.path("hog"), "").unwrap();
    assert_eventually!(
        timeout = Duration::from_secs(30),
        container(&p, "cache-warmer")["state"] == "held: memory pressure",
        "the sidecar was not stopped: {}",
        pod(&p)
    );
    std::fs::remove_file(f.path("hog")).unwrap();
    assert_eventually!(
        timeout = Duration::from_secs(60),
        container(&p, "cache-warmer")["state"] == "running",
        "the sidecar was not started again: {}",
        pod(&p)
    );
    assert_eq!(container(&p, "app")["pid"], app, "the main container was never stopped");
    let metrics = p.admin().get("/metrics").body;
    assert!(metrics.contains("podkit_pod_priority_stops_total{container=\"cache-warmer\"} 1"), "{metrics}");
    assert!(metrics.contains("podkit_pod_priority_starts_total{container=\"cache-warmer\"} 1"), "{metrics}");
}

#[test]
fn bad_pod_files_exit_64_naming_the_field() {
    let f = Fixture::new();
    let good = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n    - {name: a, image: x, command: [sleep, '1'], ports: [{containerPort: 8080}]}\n";
    for (bad, says) in [
        (good.replace("image: x,", "imagee: x,"), "spec.containers[0].imagee: unknown field"),
        (good.replace("command: [sleep, '1'], ", ""), "spec.containers[0].command: missing"),
        (
            good.replace("  containers:\n", "  containers:\n    - {name: a, image: x, command: [sleep, '1']}\n"),
            "is the name of another container",
        ),
        (
            good.replace("  containers:\n", "  containers:\n    - {name: b, image: x, command: [sleep, '1'], ports: [{containerPort: 8080}]}\n"),
            "port 8080 is also",
        ),
        (
            good.replace("  containers:\n", "  initContainers:\n    - {name: i, image: x, command: ['true'], readinessProbe: {tcpSocket: {port: 1}}}\n  containers:\n"),
            "takes no probes",
        ),
    ] {
        let file = f.write("bad.yaml", &bad);
        for cmd in ["check", "run"] {
            let (code, out) = run_plain(&["pod", cmd, &file, "--admin", "127.0.0.1:0"].iter().filter(|a| cmd == "run" || !a.starts_with("--admin") && **a != "127.0.0.1:0").copied().collect::<Vec<_>>(), &[]);
            assert_eq!(code, 64, "{cmd} {says}: {out}");
            assert!(out.contains(says), "{cmd}: {says} not in {out}");
        }
    }
    let file = f.write("good.yaml", &good.replace("  containers:", "  nodeSelector: {disk: ssd}\n  containers:"));
    let (code, out) = podkit_out(&["pod", "check", &file]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("warning: spec.nodeSelector: not honoured locally"), "{out}");
}

/// Every example pod in examples/pods runs as written (with podkit and busybox on PATH) and
/// its app shows what the example is for; the rendered manifests in examples/rendered are what
/// `podkit pod render` writes today.
#[test]
fn every_example_pod_runs_and_its_rendered_manifest_is_current() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bin = std::path::Path::new(PODKIT).parent().unwrap().to_str().unwrap().to_string();
    let path = format!("{bin}:{}", std::env::var("PATH").unwrap_or_default());
    podkit_testkit::require_program("busybox", "busybox-static");
    podkit_testkit::require_program("memcached", "memcached");
    // (example, container, what its output shows)
    let expected = [
        ("run", "app", "app is serving"),
        ("elect", "app", "\"is_leader\":true"),
        ("ambassador", "app", "visits: 3"),
        ("logs", "log-saver", "\"line\":\"request 3 served\""),
        ("adapter", "app", "memcached_current_items 3"),
        ("scatter", "app", "top: [{\"shard\":2,\"score\":20},{\"shard\":1,\"score\":10}]"),
        ("sync", "app", "serving: <h1>version 1</h1>"),
        ("queue", "push", "pushed 5 new item(s)"),
    ];
    let examples: Vec<String> = std::fs::read_dir(root.join("examples/pods"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".yaml").map(str::to_string))
        .collect();
    for e in &examples {
        assert!(expected.iter().any(|(n, _, _)| n == e), "examples/pods/{e}.yaml has no expectation here");
    }
    for (name, container, shows) in expected {
        let file = root.join(format!("examples/pods/{name}.yaml"));
        let mut p = Podkit::start_with(Mode::Subreaper, &["pod", "run", file.to_str().unwrap()], |c| {
            c.env("PATH", &path);
        });
        let logs = || -> String {
            let records: Value = p.admin().get(&format!("/logs?target={container}&limit=1000")).json();
            records
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["message"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eventually!(
            timeout = Duration::from_secs(20),
            logs().contains(shows),
            "{name}: {container} never showed {shows:?}: {}\n{}",
            logs(),
            p.stderr()
        );
        if name != "queue" {
            p.signal(Signal::SIGTERM);
        }
        assert_eq!(p.wait(), 0, "{name}: {}", p.stderr());

        // The rendered manifest is today's, reads back into the Kubernetes types, and runs.
        let rendered = std::fs::read_to_string(root.join(format!("examples/rendered/{name}.yaml"))).unwrap_or_default();
        let (code, now) = podkit_out(&["pod", "render", file.to_str().unwrap(), "--image", "podkit:0.1.0"]);
        assert_eq!(code, 0, "{now}");
        assert_eq!(rendered, now, "examples/rendered/{name}.yaml is out of date: run scripts/render-examples");
    }
}

/// The web page on the admin port, in a real headless Chromium: it shows the pod's containers
/// and sees a restart happen; its screenshot is kept in target/test-artifacts.
#[test]
fn the_web_page_shows_the_pod_and_a_restart_in_a_real_browser() {
    let chromium = podkit_testkit::require_program("chromium", "chromium");
    let f = Fixture::new();
    let file = f.write(
        "pod.yaml",
        r#"apiVersion: v1
kind: Pod
metadata: {name: shown}
spec:
  initContainers:
    - {name: helper, image: podkit, restartPolicy: Always, command: [sh, -c, "while :; do echo helping; sleep 1; done"]}
  containers:
    - {name: app, image: app, command: [sh, -c, "echo app up; exec sleep 1000"]}
"#,
    );
    let p = f.run(&file);
    assert_eventually!(pod(&p)["ready"] == true, "never ready: {}", pod(&p));
    let admin = std::fs::read_to_string(p.path("admin.addr")).unwrap().trim().to_string();
    let status = reqwest::blocking::Client::new()
        .post(format!("http://{admin}/pod/containers/app/restart"))
        .send()
        .unwrap()
        .status();
    assert_eq!(status, 200);
    assert_eventually!(container(&p, "app")["restarts"] == 1, "{}", pod(&p));
    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let browse = |extra: &[&str]| -> String {
        let home = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(&chromium)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--virtual-time-budget=4000",
                "--window-size=1200,700",
            ])
            .arg(format!("--user-data-dir={}", home.path().display()))
            .args(extra)
            .arg(format!("http://{admin}/"))
            .env("HOME", home.path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = browse(&["--dump-dom"]);
    // The rows the page's script built from /pod.
    let row =
        |name: &str| dom.split("<tr data-container=\"").find(|r| r.starts_with(name)).unwrap_or_default().to_string();
    assert!(dom.contains("<span id=\"name\">shown</span>"), "{dom}");
    assert!(row("helper").contains("sidecar"), "{dom}");
    assert!(row("app").contains("<td class=\"num restarts\">1</td>"), "the restart is not shown: {}", row("app"));
    assert!(dom.contains("Restart"), "no restart buttons: {dom}");
    let shot = artifacts.join("pod-page.png");
    let _ = std::fs::remove_file(&shot);
    browse(&[&format!("--screenshot={}", shot.display())]);
    assert!(std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000), "no screenshot at {}", shot.display());
}

/// scripts/demo's pod: every podkit command in one pod (an ambassador, elect, scatter, a queue
/// worker, the log saver, sync and the adapter as sidecars, the app under podkit run) comes up,
/// ready, and the app uses them; it stops cleanly.
#[test]
fn the_demo_pod_runs_every_podkit_command_together() {
    for (program, package) in [("memcached", "memcached"), ("git", "git"), ("busybox", "busybox-static")] {
        podkit_testkit::require_program(program, package);
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bin = std::path::Path::new(PODKIT).parent().unwrap().to_str().unwrap().to_string();
    let path = format!("{bin}:{}", std::env::var("PATH").unwrap_or_default());
    let file = root.join("examples/demo.yaml");
    let mut p = Podkit::start_with(Mode::Subreaper, &["pod", "run", file.to_str().unwrap()], |c| {
        c.env("PATH", &path);
    });
    assert_eventually!(
        timeout = Duration::from_secs(60),
        pod(&p)["ready"] == true,
        "not ready: {} {}",
        pod(&p),
        p.stderr()
    );
    let app = || -> String {
        let records: Value = p.admin().get("/logs?target=app&limit=100").json();
        records.as_array().into_iter().flatten().filter_map(|r| r["message"].as_str()).collect::<Vec<_>>().join("\n")
    };
    assert_eventually!(
        timeout = Duration::from_secs(30),
        app().contains("\"is_leader\":true visits=2 top=[{\"shard\":2,\"score\":20},{\"shard\":1,\"score\":10}]"),
        "the app did not use its sidecars: {}",
        app()
    );
    for c in pod(&p)["containers"].as_array().unwrap() {
        let expected = if c["role"] == "init" { "completed" } else { "running" };
        assert_eq!(c["state"], expected, "{c}");
    }
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait(), 0, "{}", p.stderr());
}

/// A container over its memory limit is OOM-killed and restarted by its policy, the others
/// untouched: by the kernel in its own cgroup where podkit can make one (root, as here),
/// otherwise by podkit's watch of /proc.
#[test]
fn a_container_over_its_memory_limit_is_oom_killed_alone() {
    let f = Fixture::new();
    let file = f.write(
        "pod.yaml",
        r#"apiVersion: v1
kind: Pod
metadata:
  name: limited
  annotations: {podkit.dev/restart-backoff: 200ms}
spec:
  containers:
    - name: hog
      image: app
      command: [sh, -c, "head -c 200000000 /dev/zero | tail -c 200000000 | { sleep 1000; cat > /dev/null; }"]
      resources: {limits: {memory: 64Mi}, requests: {cpu: 250m}}
    - {name: calm, image: app, command: [sleep, "1000"]}
"#,
    );
    let p = f.run(&file);
    assert_eventually!(container(&p, "calm")["pid"].is_i64(), "{}", pod(&p));
    let calm = container(&p, "calm")["pid"].clone();
    let pod_dir = format!("/sys/fs/cgroup/memory/podkit/limited-{}", p.pid());
    if nix::unistd::geteuid().is_root() && std::path::Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists() {
        let limit = std::fs::read_to_string(format!("{pod_dir}/hog/memory.limit_in_bytes")).unwrap_or_default();
        assert_eq!(limit.trim(), (64u64 << 20).to_string(), "the container's cgroup has its limit");
        let shares = std::fs::read_to_string(format!("/sys/fs/cgroup/cpu/podkit/limited-{}/hog/cpu.shares", p.pid()))
            .unwrap_or_default();
        assert_eq!(shares.trim(), "256", "250m is a quarter of a core's shares");
    }
    assert_eventually!(
        timeout = Duration::from_secs(30),
        container(&p, "hog")["restarts"].as_u64() >= Some(1)
            && container(&p, "hog")["reason"].as_str().is_some_and(|r| r.contains("OOMKilled")),
        "not OOM-killed: {}",
        container(&p, "hog")
    );
    assert_eq!(container(&p, "calm")["pid"], calm, "the other container was untouched");
}
