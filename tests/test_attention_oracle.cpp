// The one parametrised harness: CPU SegPagedAttention against the dense fp64 oracle.
//
// Every scenario drives a store and the oracle in lockstep through chunked prefill, decode, a position jump
// (a spliced chunk), a fork and divergent continuation of parent and child, and compares every attention
// output and LSE. The head map mixes global heads, a dense prefix layer and local heads whose windows are
// smaller and larger than the context, with sinks 0, 4 and 64, so each scenario covers all of them.
// Parameters: storage dtype x activation dtype x head_dim {64, 128} x GQA ratio {1, 4, 8} x page size {16,
// 64}.
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>

#include "harness.hpp"

using namespace rktest;

namespace {

// Tolerances on |out - oracle| and |lse - oracle| by activation dtype: K/V rounding is mirrored by the
// oracle, so what remains is fp32 accumulation (f32) or rounding of q and the output to 16 bits.
template <class QT>
constexpr double tolerance() {
  if constexpr (std::is_same_v<QT, float>)
    return 2e-5;
  else if constexpr (std::is_same_v<QT, Half>)
    return 2e-3;
  else
    return 1.6e-2;
}

HeadMap mixed_map(int layers, int kv_heads) {
  // (window, sink) pairs for local heads, cycled over the grid; every 5th head is global.
  const std::pair<int, int> local[] = {{8, 0}, {8, 4},  {24, 64}, {1000, 0},
                                       {1, 4}, {40, 4}, {16, 64}, {3, 0}};
  HeadMap m = HeadMap::all_global(layers, kv_heads);
  int i = 0;
  for (int l = 0; l < layers; ++l)
    for (int h = 0; h < kv_heads; ++h, ++i) {
      if (i % 5 == 0) continue;
      const auto [w, s] = local[i % 8];
      m.set(l, h, HeadPolicy{HeadClass::kLocal, w, s});
    }
  m.set_dense_prefix_layers(1);  // layer 0 is dense whatever its row says
  return m;
}

template <StorageType T, class QT>
void run_scenario(int head_dim, int gqa, int page_size, int kv_chunk = AttentionParams{}.kv_chunk) {
  const int L = 3, Hk = 2;
  const ModelShape shape{L, Hk * gqa, Hk, head_dim, dtype_of<T>()};
  const HeadMap map = mixed_map(L, Hk);
  KVHeadStore<T> store(shape, map, StoreConfig{page_size, 4096});
  DenseOracle oracle(shape, map);
  std::vector<AttentionPlan> plans(L);  // one per layer, so updates stay incremental across steps
  std::mt19937 rng(static_cast<unsigned>(head_dim * 131 + gqa * 17 + page_size));
  const double tol = tolerance<QT>();
  const std::size_t kv_row = static_cast<std::size_t>(Hk) * head_dim;
  const std::size_t q_row = static_cast<std::size_t>(shape.num_q_heads) * head_dim;

  // One step for a batch: every sequence appends its tokens, then attends with them, layer by layer.
  auto step = [&](std::vector<SeqId> seqs, std::vector<std::vector<std::int32_t>> pos) {
    std::vector<std::int32_t> q_lens, q_pos;
    for (auto& p : pos) {
      q_lens.push_back(static_cast<std::int32_t>(p.size()));
      q_pos.insert(q_pos.end(), p.begin(), p.end());
    }
    for (int l = 0; l < L; ++l) {
      for (std::size_t b = 0; b < seqs.size(); ++b) {
        const auto k = random_tensor<T>(rng, pos[b].size() * kv_row);
        const auto v = random_tensor<T>(rng, pos[b].size() * kv_row);
        store.append(seqs[b], l, std::span<const T>(k), std::span<const T>(v),
                     std::span<const std::int32_t>(pos[b]));
        oracle.append<T>(seqs[b], l, std::span<const T>(k), std::span<const T>(v), pos[b]);
      }
      AttentionPlan& plan = plans[static_cast<std::size_t>(l)];
      plan.update(store, l, std::span<const SeqId>(seqs), std::span<const std::int32_t>(q_lens),
                  std::span<const std::int32_t>(q_pos));
      check_plan_mirrors_store(plan, store);
      const auto q = random_tensor<QT>(rng, q_pos.size() * q_row);
      std::vector<QT> out(q.size());
      std::vector<float> lse(q_pos.size() * static_cast<std::size_t>(shape.num_q_heads));
      cpu_attention<QT>(store, plan, std::span<const QT>(q), std::span<QT>(out), std::span<float>(lse),
                        AttentionParams{0.f, 0, kv_chunk});
      std::size_t row0 = 0;
      for (std::size_t b = 0; b < seqs.size(); ++b) {
        std::vector<double> ref_out, ref_lse;
        const std::span<const QT> qb(q.data() + row0 * q_row, pos[b].size() * q_row);
        oracle.attention<QT>(seqs[b], l, qb, pos[b], ref_out, ref_lse);
        double max_out = 0, max_lse = 0;
        for (std::size_t i = 0; i < ref_out.size(); ++i)
          max_out =
              std::max(max_out, std::abs(static_cast<double>(to_float(out[row0 * q_row + i])) - ref_out[i]));
        for (std::size_t i = 0; i < ref_lse.size(); ++i)
          max_lse = std::max(max_lse, std::abs(lse[row0 * shape.num_q_heads + i] - ref_lse[i]));
        INFO("layer " << l << " item " << b << " positions " << pos[b].front() << ".." << pos[b].back());
        REQUIRE(max_out <= tol);
        REQUIRE(max_lse <= tol * 4);
        row0 += pos[b].size();
      }
    }
    check_accounting(store);
  };

  const SeqId a = store.create_sequence();
  const SeqId b = store.create_sequence();
  // Chunked prefill of two sequences with different lengths, batched together.
  step({a, b}, {iota_positions(0, 37), iota_positions(0, 70)});
  step({a, b}, {iota_positions(37, 29), iota_positions(70, 5)});
  // Decode steps.
  for (int t = 0; t < 4; ++t) step({a, b}, {{66 + t}, {75 + t}});
  // A spliced chunk: positions jump ahead (a reused document placed further on).
  step({a}, {iota_positions(200, 23)});
  // Fork b, then let parent and child diverge (copy-on-write of the partial tail pages).
  const SeqId c = store.fork(b);
  oracle.fork(b, c);
  check_accounting(store);
  for (int t = 0; t < 3; ++t) step({a, b, c}, {{223 + t}, {79 + t}, {79 + t}});
  step({c}, {iota_positions(82, 19)});
  step({b, c}, {{82}, {101}});
  // Free one side of the fork: the other keeps the shared pages.
  store.free_sequence(b);
  oracle.free(b);
  check_accounting(store);
  step({c, a}, {{102}, {226}});
  store.free_sequence(a);
  store.free_sequence(c);
  REQUIRE(store.pool().used_pages() == 0);
  REQUIRE(store.stats().pages_global == 0);
  REQUIRE(store.stats().pages_local == 0);
}

template <StorageType T, class QT>
void run_grid() {
  const int head_dim = GENERATE(64, 128);
  const int gqa = GENERATE(1, 4, 8);
  const int page_size = GENERATE(16, 64);
  INFO("head_dim " << head_dim << " gqa " << gqa << " page_size " << page_size);
  run_scenario<T, QT>(head_dim, gqa, page_size);
}

}  // namespace

