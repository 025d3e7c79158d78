#!/usr/bin/env bash
# Scale-in under load (issue 25): two build servers behind upstream's
# `sccache-dist scheduler`, the real sccache 0.19 client compiling slow C units
# with -j 6 (the scheduler's capacity for two 2-CPU servers), and SIGTERM to one
# of the servers SCALE_IN_AFTER (1) second after the scheduler placed its first job
# there, as an autoscaler removing a server does. Per run: compiles that fell back
# to local (the client's stats: not distributed), of them those the farm had no
# room for ("Insufficient capacity": the farm is smaller now) and the rest (lost
# to the drain: refused or failed on the stopped server); failed compiles (none
# allowed), every object byte-identical to local gcc's, the build's wall time, and
# how long the stopped server took to exit.
#
#   scripts/scale_in.sh --check   # one run of kiln with its default drain_mode;
#                                 # fails beyond 1 local fallback (interop.sh's
#                                 # scale_in case, in CI)
#   SCALE_IN_ROUNDS=3 SCALE_IN_TARGETS=kiln,kiln-refuse,upstream scripts/scale_in.sh
#
# Targets: kiln (drain_mode = "handoff", the default), kiln-refuse, upstream
# (`sccache-dist server` 0.19.0 on the same server.toml). Runs interleave over rounds (each round: each
# target in turn), every run with a new scheduler, new data dirs and an empty
# client cache. As root, on 127.0.0.1 only; every wait is bounded.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/kiln-scale-in.XXXXXX)
# shellcheck source=scripts/common.sh
source "$ROOT/scripts/common.sh"
trap cleanup EXIT

CHECK=""
[ "${1:-}" = --check ] && CHECK=1
ROUNDS=${SCALE_IN_ROUNDS:-3}
TARGETS=${SCALE_IN_TARGETS:-kiln,kiln-refuse,upstream}
[ -n "$CHECK" ] && { ROUNDS=1; TARGETS=kiln; }
AFTER=${SCALE_IN_AFTER:-1}
UNITS=${SCALE_IN_UNITS:-12}
JOBS=6
OUT=$ROOT/target/scale-in
# The stopped server must be gone within this (kiln's drain_timeout_secs + 30 s).
EXIT_LIMIT_SECS=90

# Units slow enough (about 2 s each alone) that a build is under way when the
# SIGTERM comes; their local objects are the reference.
make_units() {
  local dir=$WORK/project k i
  mkdir -p "$dir/src" "$dir/local"
  for i in $(seq 1 "$UNITS"); do
    {
      echo "int slow${i}_seed = $i;"
      for k in $(seq 1 1500); do echo "int f${i}_$k(int x) { return (x * $k + slow${i}_seed) ^ (x >> ($k % 7)); }"; done
    } >"$dir/src/slow$i.c"
  done
  (cd "$dir" && seq 1 "$UNITS" | xargs -P "$(nproc)" -I{} gcc -O2 -c src/slow{}.c -o local/slow{}.o)
  PROJECT=$dir
}

# start_server <target> <name> <port>: one server; its pid in SERVER_PID.
start_server() {
  local target=$1 name=$2 port=$3 cfg
  mkdir -p "$WORK/$name"
  if [ "$target" = upstream ]; then
    cfg=$(server_config "$name" "$port" overlay)
    SCCACHE_NO_DAEMON=1 SCCACHE_LOG=info sccache-dist server --config "$cfg" >"$WORK/$name.log" 2>&1 &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    return
  fi
  cfg=$(kiln_config "$name" "$port" overlay)
  [ "$target" = kiln-refuse ] && echo 'drain_mode = "refuse"' >>"$cfg"
  "$KILN" serve --config "$cfg" >"$WORK/$name.out" 2>"$WORK/$name.log" &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  wait_for "$name to listen" grep -q "kiln listening on" "$WORK/$name.out"
}

