#!/usr/bin/env bash
# Runs each cargo-fuzz target of fuzz/ for SECS seconds (default 60): the CI run.
# Needs cargo-fuzz (`cargo install cargo-fuzz`); stable Rust is enough with
# RUSTC_BOOTSTRAP=1 (cargo-fuzz passes nightly-only sanitizer flags).
# Longer runs: see SECURITY.md. Usage: scripts/fuzz.sh [SECS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-60}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(decode_requests split_run_job_body extract_tar)
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
for target in "${TARGETS[@]}"; do
    echo "fuzzing $target for ${SECS}s"
    # -rss_limit_mb: the unpacker target must stay small; a leak or bomb shows here.
    log=$(mktemp)
    status=0
    cargo fuzz run --release "$target" -- -max_total_time="$SECS" -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+==|SUMMARY|Done)' "$log" || true
    # Non-zero: a crash, leak or oom (an artifact names it), or the target did not build.
    if [ "$status" -ne 0 ]; then
        tail -n 40 "$log" >&2
        echo "fuzz target $target failed (exit $status); artifacts, if any: fuzz/artifacts/$target" >&2
        exit 1
    fi
    rm -f "$log"
done
echo "fuzzing passed"
