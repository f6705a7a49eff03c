// AppendPlan: reserve_append decides where every (token, kv_head) goes and commits the tables; movers copy
// bytes. Batched appends must equal per-sequence appends and stay all-or-nothing.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <optional>

#include "harness.hpp"

using namespace rktest;
using Catch::Matchers::ContainsSubstring;

namespace {

const ModelShape kShape{2, 4, 2, 8, DType::kF32};

HeadMap small_map() {
  HeadMap m = HeadMap::all_global(2, 2);
  m.set(0, 1, HeadPolicy{HeadClass::kLocal, 3, 1});
  m.set(1, 0, HeadPolicy{HeadClass::kLocal, 1, 0});
  return m;
}

// Where position p of (seq, layer, head) lives according to the head table.
std::optional<RowDest> locate(const HeadTable& t, std::int32_t p) {
  for (std::size_t i = 0; i < t.size(); ++i)
    if (p >= t[i].pos0 && p <= t[i].last_pos()) return RowDest{t[i].page_id, t[i].first + (p - t[i].pos0)};
  return std::nullopt;
}

// The K row stored for position p of (seq, layer, head), or empty when the head does not hold it.
std::vector<float> stored_k(const KVHeadStore<float>& s, SeqId id, int layer, int h, std::int32_t p) {
  const auto d = locate(s.table(id, layer, h), p);
  if (!d) return {};
  const float* r = s.pool().k_ptr(d->page) + static_cast<std::size_t>(d->slot) * kShape.head_dim;
  return {r, r + kShape.head_dim};
}

}  // namespace

TEST_CASE("reserve_append's rows are where the tables say the tokens live", "[append-plan]") {
  KVHeadStore<float> store(kShape, small_map(), StoreConfig{4, 64});
  const SeqId a = store.create_sequence();
  std::mt19937 rng(1);
  for (int step = 0; step < 6; ++step) {
    const auto pos = iota_positions(store.next_position(a, 0) + (step == 3 ? 5 : 0), 1 + step % 3 * 3);
    const AppendPlan plan = store.reserve_append(a, 0, std::span<const std::int32_t>(pos));
    REQUIRE(plan.num_tokens == static_cast<std::int32_t>(pos.size()));
    REQUIRE(plan.rows.size() == pos.size() * 2);
    for (std::size_t t = 0; t < pos.size(); ++t)
      for (int h = 0; h < 2; ++h) {
        const auto where = locate(store.table(a, 0, h), pos[t]);
        REQUIRE(where.has_value());
        REQUIRE(plan.row(t, h) == *where);
        REQUIRE(plan.flat_slot(t, h) == std::int64_t{where->page} * 4 + where->slot);
      }
    const auto k = random_tensor<float>(rng, pos.size() * 16), v = random_tensor<float>(rng, pos.size() * 16);
    move_host_rows(store.pool(), plan, k.data(), v.data());
  }
  check_accounting(store);
}

TEST_CASE("a shared tail page is copied on write through the plan", "[append-plan]") {
  KVHeadStore<float> store(kShape, HeadMap::all_global(2, 2), StoreConfig{4, 64});
  std::mt19937 rng(2);
  const SeqId a = store.create_sequence();
  const auto p0 = iota_positions(0, 6);  // page 1 of each head is half full
  const auto k0 = random_tensor<float>(rng, 6 * 16), v0 = random_tensor<float>(rng, 6 * 16);
  store.append(a, 0, std::span<const float>(k0), std::span<const float>(v0),
               std::span<const std::int32_t>(p0));
  const SeqId b = store.fork(a);
  const auto p1 = iota_positions(6, 1);
  const AppendPlan plan = store.reserve_append(b, 0, std::span<const std::int32_t>(p1));
  REQUIRE(plan.copies.size() == 2);  // one per head: the half-full shared page
  for (int h = 0; h < 2; ++h) {
    const PageCopy& c = plan.copies[static_cast<std::size_t>(h)];
    REQUIRE(c.slots == 2);
    REQUIRE(c.src == store.table(a, 0, h).body.back().page_id);  // the parent keeps the original
    REQUIRE(c.dst == store.table(b, 0, h).body.back().page_id);
    REQUIRE(plan.row(0, h) == RowDest{c.dst, 2});
  }
  const auto k1 = random_tensor<float>(rng, 16), v1 = random_tensor<float>(rng, 16);
  move_host_rows(store.pool(), plan, k1.data(), v1.data());
  for (int h = 0; h < 2; ++h)
    for (std::int32_t p = 0; p < 6; ++p) REQUIRE(stored_k(store, b, 0, h, p) == stored_k(store, a, 0, h, p));
  check_accounting(store);
}

