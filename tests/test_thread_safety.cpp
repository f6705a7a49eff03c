// The thread-safety contract: one writer per store; stats() readable from any thread during writes;
// independent stores fully independent; attention readers concurrent with each other.
#include <catch2/catch_test_macros.hpp>

#include <atomic>
#include <thread>

#include "harness.hpp"

using namespace rktest;

TEST_CASE("stats can be read while a writer appends", "[threads]") {
  const ModelShape shape{4, 8, 4, 16, DType::kF16};
  KVHeadStore<Half> store(shape, HeadMap::with_global_ratio(4, 4, 0.25, 32, 4), StoreConfig{16, 4096});
  std::atomic<bool> done{false};
  std::atomic<std::int64_t> reads{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 2; ++r)
    readers.emplace_back([&] {
      while (!done.load()) {
        const StoreStats st = store.stats();
        // Counters are individually atomic: each is always within its bounds.
        if (st.pages_in_use < 0 || st.pages_in_use > st.pages_total || st.pages_global < 0 ||
            st.pages_local < 0 || st.num_sequences < 0)
          FAIL("inconsistent stats read");
        reads.fetch_add(1);
      }
    });
  std::mt19937 rng(1);
  for (int round = 0; round < 20; ++round) {
    std::vector<SeqId> ids;
    for (int s = 0; s < 4; ++s) {
      ids.push_back(store.create_sequence());
      for (int l = 0; l < 4; ++l) {
        const auto k = random_tensor<Half>(rng, 100 * 4 * 16), v = random_tensor<Half>(rng, 100 * 4 * 16);
        const auto pos = iota_positions(0, 100);
        store.append(ids.back(), l, std::span<const Half>(k), std::span<const Half>(v),
                     std::span<const std::int32_t>(pos));
      }
    }
    for (SeqId id : ids) store.free_sequence(id);
  }
  done = true;
  for (auto& t : readers) t.join();
  REQUIRE(reads.load() > 0);
  REQUIRE(store.stats().pages_in_use == 0);
}

TEST_CASE("independent stores on independent threads", "[threads]") {
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([t, &ok] {
      const ModelShape shape{2, 4, 2, 32, DType::kF32};
      const HeadMap map = HeadMap::with_global_ratio(2, 2, 0.5, 16, 4);
      KVHeadStore<float> store(shape, map, StoreConfig{16, 512});
      DenseOracle oracle(shape, map);
      std::mt19937 rng(static_cast<unsigned>(t));
      const SeqId s = store.create_sequence();
      double worst = 0;
      AttentionPlan plan;
      for (std::int32_t p = 0; p < 120; p += 30) {
        const auto k = random_tensor<float>(rng, 30 * 2 * 32), v = random_tensor<float>(rng, 30 * 2 * 32);
        const auto pos = iota_positions(p, 30);
        store.append(s, 0, std::span<const float>(k), std::span<const float>(v),
                     std::span<const std::int32_t>(pos));
        oracle.append<float>(s, 0, std::span<const float>(k), std::span<const float>(v), pos);
        const std::vector<SeqId> seqs{s};
        const std::vector<std::int32_t> ql{30};
        plan.update(store, 0, std::span<const SeqId>(seqs), std::span<const std::int32_t>(ql),
                    std::span<const std::int32_t>(pos));
        const auto q = random_tensor<float>(rng, 30 * 4 * 32);
        std::vector<float> out(q.size());
        cpu_attention<float>(store, plan, std::span<const float>(q), std::span<float>(out), {},
                             AttentionParams{0.f, 1});
        std::vector<double> ref, lse;
        oracle.attention<float>(s, 0, std::span<const float>(q), pos, ref, lse);
        for (std::size_t i = 0; i < ref.size(); ++i) worst = std::max(worst, std::abs(out[i] - ref[i]));
      }
      if (worst < 1e-4) ok.fetch_add(1);
    });
  for (auto& t : threads) t.join();
  REQUIRE(ok.load() == 4);
}

TEST_CASE("concurrent attention readers of one store agree", "[threads]") {
  const ModelShape shape{1, 8, 2, 64, DType::kBF16};
  KVHeadStore<BFloat16> store(shape, HeadMap::with_global_ratio(1, 2, 0.5, 64, 4), StoreConfig{16, 256});
  std::mt19937 rng(3);
  const SeqId s = store.create_sequence();
  const auto k = random_tensor<BFloat16>(rng, 500 * 2 * 64), v = random_tensor<BFloat16>(rng, 500 * 2 * 64);
  const auto pos = iota_positions(0, 500);
  store.append(s, 0, std::span<const BFloat16>(k), std::span<const BFloat16>(v),
               std::span<const std::int32_t>(pos));
  AttentionPlan plan;
  const std::vector<SeqId> seqs{s};
  const std::vector<std::int32_t> ql{500};
  plan.update(store, 0, std::span<const SeqId>(seqs), std::span<const std::int32_t>(ql),
              std::span<const std::int32_t>(pos));
  const auto q = random_tensor<float>(rng, 500 * 8 * 64);
  std::vector<float> first(q.size());
  cpu_attention<float>(store, plan, std::span<const float>(q), std::span<float>(first));
  std::vector<std::vector<float>> outs(3, std::vector<float>(q.size()));
  std::vector<std::thread> threads;
  for (auto& o : outs)
    threads.emplace_back([&, po = &o] {
      cpu_attention<float>(store, plan, std::span<const float>(q), std::span<float>(*po), {},
                           AttentionParams{0.f, 1});
    });
  for (auto& t : threads) t.join();
  for (const auto& o : outs) REQUIRE(o == first);  // same work split per tile: bitwise identical
}
