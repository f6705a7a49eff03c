// AttentionPlan: the per-step metadata an attention kernel consumes for one layer and a batch of sequences.
//
// For every (batch item, kv_head) the plan holds a copy of that head's page entries in a flat arena:
//   * a sink region (entries frozen once the window passed them; grows rarely), and
//   * a ring region (power-of-two capacity) mirroring the head table's body: local heads push at the back and
//     pop at the front, so a ring keeps both O(1); global heads only push.
// Entry i of a slot is sink[i] for i < sink_len, else ring[(ring_start + i - sink_len) & (ring_cap - 1)].
//
// update() is incremental: it compares each head table's change counters with the ones it saw last time and
// copies only the entries that changed (a decode step touches one tail entry per head), so its cost is
// O(batch * kv_heads + changed entries), independent of context length. Arena writes are recorded as dirty
// spans so a device mirror can upload only those bytes.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

#include "redknot/core_types.hpp"
#include "redknot/error.hpp"
#include "redknot/head_table.hpp"

namespace redknot {

// One batch item: a sequence and the rows [q_begin, q_begin + q_len) of the flattened query tensor.
struct PlanItem {
  std::int64_t seq = 0;
  std::int32_t q_begin = 0;
  std::int32_t q_len = 0;
};

class AttentionPlan {
 public:
  struct UpdateStats {
    std::int64_t slots_rebuilt = 0;    // slots copied in full (new sequence, layout change, growth)
    std::int64_t entries_written = 0;  // arena entries written by the last update
  };

  int layer() const { return layer_; }
  int num_kv_heads() const { return num_kv_heads_; }
  std::span<const PlanItem> items() const { return items_; }
  std::span<const std::int32_t> q_positions() const { return q_positions_; }
  std::int32_t total_queries() const { return static_cast<std::int32_t>(q_positions_.size()); }
  const PlanSlot& slot(std::size_t item, int kv_head) const {
    return slots_[item * static_cast<std::size_t>(num_kv_heads_) + static_cast<std::size_t>(kv_head)];
  }
  std::span<const PlanSlot> slots() const { return slots_; }
  std::span<const PageEntry> arena() const { return arena_; }
  const UpdateStats& last_update() const { return last_; }
  // Arena spans [offset, offset + count) written by the last update (for incremental device uploads).
  std::span<const std::pair<std::int32_t, std::int32_t>> dirty_spans() const { return dirty_; }

  const PageEntry& entry(const PlanSlot& s, std::int32_t i) const { return plan_entry(arena_.data(), s, i); }

  // Rebinds the plan to (layer, batch) and brings every slot up to date with the store. `seqs` are the
  // batch's sequences in order, `q_lens` their query counts and `q_positions` the flattened query positions.
  // Store must provide table(seq, layer, h), check_query_position(seq, layer, p), shape() and uid().
  template <class Store>
  void update(const Store& store, int layer, std::span<const std::int64_t> seqs,
              std::span<const std::int32_t> q_lens, std::span<const std::int32_t> q_positions) {
    const int H = store.shape().num_kv_heads;
    require(layer >= 0 && layer < store.shape().num_layers, "plan: layer=", layer, " out of range [0, ",
            store.shape().num_layers, ")");
    require(q_lens.size() == seqs.size(), "plan: q_lens has ", q_lens.size(),
            " entries, expected one per sequence (", seqs.size(), ")");
    std::int64_t total = 0;
    for (std::size_t i = 0; i < seqs.size(); ++i) {
      require(q_lens[i] >= 0, "plan: q_lens[", i, "]=", q_lens[i], " must be >= 0");
      total += q_lens[i];
    }
    require(static_cast<std::int64_t>(q_positions.size()) == total, "plan: q_positions has ",
            q_positions.size(), " entries, expected sum(q_lens)=", total);
    {
      std::unordered_map<std::int64_t, std::size_t> seen;
      std::int64_t row = 0;
      for (std::size_t i = 0; i < seqs.size(); ++i) {
        require(seen.emplace(seqs[i], i).second, "plan: sequence id=", seqs[i],
                " appears twice in the batch");
        for (std::int32_t j = 0; j < q_lens[i]; ++j)
          store.check_query_position(seqs[i], layer, q_positions[row + j]);
        row += q_lens[i];
      }
    }

    // A different layer means different tables: start over (engines keep one plan per layer to stay
    // incremental).
    // So does another store: its sequence ids and table counters are unrelated to the ones mirrored here.
    const std::uint64_t uid = store.uid();
    if (layer != layer_ || H != num_kv_heads_ || uid != store_uid_) reset(layer, H, uid);
    last_ = {};
    dirty_.clear();

    // Bind items to slots, reusing the slot group a sequence had last step.
    std::unordered_map<std::int64_t, Group> next_groups;
    next_groups.reserve(seqs.size());
    for (std::int64_t id : seqs) {
      auto it = groups_.find(id);
      if (it != groups_.end()) {
        next_groups.emplace(id, std::move(it->second));
        groups_.erase(it);
      } else {
        next_groups.emplace(id, Group(static_cast<std::size_t>(H)));
      }
    }
    for (auto& [id, g] : groups_) release(g);  // sequences that left the batch
    groups_ = std::move(next_groups);

    items_.clear();
    slots_.resize(seqs.size() * static_cast<std::size_t>(H));
    std::int32_t row = 0;
    for (std::size_t i = 0; i < seqs.size(); ++i) {
      items_.push_back(PlanItem{seqs[i], row, q_lens[i]});
      row += q_lens[i];
      Group& g = groups_.at(seqs[i]);
      for (int h = 0; h < H; ++h) {
        sync(g.slots[static_cast<std::size_t>(h)], g.seen[static_cast<std::size_t>(h)],
             store.table(seqs[i], layer, h));
        slots_[i * static_cast<std::size_t>(H) + static_cast<std::size_t>(h)] =
            g.slots[static_cast<std::size_t>(h)];
      }
    }
    q_positions_.assign(q_positions.begin(), q_positions.end());
  }

