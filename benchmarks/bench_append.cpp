// Decode-step append cost: one append_batch call for a whole batch vs one append call per sequence.
//
// 256 sequences of one layer (8 kv heads, head_dim 128, bf16, 12.5% global, window 512, sink 64, page 16)
// each append one token per step, as a decode step does in every layer. The batched call validates, dry-runs
// capacity and commits once for the batch, and copies rows with one mover pass; the per-sequence calls repeat
// that work 256 times. Host pages (the bytes are copied: this is the whole append, not only bookkeeping).
#include <benchmark/benchmark.h>

#include <vector>

#include "redknot/redknot.hpp"

using namespace redknot;

namespace {

const ModelShape kShape{1, 32, 8, 128, DType::kBF16};
constexpr std::int32_t kSteps = 512;
constexpr std::int32_t kCtx = 1024;

struct Batch {
  KVHeadStore<BFloat16> store;
  std::vector<SeqId> seqs;
  std::vector<std::int32_t> offsets, pos;
  std::vector<BFloat16> kv;
  std::int32_t next = kCtx;

  explicit Batch(int batch)
      : store(kShape, HeadMap::with_global_ratio(1, 8, 0.125, 512, 64),
              StoreConfig{16, static_cast<std::int32_t>(batch * 8 * ((kCtx + kSteps) / 16 + 4))}),
        kv(static_cast<std::size_t>(batch) * 8 * 128, BFloat16{}) {
    std::vector<BFloat16> prompt(static_cast<std::size_t>(kCtx) * 8 * 128);
    std::vector<std::int32_t> ppos(static_cast<std::size_t>(kCtx));
    for (std::int32_t i = 0; i < kCtx; ++i) ppos[static_cast<std::size_t>(i)] = i;
    offsets.push_back(0);
    for (int b = 0; b < batch; ++b) {
      seqs.push_back(store.create_sequence());
      store.append(seqs.back(), 0, std::span<const BFloat16>(prompt), std::span<const BFloat16>(prompt),
                   std::span<const std::int32_t>(ppos));
      offsets.push_back(b + 1);
    }
    pos.assign(static_cast<std::size_t>(batch), 0);
  }
  void step_batched() {
    for (auto& p : pos) p = next;
    store.append_batch(0, std::span<const SeqId>(seqs), std::span<const std::int32_t>(offsets),
                       std::span<const BFloat16>(kv), std::span<const BFloat16>(kv),
                       std::span<const std::int32_t>(pos));
    ++next;
  }
  void step_per_sequence() {
    const std::size_t row = 8 * 128;
    for (std::size_t b = 0; b < seqs.size(); ++b)
      store.append(seqs[b], 0, std::span<const BFloat16>(kv.data() + b * row, row),
                   std::span<const BFloat16>(kv.data() + b * row, row), {&next, 1});
    ++next;
  }
};

void BM_append_batched(benchmark::State& state) {
  Batch b(static_cast<int>(state.range(0)));
  for (auto _ : state) b.step_batched();
  state.counters["seqs_per_s"] =
      benchmark::Counter(static_cast<double>(state.range(0)), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_append_per_sequence(benchmark::State& state) {
  Batch b(static_cast<int>(state.range(0)));
  for (auto _ : state) b.step_per_sequence();
  state.counters["seqs_per_s"] =
      benchmark::Counter(static_cast<double>(state.range(0)), benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

BENCHMARK(BM_append_batched)->Iterations(kSteps)->Arg(256)->ArgName("batch")->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_append_per_sequence)
    ->Iterations(kSteps)
    ->Arg(256)
    ->ArgName("batch")
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_MAIN();
