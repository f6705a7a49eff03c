// KVHeadStore behaviour: paging, retention, copy-on-write forks, stats, capacity and incremental plans.
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>

#include "harness.hpp"

using namespace rktest;

namespace {

template <class Store>
void append_n(Store& store, SeqId s, int layer, std::int32_t p0, std::int32_t n, std::mt19937& rng) {
  using T = typename Store::value_type;
  const std::size_t row = static_cast<std::size_t>(store.shape().num_kv_heads) * store.shape().head_dim;
  const auto k = random_tensor<T>(rng, static_cast<std::size_t>(n) * row);
  const auto v = random_tensor<T>(rng, static_cast<std::size_t>(n) * row);
  const auto pos = iota_positions(p0, n);
  store.append(s, layer, std::span<const T>(k), std::span<const T>(v), std::span<const std::int32_t>(pos));
}

}  // namespace

TEST_CASE("append fills pages contiguously and stores the values", "[store]") {
  const ModelShape shape{1, 2, 2, 8, DType::kF32};
  KVHeadStore<float> store(shape, HeadMap::all_global(1, 2), StoreConfig{4, 32});
  const SeqId s = store.create_sequence();
  std::vector<float> k(10 * 2 * 8), v(10 * 2 * 8);
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = static_cast<float>(i), v[i] = -static_cast<float>(i);
  const auto pos = iota_positions(0, 10);
  store.append(s, 0, std::span<const float>(k), std::span<const float>(v),
               std::span<const std::int32_t>(pos));
  for (int h = 0; h < 2; ++h) {
    const HeadTable& t = store.table(s, 0, h);
    REQUIRE(t.size() == 3);  // 4 + 4 + 2 slots
    REQUIRE(t.num_tokens() == 10);
    REQUIRE(t[2].count == 2);
    // Token 5 of head h lives in entry 1, slot 1.
    const float* krow = store.pool().k_ptr(t[1].page_id) + 1 * 8;
    const float* vrow = store.pool().v_ptr(t[1].page_id) + 1 * 8;
    for (int d = 0; d < 8; ++d) {
      REQUIRE(krow[d] == k[(5 * 2 + h) * 8 + d]);
      REQUIRE(vrow[d] == v[(5 * 2 + h) * 8 + d]);
    }
  }
  // Decode tokens top up the partial last page before taking a new one.
  std::mt19937 rng(1);
  append_n(store, s, 0, 10, 2, rng);
  REQUIRE(store.table(s, 0, 0).size() == 3);
  REQUIRE(store.table(s, 0, 0)[2].count == 4);
  append_n(store, s, 0, 12, 1, rng);
  REQUIRE(store.table(s, 0, 0).size() == 4);
  check_accounting(store);
}

TEST_CASE("position jumps start a new entry in the same page", "[store]") {
  const ModelShape shape{1, 1, 1, 8, DType::kF32};
  KVHeadStore<float> store(shape, HeadMap::all_global(1, 1), StoreConfig{16, 8});
  const SeqId s = store.create_sequence();
  std::mt19937 rng(2);
  append_n(store, s, 0, 0, 5, rng);
  append_n(store, s, 0, 100, 3, rng);
  const HeadTable& t = store.table(s, 0, 0);
  REQUIRE(t.size() == 2);
  REQUIRE(t[0].page_id == t[1].page_id);
  REQUIRE(t[1] == make_entry(t[0].page_id, 5, 3, 100));
  REQUIRE(store.pool().used_pages() == 1);
  REQUIRE(store.next_position(s, 0) == 103);
}

