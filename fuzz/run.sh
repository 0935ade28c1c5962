#!/usr/bin/env bash
# Run the fuzz harnesses (see fuzz/README.md).
#
#   fuzz/run.sh [SECONDS_EACH] [HARNESS ...]     default: 10 s each, every harness
#   fuzz/run.sh 3600                             one hour each: six hours in all
#
# For each harness: (1) atheris fuzzes it for SECONDS_EACH with coverage
# feedback, on the in-place build (build it first: python setup.py
# build_ext --inplace); (2) every input in its seed corpus, in what the run
# added and in fuzz/regressions/<harness>/ is replayed through the C core
# built with AddressSanitizer + UndefinedBehaviorSanitizer, built here into
# a scratch copy of the tree (the in-place build is left alone). gcc's ASan
# runtime, once preloaded, takes over the coverage hooks atheris needs, so
# the two phases are separate. New inputs stay in a scratch directory
# (FUZZ_KEEP=dir keeps them); crashes go to fuzz/crashes/<harness>/ and fail
# the run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECS=${1:-10}
shift || true
HARNESSES=${*:-segment cursor apply crdt digests slots}

SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/abase-fuzz-run-XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT
mkdir -p "$SCRATCH/tree"
cp -r src csrc setup.py pyproject.toml "$SCRATCH/tree/"
rm -f "$SCRATCH"/tree/src/abase_engine/*.so
(cd "$SCRATCH/tree" && ABASE_SANITIZE=1 python setup.py -q build_ext --inplace --force >"$SCRATCH/build.log" 2>&1) ||
    { cat "$SCRATCH/build.log"; exit 1; }
ASAN_SRC=$SCRATCH/tree/src
SANITIZERS="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"

failed=0
for h in $HARNESSES; do
    corpus=${FUZZ_KEEP:-$SCRATCH}/corpus-$h
    mkdir -p "$corpus" "fuzz/crashes/$h" "fuzz/regressions/$h"
    log=$SCRATCH/$h.log
    start=$(date +%s)
    status=ok
    ABASE_SRC=$ROOT/src PYTHONPATH=$ROOT/src python "fuzz/fuzz_$h.py" -max_total_time="$SECS" -timeout=120 \
        -rss_limit_mb=4096 -artifact_prefix="fuzz/crashes/$h/" "$corpus" "fuzz/corpus/$h" >"$log" 2>&1 ||
        status=FAILED
    stats=$(grep -E "^#[0-9]+" "$log" | tail -1 || true)
    if [ "$status" = ok ]; then
        ABASE_SRC=$ASAN_SRC PYTHONPATH=$ASAN_SRC LD_PRELOAD="$SANITIZERS" \
            ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
            python fuzz/replay.py "$h" "fuzz/corpus/$h" "fuzz/regressions/$h" "$corpus" >>"$log" 2>&1 ||
            status="FAILED (sanitizer replay)"
    fi
    replayed=$(grep -Eo "[0-9]+ input\(s\) replayed" "$log" | tail -1 || true)
    echo "fuzz_$h: $status after $(( $(date +%s) - start )) s: ${stats:-no stats}; ${replayed:-no replay}"
    if [ "$status" != ok ]; then
        failed=1
        tail -60 "$log"
    fi
done
exit $failed
