// Recompute selection (which tokens of a spliced chunk to run again) and the store operations it needs:
// read_rows (cached K/V at their true rotation), overwrite (fresh K/V for one sequence, copy-on-write of
// shared pages, rotated to the entry's rotation).
#include <catch2/catch_test_macros.hpp>

#include "harness.hpp"

using namespace rktest;

namespace {

const std::vector<HeadPolicy> kLayerHeads = {HeadPolicy{HeadClass::kGlobal, -1, 0},
                                             HeadPolicy{HeadClass::kLocal, 8, 2}};

std::vector<std::int32_t> select(RecomputeStrategy s, double ratio, int first_k, std::int32_t n,
                                 const std::vector<float>& dev = {}, const std::vector<float>& qa = {}) {
  return select_recompute(RecomputeConfig{s, ratio, first_k},
                          RecomputeInputs{n, dev, std::span<const HeadPolicy>(kLayerHeads), qa});
}

}  // namespace

TEST_CASE("recompute strategies pick the documented tokens", "[recompute]") {
  using V = std::vector<std::int32_t>;
  CHECK(select(RecomputeStrategy::kNone, 0.5, 3, 10).empty());
  CHECK(select(RecomputeStrategy::kFirstK, 0, 3, 10) == V{0, 1, 2});
  CHECK(select(RecomputeStrategy::kFirstK, 0, 30, 4) == V{0, 1, 2, 3});
  // deviation [token][head]: head 0 global, head 1 local.
  const std::vector<float> dev = {0, 9,    // token 0: local deviates most
                                  5, 0,    // token 1
                                  1, 1,    // token 2
                                  7, 0,    // token 3
                                  0, 20};  // token 4: local only
  // All heads (CacheBlend): sums 9, 5, 2, 7, 20 -> top 40% of 5 = 2 tokens: 4 and 0.
  CHECK(select(RecomputeStrategy::kDeviationTopK, 0.4, 0, 5, dev) == V{0, 4});
  // Global heads only (ours): 0, 5, 1, 7, 0 -> 3 and 1; plus the first token.
  CHECK(select(RecomputeStrategy::kGlobalDeviationTopK, 0.4, 0, 5, dev) == V{1, 3});
  CHECK(select(RecomputeStrategy::kGlobalDeviationTopK, 0.4, 1, 5, dev) == V{0, 1, 3});
  // Ties break towards the earlier token; ratio 0 and 1.
  CHECK(select(RecomputeStrategy::kDeviationTopK, 0.2, 0, 5, std::vector<float>(10, 1.f)) == V{0});
  CHECK(select(RecomputeStrategy::kDeviationTopK, 0, 0, 5, dev).empty());
  CHECK(select(RecomputeStrategy::kDeviationTopK, 1, 0, 5, dev).size() == 5);
  // A head that no longer holds a token (NaN rows from read_rows) contributes nothing.
  std::vector<float> with_nan = dev;
  with_nan[1] = std::numeric_limits<float>::quiet_NaN();
  CHECK(select(RecomputeStrategy::kDeviationTopK, 0.4, 0, 5, with_nan) == V{3, 4});
  CHECK(select(RecomputeStrategy::kQueryTopK, 0.4, 0, 5, {}, {0.1f, 0.5f, 0.05f, 0.3f, 0.05f}) == V{1, 3});
  CHECK(parse_recompute_strategy("global_deviation_topk") == RecomputeStrategy::kGlobalDeviationTopK);
  CHECK(recompute_strategy_name(RecomputeStrategy::kFirstK) == "first_k");
}

TEST_CASE("recompute selection rejects bad configs and inputs", "[recompute]") {
  const std::vector<float> dev(10, 1.f);
  CHECK_THROWS_AS(select(RecomputeStrategy::kDeviationTopK, 1.5, 0, 5, dev), InvalidArgument);
  CHECK_THROWS_AS(select(RecomputeStrategy::kDeviationTopK, -0.1, 0, 5, dev), InvalidArgument);
  CHECK_THROWS_AS(select(RecomputeStrategy::kDeviationTopK, std::nan(""), 0, 5, dev), InvalidArgument);
  CHECK_THROWS_AS(select(RecomputeStrategy::kFirstK, 0.1, -1, 5), InvalidArgument);
  CHECK_THROWS_AS(select(RecomputeStrategy::kDeviationTopK, 0.1, 0, 6, dev), InvalidArgument);  // mis-sized
  CHECK_THROWS_AS(select(RecomputeStrategy::kDeviationTopK, 0.1, 0, 5, std::vector<float>(10, -1.f)),
                  InvalidArgument);
  CHECK_THROWS_AS(select(RecomputeStrategy::kQueryTopK, 0.1, 0, 5), InvalidArgument);  // missing
  CHECK_THROWS_AS(select(RecomputeStrategy::kQueryTopK, 0.1, 0, 2, {}, {1.f, INFINITY}), InvalidArgument);
  CHECK_THROWS_AS(parse_recompute_strategy("cacheblend"), InvalidArgument);
  CHECK_THROWS_AS(select(RecomputeStrategy::kNone, 0.1, 0, -1), InvalidArgument);
}

