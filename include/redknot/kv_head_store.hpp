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
#include <optional>
#include <span>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "redknot/allocator.hpp"
#include "redknot/append_plan.hpp"
#include "redknot/chunk_key.hpp"
#include "redknot/dtype.hpp"
#include "redknot/error.hpp"
#include "redknot/head_map.hpp"
#include "redknot/head_ops.hpp"
#include "redknot/head_table.hpp"
#include "redknot/limits.hpp"
#include "redknot/model_shape.hpp"
#include "redknot/page_pool.hpp"
#include "redknot/pool_sizing.hpp"
#include "redknot/rope.hpp"
#include "redknot/store_types.hpp"
#include "redknot/visibility.hpp"

namespace redknot {

// The appended token count of one call: at least 1, and int32-indexable (positions strictly increase within
// int32). The one check of n_tokens, for the store and for bindings that convert tensors before calling it.
inline void check_token_count(std::int64_t n, const char* op) {
  REDKNOT_CHECK(n > 0, InvalidArgument, op, ": positions is empty (n_tokens must be > 0)");
  REDKNOT_CHECK(n <= std::numeric_limits<std::int32_t>::max(), InvalidArgument, op, ": n_tokens=", n,
                " is too large (positions are strictly increasing int32)");
}

// One run of a head's rows for KVHeadStore::restore_sequence(): positions [pos0, pos0 + count) of (layer,
// kv_head), keys rotated for rope_pos0, rope_pos0 + 1, ...; k and v hold count * head_dim elements each,
// row-major.
template <StorageType T>
struct RestoreRun {
  int layer = 0;
  int kv_head = 0;
  std::int32_t pos0 = 0;
  std::int32_t count = 0;
  std::int32_t rope_pos0 = 0;
  std::span<const T> k;
  std::span<const T> v;
};

template <StorageType T, Allocator Alloc = HostAllocator>
class KVHeadStore {
 public:
  using value_type = T;
  using allocator_type = Alloc;

  KVHeadStore(const ModelShape& shape, HeadMap map, StoreConfig cfg, Alloc alloc = Alloc{})
      : KVHeadStore(shape, std::move(map), cfg, std::nullopt, std::move(alloc)) {}

  // `rope` is the model's RoPE as the engine applied it to K and Q: needed to splice a chunk at other
  // positions than it was computed at (kernels counter-rotate queries for such keys) and to relocate or
  // overwrite keys.
  KVHeadStore(const ModelShape& shape, HeadMap map, StoreConfig cfg, std::optional<RopeConfig> rope,
              Alloc alloc = Alloc{})
      : shape_(checked_shape(shape)),
        map_(checked_map(std::move(map), shape)),
        cfg_(cfg),
        rope_(std::move(rope)),
        pool_(cfg.num_pages, cfg.page_size, shape.head_dim, std::move(alloc)) {
    if (rope_) {
      require(rope_->head_dim == shape_.head_dim, "rope.head_dim=", rope_->head_dim,
              " does not match ModelShape.head_dim=", shape_.head_dim);
      rope_inv_freq_ = redknot::rope_inv_freq(*rope_);  // validates the rest
    }
    policies_.reserve(static_cast<std::size_t>(shape_.num_layers) * shape_.num_kv_heads);
    for (int l = 0; l < shape_.num_layers; ++l)
      for (int h = 0; h < shape_.num_kv_heads; ++h) policies_.push_back(map_.policy(l, h));
  }

  const ModelShape& shape() const { return shape_; }
  const HeadMap& head_map() const { return map_; }
  int page_size() const { return cfg_.page_size; }
  const PagePool<T, Alloc>& pool() const { return pool_; }
  PagePool<T, Alloc>& pool() { return pool_; }
  // Unique per store object in this process: plans bound to one store rebuild when handed another (sequence
  // ids restart at 1 in every store, so ids alone cannot tell two stores apart).
  std::uint64_t uid() const { return uid_; }

  // The model's RoPE (nullptr when the store was created without one) and its inverse frequencies.
  const RopeConfig* rope() const { return rope_ ? &*rope_ : nullptr; }
  std::span<const double> rope_inv_freq() const { return rope_inv_freq_; }
  // Whether some entry of the sequence holds keys rotated for other positions than where they sit (a chunk
  // spliced at another offset): kernels that cannot counter-rotate queries must refuse such sequences.
  bool has_relocated_keys(SeqId id) const { return seq(id, "has_relocated_keys").relocated_keys; }

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
        s.table(l, h, shape_).for_each_page_ref([&](PageId p) { release_page(p, l, h); });
    for (const ChunkKey& k : s.chunks_used) --chunks_.at(k).users;
    seqs_.erase(id);
    num_sequences_.fetch_sub(1, std::memory_order_relaxed);
  }

  // A new sequence sharing every page of the parent. The partial last page of a head is copied on the first
  // write by either side (copy-on-write), so the two sequences diverge without copying the shared prefix.
  SeqId fork(SeqId parent) {
    const Sequence& p = whole_seq(parent, "fork");
    Sequence child = p;
    for (auto& t : child.tables) {
      t.for_each_page_ref([&](PageId pg) { pool_.incref(pg); });
      reset_counters(t);
    }
    for (const ChunkKey& k : child.chunks_used) ++chunks_.at(k).users;
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
    const Sequence& s = layer_seq(id, "attention", layer);
    check_layer(layer);
    const std::int32_t lo = s.query_floor[static_cast<std::size_t>(layer)];
    const std::int32_t hi = s.next_pos[static_cast<std::size_t>(layer)];
    REDKNOT_CHECK(q_pos >= lo && q_pos < hi, InvalidArgument, "query position ", q_pos, " of sequence ", id,
                  " layer ", layer, " must be in [", lo, ", ", hi,
                  "): its own key must be appended and no later query retired");
  }

  const HeadTable& table(SeqId id, int layer, int kv_head) const {
    check_layer(layer);
    check_head(kv_head);
    return layer_seq(id, "table", layer).table(layer, kv_head, shape_);
  }
  // table() also for a layer a pipelined restore has not written yet: the entries are laid out, the rows they
  // point at are stale. For bookkeeping (accounting checks, snapshots), never for reading K/V.
  const HeadTable& table_layout(SeqId id, int layer, int kv_head) const {
    check_layer(layer);
    check_head(kv_head);
    return seq(id, "table_layout").table(layer, kv_head, shape_);
  }

  // ---- append
  // ----------------------------------------------------------------------------------------------

  // Appends n tokens of one layer: k and v in the engine's layout [n, num_kv_heads, head_dim] (contiguous),
  // positions[n] strictly increasing and beyond everything appended to (seq, layer) so far. A convenience for
  // reserve_append followed by the host mover.
  void append(SeqId id, int layer, std::span<const T> k, std::span<const T> v,
              std::span<const std::int32_t> positions) requires(Alloc::kHostAccessible ||
                                                                std::is_same_v<Alloc, NullAllocator>) {
    check_token_count(static_cast<std::int64_t>(positions.size()), "append");
    check_kv_sizes("append", k.size(), v.size(), positions.size());
    const std::int32_t offsets[2] = {0, static_cast<std::int32_t>(positions.size())};
    reserve(layer, std::span<const SeqId>(&id, 1), std::span<const std::int32_t>(offsets, 2), positions,
            "append", scratch_plan_);
    if constexpr (Alloc::kHostAccessible) move_host_rows(pool_, scratch_plan_, k.data(), v.data());
  }