TEST_CASE("local heads keep sink + window pages; global heads keep everything", "[store][retention]") {
  const int page = GENERATE(16, 64);
  const int window = GENERATE(1, 50, 512);
  const int sink = GENERATE(0, 4, 64);
  INFO("page " << page << " window " << window << " sink " << sink);
  HeadMap map = HeadMap::uniform(1, 2, HeadClass::kLocal, window, sink);
  map.set(0, 1, HeadPolicy{HeadClass::kGlobal, -1, sink});
  const ModelShape shape{1, 2, 2, 8, DType::kF32};
  KVHeadStore<float, NullAllocator> store(shape, map, StoreConfig{page, 1 << 16});
  const SeqId s = store.create_sequence();
  std::mt19937 rng(3);
  // Chunked prefill then decode up to 3000 tokens.
  std::int32_t p = 0;
  for (; p < 2048; p += 256) append_n(store, s, 0, p, 256, rng);
  for (; p < 3000; ++p) {
    append_n(store, s, 0, p, 1, rng);
    // Decode steady state: the analytic page count of the retention rule, or one less when a 1-token window
    // reuses the free slots of the sink page.
    const HeadTable& local = store.table(s, 0, 0);
    const std::int64_t bound = store.head_pages(store.policy(0, 0), p + 1);
    REQUIRE(local.num_pages() <= bound);
    REQUIRE(local.num_pages() >= (window == 1 && sink > 0 ? bound - 1 : bound));
    // Every position the next query at p can see is stored.
    const VisibleRanges r = visible_ranges(store.policy(0, 0), p);
    std::int64_t stored_visible = 0;
    for (std::size_t i = 0; i < local.size(); ++i)
      stored_visible += r.count_in(local[i].pos0, static_cast<std::int64_t>(local[i].pos0) + local[i].count);
    REQUIRE(stored_visible == (r.sink_end) + (r.win_end - r.win_begin));
  }
  REQUIRE(store.table(s, 0, 1).num_tokens() == 3000);
  REQUIRE(store.table(s, 0, 1).num_pages() == (3000 + page - 1) / page);
  // Page-granular bound: at most one page beyond ceil(window / page) + sink pages.
  REQUIRE(store.table(s, 0, 0).num_pages() <= (window + page - 1) / page + 1 + (sink + page - 1) / page);
  check_accounting(store);
}

TEST_CASE("retire_queries releases the prefill chunk's window and checks its argument",
          "[store][retention]") {
  const ModelShape shape{2, 2, 1, 8, DType::kF32};
  KVHeadStore<float> store(shape, HeadMap::uniform(2, 1, HeadClass::kLocal, 16, 4), StoreConfig{16, 256});
  const SeqId s = store.create_sequence();
  std::mt19937 rng(4);
  append_n(store, s, 0, 0, 1000, rng);
  append_n(store, s, 1, 0, 1000, rng);
  REQUIRE(store.pool().used_pages() == 2 * 63);  // the chunk's queries have not run: everything stays
  store.retire_queries(s, 1000, 0);
  REQUIRE(store.table(s, 0, 0).num_pages() == store.head_pages(store.policy(0, 0), 1001));
  REQUIRE(store.table(s, 1, 0).num_pages() == 63);
  store.retire_queries(s, 1000);
  REQUIRE(store.table(s, 1, 0).num_pages() == store.head_pages(store.policy(1, 0), 1001));
  REQUIRE(store.query_floor(s, 1) == 1000);
  const Snapshot<decltype(store)> before(store);
  REQUIRE_THROWS_AS(store.retire_queries(s, 1001), InvalidArgument);
  REQUIRE_THROWS_AS(store.retire_queries(s, 10, 2), InvalidArgument);
  REQUIRE(Snapshot<decltype(store)>(store) == before);
  check_accounting(store);
}

