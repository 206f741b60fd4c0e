#!/usr/bin/env python3
"""podkit queue (SQLite, then Redis) against GNU parallel: N small files, each transformed by the same
small command (`tr a-z A-Z`), on one host, in one run.

    bench/queue/run.py [--podkit target/release/podkit] [--items 10000] [--jobs 2]

Prints items per second, wall time and peak RSS of the coordinator (podkit queue work / GNU
parallel itself, not the jobs), as a Markdown table. The podkit figures include pushing the
items into the store; podkit is durable (a killed worker loses no item), parallel is not.
"""
import argparse, os, resource, shutil, subprocess, sys, tempfile, time

def run(cmd, **kw):
    """Runs cmd; returns (seconds, peak RSS of the biggest process it waited for, in KiB)."""
    t = time.monotonic()
    p = subprocess.Popen(cmd, **kw)
    _, status, usage = os.wait4(p.pid, 0)
    if status != 0:
        sys.exit(f"{cmd[0]} failed: status {status}")
    return time.monotonic() - t, usage.ru_maxrss

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--podkit", default="target/release/podkit")
    ap.add_argument("--items", type=int, default=10000)
    ap.add_argument("--jobs", type=int, default=os.cpu_count())
    a = ap.parse_args()
    podkit = os.path.abspath(a.podkit)
    work = tempfile.mkdtemp(prefix="queue-bench-")
    try:
        src = os.path.join(work, "in")
        os.mkdir(src)
        for i in range(a.items):
            with open(os.path.join(src, f"item{i:05d}.txt"), "w") as f:
                f.write(f"item number {i}: the quick brown fox jumps over the lazy dog\n")
        script = "tr a-z A-Z < {input} > {output}"

        out_p = os.path.join(work, "out-parallel")
        os.mkdir(out_p)
        files = sorted(os.listdir(src))
        listing = os.path.join(work, "files")
        with open(listing, "w") as f:
            f.write("\n".join(os.path.join(src, x) for x in files))
        par_s, par_rss = run(["parallel", "-j", str(a.jobs), "--arg-file", listing,
                              f"tr a-z A-Z < {{}} > {out_p}/{{/}}"], stdout=subprocess.DEVNULL)

        store = f"sqlite://{work}/q.db"
        out_q = os.path.join(work, "out-podkit")
        t0 = time.monotonic()
        push_s, _ = run([podkit, "queue", "push", "--store", store, "--queue", "b", "--id-from-name", src], stdout=subprocess.DEVNULL)
        work_s, work_rss = run([podkit, "queue", "work", "--store", store, "--queue", "b", "--concurrency", str(a.jobs),
                                "--out-dir", out_q, "--exit-when-empty", "--admin", "127.0.0.1:0", "--log-level", "warn",
                                "--", "sh", "-c", script])
        total_s = time.monotonic() - t0
        assert len(os.listdir(out_p)) == a.items, "parallel lost items"
        assert len(os.listdir(out_q)) == a.items, "podkit lost items"

        # The same run over Redis (a fresh redis-server on a free port, no persistence).
        import socket
        with socket.socket() as sk:
            sk.bind(("127.0.0.1", 0))
            port = sk.getsockname()[1]
        redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no"], stdout=subprocess.DEVNULL)
        try:
            for _ in range(200):
                if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() == b"PONG":
                    break
                time.sleep(0.05)
            rstore = f"redis://127.0.0.1:{port}/0"
            out_r = os.path.join(work, "out-redis")
            t0 = time.monotonic()
            rpush_s, _ = run([podkit, "queue", "push", "--store", rstore, "--queue", "b", "--id-from-name", src], stdout=subprocess.DEVNULL)
            _, rwork_rss = run([podkit, "queue", "work", "--store", rstore, "--queue", "b", "--concurrency", str(a.jobs),
                                "--out-dir", out_r, "--exit-when-empty", "--admin", "127.0.0.1:0", "--log-level", "warn",
                                "--", "sh", "-c", script])
            redis_s = time.monotonic() - t0
            assert len(os.listdir(out_r)) == a.items, "podkit (redis) lost items"
        finally:
            redis.terminate()
            redis.wait()

        print(f"| contender ({a.items} items, {a.jobs} at a time) | wall s | items/s | peak RSS of the coordinator |")
        print("|---|---|---|---|")
        print(f"| GNU parallel -j {a.jobs} | {par_s:.1f} | {a.items / par_s:.0f} | {par_rss / 1024:.1f} MiB |")
        print(f"| podkit queue push + work (sqlite) | {total_s:.1f} (push {push_s:.1f}) | {a.items / total_s:.0f} | {work_rss / 1024:.1f} MiB |")
        print(f"| podkit queue push + work (redis) | {redis_s:.1f} (push {rpush_s:.1f}) | {a.items / redis_s:.0f} | {rwork_rss / 1024:.1f} MiB |")
        print()
        print(f"podkit (sqlite) / parallel throughput: {par_s / total_s:.2f}x")
        print(f"podkit redis time / sqlite time: {redis_s / total_s:.2f}x (goal: within 1.5x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)

if __name__ == "__main__":
    main()
