#!/usr/bin/env bash
# RedisTier read throughput against redis-benchmark's raw GET on the same loopback cluster, per value size.
#
#   scripts/bench-redis.sh [build dir (default build)] [sizes (default 65536,262144,1048576,4194304)]
#
# Starts the cluster (scripts/redis-cluster.sh up on REDKNOT_REDIS_BASE_PORT, default 7100) unless it is up,
# runs <build>/benchmarks/redknot_redis_throughput (median MB/s over 5 passes of get(), of get_many() and of get()
# of one object repeated), then
# for each size `redis-benchmark --cluster -t set,get -d SIZE -c C` three times (the SET pass stores the value
# the GET pass reads) with C = 1 (one connection, as the tier's client) and C = 8, and prints the median GET
# requests/s times the size as MB/s. The cluster is stopped at the end if this script started it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${1:-build}"
sizes="${2:-65536,262144,1048576,4194304}"
base="${REDKNOT_REDIS_BASE_PORT:-7100}"
tool="$build/benchmarks/redknot_redis_throughput"
[[ -x "$tool" ]] || { echo "no $tool: cmake --build $build --target redknot_redis_throughput" >&2; exit 1; }

started=0
if ! bash "$root/scripts/redis-cluster.sh" status --base-port "$base" >/dev/null 2>&1; then
  bash "$root/scripts/redis-cluster.sh" up --base-port "$base"
  started=1
fi
cleanup() { if [[ $started -eq 1 ]]; then bash "$root/scripts/redis-cluster.sh" down --base-port "$base"; fi; }
trap cleanup EXIT

echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)"
echo "# $(redis-server --version | cut -d' ' -f1-3), hiredis $(dpkg-query -W -f='${Version}' libhiredis-dev 2>/dev/null || echo '?')"
echo "# $tool --seed 127.0.0.1:$base --sizes $sizes --passes 5"
tier_csv="$("$tool" --seed "127.0.0.1:$base" --sizes "$sizes" --passes 5)"
echo "$tier_csv"

median3() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
bench_get_rps() {  # bench_get_rps <size> <clients> <requests>: GET requests/s (CSV line "GET","rps",...)
  redis-benchmark -h 127.0.0.1 -p "$base" --cluster -t set,get -d "$1" -c "$2" -n "$3" --csv 2>/dev/null |
    tr -d '"' | awk -F, '$1 == "GET" { print $2 }'
}

echo
echo "| value size | objects | RedisTier get() MB/s | get_many() MB/s | get() of one object MB/s | redis-benchmark GET -c 1 MB/s | redis-benchmark GET -c 8 MB/s | wrong | misses |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
while IFS=, read -r size objects passes one many same wrong misses; do
  [[ "$size" == size_bytes ]] && continue
  n=$(( 268435456 / size )); (( n < 200 )) && n=200; (( n > 20000 )) && n=20000
  r1=(); r8=()
  for _ in 1 2 3; do
    r1+=("$(bench_get_rps "$size" 1 "$n")")
    r8+=("$(bench_get_rps "$size" 8 "$n")")
  done
  m1="$(median3 "${r1[@]}")"; m8="$(median3 "${r8[@]}")"
  mb1="$(awk -v r="$m1" -v s="$size" 'BEGIN { printf "%.1f", r * s / 1e6 }')"
  mb8="$(awk -v r="$m8" -v s="$size" 'BEGIN { printf "%.1f", r * s / 1e6 }')"
  printf '| %d KiB | %s | %s | %s | %s | %s | %s | %s | %s |\n' $((size / 1024)) "$objects" "$one" "$many" "$same" "$mb1" "$mb8" "$wrong" "$misses"
done <<<"$tier_csv"
echo
echo "(redis-benchmark: -n N requests with N = 256 MiB / size clamped to [200, 20000], --cluster, median of 3 runs)"
