#!/usr/bin/env bash
# Time to the first distributed compile on a cold server of a farm: the Nth server
# a client's jobs land on, which has never seen the client's toolchain. With the
# real sccache 0.19 client and upstream's scheduler, for gcc and for rustc.
#
#   scripts/farm_bench.sh                  # as root, 127.0.0.1 only
#   FARM_ROUNDS=5 FARM_TARGETS=upstream,kiln-dir scripts/farm_bench.sh
#
# Each target, in turn, on 127.0.0.1:10501 behind sccache-dist scheduler:
#   upstream   sccache-dist server 0.19.0 (the client uploads to every server)
#   kiln       kiln serve, no store (the same: the client uploads)
#   kiln-dir   kiln serve with [kiln.toolchains] store = a directory
#   kiln-s3    kiln serve with store = an S3 bucket (s3s-fs on 127.0.0.1)
# A run: server 1 compiles one C file and one Rust crate (the client uploads both
# toolchains; a kiln with a store publishes them), then stops; server N, with empty
# caches, takes its place at the same address, and its first C compile and first
# Rust crate are timed (wall time of `sccache gcc -c` and of `cargo build` of a
# one-file crate). Targets interleave over rounds (A B C D, A B C D, ...); each
# figure is the median [min–max] over rounds, and ratios are against upstream of
# the same round. The client runs throughout (its toolchain packages are made once,
# in the first warm-up), and every source is new, so no compile hits its cache.
#
# The client's link here is loopback: what a store saves on a real link is the
# upload, shown as the bytes the client sent server N.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/kiln-farm-bench.XXXXXX)
# shellcheck source=scripts/common.sh
source "$ROOT/scripts/common.sh"
trap cleanup EXIT

ROUNDS=${FARM_ROUNDS:-3}
TARGETS=${FARM_TARGETS:-upstream,kiln,kiln-dir,kiln-s3}
OUT=$ROOT/target/farm-bench

[ "$(id -u)" -eq 0 ] || die "run as root: kiln and sccache-dist's overlay builder need it"
install_sccache
build_kiln
case ",$TARGETS," in *,kiln-s3,*) install_s3s_fs ;; esac
mkdir -p "$OUT" "$WORK/src"
: >"$OUT/results.tsv"

# fresh_c <tag> / fresh_crate <tag>: a C file and a one-crate Cargo project no
# compile has seen (tags are unique per run and step).
fresh_c() {
  set -- "${1,,}"
  local f=$WORK/src/fresh_${1//-/_}.c
  printf '#include <stdio.h>\nint fresh_%s(int x) { printf("%%d", x); return x + 1; }\n' "${1//-/_}" >"$f"
  echo "$f"
}
fresh_crate() {
  set -- "${1,,}"
  local dir=$WORK/src/crate-$1
  mkdir -p "$dir/src"
  printf '[package]\nname = "fresh_%s"\nversion = "0.1.0"\nedition = "2021"\n[lib]\npath = "src/lib.rs"\n' "${1//-/_}" >"$dir/Cargo.toml"
  printf 'pub fn fresh_%s(x: u64) -> u64 { x.wrapping_mul(31).rotate_left(7) }\n' "${1//-/_}" >"$dir/src/lib.rs"
  echo "$dir"
}
compile_c() { (cd "$WORK/src" && timeout 300 sccache gcc -O2 -c "$1" -o "$1.o"); }
compile_rust() { (cd "$1" && RUSTC_WRAPPER=sccache CARGO_TARGET_DIR=$1/target timeout 900 cargo build --release --offline -q); }
dist_compiles() { sccache --show-stats --stats-format=json | python3 -c 'import json,sys; s=json.load(sys.stdin)["stats"]; print(sum(s["dist_compiles"].values()), s["dist_errors"])'; }

# start_server <target> <name>: on 127.0.0.1:10501, fresh directories.
start_server() {
  local target=$1 name=$2 cfg
  case $target in
    upstream)
      cfg=$(server_config "$name" 10501 overlay)
      mkdir -p "$WORK/$name"
      SCCACHE_NO_DAEMON=1 SCCACHE_LOG=info sccache-dist server --config "$cfg" >"$WORK/$name.log" 2>&1 &
      PIDS+=($!)
      wait_for "$name to listen" curl -sk -o /dev/null https://127.0.0.1:10501/ ;;
    kiln*)
      cfg=$(kiln_config "$name" 10501 overlay)
      case $target in
        kiln-dir) printf '[kiln.toolchains]\nstore = "%s"\n' "$STORE" >>"$cfg" ;;
        kiln-s3) printf '[kiln.toolchains]\nstore = "%s"\n' "$S3_STORE" >>"$cfg" ;;
      esac
      start_kiln "$name" "$cfg" ;;
  esac
  SERVER_PID=${PIDS[-1]}
}