  // Batched append of one layer (vLLM's reshape_and_cache over a batch): sequence seqs[i] takes the tokens
  // [token_offsets[i], token_offsets[i + 1]) of k, v ([total, num_kv_heads, head_dim]) and positions. Items
  // may be empty; a sequence may appear once. All-or-nothing across the batch.
  void append_batch(int layer, std::span<const SeqId> seqs, std::span<const std::int32_t> token_offsets,
                    std::span<const T> k, std::span<const T> v,
                    std::span<const std::int32_t> positions) requires(Alloc::kHostAccessible ||
                                                                      std::is_same_v<Alloc, NullAllocator>) {
    check_kv_sizes("append_batch", k.size(), v.size(), positions.size());
    reserve(layer, seqs, token_offsets, positions, "append_batch", scratch_plan_);
    if constexpr (Alloc::kHostAccessible) move_host_rows(pool_, scratch_plan_, k.data(), v.data());
  }

  // Decides where n tokens of (seq, layer) go and commits that decision: evictions, fresh pages,
  // copy-on-write of a shared tail page, and the head tables' new entries. Returns the plan a byte mover must
  // carry out before anything reads these tokens. Validates everything and checks capacity first: on an
  // exception nothing changed.
  AppendPlan reserve_append(SeqId id, int layer, std::span<const std::int32_t> positions) {
    check_token_count(static_cast<std::int64_t>(positions.size()), "append");
    const std::int32_t offsets[2] = {0, static_cast<std::int32_t>(positions.size())};
    AppendPlan plan;
    reserve(layer, std::span<const SeqId>(&id, 1), std::span<const std::int32_t>(offsets, 2), positions,
            "append", plan);
    return plan;
  }

  AppendPlan reserve_append_batch(int layer, std::span<const SeqId> seqs,
                                  std::span<const std::int32_t> token_offsets,
                                  std::span<const std::int32_t> positions) {
    AppendPlan plan;
    reserve(layer, seqs, token_offsets, positions, "append_batch", plan);
    return plan;
  }

  // Declares that every query of (seq, layer) — or of every layer when layer == -1 — before
  // next_query_pos has run, so local heads can drop what those queries alone could see.
  void retire_queries(SeqId id, std::int32_t next_query_pos, int layer = -1) {
    Sequence& s = layer_seq(id, "retire_queries", layer);
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
      for (int h = 0; h < shape_.num_kv_heads; ++h) evict_head(s.table(l, h, shape_), l, h, next_query_pos);
  }

  // ---- chunks (position-independent reuse)
  // ---------------------------------------------------------------------

  // The key of a chunk of `tokens` computed by the model `model_id` for this store's shape, dtype and head
  // map.
  ChunkKey chunk_key(std::string_view model_id, std::span<const std::int32_t> tokens) const {
    return make_chunk_key(model_id, shape_, map_, tokens);
  }

  // Turns sequence `seq` into the precomputed chunk `key`: the engine appended the chunk's K/V computed alone
  // at positions 0..n-1 (every layer, each layer in one append so no head dropped a key). The sequence leaves
  // the sequence registry (its id is no longer live) and its pages are held by the chunk until dropped.
  void register_chunk(const ChunkKey& key, SeqId seq_id) {
    Sequence& s = whole_seq(seq_id, "register_chunk");
    require(!chunks_.count(key), "register_chunk: chunk ", to_hex(key), " is already registered");
    const std::int32_t n = chunk_length(s, seq_id);
    ChunkRecord rec{std::move(s), n, 0, 0, ++chunk_clock_};
    seqs_.erase(seq_id);
    num_sequences_.fetch_sub(1, std::memory_order_relaxed);
    chunks_.emplace(key, std::move(rec));
  }

  bool has_chunk(const ChunkKey& key) const { return chunks_.count(key) != 0; }

  // Tokens of a registered chunk, counting the lookup as a hit or a miss (nullopt).
  std::optional<std::int32_t> lookup_chunk(const ChunkKey& key) {
    auto it = chunks_.find(key);
    if (it == chunks_.end()) {
      ++chunk_stats_.misses;
      return std::nullopt;
    }
    ++chunk_stats_.hits;
    it->second.last_used = ++chunk_clock_;
    return it->second.n;
  }

  // Makes chunk `key` part of sequence `dst` at positions [at, at + n) without copying K/V: every head of
  // every layer adopts the chunk's entries shifted by `at`, sharing its pages; the keys stay rotated for the
  // positions they were computed at (rope_pos0), which the kernels account for. Afterwards next_position is
  // at + n on every layer and query_floor is `first_query` (default at + n: no query inside the chunk runs;
  // pass the first position whose query will run, e.g. the first recomputed token). Local heads keep only
  // what queries at or after first_query can see, as retention does for appended keys. `at` must be at or
  // beyond next_position(dst, l) on every layer. Needs no free page.
  void splice(SeqId dst, const ChunkKey& key, std::int32_t at, std::int32_t first_query = -1) {
    Sequence& d = whole_seq(dst, "splice");
    auto it = chunks_.find(key);
    require<NotFound>(it != chunks_.end(), "splice: chunk ", to_hex(key), " is not registered");
    ChunkRecord& c = it->second;
    const std::int32_t end = check_splice_range(d, dst, c, at, first_query, "splice");
    const bool relocated = at != 0 || c.seq.relocated_keys;
    require(
        !relocated || rope_.has_value(), "splice: at=", at,
        " moves the chunk's keys away from the positions they were rotated for, and the store has no RoPE "
        "spec to account for it (construct the store with the model's RopeConfig)");
    if (first_query < 0) first_query = end;
    for (int l = 0; l < shape_.num_layers; ++l)
      for (int h = 0; h < shape_.num_kv_heads; ++h) {
        const HeadTable& src = c.seq.table(l, h, shape_);
        scratch_entries_.clear();
        for (std::size_t i = 0; i < src.size(); ++i) scratch_entries_.push_back(src[i]);
        HeadTable& t = d.table(l, h, shape_);
        head_ops::adopt(t, pool_, std::span<const PageEntry>(scratch_entries_), at);
        evict_head(t, l, h, first_query);
      }
    for (int l = 0; l < shape_.num_layers; ++l) {
      d.next_pos[static_cast<std::size_t>(l)] = end;
      d.query_floor[static_cast<std::size_t>(l)] = first_query;
    }
    d.chunks_used.push_back(key);
    d.relocated_keys = d.relocated_keys || relocated;
    ++c.users;
    ++c.splices;
    c.last_used = ++chunk_clock_;
    ++chunk_stats_.hits;
    ++chunk_stats_.splices;
  }

