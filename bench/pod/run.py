#!/usr/bin/env python3
"""podkit pod: time to ready, the supervisor's idle footprint, and a Job's end.

    bench/pod/run.py [--podkit target/release/podkit] [--runs 5]

A pod of one app and three podkit sidecars (elect, logs, adapter over a memcached-less pod: its
own admin /metrics), each sidecar gated by a startup probe on its admin port:
- time from `podkit pod run` to the pod answering ready on /pod (median and worst of --runs);
- the supervisor's own RSS (VmRSS, RssAnon) and CPU over 10 s idle once ready;
- a Job (restartPolicy: Never) whose main exits at once beside the same three sidecars: time from
  the main's exit (it writes the time just before) to `podkit pod run` exiting.
Prints Markdown.
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time, urllib.request

CLK = os.sysconf("SC_CLK_TCK")

POD = """apiVersion: v1
kind: Pod
metadata: {{name: bench}}
spec:
  restartPolicy: {policy}
  volumes: [{{name: data, emptyDir: {{}}}}]
  initContainers:
    - name: elect
      image: podkit
      restartPolicy: Always
      command: [podkit, elect, --backend, "file://$(PODKIT_VOLUME_DATA)/leases", --log-level, warn]
      volumeMounts: [{{name: data, mountPath: /data}}]
      startupProbe: {{httpGet: {{path: /healthz, port: 9191}}, periodSeconds: 1}}
    - name: logs
      image: podkit
      restartPolicy: Always
      command: [podkit, logs, --path, "$(PODKIT_VOLUME_DATA)/app.log", --sink, "file://$(PODKIT_VOLUME_DATA)/saved", --state-dir, "$(PODKIT_VOLUME_DATA)/state", --log-level, warn]
      volumeMounts: [{{name: data, mountPath: /data}}]
      startupProbe: {{httpGet: {{path: /healthz, port: 9196}}, periodSeconds: 1}}
    - name: adapter
      image: podkit
      restartPolicy: Always
      command: [podkit, adapter, --prometheus, "http://127.0.0.1:9191/metrics", --listen, "127.0.0.1:9199", --log-level, warn]
      startupProbe: {{httpGet: {{path: /healthz, port: 9198}}, periodSeconds: 1}}
  containers:
    - name: app
      image: app
      command: [sh, -c, "{app}"]
"""


def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / CLK


def status(key, pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def pod_ready(admin):
    try:
        with urllib.request.urlopen(f"http://{admin}/pod", timeout=1) as r:
            return json.load(r).get("ready") is True
    except OSError:
        return False


def start(podkit, file, tmp):
    addr_file = os.path.join(tmp, "admin")
    if os.path.exists(addr_file):
        os.remove(addr_file)
    env = dict(os.environ, PATH=os.path.dirname(os.path.abspath(podkit)) + ":" + os.environ["PATH"])
    p = subprocess.Popen([podkit, "pod", "run", file, "--admin", "127.0.0.1:0", "--admin-addr-file", addr_file,
                          "--log-level", "warn"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    while not os.path.exists(addr_file):
        time.sleep(0.005)
    return p, open(addr_file).read().strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--podkit", default="target/release/podkit")
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp()
    serve = os.path.join(tmp, "serve.yaml")
    open(serve, "w").write(POD.format(policy="Always", app="exec sleep 1000"))
    ready = []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        p, admin = start(a.podkit, serve, tmp)
        while not pod_ready(admin):
            time.sleep(0.005)
        ready.append(time.perf_counter() - t0)
        last = (p, admin)
        if len(ready) < a.runs:
            p.terminate()
            p.wait()
    p, admin = last
    time.sleep(1)
    c0, rss, anon = cpu(p.pid), status("VmRSS", p.pid), status("RssAnon", p.pid)
    time.sleep(10)
    idle_cpu = (cpu(p.pid) - c0) / 10
    p.terminate()
    p.wait()

    job = os.path.join(tmp, "job.yaml")
    mark = os.path.join(tmp, "exited")
    open(job, "w").write(POD.format(policy="Never", app=f"date +%s.%N > {mark}; exit 0"))
    ends = []
    for _ in range(a.runs):
        if os.path.exists(mark):
            os.remove(mark)
        p, admin = start(a.podkit, job, tmp)
        p.wait()
        ends.append(time.time() - float(open(mark).read()))
    print(f"A pod of one app and three podkit sidecars (elect, logs, adapter), each gated by a startup probe; {a.runs} runs.\n")
    print("| figure | value |")
    print("|---|---|")
    print(f"| `podkit pod run` to ready, median | {statistics.median(ready) * 1000:.0f} ms |")
    print(f"| the same, worst | {max(ready) * 1000:.0f} ms |")
    print(f"| supervisor's RSS idle (VmRSS / RssAnon) | {rss:.1f} MiB / {anon:.1f} MiB |")
    print(f"| supervisor's CPU idle | {idle_cpu * 100:.2f} % of a core |")
    print(f"| Job: main's exit to `podkit pod run`'s exit, median (three sidecars stopped) | {statistics.median(ends) * 1000:.0f} ms |")
    print(f"| the same, worst | {max(ends) * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
