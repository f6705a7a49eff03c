// peak_head_pages() / peak_sequence_pages() against the pages a real KVHeadStore holds while a sequence is
// appended in chunks and then decoded: never above the bound, and at most one page of alignment slack below.
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>

#include <algorithm>
#include <random>
#include <vector>

#include "redknot/kv_head_store.hpp"
#include "redknot/pool_sizing.hpp"

using namespace redknot;

TEST_CASE("pool sizing bounds the peak pages of chunked prefill and decode", "[store][capacity]") {
  const int page = GENERATE(4, 16);
  const int chunk = GENERATE(1, 7, 64, 256);
  std::mt19937 rng(static_cast<std::uint32_t>(page * 1000 + chunk));
  const ModelShape shape{3, 4, 4, 8, DType::kF32};
  HeadMap map = HeadMap::all_global(shape.num_layers, shape.num_kv_heads);
  for (int l = 0; l < shape.num_layers; ++l)
    for (int h = 0; h < shape.num_kv_heads; ++h)
      if ((l + h) % 5 != 0)
        map.set(
            l, h,
            HeadPolicy{HeadClass::kLocal, 1 + static_cast<int>(rng() % 300), static_cast<int>(rng() % 40)});
  const int prefill = 1100, decode = 90, total = prefill + decode;
  const std::int64_t reserve = peak_sequence_pages(map, page, total, chunk);
  KVHeadStore<float> store(shape, map, StoreConfig{page, static_cast<std::int32_t>(reserve)});
  const SeqId s = store.create_sequence();

  const auto H = static_cast<std::size_t>(shape.num_kv_heads), D = static_cast<std::size_t>(shape.head_dim);
  std::vector<std::int64_t> peak(static_cast<std::size_t>(shape.num_layers) * H, 0);
  std::int64_t peak_total = 0;
  const auto append = [&](int p0, int n) {
    std::vector<float> kv(static_cast<std::size_t>(n) * H * D, 0.5f);
    std::vector<std::int32_t> pos(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) pos[static_cast<std::size_t>(i)] = p0 + i;
    std::int64_t now = 0;
    for (int l = 0; l < shape.num_layers; ++l) {
      // Throws PoolExhausted if the reservation were too small.
      store.append(s, l, kv, kv, pos);
      for (std::size_t h = 0; h < H; ++h) {
        auto& pk = peak[static_cast<std::size_t>(l) * H + h];
        pk = std::max(pk, store.table(s, l, static_cast<int>(h)).num_pages());
      }
    }
    for (int l = 0; l < shape.num_layers; ++l)
      for (std::size_t h = 0; h < H; ++h) now += store.table(s, l, static_cast<int>(h)).num_pages();
    peak_total = std::max(peak_total, now);
  };
  // Chunked prefill with ragged chunks (never larger than `chunk`), then decode one token at a time.
  int p = 0;
  // Every window is <= 300, so the two full chunks appended once p >= 300 reach each head's peak (give or
  // take the page alignment of the span).
  int full_left = 2;
  while (p < prefill) {
    const bool full = p >= 300 && full_left > 0 && full_left-- > 0;
    const int want = full ? chunk : 1 + static_cast<int>(rng() % static_cast<unsigned>(chunk));
    const int n = std::min(want, prefill - p);
    append(p, n);
    p += n;
  }
  while (p < total) append(p++, 1);

  std::int64_t slack_heads = 0;
  for (int l = 0; l < shape.num_layers; ++l)
    for (std::size_t h = 0; h < H; ++h) {
      const std::int64_t bound = peak_head_pages(map.policy(l, static_cast<int>(h)), page, total, chunk);
      const std::int64_t seen = peak[static_cast<std::size_t>(l) * H + h];
      INFO("layer " << l << " head " << h << " window " << map.policy(l, static_cast<int>(h)).window
                    << " sink " << map.policy(l, static_cast<int>(h)).sink << " page " << page << " chunk "
                    << chunk);
      CHECK(seen <= bound);
      CHECK(bound - seen <= 1);  // alignment: the worst-case straddle may not occur in this one run
      slack_heads += bound - seen;
    }
  CHECK(peak_total <= reserve);
  CHECK(slack_heads <= static_cast<std::int64_t>(peak.size()));
}

TEST_CASE("pool sizing: global heads need every page; bad arguments are named", "[store][capacity]") {
  const HeadPolicy global{HeadClass::kGlobal};
  CHECK(peak_head_pages(global, 16, 1000, 256) == 63);
  CHECK(peak_head_pages(HeadPolicy{HeadClass::kLocal, 5000, 4}, 16, 1000, 256) == 63);  // capped
  CHECK(peak_head_pages(HeadPolicy{HeadClass::kLocal, 64, 4}, 16, 0, 256) == 0);
  CHECK_THROWS_AS(peak_head_pages(global, 0, 10, 1), InvalidArgument);
  CHECK_THROWS_AS(peak_head_pages(global, 16, -1, 1), InvalidArgument);
  CHECK_THROWS_AS(peak_head_pages(global, 16, 10, 0), InvalidArgument);
}

TEST_CASE("steady-state pages without a store equal the store's pages_per_sequence", "[store][capacity]") {
  const ModelShape shape{4, 4, 2, 8, DType::kF32};
  HeadMap map = HeadMap::uniform(4, 2, HeadClass::kLocal, 37, 5);
  map.set(1, 0, HeadPolicy{HeadClass::kGlobal});
  map.set(2, 1, HeadPolicy{HeadClass::kLocal, 300, 0});
  map.set(3, 0, HeadPolicy{HeadClass::kLocal, 1, 64});
  for (const int page : {4, 16}) {
    const KVHeadStore<float, NullAllocator> store(shape, map, StoreConfig{page, 1});
    for (const std::int64_t n : {0, 1, 5, 37, 64, 65, 301, 1000}) {
      INFO("page " << page << " tokens " << n);
      CHECK(steady_sequence_pages(map, page, n) == store.pages_per_sequence(n));
      CHECK(steady_sequence_pages(map, page, n) <= peak_sequence_pages(map, page, n, 1));
    }
  }
  CHECK_THROWS_AS(steady_head_pages(HeadPolicy{HeadClass::kGlobal}, 0, 10), InvalidArgument);
}
