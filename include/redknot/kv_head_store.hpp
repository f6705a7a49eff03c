// KVHeadStore: the head-aware paged KV cache.
//
// Every (sequence, layer, kv_head) owns its own HeadTable of page entries in one shared PagePool. Global
// heads append forever; local heads drop whole pages once no future query can see them (sink + window rule).
//
// Contract with the engine (how queries and appends interleave):
//   * Positions of one (sequence, layer) are strictly increasing across appends.
//   * append(seq, layer, ..., positions) declares that every query of that (sequence, layer) before
//     positions[0] has already run — the natural order of a layer-by-layer forward (append the chunk's K/V,
//     then attend with the chunk's queries). retire_queries() says the same without appending.
//
// Thread safety: one writer at a time per store (create/free/fork/append/retire). Attention and plan building
// read the tables and may run concurrently with each other but not with a writer. stats() and the pool's
// page counters are atomics and may be read from any thread at any time, also during a write.
//
// Every mutating call validates all of its arguments and checks pool capacity before it changes anything:
// on an exception the store is exactly as it was (no leaked, lost or double-freed pages).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <span>
#include <unordered_map>
#include <vector>

#include "redknot/allocator.hpp"
#include "redknot/dtype.hpp"
#include "redknot/error.hpp"
#include "redknot/head_map.hpp"
#include "redknot/head_table.hpp"
#include "redknot/model_shape.hpp"
#include "redknot/page_pool.hpp"
#include "redknot/policies.hpp"
#include "redknot/pool_sizing.hpp"

namespace redknot {

using SeqId = std::int64_t;

struct StoreConfig {
  int page_size = 16;
  std::int32_t num_pages = 0;
};

// Totals, safe to read concurrently with a writer.
struct StoreStats {
  std::int64_t num_sequences = 0;
  std::int64_t pages_total = 0;
  std::int64_t pages_in_use = 0;
  std::int64_t pages_global = 0;  // pages held by global-like heads (global, retrieval, dense)
  std::int64_t pages_local = 0;
  std::int64_t bytes_in_use = 0;
  std::int64_t bytes_global = 0;
  std::int64_t bytes_local = 0;
};

// Pages and tokens one sequence references (pages shared with a fork are counted in each sequence).
struct SequenceStats {
  std::int64_t pages_global = 0;
  std::int64_t pages_local = 0;
  std::int64_t tokens_global = 0;  // stored (layer, head, position) triples
  std::int64_t tokens_local = 0;
  std::int64_t bytes_global = 0;
  std::int64_t bytes_local = 0;
  std::int64_t pages() const { return pages_global + pages_local; }
  std::int64_t bytes() const { return bytes_global + bytes_local; }
};

template <StorageType T, Allocator Alloc = HostAllocator, RetentionPolicy Retention = CanonicalRetention>
class KVHeadStore {
 public:
  using value_type = T;
  using allocator_type = Alloc;

  KVHeadStore(const ModelShape& shape, HeadMap map, StoreConfig cfg, Alloc alloc = Alloc{},
              Retention retention = Retention{})
      : shape_(checked_shape(shape)),
        map_(checked_map(std::move(map), shape)),
        cfg_(cfg),
        pool_(cfg.num_pages, cfg.page_size, shape.head_dim, std::move(alloc)),
        retention_(retention) {
    policies_.reserve(static_cast<std::size_t>(shape_.num_layers) * shape_.num_kv_heads);
    for (int l = 0; l < shape_.num_layers; ++l)
      for (int h = 0; h < shape_.num_kv_heads; ++h) policies_.push_back(map_.policy(l, h));
  }

  const ModelShape& shape() const { return shape_; }
  const HeadMap& head_map() const { return map_; }
  int page_size() const { return cfg_.page_size; }
  const PagePool<T, Alloc>& pool() const { return pool_; }
  PagePool<T, Alloc>& pool() { return pool_; }
  const Retention& retention() const { return retention_; }
  // Unique per store object in this process: plans bound to one store rebuild when handed another (sequence
  // ids restart at 1 in every store, so ids alone cannot tell two stores apart).
  std::uint64_t uid() const { return uid_; }

  const HeadPolicy& policy(int layer, int kv_head) const {
    check_layer(layer);
    check_head(kv_head);
    return policies_[static_cast<std::size_t>(layer) * shape_.num_kv_heads + kv_head];
  }

  // ---- sequences
  // -------------------------------------------------------------------------------------------