TEST_CASE("fork shares pages and copies the partial tail on write", "[store][fork]") {
  const ModelShape shape{1, 1, 1, 8, DType::kF32};
  KVHeadStore<float> store(shape, HeadMap::all_global(1, 1), StoreConfig{4, 64});
  const SeqId a = store.create_sequence();
  std::mt19937 rng(5);
  append_n(store, a, 0, 0, 10, rng);  // pages: 4, 4, 2 (partial)
  REQUIRE(store.pool().used_pages() == 3);
  const SeqId b = store.fork(a);
  REQUIRE(store.pool().used_pages() == 3);
  for (std::size_t i = 0; i < 3; ++i) REQUIRE(store.pool().refcount(store.table(a, 0, 0)[i].page_id) == 2);
  const PageId shared_tail = store.table(a, 0, 0)[2].page_id;
  std::vector<float> tail_before(store.pool().k_ptr(shared_tail), store.pool().k_ptr(shared_tail) + 2 * 8);
  append_n(store, b, 0, 10, 1, rng);  // b writes into the shared partial page: copy-on-write
  REQUIRE(store.pool().used_pages() == 4);
  const PageId b_tail = store.table(b, 0, 0)[2].page_id;
  REQUIRE(b_tail != shared_tail);
  REQUIRE(store.pool().refcount(shared_tail) == 1);
  REQUIRE(std::equal(tail_before.begin(), tail_before.end(), store.pool().k_ptr(b_tail)));
  REQUIRE(std::equal(tail_before.begin(), tail_before.end(), store.pool().k_ptr(shared_tail)));
  append_n(store, a, 0, 10, 1, rng);  // a is now the only owner of its tail: no copy
  REQUIRE(store.pool().used_pages() == 4);
  check_accounting(store);
  store.free_sequence(a);
  check_accounting(store);
  REQUIRE(store.pool().used_pages() == 3);
  store.free_sequence(b);
  REQUIRE(store.pool().used_pages() == 0);
}

TEST_CASE("stats by head class, per sequence and total", "[store][stats]") {
  const ModelShape shape{2, 4, 2, 8, DType::kBF16};
  HeadMap map = HeadMap::uniform(2, 2, HeadClass::kLocal, 8, 0);
  map.set(1, 1, HeadPolicy{HeadClass::kGlobal, -1, 0});
  KVHeadStore<BFloat16> store(shape, map, StoreConfig{8, 128});
  const SeqId s = store.create_sequence();
  std::mt19937 rng(6);
  for (int l = 0; l < 2; ++l) append_n(store, s, l, 0, 64, rng);
  store.retire_queries(s, 64);
  const SequenceStats ss = store.sequence_stats(s);
  REQUIRE(ss.pages_global == 8);
  REQUIRE(ss.tokens_global == 64);
  REQUIRE(ss.pages_local == 3 * store.head_pages(store.policy(0, 0), 64));
  const StoreStats st = store.stats();
  REQUIRE(st.pages_global == 8);
  REQUIRE(st.pages_local == ss.pages_local);
  REQUIRE(st.bytes_in_use == st.pages_in_use * 2 * 8 * 8 * 2);
  REQUIRE(st.num_sequences == 1);
}

TEST_CASE("capacity query agrees with filling the pool through append", "[store][capacity]") {
  const ModelShape shape{4, 8, 4, 16, DType::kF16};
  const HeadMap map = HeadMap::with_global_ratio(4, 4, 0.25, 64, 8);
  KVHeadStore<Half, NullAllocator> store(shape, map, StoreConfig{16, 20000});
  const std::int64_t n_tokens = 1500;
  const std::int64_t predicted = store.sequences_that_fit(n_tokens);
  std::mt19937 rng(7);
  std::int64_t filled = 0;
  for (;;) {
    const SeqId s = store.create_sequence();
    try {
      for (std::int32_t p = 0; p < n_tokens; p += 250)
        for (int l = 0; l < 4; ++l) {
          append_n(store, s, l, p, 250, rng);
          store.retire_queries(s, p + 250, l);
        }
      ++filled;
    } catch (const PoolExhausted&) {
      store.free_sequence(s);
      break;
    }
  }
  // Filling can only lose the chunk-sized transient of the last sequence.
  REQUIRE(filled <= predicted);
  REQUIRE(filled >= predicted - 1);
  check_accounting(store);
}

