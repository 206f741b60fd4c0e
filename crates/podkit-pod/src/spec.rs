//! The pod file: a Kubernetes manifest (a v1 Pod, or the pod template of a Deployment, Job, …)
//! read with the Kubernetes types, checked as `kubectl apply` would check it (an unknown field
//! is an error), and turned into what runs locally.
//!
//! Every field is either honoured, or named in a warning (it means something only on a
//! cluster), or an error. podkit-only behaviour is in `podkit.dev/…` annotations, so the same
//! file stays valid for Kubernetes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1 as core;
use serde_json::Value;

/// What `podkit pod` runs: the pod's containers, in their roles, and its settings.
#[derive(Debug, Clone)]
pub struct PodFile {
    pub name: String,
    pub restart_policy: Restart,
    /// terminationGracePeriodSeconds (30 s by default, as Kubernetes).
    pub grace: Duration,
    pub init: Vec<ContainerSpec>,
    /// Native sidecars (init containers with `restartPolicy: Always`), in start order.
    pub sidecars: Vec<ContainerSpec>,
    pub mains: Vec<ContainerSpec>,
    pub volumes: Vec<Volume>,
    /// Fields that mean something only on a cluster, by path.
    pub warnings: Vec<String>,
    /// Memory limit of the whole pod (`podkit.dev/memory-limit`, or the sum of the containers'
    /// limits), in bytes.
    pub memory_limit: Option<u64>,
    /// The first restart's delay (`podkit.dev/restart-backoff`; Kubernetes: 10 s).
    pub restart_backoff: Duration,
    /// The host's memory pressure (`some avg10` of /proc/pressure/memory, in percent) above
    /// which low-priority sidecars stop (`podkit.dev/memory-pressure`).
    pub memory_pressure: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    Always,
    OnFailure,
    Never,
}

impl Restart {
    pub fn as_str(self) -> &'static str {
        match self {
            Restart::Always => "Always",
            Restart::OnFailure => "OnFailure",
            Restart::Never => "Never",
        }
    }
}

/// A container's role in the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Init,
    Sidecar,
    Main,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Init => "init",
            Role::Sidecar => "sidecar",
            Role::Main => "main",
        }
    }
}

/// One container, as a local program.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    pub name: String,
    pub role: Role,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub ports: Vec<u16>,
    pub startup: Option<Probe>,
    pub readiness: Option<Probe>,
    pub liveness: Option<Probe>,
    pub post_start: Option<Handler>,
    pub pre_stop: Option<Handler>,
    /// resources.limits.memory, in bytes.
    pub memory_limit: Option<u64>,
    /// resources.requests.cpu and resources.limits.cpu, in millicores.
    pub cpu_request: Option<u64>,
    pub cpu_limit: Option<u64>,
    /// Volumes mounted: (volume name, mountPath).
    pub mounts: Vec<(String, String)>,
    /// `podkit.dev/priority.NAME: low`: stopped first when the pod's memory runs short.
    pub low_priority: bool,
    /// `podkit.dev/essential.NAME: "true"`: when it exits, the whole pod stops.
    pub essential: bool,
    /// A sidecar's own share of the stop (`podkit.dev/sidecar-grace.NAME`).
    pub stop_grace: Option<Duration>,
    /// The container's spec as written, to tell an edited container from an unchanged one.
    pub fingerprint: String,
}

/// A probe: what it does and its thresholds, with Kubernetes' defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub action: Action,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Exec(Vec<String>),
    Http { port: u16, path: String, scheme: String, headers: Vec<(String, String)> },
    Tcp { port: u16 },
}

/// A lifecycle hook.
#[derive(Debug, Clone, PartialEq)]
pub enum Handler {
    Action(Action),
    Sleep(Duration),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Volume {
    /// A directory of the pod, created and removed with it.
    EmptyDir {
        name: String,
    },
    HostPath {
        name: String,
        path: PathBuf,
    },
}

impl Volume {
    pub fn name(&self) -> &str {
        match self {
            Volume::EmptyDir { name } | Volume::HostPath { name, .. } => name,
        }
    }
}

/// The variable that tells a container where a volume is (`PODKIT_VOLUME_DATA` for `data`).
pub fn volume_var(name: &str) -> String {
    format!("PODKIT_VOLUME_{}", name.to_ascii_uppercase().replace(['-', '.'], "_"))
}

/// Why a pod file cannot run; every message names the field.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct SpecError {
    pub path: String,
    pub message: String,
}

