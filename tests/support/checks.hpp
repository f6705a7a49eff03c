// Store and plan invariants as functions that say what is wrong ("" when nothing is), so the Catch2 tests
// (harness.hpp), the scenario runner and the GPU driver (no Catch2) share one definition of each.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "redknot/attention_plan.hpp"
#include "redknot/error.hpp"
#include "redknot/kv_head_store.hpp"

namespace rktest {

using redknot::detail::concat;

// Every page reference held by any head table of any sequence or registered chunk (one per run of entries on
// a page) must add up to the pool's refcounts, and the pool's used count must equal the number of pages
// referenced; entries must lie inside their page, in position order; the class counters must add up.
template <class Store>
std::string accounting_error(const Store& store) {
  using namespace redknot;
  std::map<PageId, std::int32_t> refs;
  const auto& sh = store.shape();
  const auto table_error = [&](const HeadTable& t, const std::string& what) -> std::string {
    for (std::size_t i = 0; i < t.size(); ++i) {
      const PageEntry& e = t[i];
      if (e.count <= 0 || e.first < 0 || e.end_slot() > store.page_size())
        return concat(what, " entry ", i, " (first ", e.first, ", count ", e.count,
                      ") is not inside a page of ", store.page_size(), " slots");
      if (i > 0 && t[i - 1].last_pos() >= e.pos0)
        return concat(what, " entry ", i, " starts at position ", e.pos0,
                      ", not after the previous entry's last position ", t[i - 1].last_pos());
    }
    std::int64_t runs = 0;
    t.for_each_page_ref([&](PageId p) {
      ++refs[p];
      ++runs;
    });
    if (runs != t.num_pages())
      return concat(what, " holds ", runs, " page references but counts ", t.num_pages());
    return {};
  };
  for (SeqId id : store.sequences())
    for (int l = 0; l < sh.num_layers; ++l)
      for (int h = 0; h < sh.num_kv_heads; ++h)
        if (std::string err =
                table_error(store.table_layout(id, l, h), concat("sequence ", id, " layer ", l, " head ", h));
            !err.empty())
          return err;
  for (const ChunkKey& k : store.chunk_keys())
    for (int l = 0; l < sh.num_layers; ++l)
      for (int h = 0; h < sh.num_kv_heads; ++h)
        if (std::string err = table_error(store.chunk_table(k, l, h), concat("chunk layer ", l, " head ", h));
            !err.empty())
          return err;
  if (static_cast<std::int32_t>(refs.size()) != store.pool().used_pages())
    return concat("tables reference ", refs.size(), " distinct pages, the pool has ",
                  store.pool().used_pages(), " in use");
  for (const auto& [p, n] : refs)
    if (store.pool().refcount(p) != n)
      return concat("page ", p, " is referenced ", n, " times by tables, its refcount is ",
                    store.pool().refcount(p));
  const StoreStats st = store.stats();
  if (st.pages_in_use != st.pages_global + st.pages_local)
    return concat("stats: pages_in_use ", st.pages_in_use, " != pages_global ", st.pages_global,
                  " + pages_local ", st.pages_local);
  return {};
}

// The plan's view of every slot must equal the store's tables entry for entry, and the last update must have
// written only inside the regions of the batch's slots (a write elsewhere corrupts another sequence's
// entries, which the entry comparison sees only once that sequence is planned again).
template <class Store>
std::string plan_mirror_error(const redknot::AttentionPlan& plan, const Store& store) {
  using namespace redknot;
  std::vector<std::pair<std::int32_t, std::int32_t>> regions;  // [begin, end) of every slot's regions
  for (const PlanSlot& s : plan.slots()) {
    if (s.sink_cap > 0) regions.emplace_back(s.sink_offset, s.sink_offset + s.sink_cap);
    if (s.ring_cap > 0) regions.emplace_back(s.ring_offset, s.ring_offset + s.ring_cap);
  }
  std::sort(regions.begin(), regions.end());
  for (std::size_t i = 1; i < regions.size(); ++i)
    if (regions[i - 1].second > regions[i].first)
      return concat("plan regions [", regions[i - 1].first, ", ", regions[i - 1].second, ") and [",
                    regions[i].first, ", ", regions[i].second, ") overlap");
  for (const auto& [off, n] : plan.dirty_spans())
    for (std::int32_t o = off; o < off + n; ++o) {
      auto it = std::upper_bound(regions.begin(), regions.end(),
                                 std::pair{o, std::numeric_limits<std::int32_t>::max()});
      if (it == regions.begin() || o >= std::prev(it)->second)
        return concat("arena offset ", o, " written outside every slot region of the batch");
    }
  for (std::size_t i = 0; i < plan.items().size(); ++i)
    for (int h = 0; h < store.shape().num_kv_heads; ++h) {
      const HeadTable& t = store.table(plan.items()[i].seq, plan.layer(), h);
      const PlanSlot& s = plan.slot(i, h);
      if (static_cast<std::size_t>(s.num_entries()) != t.size())
        return concat("plan item ", i, " head ", h, " has ", s.num_entries(), " entries, the table ",
                      t.size());
      for (std::int32_t e = 0; e < s.num_entries(); ++e)
        if (!(plan.entry(s, e) == t[static_cast<std::size_t>(e)]))
          return concat("plan item ", i, " head ", h, " entry ", e, " differs from the table's");
    }
  return {};
}

}  // namespace rktest
