#!/usr/bin/env bash
# The device check that fits a ten-minute GPU lease: prioritised steps, each under `timeout`, each appending
# one line to a summary as soon as it ends, so whatever the lease allows is reported.
#
#   here, once:   scripts/gpu.sh --prepare          (copies header-only deps into build-gpu-deps/, git-ignored)
#   device tool:  run(command="scripts/gpu-check.sh", carry=["build-gpu-deps"], timeout_s=580)
#   dry run:      scripts/gpu-check.sh --dry-run    (prints the plan and the commands; runs nothing)
#
# Steps, most important first:
#   1. build for this device's arch only (CMake standalone cuda/; plain nvcc if CMake fails)
#   2. every GPU test case on the small scenarios (REDKNOT_SCENARIO_SIZE=small), REDKNOT_GPU_REQUIRE=1 (no
#      device = failure)
#   3. decode benchmark at batch 64 x 32K (bf16, head_dim 128, GQA 4, page 16 and 64), dense and 12.5% global,
#      next to the measured copy bandwidth (and FlashInfer / torch where importable)
#   4. every scenario (the large ones too)
#   5. compute-sanitizer memcheck of the decode and prefill kernels on the spliced_histories scenarios (both
#      dtypes, head_dim 64/128, GQA 1/4/8), where the tool exists
#   6. prefill benchmark at 8K
#   7. compute-sanitizer racecheck, same scenarios
# Results: $OUT (or results-gpu/ without it): summary.txt, one log per step, bench.jsonl.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RESULTS="${OUT:-$ROOT/results-gpu}"
BUILD="$ROOT/build-gpu"
DEPS="$ROOT/build-gpu-deps/include"
BUDGET="${GPU_CHECK_BUDGET:-570}"  # seconds for all steps together (the device tool allows 600 per command)
TESTS="$BUILD/tests_gpu/test_gpu_kernels"
BENCH="$BUILD/benchmarks_gpu/bench_gpu_attention"
CASES=(scenarios split-kv graph rope "bad input")
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1

note() { echo "$*" | tee -a "$SUMMARY"; }

# step <name> <timeout seconds> <command...>: runs it under timeout (capped by what is left of the budget),
# logs to <name>.log, one summary line.
step() {
  local name="$1" limit="$2"
  shift 2
  local left=$((BUDGET - (SECONDS - T0)))
  ((limit > left)) && limit=$left
  if ((limit < 10)); then
    note "$(printf '%-22s %-14s' "$name" "NOT RUN (budget spent)")"
    return 1
  fi
  if [[ $DRY -eq 1 ]]; then
    note "[dry-run] $name (timeout ${limit}s): $*"
    return 0
  fi
  local t=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" >"$RESULTS/$name.log" 2>&1
  rc=$?
  local verdict=ok
  [[ $rc -eq 124 || $rc -eq 137 ]] && verdict="TIMEOUT"
  [[ $rc -ne 0 && $verdict == ok ]] && verdict="FAILED(rc=$rc)"
  note "$(printf '%-22s %-14s %4ds  (t=%ds)' "$name" "$verdict" $((SECONDS - t)) $((SECONDS - T0)))"
  tail -n 5 "$RESULTS/$name.log" | sed 's/^/    /' >>"$SUMMARY"
  return $rc
}

find_nvcc() {
  command -v nvcc >/dev/null && return 0
  for d in /usr/local/cuda/bin /usr/local/cuda-*/bin; do
    [[ -x "$d/nvcc" ]] && export PATH="$d:$PATH" && return 0
  done
  return 1
}

device_arch() {  # e.g. 90 for an H100/H200
  local cc
  cc="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '.')"
  echo "${cc:-90}"
}

build_cmake() {
  local gen=()
  command -v ninja >/dev/null && gen=(-G Ninja)
  cmake -S cuda -B "$BUILD" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$ARCH" \
    -DREDKNOT_DEPS_DIR="$DEPS" && cmake --build "$BUILD" -j "$(nproc)"
}

