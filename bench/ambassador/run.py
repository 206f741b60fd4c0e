#!/usr/bin/env python3
"""podkit ambassador against nutcracker (twemproxy), and both against the server directly.

    bench/ambassador/run.py [--podkit target/release/podkit] [--seconds 5] [--rounds 3]
                            [--podkit-arg=--threads --podkit-arg=1 ...]

One memcached and one redis-server are the backends; nutcracker and podkit ambassador get the
same one-server pools. Each row runs direct, nutcracker and podkit back to back (paired, on the
same backends), and every row is repeated --rounds times; the median round is reported.

- memcache: memcaslap (libmemcached-tools) with its default 9:1 get/set mix, 100-byte values,
  one load thread, 1 / 16 / 64 connections. Its latency histogram has power-of-two buckets,
  so p50/p99 are the upper bounds of those buckets (64, 128, 256 … µs).
- Redis: redis-benchmark -t get,set -n 200000 -c 50 -P 1|16 -r 10000 --csv (p50/p99 exact).

Prints Markdown tables: throughput, throughput as a share of direct, podkit/nutcracker, p50,
p99, and CPU time per request of each proxy (from /proc).
"""
import argparse, os, re, shutil, socket, statistics, subprocess, sys, tempfile, time

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def wait_port(port, what):
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    sys.exit(f"{what} did not start on port {port}")

def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])

def memcaslap(port, conns, seconds):
    out = subprocess.run(
        ["memcaslap", "-s", f"127.0.0.1:{port}", "-T", "1", "-c", str(conns), "-t", f"{seconds}s",
         "-X", "100", "-S", f"{seconds}s"], capture_output=True, text=True).stdout
    tps = int(re.search(r"Run time: \S+ Ops: \d+ TPS: (\d+)", out).group(1))
    ops = int(re.search(r"Run time: \S+ Ops: (\d+)", out).group(1))
    # The last "Log2 Dist" is the total's: rows "B: c0 c1 c2 c3" count 2^B..2^(B+3) µs.
    dist = out.rsplit("Total Statistics (", 1)[1].split("Log2 Dist:", 1)[1]
    buckets = []
    for line in dist.splitlines():
        m = re.match(r"\s*(\d+):\s+([\d\s]+)$", line)
        if not m:
            continue
        base = int(m.group(1))
        for i, c in enumerate(m.group(2).split()):
            buckets.append((2 ** (base + i + 1), int(c)))
    total = sum(c for _, c in buckets)
    def pct(p):
        acc = 0
        for upper, c in buckets:
            acc += c
            if acc >= p * total:
                return upper / 1000
        return float("nan")
    return {"rps": tps, "ops": ops, "p50": pct(0.50), "p99": pct(0.99)}

