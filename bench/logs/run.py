#!/usr/bin/env python3
"""podkit logs against rsyslog (imfile) and syslog-ng (wildcard-file), each following the same
files into a file sink, on one host, in one run.

    bench/logs/run.py [--podkit target/release/podkit] [--quick]

Each contender runs pinned to core 1 (`taskset -c 1`); this script and the generator of the log
lines run on core 0. Every line is `seq NNNNNNNN xxx…\\n`, 200 bytes, so the outputs can be
checked line by line: a sequence number missing from a contender's output is a lost line, one
there twice a duplicate. Every run starts from empty state and output directories (temp dirs).

1. read: a 2,000,000-line file read from its start (lines/s, MiB/s, CPU seconds per million
   lines from /proc/PID/stat utime+stime, peak RSS = VmHWM from /proc/PID/status);
2. live: the generator appends 2,000,000 lines, one write(2) per line, as fast as it can;
3. a loss/duplicate matrix: rename rotation (logrotate's default: .1 … .5 shifted), with the
   glob on app.log only and on app.log*; copytruncate; truncation in place; delete + recreate;
   kill -9 of the contender in the middle of a live run, then a restart on the same state.

The peers run with their defaults (see RSYSLOG_CONF and SYSLOG_NG_CONF); podkit with
--rotate-wait 1s. A contender's run ends when its output holds every line and has been still
for a second, or has been still for --quiet seconds, or at a deadline. Prints Markdown tables.

rsyslog and syslog-ng-core conflict as Debian packages; install rsyslog, and unpack
syslog-ng-core with `apt-get download syslog-ng-core && dpkg -x syslog-ng-core_*.deb
/opt/syslog-ng-root` (found there by default, see --syslog-ng-root), or give --syslog-ng.
"""
import argparse, json, os, re, shutil, signal, subprocess, sys, tempfile, time, urllib.request

LINE = 200
PAD = LINE - len("seq 00000000 ") - 1
GOOD = re.compile(rb"seq (\d{8}) x{%d}(?!x)" % PAD)
KEEP = 5  # rotated copies kept, as logrotate's `rotate 5`
HERE = os.path.abspath(__file__)

RSYSLOG_CONF = """\
global(workDirectory="{state}")
module(load="imfile")
template(name="raw" type="string" string="%msg%\\n")
ruleset(name="bench") {{
  action(type="omfile" file="{out}" template="raw")
}}
input(type="imfile" file="{dir}/{glob}" tag="app" ruleset="bench")
"""

SYSLOG_NG_CONF = """\
@version: 3.38
source s_app {{ wildcard-file(base-dir("{dir}") filename-pattern("{glob}") flags(no-parse)); }};
destination d_out {{ file("{out}" template("${{MESSAGE}}\\n")); }};
log {{ source(s_app); destination(d_out); }};
"""


def line(i):
    return b"seq %08d " % i + b"x" * PAD + b"\n"


# ---------------------------------------------------------------- the generator (on core 0)

def shift(path):
    for n in range(KEEP - 1, 0, -1):
        if os.path.exists(f"{path}.{n}"):
            os.rename(f"{path}.{n}", f"{path}.{n + 1}")


def generate(a):
    """Appends lines [0, total) to DIR/app.log, one write per line, at --rate lines/s (0: as
    fast as it can), rotating every --every lines the --mode way. Prints what it did as JSON."""
    path = os.path.join(a.dir, "app.log")
    opn = lambda: os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    fd = opn()
    pad = b"x" * PAD + b"\n"
    t0 = time.monotonic()
    paused = 0.0
    rotations = 0
    for i in range(a.total):
        if a.every and i and i % a.every == 0:
            rotations += 1
            if a.mode == "rename":
                os.close(fd)
                shift(path)
                os.rename(path, path + ".1")
                fd = opn()
            elif a.mode == "copytruncate":
                shift(path)
                shutil.copyfile(path, path + ".1")
                os.ftruncate(fd, 0)
            elif a.mode == "truncate":
                # Give the tailers time to read what is there: what a truncation takes before it
                # was read is gone for any tailer; this counts only what a tailer loses after.
                time.sleep(a.pause)
                paused += a.pause
                os.ftruncate(fd, 0)
            elif a.mode == "delete":
                os.close(fd)
                os.unlink(path)
                fd = opn()
        os.write(fd, b"seq %08d " % i + pad)
        if a.rate and i % 200 == 0:
            ahead = i / a.rate + paused - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
    os.close(fd)
    dt = time.monotonic() - t0
    print(json.dumps({"lines": a.total, "seconds": dt, "rotations": rotations}))