  // The classic path, for kernels that cannot counter-rotate queries: copies the chunk into sequence `dst` at
  // positions [at, at + n), rotating each stored key in fp32 from the position it was computed for to the
  // one it now sits at (V is copied as is), so the copies are ordinary entries (rope_pos0 == pos0). Arguments
  // as for splice(); needs pages like an append of n tokens to every layer, checked for all layers first.
  void relocate(SeqId dst, const ChunkKey& key, std::int32_t at,
                std::int32_t first_query = -1) requires(Alloc::kHostAccessible) {
    Sequence& d = whole_seq(dst, "relocate");
    const ChunkRecord& c = chunk(key);
    const std::int32_t end = check_splice_range(d, dst, c, at, first_query, "relocate");
    require(
        rope_.has_value() || (at == 0 && !c.seq.relocated_keys), "relocate: at=", at,
        " needs the store's RoPE spec to rotate the keys (construct the store with the model's RopeConfig)");
    // Capacity of all layers first, so that a failure changes nothing. Layer by layer, as the appends below
    // run: each must fit in what is free after the layers before it (plus what its own eviction frees). A
    // check of the sum alone let a layer whose appends come before a later layer's evictions fail after
    // earlier layers were committed, or make its append evict unused chunks, this one included (a
    // use-after-free of `c`; found while extending fuzz_c_api).
    const std::size_t H = static_cast<std::size_t>(shape_.num_kv_heads), n = static_cast<std::size_t>(c.n);
    std::int64_t free_now = pool_.free_pages();
    for (int l = 0; l < shape_.num_layers; ++l) {
      std::int64_t need = 0, reclaim = 0;
      for (int h = 0; h < shape_.num_kv_heads; ++h) {
        const auto ev =
            head_ops::plan_eviction(d.table(l, h, shape_), pool_, is_local_head(l, h), retained(l, h, at));
        reclaim += ev.pages_freed;
        need += head_ops::pages_needed(ev, pool_, cfg_.page_size, n);
      }
      require<PoolExhausted>(need <= free_now + reclaim, "relocate(chunk of ", c.n, " tokens): layer ", l,
                             " needs ", need, " pages, pool has ", free_now,
                             " free after the layers before (+", reclaim, " it would evict) of ",
                             pool_.num_pages());
      free_now += reclaim - need;
    }
    const std::size_t D = static_cast<std::size_t>(shape_.head_dim);
    std::vector<T> k(n * H * D), v(n * H * D);
    std::vector<float> row(D);
    std::vector<std::int32_t> positions(n);
    for (std::size_t i = 0; i < n; ++i) positions[i] = at + static_cast<std::int32_t>(i);
    for (int l = 0; l < shape_.num_layers; ++l) {
      for (std::size_t h = 0; h < H; ++h) {
        const HeadTable& t = c.seq.table(l, static_cast<int>(h), shape_);
        for (std::size_t e = 0; e < t.size(); ++e) {
          const PageEntry& pe = t[e];
          const std::int64_t delta = static_cast<std::int64_t>(at) + pe.rope_delta();
          for (std::int32_t i = 0; i < pe.count; ++i) {
            const std::size_t tok = static_cast<std::size_t>(pe.pos0 + i), off = (tok * H + h) * D;
            const T* kr = pool_.k_ptr(pe.page_id) + static_cast<std::size_t>(pe.first + i) * D;
            const T* vr = pool_.v_ptr(pe.page_id) + static_cast<std::size_t>(pe.first + i) * D;
            std::copy(vr, vr + D, v.begin() + static_cast<std::ptrdiff_t>(off));
            for (std::size_t x = 0; x < D; ++x) row[x] = to_float(kr[x]);
            if (delta != 0) rope_rotate(*rope_, rope_inv_freq_, row.data(), delta);
            for (std::size_t x = 0; x < D; ++x) k[off + x] = from_float<T>(row[x]);
          }
        }
      }
      append(dst, l, std::span<const T>(k), std::span<const T>(v), std::span<const std::int32_t>(positions));
    }
    retire_queries(dst, first_query < 0 ? end : first_query);
  }

  // Replaces the K/V of positions the sequence already holds on `layer` — the recomputed tokens of a spliced
  // chunk — for this sequence only: a page shared with the chunk or another sequence is copied first. k and v
  // are [n, num_kv_heads, head_dim] as the model computed them (keys rotated for the given positions); a key
  // that sits in an entry rotated for other positions (rope_delta != 0) is rotated by -delta in fp32 to match
  // it. positions strictly increase, each below next_position. A head that no longer holds a position (a
  // local head evicted it: no later query can see it) skips it; global-like heads must hold every one.
  // Validates and checks capacity (one page per shared page written) first: on an exception nothing changed.
  void overwrite(SeqId id, int layer, std::span<const T> k, std::span<const T> v,
                 std::span<const std::int32_t> positions) requires(Alloc::kHostAccessible) {
    Sequence& s = layer_seq(id, "overwrite", layer);
    check_layer(layer);
    check_token_count(static_cast<std::int64_t>(positions.size()), "overwrite");
    check_kv_sizes("overwrite", k.size(), v.size(), positions.size());
    const std::int32_t next = s.next_pos[static_cast<std::size_t>(layer)];
    for (std::size_t i = 0; i < positions.size(); ++i) {
      require(positions[i] >= 0 && positions[i] < next, "overwrite: positions[", i, "]=", positions[i],
              " is not held by sequence ", id, " layer ", layer, " (positions [0, ", next, "))");
      // REDKNOT_CHECK, not require(): require() evaluates its message arguments even when the condition
      // holds, and positions[i - 1] at i == 0 read positions[-1] (found by fuzz_c_api, UBSan).
      REDKNOT_CHECK(i == 0 || positions[i] > positions[i - 1], InvalidArgument, "overwrite: positions[", i,
                    "]=", positions[i], " must be > positions[", i - 1, "]=", positions[i - 1],
                    " (strictly increasing)");
    }
    const int H = shape_.num_kv_heads;
    // Where each (token, head) lives: the entry index in its table, or -1 when the head dropped it.
    std::vector<std::int64_t> where(positions.size() * static_cast<std::size_t>(H), -1);
    std::int64_t need = 0;
    for (int h = 0; h < H; ++h) {
      const HeadTable& t = s.table(layer, h, shape_);
      std::vector<PageId> shared;
      for (std::size_t i = 0; i < positions.size(); ++i) {
        const std::int64_t e = head_ops::find_entry(t, positions[i]);
        require(e >= 0 || is_local_head(layer, h), "overwrite: sequence ", id, " layer ", layer, " kv_head ",
                h, " does not hold position ", positions[i]);
        where[i * static_cast<std::size_t>(H) + static_cast<std::size_t>(h)] = e;
        if (e < 0) continue;
        const PageId p = t[static_cast<std::size_t>(e)].page_id;
        if (head_ops::page_is_shared(pool_, t, p) &&
            std::find(shared.begin(), shared.end(), p) == shared.end())
          shared.push_back(p);
      }
      need += static_cast<std::int64_t>(shared.size());
    }
    if (need > pool_.free_pages() && need <= pool_.free_pages() + unused_chunk_pages()) evict_chunks(need);
    require<PoolExhausted>(need <= pool_.free_pages(), "overwrite(sequence ", id, ", layer ", layer,
                           "): copying shared pages needs ", need, " pages, pool has ", pool_.free_pages(),
                           " free of ", pool_.num_pages());
    const std::size_t D = static_cast<std::size_t>(shape_.head_dim);
    std::vector<float> row(D);
    for (int h = 0; h < H; ++h) {
      HeadTable& t = s.table(layer, h, shape_);
      for (std::size_t i = 0; i < positions.size(); ++i) {
        const std::int64_t e = where[i * static_cast<std::size_t>(H) + static_cast<std::size_t>(h)];
        if (e < 0) continue;
        if (head_ops::page_is_shared(pool_, t, t[static_cast<std::size_t>(e)].page_id))
          head_ops::copy_page_for_table(t, pool_, t[static_cast<std::size_t>(e)].page_id,
                                        class_pages(layer, h));
        const PageEntry& pe = t[static_cast<std::size_t>(e)];
        const std::size_t slot = static_cast<std::size_t>(pe.first + (positions[i] - pe.pos0));
        const std::size_t src = (i * static_cast<std::size_t>(H) + static_cast<std::size_t>(h)) * D;
        T* kr = pool_.k_ptr(pe.page_id) + slot * D;
        T* vr = pool_.v_ptr(pe.page_id) + slot * D;
        std::copy(v.begin() + static_cast<std::ptrdiff_t>(src),
                  v.begin() + static_cast<std::ptrdiff_t>(src + D), vr);
        if (pe.rope_delta() == 0) {
          std::copy(k.begin() + static_cast<std::ptrdiff_t>(src),
                    k.begin() + static_cast<std::ptrdiff_t>(src + D), kr);
          continue;
        }
        for (std::size_t x = 0; x < D; ++x) row[x] = to_float(k[src + x]);
        rope_rotate(*rope_, rope_inv_freq_, row.data(), -static_cast<std::int64_t>(pe.rope_delta()));
        for (std::size_t x = 0; x < D; ++x) kr[x] = from_float<T>(row[x]);
      }
    }
  }