  SeqId create_sequence() {
    const SeqId id = next_id_++;
    seqs_.emplace(id, Sequence(shape_));
    num_sequences_.fetch_add(1, std::memory_order_relaxed);
    return id;
  }

  bool contains(SeqId id) const { return seqs_.count(id) != 0; }

  std::vector<SeqId> sequences() const {
    std::vector<SeqId> ids;
    ids.reserve(seqs_.size());
    for (const auto& [id, s] : seqs_) ids.push_back(id);
    std::sort(ids.begin(), ids.end());
    return ids;
  }

  void free_sequence(SeqId id) {
    Sequence& s = seq(id, "free_sequence");
    for (int l = 0; l < shape_.num_layers; ++l)
      for (int h = 0; h < shape_.num_kv_heads; ++h)
        s.table(l, h, shape_).for_each_distinct_page([&](PageId p) { release_page(p, l, h); });
    seqs_.erase(id);
    num_sequences_.fetch_sub(1, std::memory_order_relaxed);
  }

  // A new sequence sharing every page of the parent. The partial last page of a head is copied on the first
  // write by either side (copy-on-write), so the two sequences diverge without copying the shared prefix.
  SeqId fork(SeqId parent) {
    const Sequence& p = seq(parent, "fork");
    Sequence child = p;
    for (auto& t : child.tables) {
      t.for_each_distinct_page([&](PageId pg) { pool_.incref(pg); });
      reset_counters(t);
    }
    const SeqId id = next_id_++;
    seqs_.emplace(id, std::move(child));
    num_sequences_.fetch_add(1, std::memory_order_relaxed);
    return id;
  }

  // Position the next append to (seq, layer) must start at or after.
  std::int32_t next_position(SeqId id, int layer) const {
    check_layer(layer);
    return seq(id, "next_position").next_pos[static_cast<std::size_t>(layer)];
  }

  // Queries of (seq, layer) may be at positions in [query_floor, next_position): below it, keys they would
  // need may already be evicted; at or beyond next_position their own key is not appended yet.
  std::int32_t query_floor(SeqId id, int layer) const {
    check_layer(layer);
    return seq(id, "query_floor").query_floor[static_cast<std::size_t>(layer)];
  }

  // Throws unless a query at q_pos may attend in (seq, layer) now.
  void check_query_position(SeqId id, int layer, std::int32_t q_pos) const {
    const Sequence& s = seq(id, "attention");
    check_layer(layer);
    const std::int32_t lo = s.query_floor[static_cast<std::size_t>(layer)];
    const std::int32_t hi = s.next_pos[static_cast<std::size_t>(layer)];
    require(q_pos >= lo && q_pos < hi, "query position ", q_pos, " of sequence ", id, " layer ", layer,
            " must be in [", lo, ", ", hi, "): its own key must be appended and no later query retired");
  }

  const HeadTable& table(SeqId id, int layer, int kv_head) const {
    check_layer(layer);
    check_head(kv_head);
    return seq(id, "table").table(layer, kv_head, shape_);
  }

  // ---- append
  // ----------------------------------------------------------------------------------------------