def redis_benchmark(port, pipeline):
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-t", "get,set", "-n", "200000", "-c", "50", "-P", str(pipeline),
         "-r", "10000", "--csv"], capture_output=True, text=True).stdout
    rows = {}
    for line in out.splitlines():
        cells = [c.strip('"') for c in line.split(",")]
        if cells[0] in ("SET", "GET"):
            # test, rps, avg, min, p50, p95, p99, max
            rows[cells[0]] = {"rps": float(cells[1]), "p50": float(cells[4]), "p99": float(cells[6]), "ops": 200000}
    return rows

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--podkit", default="target/release/podkit")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--podkit-arg", action="append", default=[],
                    help="one more argument for podkit ambassador (repeat: --podkit-arg=--threads --podkit-arg=1)")
    a = ap.parse_args()
    for tool in ("memcached", "redis-server", "nutcracker", "memcaslap", "redis-benchmark"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: run scripts/setup")
    podkit = os.path.abspath(a.podkit)
    work = tempfile.mkdtemp(prefix="ambassador-bench-")
    procs = []
    try:
        mc, rd = free_port(), free_port()
        procs.append(subprocess.Popen(["memcached", "-l", "127.0.0.1", "-p", str(mc), "-U", "0", "-u", "root", "-m", "256"]))
        procs.append(subprocess.Popen(["redis-server", "--port", str(rd), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no"], stdout=subprocess.DEVNULL))
        wait_port(mc, "memcached"); wait_port(rd, "redis-server")
        ports = {}
        for name in ("nutcracker", "podkit"):
            ports[name] = (free_port(), free_port())
            conf = os.path.join(work, f"{name}.yml")
            with open(conf, "w") as f:
                f.write(f"mc:\n  listen: 127.0.0.1:{ports[name][0]}\n  hash: fnv1a_64\n  distribution: ketama\n"
                        f"  timeout: 1000\n  servers:\n    - 127.0.0.1:{mc}:1\n"
                        f"rd:\n  listen: 127.0.0.1:{ports[name][1]}\n  redis: true\n  hash: fnv1a_64\n"
                        f"  timeout: 1000\n  servers:\n    - 127.0.0.1:{rd}:1\n")
            if name == "nutcracker":
                cmd = ["nutcracker", "-c", conf, "-s", str(free_port()), "-a", "127.0.0.1"]
            else:
                cmd = [podkit, "ambassador", "-c", conf, "-s", "0", "--admin", "127.0.0.1:0", "--log-level", "warn",
                       *a.podkit_arg]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_port(ports[name][0], name)
        pids = {"nutcracker": procs[2].pid, "podkit": procs[3].pid}
        targets = {"direct": (mc, rd), "nutcracker": ports["nutcracker"], "podkit": ports["podkit"]}

        rows = []  # (row name, {target: result})
        for conns in (1, 16, 64):
            rounds = []
            for _ in range(a.rounds):
                r = {}
                for t, (mport, _) in targets.items():
                    before = cpu_ticks(pids[t]) if t in pids else 0
                    r[t] = memcaslap(mport, conns, a.seconds)
                    if t in pids:
                        r[t]["cpu_us"] = (cpu_ticks(pids[t]) - before) * 1e4 / r[t]["ops"]
                rounds.append(r)
            rows.append((f"memcache {conns} conn{'s' if conns > 1 else ''}", median_round(rounds)))
        for pipeline in (1, 16):
            rounds = {"SET": [], "GET": []}
            for _ in range(a.rounds):
                r = {"SET": {}, "GET": {}}
                for t, (_, rport) in targets.items():
                    before = cpu_ticks(pids[t]) if t in pids else 0
                    res = redis_benchmark(rport, pipeline)
                    spent = cpu_ticks(pids[t]) - before if t in pids else 0
                    for test in ("SET", "GET"):
                        r[test][t] = res[test]
                        if t in pids:
                            r[test][t]["cpu_us"] = spent * 1e4 / (2 * res[test]["ops"])
                for test in r:
                    rounds[test].append(r[test])
            for test in ("SET", "GET"):
                rows.append((f"redis {test} -P {pipeline}", median_round(rounds[test])))
        report(rows)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        shutil.rmtree(work, ignore_errors=True)

def median_round(rounds):
    """The round whose podkit/nutcracker throughput ratio is the median (a whole, paired round)."""
    rounds = sorted(rounds, key=lambda r: r["podkit"]["rps"] / r["nutcracker"]["rps"])
    return rounds[len(rounds) // 2]

def report(rows):
    print("| workload | direct req/s | nutcracker req/s (of direct) | podkit req/s (of direct) | podkit / nutcracker "
          "| p50 ms direct / nutcracker / podkit | p99 ms direct / nutcracker / podkit "
          "| proxy CPU µs/req nutcracker / podkit |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        d, n, p = r["direct"], r["nutcracker"], r["podkit"]
        print(f"| {name} | {d['rps']:,.0f} | {n['rps']:,.0f} ({n['rps'] / d['rps']:.2f}) "
              f"| {p['rps']:,.0f} ({p['rps'] / d['rps']:.2f}) | **{p['rps'] / n['rps']:.2f}×** "
              f"| {d['p50']:.3f} / {n['p50']:.3f} / {p['p50']:.3f} | {d['p99']:.3f} / {n['p99']:.3f} / {p['p99']:.3f} "
              f"| {n['cpu_us']:.1f} / {p['cpu_us']:.1f} |")

if __name__ == "__main__":
    main()