def start_gen(d, total, mode="append", every=0, rate=0, pause=0.0):
    return subprocess.Popen(["taskset", "-c", "0", sys.executable, HERE, "_gen", "--dir", d, "--total", str(total),
                             "--mode", mode, "--every", str(every), "--rate", str(rate), "--pause", str(pause)],
                            stdout=subprocess.PIPE)


# ---------------------------------------------------------------- the contenders (on core 1)

def proc_cpu_rss(pid):
    """(utime + stime in seconds, VmHWM in KiB) of a live process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for l in f:
            if l.startswith("VmHWM:"):
                hwm = int(l.split()[1])
    return cpu, hwm


def wait_for(cond, seconds, what):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.02)
    sys.exit(f"timed out waiting for {what}")


class Contender:
    """One contender's run: its own temp dir with state and output, started and stopped."""

    def __init__(self, name, top):
        self.name = name
        self.work = tempfile.mkdtemp(prefix=f"{name}-", dir=top)
        self.state = os.path.join(self.work, "state")
        os.mkdir(self.state)
        self.proc = None
        self.log = open(os.path.join(self.work, "stderr"), "ab")

    def start(self, d, glob):
        self.proc = subprocess.Popen(self.command(d, glob), stdout=self.log, stderr=self.log,
                                     env=self.env(), start_new_session=True)
        wait_for(lambda: self.proc.poll() is not None or self.ready(), 20, f"{self.name} to start")
        if self.proc.poll() is not None:
            sys.exit(f"{self.name} exited with {self.proc.returncode}; see {self.work}/stderr:\n"
                     + open(os.path.join(self.work, "stderr")).read()[-2000:])
        time.sleep(0.5)  # let every contender set its watches

    def env(self):
        return None

    def kill9(self):
        self.proc.kill()
        self.proc.wait()
        self.on_kill()

    def on_kill(self):
        pass

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Podkit(Contender):
    def __init__(self, top, binary):
        super().__init__("podkit", top)
        self.binary = binary
        self.out = os.path.join(self.work, "out.ndjson")
        self.addr_file = os.path.join(self.work, "admin-addr")

    def command(self, d, glob):
        return ["taskset", "-c", "1", self.binary, "logs", "--path", f"{d}/{glob}",
                # One output file (the default rotates it at 100 MiB and keeps 5).
                "--sink", f"file://{self.out}?max_size={1 << 40}", "--state-dir", self.state,
                "--rotate-wait", "1s", "--admin", "127.0.0.1:0", "--admin-addr-file", self.addr_file,
                "--log-level", "warn"]

    def get(self, path):
        with open(self.addr_file) as f:
            addr = f.read().strip()
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=5) as r:
            return r.status, r.read()

    def ready(self):
        try:
            return self.get("/readyz")[0] == 200
        except Exception:
            return False

    def on_kill(self):
        os.unlink(self.addr_file)

    def metrics(self):
        """Sums of podkit's own counters, and the lag /files reports at the end."""
        wanted = ["records_delivered", "duplicates_dropped", "lost_bytes", "truncations", "retries"]
        got = dict.fromkeys(wanted, 0)
        try:
            text = self.get("/metrics")[1].decode()
            for l in text.splitlines():
                for w in wanted:
                    if l.startswith(f"podkit_logs_{w}_total"):
                        got[w] += int(float(l.rsplit(" ", 1)[1]))
            files = json.loads(self.get("/files")[1])
            got["lag"] = sum(f.get("lag", 0) for v in files.values() for f in v.get("files", []))
        except Exception as e:
            got["error"] = str(e)
        return got


