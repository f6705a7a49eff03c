#!/usr/bin/env bash
# Mutation check of the CUDA kernels' tests in the host execution mode (no GPU needed): each mutation a reviewer
# would try is applied to a scratch copy of the committed tree, test_cuda_host is rebuilt and the case that must
# catch it runs. Prints CAUGHT or MISSED per mutation; exits 1 if any was missed.
#
#   scripts/cuda-host-mutations.sh [build-dir]     (default: build-mutations; takes ~2 min per mutation)
set -euo pipefail
root=$(git rev-parse --show-toplevel)
build=$(realpath -m "${1:-$root/build-mutations}")
scratch=$(mktemp -d)
work="$scratch/src"
git -C "$root" worktree add --detach "$work" HEAD >/dev/null
trap 'git -C "$root" worktree remove --force "$work"; rm -rf "$scratch"' EXIT

rm -f "$build/CMakeCache.txt"  # the scratch source tree differs from run to run
cmake -S "$work" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DREDKNOT_ENABLE_CUDA=OFF \
  -DREDKNOT_BUILD_BENCHMARKS=OFF -DREDKNOT_BUILD_EXAMPLES=OFF -DREDKNOT_BUILD_PYTHON=OFF >/dev/null

# name | file | text to replace | replacement | test case | scenario filter (REDKNOT_SCENARIO); "\n" is a
# newline. (The decode kernel's barrier before the next staging round is not among them: the block scan that
# starts the round synchronises the CTA anyway, so removing it changes nothing.)
mutations=(
  "NaN decode output|cuda/decode_kernel.cuh|const float o = Lsum > 0.f ? O / Lsum : 0.f;|const float o = NAN;|scenarios|prefill_decode_fork"
  "window mask off by one (decode)|cuda/decode_kernel.cuh|is_visible(pol, q_pos, kpos[j])|is_visible(pol, q_pos + 1, kpos[j])|scenarios|prefill_decode_fork"
  "window mask off by one (prefill)|cuda/prefill.cu|(kp >= 0 && is_visible(pol, qp, kp))|(kp >= 0 && is_visible(pol, qp - 1, kp))|scenarios|prefill_decode_fork"
  "skipped __syncthreads (prefill: K buffer reuse)|cuda/prefill.cu|__syncthreads();  // K buffer free; next key table visible|// mutation: no barrier|scenarios|prefill_decode_fork"
  "skipped __syncthreads (decode: staged entries published)|cuda/decode_kernel.cuh|if (tid == 0) s_total = total;\n    __syncthreads();|if (tid == 0) s_total = total;|scenarios|prefill_decode_fork"
  "wrong ldmatrix lane mapping (prefill K)|cuda/prefill.cu|((lane >> 4) << 3)) * kStride|((lane >> 3) & 1) * 8) * kStride|scenarios|prefill_decode_fork"
  "wrong mma fragment (A rows)|cuda/host_mode/ptx_fragments.hpp|return {g + ((r & 1) ? 8 : 0), 2 * t + half + ((r & 2) ? 8 : 0)};|return {g + ((r & 2) ? 8 : 0), 2 * t + half + ((r & 1) ? 8 : 0)};|scenarios|prefill_decode_fork"
  "dropped split-KV chunk in the merge|cuda/decode_kernel.cuh|for (int c = 0; c < n; ++c) {|for (int c = 0; c < n - 1; ++c) {|split-kv|prefill_decode_fork"
)

missed=0
for m in "${mutations[@]}"; do
  IFS='|' read -r name file from to case filter <<<"$m"
  python3 - "$work/$file" "$from" "$to" <<'EOF'
import sys
path, old, new = (sys.argv[1],) + tuple(a.replace("\\n", "\n") for a in sys.argv[2:4])
s = open(path).read()
if old not in s:
    sys.exit(f"mutation text not found in {path}: {old}")
open(path, "w").write(s.replace(old, new, 1))
EOF
  if ! cmake --build "$build" --target test_cuda_host >/dev/null 2>&1; then
    echo "CAUGHT  $name (does not compile)"
  elif REDKNOT_GPU_REQUIRE=1 REDKNOT_SCENARIO="$filter" timeout 900 "$build/tests/test_cuda_host" "$case" \
      >"$scratch/out.txt" 2>&1; then
    echo "MISSED  $name ($case, REDKNOT_SCENARIO=$filter)"
    missed=1
  else
    echo "CAUGHT  $name: $(grep -m1 -E 'FAILED:|EXCEPTION|launch failed' "$scratch/out.txt" | cut -c1-160)"
  fi
  git -C "$work" checkout -- "$file"
done
exit $missed
