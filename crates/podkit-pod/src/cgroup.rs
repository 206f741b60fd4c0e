//! Each container in a cgroup of its own, where the machine lets podkit make them (root, and a
//! writable cgroup v1 memory hierarchy, or cgroup v2): its memory limit then is the kernel's
//! (an over-limit container is OOM-killed inside its cgroup, as on a node), and its CPU request
//! and limit become shares and a quota. Elsewhere podkit watches memory from /proc instead.
//!
//! The pod's groups are `podkit/POD-PID/CONTAINER` under each controller; groups of a podkit
//! that is gone (killed before it could remove them) are removed by the next one.

use std::path::{Path, PathBuf};

const V1: &str = "/sys/fs/cgroup";

#[derive(Debug)]
pub(crate) struct Cgroups {
    /// The pod's directory under each controller this pod uses.
    pods: Vec<PathBuf>,
    v2: bool,
}

impl Cgroups {
    /// The pod's cgroups, or why there are none.
    pub(crate) fn create(pod: &str) -> Result<Cgroups, String> {
        let leaf = format!("{pod}-{}", std::process::id());
        let v2_root = Path::new(V1);
        if v2_root.join("cgroup.controllers").exists() {
            // cgroup v2: the controllers must be handed down to podkit's groups.
            let controllers = std::fs::read_to_string(v2_root.join("cgroup.controllers")).map_err(|e| e.to_string())?;
            if !controllers.split_whitespace().any(|c| c == "memory") {
                return Err("cgroup v2 without the memory controller".into());
            }
            let base = v2_root.join("podkit");
            sweep(&base);
            std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
            let _ = std::fs::write(v2_root.join("cgroup.subtree_control"), "+memory +cpu");
            std::fs::write(base.join("cgroup.subtree_control"), "+memory +cpu")
                .map_err(|e| format!("{}: {e}", base.display()))?;
            let pod = base.join(&leaf);
            std::fs::create_dir(&pod).map_err(|e| format!("{}: {e}", pod.display()))?;
            std::fs::write(pod.join("cgroup.subtree_control"), "+memory +cpu")
                .map_err(|e| format!("{}: {e}", pod.display()))?;
            return Ok(Cgroups { pods: vec![pod], v2: true });
        }
        let mut pods = Vec::new();
        for controller in ["memory", "cpu"] {
            let root = Path::new(V1).join(controller);
            if !root.join("cgroup.procs").exists() {
                if controller == "memory" {
                    return Err("no cgroup v1 memory hierarchy".into());
                }
                continue;
            }
            let base = root.join("podkit");
            sweep(&base);
            let pod = base.join(&leaf);
            std::fs::create_dir_all(&pod).map_err(|e| format!("{}: {e}", pod.display()))?;
            pods.push(pod);
        }
        Ok(Cgroups { pods, v2: false })
    }

    /// A container's groups, with its limits written: the directories the shim joins.
    pub(crate) fn container(
        &self,
        name: &str,
        memory_limit: Option<u64>,
        cpu_request_m: Option<u64>,
        cpu_limit_m: Option<u64>,
    ) -> Result<Vec<PathBuf>, String> {
        let mut dirs = Vec::new();
        for pod in &self.pods {
            let dir = pod.join(name);
            if !dir.exists() {
                std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            let write = |file: &str, value: String| {
                std::fs::write(dir.join(file), &value)
                    .map_err(|e| format!("{}: {value}: {e}", dir.join(file).display()))
            };
            let is_memory = self.v2 || pod.parent().and_then(Path::parent).is_some_and(|p| p.ends_with("memory"));
            let is_cpu = self.v2 || pod.parent().and_then(Path::parent).is_some_and(|p| p.ends_with("cpu"));
            if is_memory && let Some(limit) = memory_limit {
                write(if self.v2 { "memory.max" } else { "memory.limit_in_bytes" }, limit.to_string())?;
                if self.v2 {
                    // The whole container goes on an OOM kill, as the kubelet sets it.
                    let _ = write("memory.oom.group", "1".into());
                }
            }
            if is_cpu {
                if let Some(req) = cpu_request_m {
                    if self.v2 {
                        // cpu.weight 1..10000, 100 for one core's request.
                        write("cpu.weight", (req / 10).clamp(1, 10_000).to_string())?;
                    } else {
                        write("cpu.shares", (req * 1024 / 1000).max(2).to_string())?;
                    }
                }
                if let Some(lim) = cpu_limit_m {
                    let quota = (lim * 100).max(1000);
                    if self.v2 {
                        write("cpu.max", format!("{quota} 100000"))?;
                    } else {
                        write("cpu.cfs_period_us", "100000".into())?;
                        write("cpu.cfs_quota_us", quota.to_string())?;
                    }
                }
            }
            dirs.push(dir);
        }
        Ok(dirs)
    }

    /// How many times the kernel OOM-killed in a container's memory group.
    pub(crate) fn oom_kills(&self, name: &str) -> u64 {
        let file = if self.v2 { "memory.events" } else { "memory.oom_control" };
        self.pods
            .iter()
            .filter_map(|p| std::fs::read_to_string(p.join(name).join(file)).ok())
            .flat_map(|t| {
                t.lines().filter_map(|l| l.strip_prefix("oom_kill ")?.trim().parse::<u64>().ok()).collect::<Vec<_>>()
            })
            .sum()
    }

    /// Removes the pod's groups (their processes are gone).
    pub(crate) fn remove(&self) {
        for pod in &self.pods {
            if let Ok(entries) = std::fs::read_dir(pod) {
                for e in entries.flatten().filter(|e| e.path().is_dir()) {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
            let _ = std::fs::remove_dir(pod);
        }
    }
}

/// Removes the groups of pods whose podkit is gone (the pid at the end of their name runs no
/// more and they hold no process).
fn sweep(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.rsplit('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(children) = std::fs::read_dir(e.path()) {
            for c in children.flatten().filter(|c| c.path().is_dir()) {
                let _ = std::fs::remove_dir(c.path());
            }
        }
        let _ = std::fs::remove_dir(e.path());
    }
}

/// A CPU quantity in millicores: `500m`, `1`, `0.5`.
pub(crate) fn millicores(q: &str) -> Option<u64> {
    let q = q.trim();
    match q.strip_suffix('m') {
        Some(m) => m.parse().ok(),
        None => q.parse::<f64>().ok().filter(|v| *v >= 0.0).map(|v| (v * 1000.0) as u64),
    }
}
