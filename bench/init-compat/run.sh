#!/usr/bin/env bash
# Runs the same init scenarios under tini, dumb-init and `podkit run`, and prints a Markdown
# table of which pass. Needs root (PID namespaces), tini and dumb-init (scripts/setup).
#
#   bench/init-compat/run.sh [path/to/podkit]
set -uo pipefail
cd "$(dirname "$0")/../.."
podkit=${1:-target/release/podkit}
[ -x "$podkit" ] || { echo "build podkit first: cargo build --release" >&2; exit 1; }
podkit=$(realpath "$podkit")
for tool in tini dumb-init unshare; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: run scripts/setup" >&2; exit 1; }
done

# How each init is invoked (as a subreaper when it is not PID 1).
declare -A init=(
  [tini]="tini -s --"
  [dumb-init]="dumb-init --"
  [podkit]="$podkit run --admin 127.0.0.1:0 --log-level error --grace 2s --"
)
inits=(tini dumb-init podkit)

work=$(mktemp -d -t init-compat.XXXXXX)
trap 'pkill -KILL -f "$work" 2>/dev/null; rm -rf "$work"' EXIT

# wait_until SECONDS CMD…: polls CMD until it succeeds or the time runs out.
wait_until() {
  local limit=$1; shift
  local end=$((SECONDS + limit))
  until "$@"; do
    [ $SECONDS -ge $end ] && return 1
    sleep 0.05
  done
}
alive() { [ -e "/proc/$1" ] && ! grep -q '^[0-9]* (.*) [ZX]' "/proc/$1/stat" 2>/dev/null; }
dead() { ! alive "$1"; }
exited() { ! kill -0 "$1" 2>/dev/null; }
# The init's pid: itself, or (in a PID namespace) the child of unshare.
inner_pid() { local p=$1; cat "/proc/$p/task/$p/children" 2>/dev/null | awk '{print $1}'; }

# Each scenario: NAME INIT DIR → prints "pass" or "FAIL: why".
s_exit_code() {
  ${init[$1]} sh -c 'exit 7' >/dev/null 2>&1; local rc=$?
  [ $rc -eq 7 ] && echo pass || echo "FAIL: exit $rc"
}
s_signal_status() {
  ${init[$1]} sh -c 'kill -USR1 $$' >/dev/null 2>&1; local rc=$?
  [ $rc -eq 138 ] && echo pass || echo "FAIL: exit $rc"
}
s_reap_pid1() {
  local d=$2
  unshare --pid --fork --mount-proc ${init[$1]} sh -c "
    sh -c 'sleep 0.2 & echo \$! > $d/orphan'; o=\$(cat $d/orphan); i=0
    while [ -e /proc/\$o ]; do i=\$((i+1)); [ \$i -gt 100 ] && exit 1; sleep 0.05; done" >/dev/null 2>&1
  local rc=$?
  [ $rc -eq 0 ] && echo pass || echo "FAIL: orphan not reaped (exit $rc)"
}
s_forward_usr1() {
  local d=$2
  ${init[$1]} sh -c "trap 'echo USR1 > $d/got' USR1; touch $d/ready; while :; do sleep 1 & wait \$!; done" >/dev/null 2>&1 &
  local p=$!
  wait_until 5 test -e "$d/ready"
  kill -USR1 $p
  if wait_until 5 test -e "$d/got"; then echo pass; else echo "FAIL: not forwarded"; fi
  kill -KILL $p 2>/dev/null; pkill -KILL -f "$d/" 2>/dev/null; wait $p 2>/dev/null
}
s_sigterm_nothing_left() {
  local d=$2
  ${init[$1]} sh -c "sleep 100 & echo \$! > $d/sleep; wait" >/dev/null 2>&1 &
  local p=$!
  wait_until 5 test -s "$d/sleep"; local s; s=$(cat "$d/sleep")
  kill -TERM $p
  if ! wait_until 10 exited $p; then echo "FAIL: did not exit"; kill -KILL $p; pkill -KILL -f "$d/"; return; fi
  wait $p; local rc=$?
  if alive "$s"; then echo "FAIL: exit $rc, sleep left running"; kill -KILL "$s"; return; fi
  [ $rc -eq 143 ] && echo pass || echo "FAIL: exit $rc"
}
s_stop_ignoring_program() {
  local d=$2
  ${init[$1]} sh -c "trap '' TERM; echo \$\$ > $d/pid; while :; do sleep 1; done" >/dev/null 2>&1 &
  local p=$!
  wait_until 5 test -s "$d/pid"; local c; c=$(cat "$d/pid")
  kill -TERM $p
  if wait_until 10 exited $p; then
    wait $p; local rc=$?
    if alive "$c"; then echo "FAIL: program left running"; kill -KILL "$c"; else echo "pass (exit $rc)"; fi
  else
    echo "FAIL: still running 10 s after SIGTERM"
    kill -KILL $p "$c" 2>/dev/null; pkill -KILL -f "$d/" 2>/dev/null
  fi
  wait $p 2>/dev/null
}
s_daemon_killed() {
  local d=$2
  ${init[$1]} sh -c "setsid sh -c \"trap '' TERM; echo \\\$\\\$ > $d/daemon; while :; do sleep 1; done\" & sleep 100 & wait" >/dev/null 2>&1 &
  local p=$!
  wait_until 5 test -s "$d/daemon"; local g; g=$(cat "$d/daemon")
  kill -TERM $p
  wait_until 15 exited $p; wait $p 2>/dev/null
  if alive "$g"; then echo "FAIL: daemonized grandchild left running"; kill -KILL "$g"; pkill -KILL -f "$d/"; else echo pass; fi
}
s_pid1_sigterm() {
  local d=$2
  unshare --pid --fork --mount-proc ${init[$1]} sh -c "touch $d/ready; sleep 100 & wait" >/dev/null 2>&1 &
  local u=$!
  wait_until 5 test -e "$d/ready"
  local p; p=$(inner_pid $u)
  kill -TERM "$p"
  if wait_until 10 exited $u; then wait $u; local rc=$?; [ $rc -eq 143 ] && echo pass || echo "FAIL: exit $rc"; else echo "FAIL: did not exit"; kill -KILL $u; fi
}
s_pre_stop_hook() {
  local d=$2
  if [ "$1" != podkit ]; then echo "FAIL: no such feature"; return; fi
  $podkit run --admin 127.0.0.1:0 --log-level error --pre-stop-exec "sh -c 'echo hook >> $d/order'" -- \
    sh -c "trap 'echo TERM >> $d/order; exit 0' TERM; touch $d/ready; while :; do sleep 1 & wait \$!; done" >/dev/null 2>&1 &
  local p=$!
  wait_until 5 test -e "$d/ready"; kill -TERM $p; wait $p
  [ "$(tr '\n' ' ' < "$d/order")" = "hook TERM " ] && echo pass || echo "FAIL: order $(cat "$d/order")"
}

