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
#   scripts/demo.sh --remote [options]         the remote tier: starts a Redis Cluster on loopback
#                                              (scripts/redis-cluster.sh up, 6 redis-server processes on
#                                              ports $REDKNOT_DEMO_REDIS_BASE_PORT..+5, default 7600), then
#                                              redknot-tier-bench answers two 2K-token requests with their
#                                              documents in the store (primary), fetched from the cluster
#                                              (remote: RedisTier) and in no tier (cold: prefilled again);
#                                              prints TTFT, bytes fetched per request against the dense payload
#                                              (fp32 K+V of every head and position) and whether answers and
#                                              first-token logits match. Options go to redknot-tier-bench
#                                              (e.g. --faults all adds the fault scenario, --length 4096); the
#                                              cluster is taken down at the end if the demo started it
#                                              (REDKNOT_DEMO_KEEP_CLUSTER=1 keeps it). About 4 minutes on 2 cores.
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

if [[ "${1:-}" == "--remote" ]]; then
  shift
  install_deps
  section "model"
  MODEL="$(bash "$REDKNOT_ROOT/scripts/get-model.sh")"
  echo "$MODEL"
  configure
  build redknot-tier-bench
  REDIS_BASE="${REDKNOT_DEMO_REDIS_BASE_PORT:-7600}"
  section "Redis Cluster on 127.0.0.1:$REDIS_BASE..$((REDIS_BASE + 5)) (scripts/redis-cluster.sh)"
  # Only a cluster the demo started is taken down again (one that was up may be someone's test run).
  if ! bash "$REDKNOT_ROOT/scripts/redis-cluster.sh" status --base-port "$REDIS_BASE" >/dev/null 2>&1 &&
    [[ "${REDKNOT_DEMO_KEEP_CLUSTER:-0}" != "1" ]]; then
    trap 'bash "$REDKNOT_ROOT/scripts/redis-cluster.sh" down --base-port "$REDIS_BASE" || true' EXIT
  fi
  bash "$REDKNOT_ROOT/scripts/redis-cluster.sh" up --base-port "$REDIS_BASE"
  section "redknot-tier-bench: documents in the store, fetched from the Redis Cluster, or prefilled again"
  # Defaults first: later options given to the demo replace them. 8 documents keep the one-off prefill of
  # the corpus short; two 2K-token requests, one run each.
  "$BUILD_DIR/examples/decoder/redknot-tier-bench" --model "$MODEL" \
    --head-map "$REDKNOT_ROOT/examples/decoder/head_maps/smollm2-135m.json" --scenarios a \
    --tiers primary,remote,cold --remote "127.0.0.1:$REDIS_BASE" --cluster-base-port "$REDIS_BASE" \
    --requests 2 --repeats 1 --length 2048 --fact-docs 2 --plain-docs 6 \
    --dir "${TMPDIR:-/tmp}/redknot-demo-remote" "$@"
  exit 0
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