  // The K/V rows of positions the sequence holds on `layer`, as fp32 [n, num_kv_heads, head_dim], keys
  // rotated for the positions they sit at (what the model would compute there without context): what
  // kv_deviation() compares with freshly computed K/V. Rows of a head that no longer holds a position are
  // NaN.
  void read_rows(SeqId id, int layer, std::span<const std::int32_t> positions, std::span<float> k,
                 std::span<float> v) const requires(Alloc::kHostAccessible) {
    const Sequence& s = layer_seq(id, "read_rows", layer);
    check_layer(layer);
    const std::size_t H = static_cast<std::size_t>(shape_.num_kv_heads),
                      D = static_cast<std::size_t>(shape_.head_dim);
    require(k.size() == positions.size() * H * D && v.size() == k.size(), "read_rows: k and v must hold n*",
            "num_kv_heads*head_dim = ", positions.size() * H * D, " values (got ", k.size(), ", ", v.size(),
            ")");
    for (std::size_t h = 0; h < H; ++h) {
      const HeadTable& t = s.table(layer, static_cast<int>(h), shape_);
      for (std::size_t i = 0; i < positions.size(); ++i) {
        float* kd = k.data() + (i * H + h) * D;
        float* vd = v.data() + (i * H + h) * D;
        const std::int64_t e = head_ops::find_entry(t, positions[i]);
        if (e < 0) {
          std::fill(kd, kd + D, std::numeric_limits<float>::quiet_NaN());
          std::fill(vd, vd + D, std::numeric_limits<float>::quiet_NaN());
          continue;
        }
        const PageEntry& pe = t[static_cast<std::size_t>(e)];
        const std::size_t slot = static_cast<std::size_t>(pe.first + (positions[i] - pe.pos0));
        const T* kr = pool_.k_ptr(pe.page_id) + slot * D;
        const T* vr = pool_.v_ptr(pe.page_id) + slot * D;
        for (std::size_t x = 0; x < D; ++x) kd[x] = to_float(kr[x]), vd[x] = to_float(vr[x]);
        if (pe.rope_delta() != 0) rope_rotate(*rope_, rope_inv_freq_, kd, pe.rope_delta());
      }
    }
  }

  // A new sequence whose head tables hold exactly `runs`, with next_position and query_floor per layer as
  // given: the swap-in of a preempted sequence (tiers.hpp), whose local heads may hold a sink and a window
  // with a gap between them and whose keys may be rotated for other positions than where they sit (a spliced
  // chunk's; the store then needs its RoPE spec). The runs of one head may come in any order and must not
  // overlap; each lies in [0, next_pos[layer]); query_floor[l] <= next_pos[l]. Rows are copied into fresh
  // pages, packed head by head in position order (a run starts a new entry), so nothing is shared with chunks
  // or other sequences. No retention is applied: the runs are what the heads keep. Validates everything and
  // checks capacity first (unused chunks give their pages back, as for appends): on an exception nothing
  // changed.
  SeqId restore_sequence(std::span<const RestoreRun<T>> runs, std::span<const std::int32_t> next_pos,
                         std::span<const std::int32_t> query_floor)
      // Host pages, or bookkeeping only (a shadow store): a device store has no host path to write its rows.
      requires(Alloc::kHostAccessible || std::is_same_v<Alloc, NullAllocator>) {
    return restore(runs, next_pos, query_floor, false, "restore_sequence");
  }

  // ---- pipelined restore: the layout first, each layer's rows when they arrive
  // A restore_sequence() whose rows come later, layer by layer, so that an engine can run layer l of the
  // restored sequence's next step while layer l + 1's rows are still being read. `layout` is the runs
  // restore_sequence would take, without rows (k and v empty). The new sequence has its next positions and
  // query floors, and every page its rows need is taken now (PoolExhausted up front, nothing changed, as for
  // restore_sequence); every layer is pending until write_restored_layer() fills it. A pending layer cannot
  // be read or changed (table, attention, append, overwrite, read_rows, retire_queries on it throw), and
  // operations on the whole sequence (fork, splice, register_chunk, relocate) wait for the last layer.
  // free_sequence() abandons a restore at any point.
  SeqId begin_restore(
      std::span<const RestoreRun<T>> layout, std::span<const std::int32_t> next_pos,
      std::span<const std::int32_t> query_floor) requires(Alloc::kHostAccessible ||
                                                          std::is_same_v<Alloc, NullAllocator>) {
    return restore(layout, next_pos, query_floor, true, "begin_restore");
  }