 private:
  struct Seen {
    bool valid = false;
    std::uint64_t sink_pushed = 0, body_popped = 0, body_pushed = 0, tail_version = 0, layout_version = 0;
  };
  struct Group {
    explicit Group(std::size_t H) : slots(H), seen(H) {}
    std::vector<PlanSlot> slots;
    std::vector<Seen> seen;
  };

  void reset(int layer, int H, std::uint64_t uid) {
    layer_ = layer;
    store_uid_ = uid;
    num_kv_heads_ = H;
    groups_.clear();
    arena_.clear();
    free_.clear();
  }

  static int size_class(std::int32_t cap) { return std::countr_zero(static_cast<std::uint32_t>(cap)); }

  std::int32_t alloc_region(std::int32_t cap) {
    const auto c = static_cast<std::size_t>(size_class(cap));
    if (free_.size() > c && !free_[c].empty()) {
      const std::int32_t off = free_[c].back();
      free_[c].pop_back();
      return off;
    }
    const auto off = static_cast<std::int32_t>(arena_.size());
    arena_.resize(arena_.size() + static_cast<std::size_t>(cap));
    return off;
  }
  void free_region(std::int32_t off, std::int32_t cap) {
    if (cap == 0) return;
    const auto c = static_cast<std::size_t>(size_class(cap));
    if (free_.size() <= c) free_.resize(c + 1);
    free_[c].push_back(off);
  }
  void release(Group& g) {
    for (auto& s : g.slots) {
      free_region(s.sink_offset, s.sink_cap);
      free_region(s.ring_offset, s.ring_cap);
      s = {};
    }
  }

  void write(std::int32_t off, const PageEntry& e) {
    arena_[static_cast<std::size_t>(off)] = e;
    ++last_.entries_written;
    if (!dirty_.empty() && dirty_.back().first + dirty_.back().second == off)
      ++dirty_.back().second;
    else
      dirty_.emplace_back(off, 1);
  }
  void write_ring(PlanSlot& s, std::int32_t i, const PageEntry& e) {
    write(s.ring_offset + ((s.ring_start + i) & (s.ring_cap - 1)), e);
  }

  static std::int32_t pow2_at_least(std::size_t n) {
    return static_cast<std::int32_t>(std::bit_ceil(std::max<std::size_t>(n, 4)));
  }

  void rebuild(PlanSlot& s, Seen& seen, const HeadTable& t) {
    ++last_.slots_rebuilt;
    // Every slot gets a sink region up front (4 entries): local heads start filling it after their first
    // eviction, and a rebuild then would cost a full copy of the table.
    if (s.sink_cap < static_cast<std::int32_t>(std::max<std::size_t>(t.sink.size(), 1))) {
      free_region(s.sink_offset, s.sink_cap);
      s.sink_cap = pow2_at_least(t.sink.size());
      s.sink_offset = alloc_region(s.sink_cap);
    }
    if (s.ring_cap < static_cast<std::int32_t>(t.body.size())) {
      free_region(s.ring_offset, s.ring_cap);
      s.ring_cap = pow2_at_least(t.body.size() * 2);
      s.ring_offset = alloc_region(s.ring_cap);
    }
    s.sink_len = static_cast<std::int32_t>(t.sink.size());
    for (std::int32_t i = 0; i < s.sink_len; ++i)
      write(s.sink_offset + i, t.sink[static_cast<std::size_t>(i)]);
    s.ring_start = 0;
    s.ring_len = static_cast<std::int32_t>(t.body.size());
    for (std::int32_t i = 0; i < s.ring_len; ++i) write_ring(s, i, t.body[static_cast<std::size_t>(i)]);
    seen = Seen{true, t.sink_pushed, t.body_popped, t.body_pushed, t.tail_version, t.layout_version};
  }

