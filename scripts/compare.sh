#!/usr/bin/env bash
# One run, one machine: the same load against kiln and against upstream's
# sccache-dist server, behind the same upstream scheduler, plus bare gcc.
#
#   scripts/compare.sh                      # as root, 127.0.0.1 only
#   COMPARE_JOBS=400 COMPARE_MIX=tiny,medium scripts/compare.sh
#
# Targets, each in turn on 127.0.0.1:10501 behind sccache-dist scheduler:
#   kiln-overlay     kiln serve, [builder] type = "overlay"
#   kiln-docker      kiln serve, [builder] type = "docker"      (if a daemon answers)
#   upstream-overlay sccache-dist server 0.19.0, overlay builder
#   upstream-docker  sccache-dist server 0.19.0, docker builder  (if a daemon answers;
#                    its base image aidanhs/busybox is built locally from busybox-static)
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
MIX=${COMPARE_MIX:-tiny}
CLIENTS_MANY=${COMPARE_CLIENTS:-$(( 2 * $(nproc) ))}
OUT=$ROOT/target/compare
TOKEN=change-me-client-token

[ "$(id -u)" -eq 0 ] || die "run as root: kiln and sccache-dist's overlay builder need it"
install_sccache
build_kiln --example loadgen
LOADGEN=$KILN_TARGET/examples/loadgen
mkdir -p "$OUT"
rm -f "$OUT"/*.json

# loadgen_runs <target> <server pid> [timeout secs]: the 1-client and the many-client run.
loadgen_runs() {
  local name=$1 pid=$2 limit=${3:-600} clients
  for clients in 1 "$CLIENTS_MANY"; do
    log "$name: $JOBS jobs ($MIX), $clients client(s)"
    timeout "$limit" "$LOADGEN" --scheduler http://127.0.0.1:10600 --client-token "$TOKEN" --clients "$clients" \
      --jobs "$JOBS" --mix "$MIX" --server-pid "$pid" --max-secs 600 --json >"$OUT/$name-c$clients.json" \
      2>"$WORK/$name-c$clients.loadgen.log" || {
        echo "$name with $clients client(s) did not complete: $(tail -n 3 "$WORK/$name-c$clients.loadgen.log")" >&2
        rm -f "$OUT/$name-c$clients.json"
        return 1
      }
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

run_kiln kiln-overlay overlay
if docker_answers; then run_kiln kiln-docker docker; else log "kiln-docker: SKIPPED (no docker daemon)"; fi
run_upstream upstream-overlay overlay
if docker_answers && busybox_image; then
  # 0.19's docker builder can hang on its first job (mozilla/sccache#2805): bounded.
  run_upstream upstream-docker docker 180
else
  log "upstream-docker: SKIPPED (no docker daemon or no busybox image)"
fi

log "results ($OUT)"
python3 - "$OUT" "$CLIENTS_MANY" <<'EOF'
import json, os, sys
out, many = sys.argv[1], sys.argv[2]
targets = ["kiln-overlay", "kiln-docker", "upstream-overlay", "upstream-docker"]
def load(name, clients):
    path = os.path.join(out, f"{name}-c{clients}.json")
    return json.load(open(path)) if os.path.exists(path) else None
base = load("upstream-overlay", 1)
base_overhead = base and base["kinds"][0]["overhead_p50_ms"]
print(f"| target | p50 ms (1 client) | p95 ms | bare gcc p50 ms | overhead p50 ms | overhead vs upstream overlay | jobs/s ({many} clients) | local jobs/s | throughput vs local | server RSS after |")
print("|---|---|---|---|---|---|---|---|---|---|")
for name in targets:
    one, lots = load(name, 1), load(name, many)
    if not one:
        print(f"| {name} | did not run or did not complete | | | | | | | | |")
        continue
    k = one["kinds"][0]
    ratio = f"{k['overhead_p50_ms'] / base_overhead:.2f}" if base_overhead else "n/a"
    rss = (lots or one).get("server_rss_kib_after")
    rss = f"{rss / 1024:.1f} MiB" if rss else "n/a"
    tput = f"{lots['jobs_per_sec']:.1f}" if lots else "n/a"
    local = f"{lots['local_jobs_per_sec']:.1f}" if lots and lots.get("local_jobs_per_sec") else "n/a"
    tr = f"{lots['throughput_ratio']:.2f}" if lots and lots.get("throughput_ratio") else "n/a"
    print(f"| {name} | {k['kiln']['p50_ms']:.1f} | {k['kiln']['p95_ms']:.1f} | {k['bare']['p50_ms']:.1f} | "
          f"{k['overhead_p50_ms']:.1f} | {ratio} | {tput} | {local} | {tr} | {rss} |")
EOF