scenarios=(
  "exit_code|exit status passes through (exit 7 → 7)"
  "signal_status|killed by a signal → 128+N (SIGUSR1 → 138)"
  "reap_pid1|as PID 1: reaps an orphaned grandchild"
  "forward_usr1|forwards SIGUSR1 to the program"
  "pid1_sigterm|as PID 1: SIGTERM stops the program, exit 143"
  "sigterm_nothing_left|SIGTERM to \`sh -c 'sleep 100 & wait'\`: exit 143, sleep not left running"
  "stop_ignoring_program|a program that ignores SIGTERM is stopped (grace, then SIGKILL)"
  "daemon_killed|a daemonized grandchild (setsid, ignores SIGTERM) does not outlive the init"
  "pre_stop_hook|pre-stop hook runs before the stop signal"
)

printf '| scenario | tini | dumb-init | podkit run |\n|---|---|---|---|\n'
declare -A passes=()
for entry in "${scenarios[@]}"; do
  fn=${entry%%|*}; label=${entry#*|}
  row="| $label |"
  for i in "${inits[@]}"; do
    d="$work/$fn-$i"; mkdir -p "$d"
    r=$("s_$fn" "$i" "$d")
    [[ $r == pass* ]] && passes[$i]=$(( ${passes[$i]:-0} + 1 ))
    row+=" $r |"
  done
  echo "$row"
done
printf '| **passed** | %s/%s | %s/%s | %s/%s |\n' \
  "${passes[tini]:-0}" ${#scenarios[@]} "${passes[dumb-init]:-0}" ${#scenarios[@]} "${passes[podkit]:-0}" ${#scenarios[@]}

# Footprint: the init's own resident memory while it wraps `sleep 1000` (kB; anonymous + file).
printf '\n| idle footprint of the init itself (`%s -- sleep 1000`) | tini | dumb-init | podkit run |\n|---|---|---|---|\n' "INIT"
row="| VmRSS (RssAnon + RssFile), kB |"
for i in "${inits[@]}"; do
  ${init[$i]} sleep 1000 >/dev/null 2>/dev/null &
  p=$!
  wait_until 5 test -n "$(cat /proc/$p/task/$p/children 2>/dev/null)"
  rss=$(awk '/^VmRSS/{r=$2} /^RssAnon/{a=$2} /^RssFile/{f=$2} END{printf "%s (%s + %s)", r, a, f}' /proc/$p/status)
  row+=" $rss |"
  { pkill -KILL -P "$p"; kill -KILL "$p"; wait "$p"; } 2>/dev/null
done
echo "$row"