  // Writes the rows of pending `layer` of a sequence from begin_restore(): `runs` must be exactly that
  // layer's runs of the layout (same heads, positions, counts and rotations, any order; k and v count *
  // head_dim each). Validates everything before writing: on an exception the layer stays pending and nothing
  // changed.
  void write_restored_layer(SeqId id, int layer, std::span<const RestoreRun<T>> runs) requires(
      Alloc::kHostAccessible || std::is_same_v<Alloc, NullAllocator>) {
    Sequence& s = seq(id, "write_restored_layer");
    check_layer(layer);
    require(s.pending_layers > 0 && s.pending[static_cast<std::size_t>(layer)] != 0,
            "write_restored_layer: layer ", layer, " of sequence id=", id,
            " is not waiting for rows (not restored with begin_restore, or already written)");
    const std::size_t H = static_cast<std::size_t>(shape_.num_kv_heads),
                      D = static_cast<std::size_t>(shape_.head_dim);
    std::vector<std::vector<std::size_t>> per_head(H);
    for (std::size_t i = 0; i < runs.size(); ++i) {
      const RestoreRun<T>& r = runs[i];
      require(r.layer == layer, "write_restored_layer: run ", i, " is for layer ", r.layer, ", not ", layer);
      check_head(r.kv_head);
      require(r.count >= 1 && r.k.size() == static_cast<std::size_t>(r.count) * D && r.v.size() == r.k.size(),
              "write_restored_layer: run ", i, " (kv_head ", r.kv_head, ") has count=", r.count, ", ",
              r.k.size(), " K and ", r.v.size(), " V elements (need count >= 1 and count*head_dim each)");
      per_head[static_cast<std::size_t>(r.kv_head)].push_back(i);
    }
    // Each head's entries must be exactly its runs in position order (begin_restore started an entry per run
    // and per page): walk them once to check, once to copy.
    for (const bool write : {false, true})
      for (std::size_t h = 0; h < H; ++h) {
        auto& v = per_head[h];
        if (!write)
          std::sort(v.begin(), v.end(),
                    [&](std::size_t a, std::size_t b) { return runs[a].pos0 < runs[b].pos0; });
        const HeadTable& t = s.table(layer, static_cast<int>(h), shape_);
        std::size_t e = 0;
        for (const std::size_t ri : v) {
          const RestoreRun<T>& r = runs[ri];
          for (std::int32_t done = 0; done < r.count;) {
            const bool match = e < t.size() && t[e].pos0 == r.pos0 + done &&
                               t[e].rope_pos0 == r.rope_pos0 + done && t[e].count <= r.count - done;
            require(match, "write_restored_layer: run ", ri, " (layer ", layer, ", kv_head ", h,
                    ", positions [", r.pos0, ", ", static_cast<std::int64_t>(r.pos0) + r.count,
                    ") rotated for ", r.rope_pos0, ") is not a run of the layout begin_restore was given");
            if (write)
              if constexpr (Alloc::kHostAccessible) {
                const PageEntry& pe = t[e];
                const std::size_t src = static_cast<std::size_t>(done) * D, len = pe.count * D;
                const std::size_t dst = static_cast<std::size_t>(pe.first) * D;
                std::copy_n(r.k.begin() + static_cast<std::ptrdiff_t>(src), len,
                            pool_.k_ptr(pe.page_id) + dst);
                std::copy_n(r.v.begin() + static_cast<std::ptrdiff_t>(src), len,
                            pool_.v_ptr(pe.page_id) + dst);
              }
            done += t[e].count;
            ++e;
          }
        }
        require(e == t.size(), "write_restored_layer: layer ", layer, " kv_head ", h, " has ", t.size() - e,
                " entries of the layout that no run covers");
      }
    s.pending[static_cast<std::size_t>(layer)] = 0;
    if (--s.pending_layers == 0) s.pending.clear();
  }

  // Whether a layer of the sequence still waits for write_restored_layer().
  bool layer_pending(SeqId id, int layer) const {
    check_layer(layer);
    const Sequence& s = seq(id, "layer_pending");
    return s.pending_layers > 0 && s.pending[static_cast<std::size_t>(layer)] != 0;
  }
  int pending_layers(SeqId id) const { return seq(id, "pending_layers").pending_layers; }

 private:
  SeqId restore(std::span<const RestoreRun<T>> runs, std::span<const std::int32_t> next_pos,
                std::span<const std::int32_t> query_floor, bool rows_later, const char* op) {
    const std::size_t L = static_cast<std::size_t>(shape_.num_layers),
                      H = static_cast<std::size_t>(shape_.num_kv_heads),
                      D = static_cast<std::size_t>(shape_.head_dim);
    require(next_pos.size() == L && query_floor.size() == L, op, ": next_pos and query_floor ",
            "need one value per layer (", L, "), got ", next_pos.size(), " and ", query_floor.size());
    for (std::size_t l = 0; l < L; ++l)
      require(query_floor[l] >= 0 && query_floor[l] <= next_pos[l], op, ": layer ", l,
              " has query_floor=", query_floor[l], " and next_pos=", next_pos[l],
              " (need 0 <= query_floor <= next_pos)");
    std::vector<std::vector<std::size_t>> per_head(L * H);  // run indices of each (layer, kv_head)
    bool relocated = false;
    for (std::size_t i = 0; i < runs.size(); ++i) {
      const RestoreRun<T>& r = runs[i];
      check_layer(r.layer);
      check_head(r.kv_head);
      const std::int64_t end = static_cast<std::int64_t>(r.pos0) + r.count;
      const std::int64_t rope_end = static_cast<std::int64_t>(r.rope_pos0) + r.count;
      require(r.count >= 1 && r.pos0 >= 0 && end <= next_pos[static_cast<std::size_t>(r.layer)] &&
                  r.rope_pos0 >= 0 && rope_end <= std::numeric_limits<std::int32_t>::max(),
              op, ": run ", i, " (layer ", r.layer, ", kv_head ", r.kv_head, ") holds positions [", r.pos0,
              ", ", end, ") rotated for [", r.rope_pos0, ", ", rope_end,
              "): need count >= 1 and positions in [0, next_pos=",
              next_pos[static_cast<std::size_t>(r.layer)], ")");
      const std::size_t want = rows_later ? 0 : static_cast<std::size_t>(r.count) * D;
      require(r.k.size() == want && r.v.size() == want, op, ": run ", i, " has ", r.k.size(), " K and ",
              r.v.size(), " V elements, expected ",
              rows_later ? "none (rows come later)" : "count*head_dim = ", want);
      relocated = relocated || r.rope_pos0 != r.pos0;
      per_head[static_cast<std::size_t>(r.layer) * H + static_cast<std::size_t>(r.kv_head)].push_back(i);
    }
    require(!relocated || rope_.has_value(), op, ": some run holds keys rotated for other ",
            "positions than where they sit, and the store has no RoPE spec to account for it");
    std::int64_t need = 0;
    for (std::size_t i = 0; i < per_head.size(); ++i) {
      auto& v = per_head[i];
      std::sort(v.begin(), v.end(),
                [&](std::size_t a, std::size_t b) { return runs[a].pos0 < runs[b].pos0; });
      std::int64_t rows = v.empty() ? 0 : runs[v[0]].count;
      for (std::size_t j = 1; j < v.size(); ++j) {
        const RestoreRun<T>& prev = runs[v[j - 1]];
        require(runs[v[j]].pos0 >= static_cast<std::int64_t>(prev.pos0) + prev.count, op, ": runs ", v[j - 1],
                " and ", v[j], " of layer ", i / H, " kv_head ", i % H, " overlap");
        rows += runs[v[j]].count;
      }
      need += (rows + cfg_.page_size - 1) / cfg_.page_size;
    }
    if (need > pool_.free_pages() && need <= pool_.free_pages() + unused_chunk_pages()) evict_chunks(need);
    require<PoolExhausted>(need <= pool_.free_pages(), op, ": needs ", need, " pages, pool has ",
                           pool_.free_pages(), " free of ", pool_.num_pages());
    // Commit: rows fill each head's pages in position order; a run starts a new entry, a page a new one too.
    const SeqId id = create_sequence();
    Sequence& s = seqs_.at(id);
    for (std::size_t i = 0; i < per_head.size(); ++i) {
      const int l = static_cast<int>(i / H), h = static_cast<int>(i % H);
      HeadTable& t = s.table(l, h, shape_);
      for (const std::size_t ri : per_head[i]) {
        const RestoreRun<T>& r = runs[ri];
        for (std::int32_t done = 0; done < r.count;) {
          const PageEntry* tail = head_ops::tail_entry(t);
          const bool new_page = tail == nullptr || tail->end_slot() >= cfg_.page_size;
          const PageId page = new_page ? head_ops::take_page(pool_, class_pages(l, h)) : tail->page_id;
          const std::int32_t slot = new_page ? 0 : tail->end_slot();
          const std::int32_t n = std::min(r.count - done, cfg_.page_size - slot);
          const auto src = static_cast<std::ptrdiff_t>(static_cast<std::size_t>(done) * D);
          const auto len = static_cast<std::ptrdiff_t>(static_cast<std::size_t>(n) * D);
          if constexpr (Alloc::kHostAccessible) {  // else bookkeeping only (NullAllocator)
            if (!rows_later) {
              std::copy(r.k.begin() + src, r.k.begin() + src + len,
                        pool_.k_ptr(page) + static_cast<std::size_t>(slot) * D);
              std::copy(r.v.begin() + src, r.v.begin() + src + len,
                        pool_.v_ptr(page) + static_cast<std::size_t>(slot) * D);
            }
          }
          t.body.push_back(PageEntry{page, static_cast<std::int16_t>(slot), static_cast<std::int16_t>(n),
                                     r.pos0 + done, r.rope_pos0 + done});
          ++t.body_pushed;
          done += n;
        }
      }
    }
    std::copy(next_pos.begin(), next_pos.end(), s.next_pos.begin());
    std::copy(query_floor.begin(), query_floor.end(), s.query_floor.begin());
    s.relocated_keys = relocated;
    if (rows_later) {
      s.pending.assign(L, 1);
      s.pending_layers = static_cast<int>(L);
    }
    return id;
  }