  // Appends n tokens of one layer: k and v in the engine's layout [n, num_kv_heads, head_dim] (contiguous),
  // positions[n] strictly increasing and beyond everything appended to (seq, layer) so far.
  void append(SeqId id, int layer, std::span<const T> k, std::span<const T> v,
              std::span<const std::int32_t> positions) {
    Sequence& s = seq(id, "append");
    check_layer(layer);
    const std::size_t n = positions.size();
    const std::size_t H = static_cast<std::size_t>(shape_.num_kv_heads);
    const std::size_t D = static_cast<std::size_t>(shape_.head_dim);
    require(n > 0, "append: positions is empty (n_tokens must be > 0)");
    require(k.size() == n * H * D, "append: k has ", k.size(),
            " elements, expected n_tokens*num_kv_heads*head_dim = ", n, "*", H, "*", D, " = ", n * H * D);
    require(v.size() == n * H * D, "append: v has ", v.size(),
            " elements, expected n_tokens*num_kv_heads*head_dim = ", n, "*", H, "*", D, " = ", n * H * D);
    const std::int32_t next = s.next_pos[static_cast<std::size_t>(layer)];
    require(positions[0] >= next, "append: positions[0]=", positions[0], " must be >= ", next,
            " (positions of sequence ", id, " layer ", layer, " must increase; last appended was ", next - 1,
            ")");
    for (std::size_t i = 1; i < n; ++i)
      require(positions[i] > positions[i - 1], "append: positions[", i, "]=", positions[i],
              " must be > positions[", i - 1, "]=", positions[i - 1], " (strictly increasing)");
    require(positions[n - 1] < std::numeric_limits<std::int32_t>::max(), "append: positions[", n - 1,
            "]=", positions[n - 1], " is too large");

    // Dry run: pages this append needs and pages its evictions give back, all heads together.
    const std::int64_t q_earliest = positions[0];
    std::int64_t need = 0, reclaim = 0;
    for (std::size_t h = 0; h < H; ++h) {
      const HeadTable& t = s.table(layer, static_cast<int>(h), shape_);
      const HeadPolicy& p = policies_[layer * H + h];
      const EvictionPlan ev = plan_eviction(t, p, q_earliest);
      reclaim += ev.pages_freed;
      need += pages_needed(ev, n);
    }
    require<PoolExhausted>(need <= pool_.free_pages() + reclaim, "append(seq=", id, ", layer=", layer,
                           ", n_tokens=", n, "): needs ", need, " pages, pool has ", pool_.free_pages(),
                           " free (+", reclaim, " this append would evict) of ", pool_.num_pages());

    // Commit: evict first so the freed pages can serve this append, then allocate everything at once.
    for (std::size_t h = 0; h < H; ++h)
      evict(s.table(layer, static_cast<int>(h), shape_), policies_[layer * H + h], q_earliest, layer,
            static_cast<int>(h));
    std::vector<PageId> fresh;
    fresh.reserve(static_cast<std::size_t>(need));
    pool_.alloc(static_cast<std::int32_t>(need), fresh);
    std::size_t next_fresh = 0;
    for (std::size_t h = 0; h < H; ++h) {
      write_head(s.table(layer, static_cast<int>(h), shape_), layer, static_cast<int>(h), k.data() + h * D,
                 v.data() + h * D, H * D, positions, fresh, next_fresh);
    }
    s.next_pos[static_cast<std::size_t>(layer)] = positions[n - 1] + 1;
    s.query_floor[static_cast<std::size_t>(layer)] = positions[0];
  }

  // Declares that every query of (seq, layer) — or of every layer when layer == -1 — before
  // next_query_pos has run, so local heads can drop what those queries alone could see.
  void retire_queries(SeqId id, std::int32_t next_query_pos, int layer = -1) {
    Sequence& s = seq(id, "retire_queries");
    require(layer == -1 || (layer >= 0 && layer < shape_.num_layers), "retire_queries: layer=", layer,
            " out of range [0, ", shape_.num_layers, ") (or -1 for all layers)");
    const int l0 = layer == -1 ? 0 : layer;
    const int l1 = layer == -1 ? shape_.num_layers : layer + 1;
    for (int l = l0; l < l1; ++l) {
      const std::int32_t next = s.next_pos[static_cast<std::size_t>(l)];
      require(next_query_pos <= next, "retire_queries: next_query_pos=", next_query_pos,
              " is beyond the next position ", next, " of sequence ", id, " layer ", l,
              " (a query needs its own key appended first)");
    }
    for (int l = l0; l < l1; ++l) {
      auto& floor = s.query_floor[static_cast<std::size_t>(l)];
      floor = std::max(floor, next_query_pos);
    }
    for (int l = l0; l < l1; ++l)
      for (int h = 0; h < shape_.num_kv_heads; ++h)
        evict(s.table(l, h, shape_), policies_[static_cast<std::size_t>(l) * shape_.num_kv_heads + h],
              next_query_pos, l, h);
  }

  // ---- accounting
  // ------------------------------------------------------------------------------------------

  StoreStats stats() const {
    StoreStats st;
    st.num_sequences = num_sequences_.load(std::memory_order_relaxed);
    st.pages_total = pool_.num_pages();
    st.pages_in_use = pool_.used_pages();
    st.pages_global = pages_global_.load(std::memory_order_relaxed);
    st.pages_local = pages_local_.load(std::memory_order_relaxed);
    const auto pb = static_cast<std::int64_t>(pool_.page_bytes());
    st.bytes_in_use = st.pages_in_use * pb;
    st.bytes_global = st.pages_global * pb;
    st.bytes_local = st.pages_local * pb;
    return st;
  }

