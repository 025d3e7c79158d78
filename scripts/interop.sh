#!/usr/bin/env bash
# Proves kiln is a drop-in for `sccache-dist server`, with programs nobody here
# wrote: the sccache 0.19.0 client and `sccache-dist scheduler`.
#
#   scripts/interop.sh            # as root, on 127.0.0.1 only
#
# Cases (each: every compile distributed, objects byte-identical to local gcc):
#   local      `kiln serve` with no config at all; the client names only
#              scheduler_url (kiln answers the scheduler API itself)
#   overflow   more concurrent compiles than capacity: the extra ones get
#              `Fail` and compile locally; none errors
#   badtoken   a wrong client token: 401 as upstream's scheduler answers (the
#              0.19 client then fails the compile with that message, as it does
#              with upstream's scheduler)
#   upstream   upstream's scheduler with token auth + kiln on examples/sccache/server.toml
#   docker     the same with kiln's docker builder (when a Docker daemon answers)
#   two        two kiln servers behind one scheduler: both receive jobs
#   farm       two kilns sharing a toolchain store (a directory): both compile C and
#              Rust, the client uploads gcc and rustc once each
#              (kiln_toolchain_uploads_total), the other kiln fetches each from
#              the store (kiln_toolchain_store_fetches_total)
#   farm_s3    the same with the store in an S3 bucket (s3s-fs on 127.0.0.1,
#              installed from crates.io)
#   cold_one   from cold (new kiln, new client cache and toolchain dir): one kiln
#              with no store, the C project with 9 compiles at once, then an
#              8-crate workspace with `cargo build -j 9`: every compile distributed,
#              byte-identical, and the client sent gcc and rustc once each
#              (kiln_toolchain_uploads_total), however many first jobs asked at once
#   farm_cold  the same on three kilns sharing a store (a directory): once each
#              across the farm (the uploads summed over the kilns)
#   farm_cold_s3  the same with the store in an S3 bucket (s3s-fs)
#   scale_in   two kilns, slow units compiled with -j 6, SIGTERM to one kiln 1 s after
#              the scheduler placed its first job there
#              (scripts/scale_in.sh --check): no compile fails, every object is
#              byte-identical, at most 1 falls back to local (default drain_mode)
#   baseline   upstream `sccache-dist server` on the same server.toml; prints
#              both wall times
#   rust       a Cargo workspace built with RUSTC_WRAPPER=sccache through plain
#              `kiln serve`: the library crates' rustc runs are distributed (the
#              client uploads its rustc sysroot as the toolchain), each .rlib is
#              byte-identical to a local build's, and the program runs
# Pick some with INTEROP_CASES="local upstream" (default: all).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CASES=${INTEROP_CASES:-"local overflow badtoken upstream docker two farm farm_s3 cold_one farm_cold farm_cold_s3 scale_in baseline rust"}
FILES=${INTEROP_FILES:-24}
WORK=$(mktemp -d /tmp/kiln-interop.XXXXXX)
KILN_TIMES=""
TIMES=""
# shellcheck source=scripts/common.sh
source "$ROOT/scripts/common.sh"
trap cleanup EXIT

# --- the C project -----------------------------------------------------------
make_project() {
  make_c_project "$FILES"
  PROJECT=$C_PROJECT
}

# A compile slow enough that several overlap: thousands of functions.
make_slow_unit() {
  local file=$PROJECT/src/slow$1.c
  {
    echo "int slow$1_seed = $1;"
    for k in $(seq 1 1500); do echo "int f${1}_$k(int x) { return (x * $k + slow$1_seed) ^ (x >> ($k % 7)); }"; done
  } >"$file"
  (cd "$PROJECT" && gcc -O2 -c "src/slow$1.c" -o "local/slow$1.o")
}

# --- the sccache client ------------------------------------------------------

# compile_all <outdir>: every unit through sccache, in parallel like make -jN, with
# N = one server's capacity at the scheduler (cpus + 1 + cpus/8 >= nproc + 1):
# beyond it, upstream's rules send the extra compiles back to local.
compile_all() {
  local out=$PROJECT/$1
  mkdir -p "$out"
  (cd "$PROJECT" && seq 1 "$FILES" | xargs -P "$(( $(nproc) + 1 ))" -I{} \
    timeout 300 sccache gcc -O2 -Iinclude -c src/unit{}.c -o "$1/unit{}.o")
}

