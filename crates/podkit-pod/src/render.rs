//! `podkit pod render`: the pod file as Kubernetes will run it. A container whose command is
//! `podkit <pattern> …` gets the podkit image, its admin port on the pod's address (the
//! kubelet probes it there), readiness and liveness probes (and a startup probe for a native
//! sidecar) on that port, and a short preStop sleep so endpoints are updated before it stops.
//! Everything else is written back as it was, and the result reads back into the Kubernetes
//! types with no field lost.

use std::path::Path;

use serde_json::{Value, json};

use crate::spec::Role;

/// Each command's default admin port (as its `--admin` default).
const ADMIN_PORTS: [(&str, u16); 9] = [
    ("run", 9190),
    ("elect", 9191),
    ("ambassador", 9192),
    ("pod", 9193),
    ("queue", 9194),
    ("scatter", 9195),
    ("logs", 9196),
    ("sync", 9197),
    ("adapter", 9198),
];

pub fn render_file(path: &Path, image: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    render(&text, image).map_err(|e| format!("{}: {e}", path.display()))
}

/// Renders a manifest's text.
pub fn render(text: &str, image: &str) -> Result<String, String> {
    // Checked as `podkit pod run` checks it: a file that cannot run locally is not rendered.
    crate::spec::parse(text).map_err(|e| e.to_string())?;
    let mut doc: Value = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    let kind = doc["kind"].as_str().unwrap_or("Pod").to_string();
    let spec = match kind.as_str() {
        "Pod" => doc.pointer_mut("/spec"),
        "CronJob" => doc.pointer_mut("/spec/jobTemplate/spec/template/spec"),
        _ => doc.pointer_mut("/spec/template/spec"),
    }
    .ok_or("no pod spec")?;
    for (list, init_list) in [("initContainers", true), ("containers", false)] {
        if let Some(Value::Array(containers)) = spec.get_mut(list) {
            for c in containers {
                let role = match (init_list, c["restartPolicy"] == "Always") {
                    (true, true) => Role::Sidecar,
                    (true, false) => Role::Init,
                    (false, _) => Role::Main,
                };
                podkit_container(c, image, role);
                volume_variables(c);
            }
        }
    }
    serde_saphyr::to_string(&doc).map_err(|e| e.to_string())
}

/// Locally `$PODKIT_VOLUME_<NAME>` tells a container where a volume is; on a cluster it is
/// the mount path. So that `$(PODKIT_VOLUME_DATA)` means the same in both, each mount gets the
/// variable (unless the container sets it itself).
fn volume_variables(c: &mut Value) {
    let mounts: Vec<(String, String)> = c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| Some((m["name"].as_str()?.to_string(), m["mountPath"].as_str()?.to_string())))
        .collect();
    if mounts.is_empty() {
        return;
    }
    let mut env = c["env"].as_array().cloned().unwrap_or_default();
    for (name, path) in mounts {
        let var = crate::spec::volume_var(&name);
        if !env.iter().any(|e| e["name"] == var.as_str()) {
            env.push(json!({"name": var, "value": path}));
        }
    }
    c["env"] = json!(env);
}