  SequenceStats sequence_stats(SeqId id) const {
    const Sequence& s = seq(id, "sequence_stats");
    SequenceStats st;
    const auto pb = static_cast<std::int64_t>(pool_.page_bytes());
    for (int l = 0; l < shape_.num_layers; ++l)
      for (int h = 0; h < shape_.num_kv_heads; ++h) {
        const HeadTable& t = s.table(l, h, shape_);
        const bool local = policies_[static_cast<std::size_t>(l) * shape_.num_kv_heads + h].is_local();
        (local ? st.pages_local : st.pages_global) += t.num_pages();
        (local ? st.tokens_local : st.tokens_global) += t.num_tokens();
      }
    st.bytes_global = st.pages_global * pb;
    st.bytes_local = st.pages_local * pb;
    return st;
  }

  // Pages one sequence holds after positions [0, num_tokens) were appended and the query at num_tokens - 1
  // has run alone (the steady state of decoding), by the page-granular retention rule.
  std::int64_t pages_per_sequence(std::int64_t num_tokens) const {
    require(num_tokens >= 0, "pages_per_sequence: num_tokens=", num_tokens, " must be >= 0");
    std::int64_t total = 0;
    for (const HeadPolicy& p : policies_) total += head_pages(p, num_tokens);
    return total;
  }

  // How many more sequences of num_tokens tokens fit in the free pages, at steady state.
  std::int64_t sequences_that_fit(std::int64_t num_tokens) const {
    const std::int64_t per = pages_per_sequence(num_tokens);
    return per == 0 ? std::numeric_limits<std::int64_t>::max() : pool_.free_pages() / per;
  }

  // Pages a single head holds for a sequence of num_tokens tokens at steady state.
  std::int64_t head_pages(const HeadPolicy& p, std::int64_t num_tokens) const {
    return steady_head_pages(p, cfg_.page_size, num_tokens, retention_);
  }

 private:
  struct Sequence {
    explicit Sequence(const ModelShape& sh)
        : tables(static_cast<std::size_t>(sh.num_layers) * sh.num_kv_heads),
          next_pos(static_cast<std::size_t>(sh.num_layers), 0),
          query_floor(static_cast<std::size_t>(sh.num_layers), 0) {}
    HeadTable& table(int l, int h, const ModelShape& sh) {
      return tables[static_cast<std::size_t>(l) * sh.num_kv_heads + h];
    }
    const HeadTable& table(int l, int h, const ModelShape& sh) const {
      return tables[static_cast<std::size_t>(l) * sh.num_kv_heads + h];
    }
    std::vector<HeadTable> tables;          // [layer][kv_head]
    std::vector<std::int32_t> next_pos;     // [layer]: last appended position + 1
    std::vector<std::int32_t> query_floor;  // [layer]: queries below this were declared done (may be evicted)
  };

  struct EvictionPlan {
    std::size_t pops = 0;          // entries leaving the front of body
    std::int64_t pages_freed = 0;  // pages whose last reference goes (refcount 1, no neighbour on the page)
    bool has_tail = false;         // the last entry of sink ++ body once the eviction is applied
    PageEntry tail;
  };

  static std::uint64_t next_uid() {
    static std::atomic<std::uint64_t> counter{0};
    return counter.fetch_add(1, std::memory_order_relaxed) + 1;
  }

  static ModelShape checked_shape(const ModelShape& s) {
    s.validate();
    require(s.dtype == dtype_of<T>(), "ModelShape.dtype=", dtype_name(s.dtype),
            " does not match the store's element type ", dtype_name(dtype_of<T>()));
    return s;
  }
  static HeadMap checked_map(HeadMap m, const ModelShape& s) {
    m.validate();
    m.validate_shape(s.num_layers, s.num_kv_heads);
    return m;
  }

  void check_layer(int layer) const {
    require(layer >= 0 && layer < shape_.num_layers, "layer=", layer, " out of range [0, ", shape_.num_layers,
            ")");
  }
  void check_head(int h) const {
    require(h >= 0 && h < shape_.num_kv_heads, "kv_head=", h, " out of range [0, ", shape_.num_kv_heads, ")");
  }
  Sequence& seq(SeqId id, const char* op) {
    auto it = seqs_.find(id);
    require<NotFound>(it != seqs_.end(), op, ": sequence id=", id,
                      " is not live (never created or already freed)");
    return it->second;
  }
  const Sequence& seq(SeqId id, const char* op) const {
    auto it = seqs_.find(id);
    require<NotFound>(it != seqs_.end(), op, ": sequence id=", id,
                      " is not live (never created or already freed)");
    return it->second;
  }

