// Per-(sequence, layer, kv_head) page tables: ordered lists of page entries (the "segmented" in SegPaged).
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

#include "redknot/core_types.hpp"

namespace redknot {

// One head's entries, in position order: sink entries (frozen once the window has passed them) followed by
// the body (appended at the back, evicted at the front for local heads). The table holds one pool reference
// per run of adjacent entries on one page. Appends keep a page's entries adjacent; only adopted pages can
// come back later in the table (one chunk spliced twice), and each run then holds its own reference.
//
// The counters let an AttentionPlan mirror the table incrementally: what changed since it last looked is
// (sink_pushed, body_popped, body_pushed, tail_version) deltas, or a full refresh when layout_version moved.
struct HeadTable {
  std::vector<PageEntry> sink;
  std::deque<PageEntry> body;

  std::uint64_t sink_pushed = 0;     // entries ever moved from body to sink
  std::uint64_t body_popped = 0;     // entries ever removed from the front of body (moved or dropped)
  std::uint64_t body_pushed = 0;     // entries ever pushed at the back of body
  std::uint64_t tail_version = 0;    // bumps when body.back().count grows in place
  std::uint64_t layout_version = 0;  // bumps on changes the counters cannot describe (copy-on-write)

  std::size_t size() const { return sink.size() + body.size(); }
  const PageEntry& operator[](std::size_t i) const {
    return i < sink.size() ? sink[i] : body[i - sink.size()];
  }
  bool empty() const { return sink.empty() && body.empty(); }

  // Number of stored positions (sum of entry counts).
  std::int64_t num_tokens() const {
    std::int64_t n = 0;
    for (const auto& e : sink) n += e.count;
    for (const auto& e : body) n += e.count;
    return n;
  }
  // Number of page references the table holds (runs of adjacent entries on one page; distinct pages unless
  // a spliced chunk's pages come back).
  std::int64_t num_pages() const {
    std::int64_t n = 0;
    PageId prev = -1;
    for (std::size_t i = 0; i < size(); ++i) {
      const PageId p = (*this)[i].page_id;
      n += p != prev ? 1 : 0;
      prev = p;
    }
    return n;
  }
  // Calls f(page) once per page reference the table holds.
  template <class F>
  void for_each_page_ref(F&& f) const {
    PageId prev = -1;
    for (std::size_t i = 0; i < size(); ++i) {
      const PageId p = (*this)[i].page_id;
      if (p != prev) f(p);
      prev = p;
    }
  }
};

}  // namespace redknot
