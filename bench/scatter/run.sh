#!/usr/bin/env bash
# Scatter/gather under a slow leaf: 16 leaves on loopback, each with a 10 ms service time; one of
# them answers after an extra second in 1 % of requests. The same load goes, in one run, to:
#   - one leaf directly (the baseline),
#   - a root without hedging, and
#   - a root with --hedge,
# and the script prints p50/p99/requests per second and the extra leaf requests hedging cost.
#
#   bench/scatter/run.sh [requests] [concurrency]
set -euo pipefail
cd "$(dirname "$0")/../.."
requests=${1:-3000}
concurrency=${2:-8}

cargo build --release --locked -p podkit -p podkit-testkit --bins --quiet
bin=$PWD/target/release
work=$(mktemp -d -t scatter-bench.XXXXXX)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

wait_file() { for _ in $(seq 500); do [ -s "$1" ] && return 0; sleep 0.02; done; echo "no $1" >&2; exit 1; }

urls=()
for i in $(seq 0 15); do
  extra=()
  [ "$i" -eq 7 ] && extra=(--slow-prob 0.01 --slow-delay 1s)
  "$bin/podkit-testleaf" --addr-file "$work/leaf$i" --delay 10ms --respond '[{"shard":{shard},"score":{shard}}]' "${extra[@]}" &
  pids+=($!)
done
for i in $(seq 0 15); do wait_file "$work/leaf$i"; urls+=("http://$(cat "$work/leaf$i")"); done
leaves=$(IFS=,; echo "${urls[*]}")

# The root's own cost is measured apart, on 16 leaves that answer at once: with a service time,
# the slowest of 16 leaves is slower than one leaf, and that is not the root's doing.
fast_urls=()
for i in $(seq 0 15); do
  "$bin/podkit-testleaf" --addr-file "$work/fast$i" --respond '[{"shard":{shard},"score":{shard}}]' &
  pids+=($!)
done
for i in $(seq 0 15); do wait_file "$work/fast$i"; fast_urls+=("http://$(cat "$work/fast$i")"); done
fast_leaves=$(IFS=,; echo "${fast_urls[*]}")

root() { # name, leaves, extra args…
  local name=$1 spec=$2; shift 2
  "$bin/podkit" scatter --admin 127.0.0.1:0 --log-level warn --listen 127.0.0.1:0 \
    --listen-addr-file "$work/$name" --leaves "$spec" --merge topk:score:5 --deadline 3s "$@" &
  pids+=($!)
  wait_file "$work/$name"
}
root plain "$leaves"
root hedged "$leaves" --hedge
root fast "$fast_leaves"

count() { # total requests all leaves served
  local sum=0
  for u in "${urls[@]}"; do sum=$((sum + $(curl -s "$u/__testleaf/count"))); done
  echo "$sum"
}

load() { "$bin/podkit-load" --url "$1" --requests "$requests" --concurrency "$concurrency"; }

direct=$(load "${urls[0]}/q")
before=$(count)
plain=$(load "http://$(cat "$work/plain")/q")
mid=$(count)
hedged=$(load "http://$(cat "$work/hedged")/q")
after=$(count)
fast_direct=$(load "${fast_urls[0]}/q")
fast_root=$(load "http://$(cat "$work/fast")/q")

python3 - "$direct" "$plain" "$hedged" "$before" "$mid" "$after" "$requests" "$fast_direct" "$fast_root" <<'PY'
import json, sys
direct, plain, hedged = (json.loads(a) for a in sys.argv[1:4])
before, mid, after, n = (int(a) for a in sys.argv[4:8])
fast_direct, fast_root = (json.loads(a) for a in sys.argv[8:10])
warm = 200  # podkit-load's warm-up requests, also fanned out to 16 leaves
def extra(leaf_requests):
    expected = (n + warm) * 16
    return 100.0 * (leaf_requests - expected) / expected
print(f"| target | requests/s | p50 ms | p99 ms | max ms | errors or partial | extra leaf requests |")
print(f"|---|---|---|---|---|---|---|")
print(f"| one leaf, direct | {direct['rps']:.0f} | {direct['p50_ms']:.2f} | {direct['p99_ms']:.2f} | {direct['max_ms']:.0f} | {direct['errors']} | — |")
print(f"| root, 16 leaves, no hedging | {plain['rps']:.0f} | {plain['p50_ms']:.2f} | {plain['p99_ms']:.2f} | {plain['max_ms']:.0f} | {plain['errors']} | {extra(mid - before):.1f} % |")
print(f"| root, 16 leaves, --hedge | {hedged['rps']:.0f} | {hedged['p50_ms']:.2f} | {hedged['p99_ms']:.2f} | {hedged['max_ms']:.0f} | {hedged['errors']} | {extra(after - mid):.1f} % |")
print(f"| one instant leaf, direct | {fast_direct['rps']:.0f} | {fast_direct['p50_ms']:.2f} | {fast_direct['p99_ms']:.2f} | {fast_direct['max_ms']:.0f} | {fast_direct['errors']} | — |")
print(f"| root, 16 instant leaves | {fast_root['rps']:.0f} | {fast_root['p50_ms']:.2f} | {fast_root['p99_ms']:.2f} | {fast_root['max_ms']:.0f} | {fast_root['errors']} | — |")
print()
print(f"root overhead at p50 (16 instant leaves vs one instant leaf direct): {fast_root['p50_ms'] - fast_direct['p50_ms']:.2f} ms (goal: under 1 ms)")
print(f"16 leaves with a 10 ms service time vs one: {plain['p50_ms'] - direct['p50_ms']:.2f} ms at p50 (the slowest of 16, plus the root)")
print(f"hedged p99 / leaf p50: {hedged['p99_ms'] / direct['p50_ms']:.2f}x (goal: below 3x)")
PY
