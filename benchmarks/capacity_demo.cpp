// Live capacity: how many sequences of N tokens fit in one fixed pool, dense vs head-aware.
//
// Both runs use the real KVHeadStore append path (chunked prefill, per-layer retirement of the chunk's
// queries as an engine does after running the layer's attention, one decode token to reach the steady state)
// until the pool is exhausted; the sequence that hit exhaustion is freed, as an engine would preempt it. The
// pool is sized to hold `--dense-seqs` dense sequences. Pools far beyond host RAM use the NullAllocator
// (bookkeeping only: identical page accounting, no bytes), and one host-backed run shows the accounting is
// the same.
//
//   redknot_capacity_demo [--contexts 8192,32768,131072] [--page-size 16] [--dense-seqs 4] [--chunk 2048]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "redknot/redknot.hpp"

using namespace redknot;

namespace {

struct Options {
  std::vector<std::int64_t> contexts{8192, 32768, 131072};
  int page_size = 16;
  int dense_seqs = 4;
  int chunk = 2048;
  double global_ratio = 0.125;
  int window = 512;
  int sink = 64;
  bool host_check = true;
};

// Llama-3-8B attention shape.
const ModelShape kShape{32, 32, 8, 128, DType::kBF16};

struct FillResult {
  std::int64_t sequences = 0;
  std::int64_t pages_per_seq = 0;  // measured: pages in use / sequences
  double seconds = 0;
};

template <Allocator A>
FillResult fill(const HeadMap& map, std::int32_t num_pages, std::int64_t ctx, const Options& o,
                const std::vector<BFloat16>& kv) {
  KVHeadStore<BFloat16, A> store(kShape, map, StoreConfig{o.page_size, num_pages});
  const std::span<const BFloat16> k(kv), v(kv);
  const std::size_t row = static_cast<std::size_t>(kShape.num_kv_heads) * kShape.head_dim;
  std::vector<std::int32_t> pos;
  const auto t0 = std::chrono::steady_clock::now();
  FillResult r;
  for (;;) {
    const SeqId s = store.create_sequence();
    try {
      for (std::int64_t p0 = 0; p0 < ctx - 1; p0 += o.chunk) {
        const std::int64_t n = std::min<std::int64_t>(o.chunk, ctx - 1 - p0);
        pos.resize(static_cast<std::size_t>(n));
        for (std::int64_t i = 0; i < n; ++i)
          pos[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(p0 + i);
        for (int l = 0; l < kShape.num_layers; ++l) {
          store.append(s, l, k.first(static_cast<std::size_t>(n) * row),
                       v.first(static_cast<std::size_t>(n) * row), std::span<const std::int32_t>(pos));
          store.retire_queries(s, static_cast<std::int32_t>(p0 + n), l);  // the layer's attention has run
        }
      }
      // The first decode token: the sequence now holds exactly what decoding keeps.
      const std::int32_t last = static_cast<std::int32_t>(ctx - 1);
      for (int l = 0; l < kShape.num_layers; ++l) store.append(s, l, k.first(row), v.first(row), {&last, 1});
      ++r.sequences;
    } catch (const PoolExhausted&) {
      store.free_sequence(s);
      break;
    }
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.pages_per_seq = r.sequences ? store.pool().used_pages() / r.sequences : 0;
  return r;
}

std::vector<std::int64_t> parse_list(const char* s) {
  std::vector<std::int64_t> out;
  for (const char* p = s; *p;) {
    char* end = nullptr;
    out.push_back(std::strtoll(p, &end, 10));
    p = *end == ',' ? end + 1 : end;
    if (end == p && *p) break;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--contexts")
      o.contexts = parse_list(next());
    else if (a == "--page-size")
      o.page_size = std::atoi(next());
    else if (a == "--dense-seqs")
      o.dense_seqs = std::atoi(next());
    else if (a == "--chunk")
      o.chunk = std::atoi(next());
    else if (a == "--global-ratio")
      o.global_ratio = std::atof(next());
    else if (a == "--window")
      o.window = std::atoi(next());
    else if (a == "--sink")
      o.sink = std::atoi(next());
    else if (a == "--no-host-check")
      o.host_check = false;
    else {
      std::fprintf(
          stderr,
          "usage: %s [--contexts 8192,32768,131072] [--page-size 16] [--dense-seqs 4] [--chunk 2048]\n"
          "          [--global-ratio 0.125] [--window 512] [--sink 64] [--no-host-check]\n",
          argv[0]);
      return a == "--help" || a == "-h" ? 0 : 2;
    }
  }
  try {
    const HeadMap dense = HeadMap::all_global(kShape.num_layers, kShape.num_kv_heads);
    const HeadMap aware =
        HeadMap::with_global_ratio(kShape.num_layers, kShape.num_kv_heads, o.global_ratio, o.window, o.sink);
    std::vector<BFloat16> kv(static_cast<std::size_t>(o.chunk) * kShape.num_kv_heads * kShape.head_dim,
                             BFloat16(0.5f));
    const double page_mib = 2.0 * o.page_size * kShape.head_dim * 2 / (1024.0 * 1024.0);
    std::printf(
        "redknot live capacity: Llama-3-8B attention shape (32 layers, 32 q / 8 kv heads, head_dim 128, "
        "bf16)\n");
    std::printf(
        "head-aware map: %d of %d heads global (%.1f%%), local window %d, sink %d; page size %d; "
        "prefill chunk %d\n\n",
        aware.count_global_like(), 256, 100.0 * aware.global_ratio(), o.window, o.sink, o.page_size, o.chunk);
    std::printf("%8s %9s %8s %6s %6s %8s %8s %10s %9s %7s\n", "context", "pool GiB", "backing", "dense",
                "aware", "ratio", "bound", "aware max", "of max", "fill s");
    bool within = true;
    auto row = [&](std::int64_t ctx, bool host) {
      const std::int64_t dense_pages =
          KVHeadStore<BFloat16, NullAllocator>(kShape, dense, {o.page_size, 1}).pages_per_sequence(ctx);
      const auto num_pages = static_cast<std::int32_t>(dense_pages * o.dense_seqs);
      const FillResult d = host ? fill<HostAllocator>(dense, num_pages, ctx, o, kv)
                                : fill<NullAllocator>(dense, num_pages, ctx, o, kv);
      const FillResult a = host ? fill<HostAllocator>(aware, num_pages, ctx, o, kv)
                                : fill<NullAllocator>(aware, num_pages, ctx, o, kv);
      const std::int64_t aware_pages =
          KVHeadStore<BFloat16, NullAllocator>(kShape, aware, {o.page_size, 1}).pages_per_sequence(ctx);
      const double ratio = static_cast<double>(a.sequences) / static_cast<double>(d.sequences);
      const double bound = static_cast<double>(dense_pages) / static_cast<double>(aware_pages);
      // The most head-aware sequences the pool can hold at steady state (integer: the pool is finite).
      const std::int64_t aware_max = num_pages / aware_pages;
      const double of_max = static_cast<double>(a.sequences) / static_cast<double>(aware_max);
      within = within && of_max >= 0.95 && d.sequences == o.dense_seqs;
      std::printf("%8lld %9.2f %8s %6lld %6lld %7.2fx %7.2fx %10lld %8.1f%% %7.2f\n",
                  static_cast<long long>(ctx), num_pages * page_mib / 1024.0, host ? "host" : "null",
                  static_cast<long long>(d.sequences), static_cast<long long>(a.sequences), ratio, bound,
                  static_cast<long long>(aware_max), 100.0 * of_max, d.seconds + a.seconds);
      std::fflush(stdout);
    };
    for (std::int64_t ctx : o.contexts) row(ctx, false);
    if (o.host_check) {
      // Same accounting with real host pages, at a size that fits in RAM (1 GiB per dense 8K sequence).
      Options small = o;
      small.dense_seqs = 2;
      std::swap(o, small);
      row(8192, true);
      std::swap(o, small);
    }
    std::printf(
        "\nratio     = measured head-aware sequences / measured dense sequences in the same pool\n"
        "bound     = dense pages / head-aware pages per sequence at steady state (page-granular retention)\n"
        "aware max = floor(pool pages / head-aware pages per sequence): the analytic bound for this pool\n");
    std::printf("%s\n",
                within ? "every measured head-aware count is within 5% of its analytic bound"
                       : "WARNING: a measured head-aware count is more than 5% below its analytic bound");
    return within ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