class Rsyslog(Contender):
    def __init__(self, top, binary):
        super().__init__("rsyslog", top)
        self.binary = binary
        self.out = os.path.join(self.work, "out.log")
        self.pid = os.path.join(self.work, "pid")

    def command(self, d, glob):
        conf = os.path.join(self.work, "rsyslog.conf")
        with open(conf, "w") as f:
            f.write(RSYSLOG_CONF.format(state=self.state, out=self.out, dir=d, glob=glob))
        return ["taskset", "-c", "1", self.binary, "-n", "-f", conf, "-i", self.pid]

    def ready(self):
        return os.path.exists(self.pid)

    def on_kill(self):
        if os.path.exists(self.pid):
            os.unlink(self.pid)


class SyslogNg(Contender):
    def __init__(self, top, binary, root):
        super().__init__("syslog-ng", top)
        self.binary, self.root = binary, root
        self.out = os.path.join(self.work, "out.log")
        self.pid = os.path.join(self.work, "pid")

    def command(self, d, glob):
        conf = os.path.join(self.work, "syslog-ng.conf")
        with open(conf, "w") as f:
            f.write(SYSLOG_NG_CONF.format(out=self.out, dir=d, glob=glob))
        cmd = ["taskset", "-c", "1", self.binary, "-F", "-f", conf, "--pidfile", self.pid,
               "--persist-file", os.path.join(self.state, "persist"), "--control", os.path.join(self.work, "ctl")]
        if self.root:
            cmd += ["--module-path", f"{self.root}/usr/lib/syslog-ng/3.38"]
        return cmd

    def env(self):
        if not self.root:
            return None
        return dict(os.environ, LD_LIBRARY_PATH=f"{self.root}/usr/lib/syslog-ng")

    def ready(self):
        return os.path.exists(self.pid)

    def on_kill(self):
        if os.path.exists(self.pid):
            os.unlink(self.pid)


# ---------------------------------------------------------------- watching and checking the outputs

class Tail:
    """Counts the lines of an output that carry a sequence number, as it grows."""

    def __init__(self, path):
        self.path, self.offset, self.carry, self.count = path, 0, b"", 0

    def poll(self):
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            return False
        if size < self.offset:  # podkit cuts a torn last line off after a crash
            self.offset, self.carry = size, b""
            return True
        if size == self.offset:
            return False
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read(size - self.offset)
        self.offset += len(chunk)
        buf = self.carry + chunk
        cut = buf.rfind(b"\n") + 1
        self.carry = buf[cut:]
        self.count += buf.count(b"seq ", 0, cut)
        return True


class LastLine:
    """Progress of an output written in order (one source file): the sequence number on its
    last complete line, plus one. Reads only the output's end, so watching costs the core the
    generator runs on next to nothing."""

    def __init__(self, path):
        self.path, self.size, self.count = path, 0, 0

    def poll(self):
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size == self.size:
                    return False
                self.size = size
                f.seek(max(0, size - 4096))
                tail = f.read()
        except FileNotFoundError:
            return False
        end = tail.rfind(b"\n")
        m = list(re.finditer(rb"seq (\d{8})", tail[:end]))
        if m:
            self.count = int(m[-1].group(1)) + 1
        return True


