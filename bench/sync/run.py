#!/usr/bin/env python3
"""podkit sync: how stale the published content gets, and what a sync costs.

    bench/sync/run.py [--podkit target/release/podkit] [--files 10000] [--trials 20] [--quick]

1. staleness: a commit is pushed to a bare repository (file://), and the time until
   ROOT/LINK points at it is measured (the link is polled every 1 ms). With the trigger (a
   POST /sync with a bearer token, sent right after the push) and with polling at the default
   10 s period (git-sync's default, whose mean staleness is about half of it); for polling,
   each push lands at a random moment of the period.
2. cost, on a repository of --files files (10,000 by default):
   - idle RSS of podkit (VmRSS) between syncs, and its peak (VmHWM);
   - CPU per sync: podkit's own (utime+stime) and that of the git processes it ran and
     reaped (cutime+cstime), per sync that found nothing new and per sync that published a
     one-file change;
   - disk: ROOT with --keep 3 after 4 publishes, against three plain `git clone`s.

git-sync is not packaged for Debian, so it is not run; its numbers here are its documented
defaults. Prints Markdown tables.
"""
import argparse, os, random, shutil, statistics, subprocess, sys, tempfile, time, urllib.request

CLK = os.sysconf("SC_CLK_TCK")


def git(cwd, *args):
    env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1")
    subprocess.run(["git", "-C", cwd, "-c", "user.name=b", "-c", "user.email=b@example.com", *args],
                   check=True, env=env, stdout=subprocess.DEVNULL)


def rev(cwd):
    return subprocess.run(["git", "-C", cwd, "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()


def make_repo(tmp, files):
    origin, work = os.path.join(tmp, "origin.git"), os.path.join(tmp, "work")
    subprocess.run(["git", "init", "-q", "--bare", "--initial-branch=main", origin], check=True)
    subprocess.run(["git", "init", "-q", "--initial-branch=main", work], check=True)
    for i in range(files):
        d = os.path.join(work, f"d{i // 500:03d}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:05d}.txt"), "w") as f:
            f.write(f"file {i}\n" * 20)
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "initial")
    git(work, "remote", "add", "origin", origin)
    git(work, "push", "-q", "origin", "HEAD:main")
    return origin, work


def commit(work, n):
    with open(os.path.join(work, "changed.txt"), "w") as f:
        f.write(f"change {n}\n")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", f"change {n}")
    git(work, "push", "-q", "origin", "HEAD:main")
    return rev(work)


