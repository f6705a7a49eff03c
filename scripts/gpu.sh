#!/usr/bin/env bash
# GPU validation in one command: build the kernels, run the GPU tests, compute-sanitizer, benchmarks.
#
# The GPU machines have CUDA, CMake, ninja and torch but none of the Debian packages the full project needs
# (Catch2, Google Benchmark, nlohmann). So this builds cuda/ in its standalone mode (cuda/CMakeLists.txt):
# the kernels, the self-contained GPU tests (tests/gpu) and the plain-main benchmarks (benchmarks/gpu). The one
# header-only dependency (nlohmann/json, for HeadMap) is copied beforehand into build-gpu-deps/ — ignored by git
# (build-*/), so the device tool must carry it:
#
#   here (no GPU):   scripts/gpu.sh --prepare
#   on the GPU host: scripts/gpu.sh [all|build|test|sanitize|bench]...     (default: all)
#   device tool:     run(command="scripts/gpu.sh all", carry=["build-gpu-deps"])
#
# Results: JSON lines and logs in $OUT when set (the device tool's output folder), else build-gpu/results/.
# Knobs: CUDA_ARCHS (default 90 on the GPU host: build only what runs), JOBS (default nproc), BENCH_QUICK=1
# (fewer contexts), SANITIZE_FULL=1 (sanitize every scenario instead of the small ones). The GPU tests run
# with REDKNOT_GPU_REQUIRE=1: on the GPU host a missing device is a failure, not a skip.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEPS="$ROOT/build-gpu-deps/include"
BUILD="$ROOT/build-gpu"
RESULTS="${OUT:-$BUILD/results}"
JOBS="${JOBS:-$(nproc)}"

section() { printf '\n========== %s ==========\n' "$*"; }

prepare() {
  local src=""
  for d in /usr/include /usr/local/include "${CONDA_PREFIX:-/nonexistent}/include"; do
    if [[ -f "$d/nlohmann/json.hpp" ]]; then src="$d/nlohmann"; break; fi
  done
  [[ -n "$src" ]] || { echo "gpu.sh --prepare: nlohmann/json.hpp not found (apt-get install nlohmann-json3-dev)" >&2; exit 1; }
  rm -rf "$ROOT/build-gpu-deps"
  mkdir -p "$DEPS"
  cp -r "$src" "$DEPS/"
  # xxhash.h (chunk keys, src/chunk_key.cpp) is used header-only (XXH_INLINE_ALL).
  [[ -f /usr/include/xxhash.h ]] || { echo "gpu.sh --prepare: xxhash.h not found (apt-get install libxxhash-dev)" >&2; exit 1; }
  cp /usr/include/xxhash.h "$DEPS/"
  echo "build-gpu-deps/ ready ($(du -sh "$ROOT/build-gpu-deps" | cut -f1)); carry it: carry=[\"build-gpu-deps\"]"
}

find_nvcc() {
  if command -v nvcc >/dev/null; then return; fi
  for d in /usr/local/cuda/bin /usr/local/cuda-*/bin; do
    if [[ -x "$d/nvcc" ]]; then export PATH="$d:$PATH"; return; fi
  done
  echo "gpu.sh: nvcc not found" >&2
  exit 1
}

build() {
  section "build (standalone cuda/, archs ${CUDA_ARCHS:-90})"
  [[ -f "$DEPS/nlohmann/json.hpp" ]] || { echo "missing $DEPS/nlohmann: run scripts/gpu.sh --prepare first and carry build-gpu-deps" >&2; exit 1; }
  find_nvcc
  local gen=()
  command -v ninja >/dev/null && gen=(-G Ninja)
  cmake -S cuda -B "$BUILD" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS:-90}" -DREDKNOT_DEPS_DIR="$DEPS"
  local t0=$SECONDS
  cmake --build "$BUILD" -j "$JOBS"
  echo "build took $((SECONDS - t0)) s"
}

run_tests() {
  section "ctest -L gpu"
  mkdir -p "$RESULTS"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$RESULTS/device.txt" || true
  REDKNOT_GPU_REQUIRE=1 ctest --test-dir "$BUILD" -L gpu --output-on-failure 2>&1 | tee "$RESULTS/ctest.log"
}

sanitize() {
  section "compute-sanitizer (memcheck, racecheck)"
  mkdir -p "$RESULTS"
  local size=small
  [[ "${SANITIZE_FULL:-0}" == "1" ]] && size=all
  local rc=0
  for tool in memcheck racecheck; do
    for case in scenarios split-kv graph rope; do
      echo "--- $tool: $case"
      REDKNOT_GPU_REQUIRE=1 REDKNOT_SCENARIO_SIZE=$size compute-sanitizer --tool "$tool" --error-exitcode 99 \
        "$BUILD/tests_gpu/test_gpu_kernels" "$case" >>"$RESULTS/sanitizer.log" 2>&1 || rc=$?
      tail -n 3 "$RESULTS/sanitizer.log"
    done
  done
  [[ $rc -eq 0 ]] || { echo "compute-sanitizer reported errors (rc=$rc), see sanitizer.log" >&2; return $rc; }
}

bench() {
  section "benchmarks"
  mkdir -p "$RESULTS"
  local out="$RESULTS/bench.jsonl" b="$BUILD/benchmarks_gpu/bench_gpu_attention"
  : >"$out"
  local sweep="4096,8192,16384,32768,65536,131072" pre="8192,16384,32768"
  if [[ "${BENCH_QUICK:-0}" == "1" ]]; then sweep="4096,32768"; pre="8192"; fi
  echo "# $(date -u +%FT%TZ) on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)" \
    >"$RESULTS/bench.cmd"
  # Each command is logged to bench.cmd (for docs/benchmarks.md) and appends JSON lines to bench.jsonl.
  run_bench() {
    echo "$*" >>"$RESULTS/bench.cmd"
    "$@" | tee -a "$out" || echo "{\"error\":\"command failed: $*\"}" >>"$out"
  }
  run_bench "$b" copy
  # The decode target point (batch 64 x 32K), then latency vs context at batch 16 (fits 128K dense in 80 GB).
  run_bench "$b" decode --batch 64 --contexts 32768
  run_bench "$b" decode --batch 16 --contexts "$sweep"
  run_bench "$b" prefill --contexts "$pre"
  run_bench python3 benchmarks/gpu/peers.py decode --batch 64 --contexts 32768
  run_bench python3 benchmarks/gpu/peers.py decode --batch 16 --contexts "$sweep"
  run_bench python3 benchmarks/gpu/peers.py prefill --contexts "$pre"
  python3 benchmarks/gpu/report.py "$out" --plot "$RESULTS/decode_latency.png" | tee "$RESULTS/bench.md"
}

steps=("$@")
[[ ${#steps[@]} -eq 0 ]] && steps=(all)
for s in "${steps[@]}"; do
  case "$s" in
    --prepare|prepare) prepare ;;
    build) build ;;
    test) run_tests ;;
    sanitize) sanitize ;;
    bench) bench ;;
    all)
      # Keep going after a failing step so one run reports everything; fail at the end.
      build
      rc=0
      run_tests || rc=1
      sanitize || rc=1
      bench || rc=1
      [[ $rc -eq 0 ]] || { echo "gpu.sh: some steps failed (see above)" >&2; exit 1; }
      ;;
    *) echo "usage: scripts/gpu.sh [--prepare|all|build|test|sanitize|bench]..." >&2; exit 2 ;;
  esac
done
