// CPU SegPagedAttention decode throughput, dense vs head-aware, against the machine's measured copy
// bandwidth.
//
// One layer of the Llama-3-8B attention shape (32 q / 8 kv heads, head_dim 128, bf16 pages), a batch of
// sequences decoding one token each. "visible bytes" counts the K and V bytes the step must read (the keys
// each head can see); bytes_per_second is that figure over the step time, comparable with BM_memcpy_peak.
#include <benchmark/benchmark.h>

#include <cstring>
#include <random>
#include <vector>

#include "redknot/redknot.hpp"

using namespace redknot;

namespace {

const ModelShape kShape{1, 32, 8, 128, DType::kBF16};

struct DecodeSetup {
  KVHeadStore<BFloat16> store;
  AttentionPlan plan;
  std::vector<SeqId> seqs;
  std::vector<std::int32_t> q_lens, q_pos;
  std::vector<float> q, out;
  double visible_bytes = 0;

  DecodeSetup(const HeadMap& map, int batch, std::int32_t ctx)
      : store(kShape, map, StoreConfig{16, static_cast<std::int32_t>(batch * 8 * (ctx / 16 + 2))}) {
    std::mt19937 rng(1);
    std::normal_distribution<float> nd;
    const std::int32_t chunk = 4096;
    std::vector<BFloat16> kv(static_cast<std::size_t>(chunk) * 8 * 128);
    for (auto& x : kv) x = BFloat16(nd(rng));
    std::vector<std::int32_t> pos;
    for (int b = 0; b < batch; ++b) {
      const SeqId s = store.create_sequence();
      for (std::int32_t p0 = 0; p0 < ctx; p0 += chunk) {
        const std::int32_t n = std::min(chunk, ctx - p0);
        pos.resize(static_cast<std::size_t>(n));
        for (std::int32_t i = 0; i < n; ++i) pos[static_cast<std::size_t>(i)] = p0 + i;
        const std::span<const BFloat16> k(kv.data(), static_cast<std::size_t>(n) * 8 * 128);
        store.append(s, 0, k, k, std::span<const std::int32_t>(pos));
      }
      store.retire_queries(s, ctx - 1);  // decoding the last token: local heads keep sink + window
      seqs.push_back(s);
      q_lens.push_back(1);
      q_pos.push_back(ctx - 1);
      for (int h = 0; h < 8; ++h) {
        const VisibleRanges r = visible_ranges(store.policy(0, h), ctx - 1);
        visible_bytes += static_cast<double>(r.count_in(0, ctx)) * 2 * 128 * sizeof(BFloat16);
      }
    }
    plan.update(store, 0, std::span<const SeqId>(seqs), std::span<const std::int32_t>(q_lens),
                std::span<const std::int32_t>(q_pos));
    q.resize(static_cast<std::size_t>(batch) * 32 * 128);
    for (auto& x : q) x = nd(rng);
    out.resize(q.size());
  }
};

void run_decode(benchmark::State& state, const HeadMap& map) {
  const int batch = static_cast<int>(state.range(0));
  const auto ctx = static_cast<std::int32_t>(state.range(1));
  DecodeSetup s(map, batch, ctx);
  for (auto _ : state) {
    cpu_attention<float>(s.store, s.plan, std::span<const float>(s.q), std::span<float>(s.out));
    benchmark::DoNotOptimize(s.out.data());
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(s.visible_bytes) * state.iterations());
  state.counters["visible_MiB"] = s.visible_bytes / (1024.0 * 1024.0);
  state.counters["kv_MiB_stored"] = static_cast<double>(s.store.stats().bytes_in_use) / (1024.0 * 1024.0);
}

void BM_decode_dense(benchmark::State& state) { run_decode(state, HeadMap::all_global(1, 8)); }
void BM_decode_head_aware(benchmark::State& state) {
  // One of 8 kv heads global (12.5%), the others window 512 + sink 64.
  run_decode(state, HeadMap::with_global_ratio(1, 8, 0.125, 512, 64));
}

// The machine's streaming copy bandwidth (read + write counted), the peak a memory-bound kernel is held to.
void BM_memcpy_peak(benchmark::State& state) {
  const std::size_t bytes = static_cast<std::size_t>(state.range(0)) << 20;
  std::vector<char> a(bytes, 1), b(bytes, 0);
  for (auto _ : state) {
    std::memcpy(b.data(), a.data(), bytes);
    benchmark::DoNotOptimize(b.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(2 * bytes) * state.iterations());
}

}  // namespace

BENCHMARK(BM_memcpy_peak)->Arg(256)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_decode_dense)
    ->ArgsProduct({{4}, {4096, 16384, 32768}})
    ->ArgNames({"batch", "ctx"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_decode_head_aware)
    ->ArgsProduct({{4}, {4096, 16384, 32768}})
    ->ArgNames({"batch", "ctx"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_MAIN();
