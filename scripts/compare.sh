#!/usr/bin/env bash
# One run, one machine: the same load against kiln and against upstream's
# sccache-dist server, behind the same upstream scheduler, plus bare gcc.
#
#   scripts/compare.sh                      # as root, 127.0.0.1 only
#   COMPARE_JOBS=400 COMPARE_MIX=tiny,medium scripts/compare.sh
#   COMPARE_ROUNDS=5 COMPARE_BASE=origin/main COMPARE_TARGETS=kiln-overlay,upstream-overlay \
#     scripts/compare.sh                    # A B A B ...: medians and spreads over rounds
#
# Targets run in rounds (3 by default: A B C D, A B C D, A B C D), each run measuring
# bare gcc itself, and every ratio is reported as its median [min–max] over rounds:
# this machine drifts by tens of percent within minutes.
#
# COMPARE_BASE builds that revision of kiln (a git worktree, its own target dir) and
# runs it as one more target, kiln-overlay-base, interleaved with the others in every
# round: a change's cost is measured against the code before it, in the same run.
#
# Targets, each in turn on 127.0.0.1:10501 behind sccache-dist scheduler:
#   kiln-overlay     kiln serve, [builder] type = "overlay"
#   kiln-docker      kiln serve, [builder] type = "docker"      (if a daemon answers)
#   upstream-overlay sccache-dist server 0.19.0, overlay builder
#   upstream-docker  sccache-dist server 0.19.0, docker builder  (if a daemon answers;
#                    its base image aidanhs/busybox is built locally from busybox-static)
#   kiln-overlay-mounts, kiln-overlay-base-mounts
#                    kiln (or its base) started in a mount namespace with
#                    COMPARE_MOUNTS (1000) extra mounts, as on a Kubernetes node
# For each, examples/loadgen.rs runs 1 client (latency, overhead over bare gcc) and
# 2×cores clients (throughput, against the same compiles run locally at the same
# parallelism). bare gcc (the physical limit) is measured by loadgen in each run.
# Prints a markdown table with ratios; raw JSON stays in target/compare/.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/kiln-compare.XXXXXX)
# shellcheck source=scripts/common.sh
source "$ROOT/scripts/common.sh"
trap cleanup EXIT

JOBS=${COMPARE_JOBS:-200}
ROUNDS=${COMPARE_ROUNDS:-3}
BASE=${COMPARE_BASE:-}
TARGETS=${COMPARE_TARGETS:-kiln-overlay,kiln-docker,upstream-overlay,upstream-docker}
MIX=${COMPARE_MIX:-tiny}
CLIENTS_MANY=${COMPARE_CLIENTS:-$(( 2 * $(nproc) ))}
OUT=$ROOT/target/compare
TOKEN=change-me-client-token
MOUNTS=${COMPARE_MOUNTS:-1000}