# Fallback without CMake: the same sources, one nvcc line per binary.
build_nvcc() {
  mkdir -p "$BUILD/tests_gpu" "$BUILD/benchmarks_gpu"
  local flags=(-std=c++20 -O3 -lineinfo --expt-relaxed-constexpr -arch="sm_$ARCH" -Iinclude -Icuda -I"$DEPS"
    -Xcompiler=-fopenmp)
  local lib=(cuda/*.cu cuda/*.cpp src/head_map.cpp src/chunk_key.cpp)
  local support=()
  [[ -f tests/support/scenarios.cpp ]] && support=(tests/support/scenarios.cpp)
  nvcc "${flags[@]}" "${lib[@]}" tests/gpu/test_gpu_kernels.cpp tests/gpu/gpu_test_main.cpp "${support[@]}" \
    -o "$BUILD/tests_gpu/test_gpu_kernels" &&
    nvcc "${flags[@]}" "${lib[@]}" benchmarks/gpu/bench_gpu_attention.cpp -o "$BUILD/benchmarks_gpu/bench_gpu_attention"
}

build() {
  [[ -f "$DEPS/nlohmann/json.hpp" ]] || { echo "missing $DEPS: run scripts/gpu.sh --prepare here and carry build-gpu-deps"; return 1; }
  find_nvcc || { echo "nvcc not found"; return 1; }
  build_cmake || { echo "CMake build failed: plain nvcc fallback"; build_nvcc; }
}

gpu_cases() {  # every case, REDKNOT_GPU_REQUIRE=1; keeps going, fails if any failed
  local rc=0 c
  for c in "${CASES[@]}"; do
    echo "=== $c"
    REDKNOT_GPU_REQUIRE=1 "$TESTS" "$c" || rc=1
  done
  return $rc
}

bench_decode() {
  local ps
  "$BENCH" copy | tee -a "$RESULTS/bench.jsonl"
  for ps in 16 64; do
    "$BENCH" decode --batch 64 --contexts 32768 --head-dim 128 --q-heads 32 --kv-heads 8 --page-size "$ps" \
      --ratio 0.125 | tee -a "$RESULTS/bench.jsonl"
  done
  python3 benchmarks/gpu/peers.py decode --batch 64 --contexts 32768 | tee -a "$RESULTS/bench.jsonl" || true
}

sanitizer() {  # <tool> <cases...>
  local tool="$1" rc=0 c
  shift
  command -v compute-sanitizer >/dev/null || { echo "compute-sanitizer not installed: skipped"; return 0; }
  for c in "$@"; do
    echo "=== $tool: $c"
    REDKNOT_GPU_REQUIRE=1 REDKNOT_SCENARIO_SIZE=small REDKNOT_SCENARIO=spliced_histories \
      compute-sanitizer --tool "$tool" --error-exitcode 99 "$TESTS" "$c" || rc=1
  done
  return $rc
}

# Sub-commands the steps run (so each step is one process under one timeout).
if [[ "${1:-}" == "--do" ]]; then
  shift
  what="$1"
  shift
  case "$what" in
    build) build ;;
    cases) gpu_cases ;;
    bench_decode) bench_decode ;;
    bench_prefill) "$BENCH" prefill --contexts 8192 | tee -a "$RESULTS/bench.jsonl" ;;
    sanitizer) sanitizer "$@" ;;
  esac
  exit $?
fi

mkdir -p "$RESULTS"
SUMMARY="$RESULTS/summary.txt"
: >"$SUMMARY"
T0=$SECONDS

if [[ $DRY -eq 0 ]]; then
  find_nvcc || true
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv >"$RESULTS/device.txt" 2>&1 || true
fi
ARCH="${CUDA_ARCHS:-$([[ $DRY -eq 1 ]] && echo 90 || device_arch)}"
note "gpu-check $(date -u +%FT%TZ) arch sm_$ARCH on $(head -2 "$RESULTS/device.txt" 2>/dev/null | tail -1)"

export ARCH
SELF="$ROOT/scripts/gpu-check.sh"
step build 240 "$SELF" --do build || { note "build failed: nothing else can run"; exit 1; }
status=0
step gpu_small 60 env REDKNOT_SCENARIO_SIZE=small "$SELF" --do cases || status=1
step bench_decode 90 "$SELF" --do bench_decode || status=1
step gpu_full 90 "$SELF" --do cases || status=1
step memcheck 60 "$SELF" --do sanitizer memcheck scenarios || status=1
step bench_prefill 30 "$SELF" --do bench_prefill || status=1
step racecheck 60 "$SELF" --do sanitizer racecheck scenarios || status=1
[[ $DRY -eq 0 && -s "$RESULTS/bench.jsonl" ]] && python3 benchmarks/gpu/report.py "$RESULTS/bench.jsonl" >"$RESULTS/bench.md" 2>&1
note "total $((SECONDS - T0)) s, status $status"
exit $status
