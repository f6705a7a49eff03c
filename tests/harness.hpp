// Shared test helpers: random tensors, a store + oracle pair driven in lockstep, accounting invariants and
// snapshots for "bad input leaves the store unchanged" checks.
#pragma once

#include <catch2/catch_test_macros.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <span>
#include <vector>

#include "redknot/redknot.hpp"
#include "support/oracle.hpp"

namespace rktest {

using namespace redknot;

template <class T>
std::vector<T> random_tensor(std::mt19937& rng, std::size_t n, float stddev = 1.f) {
  std::normal_distribution<float> nd(0.f, stddev);
  std::vector<T> v(n);
  for (auto& x : v) x = from_float<T>(nd(rng));
  return v;
}

inline std::vector<std::int32_t> iota_positions(std::int32_t p0, std::int32_t n) {
  std::vector<std::int32_t> p(static_cast<std::size_t>(n));
  for (std::int32_t i = 0; i < n; ++i) p[static_cast<std::size_t>(i)] = p0 + i;
  return p;
}

// Every page reference held by any head table of any sequence or registered chunk (one per run of entries on
// a page) must add up to the pool's refcounts, and the pool's used count must equal the number of pages
// referenced.
template <class Store>
void check_accounting(const Store& store) {
  std::map<PageId, std::int32_t> refs;
  const auto& sh = store.shape();
  const auto check_table = [&](const HeadTable& t) {
    for (std::size_t i = 0; i < t.size(); ++i) {
      const PageEntry& e = t[i];
      REQUIRE(e.count > 0);
      REQUIRE(e.first >= 0);
      REQUIRE(e.end_slot() <= store.page_size());
      if (i > 0) REQUIRE(t[i - 1].last_pos() < e.pos0);  // position order
    }
    std::int64_t runs = 0;
    t.for_each_page_ref([&](PageId p) {
      ++refs[p];
      ++runs;
    });
    REQUIRE(runs == t.num_pages());
  };
  for (SeqId id : store.sequences())
    for (int l = 0; l < sh.num_layers; ++l)
      for (int h = 0; h < sh.num_kv_heads; ++h) check_table(store.table(id, l, h));
  for (const ChunkKey& k : store.chunk_keys())
    for (int l = 0; l < sh.num_layers; ++l)
      for (int h = 0; h < sh.num_kv_heads; ++h) check_table(store.chunk_table(k, l, h));
  REQUIRE(static_cast<std::int32_t>(refs.size()) == store.pool().used_pages());
  for (const auto& [p, n] : refs) REQUIRE(store.pool().refcount(p) == n);
  const StoreStats st = store.stats();
  REQUIRE(st.pages_in_use == st.pages_global + st.pages_local);
}

// Everything observable about a store, for before/after comparisons.
template <class Store>
struct Snapshot {
  std::vector<SeqId> seqs;
  std::vector<std::vector<PageEntry>> tables;
  std::vector<std::int32_t> next_pos;
  std::vector<std::int32_t> refcounts;
  std::int32_t used = 0;
  StoreStats stats;
  std::vector<ChunkKey> chunks;

  explicit Snapshot(const Store& s) {
    const auto& sh = s.shape();
    seqs = s.sequences();
    for (SeqId id : seqs)
      for (int l = 0; l < sh.num_layers; ++l) {
        next_pos.push_back(s.next_position(id, l));
        for (int h = 0; h < sh.num_kv_heads; ++h) {
          const HeadTable& t = s.table(id, l, h);
          std::vector<PageEntry> es;
          for (std::size_t i = 0; i < t.size(); ++i) es.push_back(t[i]);
          tables.push_back(es);
        }
      }
    for (PageId p = 0; p < s.pool().num_pages(); ++p) refcounts.push_back(s.pool().refcount(p));
    used = s.pool().used_pages();
    stats = s.stats();
    chunks = s.chunk_keys();
  }
  bool operator==(const Snapshot& o) const {
    return seqs == o.seqs && tables == o.tables && next_pos == o.next_pos && refcounts == o.refcounts &&
           used == o.used && stats.pages_global == o.stats.pages_global &&
           stats.pages_local == o.stats.pages_local && stats.num_sequences == o.stats.num_sequences &&
           chunks == o.chunks;
  }
};

// The plan's view of every slot must equal the store's tables entry for entry, and the last update must have
// written only inside the regions of the batch's slots (a write elsewhere corrupts another sequence's
// entries, which the entry comparison sees only once that sequence is planned again).
template <class Store>
void check_plan_mirrors_store(const AttentionPlan& plan, const Store& store) {
  std::vector<std::pair<std::int32_t, std::int32_t>> regions;  // [begin, end) of every slot's regions
  for (const PlanSlot& s : plan.slots()) {
    if (s.sink_cap > 0) regions.emplace_back(s.sink_offset, s.sink_offset + s.sink_cap);
    if (s.ring_cap > 0) regions.emplace_back(s.ring_offset, s.ring_offset + s.ring_cap);
  }
  std::sort(regions.begin(), regions.end());
  for (std::size_t i = 1; i < regions.size(); ++i) REQUIRE(regions[i - 1].second <= regions[i].first);
  for (const auto& [off, n] : plan.dirty_spans())
    for (std::int32_t o = off; o < off + n; ++o) {
      auto it = std::upper_bound(regions.begin(), regions.end(),
                                 std::pair{o, std::numeric_limits<std::int32_t>::max()});
      const bool inside = it != regions.begin() && o < std::prev(it)->second;
      INFO("arena offset " << o << " written outside every slot region of the batch");
      REQUIRE(inside);
    }
  for (std::size_t i = 0; i < plan.items().size(); ++i)
    for (int h = 0; h < store.shape().num_kv_heads; ++h) {
      const HeadTable& t = store.table(plan.items()[i].seq, plan.layer(), h);
      const PlanSlot& s = plan.slot(i, h);
      REQUIRE(static_cast<std::size_t>(s.num_entries()) == t.size());
      for (std::int32_t e = 0; e < s.num_entries(); ++e)
        REQUIRE(plan.entry(s, e) == t[static_cast<std::size_t>(e)]);
    }
}

}  // namespace rktest