/// Makes a `podkit …` container ready for a cluster; any other container is left alone. A
/// command that serves (`podkit elect`, `podkit queue work`, …) gets its admin port and probes;
/// a one-shot command (`podkit queue push`) or an init container that runs to completion only
/// the image.
fn podkit_container(c: &mut Value, image: &str, role: Role) {
    let Some(command) = c["command"].as_array() else { return };
    let is_podkit = command.first().and_then(Value::as_str).is_some_and(|p| p == "podkit" || p.ends_with("/podkit"));
    if !is_podkit {
        return;
    }
    // The image's entrypoint is /podkit; the rest of the command stays.
    let mut argv: Vec<Value> = command.clone();
    argv[0] = json!("/podkit");
    let args: Vec<Value> = c["args"].as_array().cloned().unwrap_or_default();
    let mut all: Vec<String> = argv.iter().chain(&args).filter_map(|v| v.as_str().map(str::to_string)).collect();
    let pattern = all.get(1).cloned().unwrap_or_default();
    let sub = all.get(2).cloned().unwrap_or_default();
    c["image"] = json!(image);
    let serves = match pattern.as_str() {
        "queue" => matches!(sub.as_str(), "work" | "pipeline"),
        "pod" => sub == "run",
        p => ADMIN_PORTS.iter().any(|(n, _)| *n == p),
    };
    if !serves || role == Role::Init {
        c["command"] = json!(argv);
        return;
    }
    // The program's own arguments (after `--`) are not podkit's.
    let own_end = all.iter().position(|a| a == "--").unwrap_or(all.len());
    // The admin port: as given, or the command's default; bound on the pod's address.
    let default = ADMIN_PORTS.iter().find(|(n, _)| *n == pattern).map_or(9190, |(_, p)| *p);
    let admin_at = all[..own_end].iter().position(|a| a == "--admin");
    let added = admin_at.is_none();
    let port = match admin_at {
        Some(i) if i + 1 < own_end => {
            let port = all[i + 1].rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(default);
            all[i + 1] = format!("0.0.0.0:{port}");
            port
        }
        _ => {
            all.splice(own_end..own_end, ["--admin".to_string(), format!("0.0.0.0:{default}")]);
            default
        }
    };
    // The command keeps its words (two more if --admin was added inside it); the rest stays
    // in args.
    let split = if args.is_empty() {
        all.len()
    } else if added && own_end < argv.len() {
        argv.len() + 2
    } else {
        argv.len().min(all.len())
    };
    c["command"] = json!(all[..split]);
    if all.len() > split {
        c["args"] = json!(all[split..]);
    } else if let Some(m) = c.as_object_mut() {
        m.remove("args");
    }
    let ports = c["ports"].as_array().cloned().unwrap_or_default();
    if !ports.iter().any(|p| p["containerPort"] == port) {
        let mut ports = ports;
        ports.push(json!({"name": "admin", "containerPort": port}));
        c["ports"] = json!(ports);
    }
    let probe =
        |path: &str| json!({"httpGet": {"path": path, "port": port}, "periodSeconds": 10, "failureThreshold": 3});
    if c.get("readinessProbe").is_none() {
        c["readinessProbe"] = probe("/readyz");
    }
    if c.get("livenessProbe").is_none() {
        c["livenessProbe"] = probe("/healthz");
    }
    if role == Role::Sidecar && c.get("startupProbe").is_none() {
        c["startupProbe"] =
            json!({"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 1, "failureThreshold": 30});
    }
    if c.pointer("/lifecycle/preStop").is_none() {
        // Endpoints and load balancers take a moment to stop sending traffic; podkit itself
        // then stops gracefully on SIGTERM.
        c["lifecycle"]["preStop"] = json!({"sleep": {"seconds": 2}});
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, annotations: {podkit.dev/priority.logs: low}}
spec:
  initContainers:
    - name: cache
      restartPolicy: Always
      image: placeholder
      command: [podkit, ambassador, -c, /etc/nutcracker.yml]
    - name: logs
      restartPolicy: Always
      image: placeholder
      command: [podkit]
      args: [logs, --path, "/var/log/app/*.log", --admin, "127.0.0.1:9300"]
  containers:
    - name: app
      image: your-app
      command: [your-server]
      ports: [{containerPort: 8080}]
"#;

    #[test]
    fn podkit_containers_get_the_image_probes_and_a_pre_stop_and_nothing_is_lost() {
        let out = render(POD, "podkit:1.2.3").unwrap();
        let v: Value = serde_saphyr::from_str(&out).unwrap();
        let cache = &v["spec"]["initContainers"][0];
        assert_eq!(cache["image"], "podkit:1.2.3");
        assert_eq!(
            cache["command"],
            json!(["/podkit", "ambassador", "-c", "/etc/nutcracker.yml", "--admin", "0.0.0.0:9192"])
        );
        assert_eq!(cache["readinessProbe"]["httpGet"]["port"], 9192);
        assert_eq!(cache["startupProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(cache["lifecycle"]["preStop"]["sleep"]["seconds"], 2);
        let logs = &v["spec"]["initContainers"][1];
        assert_eq!(logs["command"], json!(["/podkit"]));
        assert_eq!(logs["args"], json!(["logs", "--path", "/var/log/app/*.log", "--admin", "0.0.0.0:9300"]));
        assert_eq!(logs["livenessProbe"]["httpGet"]["port"], 9300);
        // A worker's --admin goes before its program's `--`; a push (one-shot) gets none.
        let worker = render(
            "kind: Pod\nmetadata: {name: q}\nspec:\n  initContainers:\n    - {name: push, image: x, command: [podkit, queue, push, --queue, q, /in]}\n  containers:\n    - {name: w, image: x, command: [podkit, queue, work, --queue, q, --, sh, -c, 'cat']}\n",
            "podkit:1",
        )
        .unwrap();
        let w: Value = serde_saphyr::from_str(&worker).unwrap();
        assert_eq!(
            w["spec"]["initContainers"][0]["command"],
            json!(["/podkit", "queue", "push", "--queue", "q", "/in"])
        );
        assert!(w["spec"]["initContainers"][0].get("readinessProbe").is_none());
        assert_eq!(
            w["spec"]["containers"][0]["command"],
            json!(["/podkit", "queue", "work", "--queue", "q", "--admin", "0.0.0.0:9194", "--", "sh", "-c", "cat"])
        );
        // The app is left as it was.
        assert_eq!(v["spec"]["containers"][0], serde_saphyr::from_str::<Value>(POD).unwrap()["spec"]["containers"][0]);
        assert_eq!(v["metadata"]["annotations"]["podkit.dev/priority.logs"], "low");
        // It reads back into the Kubernetes types with every field, and runs locally.
        let typed: k8s_openapi::api::core::v1::Pod = serde_json::from_value(v.clone()).unwrap();
        let back = serde_json::to_value(&typed).unwrap();
        assert_eq!(strip_nulls(back), strip_nulls(v));
        crate::spec::parse(&out).unwrap();
    }

    fn strip_nulls(v: Value) -> Value {
        match v {
            Value::Object(m) => {
                Value::Object(m.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k, strip_nulls(v))).collect())
            }
            Value::Array(a) => Value::Array(a.into_iter().map(strip_nulls).collect()),
            o => o,
        }
    }
}