[ "$(id -u)" -eq 0 ] || die "run as root: kiln and sccache-dist's overlay builder need it"
install_sccache
build_kiln --example loadgen
LOADGEN=$KILN_TARGET/examples/loadgen
mkdir -p "$OUT"
rm -f "$OUT"/*.json
KILN_CURRENT=$KILN
if [ -n "$BASE" ]; then
  build_base_kiln "$BASE"
  [[ ,$TARGETS, == *,kiln-overlay-base,* ]] || TARGETS="kiln-overlay-base,$TARGETS"
fi
ROUND=1

# server_cgroup <target> <pid>: moves the server into a cgroup of its own and prints
# it, so its CPU time counts its sandboxes and compiles however they are reaped
# (bubblewrap's pid 1 reaps a job's processes; rusage alone loses them).
server_cgroup() {
  local base
  if [ -f /sys/fs/cgroup/cpuacct/cpuacct.usage ]; then base=/sys/fs/cgroup/cpuacct
  elif [ -f /sys/fs/cgroup/cgroup.controllers ]; then base=/sys/fs/cgroup
  else return 0; fi
  local dir=$base/kiln-compare-$1-r$ROUND
  mkdir -p "$dir" && echo "$2" >"$dir/cgroup.procs" && echo "$dir"
}

# loadgen_runs <target> <server pid> [timeout secs]: the 1-client and the many-client run.
loadgen_runs() {
  local name=$1 pid=$2 limit=${3:-600} clients cgroup
  cgroup=$(server_cgroup "$name" "$pid" || true)
  for clients in 1 "$CLIENTS_MANY"; do
    log "$name: $JOBS jobs ($MIX), $clients client(s)"
    timeout "$limit" "$LOADGEN" --scheduler http://127.0.0.1:10600 --client-token "$TOKEN" --clients "$clients" \
      --jobs "$JOBS" --mix "$MIX" --server-pid "$pid" ${cgroup:+--server-cgroup "$cgroup"} --max-secs 600 --json \
      >"$OUT/$name-r$ROUND-c$clients.json" \
      2>"$WORK/$name-c$clients.loadgen.log" || {
        echo "$name with $clients client(s) did not complete: $(tail -n 3 "$WORK/$name-c$clients.loadgen.log")" >&2
        rm -f "$OUT/$name-r$ROUND-c$clients.json"
        return 1
      }
    # kiln's last 50 jobs, with their phase timings, after the 1-client run (from its
    # operator port: bind + 100).
    if [ "$clients" = 1 ] && [[ $name == kiln-* ]]; then
      curl -sf http://127.0.0.1:10601/api/v1/kiln/status >"$OUT/$name-r$ROUND-c1.status.json" \
        || rm -f "$OUT/$name-r$ROUND-c1.status.json"
    fi
  done
}

# run_kiln <target> <overlay|docker>
run_kiln() {
  start_scheduler
  start_kiln "$1" "$(kiln_config "$1" 10501 "$2")"
  wait_servers 1
  loadgen_runs "$1" "${PIDS[-1]}" || true
  stop_all
}

# run_upstream <target> <overlay|docker> [timeout secs]
run_upstream() {
  start_scheduler
  local cfg; cfg=$(server_config "$1" 10501 "$2")
  mkdir -p "$WORK/$1" # upstream does not create its parents
  SCCACHE_NO_DAEMON=1 SCCACHE_LOG=info sccache-dist server --config "$cfg" >"$WORK/$1.log" 2>&1 &
  PIDS+=($!)
  wait_servers 1
  loadgen_runs "$1" "${PIDS[-1]}" "${3:-600}" || true
  stop_all
}

# Upstream's docker builder starts every container from aidanhs/busybox, which
# cannot be pulled here: make it from Debian's static busybox.
busybox_image() {
  docker image inspect aidanhs/busybox >/dev/null 2>&1 && return 0
  command -v busybox >/dev/null || apt-get install -y -qq busybox-static >/dev/null
  local dir=$WORK/busybox
  mkdir -p "$dir"
  cp "$(command -v busybox)" "$dir/busybox"
  tar -C "$dir" -c busybox | docker import - aidanhs/busybox >/dev/null
}

# run_target <target>: one run of one target, if it can run here.
run_target() {
  case $1 in
    kiln-overlay) KILN=$KILN_CURRENT run_kiln kiln-overlay overlay ;;
    kiln-overlay-base) KILN=$KILN_BASE run_kiln kiln-overlay-base overlay ;;
    kiln-overlay-mounts) KILN=$KILN_CURRENT KILN_WRAP="with_mounts $MOUNTS" run_kiln kiln-overlay-mounts overlay ;;
    kiln-overlay-base-mounts)
      KILN=$KILN_BASE KILN_WRAP="with_mounts $MOUNTS" run_kiln kiln-overlay-base-mounts overlay ;;
    kiln-docker)
      if docker_answers; then KILN=$KILN_CURRENT run_kiln kiln-docker docker; else log "kiln-docker: SKIPPED (no docker daemon)"; fi ;;
    upstream-overlay) run_upstream upstream-overlay overlay ;;
    upstream-docker)
      if docker_answers && busybox_image; then
        # 0.19's docker builder can hang on its first job (mozilla/sccache#2805): bounded.
        run_upstream upstream-docker docker 180
      else
        log "upstream-docker: SKIPPED (no docker daemon or no busybox image)"
      fi ;;
    *) die "unknown target $1" ;;
  esac
}

for ROUND in $(seq 1 "$ROUNDS"); do
  for target in ${TARGETS//,/ }; do
    log "round $ROUND/$ROUNDS: $target"
    run_target "$target"
  done
done

# The servers are gone: their cgroups are empty.
rmdir /sys/fs/cgroup/cpuacct/kiln-compare-* /sys/fs/cgroup/kiln-compare-* 2>/dev/null || true

log "results ($OUT)"
python3 - "$OUT" "$CLIENTS_MANY" "$ROUNDS" "$TARGETS" <<'EOF'
import json, os, statistics, sys
out, many, rounds, targets = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].split(",")
def load(name, r, clients):
    path = os.path.join(out, f"{name}-r{r}-c{clients}.json")
    return json.load(open(path)) if os.path.exists(path) else None
def spread(values, fmt="{:.1f}"):
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    med = fmt.format(statistics.median(values))
    return med if len(values) == 1 else f"{med} [{fmt.format(min(values))}–{fmt.format(max(values))}]"
def per_round(name, f, clients=1):
    return [f(d) if d else None for d in (load(name, r, clients) for r in range(1, rounds + 1))]
overhead = lambda d: d["kinds"][0]["overhead_p50_ms"]
print(f"{rounds} round(s), targets interleaved in each; median [min–max] over rounds.\n")
print(f"| target | p50 ms (1 client) | bare gcc p50 ms | overhead p50 ms | overhead vs upstream overlay | server CPU/job beyond the compile, ms | jobs/s ({many} clients) | throughput vs local | server RSS after |")
print("|---|---|---|---|---|---|---|---|---|")
base = per_round("upstream-overlay", overhead)
for name in targets:
    if not any(load(name, r, 1) for r in range(1, rounds + 1)):
        print(f"| {name} | did not run or did not complete | | | | | | | |")
        continue
    mine = per_round(name, overhead)
    ratios = [m / b for m, b in zip(mine, base) if m is not None and b]
    print(f"| {name} | {spread(per_round(name, lambda d: d['kinds'][0]['kiln']['p50_ms']))} "
          f"| {spread(per_round(name, lambda d: d['kinds'][0]['bare']['p50_ms']))} | {spread(mine)} "
          f"| {spread(ratios, '{:.2f}')} "
          f"| {spread(per_round(name, lambda d: d.get('server_cpu_per_job_beyond_compile_ms')))} "
          f"| {spread(per_round(name, lambda d: d['jobs_per_sec'], many))} "
          f"| {spread(per_round(name, lambda d: d.get('throughput_ratio'), many), '{:.2f}')} "
          f"| {spread(per_round(name, lambda d: (d.get('server_rss_kib_after') or 0) / 1024, many))} MiB |")
print("\nserver CPU/job is that of the server's own cgroup: a docker job's processes run in the")
print("container's cgroup, so for kiln-docker it leaves the compile out and is not comparable.")

# A host with many mounts against the same kiln without them (issue 24): job
# latency percentiles at 1 and many clients, as ratios per round.
pairs = [(t, t[: -len("-mounts")]) for t in targets if t.endswith("-mounts") and t[: -len("-mounts")] in targets]
if pairs:
    print("\nWith COMPARE_MOUNTS extra mounts on the host, against none: job latency (ms) and its")
    print("ratio to the same kiln's without them in the same round; median [min–max] over rounds.\n")
    print("| target | clients | p50 ms | p50 ratio | p99 ms | p99 ratio |")
    print("|---|---|---|---|---|---|")
    for name, plain in pairs:
        for clients in (1, many):
            cells = []
            for pct in ("p50_ms", "p99_ms"):
                f = lambda d: d["kinds"][0]["kiln"][pct]
                mine, theirs = per_round(name, f, clients), per_round(plain, f, clients)
                ratios = [m / t for m, t in zip(mine, theirs) if m is not None and t]
                cells += [spread(mine), spread(ratios, "{:.2f}")]
            print(f"| {name} | {clients} | " + " | ".join(cells) + " |")

def throughput(name, r):
    d = load(name, r, many)
    return d["jobs_per_sec"] if d else None
if "kiln-docker" in targets and "kiln-overlay" in targets:
    ratios = [d / o for d, o in ((throughput("kiln-docker", r), throughput("kiln-overlay", r)) for r in range(1, rounds + 1)) if d and o]
    print(f"\nkiln-docker / kiln-overlay throughput ({many} clients), per round: {spread(ratios, '{:.2f}')}")

# Where a kiln job's time goes: the median of each phase over the last 50 jobs of the
# 1-client run (kiln's status page; warm, the cold first job long gone).
PHASES = ["queue", "toolchain", "acquire", "inputs", "compile", "outputs", "cleanup"]
def phase_medians(name, r):
    path = os.path.join(out, f"{name}-r{r}-c1.status.json")
    if not os.path.exists(path):
        return None
    jobs = json.load(open(path)).get("recent_jobs") or []
    if not jobs:
        return None
    return {p: statistics.median(j["phases_ms"][p] for j in jobs) for p in PHASES}
kiln_targets = [t for t in targets if t.startswith("kiln-")]
if any(phase_medians(t, r) for t in kiln_targets for r in range(1, rounds + 1)):
    print("\nms per phase of a warm job, 1 client: median of kiln's last 50 jobs; median [min–max] over rounds.")
    print("inputs: unpacked into the sandbox (overlay), checked and packed into the agent's request")
    print("(docker); compile: the command's run (docker: the whole exchange with the container's")
    print("agent, inputs laid out and outputs read included); outputs: read and compressed.\n")
    print("| target | " + " | ".join(PHASES) + " |")
    print("|---|" + "---|" * len(PHASES))
    for name in kiln_targets:
        medians = [phase_medians(name, r) for r in range(1, rounds + 1)]
        cells = [spread([m[p] if m else None for m in medians], "{:.2f}") for p in PHASES]
        print(f"| {name} | " + " | ".join(cells) + " |")
EOF