def watch(c, expected, gen=None, quiet=3.0, deadline=120.0, stop_at_expected=False, kill_at=None, restart=None,
          t0=None, in_order=False):
    """Waits for the run to end; returns (seconds from t0 to the last expected line, or to the
    output's last change, and whether the deadline passed)."""
    t = LastLine(c.out) if in_order else Tail(c.out)
    t0 = t0 or time.monotonic()
    last = t0
    full = None
    killed = False
    while True:
        now = time.monotonic()
        if t.poll():
            last = now
        if t.count >= expected and full is None:
            full = now
            if stop_at_expected:
                return full - t0, False
        if kill_at is not None and not killed and now - t0 >= kill_at:
            c.kill9()
            killed = True
            time.sleep(0.5)
            restart()
            last = time.monotonic()
        gen_done = gen is None or gen.poll() is not None
        if gen_done and (t.count >= expected and now - last >= 1.0 or now - last >= quiet):
            return (full or last) - t0, False
        if now - t0 > deadline:
            return (full or last) - t0, True
        time.sleep(0.05)


def check(path, expected):
    """(lost, duplicated, malformed) over the output at path."""
    seen = bytearray(expected)
    extra = malformed = 0
    carry = b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 26)
            if not chunk:
                break
            buf = carry + chunk
            cut = buf.rfind(b"\n") + 1
            carry = buf[cut:]
            part = buf[:cut]
            nums = GOOD.findall(part)
            malformed += part.count(b"seq ") - len(nums)
            for m in nums:
                i = int(m)
                if i < expected:
                    if seen[i] < 255:
                        seen[i] += 1
                else:
                    extra += 1
    malformed += carry.count(b"seq ")
    lost = seen.count(0)
    dup = sum(n - 1 for n in seen if n > 1) + extra
    return lost, dup, malformed


# ---------------------------------------------------------------- the runs