fn err(path: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError { path: path.into(), message: message.into() }
}

impl PodFile {
    pub fn containers(&self) -> impl Iterator<Item = &ContainerSpec> {
        self.init.iter().chain(&self.sidecars).chain(&self.mains)
    }

    pub fn container(&self, name: &str) -> Option<&ContainerSpec> {
        self.containers().find(|c| c.name == name)
    }
}

/// Reads and checks a pod file.
pub fn load(path: &std::path::Path) -> Result<PodFile, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|e| err(path.display().to_string(), e.to_string()))?;
    parse(&text).map_err(|e| SpecError { path: format!("{}: {}", path.display(), e.path), message: e.message })
}

/// Parses a manifest's text (YAML or JSON).
pub fn parse(text: &str) -> Result<PodFile, SpecError> {
    let doc: Value = serde_saphyr::from_str(text).map_err(|e| err("(file)", e.to_string()))?;
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
    // The whole object is checked with its own type, as the API server would check it.
    match kind {
        "Pod" => check_fields::<core::Pod>(&doc)?,
        "Deployment" => check_fields::<k8s_openapi::api::apps::v1::Deployment>(&doc)?,
        "StatefulSet" => check_fields::<k8s_openapi::api::apps::v1::StatefulSet>(&doc)?,
        "DaemonSet" => check_fields::<k8s_openapi::api::apps::v1::DaemonSet>(&doc)?,
        "ReplicaSet" => check_fields::<k8s_openapi::api::apps::v1::ReplicaSet>(&doc)?,
        "Job" => check_fields::<k8s_openapi::api::batch::v1::Job>(&doc)?,
        "CronJob" => check_fields::<k8s_openapi::api::batch::v1::CronJob>(&doc)?,
        "" => {
            return Err(err(
                "kind",
                "missing; expected Pod (or a Deployment, StatefulSet, DaemonSet, ReplicaSet, Job or CronJob)",
            ));
        }
        other => {
            return Err(err(
                "kind",
                format!(
                    "{other:?} has no pod to run; expected Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job or CronJob"
                ),
            ));
        }
    }
    // The pod: its metadata and spec, wherever the kind keeps them.
    let (meta, spec, at) = match kind {
        "Pod" => (doc.get("metadata"), doc.get("spec"), "spec".to_string()),
        "CronJob" => {
            let t = doc.pointer("/spec/jobTemplate/spec/template");
            (
                t.and_then(|t| t.get("metadata")),
                t.and_then(|t| t.get("spec")),
                "spec.jobTemplate.spec.template.spec".into(),
            )
        }
        _ => {
            let t = doc.pointer("/spec/template");
            (t.and_then(|t| t.get("metadata")), t.and_then(|t| t.get("spec")), "spec.template.spec".into())
        }
    };
    let spec: core::PodSpec = serde_json::from_value(spec.cloned().ok_or_else(|| err(&at, "missing"))?)
        .map_err(|e| err(&at, e.to_string()))?;
    let meta: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta = meta
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| err("metadata", e.to_string()))?
        .unwrap_or_default();
    let name =
        doc.pointer("/metadata/name").and_then(Value::as_str).or(meta.name.as_deref()).unwrap_or("pod").to_string();
    build(&name, &meta, &spec, &at, kind)
}

/// Errors for every key of `doc` that the Kubernetes type `T` does not know: the types ignore
/// unknown keys, so the document goes through the type and back, and what did not come back
/// was unknown.
fn check_fields<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value) -> Result<(), SpecError> {
    let typed: T =
        serde_path_to_error::deserialize(doc.clone()).map_err(|e| err(e.path().to_string(), e.inner().to_string()))?;
    let back = serde_json::to_value(&typed).map_err(|e| err("(object)", e.to_string()))?;
    let mut unknown = Vec::new();
    missing_in(doc, &back, String::new(), &mut unknown);
    match unknown.first() {
        Some(path) => Err(err(path.clone(), "unknown field (as kubectl apply would refuse it)")),
        None => Ok(()),
    }
}