  static void reset_counters(HeadTable& t) {
    t.sink_pushed = t.body_popped = t.body_pushed = t.tail_version = 0;
    t.layout_version = 0;
  }

  bool is_local_head(int l, int h) const {
    return policies_[static_cast<std::size_t>(l) * shape_.num_kv_heads + h].is_local();
  }

  void count_alloc(int l, int h, std::int64_t n) {
    (is_local_head(l, h) ? pages_local_ : pages_global_).fetch_add(n, std::memory_order_relaxed);
  }
  void release_page(PageId p, int l, int h) {
    if (pool_.decref(p))
      (is_local_head(l, h) ? pages_local_ : pages_global_).fetch_sub(1, std::memory_order_relaxed);
  }

  // The entry new tokens continue from: the last of sink ++ body (sink entries are frozen, but their page's
  // free slots can still take new body entries).
  static const PageEntry* tail_entry(const HeadTable& t) {
    if (!t.body.empty()) return &t.body.back();
    if (!t.sink.empty()) return &t.sink.back();
    return nullptr;
  }

  // Which body entries leave under the retention rule for queries at >= q_earliest, without changing
  // anything.
  EvictionPlan plan_eviction(const HeadTable& t, const HeadPolicy& p, std::int64_t q_earliest) const {
    EvictionPlan ev;
    if (const PageEntry* tail = tail_entry(t)) {
      ev.has_tail = true;
      ev.tail = *tail;
    }
    if (!p.is_local()) return ev;
    const std::int64_t wb = retention_.window_begin(p, q_earliest);
    const std::int64_t se = retention_.sink_end(p);
    PageId kept_before =
        t.sink.empty() ? -1 : t.sink.back().page_id;  // page of the entry before body.front()
    while (ev.pops < t.body.size() && t.body[ev.pops].last_pos() < wb) {
      const PageEntry& e = t.body[ev.pops];
      if (e.pos0 < se) {
        kept_before = e.page_id;  // its sink part moves to the sink list, with the page reference
      } else {
        const bool next_on_page = ev.pops + 1 < t.body.size() && t.body[ev.pops + 1].page_id == e.page_id;
        if (kept_before != e.page_id && !next_on_page && pool_.refcount(e.page_id) == 1) ++ev.pages_freed;
      }
      ++ev.pops;
    }
    if (ev.pops == t.body.size() && ev.pops > 0) {  // the whole body leaves: the tail is what the sink keeps
      ev.has_tail = false;
      for (std::size_t i = ev.pops; i-- > 0;)
        if (t.body[i].pos0 < se) {
          ev.has_tail = true;
          ev.tail = sink_part(t.body[i], se);
          break;
        }
      if (!ev.has_tail && !t.sink.empty()) {
        ev.has_tail = true;
        ev.tail = t.sink.back();
      }
    }
    return ev;
  }

  static PageEntry sink_part(PageEntry e, std::int64_t se) {
    e.count = static_cast<std::int32_t>(std::min<std::int64_t>(e.count, se - e.pos0));
    return e;
  }

  void evict(HeadTable& t, const HeadPolicy& p, std::int64_t q_earliest, int l, int h) {
    if (!p.is_local()) return;
    const EvictionPlan ev = plan_eviction(t, p, q_earliest);
    const std::int64_t se = retention_.sink_end(p);
    for (std::size_t i = 0; i < ev.pops; ++i) {
      const PageEntry e = t.body.front();
      t.body.pop_front();
      ++t.body_popped;
      if (e.pos0 < se) {
        const PageEntry kept = sink_part(e, se);
        PageEntry* last = t.sink.empty() ? nullptr : &t.sink.back();
        if (last && last->page_id == kept.page_id && last->end_slot() == kept.first &&
            last->last_pos() + 1 == kept.pos0) {
          last->count += kept.count;  // contiguous with the previous sink entry: merge (rare: tiny windows)
          ++t.layout_version;
        } else {
          t.sink.push_back(kept);
          ++t.sink_pushed;
        }
      } else {
        const bool shared = (!t.sink.empty() && t.sink.back().page_id == e.page_id) ||
                            (!t.body.empty() && t.body.front().page_id == e.page_id);
        if (!shared) release_page(e.page_id, l, h);
      }
    }
  }

