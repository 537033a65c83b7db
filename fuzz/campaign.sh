#!/usr/bin/env bash
# Run every fuzz target for a fixed time, one at a time per runner; start a second runner to
# drain the same queue on another core. Each target's generated corpus goes to $WORK/corpus/T,
# its log to $WORK/T.log; the last libFuzzer status line of each is what docs/benchmarks.md
# records.
#
# Usage: fuzz/campaign.sh [SECONDS]   (default 600)
#        WORK=/tmp/fuzz-campaign      scratch directory shared by the runners
#        CARGO_TARGET_DIR             where the fuzz build goes (default /work/target-fuzz)
set -euo pipefail
secs=${1:-600}
cd "$(dirname "$0")"
work=${WORK:-/tmp/fuzz-campaign}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-fuzz}
mkdir -p "$work/claimed" "$work/corpus"
for t in $(ls fuzz_targets | sed 's/\.rs$//'); do
    # A directory is claimed atomically: two runners never take the same target.
    mkdir "$work/claimed/$t" 2>/dev/null || continue
    mkdir -p "$work/corpus/$t"
    CARGO_BUILD_JOBS=1 cargo +nightly fuzz run -s none -a "$t" "$work/corpus/$t" "corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        >"$work/$t.log" 2>&1 || echo "$t: exit $?" >>"$work/failures"
done
