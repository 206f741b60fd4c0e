#!/usr/bin/env python3
"""podkit adapter beside Debian's prometheus-redis-exporter, on one Redis.

    bench/adapter/run.py [--podkit target/release/podkit] [--keys 10000] [--scrapes 1000]

Redis gets --keys keys spread over 4 DBs (a tenth with a TTL). Then, for each of the two, one
keep-alive HTTP connection asks /metrics --scrapes times, without and with
`Accept-Encoding: gzip` (as Prometheus asks). Measured: scrape latency p50/p99 (client side),
CPU seconds per 1,000 scrapes of the translator and of Redis (utime+stime from /proc), the
translator's RSS idle (before the first scrape) and peak (VmHWM), and the series per scrape.
The floor is one `INFO ALL` round trip on a kept connection, timed the same way. Prints
Markdown tables.
"""
import argparse, http.client, os, shutil, socket, statistics, subprocess, sys, tempfile, time

CLK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / CLK


def mem(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_http(port, path, deadline=20):
    end = time.time() + deadline
    while time.time() < end:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit(f"nothing answered on :{port}{path}")


def resp(sock, args):
    cmd = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
    sock.sendall(cmd.encode())


def load(port, keys):
    s = socket.create_connection(("127.0.0.1", port))
    for db in range(4):
        buf = [f"*2\r\n$6\r\nSELECT\r\n${len(str(db))}\r\n{db}\r\n"]
        for i in range(keys // 4):
            k = f"key:{db}:{i}"
            if i % 10 == 0:
                buf.append(f"*5\r\n$3\r\nSET\r\n${len(k)}\r\n{k}\r\n$1\r\nv\r\n$2\r\nEX\r\n$4\r\n9999\r\n")
            else:
                buf.append(f"*3\r\n$3\r\nSET\r\n${len(k)}\r\n{k}\r\n$1\r\nv\r\n")
        s.sendall("".join(buf).encode())
    resp(s, ["PING"])
    got = b""
    while not got.endswith(b"+PONG\r\n"):
        got += s.recv(1 << 20)
    s.close()


def scrapes(port, n, gzip):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Accept-Encoding": "gzip"} if gzip else {}
    lat, body = [], b""
    for _ in range(n):
        t = time.perf_counter()
        c.request("GET", "/metrics", headers=headers)
        r = c.getresponse()
        body = r.read()
        lat.append(time.perf_counter() - t)
    return lat, body


def info_floor(port, n):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        resp(s, ["INFO", "ALL"])
        data = s.recv(1 << 20)
        size = int(data[1:data.index(b"\r\n")])
        while len(data) < size + len(str(size)) + 5:
            data += s.recv(1 << 20)
        lat.append(time.perf_counter() - t)
    return lat


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


def series(body):
    if body[:2] == b"\x1f\x8b":
        import gzip
        body = gzip.decompress(body)
    return sum(1 for l in body.decode().splitlines() if l and not l.startswith("#"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--podkit", default="target/release/podkit")
    ap.add_argument("--keys", type=int, default=10000)
    ap.add_argument("--scrapes", type=int, default=1000)
    a = ap.parse_args()
    for prog in ("redis-server", "prometheus-redis-exporter"):
        if not shutil.which(prog):
            sys.exit(f"{prog} is not installed: run scripts/setup")
    tmp = tempfile.mkdtemp()
    rport = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL)
    procs = [redis]
    try:
        time.sleep(0.3)
        load(rport, a.keys)
        eport, pport = free_port(), free_port()
        exporter = subprocess.Popen(["prometheus-redis-exporter", f"--redis.addr=redis://127.0.0.1:{rport}",
                                     f"--web.listen-address=127.0.0.1:{eport}"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        podkit = subprocess.Popen([a.podkit, "adapter", "--redis", f"redis://127.0.0.1:{rport}",
                                   "--listen", f"127.0.0.1:{pport}", "--admin", "127.0.0.1:0"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs += [exporter, podkit]
        for port, path in ((eport, "/"), (pport, "/")):
            wait_http(port, path)
        rows = []
        for name, proc, port in (("prometheus-redis-exporter", exporter, eport), ("podkit adapter", podkit, pport)):
            idle = mem(proc.pid, "VmRSS")
            for gzip in (False, True):
                c0, r0 = cpu(proc.pid), cpu(redis.pid)
                lat, body = scrapes(port, a.scrapes, gzip)
                c1, r1 = cpu(proc.pid), cpu(redis.pid)
                k = 1000 / a.scrapes
                rows.append((name, "gzip" if gzip else "plain", pct(lat, 0.5), pct(lat, 0.99), (c1 - c0) * k,
                             (r1 - r0) * k, idle, mem(proc.pid, "VmHWM"), series(body)))
        floor = info_floor(rport, a.scrapes)
        print(f"Redis with {a.keys} keys over 4 DBs, {a.scrapes} keep-alive scrapes each.\n")
        print("| translator | body | p50 ms | p99 ms | CPU s / 1,000 scrapes | Redis CPU s / 1,000 | RSS idle MiB | RSS peak MiB | series |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r[0]} | {r[1]} | {r[2]:.2f} | {r[3]:.2f} | {r[4]:.2f} | {r[5]:.2f} | {r[6]:.1f} | {r[7]:.1f} | {r[8]} |")
        print(f"| floor: `INFO ALL` on a kept connection | | {pct(floor, 0.5):.2f} | {pct(floor, 0.99):.2f} | | | | | |")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
