#!/usr/bin/env bash
# The full fidelity evaluation behind docs/fidelity.md: teacher-forced agreement/KL at 2K/4K/8K tokens and
# needle / multi-key retrieval, dense vs the shipped profiled map, a random map and the all-local map.
# Takes about 35 minutes on 2 cores (dense attention at 8K dominates); results land in $OUT (JSON) and a
# markdown summary is printed.
#
#   examples/decoder/eval/run_fidelity.sh [build-dir] [out-dir]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
BUILD="${1:-$ROOT/build-dec}"
OUT="${2:-$ROOT/build-dec/fidelity}"
E="$BUILD/examples/decoder/redknot-eval"
MAP="${MAP:-$ROOT/examples/decoder/head_maps/smollm2-135m.json}"
mkdir -p "$OUT"
run() { local name="$1"; shift; echo "== $name: redknot-eval --head-map $MAP $*" >&2; "$E" --head-map "$MAP" "$@" --json "$OUT/$name.json" --quiet >/dev/null; }

run 2k --lengths 2048 --tasks teacher,needle --depths 0.1,0.3,0.5,0.7,0.9
run 2k_multikey --lengths 2048 --tasks multikey --depths 0.1,0.5,0.9 --keys 2
run 4k_teacher --lengths 4096 --tasks teacher
run 8k_teacher --lengths 8192 --tasks teacher
run 4k_needle --lengths 4096 --tasks needle --depths 0.1,0.5,0.9
run 4k_multikey --lengths 4096 --tasks multikey --depths 0.25,0.75 --keys 2
run 8k_needle --lengths 8192 --tasks needle --depths 0.25,0.75
python3 "$ROOT/examples/decoder/eval/fidelity_report.py" "$OUT"/*.json
