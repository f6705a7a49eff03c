#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz/ with clang (ASan + UBSan) into build-fuzz/ and runs each for a
# bounded time, seeded from tests/fuzz/corpus/<name>/ and tests/fuzz/regressions/<name>/.
#
#   scripts/fuzz.sh [seconds] [targets...]     e.g. scripts/fuzz.sh            (every target, 30 s each)
#                                                   scripts/fuzz.sh 600 c_api  (a long run of one target)
#
# New corpus entries go to a temporary directory (the committed corpus is never modified); crash, leak,
# timeout and OOM inputs go to $FUZZ_ARTIFACTS (default: a temporary directory, printed). Exits non-zero if
# any target found one. Knobs: FUZZ_JOBS (parallel fuzz jobs per target, default 1), FUZZ_BUILD_DIR.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
seconds=${1:-30}
shift || true
build=${FUZZ_BUILD_DIR:-build-fuzz}
jobs=${FUZZ_JOBS:-1}

if [[ $# -gt 0 ]]; then
  targets=("$@")
else
  targets=()
  for f in tests/fuzz/fuzz_*.cpp; do
    n=$(basename "$f" .cpp)
    targets+=("${n#fuzz_}")
  done
fi

launcher=()
if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
CC=${CC:-clang} CXX=${CXX:-clang++} cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DREDKNOT_BUILD_FUZZERS=ON -DREDKNOT_BUILD_TESTS=OFF -DREDKNOT_ENABLE_CUDA=OFF -DREDKNOT_BUILD_PYTHON=OFF \
  -DREDKNOT_BUILD_BENCHMARKS=OFF -DREDKNOT_BUILD_EXAMPLES=OFF "${launcher[@]}" >/dev/null
cmake --build "$build" -j"$(nproc)" --target "${targets[@]/#/fuzz_}"

artifacts=${FUZZ_ARTIFACTS:-$(mktemp -d -t redknot-fuzz-artifacts.XXXXXX)}
mkdir -p "$artifacts"
work=$(mktemp -d -t redknot-fuzz-corpus.XXXXXX)
trap 'rm -rf "$work"' EXIT
# Huge allocations are part of the contract under test (they must become RK_ERR_POOL_EXHAUSTED), so ASan
# returns NULL instead of aborting; leaks are reported.
export ASAN_OPTIONS=${ASAN_OPTIONS:-allocator_may_return_null=1:detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

failed=0
for t in "${targets[@]}"; do
  bin="$build/tests/fuzz/fuzz_$t"
  mkdir -p "$work/$t" "$artifacts/$t"
  seeds=()
  for d in "tests/fuzz/corpus/$t" "tests/fuzz/regressions/$t"; do
    [[ -d "$d" ]] && seeds+=("$root/$d")
  done
  echo "== fuzz_$t: ${seconds}s, seeds: ${seeds[*]:-none}, artifacts: $artifacts/$t"
  set +e
  par=()
  if [[ $jobs -gt 1 ]]; then par=(-jobs="$jobs" -workers="$jobs"); fi
  "$bin" "$work/$t" "${seeds[@]}" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
    "${par[@]}" -print_final_stats=1 -artifact_prefix="$artifacts/$t/" \
    2>&1 | tee "$artifacts/$t/log.txt" | grep -E "^#[0-9]+[[:space:]]+(INITED|DONE)|ERROR|SUMMARY|stat::|Test unit written|MISMATCH|returned"
  rc=${PIPESTATUS[0]}
  set -e
  crashes=$(find "$artifacts/$t" -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
  if [[ $rc -ne 0 || $crashes -gt 0 ]]; then
    echo "!! fuzz_$t FAILED (exit $rc, $crashes input(s) in $artifacts/$t); keep each as tests/fuzz/regressions/$t/<name>"
    failed=1
  else
    echo "ok fuzz_$t ($(find "$work/$t" -type f | wc -l) new corpus entries, discarded)"
  fi
done
exit $failed