 public:
  // Drops the registry's references to a chunk that no live sequence uses (false if the key is unknown).
  // A chunk in use cannot be dropped (InvalidArgument): its pages are shared with the sequences using it.
  bool drop_chunk(const ChunkKey& key) {
    auto it = chunks_.find(key);
    if (it == chunks_.end()) return false;
    require(it->second.users == 0, "drop_chunk: chunk ", to_hex(key), " is spliced into ", it->second.users,
            " live sequence(s)");
    release_chunk(it);
    return true;
  }

  // Drops unused chunks, least recently used first, until `pages` pages are free or none is left to drop.
  // Returns the number of pages that became free.
  std::int64_t evict_chunks(std::int64_t pages) {
    const std::int64_t free0 = pool_.free_pages();
    while (pool_.free_pages() < pages) {
      auto victim = chunks_.end();
      for (auto it = chunks_.begin(); it != chunks_.end(); ++it)
        if (it->second.users == 0 &&
            (victim == chunks_.end() || it->second.last_used < victim->second.last_used))
          victim = it;
      if (victim == chunks_.end()) break;
      release_chunk(victim);
      ++chunk_stats_.evictions;
    }
    return pool_.free_pages() - free0;
  }

  ChunkStats chunk_stats() const {
    ChunkStats st = chunk_stats_;
    st.chunks = static_cast<std::int64_t>(chunks_.size());
    for (const auto& [k, c] : chunks_) {
      st.chunks_in_use += c.users > 0 ? 1 : 0;
      for (const HeadTable& t : c.seq.tables) st.pages_held += t.num_pages();
    }
    return st;
  }

  std::vector<ChunkKey> chunk_keys() const {
    std::vector<ChunkKey> keys;
    for (const auto& [k, c] : chunks_) keys.push_back(k);
    std::sort(keys.begin(), keys.end());
    return keys;
  }
  std::int32_t chunk_tokens(const ChunkKey& key) const { return chunk(key).n; }
  ChunkInfo chunk_info(const ChunkKey& key) const {
    const ChunkRecord& c = chunk(key);
    return ChunkInfo{c.n, c.users, c.splices, c.last_used};
  }
  const HeadTable& chunk_table(const ChunkKey& key, int layer, int kv_head) const {
    check_layer(layer);
    check_head(kv_head);
    return chunk(key).seq.table(layer, kv_head, shape_);
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
    return pages_per_sequence(num_tokens, "pages_per_sequence");
  }

  // How many more sequences of num_tokens tokens fit in the free pages, at steady state.
  std::int64_t sequences_that_fit(std::int64_t num_tokens) const {
    const std::int64_t per = pages_per_sequence(num_tokens, "sequences_that_fit");
    return per == 0 ? std::numeric_limits<std::int64_t>::max() : pool_.free_pages() / per;
  }

  // Pages a single head holds for a sequence of num_tokens tokens at steady state.
  std::int64_t head_pages(const HeadPolicy& p, std::int64_t num_tokens) const {
    return steady_head_pages(p, cfg_.page_size, num_tokens);
  }