  // Pages needed to write n tokens once ev has been applied: a private copy of a shared tail page, then
  // whatever does not fit in the tail page's free slots.
  std::int64_t pages_needed(const EvictionPlan& ev, std::size_t n) const {
    const std::int64_t ps = cfg_.page_size;
    std::int64_t room = 0, cow = 0;
    if (ev.has_tail) {
      room = ps - ev.tail.end_slot();
      if (room > 0 && pool_.refcount(ev.tail.page_id) > 1) cow = 1;
    }
    const std::int64_t rest =
        static_cast<std::int64_t>(n) - std::min<std::int64_t>(room, static_cast<std::int64_t>(n));
    return cow + (rest + ps - 1) / ps;
  }

  // Makes the tail page private before writing into it: copy its used slots, repoint every entry on it.
  void copy_on_write_tail(HeadTable& t, int l, int h, std::vector<PageId>& fresh, std::size_t& next_fresh) {
    const PageEntry* tail = tail_entry(t);
    const PageId old = tail->page_id;
    if (pool_.refcount(old) <= 1) return;
    const PageId np = fresh[next_fresh++];
    count_alloc(l, h, 1);
    pool_.copy_page(np, old, tail->end_slot());
    for (auto it = t.body.rbegin(); it != t.body.rend() && it->page_id == old; ++it) it->page_id = np;
    if (t.body.empty() || t.body.front().page_id == np)
      for (auto it = t.sink.rbegin(); it != t.sink.rend() && it->page_id == old; ++it) it->page_id = np;
    release_page(old, l, h);
    ++t.layout_version;
  }

  void write_head(HeadTable& t, int l, int h, const T* k, const T* v, std::size_t src_stride,
                  std::span<const std::int32_t> pos, std::vector<PageId>& fresh, std::size_t& next_fresh) {
    const int ps = cfg_.page_size;
    const std::size_t D = static_cast<std::size_t>(shape_.head_dim);
    const std::size_t row_bytes = D * sizeof(T);
    const std::size_t n = pos.size();
    std::size_t i = 0;
    while (i < n) {
      // Where the next token goes: the tail page if it has room, else a fresh page.
      const PageEntry* tail = tail_entry(t);
      const bool new_page = tail == nullptr || tail->end_slot() >= ps;
      if (!new_page) {
        copy_on_write_tail(t, l, h, fresh, next_fresh);
        tail = tail_entry(t);
      }
      const PageId page = new_page ? fresh[next_fresh++] : tail->page_id;
      const std::int32_t slot = new_page ? 0 : tail->end_slot();
      if (new_page) count_alloc(l, h, 1);
      // The run: consecutive positions that fit in this page.
      std::size_t j = i + 1;
      while (j < n && slot + static_cast<std::int32_t>(j - i) < ps && pos[j] == pos[j - 1] + 1) ++j;
      const auto run = static_cast<std::int32_t>(j - i);
      // Only a body entry grows in place; sink entries are frozen, so a run after one starts a new entry.
      const bool extends = !new_page && !t.body.empty() && t.body.back().last_pos() + 1 == pos[i];
      if (extends) {
        t.body.back().count += run;
        ++t.tail_version;
      } else {
        t.body.push_back(PageEntry{page, slot, run, pos[i]});
        ++t.body_pushed;
      }
      if constexpr (!std::is_same_v<Alloc, NullAllocator>) {
        auto& a = pool_.allocator();
        a.copy_rows_from_host(pool_.k_ptr(page) + static_cast<std::size_t>(slot) * D, k + i * src_stride, run,
                              row_bytes, src_stride * sizeof(T));
        a.copy_rows_from_host(pool_.v_ptr(page) + static_cast<std::size_t>(slot) * D, v + i * src_stride, run,
                              row_bytes, src_stride * sizeof(T));
      }
      i = j;
    }
  }

  ModelShape shape_;
  HeadMap map_;
  StoreConfig cfg_;
  PagePool<T, Alloc> pool_;
  Retention retention_;
  std::vector<HeadPolicy> policies_;  // effective policy per [layer][kv_head]
  std::unordered_map<SeqId, Sequence> seqs_;
  SeqId next_id_ = 1;
  std::uint64_t uid_ = next_uid();
  std::atomic<std::int64_t> num_sequences_{0};
  std::atomic<std::int64_t> pages_global_{0};
  std::atomic<std::int64_t> pages_local_{0};
};

}  // namespace redknot
