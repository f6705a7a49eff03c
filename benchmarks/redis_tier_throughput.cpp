// RedisTier read throughput on a Redis Cluster (scripts/bench-redis.sh runs it next to redis-benchmark and
// writes the table of docs/remote_tier.md). For each value size it puts a set of objects, then reads them all
// `passes` times with get() (one object per call: two round trips, index then payload) and with get_many()
// (every object of the set in two pipelined rounds), and reads one object as many times (the access pattern
// of redis-benchmark, which reads one key), verifying every byte; it prints MB/s per pass as the median over
// passes, and the wrong answers and misses (must be 0).
//
//   redknot_redis_throughput [--seed 127.0.0.1:7100] [--sizes 65536,262144,1048576,4194304] [--passes 5]
//                            [--set-bytes 67108864]
#include <unistd.h>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "redknot/redis_tier.hpp"

namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n == 0 ? 0.0 : (n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]));
}

std::vector<std::byte> bytes_of(std::size_t n, unsigned seed) {
  std::vector<std::byte> b(n);
  std::uint32_t x = seed * 2654435761u + 1;
  for (std::size_t i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    b[i] = static_cast<std::byte>(x >> 24);
  }
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  std::string seed = "127.0.0.1:7100";
  std::vector<std::size_t> sizes{64 << 10, 256 << 10, 1 << 20, 4 << 20};
  int passes = 5;
  std::size_t set_bytes = 64u << 20;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--seed") {
      seed = next();
    } else if (a == "--sizes") {
      sizes.clear();
      const std::string v = next();
      for (std::size_t at = 0; at < v.size();) {
        const std::size_t comma = std::min(v.find(',', at), v.size());
        sizes.push_back(std::stoull(v.substr(at, comma - at)));
        at = comma + 1;
      }
    } else if (a == "--passes") {
      passes = std::max(1, std::atoi(next().c_str()));
    } else if (a == "--set-bytes") {
      set_bytes = std::stoull(next());
    } else {
      std::fprintf(stderr, "usage: %s [--seed host:port] [--sizes a,b,...] [--passes n] [--set-bytes n]\n",
                   argv[0]);
      return 2;
    }
  }
  redknot::RedisClusterOptions o;
  o.seeds = {seed};
  o.command_timeout = std::chrono::milliseconds(5000);
  o.request_deadline = std::chrono::milliseconds(10000);
  redknot::RedisClusterClient client(o);
  if (client.masters().empty()) {
    std::fprintf(stderr, "no Redis Cluster answers at %s (scripts/redis-cluster.sh up)\n", seed.c_str());
    return 1;
  }
  redknot::RedisTier tier(client, redknot::RedisTierOptions{"rkbench-" + std::to_string(::getpid())});
  std::printf("size_bytes,objects,passes,get_MBps,get_many_MBps,get_one_key_MBps,wrong,misses\n");
  int bad = 0;
  for (const std::size_t size : sizes) {
    const std::size_t n = std::clamp<std::size_t>(set_bytes / std::max<std::size_t>(size, 1), 8, 512);
    std::vector<std::string> names;
    std::vector<std::vector<std::byte>> values;
    for (std::size_t i = 0; i < n; ++i) {
      names.push_back("obj-" + std::to_string(size) + "-" + std::to_string(i));
      values.push_back(bytes_of(size, static_cast<unsigned>(i + 1)));
      if (!tier.put(names.back(), values.back())) {
        std::fprintf(stderr, "put %s failed\n", names.back().c_str());
        return 1;
      }
    }
    std::int64_t wrong = 0, misses = 0;
    const auto check = [&](std::size_t i, const std::optional<std::vector<std::byte>>& got) {
      if (!got) {
        ++misses;
      } else if (*got != values[i]) {
        ++wrong;
      }
    };
    std::vector<double> one, many, same;
    const double mb = static_cast<double>(n * size) / 1e6;
    for (int p = 0; p < passes; ++p) {
      auto t0 = Clock::now();
      for (std::size_t i = 0; i < n; ++i) check(i, tier.get(names[i]));
      one.push_back(mb / std::chrono::duration<double>(Clock::now() - t0).count());
      t0 = Clock::now();
      const auto got = tier.get_many(names);
      many.push_back(mb / std::chrono::duration<double>(Clock::now() - t0).count());
      for (std::size_t i = 0; i < n; ++i) check(i, got[i]);
      // One object read n times, as redis-benchmark reads one key: the working set stays in the caches.
      t0 = Clock::now();
      for (std::size_t i = 0; i < n; ++i) check(0, tier.get(names[0]));
      same.push_back(mb / std::chrono::duration<double>(Clock::now() - t0).count());
    }
    std::printf("%zu,%zu,%d,%.1f,%.1f,%.1f,%lld,%lld\n", size, n, passes, median(one), median(many),
                median(same), static_cast<long long>(wrong), static_cast<long long>(misses));
    std::fflush(stdout);
    for (const std::string& name : names) tier.remove(name);
    bad += wrong != 0 || misses != 0;
  }
  return bad == 0 ? 0 : 1;
}