TEST_CASE("kv_deviation is the squared distance of K and V per token and head", "[recompute]") {
  const std::vector<float> kf = {1, 2, 0, 0}, vf = {0, 0, 1, 1}, kc = {1, 0, 0, 0}, vc = {0, 0, 0, 1};
  const auto d = kv_deviation(kf, vf, kc, vc, 1, 2, 2);  // one token, two heads of dim 2
  REQUIRE(d.size() == 2);
  CHECK(d[0] == 4.f);
  CHECK(d[1] == 1.f);
  CHECK_THROWS_AS(kv_deviation(kf, vf, kc, vc, 2, 2, 2), InvalidArgument);
}

TEST_CASE("overwrite replaces rows for one sequence only, rotated to the entry's rotation", "[recompute]") {
  const int D = 16;
  const ModelShape shape{1, 2, 2, D, DType::kF32};
  HeadMap map = HeadMap::all_global(1, 2);
  map.set(0, 1, HeadPolicy{HeadClass::kLocal, 4, 1});
  RopeConfig rc;
  rc.head_dim = D;
  KVHeadStore<float> store(shape, map, StoreConfig{4, 64}, rc);
  std::mt19937 rng(5);
  const std::int32_t n = 10;
  const auto k = random_tensor<float>(rng, n * 2 * D), v = random_tensor<float>(rng, n * 2 * D);
  const auto pos = iota_positions(0, n);
  const SeqId cs = store.create_sequence();
  store.append(cs, 0, std::span<const float>(k), std::span<const float>(v),
               std::span<const std::int32_t>(pos));
  const ChunkKey key{3, 4};
  store.register_chunk(key, cs);
  const SeqId a = store.create_sequence(), b = store.create_sequence();
  store.splice(a, key, 100, 102);  // tokens 2.. of the chunk may still be queried: the local head keeps them
  store.splice(b, key, 100, 102);
  check_accounting(store);

  // read_rows gives the cached keys rotated for where they sit now (100 + i).
  const std::vector<std::int32_t> targets = {103, 107};
  std::vector<float> kc(2 * 2 * D), vc(2 * 2 * D);
  store.read_rows(a, 0, targets, kc, vc);
  const auto inv = rope_inv_freq(rc);
  for (std::size_t t = 0; t < 2; ++t)
    for (int h = 0; h < 2; ++h) {
      std::vector<float> expect(
          k.begin() + static_cast<std::ptrdiff_t>(((targets[t] - 100) * 2 + h) * D),
          k.begin() + static_cast<std::ptrdiff_t>(((targets[t] - 100) * 2 + h + 1) * D));
      rope_rotate(rc, inv, expect.data(), 100);
      for (int d = 0; d < D; ++d)
        CHECK(std::abs(kc[(t * 2 + h) * D + d] - expect[static_cast<std::size_t>(d)]) < 1e-5);
    }

  // Fresh rows for a: the chunk and b keep the old ones; a reads back exactly what it wrote.
  const auto kf = random_tensor<float>(rng, 2 * 2 * D), vf = random_tensor<float>(rng, 2 * 2 * D);
  const std::int32_t used = store.pool().used_pages();
  store.overwrite(a, 0, std::span<const float>(kf), std::span<const float>(vf), targets);
  CHECK(store.pool().used_pages() > used);  // copies of the shared pages
  std::vector<float> ka(kc.size()), va(vc.size()), kb(kc.size()), vb(vc.size());
  store.read_rows(a, 0, targets, ka, va);
  store.read_rows(b, 0, targets, kb, vb);
  for (std::size_t i = 0; i < ka.size(); ++i) {
    CHECK(std::abs(ka[i] - kf[i]) < 1e-5);
    CHECK(va[i] == vf[i]);
    CHECK(std::abs(kb[i] - kc[i]) < 1e-5);  // b still sees the chunk's rows
  }
  check_accounting(store);
  // A second overwrite of the same rows writes in place: a's copies are private now.
  const std::int32_t used2 = store.pool().used_pages();
  store.overwrite(a, 0, std::span<const float>(kf), std::span<const float>(vf), targets);
  CHECK(store.pool().used_pages() == used2);

  // Errors change nothing.
  const Snapshot<KVHeadStore<float>> before(store);
  const std::vector<std::int32_t> beyond = {110}, backwards = {107, 103}, dropped = {90};
  CHECK_THROWS_AS(store.overwrite(a, 0, std::span<const float>(kf.data(), 2 * D),
                                  std::span<const float>(vf.data(), 2 * D), beyond),
                  InvalidArgument);
  CHECK_THROWS_AS(store.overwrite(a, 0, std::span<const float>(kf), std::span<const float>(vf), backwards),
                  InvalidArgument);
  CHECK_THROWS_AS(store.overwrite(a, 0, std::span<const float>(kf.data(), 2 * D),
                                  std::span<const float>(vf.data(), 2 * D), dropped),
                  InvalidArgument);  // a global head does not hold position 90
  CHECK_THROWS_AS(
      store.overwrite(a, 0, std::span<const float>(kf.data(), D), std::span<const float>(vf), targets),
      InvalidArgument);
  CHECK_THROWS_AS(store.overwrite(999, 0, std::span<const float>(kf), std::span<const float>(vf), targets),
                  NotFound);
  CHECK(before == Snapshot<KVHeadStore<float>>(store));
}