TEST_CASE("append_batch equals per-sequence appends", "[append-plan]") {
  const HeadMap map = small_map();
  KVHeadStore<float> batched(kShape, map, StoreConfig{3, 256});
  KVHeadStore<float> single(kShape, map, StoreConfig{3, 256});
  std::mt19937 rng(3);
  std::vector<SeqId> ids;
  for (int i = 0; i < 4; ++i) {
    ids.push_back(batched.create_sequence());
    REQUIRE(single.create_sequence() == ids.back());
  }
  // A fork pair in the batch: both sides write into their shared tail page in one call.
  for (int step = 0; step < 8; ++step) {
    if (step == 3) {
      ids.push_back(batched.fork(ids[0]));
      REQUIRE(single.fork(ids[0]) == ids.back());
    }
    for (int layer = 0; layer < 2; ++layer) {
      std::vector<std::int32_t> offsets{0}, pos;
      for (std::size_t i = 0; i < ids.size(); ++i) {
        const int n = static_cast<int>((i + static_cast<std::size_t>(step)) % 4);  // 0..3 tokens, some empty
        const auto p = iota_positions(batched.next_position(ids[i], layer), n);
        pos.insert(pos.end(), p.begin(), p.end());
        offsets.push_back(static_cast<std::int32_t>(pos.size()));
      }
      const auto k = random_tensor<float>(rng, pos.size() * 16),
                 v = random_tensor<float>(rng, pos.size() * 16);
      batched.append_batch(layer, std::span<const SeqId>(ids), std::span<const std::int32_t>(offsets),
                           std::span<const float>(k), std::span<const float>(v),
                           std::span<const std::int32_t>(pos));
      for (std::size_t i = 0; i < ids.size(); ++i) {
        const auto b = static_cast<std::size_t>(offsets[i]), e = static_cast<std::size_t>(offsets[i + 1]);
        if (b == e) continue;
        single.append(ids[i], layer, std::span<const float>(k.data() + b * 16, (e - b) * 16),
                      std::span<const float>(v.data() + b * 16, (e - b) * 16),
                      std::span<const std::int32_t>(pos.data() + b, e - b));
      }
      check_accounting(batched);
      REQUIRE(batched.pool().used_pages() == single.pool().used_pages());
      for (SeqId id : ids)
        for (int h = 0; h < 2; ++h) {
          const HeadTable& tb = batched.table(id, layer, h);
          const HeadTable& ts = single.table(id, layer, h);
          REQUIRE(tb.num_tokens() == ts.num_tokens());
          for (std::int32_t p = 0; p < batched.next_position(id, layer); ++p)
            REQUIRE(stored_k(batched, id, layer, h, p) == stored_k(single, id, layer, h, p));
        }
    }
  }
}

TEST_CASE("append_batch is all-or-nothing and names the bad item", "[append-plan][bad-input]") {
  KVHeadStore<float> store(kShape, small_map(), StoreConfig{4, 12});
  std::mt19937 rng(4);
  const SeqId a = store.create_sequence(), b = store.create_sequence();
  const auto p = iota_positions(0, 3);
  const auto k3 = random_tensor<float>(rng, 3 * 16);
  store.append(a, 0, std::span<const float>(k3), std::span<const float>(k3),
               std::span<const std::int32_t>(p));
  const Snapshot before(store);
  auto batch = [&](std::vector<SeqId> ids, std::vector<std::int32_t> offsets, std::vector<std::int32_t> pos) {
    const auto k = random_tensor<float>(rng, pos.size() * 16);
    store.append_batch(0, std::span<const SeqId>(ids), std::span<const std::int32_t>(offsets),
                       std::span<const float>(k), std::span<const float>(k),
                       std::span<const std::int32_t>(pos));
  };
  // The second item is stale (a already holds 0..2): nothing of the first item may land either.
  REQUIRE_THROWS_WITH(batch({b, a}, {0, 2, 3}, {0, 1, 1}), ContainsSubstring("positions[2]=1 must be >= 3"));
  REQUIRE_THROWS_AS(batch({b, 99}, {0, 1, 2}, {0, 0}), NotFound);
  REQUIRE_THROWS_WITH(batch({a, a}, {0, 1, 2}, {3, 4}), ContainsSubstring("appears twice"));
  REQUIRE_THROWS_WITH(batch({a, b}, {0, 2}, {3, 4}), ContainsSubstring("token_offsets has 2 entries"));
  REQUIRE_THROWS_WITH(batch({a, b}, {1, 1, 2}, {3, 4}), ContainsSubstring("token_offsets[0]=1"));
  REQUIRE_THROWS_WITH(batch({a, b}, {0, 2, 1}, {3, 4}), ContainsSubstring("token_offsets[2]=1"));
  REQUIRE_THROWS_WITH(batch({a, b}, {0, 1, 3}, {3, 4}),
                      ContainsSubstring("must equal the number of positions"));
  // More than the pool holds (12 pages of 4 slots, 2 layers x 2 heads): exhausted, nothing changed.
  REQUIRE_THROWS_AS(batch({a, b}, {0, 20, 40},
                          [] {
                            auto x = iota_positions(3, 20), y = iota_positions(0, 20);
                            x.insert(x.end(), y.begin(), y.end());
                            return x;
                          }()),
                    PoolExhausted);
  REQUIRE(Snapshot(store) == before);
  check_accounting(store);
}

TEST_CASE("adopt takes one reference per distinct page and keeps the counters a plan mirrors",
          "[append-plan]") {
  PagePool<float> pool(8, 4, 8);
  std::vector<PageId> pages;
  pool.alloc(3,
             pages);  // refcount 1 each: page 0 is the table's own tail page, pages 1 and 2 a chunk owner's
  HeadTable t;
  t.body.push_back(make_entry(pages[0], 0, 2, 0));
  // Adopt: slots of page 0 (the tail's page: no second reference), then pages 1 and 2 (shared with the
  // owner).
  const std::vector<PageEntry> chunk = {{pages[0], 2, 2, 10}, {pages[1], 0, 4, 12}, {pages[2], 0, 1, 16}};
  head_ops::adopt(t, pool, std::span<const PageEntry>(chunk));
  REQUIRE(t.body.size() == 4);
  REQUIRE(t.body_pushed == 3);
  REQUIRE(pool.refcount(pages[0]) == 1);
  REQUIRE(pool.refcount(pages[1]) == 2);
  REQUIRE(pool.refcount(pages[2]) == 2);
  REQUIRE(t.num_pages() == 3);
  // The owner lets go: the table's references keep pages 1 and 2 alive.
  REQUIRE_FALSE(pool.decref(pages[1]));
  REQUIRE_FALSE(pool.decref(pages[2]));
  REQUIRE(pool.used_pages() == 3);
}
