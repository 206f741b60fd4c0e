//! Every example pod, rendered for Kubernetes by `podkit pod render`, run on Docker as a pod: an
//! infra container holds the network namespace, each entry becomes a container joined to it, the
//! emptyDir volumes shared directories; init containers run to completion in order, sidecars
//! start in order each after its startup probe passed (checked inside the pod, as the kubelet
//! does), then the app. The app shows what it shows under `podkit pod run`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use podkit_testkit::assert_eventually;
use podkit_testkit::docker::{Container, Network, docker, docker_output};
use serde_json::Value;

use crate::support::{Pod, memcached_image, podkit, shared_dir, tools};

/// Whether a probe passes, checked from inside the pod's network namespace.
fn probe_passes(pod: &Pod, probe: &Value) -> bool {
    let check = if let Some(h) = probe.get("httpGet") {
        format!("busybox wget -qO- http://127.0.0.1:{}{}", h["port"], h["path"].as_str().unwrap_or("/"))
    } else if let Some(t) = probe.get("tcpSocket") {
        // busybox's nc has no -z: connect, run `true` on the connection, exit 0 if it opened.
        format!("busybox nc 127.0.0.1 {} -e true", t["port"])
    } else {
        return true;
    };
    pod.infra.exec(&["sh", "-c", &check]).status.success()
}

/// Runs a rendered pod; returns the pod and its main containers' names.
fn run_rendered(net: &Network, manifest: &Value, images: &BTreeMap<&str, String>) -> (Pod, Vec<String>) {
    let spec = manifest.pointer("/spec/template/spec").or_else(|| manifest.get("spec")).unwrap();
    let name = manifest.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("pod").to_string();
    let volumes: BTreeMap<String, PathBuf> = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| (v["name"].as_str().unwrap().to_string(), shared_dir()))
        .collect();
    let mut pod = Pod::new(net, &[]);
    let mut mains = Vec::new();
    let entries: Vec<(&Value, bool)> = spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| (c, true))
        .chain(spec["containers"].as_array().into_iter().flatten().map(|c| (c, false)))
        .collect();
    for (c, init) in entries {
        let cname = c["name"].as_str().unwrap().to_string();
        // Kubernetes' `$(VAR)` expansion, as the kubelet does it before the container starts.
        let mut vars = Vec::new();
        for e in c["env"].as_array().into_iter().flatten() {
            let value = match e.get("value") {
                Some(v) => v.as_str().unwrap_or("").to_string(),
                None if e.pointer("/valueFrom/fieldRef/fieldPath") == Some(&Value::from("metadata.name")) => {
                    name.clone()
                }
                None => continue,
            };
            vars.push((e["name"].as_str().unwrap().to_string(), value));
        }
        let argv: Vec<String> = c["command"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(c["args"].as_array().into_iter().flatten())
            .map(|a| podkit_pod::runtime::expand(a.as_str().unwrap(), &vars))
            .collect();
        let image = c["image"].as_str().unwrap();
        let docker_image = images
            .iter()
            .find(|(k, _)| image.starts_with(*k))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no image for {image}"));
        let mut args: Vec<String> = Vec::new();
        for (k, v) in &vars {
            args.push("-e".into());
            args.push(format!("{k}={v}"));
        }
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let dir = &volumes[m["name"].as_str().unwrap()];
            args.push("-v".into());
            args.push(format!("{}:{}", dir.display(), m["mountPath"].as_str().unwrap()));
        }
        if image.starts_with("podkit") {
            // The examples' stages and hooks are busybox: in a real pod, the app's own programs.
            args.extend(["-v".into(), "/bin/busybox:/bin/busybox:ro".into()]);
        }
        if image.starts_with("memcached") {
            args.extend(["--user".into(), "65534:65534".into()]);
        }
        args.push("--entrypoint".into());
        args.push(argv[0].clone());
        args.push(docker_image);
        args.extend(argv[1..].iter().cloned());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let sidecar = init && c["restartPolicy"] == "Always";
        let added = pod.add(&cname, &refs).name.clone();
        let logs = |pod: &Pod| pod.containers.last().map(Container::logs).unwrap_or_default();
        if init && !sidecar {
            let status = pod.containers.last().map_or(-1, Container::wait);
            assert_eq!(status, 0, "init container {cname} failed: {}", logs(&pod));
            continue;
        }
        if sidecar && let Some(probe) = c.get("startupProbe") {
            assert_eventually!(
                timeout = Duration::from_secs(30),
                probe_passes(&pod, probe),
                "{cname} never started: {}",
                logs(&pod)
            );
        }
        if !init {
            mains.push(added);
        }
    }
    (pod, mains)
}

#[test]
fn every_rendered_example_pod_runs_on_docker_as_it_runs_locally() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let images: BTreeMap<&str, String> =
        [("podkit", podkit()), ("busybox", tools()), ("memcached", memcached_image())].into_iter().collect();
    // (example, what its main container shows) — as the local test expects of `podkit pod run`.
    let expected = [
        ("run", "app is serving"),
        ("elect", "\"is_leader\":true"),
        ("ambassador", "visits: 3"),
        ("logs", ""),
        ("adapter", "memcached_current_items 3"),
        ("scatter", "top: [{\"shard\":2,\"score\":20},{\"shard\":1,\"score\":10}]"),
        ("sync", "serving: <h1>version 1</h1>"),
        ("queue", ""),
    ];
    for (name, shows) in expected {
        let text = std::fs::read_to_string(root.join(format!("examples/rendered/{name}.yaml"))).unwrap();
        let manifest: Value = serde_saphyr::from_str(&text).unwrap();
        let net = Network::new(true);
        let (pod, mains) = run_rendered(&net, &manifest, &images);
        let main = pod.containers.iter().find(|c| mains.contains(&c.name)).unwrap();
        match name {
            // A Job: the worker drains the queue and exits 0.
            "queue" => assert_eq!(main.wait(), 0, "queue: {}", main.logs()),
            // The log saver ships the app's lines (to its stdout).
            "logs" => {
                let saver = pod.containers.iter().find(|c| c.name.starts_with("log-saver")).unwrap();
                assert_eventually!(saver.logs().contains("\"line\":\"request 3 served\""), "logs: {}", saver.logs());
            }
            _ => assert_eventually!(
                timeout = Duration::from_secs(20),
                main.logs().contains(shows),
                "{name}: {}",
                main.logs()
            ),
        }
        // The app's status is the pod's: a stop ends it cleanly.
        let _ = docker_output(&["stop", "-t", "5", &main.name]);
        let _ = docker(&["ps", "-a", "--filter", &format!("name={}", main.name), "--format", "{{.Status}}"]);
    }
}
