// Per-step plan update cost: incremental update vs rebuilding the plan, per sequence, across context lengths.
//
// A batch of 64 sequences of one layer (8 kv heads, 12.5% global, window 512, sink 64) decodes one token per
// step. The incremental AttentionPlan should cost the same per sequence at 1K and at 32K context; a plan
// rebuilt from scratch grows with the pages a global head holds. Pages are bookkeeping only (NullAllocator).
#include <benchmark/benchmark.h>

#include <vector>

#include "redknot/redknot.hpp"

using namespace redknot;

namespace {

const ModelShape kShape{1, 32, 8, 128, DType::kBF16};
// Decode steps per run: fixed, so the pool (sized for ctx + kSteps tokens) can never run out.
constexpr std::int32_t kSteps = 1024;

struct Batch {
  KVHeadStore<BFloat16, NullAllocator> store;
  std::vector<SeqId> seqs;
  std::vector<std::int32_t> q_lens, q_pos;
  std::vector<BFloat16> token;
  std::int32_t next = 0;

  Batch(int batch, std::int32_t ctx)
      : store(kShape, HeadMap::with_global_ratio(1, 8, 0.125, 512, 64),
              StoreConfig{16, static_cast<std::int32_t>(batch * 8 * ((ctx + kSteps) / 16 + 4))}),
        token(8 * 128) {
    std::vector<BFloat16> kv(static_cast<std::size_t>(ctx) * 8 * 128);
    std::vector<std::int32_t> pos(static_cast<std::size_t>(ctx));
    for (std::int32_t i = 0; i < ctx; ++i) pos[static_cast<std::size_t>(i)] = i;
    for (int b = 0; b < batch; ++b) {
      seqs.push_back(store.create_sequence());
      store.append(seqs.back(), 0, std::span<const BFloat16>(kv), std::span<const BFloat16>(kv),
                   std::span<const std::int32_t>(pos));
      q_lens.push_back(1);
      q_pos.push_back(ctx - 1);
    }
    next = ctx;
  }
  void decode_append() {
    for (SeqId s : seqs)
      store.append(s, 0, std::span<const BFloat16>(token), std::span<const BFloat16>(token), {&next, 1});
    for (auto& p : q_pos) p = next;
    ++next;
  }
  void update(AttentionPlan& plan) {
    plan.update(store, 0, std::span<const SeqId>(seqs), std::span<const std::int32_t>(q_lens),
                std::span<const std::int32_t>(q_pos));
  }
};

void BM_plan_update_incremental(benchmark::State& state) {
  const int batch = 64;
  Batch b(batch, static_cast<std::int32_t>(state.range(0)));
  AttentionPlan plan;
  b.update(plan);
  std::int64_t written = 0;
  for (auto _ : state) {
    state.PauseTiming();
    b.decode_append();
    state.ResumeTiming();
    b.update(plan);
    written += plan.last_update().entries_written;
  }
  state.counters["seqs_per_s"] = benchmark::Counter(batch, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["entries_per_step"] = static_cast<double>(written) / static_cast<double>(state.iterations());
}

void BM_plan_rebuild(benchmark::State& state) {
  const int batch = 64;
  Batch b(batch, static_cast<std::int32_t>(state.range(0)));
  std::int64_t written = 0;
  for (auto _ : state) {
    state.PauseTiming();
    b.decode_append();
    state.ResumeTiming();
    AttentionPlan plan;  // what a non-incremental engine does every step
    b.update(plan);
    written += plan.last_update().entries_written;
  }
  state.counters["seqs_per_s"] = benchmark::Counter(batch, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["entries_per_step"] = static_cast<double>(written) / static_cast<double>(state.iterations());
}

}  // namespace

BENCHMARK(BM_plan_update_incremental)
    ->Iterations(kSteps)
    ->Arg(1024)
    ->Arg(8192)
    ->Arg(32768)
    ->ArgName("ctx")
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_plan_rebuild)
    ->Iterations(kSteps / 8)
    ->Arg(1024)
    ->Arg(8192)
    ->Arg(32768)
    ->ArgName("ctx")
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_MAIN();
