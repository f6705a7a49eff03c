#!/usr/bin/env bash
# The main demo: a real model (SmolLM2-135M-Instruct) answers one long prompt twice, with a dense KV cache and
# with redknot's head-aware cache (the profiled head map shipped in examples/decoder/head_maps), and prints
# TTFT, decode speed, KV bytes, agreement and both outputs side by side.
#
#   scripts/demo.sh [redknot-demo options]     e.g. --tokens 4096 --depth 0.5 --max-new 24 (default: 8128
#                                              tokens, about 2 minutes on 2 cores)
#   scripts/demo.sh --capacity [options]       the capacity demo (benchmarks/capacity_demo.cpp) instead
#   scripts/demo.sh --rag [options]            document reuse instead: one multi-document request answered by a
#                                              full dense prefill, then from the chunk registry with a cold
#                                              and a warm cache (e.g. --tokens 4096 --strategy first_k:16;
#                                              default 4096 tokens, about 2 minutes on 2 cores)
#
# Fresh machine: installs dependencies, downloads the model (scripts/get-model.sh), builds, and profiles the
# model first if the shipped head map is missing. See scripts/common.sh for build knobs.
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if [[ "${1:-}" == "--capacity" ]]; then
  shift
  install_deps
  configure
  build redknot_capacity_demo
  section "redknot_capacity_demo"
  exec "$BUILD_DIR/benchmarks/redknot_capacity_demo" "$@"
fi

install_deps
section "model"
MODEL="$(bash "$REDKNOT_ROOT/scripts/get-model.sh")"
echo "$MODEL"
configure
build redknot-demo

TOOLS="$BUILD_DIR/examples/decoder"
MAP="$REDKNOT_ROOT/examples/decoder/head_maps/smollm2-135m.json"
if [[ ! -f "$MAP" ]]; then
  # Same command as examples/decoder/head_maps/README.md, written into the build directory.
  build redknot-profile
  MAP="$REDKNOT_ROOT/$BUILD_DIR/smollm2-135m.json"
  section "profiling heads (no shipped head map)"
  "$TOOLS/redknot-profile" --model "$MODEL" --out "$MAP" --global-ratio 0.09 --window 512 --sink 16 \
    --tokens 4096 --docs 3 --synthetic 1 --rows 48 --retrieval 4 --retrieval-tokens 4096 \
    --kv-reduction 4.05 --budget-tokens 8192
fi

if [[ " $* " == *" --rag "* ]]; then
  section "redknot-demo --rag: full dense prefill vs document reuse, cold and warm cache ($(basename "$MAP"))"
else
  section "redknot-demo: dense vs redknot ($(basename "$MAP"))"
fi
exec "$TOOLS/redknot-demo" --model "$MODEL" --head-map "$MAP" "$@"
