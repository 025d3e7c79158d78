#!/usr/bin/env bash
# A cold build on a farm of three servers (issue 23): time to finish, kiln against
# upstream, with the real sccache 0.19 client and upstream's `sccache-dist scheduler`.
#
#   scripts/cold_farm_bench.sh             # as root
#   COLD_ROUNDS=5 COLD_LINKS=shaped COLD_TARGETS=kiln-dir,upstream scripts/cold_farm_bench.sh
#
# Targets, each three servers behind one scheduler, every run with new data dirs:
#   kiln-dir      three `kiln serve` sharing [kiln.toolchains] store = a new directory
#   upstream      three `sccache-dist server` 0.19.0
#   kiln-nostore  three `kiln serve`, no store (on demand: each kiln asks once)
#   kiln-base     kiln-dir with kiln built at COLD_BASE (a git revision, e.g. the one
#                 before issue 23: COLD_BASE=5023c8f COLD_TARGETS=kiln-dir,upstream,kiln-base);
#                 loopback only
# Links (the client's; everything else talks over loopback, unshaped):
#   shaped    the client (its sccache daemon, gcc, cargo) runs in a network namespace
#             made here, joined to the host by a veth pair shaped to COLD_RATE
#             (default 100mbit, tbf, both directions); servers and scheduler listen
#             on the veth's host address
#   loopback  the client on the host, to the same addresses (the kernel routes them
#             over lo)
# A run, from cold: new server data dirs, an empty store, a new client cache; the
# 24-unit C project (as scripts/interop.sh makes it) with 9 compiles at once, then
# an 8-crate Cargo workspace with `cargo build -j 9`, no crate built first. Every
# compile must be distributed on kiln (none falls back to local; upstream's falls
# back are counted, see run). The client's toolchain
# packages (gcc's and rustc's archives, in SCCACHE_DIST_CLIENT_CACHE_DIR) are made
# once, in an unrecorded warm-up run, as they are on any client that ever built:
# what is timed is the farm's cold start, not the client's packaging.
# Runs interleave over rounds (per round: each link, each target in turn); the
# figures are median [min–max] over rounds, ratios against upstream in the same
# round and link. On the shaped link, "client sent" is the bytes the host's end of
# the veth received during the run.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/kiln-cold-bench.XXXXXX)
# shellcheck source=scripts/common.sh
source "$ROOT/scripts/common.sh"

ROUNDS=${COLD_ROUNDS:-3}
TARGETS=${COLD_TARGETS:-kiln-dir,upstream}
LINKS=${COLD_LINKS:-shaped,loopback}
RATE=${COLD_RATE:-100mbit}
JOBS=9
FILES=24
SERVERS=3
# Every run is bounded: a compile by `timeout`, the whole run by this.
RUN_LIMIT_SECS=${COLD_RUN_LIMIT_SECS:-900}
OUT=$ROOT/target/cold-farm-bench

# The namespace and the veth pair: made here, removed on exit.
NS=kiln-cold-$$
VETH_HOST=kcold$$h
VETH_NS=kcold$$n
HOST_IP=10.231.0.1
NS_IP=10.231.0.2
NET_UP=""

