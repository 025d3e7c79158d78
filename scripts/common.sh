# Shared by the scripts here (interop, compare, the farm and release benchmarks): sourced, not run.
#
# Expects ROOT (the repository) and WORK (a scratch dir) to be set. Everything
# listens on 127.0.0.1 only; every wait is bounded.

SCCACHE_VERSION=0.19.0
PIDS=()

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

# On exit: stop what we started; keep the logs when something failed.
cleanup() {
  local status=$?
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  sccache --stop-server >/dev/null 2>&1 || true
  if [ "$status" -ne 0 ]; then
    echo "logs kept in $WORK:" >&2
    for f in "$WORK"/*.log; do [ -f "$f" ] && { echo "--- $f (tail)" >&2; tail -n 30 "$f" >&2; }; done
  else
    rm -rf "$WORK"
  fi
}

# Upstream sccache 0.19.0 with its dist client and server, unless already installed.
install_sccache() {
  export PATH="$HOME/.cargo/bin:$PATH"
  if sccache --version 2>/dev/null | grep -q " $SCCACHE_VERSION" && command -v sccache-dist >/dev/null; then
    return
  fi
  log "installing sccache $SCCACHE_VERSION with dist-client and dist-server (~15 minutes the first time)"
  if ! dpkg -s libssl-dev pkg-config >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq libssl-dev pkg-config >/dev/null
  fi
  cargo install "sccache@$SCCACHE_VERSION" --locked --no-default-features --features "dist-client,dist-server"
}

# install_s3s_fs: an S3 server over a directory (the s3s project's s3s-fs), for the
# object-store farm: tests/farm.rs and the interop farm case. ~4 minutes the first time.
# 0.14.1: the newest release this machine's rustc builds.
S3S_FS_VERSION=0.14.1
install_s3s_fs() {
  export PATH="$HOME/.cargo/bin:$PATH"
  if s3s-fs --version 2>/dev/null | grep -q " $S3S_FS_VERSION"; then
    return
  fi
  log "installing s3s-fs $S3S_FS_VERSION (an S3 server over a directory)"
  cargo install "s3s-fs@$S3S_FS_VERSION" --locked --features binary
}

# start_client <client config>: a fresh sccache daemon with an empty local cache.
start_client() {
  sccache --stop-server >/dev/null 2>&1 || true
  export SCCACHE_CONF=$1 SCCACHE_DIR=$WORK/sccache-cache.$RANDOM SCCACHE_ERROR_LOG=$WORK/sccache-client.log
  export SCCACHE_LOG=${SCCACHE_LOG:-info} SCCACHE_SERVER_PORT=4226 SCCACHE_IDLE_TIMEOUT=0
  sccache --start-server >/dev/null
}

# start_s3s_fs: s3s-fs over $WORK/s3 on 127.0.0.1:10700, bucket "toolchains". The
# store URI S3_STORE names its prefix "kiln" (keys in the query, as the farm's kilns
# get them); that prefix's objects show up as files in $WORK/s3/toolchains/kiln.
S3_STORE="s3://toolchains/kiln?endpoint=http://127.0.0.1:10700&region=us-east-1&access_key_id=farm&secret_access_key=farm-secret"
start_s3s_fs() {
  mkdir -p "$WORK/s3/toolchains/kiln"
  s3s-fs --host 127.0.0.1 --port 10700 --access-key farm --secret-key farm-secret "$WORK/s3" >"$WORK/s3s-fs.log" 2>&1 &
  PIDS+=($!)
  wait_for "s3s-fs" curl -s -o /dev/null http://127.0.0.1:10700/
}

# build_kiln [extra cargo args]: sets KILN. Release by default: figures are
# compared with upstream's release build.
build_kiln() {
  local profile=${KILN_PROFILE:-release}
  log "building kiln ($profile)"
  (cd "$ROOT" && cargo build --locked --profile "$profile" --bin kiln "$@")
  KILN_TARGET="$ROOT/target/$([ "$profile" = dev ] && echo debug || echo "$profile")"
  KILN="$KILN_TARGET/kiln"
}

# wait_for <what> <cmd...>: until the command succeeds, at most 20 s.
wait_for() {
  local what=$1; shift
  for _ in $(seq 1 100); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "timed out waiting for $what"
}

# start_kiln <name> [config]
start_kiln() {
  local name=$1; shift
  ${KILN_WRAP:-} "$KILN" serve ${1:+--config "$1"} >"$WORK/$name.out" 2>"$WORK/$name.log" &
  PIDS+=($!)
  wait_for "$name to listen" grep -q "kiln listening on" "$WORK/$name.out"
}

# with_mounts <n> <command...>: execs the command in a mount namespace of its own
# with n extra tmpfs mounts, as a Kubernetes node or a docker host has them; the
# host's table is untouched. For KILN_WRAP, in the background job start_kiln makes:
# every step execs, so $! is the server's pid.
with_mounts() {
  local n=$1; shift
  exec unshare -m --propagation private sh -c '
    n=$1; shift; d=/var/tmp/kiln-extra-mounts; i=0
    while [ "$i" -lt "$n" ]; do mkdir -p "$d/$i" && mount -t tmpfs -o size=4k extra "$d/$i"; i=$((i + 1)); done
    exec "$@"' sh "$n" "$@"
}

# Upstream's scheduler on examples/sccache/scheduler.toml (127.0.0.1:10600).
start_scheduler() {
  SCCACHE_NO_DAEMON=1 SCCACHE_LOG=info sccache-dist scheduler --config "$ROOT/examples/sccache/scheduler.toml" \
    >"$WORK/scheduler.log" 2>&1 &
  PIDS+=($!)
  wait_for "the scheduler" curl -sf http://127.0.0.1:10600/api/v1/scheduler/status
}

# wait_servers <n>: the scheduler reports n servers.
wait_servers() {
  local n=$1
  wait_for "$n server(s) at the scheduler" bash -c \
    "curl -sf -H 'Accept: application/json' http://127.0.0.1:10600/api/v1/scheduler/status | grep -q '\"num_servers\":$n'"
}

stop_all() {
  sccache --stop-server >/dev/null 2>&1 || true
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; done
  PIDS=()
}

# server_config <name> <port> <overlay|docker>: examples/sccache/server.toml moved
# to its own port and directories; prints the new file's path.
server_config() {
  local cfg=$WORK/$1.toml
  sed -e "s/127.0.0.1:10501/127.0.0.1:$2/" -e "s#/var/lib/kiln#$WORK/$1#" "$ROOT/examples/sccache/server.toml" >"$cfg"
  if [ "$3" = docker ]; then
    python3 - "$cfg" <<'EOF'
import re, sys
p = sys.argv[1]; s = open(p).read()
s = re.sub(r'\[builder\]\n(.*\n)*?(?=\n)', '[builder]\ntype = "docker"\n', s)
open(p, 'w').write(s)
EOF
  fi
  echo "$cfg"
}

# kiln_config <name> <port> <overlay|docker>: server_config plus kiln's own data
# dir, where the docker backend keeps its state (upstream's docker builder has no
# build_dir). The operator port follows public_addr's: server port + 100.
kiln_config() {
  local cfg; cfg=$(server_config "$@")
  printf '\n[kiln]\ndata_dir = "%s"\n' "$WORK/$1" >>"$cfg"
  echo "$cfg"
}

docker_answers() { curl -sf --unix-socket /var/run/docker.sock http://localhost/_ping >/dev/null 2>&1; }

now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$(now) - $1:.1f}')"; }

# make_rust_parts <n>: a workspace of n independent library crates under $WORK, built
# locally as the reference (in $WORK/rust-parts-local); sets RUST_PARTS.
make_rust_parts() {
  local dir=$WORK/rust-parts members=""
  mkdir -p "$dir"
  for i in $(seq 1 "$1"); do
    mkdir -p "$dir/part$i/src"
    printf '[package]\nname = "part%s"\nversion = "0.1.0"\nedition = "2021"\n' "$i" >"$dir/part$i/Cargo.toml"
    cat >"$dir/part$i/src/lib.rs" <<EOF
/// Part $i of a farm's build: enough code that its compile takes a moment.
pub fn checksum(data: &[u8]) -> u64 {
    data.iter().fold($i, |h: u64, b| h.rotate_left(5) ^ u64::from(*b).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}
pub fn table() -> Vec<(String, f64)> {
    (0..64).map(|k| (format!("part$i-{k}"), (k as f64 * $i.5).sqrt())).collect()
}
EOF
    members="$members\"part$i\", "
  done
  printf '[workspace]\nmembers = [%s]\nresolver = "2"\n' "$members" >"$dir/Cargo.toml"
  (cd "$dir" && CARGO_TARGET_DIR=$WORK/rust-parts-local cargo build --release --offline -q)
  RUST_PARTS=$dir
}

# build_base_kiln <git revision>: kiln as it was at that revision (a release build
# in target/compare-base, from a temporary worktree); sets KILN_BASE.
build_base_kiln() {
  log "building kiln at $1 (the baseline)"
  git -C "$ROOT" worktree add --detach "$WORK/base-src" "$1" >/dev/null
  (cd "$WORK/base-src" && CARGO_TARGET_DIR="$ROOT/target/compare-base" cargo build --locked --release --bin kiln)
  KILN_BASE=$ROOT/target/compare-base/release/kiln
  git -C "$ROOT" worktree remove --force "$WORK/base-src"
}

# make_c_project <n>: a C project of n units (src/unit<i>.c, include/shapes.h) under
# $WORK/project, with each unit compiled locally as the reference (local/unit<i>.o);
# sets C_PROJECT.
make_c_project() {
  local dir=$WORK/project
  mkdir -p "$dir/src" "$dir/include" "$dir/local"
  cat >"$dir/include/shapes.h" <<'EOF'
#ifndef SHAPES_H
#define SHAPES_H
#include <stddef.h>
struct shape { const char *name; double w, h; };
double area(const struct shape *s);
size_t describe(const struct shape *s, char *buf, size_t len);
#endif
EOF
  for i in $(seq 1 "$1"); do
    cat >"$dir/src/unit$i.c" <<EOF
#include <stdio.h>
#include <string.h>
#include <math.h>
#include "shapes.h"
static const struct shape table$i[] = { {"box$i", $i.5, 2.0}, {"slab$i", 0.25, $i.0} };
double unit${i}_total(void) {
    double sum = 0;
    for (size_t k = 0; k < sizeof table$i / sizeof table$i[0]; k++) sum += sqrt(table$i[k].w * table$i[k].h);
    return sum;
}
int unit${i}_print(char *buf, size_t len) { return snprintf(buf, len, "%s=%.3f", table$i[0].name, unit${i}_total()); }
EOF
  done
  C_PROJECT=$dir
  # The reference objects: the same compiles, locally, no sccache.
  for i in $(seq 1 "$1"); do
    (cd "$dir" && gcc -O2 -Iinclude -c "src/unit$i.c" -o "local/unit$i.o")
  done
}

# The running client's stats: the sum of distributed compiles (all servers), dist
# errors, and the servers that got any.
stats() { sccache --show-stats --stats-format=json; }
dist_total() { stats | python3 -c 'import json,sys; s=json.load(sys.stdin)["stats"]; print(sum(s["dist_compiles"].values()))'; }
dist_errors() { stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["stats"]["dist_errors"])'; }
dist_servers() { stats | python3 -c 'import json,sys; print(" ".join(sorted(json.load(sys.stdin)["stats"]["dist_compiles"])))'; }