# The scheduler knows the server at 10501 by its latest heartbeat (its certificate).
wait_heartbeat() {
  if [ "$1" = upstream ]; then
    sleep 2 # upstream's server heartbeats as it starts; its log does not say when
  else
    wait_for "server N's heartbeat" sh -c "curl -sf http://127.0.0.1:10601/metrics | grep -q '^kiln_scheduler_connected 1'"
  fi
}

secs_since() { python3 -c "print(f'{$(now) - $1:.2f}')"; }

stop_server() { kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null || true; }

# run <target> <round>
run() {
  local target=$1 round=$2 name="$1-r$2"
  STORE=$WORK/store-$name; mkdir -p "$STORE"
  if [ "$target" = kiln-s3 ]; then
    rm -rf "$WORK/s3/toolchains/kiln"; mkdir -p "$WORK/s3/toolchains/kiln"
  fi
  start_server "$target" "$name-1"
  wait_heartbeat "$target" "$name-1"
  compile_c "$(fresh_c "$name-1")"
  compile_rust "$(fresh_crate "$name-1")"
  case $target in
    kiln-dir) wait_for "both toolchains in the store" sh -c "[ \$(ls '$STORE' | wc -l) -ge 2 ]" ;;
    kiln-s3) wait_for "both toolchains in the bucket" sh -c "[ \$(ls '$WORK/s3/toolchains/kiln' | wc -l) -ge 2 ]" ;;
  esac
  stop_server

  start_server "$target" "$name-N"
  wait_heartbeat "$target" "$name-N"
  local before after c_file crate t0 c_secs rust_secs uploaded=- mib=-
  before=$(dist_compiles)
  c_file=$(fresh_c "$name-N"); crate=$(fresh_crate "$name-N")
  t0=$(now); compile_c "$c_file"; c_secs=$(secs_since "$t0")
  t0=$(now); compile_rust "$crate"; rust_secs=$(secs_since "$t0")
  after=$(dist_compiles)
  # Both compiles distributed, none fell back to local.
  [ "${after% *}" -eq $(( ${before% *} + 2 )) ] && [ "${after#* }" -eq "${before#* }" ] \
    || die "$name: the timed compiles were not both distributed ($before -> $after)"
  if [ "$target" != upstream ]; then
    local metrics; metrics=$(curl -sf http://127.0.0.1:10601/metrics)
    uploaded=$(awk '$1 == "kiln_toolchain_uploads_total" { print $2 }' <<<"$metrics")
    mib=$(awk '$1 == "kiln_toolchain_cache_bytes" { printf "%.0f", $2 / 1048576 }' <<<"$metrics")
  fi
  stop_server
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$round" "$c_secs" "$rust_secs" "$uploaded" "$mib" | tee -a "$OUT/results.tsv"
}

start_scheduler
case ",$TARGETS," in *,kiln-s3,*) start_s3s_fs ;; esac
start_client "$ROOT/examples/sccache/client.toml"
for round in $(seq 1 "$ROUNDS"); do
  for target in ${TARGETS//,/ }; do
    log "round $round: $target"
    run "$target" "$round"
  done
done

python3 - "$OUT/results.tsv" "$TARGETS" <<'EOF'
import statistics, sys
rows = [line.split("\t") for line in open(sys.argv[1]).read().splitlines()]
targets = sys.argv[2].split(",")
by = {}
for target, rnd, c, r, up, mib in rows:
    by.setdefault(target, {})[rnd] = (float(c), float(r), up.strip(), mib.strip())
rounds = sorted(by[targets[0]])
def fig(values):
    return f"{statistics.median(values):.2f} [{min(values):.2f}–{max(values):.2f}]"
print("\nFirst distributed compile on a cold server N (seconds, median [min–max] over", len(rounds), "rounds),")
print("and as a ratio of upstream's in the same round:\n")
print("| target | gcc: s | gcc: / upstream | rustc crate: s | rustc: / upstream | toolchains the client uploaded to N | their MiB |")
print("|---|---|---|---|---|---|---|")
for t in targets:
    c = [by[t][k][0] for k in rounds]; r = [by[t][k][1] for k in rounds]
    ups = sorted({by[t][k][2] for k in rounds})
    mib = sorted({by[t][k][3] for k in rounds})
    if "upstream" in by:
        cr = [by[t][k][0] / by["upstream"][k][0] for k in rounds]
        rr = [by[t][k][1] / by["upstream"][k][1] for k in rounds]
        cr, rr = fig(cr), fig(rr)
    else:
        cr = rr = "-"
    print(f"| {t} | {fig(c)} | {cr} | {fig(r)} | {rr} | {', '.join(ups)} | {', '.join(mib)} |")
EOF
stop_all