# same_objects <outdir> [names]: byte-identical to the local reference.
same_objects() {
  local names=${2:-$(seq -f 'unit%g' 1 "$FILES")}
  for n in $names; do
    cmp -s "$PROJECT/$1/$n.o" "$PROJECT/local/$n.o" || die "$1/$n.o differs from local gcc's object"
  done
}

expect_all_distributed() {
  local total errors
  total=$(dist_total); errors=$(dist_errors)
  [ "$total" -eq "$FILES" ] || die "$total of $FILES compiles were distributed ($(stats | tr -d '\n' | head -c 600))"
  [ "$errors" -eq 0 ] || die "$errors compiles fell back to local"
}

# --- cases -------------------------------------------------------------------
case_local() {
  log "local: plain \`kiln serve\`, client config = scheduler_url only"
  start_kiln kiln-local
  "$KILN" client-config >"$WORK/client-local.toml"
  diff <(grep -v '^#' "$WORK/client-local.toml") <(grep -v '^#' "$ROOT/examples/sccache/client-local.toml") \
    || die "kiln client-config does not print examples/sccache/client-local.toml"
  start_client "$WORK/client-local.toml"
  local t0; t0=$(now)
  compile_all out-local
  echo "kiln (own scheduler): $FILES compiles in $(elapsed "$t0") s"
  expect_all_distributed
  same_objects out-local
  stop_all
}

case_overflow() {
  log "overflow: 8 slow compiles at once against capacity 3 (2 builders)"
  local cfg=$WORK/kiln-small.toml
  printf '[kiln]\ndata_dir = "%s/kiln-small"\nbuilders = 2\n' "$WORK" >"$cfg"
  start_kiln kiln-small "$cfg"
  for i in $(seq 1 8); do make_slow_unit "$i"; done
  start_client "$ROOT/examples/sccache/client-local.toml"
  mkdir -p "$PROJECT/out-overflow"
  (cd "$PROJECT" && seq 1 8 | xargs -P 8 -I{} timeout 300 sccache gcc -O2 -c src/slow{}.c -o out-overflow/slow{}.o) \
    || die "a compile failed when the server was full"
  same_objects out-overflow "$(seq -f 'slow%g' 1 8)"
  local total; total=$(dist_total)
  grep -q "no free slot" "$WORK/kiln-small.log" || die "kiln never answered Fail for lack of capacity"
  [ "$total" -ge 1 ] && [ "$total" -lt 8 ] || die "expected some but not all of 8 compiles distributed, got $total"
  echo "overflow: $total of 8 distributed, the rest compiled locally after Fail"
  stop_all
}

case_badtoken() {
  log "badtoken: a client with the wrong token"
  start_kiln kiln-badtoken
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Authorization: Bearer wrong' \
    http://127.0.0.1:10600/api/v1/scheduler/alloc_job)
  [ "$code" = 401 ] || die "alloc_job with a wrong token answered $code, not 401"
  curl -s -D - -o /dev/null -X POST -H 'Authorization: Bearer wrong' http://127.0.0.1:10600/api/v1/scheduler/alloc_job \
    | grep -qi 'www-authenticate: Bearer error="bearer_auth_failed"' || die "no WWW-Authenticate bearer_auth_failed"
  # sccache 0.19 treats any 4xx from the farm as fatal (HttpClientError): the
  # compile fails with the scheduler's message instead of silently going local,
  # exactly as with upstream's scheduler.
  sed 's/change-me-client-token/wrong/' "$ROOT/examples/sccache/client.toml" >"$WORK/client-wrong.toml"
  start_client "$WORK/client-wrong.toml"
  local err=$WORK/badtoken.stderr
  if (cd "$PROJECT" && sccache gcc -O2 -Iinclude -c src/unit1.c -o /dev/null 2>"$err"); then
    die "a client with a wrong token compiled without a word"
  fi
  grep -q "401" "$err" && grep -q "client token" "$err" || die "the client did not show kiln's 401: $(cat "$err")"
  [ "$(dist_total)" -eq 0 ] || die "a client with a wrong token got jobs"
  echo "badtoken: 401 + WWW-Authenticate; the client says: $(head -c 160 "$err")"
  stop_all
}

case_upstream() {
  log "upstream: sccache-dist scheduler + kiln on examples/sccache/server.toml"
  start_scheduler
  start_kiln kiln-upstream "$ROOT/examples/sccache/server.toml"
  wait_servers 1
  timed_compiles upstream
  KILN_TIMES=$TIMES
  echo "kiln behind sccache-dist scheduler: $FILES compiles, $TIMES"
  stop_all
}