def wait_file(path, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        if os.path.exists(path) and open(path).read().strip():
            return open(path).read().strip()
        time.sleep(0.01)
    raise SystemExit(f"{path} never appeared")


def linked(link):
    try:
        return os.path.basename(os.readlink(link))
    except OSError:
        return None


def wait_link(link, want, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if linked(link) == want:
            return time.monotonic()
        time.sleep(0.001)
    raise SystemExit(f"{want} not published within {timeout}s")


def proc_stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    # utime stime cutime cstime are fields 14-17 (1-based); parts starts at field 3.
    u, s, cu, cs = (int(x) for x in parts[11:15])
    return (u + s) / CLK, (cu + cs) / CLK


def proc_mem(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def du(path):
    out = subprocess.run(["du", "-sk", path], check=True, capture_output=True, text=True).stdout
    return int(out.split()[0]) / 1024


class Sync:
    def __init__(self, podkit, tmp, origin, extra, name):
        self.root = os.path.join(tmp, f"root-{name}")
        self.link = os.path.join(self.root, "site")
        secret = os.path.join(tmp, "secret")
        with open(secret, "w") as f:
            f.write("bench\n")
        self.addr_file = os.path.join(tmp, f"{name}.admin")
        self.trigger_file = os.path.join(tmp, f"{name}.trigger")
        args = [podkit, "sync", "--repo", f"file://{origin}", "--root", self.root, "--link", "site",
                "--admin", "127.0.0.1:0", "--admin-addr-file", self.addr_file,
                "--trigger-listen", "127.0.0.1:0", "--trigger-listen-addr-file", self.trigger_file,
                "--trigger-secret-file", secret, "--trigger-min-interval", "1ms", *extra]
        self.p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, f"{name}.log"), "w"))
        self.admin = wait_file(self.addr_file)
        self.trigger = wait_file(self.trigger_file)

    def trigger_now(self):
        req = urllib.request.Request(f"http://{self.trigger}/sync", method="POST",
                                     headers={"Authorization": "Bearer bench"}, data=b"")
        urllib.request.urlopen(req).read()

    def syncs(self):
        body = urllib.request.urlopen(f"http://{self.admin}/metrics").read().decode()
        return sum(float(l.rsplit(" ", 1)[1]) for l in body.splitlines() if l.startswith("podkit_sync_syncs_total{"))

    def stop(self):
        self.p.terminate()
        self.p.wait(30)


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--podkit", default="target/release/podkit")
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="fewer files and trials")
    a = ap.parse_args()
    if a.quick:
        a.files, a.trials = 1000, 5
    podkit = os.path.abspath(a.podkit)
    tmp = tempfile.mkdtemp(prefix="podkit-bench-sync-")
    try:
        origin, work = make_repo(tmp, a.files)
        n = 0

        # 1. staleness
        s = Sync(podkit, tmp, origin, ["--period", "1h"], "trigger")
        wait_link(s.link, rev(work), 120)
        trig = []
        for _ in range(a.trials):
            n += 1
            h = commit(work, n)
            t0 = time.monotonic()
            s.trigger_now()
            trig.append(wait_link(s.link, h, 60) - t0)
        s.stop()
        s = Sync(podkit, tmp, origin, [], "poll")
        wait_link(s.link, rev(work), 120)
        poll = []
        for _ in range(max(3, a.trials // 2)):
            # A push lands at a random moment of the period, as real pushes do.
            time.sleep(random.uniform(0, 10))
            n += 1
            h = commit(work, n)
            t0 = time.monotonic()
            poll.append(wait_link(s.link, h, 30) - t0)
        s.stop()

        # 2. cost
        s = Sync(podkit, tmp, origin, ["--period", "1h", "--keep", "3"], "cost")
        wait_link(s.link, rev(work), 120)
        time.sleep(1)
        idle_rss = proc_mem(s.p.pid, "VmRSS")
        before, syncs0 = proc_stat(s.p.pid), s.syncs()
        quiet = max(5, a.trials)
        for _ in range(quiet):
            want = s.syncs() + 1
            s.trigger_now()
            while s.syncs() < want:
                time.sleep(0.005)
        after = proc_stat(s.p.pid)
        unchanged = ((after[0] - before[0]) / quiet, (after[1] - before[1]) / quiet)
        before = after
        for _ in range(quiet):
            n += 1
            h = commit(work, n)
            s.trigger_now()
            wait_link(s.link, h, 60)
        after = proc_stat(s.p.pid)
        published = ((after[0] - before[0]) / quiet, (after[1] - before[1]) / quiet)
        hwm = proc_mem(s.p.pid, "VmHWM")
        s.stop()
        root_mb = du(s.root)
        clones = os.path.join(tmp, "clones")
        os.makedirs(clones)
        for i in range(3):
            subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{origin}", os.path.join(clones, str(i))], check=True)
        clones_mb = du(clones)
        subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{origin}", os.path.join(clones, "3")], check=True)
        clones4_mb = du(clones)
        full = os.path.join(tmp, "full")
        os.makedirs(full)
        for i in range(3):
            subprocess.run(["git", "clone", "-q", f"file://{origin}", os.path.join(full, str(i))], check=True)
        full_mb = du(full)

        print(f"\n### Staleness (push → published), {a.files:,} files\n")
        print("| how | runs | mean | p50 | p99 (max) |\n|---|---|---|---|---|")
        for name, xs in [("POST /sync right after the push", trig), ("polling, --period 10s (default)", poll)]:
            print(f"| {name} | {len(xs)} | {statistics.mean(xs) * 1000:.0f} ms | {pct(xs, .5) * 1000:.0f} ms | {max(xs) * 1000:.0f} ms |")
        print("| git-sync, --period 10s (its default; not run) | — | about 5,000 ms | — | 10,000 ms + sync |")
        print(f"\n### Cost, {a.files:,} files\n")
        print("| | podkit | git processes it ran |\n|---|---|---|")
        print(f"| CPU per sync that found nothing new | {unchanged[0] * 1000:.1f} ms | {unchanged[1] * 1000:.1f} ms |")
        print(f"| CPU per sync that published a change | {published[0] * 1000:.1f} ms | {published[1] * 1000:.1f} ms |")
        print(f"\nIdle RSS {idle_rss:.1f} MiB, peak {hwm:.1f} MiB.\n")
        print("| disk | MiB |\n|---|---|")
        print(f"| podkit sync ROOT, --keep 3 (4 versions as worktrees of one shallow repository) | {root_mb:.1f} |")
        print(f"| three shallow clones (--depth 1) | {clones_mb:.1f} |")
        print(f"| four shallow clones (as many checkouts as ROOT holds) | {clones4_mb:.1f} |")
        print(f"| three full clones | {full_mb:.1f} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
