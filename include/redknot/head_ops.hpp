// Per-head operations: what happens to one (sequence, layer, kv_head) table and the pool's references when
// tokens are evicted, reserved, copied on write or adopted. They decide and account; they never move K/V
// bytes. KVHeadStore orchestrates them (validate every head, check capacity, then commit all of them), and
// the byte movers carry out the AppendPlan they fill in (append_plan.hpp).
//
// Every function here assumes its arguments were validated by the caller; they keep the table's invariants:
// entries in position order, entries on one page adjacent in sink ++ body, one pool reference per distinct
// page, and the change counters an AttentionPlan mirrors incrementally (head_table.hpp).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <span>

#include "redknot/append_plan.hpp"
#include "redknot/head_table.hpp"

namespace redknot::head_ops {

// Which positions a head keeps once no query before q_earliest remains: k < sink_end or k >= window_begin
// (the canonical rule; see policies.hpp). Global heads keep everything (sink_end = +inf).
struct Retained {
  std::int64_t sink_end;
  std::int64_t window_begin;
};

// The page counter of the head's class (the store keeps one for global-like and one for local heads):
// pages this head allocates add to it, pages whose last reference this head drops subtract from it.
using PageCounter = std::atomic<std::int64_t>;

// The entry new tokens continue from: the last of sink ++ body (sink entries are frozen, but their page's
// free slots can still take new body entries).
inline const PageEntry* tail_entry(const HeadTable& t) {
  if (!t.body.empty()) return &t.body.back();
  if (!t.sink.empty()) return &t.sink.back();
  return nullptr;
}

inline PageEntry sink_part(PageEntry e, std::int64_t sink_end) {
  e.count = static_cast<std::int16_t>(std::min<std::int64_t>(e.count, sink_end - e.pos0));
  return e;
}

struct EvictionPlan {
  std::size_t pops = 0;          // entries leaving the front of body
  std::int64_t pages_freed = 0;  // pages whose last reference goes (refcount 1, no neighbour on the page)
  bool has_tail = false;         // the last entry of sink ++ body once the eviction is applied
  PageEntry tail;
};

// Which body entries leave under `r`, without changing anything.
template <class Pool>
EvictionPlan plan_eviction(const HeadTable& t, const Pool& pool, bool local, Retained r) {
  EvictionPlan ev;
  if (const PageEntry* tail = tail_entry(t)) {
    ev.has_tail = true;
    ev.tail = *tail;
  }
  if (!local) return ev;
  PageId kept_before = t.sink.empty() ? -1 : t.sink.back().page_id;  // page of the entry before body.front()
  while (ev.pops < t.body.size() && t.body[ev.pops].last_pos() < r.window_begin) {
    const PageEntry& e = t.body[ev.pops];
    if (e.pos0 < r.sink_end) {
      kept_before = e.page_id;  // its sink part moves to the sink list, with the page reference
    } else {
      const bool next_on_page = ev.pops + 1 < t.body.size() && t.body[ev.pops + 1].page_id == e.page_id;
      if (kept_before != e.page_id && !next_on_page && pool.refcount(e.page_id) == 1) ++ev.pages_freed;
    }
    ++ev.pops;
  }
  if (ev.pops == t.body.size() && ev.pops > 0) {  // the whole body leaves: the tail is what the sink keeps
    ev.has_tail = false;
    for (std::size_t i = ev.pops; i-- > 0;)
      if (t.body[i].pos0 < r.sink_end) {
        ev.has_tail = true;
        ev.tail = sink_part(t.body[i], r.sink_end);
        break;
      }
    if (!ev.has_tail && !t.sink.empty()) {
      ev.has_tail = true;
      ev.tail = t.sink.back();
    }
  }
  return ev;
}

// Drops a page reference of this head; counts the page out of its class when it returns to the free list.
template <class Pool>
void release_page(Pool& pool, PageId p, PageCounter& pages) {
  if (pool.decref(p)) pages.fetch_sub(1, std::memory_order_relaxed);
}

// Applies the eviction plan_eviction describes: entries leave the body; their sink parts move to the sink
// list.
template <class Pool>
void evict(HeadTable& t, Pool& pool, bool local, Retained r, PageCounter& pages) {
  if (!local) return;
  const EvictionPlan ev = plan_eviction(t, pool, local, r);
  for (std::size_t i = 0; i < ev.pops; ++i) {
    const PageEntry e = t.body.front();
    t.body.pop_front();
    ++t.body_popped;
    if (e.pos0 < r.sink_end) {
      const PageEntry kept = sink_part(e, r.sink_end);
      PageEntry* last = t.sink.empty() ? nullptr : &t.sink.back();
      if (last && last->page_id == kept.page_id && last->end_slot() == kept.first &&
          last->last_pos() + 1 == kept.pos0 && last->rope_delta() == kept.rope_delta()) {
        last->count = static_cast<std::int16_t>(
            last->count + kept.count);  // contiguous with the previous sink entry: merge (rare: tiny windows)
        ++t.layout_version;
      } else {
        t.sink.push_back(kept);
        ++t.sink_pushed;
      }
    } else {
      const bool shared = (!t.sink.empty() && t.sink.back().page_id == e.page_id) ||
                          (!t.body.empty() && t.body.front().page_id == e.page_id);
      if (!shared) release_page(pool, e.page_id, pages);
    }
  }
}

// Pages needed to write n tokens once ev has been applied: a private copy of a shared tail page, then
// whatever does not fit in the tail page's free slots. An upper bound when other tables drop references to
// the tail page first (batched appends); exact for a single table.
template <class Pool>
std::int64_t pages_needed(const EvictionPlan& ev, const Pool& pool, int page_size, std::size_t n) {
  const std::int64_t ps = page_size;
  std::int64_t room = 0, cow = 0;
  if (ev.has_tail) {
    room = ps - ev.tail.end_slot();
    if (room > 0 && pool.refcount(ev.tail.page_id) > 1) cow = 1;
  }
  const std::int64_t rest =
      static_cast<std::int64_t>(n) - std::min<std::int64_t>(room, static_cast<std::int64_t>(n));
  return cow + (rest + ps - 1) / ps;
}

// One fresh page (refcount 1), counted in the head's class. The caller checked capacity beforehand.
template <class Pool>
PageId take_page(Pool& pool, PageCounter& pages) {
  thread_local std::vector<PageId> one;
  one.clear();
  pool.alloc(1, one);
  pages.fetch_add(1, std::memory_order_relaxed);
  return one.front();
}

// Makes the tail page private before writing into it: a fresh page takes a copy of its used slots (recorded
// in the plan for the movers), every entry on it is repointed, and the shared page loses this head's
// reference.
template <class Pool>
void copy_on_write_tail(HeadTable& t, Pool& pool, PageCounter& pages, AppendPlan& plan) {
  const PageEntry* tail = tail_entry(t);
  const PageId old = tail->page_id;
  if (pool.refcount(old) <= 1) return;
  const PageId np = take_page(pool, pages);
  plan.copies.push_back(PageCopy{np, old, tail->end_slot()});
  for (auto it = t.body.rbegin(); it != t.body.rend() && it->page_id == old; ++it) it->page_id = np;
  if (t.body.empty() || t.body.front().page_id == np)
    for (auto it = t.sink.rbegin(); it != t.sink.rend() && it->page_id == old; ++it) it->page_id = np;
  release_page(pool, old, pages);
  ++t.layout_version;
}

// Reserves a slot for each position (strictly increasing, beyond the table's last position) and records
// where token i goes in plan.rows[(row0 + i) * H + head]. Fills the tail page first (copied on write when
// shared), then fresh pages; consecutive positions on one page extend one entry.
template <class Pool>
void reserve_rows(HeadTable& t, Pool& pool, int page_size, std::span<const std::int32_t> pos,
                  std::size_t row0, int head, PageCounter& pages, AppendPlan& plan) {
  const std::size_t n = pos.size();
  const auto H = static_cast<std::size_t>(plan.num_kv_heads);
  std::size_t i = 0;
  while (i < n) {
    const PageEntry* tail = tail_entry(t);
    const bool new_page = tail == nullptr || tail->end_slot() >= page_size;
    if (!new_page) {
      copy_on_write_tail(t, pool, pages, plan);
      tail = tail_entry(t);
    }
    const PageId page = new_page ? take_page(pool, pages) : tail->page_id;
    const std::int32_t slot = new_page ? 0 : tail->end_slot();
    // The run: consecutive positions that fit in this page.
    std::size_t j = i + 1;
    while (j < n && slot + static_cast<std::int32_t>(j - i) < page_size && pos[j] == pos[j - 1] + 1) ++j;
    const auto run = static_cast<std::int32_t>(j - i);
    // Only a body entry grows in place; sink entries are frozen, so a run after one starts a new entry. So
    // does a run after keys rotated for other positions (a spliced chunk): appended keys are rotated for
    // where they sit, and one entry has one rotation offset.
    const bool extends = !new_page && !t.body.empty() && t.body.back().last_pos() + 1 == pos[i] &&
                         t.body.back().rope_delta() == 0;
    if (extends) {
      t.body.back().count = static_cast<std::int16_t>(t.body.back().count + run);
      ++t.tail_version;
    } else {
      t.body.push_back(make_entry(page, slot, run, pos[i]));
      ++t.body_pushed;
    }
    for (std::int32_t r = 0; r < run; ++r)
      plan.rows[(row0 + i + static_cast<std::size_t>(r)) * H + static_cast<std::size_t>(head)] =
          RowDest{page, slot + r};
    i = j;
  }
}

// Index of the entry holding position p (entries are position ordered), or -1.
inline std::int64_t find_entry(const HeadTable& t, std::int32_t p) {
  std::size_t lo = 0, hi = t.size();
  while (lo < hi) {  // first entry whose last position is >= p
    const std::size_t mid = (lo + hi) / 2;
    if (t[mid].last_pos() < p)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < t.size() && t[lo].pos0 <= p ? static_cast<std::int64_t>(lo) : -1;
}

// Whether page p has holders beyond this table's own references (one per run of entries on it).
template <class Pool>
bool page_is_shared(const Pool& pool, const HeadTable& t, PageId p) {
  std::int32_t runs = 0;
  t.for_each_page_ref([&](PageId q) { runs += q == p; });
  return pool.refcount(p) > runs;
}

// Gives the table a private copy of page `old` (K and V, every slot): every entry on it is repointed and each
// run's reference moves to the copy. The caller checked capacity.
template <class Pool>
void copy_page_for_table(HeadTable& t, Pool& pool, PageId old, PageCounter& pages) {
  const PageId np = take_page(pool, pages);
  std::copy(pool.k_ptr(old), pool.k_ptr(old) + pool.page_elems(), pool.k_ptr(np));
  std::int32_t runs = 0;
  t.for_each_page_ref([&](PageId q) { runs += q == old; });
  for (std::int32_t r = 1; r < runs; ++r) pool.incref(np);
  for (std::int32_t r = 0; r < runs; ++r) release_page(pool, old, pages);
  for (auto& e : t.sink)
    if (e.page_id == old) e.page_id = np;
  for (auto& e : t.body)
    if (e.page_id == old) e.page_id = np;
  ++t.layout_version;
}

// Takes references to existing pages: `entries` (in position order, all beyond the table's last position once
// shifted, well-formed for the pool) join the back of the body at positions pos0 + shift, sharing their pages
// with whoever else holds them. rope_pos0 is kept: the keys stay rotated for where they were computed. The
// table holds one reference per run of entries on one page, as for appended entries (a page that comes back
// later, e.g. one chunk spliced twice, is referenced once per run).
template <class Pool>
void adopt(HeadTable& t, Pool& pool, std::span<const PageEntry> entries, std::int32_t shift = 0) {
  const PageEntry* tail = tail_entry(t);
  PageId prev = tail ? tail->page_id : -1;
  for (PageEntry e : entries) {
    if (e.page_id != prev) pool.incref(e.page_id);
    prev = e.page_id;
    e.pos0 += shift;
    t.body.push_back(e);
    ++t.body_pushed;
  }
}

}  // namespace redknot::head_ops