teardown_net() {
  [ -n "$NET_UP" ] || return 0
  # What still runs in the namespace was started here (the client daemon).
  ip netns exec "$NS" env SCCACHE_SERVER_PORT=4226 sccache --stop-server >/dev/null 2>&1 || true
  for pid in $(ip netns pids "$NS" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
  ip link del "$VETH_HOST" 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  NET_UP=""
}
on_exit() {
  local status=$?
  teardown_net
  (exit "$status")
  cleanup
}
trap on_exit EXIT

setup_net() {
  ip netns add "$NS"
  NET_UP=1
  ip link add "$VETH_HOST" type veth peer name "$VETH_NS"
  ip link set "$VETH_NS" netns "$NS"
  ip addr add "$HOST_IP/24" dev "$VETH_HOST"
  ip link set "$VETH_HOST" up
  ip netns exec "$NS" ip addr add "$NS_IP/24" dev "$VETH_NS"
  ip netns exec "$NS" ip link set "$VETH_NS" up
  ip netns exec "$NS" ip link set lo up
  # Both directions at RATE: uploads leave the namespace's end, outputs the host's.
  tc qdisc add dev "$VETH_HOST" root tbf rate "$RATE" burst 256kb latency 50ms
  ip netns exec "$NS" tc qdisc add dev "$VETH_NS" root tbf rate "$RATE" burst 256kb latency 50ms
  # Reachable: a connect to a closed port is refused (no ping on this machine).
  wait_for "the veth" ip netns exec "$NS" python3 -c "
import socket
try: socket.create_connection(('$HOST_IP', 9), timeout=1)
except ConnectionRefusedError: pass"
}

# --- the projects: make_c_project and make_rust_parts (scripts/common.sh) ----------

# --- the farm ------------------------------------------------------------------------
start_bench_scheduler() {
  sed "s/127.0.0.1:10600/$HOST_IP:10600/" "$ROOT/examples/sccache/scheduler.toml" >"$WORK/scheduler.toml"
  SCCACHE_NO_DAEMON=1 SCCACHE_LOG=info sccache-dist scheduler --config "$WORK/scheduler.toml" >"$WORK/scheduler.log" 2>&1 &
  PIDS+=($!); FARM_PIDS+=($!)
  wait_for "the scheduler" curl -sf "http://$HOST_IP:10600/api/v1/scheduler/status"
}

# scheduler_sees <n>: the scheduler reports n servers (bounded: 20 s).
scheduler_sees() {
  wait_for "$1 server(s) at the scheduler" bash -c \
    "curl -sf -H 'Accept: application/json' http://$HOST_IP:10600/api/v1/scheduler/status | grep -q '\"num_servers\":$1'"
}

# start_farm <target> <run>: a new scheduler (so that "3 servers" means these
# three, not the last run's) and SERVERS servers on HOST_IP:10501.., new dirs under $WORK/<run>.
start_farm() {
  local target=$1 run=$2 k cfg name
  FARM_PIDS=()
  start_bench_scheduler
  mkdir -p "$WORK/$run/store"
  for k in $(seq 1 "$SERVERS"); do
    name=$run/s$k
    mkdir -p "$WORK/$name"
    if [ "$target" = upstream ]; then
      cfg=$(server_config "$name" $(( 10500 + k )) overlay)
    else
      cfg=$(kiln_config "$name" $(( 10500 + k )) overlay)
    fi
    sed -i "s/127.0.0.1/$HOST_IP/g" "$cfg"
    case $target in kiln-dir | kiln-base) printf '[kiln.toolchains]\nstore = "%s"\n' "$WORK/$run/store" >>"$cfg" ;; esac
    if [ "$target" = upstream ]; then
      SCCACHE_NO_DAEMON=1 SCCACHE_LOG=info sccache-dist server --config "$cfg" >"$WORK/$name.log" 2>&1 &
      PIDS+=($!); FARM_PIDS+=($!)
      wait_for "$name to listen" curl -sk -o /dev/null "https://$HOST_IP:$(( 10500 + k ))/"
    else
      "$([ "$target" = kiln-base ] && echo "$KILN_BASE" || echo "$KILN")" serve --config "$cfg" >"$WORK/$name.out" 2>"$WORK/$name.log" &
      PIDS+=($!); FARM_PIDS+=($!)
      wait_for "$name to listen" grep -q "kiln listening on" "$WORK/$name.out"
    fi
  done
  scheduler_sees "$SERVERS"
}