# run <target> <round>: one build, one server stopped during it; a row of results.tsv.
run() {
  local target=$1 round=$2 name="$1-r$2" t0 build="" stopped_at exit_secs="" pid_b total fallbacks errors capacity
  start_scheduler
  start_server "$target" "$name-a" 10501
  start_server "$target" "$name-b" 10502; pid_b=$SERVER_PID
  wait_servers 2
  start_client "$ROOT/examples/sccache/client.toml"
  mkdir -p "$PROJECT/out-$name"
  t0=$(now)
  (cd "$PROJECT" && seq 1 "$UNITS" | xargs -P "$JOBS" -I{} \
    timeout 300 sccache gcc -O2 -c src/slow{}.c -o "out-$name/slow{}.o") >"$WORK/$name-build.log" 2>&1 &
  local build_pid=$!
  wait_for "a job placed on $name-b" grep -q "assigned to server ServerId(127.0.0.1:10502)" "$WORK/scheduler.log"
  sleep "$AFTER"
  kill -TERM "$pid_b"
  stopped_at=$(now)
  # Both bounded: the server by EXIT_LIMIT_SECS, the build by its compiles' timeouts.
  local ticks=0
  while kill -0 "$pid_b" 2>/dev/null || kill -0 "$build_pid" 2>/dev/null; do
    [ -n "$exit_secs" ] || kill -0 "$pid_b" 2>/dev/null || exit_secs=$(elapsed "$stopped_at")
    [ -n "$build" ] || kill -0 "$build_pid" 2>/dev/null || build=$(elapsed "$t0")
    ticks=$(( ticks + 1 ))
    [ -n "$exit_secs" ] || [ "$ticks" -le $(( EXIT_LIMIT_SECS * 5 )) ] \
      || die "$name: the stopped server did not exit within $EXIT_LIMIT_SECS s"
    sleep 0.2
  done
  [ -n "$exit_secs" ] || exit_secs=$(elapsed "$stopped_at")
  [ -n "$build" ] || build=$(elapsed "$t0")
  wait "$pid_b" 2>/dev/null || true
  wait "$build_pid" || die "$name: a compile failed (see $WORK/$name-build.log)"
  for i in $(seq 1 "$UNITS"); do
    cmp -s "$PROJECT/out-$name/slow$i.o" "$PROJECT/local/slow$i.o" || die "$name: slow$i.o differs from local gcc's"
  done
  total=$(dist_total)
  errors=$(dist_errors)
  fallbacks=$(( UNITS - total ))
  capacity=$(grep -c "falling back to local: Insufficient capacity" "$WORK/sccache-client.log" || true)
  stop_all
  # The run's logs, for whoever wants to see where a fallback came from.
  mkdir -p "$OUT/logs/$name" && cp "$WORK"/*.log "$WORK/$name"-*.out "$OUT/logs/$name/" 2>/dev/null || true
  : >"$WORK/sccache-client.log"
  # Upstream's server leaves its build dirs' mounts behind when killed: not ours to judge.
  if [ "$target" != upstream ] && grep -q " $WORK/$name" /proc/mounts; then die "$name: kiln left mounts under $WORK/$name"; fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$round" "$fallbacks" "$capacity" "$errors" "$build" "$exit_secs" \
    | tee -a "$OUT/results.tsv"
  rm -rf "${PROJECT:?}/out-$name"
}

[ "$(id -u)" -eq 0 ] || die "run as root: the servers' overlay builders need it"
install_sccache
build_kiln
make_units
mkdir -p "$OUT"
: >"$OUT/results.tsv"
rm -rf "$OUT/logs"
for round in $(seq 1 "$ROUNDS"); do
  for target in ${TARGETS//,/ }; do
    log "round $round: $target, SIGTERM to one of two servers ${AFTER} s into a -j $JOBS build of $UNITS units"
    run "$target" "$round"
  done
done

if [ -n "$CHECK" ]; then
  read -r _ _ fallbacks capacity _ build exit_secs <"$OUT/results.tsv"
  echo "scale_in: $fallbacks of $UNITS compiles fell back to local ($capacity for want of capacity); build $build s; the stopped kiln exited after $exit_secs s"
  [ "$fallbacks" -le 1 ] || die "scale_in: $fallbacks compiles fell back to local when one kiln of two was stopped (at most 1 allowed)"
  exit 0
fi

python3 - "$OUT/results.tsv" "$TARGETS" "$UNITS" <<'EOF'
import statistics, sys
rows = [line.split("\t") for line in open(sys.argv[1]).read().splitlines()]
targets, units = sys.argv[2].split(","), sys.argv[3]
print(f"\nScale-in: one of two servers stopped mid-build ({units} compiles, -j 6); "
      f"{len({r[1] for r in rows})} rounds; median [min–max]\n")
print("| target | compiles fell back to local, per round | of them, farm full | lost to the drain | build, s | stopped server exited after, s |")
print("|---|---|---|---|---|---|")
for t in targets:
    rs = [r for r in rows if r[0] == t]
    def fig(col):
        v = [float(r[col]) for r in rs if r[col] != "-"]
        return f"{statistics.median(v):.1f} [{min(v):.1f}–{max(v):.1f}]" if v else "-"
    lost = " ".join(str(int(r[2]) - int(r[3])) for r in rs)
    print(f"| {t} | {' '.join(r[2] for r in rs)} | {' '.join(r[3] for r in rs)} | {lost} | {fig(5)} | {fig(6)} |")
EOF
