#!/usr/bin/env python3
"""Leader failover: podkit elect (etcd and lease-file backends) against `etcdctl elect` and
`etcdctl lock --ttl`, side by side on one fresh etcd, after SIGTERM and after kill -9.

    bench/elect/run.py [--podkit target/release/podkit] [--trials 10] [--ttl 2] [--elect-kill-trials 3]

Prints a Markdown table of medians (and min/max) in milliseconds: the time from the signal to
the moment a standby reports (podkit: its API says is_leader; etcdctl: it prints that it won).
`etcdctl elect` has no TTL option (its session lasts 60 s), so its kill -9 row takes about a
minute per trial; --elect-kill-trials bounds how many run.
"""
import argparse, json, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, threading, time, urllib.request

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def wait_until(cond, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.002)
    raise RuntimeError(f"timed out waiting for {what}")

class Etcd:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="bench-etcd-")
        self.port, peer = free_port(), free_port()
        c, p = f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{peer}"
        self.proc = subprocess.Popen(["etcd", "--name", "b", "--data-dir", f"{self.dir}/d",
            "--listen-client-urls", c, "--advertise-client-urls", c, "--listen-peer-urls", p,
            "--initial-advertise-peer-urls", p, "--initial-cluster", f"b={p}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        def healthy():
            try:
                return b'"health":"true"' in urllib.request.urlopen(f"{c}/health", timeout=0.5).read()
            except Exception:
                return False
        wait_until(healthy, 30, "etcd")
    def stop(self):
        self.proc.kill(); self.proc.wait(); shutil.rmtree(self.dir, ignore_errors=True)

def get(addr, path):
    try:
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=0.5) as r:
            return json.loads(r.read())
    except Exception:
        return None

def podkit_trial(podkit, backend, ttl, sig):
    d = tempfile.mkdtemp(prefix="bench-elect-")
    procs, addrs = [], []
    for i in range(2):
        af = f"{d}/api{i}"
        procs.append(subprocess.Popen([podkit, "elect", "--id", f"r{i}", "--backend", backend, "--ttl", f"{ttl}s",
            "--listen", "127.0.0.1:0", "--listen-addr-file", af, "--admin", "127.0.0.1:0", "--log-level", "warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_until(lambda: os.path.exists(af) and open(af).read().strip(), 20, "sidecar")
        addrs.append(open(af).read().strip())
    status = lambda i: get(addrs[i], "/v1/elections/default") or {}
    wait_until(lambda: sum(1 for i in range(2) if status(i).get("is_leader")) == 1, 30, "a leader")
    leader = 0 if status(0).get("is_leader") else 1
    other = 1 - leader
    t0 = time.monotonic()
    procs[leader].send_signal(sig)
    wait_until(lambda: status(other).get("is_leader"), 120, "failover")
    took = time.monotonic() - t0
    for p in procs:
        p.kill(); p.wait()
    shutil.rmtree(d, ignore_errors=True)
    return took

def etcdctl_trial(endpoint, argv, sig):
    """Two etcdctl processes contend; time from signalling the winner to the other's output."""
    env = dict(os.environ, ETCDCTL_API="3")
    name = f"bench-{time.monotonic_ns()}"
    won = [threading.Event(), threading.Event()]
    procs = []
    for i in range(2):
        p = subprocess.Popen(["etcdctl", f"--endpoints={endpoint}"] + argv(name, i), env=env,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        def read(p=p, ev=won[i]):
            for _ in p.stdout:
                ev.set()
        threading.Thread(target=read, daemon=True).start()
        procs.append(p)
        if i == 0:
            wait_until(won[0].is_set, 20, "first etcdctl to win")
    t0 = time.monotonic()
    procs[0].send_signal(sig)
    wait_until(won[1].is_set, 120, "etcdctl failover")
    took = time.monotonic() - t0
    for p in procs:
        p.kill(); p.wait()
    return took

def summary(xs):
    ms = [x * 1000 for x in xs]
    return f"{statistics.median(ms):.0f} | {min(ms):.0f}–{max(ms):.0f} | {len(ms)}"

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--podkit", default="target/release/podkit")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--ttl", type=int, default=2)
    ap.add_argument("--elect-kill-trials", type=int, default=3)
    a = ap.parse_args()
    podkit = os.path.abspath(a.podkit)
    etcd = Etcd()
    endpoint = f"127.0.0.1:{etcd.port}"
    rows = []
    try:
        for label, sig in [("SIGTERM", signal.SIGTERM), ("kill -9", signal.SIGKILL)]:
            xs = [podkit_trial(podkit, f"etcd://{endpoint}/bench{n}", a.ttl, sig) for n in range(a.trials)]
            rows.append((f"podkit elect, etcd, ttl {a.ttl}s", label, summary(xs)))
            leases = tempfile.mkdtemp(prefix="bench-leases-")
            xs = [podkit_trial(podkit, f"file://{leases}/{n}", a.ttl, sig) for n in range(a.trials)]
            rows.append((f"podkit elect, lease file, ttl {a.ttl}s", label, summary(xs)))
            shutil.rmtree(leases, ignore_errors=True)
            lock = lambda name, i: ["lock", "--ttl", str(a.ttl), name]
            xs = [etcdctl_trial(endpoint, lock, sig) for _ in range(a.trials)]
            rows.append((f"etcdctl lock --ttl {a.ttl}", label, summary(xs)))
            elect = lambda name, i: ["elect", name, f"p{i}"]
            n = a.trials if sig == signal.SIGTERM else a.elect_kill_trials
            xs = [etcdctl_trial(endpoint, elect, sig) for _ in range(n)]
            rows.append(("etcdctl elect (60 s session)", label, summary(xs)))
    finally:
        etcd.stop()
    print("| contender | signal to the leader | median ms | min–max ms | trials |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")

if __name__ == "__main__":
    main()
