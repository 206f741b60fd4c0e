#!/usr/bin/env python3
"""StatsD ingest of podkit adapter: lines per second on its one receive thread, with a mapping.

    bench/adapter/statsd.py [--podkit target/release/podkit] [--seconds 5] [--rates 250000,500000,...]

podkit adapter listens for StatsD on UDP with a mapping file (globs and a regex, as
statsd_exporter's README writes them). A sender on the other core offers lines at each rate
for --seconds, in packets of about 1,400 bytes (as statsd clients batch them), over 1,000
series: counters with DogStatsD tags, timers and gauges. Measured per rate: the lines podkit
read (podkit_adapter_statsd_lines_total), the datagrams the kernel dropped at the socket
(/proc/net/udp, as podkit_adapter_statsd_udp_receive_drops_total reports them), podkit's CPU
seconds (utime+stime from /proc), and from them the lines per CPU second, which is what one
core can ingest. Prints a Markdown table.
"""
import argparse, http.client, os, re, socket, subprocess, sys, tempfile, time

CLK = os.sysconf("SC_CLK_TCK")

MAPPING = """
mappings:
- match: "app.*.requests"
  name: "app_requests_total"
  labels: {service: "$1"}
- match: "app.*.latency"
  observer_type: histogram
  name: "app_latency_seconds"
  labels: {service: "$1"}
- match: "app.*.queue"
  name: "app_queue_length"
  labels: {service: "$1"}
- match: "app.*.debug"
  action: drop
  name: dropped
- match: '^jobs\\.(\\w+)\\.(\\w+)$'
  match_type: regex
  name: "jobs_total"
  labels: {queue: "$1", outcome: "$2"}
"""


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / CLK


def metric(port, path, name):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", path)
    body = c.getresponse().read().decode()
    m = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", body, re.M)
    return float(m.group(1)) if m else 0.0


def lines():
    """1,000 series' lines, as a client's buffer would hold them."""
    out = []
    for svc in range(200):
        out.append(f"app.svc{svc}.requests:1|c|#route:/api/v1/items,code:200")
        out.append(f"app.svc{svc}.latency:{svc % 97 + 0.5}|ms")
        out.append(f"app.svc{svc}.queue:{svc}|g")
        out.append(f"jobs.q{svc % 20}.done:1|c")
        out.append(f"app.svc{svc}.debug:1|c")
    return out


def packets(all_lines, size=1400):
    pkts, cur, n = [], [], 0
    for l in all_lines:
        if n + len(l) + 1 > size and cur:
            pkts.append(("\n".join(cur)).encode())
            cur, n = [], 0
        cur.append(l)
        n += len(l) + 1
    if cur:
        pkts.append(("\n".join(cur)).encode())
    return pkts


def send(port, pkts, rate, seconds):
    """Offers `rate` lines/s for `seconds`; returns the lines sent."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    per = [p.count(b"\n") + 1 for p in pkts]
    sent, i = 0, 0
    start = time.perf_counter()
    end = start + seconds
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        # Send what is due by now, in a burst (keeps the sender's own overhead low).
        due = rate * (now - start)
        while sent < due:
            s.sendto(pkts[i], ("127.0.0.1", port))
            sent += per[i]
            i = (i + 1) % len(pkts)
    return sent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--podkit", default="target/release/podkit")
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rates", default="250000,500000,750000,1000000,1500000")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp()
    mapping = os.path.join(tmp, "mapping.yml")
    open(mapping, "w").write(MAPPING)
    port = free_port()
    config = os.path.join(tmp, "adapter.yaml")
    open(config, "w").write(f"sources:\n  - statsd: 127.0.0.1:{port}\n    tcp: false\n"
                            f"    mapping_file: {mapping}\n    read_buffer: 8388608\n")
    admin_file = os.path.join(tmp, "admin")
    listen_file = os.path.join(tmp, "listen")
    p = subprocess.Popen([a.podkit, "adapter", "--config", config, "--listen", "127.0.0.1:0",
                          "--listen-addr-file", listen_file, "--admin", "127.0.0.1:0",
                          "--admin-addr-file", admin_file], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 20
        while not (os.path.exists(admin_file) and os.path.exists(listen_file)):
            if time.time() > deadline:
                sys.exit("podkit adapter did not start")
            time.sleep(0.05)
        admin = int(open(admin_file).read().rsplit(":", 1)[1])
        listen = int(open(listen_file).read().rsplit(":", 1)[1])
        pkts = packets(lines())
        send(port, pkts, 100000, 0.5)  # warm-up: every series created and cached
        time.sleep(0.5)
        rows = []
        for rate in [int(r) for r in a.rates.split(",")]:
            read0 = metric(admin, "/metrics", "podkit_adapter_statsd_lines_total")
            drop0 = metric(listen, "/metrics", "podkit_adapter_statsd_udp_receive_drops_total")
            c0, t0 = cpu(p.pid), time.perf_counter()
            sent = send(port, pkts, rate, a.seconds)
            # Until podkit has read what the socket holds.
            last = -1
            while True:
                time.sleep(0.2)
                now = metric(admin, "/metrics", "podkit_adapter_statsd_lines_total")
                if now == last:
                    break
                last = now
            c1 = cpu(p.pid)
            read = last - read0
            drops = metric(listen, "/metrics", "podkit_adapter_statsd_udp_receive_drops_total") - drop0
            used = c1 - c0
            rows.append((rate, sent / a.seconds, read / a.seconds, read / max(sent, 1), drops, used / a.seconds,
                         read / used if used else 0))
        rss = [l for l in open(f"/proc/{p.pid}/status") if l.startswith(("VmRSS", "VmHWM"))]
        print(f"StatsD over UDP, {len(pkts)} packets of ~1,400 bytes cycling over 1,000 series "
              f"(4 globs and a regex in the mapping), {a.seconds:g} s per rate.\n")
        print("| offered lines/s | sent lines/s | read lines/s | read / sent | datagrams dropped | podkit CPU (cores) | lines per CPU second |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r[0]:,} | {r[1]:,.0f} | {r[2]:,.0f} | {r[3]:.4f} | {r[4]:.0f} | {r[5]:.2f} | {r[6]:,.0f} |")
        print("\n" + " ".join(l.split(":")[0] + " " + " ".join(l.split()[1:]) for l in rss))
    finally:
        p.terminate()
        p.wait()


if __name__ == "__main__":
    main()