# timed_compiles <name>: all units twice, each time with an empty local cache:
# first with the toolchain new to the server, then with it already there.
timed_compiles() {
  local t0 cold warm
  start_client "$ROOT/examples/sccache/client.toml"
  t0=$(now); compile_all "out-$1"; cold=$(elapsed "$t0")
  expect_all_distributed
  same_objects "out-$1"
  start_client "$ROOT/examples/sccache/client.toml"
  t0=$(now); compile_all "out-$1-warm"; warm=$(elapsed "$t0")
  expect_all_distributed
  same_objects "out-$1-warm"
  TIMES="cold toolchain $cold s, warm $warm s"
}

case_docker() {
  if ! docker_answers; then
    [ -n "${KILN_REQUIRE_DOCKER:-}" ] && die "no Docker daemon answers and KILN_REQUIRE_DOCKER is set"
    log "docker: SKIPPED, no Docker daemon answers on /var/run/docker.sock"
    return
  fi
  log "docker: sccache-dist scheduler + kiln's docker builder"
  start_scheduler
  start_kiln kiln-docker "$(kiln_config kiln-docker 10501 docker)"
  wait_servers 1
  start_client "$ROOT/examples/sccache/client.toml"
  compile_all out-docker
  expect_all_distributed
  same_objects out-docker
  # Real sccache jobs (their cwd a new top-level directory) must reuse containers.
  local reused
  reused=$(curl -sf http://127.0.0.1:10601/api/v1/kiln/status | python3 -c 'import json,sys; print(json.load(sys.stdin)["containers_reused"])')
  [ "$reused" -gt 0 ] || die "docker: no container was reused (containers_reused = $reused)"
  echo "docker: containers reused $reused times"
  stop_all
}

case_two() {
  log "two: two kiln servers behind one scheduler"
  start_scheduler
  # Plain upstream server.toml files, each with its own cache_dir and build_dir:
  # kiln locks those (not its default data_dir), operator ports 10601 and 10602.
  start_kiln kiln-a "$(server_config kiln-a 10501 overlay)"
  start_kiln kiln-b "$(server_config kiln-b 10502 overlay)"
  wait_servers 2
  start_client "$ROOT/examples/sccache/client.toml"
  compile_all out-two
  expect_all_distributed
  same_objects out-two
  local servers; servers=$(dist_servers)
  [ "$servers" = "127.0.0.1:10501 127.0.0.1:10502" ] || die "jobs went to [$servers], not to both servers"
  echo "two: both servers received jobs ($(stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["stats"]["dist_compiles"])'))"
  stop_all
}

# metric <operator port> <name>: one counter of a kiln's /metrics.
metric() {
  curl -sf "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n { print $2 }'
}

# farm <name> <store> <entries>: two kilns (new data dirs, named after <name>)
# sharing <store> (a directory or an s3:// URI) behind one scheduler; <entries> is
# the directory where its entries show up as files. C, then a Rust workspace: for each toolchain one compile first (its server
# asks the client and publishes it), then parallel compiles that land on both
# servers. Each toolchain crosses the client's link once; the other kiln fetches it.
farm() {
  local name=$1 store=$2 entries=$3
  start_scheduler
  local a b
  a=$(kiln_config "$name-a" 10501 overlay); b=$(kiln_config "$name-b" 10502 overlay)
  printf '[kiln.toolchains]\nstore = "%s"\n' "$store" | tee -a "$a" >>"$b"
  start_kiln "$name-a" "$a"
  start_kiln "$name-b" "$b"
  wait_servers 2
  start_client "$ROOT/examples/sccache/client.toml"
  make_slow_unit 9
  (cd "$PROJECT" && mkdir -p "out-$name" && timeout 300 sccache gcc -O2 -c src/slow9.c -o "out-$name/slow9.o")
  wait_for "the gcc toolchain in the store" sh -c "[ \$(ls '$entries' | wc -l) -ge 1 ]"
  compile_all "out-$name"
  same_objects "out-$name" "$(seq -f 'unit%g' 1 "$FILES") slow9"
  local total servers
  total=$(dist_total); servers=$(dist_servers)
  [ "$total" -eq $(( FILES + 1 )) ] || die "$total of $(( FILES + 1 )) compiles were distributed"
  [ "$servers" = "127.0.0.1:10501 127.0.0.1:10502" ] || die "jobs went to [$servers], not to both servers"

  make_rust_parts 8
  local target=$WORK/rust-parts-dist.$RANDOM
  (cd "$RUST_PARTS" && RUSTC_WRAPPER=sccache CARGO_TARGET_DIR=$target timeout 900 cargo build --release --offline -q -p part1) \
    || die "cargo build -p part1 through sccache and the farm failed"
  wait_for "the rustc toolchain in the store" sh -c "[ \$(ls '$entries' | wc -l) -ge 2 ]"
  # At most the two servers' capacity at once (see compile_all): beyond it, upstream's
  # scheduler answers Fail and the client compiles locally.
  (cd "$RUST_PARTS" && RUSTC_WRAPPER=sccache CARGO_TARGET_DIR=$target timeout 900 \
    cargo build --release --offline -q -j $(( 2 * ($(nproc) + 1) ))) \
    || die "cargo build through sccache and the farm failed"
  total=$(dist_total)
  [ "$total" -eq $(( FILES + 1 + 8 )) ] || die "$total of $(( FILES + 1 + 8 )) compiles were distributed ($(stats | tr -d '\n' | head -c 600))"
  [ "$(dist_errors)" -eq 0 ] || die "$(dist_errors) compiles fell back to local"
  for i in $(seq 1 8); do
    cmp -s "$(ls "$target"/release/deps/libpart$i-*.rlib)" "$(ls "$WORK"/rust-parts-local/release/deps/libpart$i-*.rlib)" \
      || die "libpart$i.rlib built on the farm differs from the local build's"
  done

  # Each toolchain (gcc, rustc) uploaded once; the other kiln fetched each from the store.
  local uploads fetches
  uploads=$(( $(metric 10601 kiln_toolchain_uploads_total) + $(metric 10602 kiln_toolchain_uploads_total) ))
  fetches=$(( $(metric 10601 kiln_toolchain_store_fetches_total) + $(metric 10602 kiln_toolchain_store_fetches_total) ))
  [ "$uploads" -eq 2 ] || die "the client uploaded $uploads toolchains, not 2 (gcc and rustc once each)"
  [ "$fetches" -eq 2 ] || die "$fetches store fetches, not 2 (each toolchain by the other kiln)"
  echo "$name: both servers compiled C and Rust ($(stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["stats"]["dist_compiles"])')); objects and .rlibs byte-identical; the client uploaded gcc and rustc once each, the other kiln fetched each from the store"
  stop_all
}

case_farm() {
  log "farm: two kilns sharing a toolchain store (a directory), behind one scheduler"
  mkdir -p "$WORK/store"
  farm farm "$WORK/store" "$WORK/store"
}

case_farm_s3() {
  log "farm_s3: two kilns sharing a toolchain store (an S3 bucket on s3s-fs), behind one scheduler"
  install_s3s_fs
  start_s3s_fs
  farm farm-s3 "$S3_STORE" "$WORK/s3/toolchains/kiln"
}

# --- cold farms (issue 23) ------------------------------------------------------
# cold_farm <name> <kilns> <store or ""> [extra [kiln] lines]: from cold (new kiln
# data dirs, an empty store, a new client cache and a new client toolchain dir:
# the client packages gcc and rustc again), <kilns> kilns behind one scheduler,
# sharing <store> when given. C: every unit at once, -j 9; then the 8-crate Rust
# workspace with `cargo build -j 9`, no crate built first. Every compile
# distributed, byte-identical to a local build, and each toolchain (gcc, rustc)
# crossed the client's link exactly once: the sum of kiln_toolchain_uploads_total.
COLD_JOBS=${INTEROP_COLD_JOBS:-9}
cold_farm() {
  local name=$1 n=$2 store=$3 extra=${4:-} k cfg ports=""
  start_scheduler
  for k in $(seq 1 "$n"); do
    cfg=$(kiln_config "$name-$k" $(( 10500 + k )) overlay)
    [ -n "$extra" ] && printf '%s\n' "$extra" >>"$cfg"
    [ -n "$store" ] && printf '[kiln.toolchains]\nstore = "%s"\n' "$store" >>"$cfg"
    start_kiln "$name-$k" "$cfg"
    ports="$ports $(( 10600 + k ))"
  done
  wait_servers "$n"
  SCCACHE_DIST_CLIENT_CACHE_DIR=$WORK/client-toolchains-$name start_client "$ROOT/examples/sccache/client.toml"

  local t0 c_secs rust_secs total
  mkdir -p "$PROJECT/out-$name"
  t0=$(now)
  (cd "$PROJECT" && seq 1 "$FILES" | xargs -P "$COLD_JOBS" -I{} \
    timeout 300 sccache gcc -O2 -Iinclude -c src/unit{}.c -o "out-$name/unit{}.o")
  c_secs=$(elapsed "$t0")
  expect_all_distributed
  same_objects "out-$name"
  cold_uploads "$name: gcc" 1 $ports

  [ -n "${RUST_PARTS:-}" ] || make_rust_parts 8
  local target=$WORK/rust-parts-$name
  t0=$(now)
  (cd "$RUST_PARTS" && RUSTC_WRAPPER=sccache CARGO_TARGET_DIR=$target timeout 900 \
    cargo build --release --offline -q -j "$COLD_JOBS") || die "$name: cargo build through sccache and the farm failed"
  rust_secs=$(elapsed "$t0")
  total=$(dist_total)
  [ "$total" -eq $(( FILES + 8 )) ] || die "$name: $total of $(( FILES + 8 )) compiles were distributed ($(stats | tr -d '\n' | head -c 600))"
  [ "$(dist_errors)" -eq 0 ] || die "$name: $(dist_errors) compiles fell back to local"
  for k in $(seq 1 8); do
    cmp -s "$(ls "$target"/release/deps/libpart$k-*.rlib)" "$(ls "$WORK"/rust-parts-local/release/deps/libpart$k-*.rlib)" \
      || die "$name: libpart$k.rlib built on the farm differs from the local build's"
  done
  cold_uploads "$name: gcc and rustc" 2 $ports
  echo "$name: $n kiln(s)${store:+ sharing a store}: C -j $COLD_JOBS in $c_secs s, Rust -j $COLD_JOBS in $rust_secs s;" \
    "all $total compiles distributed ($(stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["stats"]["dist_compiles"])'))," \
    "byte-identical; each toolchain uploaded once"
  stop_all
}

# cold_uploads <what> <expected> <operator ports...>: the client's toolchain
# uploads summed over the kilns; prints each kiln's toolchain counters.
cold_uploads() {
  local what=$1 want=$2 port sum=0 m line
  shift 2
  for port in "$@"; do
    line="kiln :$port"
    for m in uploads arrival_waits arrivals_failed store_hits store_fetches store_publishes store_failures; do
      line="$line $m=$(metric "$port" "kiln_toolchain_${m}_total")"
    done
    echo "  $line"
    sum=$(( sum + $(metric "$port" kiln_toolchain_uploads_total) ))
  done
  [ "$sum" -eq "$want" ] || die "$what: the client uploaded $sum toolchain archives across the kilns, not $want"
}

case_cold_one() {
  log "cold_one: one kiln, no store, from cold: C and Rust -j $COLD_JOBS, one upload per toolchain"
  # builders = 8: the scheduler then places up to 8 + 1 + 1 jobs here, all 9 at once.
  cold_farm cold-one 1 "" "builders = 8"
}

case_farm_cold() {
  log "farm_cold: three kilns sharing a store (a directory), from cold: C and Rust -j $COLD_JOBS"
  mkdir -p "$WORK/store-cold"
  cold_farm farm-cold 3 "$WORK/store-cold"
}

case_farm_cold_s3() {
  log "farm_cold_s3: three kilns sharing a store (an S3 bucket on s3s-fs), from cold: C and Rust -j $COLD_JOBS"
  install_s3s_fs
  # A bucket of its own: the farm_s3 case's prefix may hold its toolchains.
  rm -rf "$WORK/s3/toolchains/kiln"
  start_s3s_fs
  cold_farm farm-cold-s3 3 "$S3_STORE"
}

case_scale_in() {
  log "scale_in: one of two kilns stopped in the middle of a -j 6 build"
  "$ROOT/scripts/scale_in.sh" --check
}

case_baseline() {
  log "baseline: upstream sccache-dist server on the same server.toml"
  start_scheduler
  # Upstream's server has no [kiln] table and wipes its build_dir: its own dirs.
  local cfg; cfg=$(server_config upstream-server 10501 overlay)
  mkdir -p "$WORK/upstream-server"
  SCCACHE_NO_DAEMON=1 sccache-dist server --config "$cfg" >"$WORK/upstream-server.log" 2>&1 &
  PIDS+=($!)
  wait_servers 1
  timed_compiles baseline
  echo "wall time for $FILES compiles (-j$(( $(nproc) + 1 ))):"
  echo "  kiln                 ${KILN_TIMES:-not run (add the upstream case)}"
  echo "  sccache-dist server  $TIMES"
  stop_all
}

# --- the Rust workspace -------------------------------------------------------
# Two library crates and a program: sccache distributes rustc runs of library
# crates (a binary needs the local linker).
make_rust_project() {
  local dir=$WORK/rust
  mkdir -p "$dir/geometry/src" "$dir/report/src" "$dir/app/src"
  printf '[workspace]\nmembers = ["geometry", "report", "app"]\nresolver = "2"\n' >"$dir/Cargo.toml"
  printf '[package]\nname = "geometry"\nversion = "0.1.0"\nedition = "2021"\n' >"$dir/geometry/Cargo.toml"
  cat >"$dir/geometry/src/lib.rs" <<'EOF'
/// A rectangle, with the usual measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rect { pub w: f64, pub h: f64 }
impl Rect {
    pub fn area(self) -> f64 { self.w * self.h }
    pub fn diagonal(self) -> f64 { (self.w * self.w + self.h * self.h).sqrt() }
}
pub fn largest(rects: &[Rect]) -> Option<Rect> {
    rects.iter().copied().max_by(|a, b| a.area().total_cmp(&b.area()))
}
EOF
  printf '[package]\nname = "report"\nversion = "0.1.0"\nedition = "2021"\n[dependencies]\ngeometry = { path = "../geometry" }\n' \
    >"$dir/report/Cargo.toml"
  cat >"$dir/report/src/lib.rs" <<'EOF'
use geometry::Rect;
pub fn describe(rects: &[Rect]) -> String {
    let total: f64 = rects.iter().map(|r| r.area()).sum();
    match geometry::largest(rects) {
        Some(big) => format!("{} rects, total area {total:.2}, largest {:.2} (diagonal {:.3})", rects.len(), big.area(), big.diagonal()),
        None => "no rects".to_owned(),
    }
}
EOF
  printf '[package]\nname = "app"\nversion = "0.1.0"\nedition = "2021"\n[dependencies]\nreport = { path = "../report" }\ngeometry = { path = "../geometry" }\n' \
    >"$dir/app/Cargo.toml"
  cat >"$dir/app/src/main.rs" <<'EOF'
fn main() {
    let rects = [geometry::Rect { w: 3.0, h: 4.0 }, geometry::Rect { w: 1.5, h: 2.0 }];
    println!("{}", report::describe(&rects));
}
EOF
  RUST_PROJECT=$dir
}

case_rust() {
  log "rust: a Cargo workspace with RUSTC_WRAPPER=sccache through plain \`kiln serve\`"
  make_rust_project
  # The reference: the same build, locally, without sccache.
  (cd "$RUST_PROJECT" && CARGO_TARGET_DIR=$WORK/rust-local cargo build --release --offline -q)
  start_kiln kiln-rust
  start_client "$ROOT/examples/sccache/client-local.toml"
  (cd "$RUST_PROJECT" && RUSTC_WRAPPER=sccache CARGO_TARGET_DIR=$WORK/rust-dist timeout 900 cargo build --release --offline -q) \
    || die "cargo build through sccache and kiln failed"
  local total errors; total=$(dist_total); errors=$(dist_errors)
  [ "$total" -ge 2 ] || die "only $total rustc runs were distributed ($(stats | tr -d '\n' | head -c 600))"
  [ "$errors" -eq 0 ] || die "$errors rustc runs fell back to local"
  for lib in geometry report; do
    local ours theirs
    ours=$(ls "$WORK"/rust-dist/release/deps/lib$lib-*.rlib) theirs=$(ls "$WORK"/rust-local/release/deps/lib$lib-*.rlib)
    cmp -s "$ours" "$theirs" || die "lib$lib.rlib built on kiln differs from the local build's"
  done
  local out; out=$("$WORK/rust-dist/release/app")
  [ "$out" = "$("$WORK/rust-local/release/app")" ] || die "the program built through kiln prints \"$out\""
  echo "rust: $total rustc runs distributed, .rlib files byte-identical, the program prints: $out"
  stop_all
}

[ "$(id -u)" -eq 0 ] || die "run as root: both kiln and sccache-dist's overlay builder need it"
install_sccache
build_kiln
make_project
for c in $CASES; do "case_$c"; done
log "interop: all cases passed ($CASES)"