TEST_CASE("plan updates are incremental: a decode step writes O(heads) entries", "[plan]") {
  const ModelShape shape{1, 8, 8, 8, DType::kF32};
  HeadMap map = HeadMap::with_global_ratio(1, 8, 0.25, 64, 4);
  KVHeadStore<float, NullAllocator> store(shape, map, StoreConfig{16, 1 << 16});
  std::mt19937 rng(8);
  std::vector<SeqId> seqs;
  for (int b = 0; b < 4; ++b) {
    seqs.push_back(store.create_sequence());
    append_n(store, seqs.back(), 0, 0, 4000, rng);
  }
  AttentionPlan plan;
  std::vector<std::int32_t> ql(4, 1), qp(4, 3999);
  plan.update(store, 0, std::span<const SeqId>(seqs), std::span<const std::int32_t>(ql),
              std::span<const std::int32_t>(qp));
  REQUIRE(plan.last_update().slots_rebuilt == 32);
  std::int64_t max_written = 0;
  for (std::int32_t p = 4000; p < 4300; ++p) {
    for (SeqId s : seqs) append_n(store, s, 0, p, 1, rng);
    std::fill(qp.begin(), qp.end(), p);
    plan.update(store, 0, std::span<const SeqId>(seqs), std::span<const std::int32_t>(ql),
                std::span<const std::int32_t>(qp));
    check_plan_mirrors_store(plan, store);
    max_written = std::max(max_written, plan.last_update().entries_written);
  }
  // One tail entry grows or one entry is pushed per head (plus the local sink move when a page leaves): never
  // anything proportional to the 250 pages a global head holds.
  REQUIRE(max_written <= 2 * 32);
  // A sequence leaving and joining again is rebuilt, the others are not.
  std::vector<SeqId> three(seqs.begin(), seqs.begin() + 3);
  std::vector<std::int32_t> ql3(3, 1), qp3(3, 4299);
  plan.update(store, 0, std::span<const SeqId>(three), std::span<const std::int32_t>(ql3),
              std::span<const std::int32_t>(qp3));
  REQUIRE(plan.last_update().slots_rebuilt == 0);
  plan.update(store, 0, std::span<const SeqId>(seqs), std::span<const std::int32_t>(ql),
              std::span<const std::int32_t>(qp));
  REQUIRE(plan.last_update().slots_rebuilt == 8);
  check_plan_mirrors_store(plan, store);
}

TEST_CASE("retention keeps exactly what later queries can see", "[policies][retention]") {
  const HeadPolicy local{HeadClass::kLocal, 8, 4}, global{HeadClass::kGlobal, -1, 4};
  REQUIRE(retained_sink_end(local) == 4);
  REQUIRE(retained_window_begin(local, 100) == 93);  // a query at 100 sees 93..100: 8 positions
  REQUIRE(retained_window_begin(global, 100) == std::numeric_limits<std::int64_t>::min());
  // For windows and sinks around the edge cases: a key is retained for queries >= q0 iff some query
  // q in [q0, q0 + W + S + 2] sees it (later queries see nothing earlier ones do not, within the window).
  for (int w : {1, 2, 5, 8})
    for (int sink : {0, 1, 4})
      for (std::int64_t q0 : {0, 3, 9, 40}) {
        const HeadPolicy p{HeadClass::kLocal, w, sink};
        for (std::int64_t k = 0; k <= q0 + w + sink + 2; ++k) {
          bool seen = false;
          for (std::int64_t q = q0; q <= q0 + w + sink + 2; ++q) seen = seen || is_visible(p, q, k);
          const bool kept = k < retained_sink_end(p) || k >= retained_window_begin(p, q0);
          INFO("w " << w << " sink " << sink << " q0 " << q0 << " k " << k);
          REQUIRE(kept == seen);
        }
      }
}

TEST_CASE("default policies", "[policies]") {
  const HeadPolicy local{HeadClass::kLocal, 8, 4};
  const AllHotPlacement hot;
  REQUIRE(hot.place(local, HeadTable{}, 0) == Tier::kDevice);
}
