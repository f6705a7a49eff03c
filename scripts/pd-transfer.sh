#!/usr/bin/env bash
# Prefill/decode disaggregation on the real model (SmolLM2-135M) over a loopback Redis Cluster: for prompts of
# 2K, 4K and 8K tokens, `redknot-decode --role prefill` and `--role decode` run as two processes, beside one
# single-process run of the same prompt; the generated ids must be identical. Reports the bytes published
# (KV objects + handoff record) against a dense payload (every head, every position, fp32 K and V rows, no
# headers), and the publish and restore times.
#
#   scripts/pd-transfer.sh [--base-port 7200] [--build-dir build] [--mode redknot|dense] [--keep-cluster]
# Environment: PD_SIZES (default "2048 4096 8000": the model's context is 8192, and the prompt plus the new
# tokens must fit), PD_MAX_NEW (32), REDKNOT_REDIS_MAXMEMORY (per node, when the cluster is created).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
base=7200
build=build
mode=redknot
keep=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --base-port) base="${2:?--base-port needs a value}"; shift 2 ;;
    --build-dir) build="${2:?--build-dir needs a value}"; shift 2 ;;
    --mode) mode="${2:?--mode needs a value}"; shift 2 ;;
    --keep-cluster) keep=1; shift ;;
    *) echo "pd-transfer: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
[[ "$mode" == redknot || "$mode" == dense ]] || { echo "pd-transfer: --mode '$mode' is not redknot or dense" >&2; exit 2; }
sizes="${PD_SIZES:-2048 4096 8000}"
max_new="${PD_MAX_NEW:-32}"
seeds="127.0.0.1:$base,127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2))"
map="examples/decoder/head_maps/smollm2-135m.json"

log() { printf '[pd-transfer] %s\n' "$*" >&2; }

model="$(bash scripts/get-model.sh)"
if [[ ! -f "$build/CMakeCache.txt" ]]; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DREDKNOT_BUILD_EXAMPLES=ON -DREDKNOT_BUILD_PYTHON=OFF \
    -DREDKNOT_ENABLE_CUDA=OFF >&2
fi
log "building redknot-decode in $build"
nice cmake --build "$build" -j1 --target redknot-decode >&2
bin="$build/examples/decoder/redknot-decode"

scripts/redis-cluster.sh up --base-port "$base" >&2
if [[ "$keep" == 0 ]]; then trap 'scripts/redis-cluster.sh down --base-port "$base" >&2' EXIT; fi

work="$(mktemp -d "${TMPDIR:-/tmp}/redknot-pd.XXXXXX")"
trap 'rm -rf "$work"; [[ "$keep" == 1 ]] || scripts/redis-cluster.sh down --base-port "$base" >&2' EXIT
# A long natural text: the common licenses (about 300 KB, more than 8K tokens), as the calibration corpus.
cat /usr/share/common-licenses/* >"$work/text.txt"
common=(--model "$model" --mode "$mode" --raw --max-new "$max_new" --prompt-file "$work/text.txt" --quiet)
[[ "$mode" == redknot ]] && common+=(--head-map "$map")

now() { date +%s.%N; }
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(date -u '+%Y-%m-%d %H:%M UTC'); load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "mode $mode, max_new $max_new, cluster $seeds"
echo
echo "| prompt tokens | published bytes | dense bytes | ratio | objects | prefill s | publish s | restore s (record, swap_in) | decode s | ids identical |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
fail=0
for n in $sizes; do
  name="pd-$n-$$"
  log "$n tokens: single-process run"
  "$bin" "${common[@]}" --prompt-tokens "$n" --ids >"$work/single.$n" 2>"$work/single.$n.err" || { cat "$work/single.$n.err" >&2; exit 1; }
  log "$n tokens: --role prefill"
  "$bin" "${common[@]}" --prompt-tokens "$n" --role prefill --remote "$seeds" --name "$name" >"$work/prefill.$n" 2>"$work/prefill.$n.err" || { cat "$work/prefill.$n.err" >&2; exit 1; }
  log "$n tokens: --role decode"
  t0=$(now)
  "$bin" "${common[@]}" --role decode --remote "$seeds" --name "$name" --ids >"$work/decode.$n" 2>"$work/decode.$n.err" || { cat "$work/decode.$n.err" >&2; exit 1; }
  t1=$(now)
  single_ids="$(grep '^ids ' "$work/single.$n")"
  decode_ids="$(grep '^ids ' "$work/decode.$n")"
  same=no
  if [[ "$single_ids" == "$decode_ids" && -n "$single_ids" ]]; then same=yes; else fail=1; fi
  read -r published kv objects ticket dense ratio < <(sed -n 's/^published \([0-9]*\) bytes (kv \([0-9]*\) in \([0-9]*\) objects, ticket \([0-9]*\)), dense \([0-9]*\), ratio \([0-9.]*\)$/\1 \2 \3 \4 \5 \6/p' "$work/prefill.$n") || true
  read -r prefill_s publish_s < <(sed -n 's/^prompt_tokens [0-9]* prefill_s \([0-9.]*\) publish_s \([0-9.]*\)$/\1 \2/p' "$work/prefill.$n") || true
  restore="$(sed -n 's/^restore_s \(.*\)$/\1/p' "$work/decode.$n.err")"
  decode_s="$(sed -n 's/^decode_s \(.*\)$/\1/p' "$work/decode.$n.err")"
  echo "| $n | $published | $dense | $ratio | $objects | $prefill_s | $publish_s | $restore | $decode_s | $same |"
  if [[ "$same" != yes ]]; then
    log "MISMATCH at $n tokens:"; log "single: $single_ids"; log "decode: $decode_ids"
  fi
  log "$n tokens: decode process wall $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') s; text: $(head -c 120 "$work/decode.$n" | tr '\n' ' ')"
done
echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
exit "$fail"
