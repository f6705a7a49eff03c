// The plain data that host code and the CUDA kernels share bit for bit: page entries, plan slots and head
// policies. No standard-library containers and no CUDA headers, so .cpp and .cu files include the same
// definitions (nvcc compiles the CUDA sources as C++20) and a device copy of a plan is a memcpy of these.
#pragma once

#include <cstdint>

#include "redknot/host_device.hpp"

namespace redknot {

using PageId = std::int32_t;

// Slots [first, first + count) of page page_id hold the consecutive positions pos0, pos0 + 1, ...
// Partial pages and position jumps (spliced chunks) are first-class: a page may hold several entries.
//
// rope_pos0 is the position the stored keys of slot `first` were rotated for (RoPE): equal to pos0 for keys
// appended at their own positions; a chunk spliced at another offset keeps the rotation it was computed with,
// and a kernel reading it at pos0 accounts for the difference (pos0 - rope_pos0). 16 bytes, so a device loads
// an entry as one 16-byte vector; first and count fit 16 bits because page_size <= kMaxPageSize.
struct alignas(16) PageEntry {
  PageId page_id = -1;
  std::int16_t first = 0;
  std::int16_t count = 0;
  std::int32_t pos0 = 0;
  std::int32_t rope_pos0 = 0;

  REDKNOT_HD std::int32_t last_pos() const { return pos0 + count - 1; }
  REDKNOT_HD std::int32_t end_slot() const { return first + count; }
  // Offset to add to a stored key's rotation to read it at its logical position.
  REDKNOT_HD std::int32_t rope_delta() const { return pos0 - rope_pos0; }
  friend bool operator==(const PageEntry&, const PageEntry&) = default;
};
static_assert(sizeof(PageEntry) == 16 && alignof(PageEntry) == 16,
              "kernels load a PageEntry as one 16-byte vector");

// The largest page size a PageEntry can describe (first and count are int16).
inline constexpr int kMaxPageSize = 4096;

// Make an entry appended at its own position (keys rotated for where they sit).
REDKNOT_HD PageEntry make_entry(PageId page, std::int32_t first, std::int32_t count, std::int32_t pos0) {
  return PageEntry{page, static_cast<std::int16_t>(first), static_cast<std::int16_t>(count), pos0, pos0};
}

// Where one (batch item, kv_head) finds its entries in an AttentionPlan arena: a sink region and a
// power-of-two ring mirroring the head table's body. Entry i is plan_entry(arena, slot, i).
struct PlanSlot {
  std::int32_t sink_offset = 0;  // arena offset of the sink region
  std::int32_t sink_cap = 0;
  std::int32_t sink_len = 0;
  std::int32_t ring_offset = 0;  // arena offset of the ring region
  std::int32_t ring_cap = 0;     // power of two (or 0)
  std::int32_t ring_start = 0;   // index of the first live ring element, in [0, ring_cap)
  std::int32_t ring_len = 0;
  REDKNOT_HD std::int32_t num_entries() const { return sink_len + ring_len; }
};

// Entry i (in [0, num_entries())) of a plan slot: sink[i] for i < sink_len, else the ring element.
REDKNOT_HD const PageEntry& plan_entry(const PageEntry* arena, const PlanSlot& s, std::int32_t i) {
  if (i < s.sink_len) return arena[s.sink_offset + i];
  return arena[s.ring_offset + ((s.ring_start + (i - s.sink_len)) & (s.ring_cap - 1))];
}

// Codes match the reference implementation (local 0, global 1, retrieval 2, dense 3).
enum class HeadClass : std::uint8_t { kLocal = 0, kGlobal = 1, kRetrieval = 2, kDense = 3 };

// What one (layer, kv_head) keeps and sees. Only local heads use window and sink; every other class keeps and
// sees the whole causal context (retrieval is stored like global; its top-p selection is a later feature).
// The rule itself is in visibility.hpp.
struct HeadPolicy {
  HeadClass cls = HeadClass::kGlobal;
  int window = -1;  // local: number of most recent positions visible, the query itself included (>= 1)
  int sink = 0;     // local: positions [0, sink) stay visible forever

  REDKNOT_HD bool is_local() const { return cls == HeadClass::kLocal; }
  friend bool operator==(const HeadPolicy&, const HeadPolicy&) = default;
};

}  // namespace redknot