  // Brings one slot up to date from the table's counters. Between two syncs a table may have had entries
  // pushed and then popped again (appends without attention, a batch item with 0 queries, retire_queries),
  // so the ring's old entries are only the first `survivors` of the body, and everything after them is
  // copied from the table. Anything the counters cannot explain exactly is rebuilt in full.
  void sync(PlanSlot& s, Seen& seen, const HeadTable& t) {
    const bool stale = !seen.valid || t.layout_version != seen.layout_version ||
                       t.sink_pushed < seen.sink_pushed || t.body_popped < seen.body_popped ||
                       t.body_pushed < seen.body_pushed;
    if (stale) return rebuild(s, seen, t);
    // Fast path (most decode steps): nothing pushed or popped, at most the tail entry grew in place.
    if (t.sink_pushed == seen.sink_pushed && t.body_popped == seen.body_popped &&
        t.body_pushed == seen.body_pushed && static_cast<std::size_t>(s.ring_len) == t.body.size()) {
      if (t.tail_version != seen.tail_version && s.ring_len > 0) {
        write_ring(s, s.ring_len - 1, t.body.back());
        seen.tail_version = t.tail_version;
      }
      return;
    }
    const std::uint64_t new_sink = t.sink_pushed - seen.sink_pushed;
    const std::uint64_t popped = t.body_popped - seen.body_popped;
    const std::uint64_t pushed = t.body_pushed - seen.body_pushed;
    const auto old_len = static_cast<std::uint64_t>(s.ring_len);
    const std::uint64_t body = t.body.size();
    // The deltas must account for the table exactly (old_len - popped + pushed == body, popped <= old_len +
    // pushed) and fit the regions; otherwise the mirror cannot be patched safely.
    const bool consistent =
        popped <= old_len + pushed && old_len + pushed - popped == body && new_sink <= t.sink.size() &&
        static_cast<std::uint64_t>(s.sink_len) + new_sink <= static_cast<std::uint64_t>(s.sink_cap) &&
        body <= static_cast<std::uint64_t>(s.ring_cap);
    if (!consistent) return rebuild(s, seen, t);
    for (std::uint64_t i = 0; i < new_sink; ++i)
      write(s.sink_offset + s.sink_len + static_cast<std::int32_t>(i),
            t.sink[t.sink.size() - (new_sink - i)]);
    s.sink_len += static_cast<std::int32_t>(new_sink);
    // Old ring entries still in the body (they are its first `survivors` entries, in order).
    const std::uint64_t survivors = popped < old_len ? old_len - popped : 0;
    if (s.ring_cap > 0)
      s.ring_start = (s.ring_start + static_cast<std::int32_t>(old_len - survivors)) & (s.ring_cap - 1);
    s.ring_len = static_cast<std::int32_t>(survivors);
    for (std::uint64_t i = survivors; i < body; ++i)
      write_ring(s, static_cast<std::int32_t>(i), t.body[static_cast<std::size_t>(i)]);
    s.ring_len = static_cast<std::int32_t>(body);
    if (s.ring_len == 0) s.ring_start = 0;
    // A tail grown in place is the last surviving old entry (newer entries were copied whole above).
    if (t.tail_version != seen.tail_version && survivors > 0)
      write_ring(s, static_cast<std::int32_t>(survivors - 1),
                 t.body[static_cast<std::size_t>(survivors - 1)]);
    seen = Seen{true, t.sink_pushed, t.body_popped, t.body_pushed, t.tail_version, t.layout_version};
  }

  int layer_ = -1;
  std::uint64_t store_uid_ = 0;
  int num_kv_heads_ = 0;
  std::vector<PlanItem> items_;
  std::vector<std::int32_t> q_positions_;
  std::vector<PlanSlot> slots_;
  std::vector<PageEntry> arena_;
  std::vector<std::vector<std::int32_t>> free_;  // free arena regions by log2(capacity)
  std::unordered_map<std::int64_t, Group> groups_;
  UpdateStats last_;
  std::vector<std::pair<std::int32_t, std::int32_t>> dirty_;
};

}  // namespace redknot