 private:
  std::int64_t pages_per_sequence(std::int64_t num_tokens, const char* op) const {
    require(num_tokens >= 0 && num_tokens <= kMaxTokens, op, ": num_tokens=", num_tokens, " must be in [0, ",
            kMaxTokens, "] (positions are int32)");
    std::int64_t total = 0;
    for (const HeadPolicy& p : policies_) total += head_pages(p, num_tokens);
    return total;
  }

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
    std::vector<ChunkKey> chunks_used;      // chunks spliced in (once per splice)
    bool relocated_keys = false;            // some entry has rope_pos0 != pos0
    // Layers whose rows a pipelined restore has not written yet (begin_restore): their tables are laid out
    // but their pages hold stale bytes, so nothing may read or change them. Empty when none is pending.
    std::vector<std::uint8_t> pending;  // [layer]
    int pending_layers = 0;
  };

  struct ChunkRecord {
    Sequence seq;  // the chunk's tables: positions 0..n-1 on every head
    std::int32_t n = 0;
    std::int64_t users = 0;    // live sequences it is spliced into (counted once per splice)
    std::int64_t splices = 0;  // splices ever made of it
    std::uint64_t last_used = 0;
  };

  const ChunkRecord& chunk(const ChunkKey& key) const {
    auto it = chunks_.find(key);
    require<NotFound>(it != chunks_.end(), "chunk ", to_hex(key), " is not registered");
    return it->second;
  }

  // A chunk holds every position 0..n-1 on every head of every layer, and was never queried (so nothing of
  // it could have been evicted).
  std::int32_t chunk_length(const Sequence& s, SeqId id) const {
    const std::int32_t n = s.next_pos[0];
    require(n > 0, "register_chunk: sequence ", id, " holds no tokens");
    require(s.chunks_used.empty(), "register_chunk: sequence ", id, " has chunks spliced into it");
    for (int l = 0; l < shape_.num_layers; ++l) {
      require(s.next_pos[static_cast<std::size_t>(l)] == n, "register_chunk: sequence ", id, " layer ", l,
              " holds positions up to ", s.next_pos[static_cast<std::size_t>(l)] - 1, ", layer 0 up to ",
              n - 1, " (a chunk has the same tokens on every layer)");
      for (int h = 0; h < shape_.num_kv_heads; ++h) {
        const HeadTable& t = s.table(l, h, shape_);
        require(!t.empty() && t[0].pos0 == 0 && t.num_tokens() == n, "register_chunk: sequence ", id,
                " layer ", l, " kv_head ", h, " does not hold every position [0, ", n,
                ") (append a chunk alone from position 0, each layer in one call, so no key is evicted)");
      }
    }
    return n;
  }

  // Checks that chunk c fits into sequence d at [at, at + n) after everything d holds, and that first_query
  // (-1: at + n) is in [at, at + n]. Returns at + n.
  std::int32_t check_splice_range(const Sequence& d, SeqId dst, const ChunkRecord& c, std::int32_t at,
                                  std::int32_t first_query, const char* op) const {
    const std::int64_t end = static_cast<std::int64_t>(at) + c.n;
    require(at >= 0 && end <= std::numeric_limits<std::int32_t>::max(), op, ": at=", at, " with a chunk of ",
            c.n, " tokens ends beyond the largest position ", std::numeric_limits<std::int32_t>::max() - 1);
    for (int l = 0; l < shape_.num_layers; ++l) {
      const std::int32_t next = d.next_pos[static_cast<std::size_t>(l)];
      require(at >= next, op, ": at=", at, " overlaps sequence ", dst, " layer ", l,
              ", which holds positions up to ", next - 1, " (at must be >= ", next, ")");
    }
    require(first_query == -1 || (first_query >= at && first_query <= end), op, ": first_query=", first_query,
            " must be in [at, at + n] = [", at, ", ", end, "] (or -1 for at + n)");
    return static_cast<std::int32_t>(end);
  }

  // Pages that dropping every unused chunk would free (pages referenced once, by the chunk alone).
  std::int64_t unused_chunk_pages() const {
    std::int64_t n = 0;
    for (const auto& [k, c] : chunks_)
      if (c.users == 0)
        for (const HeadTable& t : c.seq.tables)
          t.for_each_page_ref([&](PageId p) { n += pool_.refcount(p) == 1; });
    return n;
  }

  template <class It>
  void release_chunk(It it) {
    for (int l = 0; l < shape_.num_layers; ++l)
      for (int h = 0; h < shape_.num_kv_heads; ++h)
        it->second.seq.table(l, h, shape_).for_each_page_ref([&](PageId p) { release_page(p, l, h); });
    chunks_.erase(it);
  }

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

  void check_layer(int layer) const { shape_.check_layer(layer); }
  void check_head(int h) const { shape_.check_kv_head(h); }
  Sequence& seq(SeqId id, const char* op) {
    auto it = seqs_.find(id);
    REDKNOT_CHECK(it != seqs_.end(), NotFound, op, ": sequence id=", id,
                  " is not live (never created or already freed)");
    return it->second;
  }
  const Sequence& seq(SeqId id, const char* op) const {
    auto it = seqs_.find(id);
    REDKNOT_CHECK(it != seqs_.end(), NotFound, op, ": sequence id=", id,
                  " is not live (never created or already freed)");
    return it->second;
  }
  // The sequence for an operation on all of its layers: refused while a pipelined restore still has layers
  // to write (their pages hold stale bytes).
  Sequence& whole_seq(SeqId id, const char* op) {
    return const_cast<Sequence&>(std::as_const(*this).whole_seq(id, op));
  }
  const Sequence& whole_seq(SeqId id, const char* op) const {
    const Sequence& s = seq(id, op);
    REDKNOT_CHECK(s.pending_layers == 0, InvalidArgument, op, ": sequence id=", id, " is being restored (",
                  s.pending_layers, " layer(s) not written yet): finish the restore or free the sequence");
    return s;
  }
  // The sequence for an operation on one layer (or every layer when layer == -1): refused while that layer
  // waits for its rows. An out-of-range layer passes here; the operation's own check names it.
  Sequence& layer_seq(SeqId id, const char* op, int layer) {
    return const_cast<Sequence&>(std::as_const(*this).layer_seq(id, op, layer));
  }
  const Sequence& layer_seq(SeqId id, const char* op, int layer) const {
    const Sequence& s = seq(id, op);
    if (s.pending_layers == 0) return s;
    if (layer == -1) return whole_seq(id, op);
    REDKNOT_CHECK(layer < 0 || layer >= shape_.num_layers || s.pending[static_cast<std::size_t>(layer)] == 0,
                  InvalidArgument, op, ": layer ", layer, " of sequence id=", id,
                  " is being restored and its rows are not written yet (write_restored_layer first)");
    return s;
  }

  static void reset_counters(HeadTable& t) {
    t.sink_pushed = t.body_popped = t.body_pushed = t.tail_version = 0;
    t.layout_version = 0;
  }

  bool is_local_head(int l, int h) const {
    return policies_[static_cast<std::size_t>(l) * shape_.num_kv_heads + h].is_local();
  }
  head_ops::PageCounter& class_pages(int l, int h) {
    return is_local_head(l, h) ? pages_local_ : pages_global_;
  }
  head_ops::Retained retained(int l, int h, std::int64_t q_earliest) const {
    const HeadPolicy& p = policies_[static_cast<std::size_t>(l) * shape_.num_kv_heads + h];
    return {retained_sink_end(p), retained_window_begin(p, q_earliest)};
  }
  void release_page(PageId p, int l, int h) { head_ops::release_page(pool_, p, class_pages(l, h)); }
  void evict_head(HeadTable& t, int l, int h, std::int64_t q_earliest) {
    head_ops::evict(t, pool_, is_local_head(l, h), retained(l, h, q_earliest), class_pages(l, h));
  }

  void check_kv_sizes(const char* op, std::size_t k, std::size_t v, std::size_t n) const {
    const std::size_t H = static_cast<std::size_t>(shape_.num_kv_heads);
    const std::size_t D = static_cast<std::size_t>(shape_.head_dim);
    REDKNOT_CHECK(k == n * H * D, InvalidArgument, op, ": k has ", k,
                  " elements, expected n_tokens*num_kv_heads*head_dim = ", n, "*", H, "*", D, " = ",
                  n * H * D);
    REDKNOT_CHECK(v == n * H * D, InvalidArgument, op, ": v has ", v,
                  " elements, expected n_tokens*num_kv_heads*head_dim = ", n, "*", H, "*", D, " = ",
                  n * H * D);
  }

  // Validate, dry-run, commit (see reserve_append). Evictions of every item run before any page is taken, so
  // pages one item's eviction frees can serve another item; the capacity check counts only pages this call
  // alone would free, so it never admits more than the commit can allocate.
  // The plan's vectors are reused (append keeps one scratch plan, so a decode step allocates nothing).
  void reserve(int layer, std::span<const SeqId> seqs, std::span<const std::int32_t> offsets,
               std::span<const std::int32_t> positions, const char* op, AppendPlan& plan) {
    const std::size_t B = seqs.size();
    const std::size_t H = static_cast<std::size_t>(shape_.num_kv_heads);
    REDKNOT_CHECK(offsets.size() == B + 1, InvalidArgument, op, ": token_offsets has ", offsets.size(),
                  " entries, expected one per sequence + 1 (", B + 1, ")");
    REDKNOT_CHECK(offsets[0] == 0, InvalidArgument, op, ": token_offsets[0]=", offsets[0], " must be 0");
    for (std::size_t i = 0; i < B; ++i)
      REDKNOT_CHECK(offsets[i + 1] >= offsets[i], InvalidArgument, op, ": token_offsets[", i + 1,
                    "]=", offsets[i + 1], " must be >= token_offsets[", i, "]=", offsets[i]);
    REDKNOT_CHECK(static_cast<std::size_t>(offsets[B]) == positions.size(), InvalidArgument, op,
                  ": token_offsets[", B, "]=", offsets[B], " must equal the number of positions (",
                  positions.size(), ")");
    std::vector<Sequence*>& items = scratch_items_;
    items.resize(B);
    for (std::size_t i = 0; i < B; ++i) items[i] = &layer_seq(seqs[i], op, layer);
    check_layer(layer);  // after the lookups: a dead sequence is NotFound whatever else is wrong
    if (B > 1) {         // each sequence once: sorted ids have no equal neighbours
      scratch_ids_.assign(seqs.begin(), seqs.end());
      std::sort(scratch_ids_.begin(), scratch_ids_.end());
      const auto dup = std::adjacent_find(scratch_ids_.begin(), scratch_ids_.end());
      REDKNOT_CHECK(dup == scratch_ids_.end(), InvalidArgument, op, ": sequence id=", *dup,
                    " appears twice in the batch");
    }
    for (std::size_t i = 0; i < B; ++i) {
      const auto pos = positions.subspan(static_cast<std::size_t>(offsets[i]),
                                         static_cast<std::size_t>(offsets[i + 1] - offsets[i]));
      if (pos.empty()) continue;
      const std::int32_t next = items[i]->next_pos[static_cast<std::size_t>(layer)];
      REDKNOT_CHECK(pos[0] >= next, InvalidArgument, op, ": positions[", offsets[i], "]=", pos[0],
                    " must be >= ", next, " (positions of sequence ", seqs[i], " layer ", layer,
                    " must increase; last appended was ", next - 1, ")");
      for (std::size_t j = 1; j < pos.size(); ++j)
        REDKNOT_CHECK(pos[j] > pos[j - 1], InvalidArgument, op, ": positions[",
                      offsets[i] + static_cast<std::int64_t>(j), "]=", pos[j], " must be > positions[",
                      offsets[i] + static_cast<std::int64_t>(j) - 1, "]=", pos[j - 1],
                      " (strictly increasing)");
      REDKNOT_CHECK(pos.back() < std::numeric_limits<std::int32_t>::max(), InvalidArgument, op,
                    ": positions[", offsets[i + 1] - 1, "]=", pos.back(),
                    " is too large (the largest position is ", std::numeric_limits<std::int32_t>::max() - 1,
                    ")");
    }

    // Dry run: pages the appends need and pages their evictions give back, all items and heads together.
    std::int64_t need = 0, reclaim = 0;
    for (std::size_t i = 0; i < B; ++i) {
      const std::size_t n = static_cast<std::size_t>(offsets[i + 1] - offsets[i]);
      if (n == 0) continue;
      const std::int64_t q_earliest = positions[static_cast<std::size_t>(offsets[i])];
      for (std::size_t h = 0; h < H; ++h) {
        const int hh = static_cast<int>(h);
        const auto ev = head_ops::plan_eviction(items[i]->table(layer, hh, shape_), pool_,
                                                is_local_head(layer, hh), retained(layer, hh, q_earliest));
        reclaim += ev.pages_freed;
        need += head_ops::pages_needed(ev, pool_, cfg_.page_size, n);
      }
    }
    // Registered chunks nobody uses give their pages back before the pool counts as full, but only when that
    // makes the call fit: a call that fails changes nothing, the chunk registry included.
    if (need > pool_.free_pages() + reclaim && need <= pool_.free_pages() + reclaim + unused_chunk_pages())
      evict_chunks(need - reclaim);
    REDKNOT_CHECK(need <= pool_.free_pages() + reclaim, PoolExhausted, op, "(layer=", layer,
                  ", sequences=", B, ", n_tokens=", positions.size(), "): needs ", need, " pages, pool has ",
                  pool_.free_pages(), " free (+", reclaim, " this append would evict) of ",
                  pool_.num_pages());

    plan.layer = layer;
    plan.num_kv_heads = shape_.num_kv_heads;
    plan.page_size = cfg_.page_size;
    plan.num_tokens = static_cast<std::int32_t>(positions.size());
    plan.copies.clear();
    plan.rows.resize(positions.size() * H);
    // Commit: evict first so the freed pages can serve the appends, then reserve rows head by head.
    for (std::size_t i = 0; i < B; ++i) {
      if (offsets[i + 1] == offsets[i]) continue;
      const std::int64_t q_earliest = positions[static_cast<std::size_t>(offsets[i])];
      for (std::size_t h = 0; h < H; ++h)
        evict_head(items[i]->table(layer, static_cast<int>(h), shape_), layer, static_cast<int>(h),
                   q_earliest);
    }
    for (std::size_t i = 0; i < B; ++i) {
      const auto begin = static_cast<std::size_t>(offsets[i]);
      const auto pos = positions.subspan(begin, static_cast<std::size_t>(offsets[i + 1]) - begin);
      if (pos.empty()) continue;
      for (std::size_t h = 0; h < H; ++h) {
        const int hh = static_cast<int>(h);
        head_ops::reserve_rows(items[i]->table(layer, hh, shape_), pool_, cfg_.page_size, pos, begin, hh,
                               class_pages(layer, hh), plan);
      }
      items[i]->next_pos[static_cast<std::size_t>(layer)] = pos.back() + 1;
      items[i]->query_floor[static_cast<std::size_t>(layer)] = pos.front();
    }
  }

  ModelShape shape_;
  HeadMap map_;
  StoreConfig cfg_;
  std::optional<RopeConfig> rope_;
  PagePool<T, Alloc> pool_;
  std::vector<HeadPolicy> policies_;  // effective policy per [layer][kv_head]
  std::vector<double> rope_inv_freq_;
  std::unordered_map<SeqId, Sequence> seqs_;
  SeqId next_id_ = 1;
  std::uint64_t uid_ = next_uid();
  // Scratch of the writer (one at a time): reused across appends so a decode step does not allocate.
  AppendPlan scratch_plan_;
  std::vector<Sequence*> scratch_items_;
  std::vector<SeqId> scratch_ids_;
  std::vector<PageEntry> scratch_entries_;
  std::unordered_map<ChunkKey, ChunkRecord, ChunkKeyHash> chunks_;
  std::uint64_t chunk_clock_ = 0;
  ChunkStats chunk_stats_;
  std::atomic<std::int64_t> num_sequences_{0};
  std::atomic<std::int64_t> pages_global_{0};
  std::atomic<std::int64_t> pages_local_{0};
};

}  // namespace redknot