def version(cmd, env=None):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env).stdout
        return out.strip().splitlines()[0]
    except Exception as e:
        return f"? ({e})"


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "_gen":
        g = argparse.ArgumentParser()
        g.add_argument("_gen")
        g.add_argument("--dir", required=True)
        g.add_argument("--total", type=int, required=True)
        g.add_argument("--mode", default="append")
        g.add_argument("--every", type=int, default=0)
        g.add_argument("--rate", type=float, default=0)
        g.add_argument("--pause", type=float, default=0)
        return generate(g.parse_args())

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--podkit", default="target/release/podkit")
    ap.add_argument("--rsyslogd", default=shutil.which("rsyslogd") or "/usr/sbin/rsyslogd")
    ap.add_argument("--syslog-ng", default=shutil.which("syslog-ng"))
    ap.add_argument("--syslog-ng-root", default="/opt/syslog-ng-root",
                    help="an unpacked syslog-ng-core package, used when syslog-ng is not installed")
    ap.add_argument("--quick", action="store_true", help="smaller files, for a check in about two minutes")
    ap.add_argument("--lines", type=int, help="lines in the read and live runs (2,000,000; --quick 200,000)")
    ap.add_argument("--matrix-lines", type=int, help="lines per matrix run (300,000; --quick 60,000)")
    ap.add_argument("--every", type=int, help="rotate every this many lines (30,000; --quick 10,000)")
    ap.add_argument("--rate", type=int, default=100000, help="lines/s the generator writes in the matrix")
    ap.add_argument("--quiet", type=float, default=3.0, help="seconds an output must be still to be done")
    ap.add_argument("--only", help="comma-separated contenders (podkit,rsyslog,syslog-ng)")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-matrix", action="store_true")
    ap.add_argument("--cases", help="comma-separated matrix cases to run (default: all)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs (printed)")
    a = ap.parse_args()
    lines = a.lines or (200_000 if a.quick else 2_000_000)
    mlines = a.matrix_lines or (60_000 if a.quick else 300_000)
    every = a.every or (10_000 if a.quick else 30_000)
    podkit = os.path.abspath(a.podkit)
    sng, sng_root = a.syslog_ng, None
    if not sng and os.path.exists(f"{a.syslog_ng_root}/usr/sbin/syslog-ng"):
        sng, sng_root = f"{a.syslog_ng_root}/usr/sbin/syslog-ng", a.syslog_ng_root
    os.sched_setaffinity(0, {0})

    names = (a.only or "podkit,rsyslog,syslog-ng").split(",")
    top = tempfile.mkdtemp(prefix="logs-bench-")

    def make(name):
        if name == "podkit":
            return Podkit(top, podkit)
        if name == "rsyslog":
            return Rsyslog(top, a.rsyslogd)
        if name == "syslog-ng":
            return SyslogNg(top, sng, sng_root)
        sys.exit(f"unknown contender {name}")

    def done_with(c):
        if not a.keep:
            shutil.rmtree(c.work, ignore_errors=True)

    sng_env = dict(os.environ, LD_LIBRARY_PATH=f"{sng_root}/usr/lib/syslog-ng") if sng_root else None
    print(f"podkit: {version([podkit, '--version'])}; rsyslog: {version([a.rsyslogd, '-v'])}; "
          f"syslog-ng: {version([sng, '--version'], sng_env) if sng else 'missing'}")
    print(f"work dir: {top}\n", flush=True)
    try:
        results = {}
        if not a.skip_throughput:
            src = os.path.join(top, "read")
            os.mkdir(src)
            with open(os.path.join(src, "app.log"), "wb") as f:
                step = 10000
                pad = b"x" * PAD + b"\n"
                for s in range(0, lines, step):
                    f.write(b"".join(b"seq %08d " % i + pad for i in range(s, min(s + step, lines))))
            mib = lines * LINE / 2**20
            rows = []
            for kind in ("read", "live"):
                for name in names:
                    c = make(name)
                    if kind == "read":
                        d = src
                        t0 = time.monotonic()
                        c.start(d, "app.log")
                        gen = None
                    else:
                        d = tempfile.mkdtemp(prefix="live-", dir=top)
                        open(os.path.join(d, "app.log"), "wb").close()
                        c.start(d, "app.log")
                        t0 = time.monotonic()
                        gen = start_gen(d, lines)
                    # From the contender's start (read) or the generator's (live) to the last line.
                    secs, late = watch(c, lines, gen, quiet=a.quiet, deadline=300, stop_at_expected=True, t0=t0,
                                       in_order=True)
                    cpu, hwm = proc_cpu_rss(c.proc.pid)
                    gen_s = json.loads(gen.communicate()[0])["seconds"] if gen else None
                    c.stop()
                    lost, dup, bad = check(c.out, lines)
                    rows.append((kind, name, secs, cpu, hwm, lost, dup, bad, late, gen_s))
                    print(f"  {kind} {name}: {secs:.1f} s, cpu {cpu:.1f} s, VmHWM {hwm / 1024:.1f} MiB, "
                          f"lost {lost} dup {dup} malformed {bad}{' TIMED OUT' if late else ''}"
                          + (f" (generator {gen_s:.1f} s)" if gen_s else ""), flush=True)
                    done_with(c)
                    if kind == "live":
                        shutil.rmtree(d, ignore_errors=True)
            results["throughput"] = rows
            print()
            print(f"| run ({lines:,} lines of {LINE} B) | contender | seconds | lines/s | MiB/s | CPU s per M lines | peak RSS (VmHWM) | lost / dup |")
            print("|---|---|---|---|---|---|---|---|")
            for kind, name, secs, cpu, hwm, lost, dup, bad, late, gen_s in rows:
                what = ("read a file from its start" if kind == "read"
                        else f"live, appended at full speed (generator {gen_s:.1f} s)")
                print(f"| {what} | {name} | {secs:.1f}{' (deadline)' if late else ''} | {lines / secs:,.0f} | "
                      f"{mib / secs:.1f} | {cpu / (lines / 1e6):.2f} | {hwm / 1024:.1f} MiB | {lost} / {dup}"
                      f"{f' ({bad} malformed)' if bad else ''} |")
            by = {(k, n): (s, cpu, hwm) for k, n, s, cpu, hwm, *_ in rows}
            print()
            for kind in ("read", "live"):
                for peer in ("rsyslog", "syslog-ng"):
                    if (kind, "podkit") in by and (kind, peer) in by:
                        p, q = by[(kind, "podkit")], by[(kind, peer)]
                        print(f"- {kind}, podkit / {peer}: throughput {q[0] / p[0]:.2f}x, "
                              f"CPU per line {p[1] / q[1]:.2f}x, peak RSS {p[2] / q[2]:.2f}x")
            print(flush=True)

        if not a.skip_matrix:
            half = mlines / a.rate / 2
            cases = [
                # key, description, generator mode, podkit glob, peers' glob, extra
                ("rename", f"rename rotation every {every:,} lines, glob `app.log`", "rename", "app.log", "app.log", {}),
                ("rename*", f"rename rotation every {every:,} lines, glob `app.log*`", "rename", "app.log*", "app.log*", {}),
                ("copytruncate", f"copytruncate every {every:,} lines (podkit `app.log*`, peers `app.log`)",
                 "copytruncate", "app.log*", "app.log", {}),
                ("truncate", f"truncate in place every {every:,} lines (1 s pause before each)", "truncate",
                 "app.log", "app.log", {"pause": 1.0}),
                ("delete", f"delete + recreate every {every:,} lines", "delete", "app.log", "app.log", {}),
                ("kill", f"kill -9 after {half:.1f} s of a live run, restart 0.5 s later", "append",
                 "app.log", "app.log", {"kill": half}),
            ]
            if a.cases:
                keep = a.cases.split(",")
                cases = [x for x in cases if x[0] in keep]
            matrix = {}
            details = []
            for key, desc, mode, pglob, glob, extra in cases:
                for name in names:
                    c = make(name)
                    d = tempfile.mkdtemp(prefix=f"m-{key.strip('*')}-", dir=top)
                    open(os.path.join(d, "app.log"), "wb").close()
                    g = pglob if name == "podkit" else glob
                    c.start(d, g)
                    gen = start_gen(d, mlines, mode, 0 if mode == "append" else every, a.rate, extra.get("pause", 0.0))
                    secs, late = watch(c, mlines, gen, quiet=a.quiet, deadline=mlines / a.rate + 90,
                                       kill_at=extra.get("kill"), restart=lambda: c.start(d, g))
                    gen.communicate()
                    m = c.metrics() if name == "podkit" else None
                    c.stop()
                    lost, dup, bad = check(c.out, mlines)
                    matrix[(key, name)] = (lost, dup, bad, late)
                    print(f"  {key} {name}: lost {lost} dup {dup} malformed {bad} in {secs:.1f} s"
                          f"{' TIMED OUT' if late else ''}" + (f" podkit metrics {m}" if m else ""), flush=True)
                    if m:
                        details.append((key, m))
                    done_with(c)
                    shutil.rmtree(d, ignore_errors=True)
            print()
            print(f"Lines lost / duplicated, of {mlines:,} written at {a.rate:,} lines/s (one write per line):")
            print()
            print("| case | " + " | ".join(names) + " |")
            print("|---|" + "---|" * len(names))
            for key, desc, *_ in cases:
                cells = []
                for name in names:
                    lost, dup, bad, late = matrix[(key, name)]
                    cell = f"{lost:,} / {dup:,}"
                    if bad:
                        cell += f" ({bad:,} malformed)"
                    if late:
                        cell += " (deadline)"
                    cells.append(cell)
                print(f"| {desc} | " + " | ".join(cells) + " |")
            if details:
                print()
                print("podkit's own counters at the end of each matrix run:")
                for key, m in details:
                    print(f"- {key}: " + ", ".join(f"{k} {v}" for k, v in m.items()))
    finally:
        if a.keep:
            print(f"kept {top}")
        else:
            shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