fn missing_in(given: &Value, known: &Value, path: String, out: &mut Vec<String>) {
    match (given, known) {
        (Value::Object(g), Value::Object(k)) => {
            for (key, v) in g {
                let p = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                match k.get(key) {
                    Some(kv) => missing_in(v, kv, p, out),
                    // A null or empty value the types leave out is not an unknown field.
                    None if v.is_null() || v == &Value::Object(Default::default()) && key_known_empty(key) => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(g), Value::Array(k)) => {
            for (i, (gv, kv)) in g.iter().zip(k).enumerate() {
                missing_in(gv, kv, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Keys whose `{}` value the Kubernetes types may drop on the way back.
fn key_known_empty(key: &str) -> bool {
    matches!(key, "metadata" | "annotations" | "labels" | "resources" | "securityContext" | "limits" | "requests")
}

const ANNOTATION: &str = "podkit.dev/";

fn build(
    name: &str,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    spec: &core::PodSpec,
    at: &str,
    kind: &str,
) -> Result<PodFile, SpecError> {
    let mut warnings = Vec::new();
    let annotations: BTreeMap<String, String> = meta.annotations.clone().unwrap_or_default();
    let restart_policy = match spec.restart_policy.as_deref() {
        None if matches!(kind, "Job" | "CronJob") => {
            return Err(err(format!("{at}.restartPolicy"), "a Job's pod needs restartPolicy: Never or OnFailure"));
        }
        None | Some("Always") => Restart::Always,
        Some("OnFailure") => Restart::OnFailure,
        Some("Never") => Restart::Never,
        Some(o) => {
            return Err(err(format!("{at}.restartPolicy"), format!("{o:?}: expected Always, OnFailure or Never")));
        }
    };
    let grace = Duration::from_secs(spec.termination_grace_period_seconds.map_or(30, |s| s.max(0) as u64));
    // Fields of the pod that only a cluster gives meaning to.
    let pod_value = serde_json::to_value(spec).unwrap_or_default();
    const HONOURED: [&str; 6] = [
        "containers",
        "initContainers",
        "restartPolicy",
        "terminationGracePeriodSeconds",
        "volumes",
        "enableServiceLinks",
    ];
    if let Value::Object(m) = &pod_value {
        for key in m.keys().filter(|k| !HONOURED.contains(&k.as_str())) {
            warnings.push(format!("{at}.{key}: not honoured locally (it applies on a cluster)"));
        }
    }
    let volumes = volumes(spec, at, &mut warnings)?;
    let volume_names: BTreeSet<&str> = volumes.iter().map(Volume::name).collect();
    let mut names = BTreeSet::new();
    let mut ports: BTreeMap<u16, String> = BTreeMap::new();
    let mut init = Vec::new();
    let mut sidecars = Vec::new();
    let mut mains = Vec::new();
    let mut defined: Vec<(String, &core::Container, usize, bool)> = Vec::new();
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        defined.push((format!("{at}.initContainers[{i}]"), c, i, true));
    }
    if spec.containers.is_empty() {
        return Err(err(format!("{at}.containers"), "a pod needs at least one container"));
    }
    for (i, c) in spec.containers.iter().enumerate() {
        defined.push((format!("{at}.containers[{i}]"), c, i, false));
    }
    for (path, c, _, is_init) in defined {
        if !names.insert(c.name.clone()) {
            return Err(err(
                format!("{path}.name"),
                format!("{:?} is the name of another container; names must differ", c.name),
            ));
        }
        let role = match (is_init, c.restart_policy.as_deref()) {
            (true, Some("Always")) => Role::Sidecar,
            (true, None) => Role::Init,
            (true, Some(o)) => {
                return Err(err(
                    format!("{path}.restartPolicy"),
                    format!("{o:?}: an init container takes only Always (a native sidecar)"),
                ));
            }
            (false, None) => Role::Main,
            (false, Some(_)) => {
                return Err(err(
                    format!("{path}.restartPolicy"),
                    "only init containers take a restartPolicy (Always makes a native sidecar)",
                ));
            }
        };
        let mut spec = container(c, &path, role, &annotations, &volume_names, &mut warnings)?;
        for (_, v) in spec.env.iter_mut().filter(|(_, v)| v == "{pod}") {
            *v = name.to_string();
        }
        for p in &spec.ports {
            if let Some(other) = ports.insert(*p, c.name.clone()) {
                return Err(err(
                    format!("{path}.ports"),
                    format!("port {p} is also {other}'s; the pod shares one localhost"),
                ));
            }
        }
        match role {
            Role::Init => init.push(spec),
            Role::Sidecar => sidecars.push(spec),
            Role::Main => mains.push(spec),
        }
    }
    // podkit.dev annotations must name containers that exist.
    for key in annotations.keys().filter_map(|k| k.strip_prefix(ANNOTATION)) {
        let (what, target) = key.split_once('.').unwrap_or((key, ""));
        match what {
            "priority" | "essential" | "sidecar-grace" if !target.is_empty() && !names.contains(target) => {
                return Err(err(
                    format!("metadata.annotations.{ANNOTATION}{key}"),
                    format!("no container is named {target:?}"),
                ));
            }
            "priority" | "essential" | "sidecar-grace" | "memory-limit" | "memory-pressure" | "restart-backoff" => {}
            _ => {
                return Err(err(
                    format!("metadata.annotations.{ANNOTATION}{key}"),
                    "unknown podkit annotation; expected priority.NAME, essential.NAME, sidecar-grace[.NAME], memory-limit, restart-backoff",
                ));
            }
        }
    }
    let memory_limit = match annotations.get(&format!("{ANNOTATION}memory-limit")) {
        Some(v) => Some(quantity_bytes(v).ok_or_else(|| {
            err(
                format!("metadata.annotations.{ANNOTATION}memory-limit"),
                format!("{v:?}: expected a quantity such as 512Mi"),
            )
        })?),
        None => {
            let all: Vec<Option<u64>> = sidecars.iter().chain(&mains).map(|c| c.memory_limit).collect();
            (!all.is_empty() && all.iter().all(Option::is_some)).then(|| all.iter().flatten().sum())
        }
    };
    let restart_backoff = match annotations.get(&format!("{ANNOTATION}restart-backoff")) {
        Some(v) => podkit_core::Duration::parse_positive(v)
            .map_err(|e| err(format!("metadata.annotations.{ANNOTATION}restart-backoff"), e))?
            .get(),
        None => Duration::from_secs(10),
    };
    let memory_pressure = match annotations.get(&format!("{ANNOTATION}memory-pressure")) {
        Some(v) => Some(v.trim_end_matches('%').parse::<f64>().ok().filter(|p| (0.0..=100.0).contains(p)).ok_or_else(
            || {
                err(
                    format!("metadata.annotations.{ANNOTATION}memory-pressure"),
                    format!("{v:?}: expected a percentage such as 20"),
                )
            },
        )?),
        None => None,
    };
    Ok(PodFile {
        name: name.to_string(),
        restart_policy,
        grace,
        init,
        sidecars,
        mains,
        volumes,
        warnings,
        memory_limit,
        restart_backoff,
        memory_pressure,
    })
}

fn volumes(spec: &core::PodSpec, at: &str, warnings: &mut Vec<String>) -> Result<Vec<Volume>, SpecError> {
    let mut out = Vec::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let path = format!("{at}.volumes[{i}]");
        if out.iter().any(|o: &Volume| o.name() == v.name) {
            return Err(err(format!("{path}.name"), format!("{:?} is the name of another volume", v.name)));
        }
        if v.empty_dir.is_some() {
            if v.empty_dir.as_ref().is_some_and(|e| e.medium.is_some() || e.size_limit.is_some()) {
                warnings.push(format!("{path}.emptyDir: medium and sizeLimit are not honoured locally"));
            }
            out.push(Volume::EmptyDir { name: v.name.clone() });
        } else if let Some(h) = &v.host_path {
            out.push(Volume::HostPath { name: v.name.clone(), path: PathBuf::from(&h.path) });
        } else {
            return Err(err(path, "only emptyDir and hostPath volumes run locally"));
        }
    }
    Ok(out)
}

fn container(
    c: &core::Container,
    path: &str,
    role: Role,
    annotations: &BTreeMap<String, String>,
    volumes: &BTreeSet<&str>,
    warnings: &mut Vec<String>,
) -> Result<ContainerSpec, SpecError> {
    let mut argv: Vec<String> = c.command.clone().unwrap_or_default();
    if argv.is_empty() {
        return Err(err(
            format!("{path}.command"),
            "missing: locally a container is a program, run as command + args (the image's entrypoint is not known here)",
        ));
    }
    argv.extend(c.args.clone().unwrap_or_default());
    let mut env = Vec::new();
    for (i, e) in c.env.iter().flatten().enumerate() {
        let at = format!("{path}.env[{i}]");
        match (&e.value, &e.value_from) {
            (Some(v), None) => env.push((e.name.clone(), v.clone())),
            (None, None) => env.push((e.name.clone(), String::new())),
            (None, Some(from)) => match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                Some("metadata.name") => env.push((e.name.clone(), "{pod}".into())),
                Some("metadata.namespace") => env.push((e.name.clone(), "default".into())),
                Some("status.podIP" | "status.hostIP") => env.push((e.name.clone(), "127.0.0.1".into())),
                _ => warnings.push(format!("{at}.valueFrom: not available locally; {} is not set", e.name)),
            },
            (Some(_), Some(_)) => return Err(err(at, "give value or valueFrom, not both")),
        }
    }
    for (i, _) in c.env_from.iter().flatten().enumerate() {
        warnings.push(format!("{path}.envFrom[{i}]: ConfigMaps and Secrets are not available locally"));
    }
    let mut ports = Vec::new();
    for (i, p) in c.ports.iter().flatten().enumerate() {
        let port = u16::try_from(p.container_port).map_err(|_| {
            err(format!("{path}.ports[{i}].containerPort"), format!("{} is not a port", p.container_port))
        })?;
        ports.push(port);
    }
    let port_by_name = |name: &str| -> Option<u16> {
        c.ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok())
    };
    let probe = |p: &Option<core::Probe>, which: &str| -> Result<Option<Probe>, SpecError> {
        p.as_ref().map(|p| probe(p, &format!("{path}.{which}"), &port_by_name)).transpose()
    };
    let startup = probe(&c.startup_probe, "startupProbe")?;
    let readiness = probe(&c.readiness_probe, "readinessProbe")?;
    let liveness = probe(&c.liveness_probe, "livenessProbe")?;
    if role == Role::Init && (startup.is_some() || readiness.is_some() || liveness.is_some()) {
        return Err(err(
            path.to_string(),
            "an init container that runs to completion takes no probes (a native sidecar, restartPolicy: Always, does)",
        ));
    }
    let lifecycle = c.lifecycle.as_ref();
    let handler = |h: Option<&core::LifecycleHandler>, which: &str| -> Result<Option<Handler>, SpecError> {
        let Some(h) = h else { return Ok(None) };
        let at = format!("{path}.lifecycle.{which}");
        if let Some(s) = &h.sleep {
            return Ok(Some(Handler::Sleep(Duration::from_secs(s.seconds.max(0) as u64))));
        }
        action(h.exec.as_ref(), h.http_get.as_ref(), h.tcp_socket.as_ref(), &at, &port_by_name)
            .map(|a| Some(Handler::Action(a)))
    };
    let post_start = handler(lifecycle.and_then(|l| l.post_start.as_ref()), "postStart")?;
    let pre_stop = handler(lifecycle.and_then(|l| l.pre_stop.as_ref()), "preStop")?;
    let memory_limit = c
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
        .map(|q| {
            quantity_bytes(&q.0)
                .ok_or_else(|| err(format!("{path}.resources.limits.memory"), format!("{:?}: not a quantity", q.0)))
        })
        .transpose()?;
    let cpu = |which: &str, m: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>| {
        m.and_then(|m| m.get("cpu"))
            .map(|q| {
                crate::cgroup::millicores(&q.0).ok_or_else(|| {
                    err(
                        format!("{path}.resources.{which}.cpu"),
                        format!("{:?}: not a CPU quantity such as 500m or 1", q.0),
                    )
                })
            })
            .transpose()
    };
    let cpu_request = cpu("requests", c.resources.as_ref().and_then(|r| r.requests.as_ref()))?;
    let cpu_limit = cpu("limits", c.resources.as_ref().and_then(|r| r.limits.as_ref()))?;
    let mut mounts = Vec::new();
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        if !volumes.contains(m.name.as_str()) {
            return Err(err(format!("{path}.volumeMounts[{i}].name"), format!("no volume is named {:?}", m.name)));
        }
        mounts.push((m.name.clone(), m.mount_path.clone()));
    }
    // Fields of the container that only a cluster gives meaning to.
    const HONOURED: [&str; 15] = [
        "name",
        "image",
        "command",
        "args",
        "env",
        "envFrom",
        "workingDir",
        "ports",
        "startupProbe",
        "readinessProbe",
        "livenessProbe",
        "lifecycle",
        "resources",
        "volumeMounts",
        "restartPolicy",
    ];
    if let Value::Object(m) = serde_json::to_value(c).unwrap_or_default() {
        for key in m.keys().filter(|k| !HONOURED.contains(&k.as_str())) {
            warnings.push(format!("{path}.{key}: not honoured locally (it applies on a cluster)"));
        }
    }
    let ann = |what: &str| annotations.get(&format!("{ANNOTATION}{what}.{}", c.name));
    let low_priority = match ann("priority").map(String::as_str) {
        None | Some("normal") => false,
        Some("low") => true,
        Some(o) => {
            return Err(err(
                format!("metadata.annotations.{ANNOTATION}priority.{}", c.name),
                format!("{o:?}: expected low or normal"),
            ));
        }
    };
    if low_priority && role != Role::Sidecar {
        return Err(err(
            format!("metadata.annotations.{ANNOTATION}priority.{}", c.name),
            "only a sidecar can have a low priority: the main containers are never stopped for a sidecar",
        ));
    }
    let essential = match ann("essential").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(o) => {
            return Err(err(
                format!("metadata.annotations.{ANNOTATION}essential.{}", c.name),
                format!("{o:?}: expected \"true\" or \"false\""),
            ));
        }
    };
    let stop_grace = ann("sidecar-grace")
        .or_else(|| (role == Role::Sidecar).then(|| annotations.get(&format!("{ANNOTATION}sidecar-grace"))).flatten())
        .map(|v| {
            podkit_core::Duration::parse_positive(v)
                .map(|d| d.get())
                .map_err(|e| err(format!("metadata.annotations.{ANNOTATION}sidecar-grace"), e))
        })
        .transpose()?;
    Ok(ContainerSpec {
        name: c.name.clone(),
        role,
        argv,
        env,
        cwd: c.working_dir.as_ref().map(PathBuf::from),
        ports,
        startup,
        readiness,
        liveness,
        post_start,
        pre_stop,
        memory_limit,
        cpu_request,
        cpu_limit,
        mounts,
        low_priority,
        essential,
        stop_grace,
        fingerprint: format!(
            "{}|{:?}|{:?}|{:?}",
            serde_json::to_string(c).unwrap_or_default(),
            low_priority,
            essential,
            stop_grace
        ),
    })
}

fn probe(p: &core::Probe, at: &str, port_by_name: &dyn Fn(&str) -> Option<u16>) -> Result<Probe, SpecError> {
    let action = action(p.exec.as_ref(), p.http_get.as_ref(), p.tcp_socket.as_ref(), at, port_by_name)?;
    if p.grpc.is_some() {
        return Err(err(format!("{at}.grpc"), "gRPC probes are not supported locally; use httpGet, tcpSocket or exec"));
    }
    let secs = |v: Option<i32>, default: u64| Duration::from_secs(v.map_or(default, |s| s.max(0) as u64));
    Ok(Probe {
        action,
        initial_delay: secs(p.initial_delay_seconds, 0),
        period: secs(p.period_seconds, 10).max(Duration::from_millis(100)),
        timeout: secs(p.timeout_seconds, 1).max(Duration::from_millis(100)),
        success_threshold: p.success_threshold.map_or(1, |v| v.max(1) as u32),
        failure_threshold: p.failure_threshold.map_or(3, |v| v.max(1) as u32),
    })
}

fn action(
    exec: Option<&core::ExecAction>,
    http: Option<&core::HTTPGetAction>,
    tcp: Option<&core::TCPSocketAction>,
    at: &str,
    port_by_name: &dyn Fn(&str) -> Option<u16>,
) -> Result<Action, SpecError> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let port = |p: &IntOrString, field: &str| -> Result<u16, SpecError> {
        match p {
            IntOrString::Int(i) => {
                u16::try_from(*i).map_err(|_| err(format!("{at}.{field}.port"), format!("{i} is not a port")))
            }
            IntOrString::String(name) => port_by_name(name).ok_or_else(|| {
                err(format!("{at}.{field}.port"), format!("no port of the container is named {name:?}"))
            }),
        }
    };
    match (exec, http, tcp) {
        (Some(e), None, None) => {
            let argv = e.command.clone().unwrap_or_default();
            if argv.is_empty() {
                return Err(err(format!("{at}.exec.command"), "missing"));
            }
            Ok(Action::Exec(argv))
        }
        (None, Some(h), None) => {
            if h.host.as_deref().is_some_and(|h| !matches!(h, "127.0.0.1" | "localhost")) {
                return Err(err(format!("{at}.httpGet.host"), "a local probe asks the pod's localhost"));
            }
            Ok(Action::Http {
                port: port(&h.port, "httpGet")?,
                path: h.path.clone().unwrap_or_else(|| "/".into()),
                scheme: h.scheme.clone().unwrap_or_else(|| "HTTP".into()).to_ascii_lowercase(),
                headers: h.http_headers.iter().flatten().map(|h| (h.name.clone(), h.value.clone())).collect(),
            })
        }
        (None, None, Some(t)) => Ok(Action::Tcp { port: port(&t.port, "tcpSocket")? }),
        (None, None, None) => Err(err(at, "give one of exec, httpGet or tcpSocket")),
        _ => Err(err(at, "give only one of exec, httpGet or tcpSocket")),
    }
}