stop_farm() {
  local pid
  for pid in "${FARM_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${FARM_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}

# farm_uploads: kiln_toolchain_uploads_total summed over the kilns ("-" for upstream).
farm_uploads() {
  local sum=0 k
  for k in $(seq 1 "$SERVERS"); do
    sum=$(( sum + $(curl -sf "http://127.0.0.1:$(( 10600 + k ))/metrics" | awk '$1 == "kiln_toolchain_uploads_total" { print $2 }') ))
  done
  echo "$sum"
}

# --- the client ------------------------------------------------------------------------
# on_client <link> <cmd...>: in the namespace on the shaped link, here on loopback.
on_client() {
  local link=$1; shift
  if [ "$link" = shaped ]; then ip netns exec "$NS" "$@"; else "$@"; fi
}

client_start() {
  local link=$1
  client_stop
  export SCCACHE_CONF=$WORK/client.toml SCCACHE_DIR=$WORK/client-cache.$RANDOM SCCACHE_ERROR_LOG=$WORK/sccache-client.log
  export SCCACHE_LOG=${SCCACHE_LOG:-info} SCCACHE_SERVER_PORT=4226 SCCACHE_IDLE_TIMEOUT=0
  export SCCACHE_DIST_CLIENT_CACHE_DIR=$WORK/client-toolchains
  on_client "$link" sccache --start-server >/dev/null
}
client_stop() {
  sccache --stop-server >/dev/null 2>&1 || true
  [ -z "$NET_UP" ] || ip netns exec "$NS" sccache --stop-server >/dev/null 2>&1 || true
}

# dist_counts <link>: "<distributed> <fell back>" from the client's stats.
dist_counts() {
  on_client "$1" sccache --show-stats --stats-format=json \
    | python3 -c 'import json,sys; s=json.load(sys.stdin)["stats"]; print(sum(s["dist_compiles"].values()), s["dist_errors"])'
}

# run <target> <link> <round>: one cold build; appends a row to results.tsv.
run() {
  local target=$1 link=$2 round=$3 run="$1-$2-r$3" t0 c_secs rust_secs total_secs rx0=0 sent=- counts uploads=- k
  start_farm "$target" "$run"
  client_start "$link"
  [ "$link" = shaped ] && rx0=$(cat "/sys/class/net/$VETH_HOST/statistics/rx_bytes")
  mkdir -p "$C_PROJECT/out-$run"
  t0=$(now)
  (cd "$C_PROJECT" && seq 1 "$FILES" | on_client "$link" timeout "$RUN_LIMIT_SECS" xargs -P "$JOBS" -I{} \
    timeout 300 sccache gcc -O2 -Iinclude -c src/unit{}.c -o "out-$run/unit{}.o") || die "$run: the C build failed"
  c_secs=$(elapsed "$t0")
  (cd "$RUST_PARTS" && on_client "$link" env RUSTC_WRAPPER=sccache CARGO_TARGET_DIR="$WORK/$run/target" \
    timeout "$RUN_LIMIT_SECS" cargo build --release --offline -q -j "$JOBS") || die "$run: the Rust build failed"
  total_secs=$(elapsed "$t0")
  rust_secs=$(python3 -c "print(f'{$total_secs - $c_secs:.1f}')")
  [ "$link" = shaped ] && sent=$(( $(cat "/sys/class/net/$VETH_HOST/statistics/rx_bytes") - rx0 ))
  counts=$(dist_counts "$link")
  # kiln must distribute every compile. Upstream's server may not: its assign_job
  # waits for the toolchain cache's lock, which submit_toolchain holds for a whole
  # upload (sccache-dist main.rs, handle_submit_toolchain), and the scheduler gives
  # up on it after reqwest's default 30 s; that job compiles locally. Recorded.
  [ "$target" = upstream ] || [ "$counts" = "$(( FILES + 8 )) 0" ] \
    || die "$run: distributed / fell back = $counts, not $(( FILES + 8 )) / 0"
  for k in $(seq 1 "$FILES"); do
    cmp -s "$C_PROJECT/out-$run/unit$k.o" "$C_PROJECT/local/unit$k.o" || die "$run: unit$k.o differs from local gcc's"
  done
  for k in $(seq 1 8); do
    cmp -s "$(ls "$WORK/$run"/target/release/deps/libpart$k-*.rlib)" "$(ls "$WORK"/rust-parts-local/release/deps/libpart$k-*.rlib)" \
      || die "$run: libpart$k.rlib differs from the local build's"
  done
  [ "$target" = upstream ] || uploads=$(farm_uploads)
  client_stop
  stop_farm
  grep -q " $WORK/$run/" /proc/mounts && die "$run: mounts left under $WORK/$run after the servers stopped"
  rm -rf "${WORK:?}/$run" "$C_PROJECT/out-$run"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$link" "$round" "$c_secs" "$rust_secs" "$total_secs" "$sent" "$uploads" \
    "${counts#* }" \
    | tee -a "$OUT/results.tsv"
}

[ "$(id -u)" -eq 0 ] || die "run as root: the servers' overlay builders, the namespace and tc need it"
install_sccache
build_kiln
if [ -n "${COLD_BASE:-}" ]; then
  build_base_kiln "$COLD_BASE"
fi
case ",$TARGETS," in *,kiln-base,*) [ -n "${KILN_BASE:-}" ] || die "kiln-base needs COLD_BASE" ;; esac
mkdir -p "$OUT"
: >"$OUT/results.tsv"
# The servers listen on the veth's host address on either link.
setup_net
printf '[dist]\nscheduler_url = "http://%s:10600"\ntoolchains = []\nauth = { type = "token", token = "change-me-client-token" }\n' \
  "$HOST_IP" >"$WORK/client.toml"
make_c_project "$FILES"
make_rust_parts 8

log "warm-up (not recorded): the client packages gcc and rustc once"
first=${TARGETS%%,*}
run "$first" loopback 0 >/dev/null
: >"$OUT/results.tsv"
for round in $(seq 1 "$ROUNDS"); do
  for link in ${LINKS//,/ }; do
    for target in ${TARGETS//,/ }; do
      # kiln-base answers "no worse than before" on loopback; on the shaped link it
      # would only repeat upstream's uploads.
      [ "$target" = kiln-base ] && [ "$link" = shaped ] && continue
      log "round $round: $target on the $link link"
      run "$target" "$link" "$round"
    done
  done
done

python3 - "$OUT/results.tsv" "$TARGETS" "$LINKS" "$RATE" <<'EOF'
import statistics, sys
rows = [line.split("\t") for line in open(sys.argv[1]).read().splitlines()]
targets, links, rate = sys.argv[2].split(","), sys.argv[3].split(","), sys.argv[4]
by = {}
for target, link, rnd, c, r, t, sent, up, local in rows:
    by[(target, link, rnd)] = (float(c), float(r), float(t), sent, up, local)
rounds = sorted({k[2] for k in by})
def fig(v, d=1):
    return f"{statistics.median(v):.{d}f} [{min(v):.{d}f}–{max(v):.{d}f}]"
print(f"\nCold build on {len(targets)} farm(s) of 3 servers, {len(rounds)} rounds; median [min–max] over rounds;")
ref = "upstream" if "upstream" in targets else targets[0]
print(f"ratios against {ref} in the same round and link.\n")
print(f"| link | target | C, s | Rust, s | total, s | total / {ref} | per round | client sent, MiB | uploads (kilns' sum) | compiled locally (of 32) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for link in links:
    for t in targets:
        if (t, link, rounds[0]) not in by:
            continue
        rs = [by[(t, link, k)] for k in rounds]
        c, r, tot = [x[0] for x in rs], [x[1] for x in rs], [x[2] for x in rs]
        ref = "upstream" if "upstream" in targets else targets[0]
        if len(targets) > 1:
            ratios = [by[(t, link, k)][2] / by[(ref, link, k)][2] for k in rounds]
            rat, per = fig(ratios, 2), " ".join(f"{x:.2f}" for x in ratios)
        else:
            rat = per = "-"
        sent = [int(x[3]) / 1048576 for x in rs if x[3] != "-"]
        sent = fig(sent, 0) if sent else "-"
        ups = ", ".join(sorted({x[4] for x in rs}))
        local = " ".join(x[5] for x in rs)
        print(f"| {link} | {t} | {fig(c)} | {fig(r)} | {fig(tot)} | {rat} | {per} | {sent} | {ups} | {local} |")
EOF
stop_all