TEST_CASE("cpu attention matches oracle: f32 storage, f32 activations", "[oracle]") {
  run_grid<float, float>();
}
TEST_CASE("cpu attention matches oracle: f16 storage, f32 activations", "[oracle]") {
  run_grid<Half, float>();
}
TEST_CASE("cpu attention matches oracle: bf16 storage, f32 activations", "[oracle]") {
  run_grid<BFloat16, float>();
}
TEST_CASE("cpu attention matches oracle: f16 storage, f16 activations", "[oracle]") {
  run_grid<Half, Half>();
}
TEST_CASE("cpu attention matches oracle: bf16 storage, bf16 activations", "[oracle]") {
  run_grid<BFloat16, BFloat16>();
}

TEST_CASE("oracle harness detects a wrong visibility rule", "[oracle]") {
  // Guard against a harness that cannot fail: attend with a store whose local head keeps everything (all
  // global) but compare against an oracle that applies a window. The outputs must differ.
  const ModelShape shape{1, 2, 1, 64, DType::kF32};
  KVHeadStore<float> store(shape, HeadMap::all_global(1, 1), StoreConfig{16, 64});
  DenseOracle oracle(shape, HeadMap::uniform(1, 1, HeadClass::kLocal, 4, 0));
  std::mt19937 rng(7);
  const SeqId s = store.create_sequence();
  const auto pos = iota_positions(0, 40);
  const auto k = random_tensor<float>(rng, 40 * 64), v = random_tensor<float>(rng, 40 * 64);
  store.append(s, 0, std::span<const float>(k), std::span<const float>(v),
               std::span<const std::int32_t>(pos));
  oracle.append<float>(s, 0, std::span<const float>(k), std::span<const float>(v), pos);
  AttentionPlan plan;
  const std::vector<SeqId> seqs{s};
  const std::vector<std::int32_t> ql{40};
  plan.update(store, 0, std::span<const SeqId>(seqs), std::span<const std::int32_t>(ql),
              std::span<const std::int32_t>(pos));
  const auto q = random_tensor<float>(rng, 40 * 2 * 64);
  std::vector<float> out(q.size());
  cpu_attention<float>(store, plan, std::span<const float>(q), std::span<float>(out));
  std::vector<double> ref, lse;
  oracle.attention<float>(s, 0, std::span<const float>(q), pos, ref, lse);
  double max_diff = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) max_diff = std::max(max_diff, std::abs(out[i] - ref[i]));
  REQUIRE(max_diff > 0.1);
}

TEST_CASE("cpu attention matches oracle: head_dim not a multiple of the micro-kernel width", "[oracle]") {
  // 8, 24 and 40 leave an 8-wide column tail in the 16-wide PV micro-kernel.
  const int head_dim = GENERATE(8, 24, 40);
  INFO("head_dim " << head_dim);
  run_scenario<float, float>(head_dim, 2, 16);
  run_scenario<BFloat16, float>(head_dim, 4, 64);
}

TEST_CASE("cpu attention matches oracle with split-KV (ranges merged by log-sum-exp)", "[oracle][split]") {
  // kv_chunk 7 and 40 cut every tile's entries into several ranges (and some ranges see no visible key), so
  // the per-range states and their merge are checked against the oracle on every step of the scenario.
  const int kv_chunk = GENERATE(7, 40);
  const int gqa = GENERATE(1, 4);
  INFO("kv_chunk " << kv_chunk << " gqa " << gqa);
  run_scenario<float, float>(64, gqa, 16, kv_chunk);
  run_scenario<BFloat16, BFloat16>(128, gqa, 64, kv_chunk);
}