/// A Kubernetes quantity of bytes: `512Mi`, `1G`, `1048576`, `1.5Gi`.
pub fn quantity_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(q.len());
    let (num, unit) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match unit {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "m" => 1e-3,
        _ => return None,
    };
    (n >= 0.0).then_some((n * mult) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web
  annotations:
    podkit.dev/priority.logs: low
    podkit.dev/essential.app: "true"
    podkit.dev/sidecar-grace.proxy: 5s
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 20
  nodeSelector: {disk: ssd}
  volumes:
    - {name: data, emptyDir: {}}
  initContainers:
    - name: migrate
      image: app
      command: [sh, -c, "echo migrated"]
    - name: proxy
      image: podkit
      restartPolicy: Always
      command: [podkit, ambassador]
      args: [-c, nutcracker.yml]
      ports: [{containerPort: 22121, name: memcache}]
      startupProbe: {tcpSocket: {port: memcache}, periodSeconds: 1}
    - name: logs
      image: podkit
      restartPolicy: Always
      command: [podkit, logs]
      resources: {limits: {memory: 64Mi}}
  containers:
    - name: app
      image: app
      command: [sh, -c]
      args: ["echo hello"]
      env:
        - {name: A, value: "1"}
        - {name: POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
      volumeMounts: [{name: data, mountPath: /data}]
      readinessProbe: {httpGet: {path: /ready, port: 8080}, failureThreshold: 1}
      lifecycle: {preStop: {exec: {command: [sh, -c, "echo bye"]}}}
      securityContext: {runAsUser: 1000}
"#;

    #[test]
    fn a_pod_becomes_containers_in_their_roles() {
        let p = parse(POD).unwrap();
        assert_eq!(p.name, "web");
        assert_eq!(p.restart_policy, Restart::Never);
        assert_eq!(p.grace, Duration::from_secs(20));
        assert_eq!(p.init.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["migrate"]);
        assert_eq!(p.sidecars.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["proxy", "logs"]);
        let app = p.container("app").unwrap();
        assert_eq!(app.argv, ["sh", "-c", "echo hello"]);
        assert_eq!(app.env, [("A".into(), "1".into()), ("POD".into(), "web".into())]);
        assert!(app.essential);
        assert_eq!(app.readiness.as_ref().unwrap().failure_threshold, 1);
        assert_eq!(app.readiness.as_ref().unwrap().period, Duration::from_secs(10));
        assert!(matches!(app.pre_stop, Some(Handler::Action(Action::Exec(_)))));
        let proxy = p.container("proxy").unwrap();
        assert_eq!(proxy.startup.as_ref().unwrap().action, Action::Tcp { port: 22121 });
        assert_eq!(proxy.stop_grace, Some(Duration::from_secs(5)));
        let logs = p.container("logs").unwrap();
        assert!(logs.low_priority);
        assert_eq!(logs.memory_limit, Some(64 << 20));
        for w in ["spec.nodeSelector", "spec.containers[0].securityContext"] {
            assert!(p.warnings.iter().any(|x| x.starts_with(w)), "{w} not warned: {:?}", p.warnings);
        }
        assert_eq!(volume_var("my-data"), "PODKIT_VOLUME_MY_DATA");
    }

    #[test]
    fn bad_pod_files_name_the_field() {
        for (from, to, says) in [
            (
                "      image: app\n      command: [sh, -c]",
                "      image: app\n      comand: [sh, -c]",
                "spec.containers[0].comand: unknown field",
            ),
            ("    - name: logs\n", "    - name: proxy\n", "is the name of another container"),
            (
                "      resources: {limits: {memory: 64Mi}}",
                "      resources: {limits: {memory: 64Mi}}\n      ports: [{containerPort: 22121}]",
                "port 22121 is also proxy's",
            ),
            (
                "      command: [sh, -c, \"echo migrated\"]",
                "      command: [sh, -c, \"echo migrated\"]\n      readinessProbe: {tcpSocket: {port: 1}}",
                "takes no probes",
            ),
            ("      command: [podkit, logs]\n", "", "spec.initContainers[2].command: missing"),
            ("podkit.dev/priority.logs: low", "podkit.dev/priority.nope: low", "no container is named \"nope\""),
            ("podkit.dev/priority.logs: low", "podkit.dev/priority.app: low", "only a sidecar"),
            ("restartPolicy: Never", "restartPolicy: Sometimes", "expected Always, OnFailure or Never"),
            ("{name: data, mountPath: /data}", "{name: other, mountPath: /data}", "no volume is named \"other\""),
            (
                "podkit.dev/priority.logs: low",
                "podkit.dev/priority.logs: low\n    podkit.dev/memory-pressure: lots",
                "expected a percentage",
            ),
        ] {
            assert!(POD.contains(from), "{from}");
            let e = parse(&POD.replacen(from, to, 1)).unwrap_err().to_string();
            assert!(e.contains(says), "{says}: {e}");
        }
        assert!(parse("kind: Service\n").unwrap_err().to_string().contains("has no pod to run"));
        let e = parse(&POD.replacen("terminationGracePeriodSeconds: 20", "terminationGracePeriodSeconds: soon", 1))
            .unwrap_err();
        assert!(e.to_string().starts_with("spec.terminationGracePeriodSeconds: invalid type"), "{e}");
    }

    #[test]
    fn a_deployments_or_jobs_template_is_the_pod() {
        let d = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  replicas: 3\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec:\n      containers: [{name: c, image: x, command: [\"true\"]}]\n";
        let p = parse(d).unwrap();
        assert_eq!(p.mains[0].name, "c");
        let j = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\nspec:\n  template:\n    spec:\n      restartPolicy: OnFailure\n      containers: [{name: c, image: x, command: [\"true\"]}]\n";
        assert_eq!(parse(j).unwrap().restart_policy, Restart::OnFailure);
        assert!(
            parse(&j.replace("      restartPolicy: OnFailure\n", ""))
                .unwrap_err()
                .to_string()
                .contains("Never or OnFailure")
        );
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity_bytes("512Mi"), Some(512 << 20));
        assert_eq!(quantity_bytes("1G"), Some(1_000_000_000));
        assert_eq!(quantity_bytes("1048576"), Some(1 << 20));
        assert_eq!(quantity_bytes("lots"), None);
    }
}
