// The plain types of a store's interface — sequence ids, configuration, statistics — apart from the store
// template, so that interfaces over it (any_store.hpp) need not compile it.
#pragma once

#include <cstddef>
#include <cstdint>

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

// Content address of a precomputed chunk: XXH3-128 of everything its K/V depend on (chunk_key.hpp).
struct ChunkKey {
  std::uint64_t hi = 0;
  std::uint64_t lo = 0;
  friend bool operator==(const ChunkKey&, const ChunkKey&) = default;
  friend bool operator<(const ChunkKey& a, const ChunkKey& b) {
    return a.hi != b.hi ? a.hi < b.hi : a.lo < b.lo;
  }
};

struct ChunkKeyHash {
  std::size_t operator()(const ChunkKey& k) const noexcept {
    return static_cast<std::size_t>(k.lo ^ (k.hi * 0x9e3779b97f4a7c15ull));
  }
};

// The registry of precomputed chunks (position-independent reuse). Counters are totals since the store was
// created; pages_held counts page references held by registered chunks (shared pages count once per chunk).
struct ChunkStats {
  std::int64_t chunks = 0;
  std::int64_t chunks_in_use = 0;  // spliced into at least one live sequence: never evicted
  std::int64_t pages_held = 0;
  std::int64_t hits = 0;    // lookups and splices that found their key
  std::int64_t misses = 0;  // lookups that did not
  std::int64_t splices = 0;
  std::int64_t evictions = 0;  // chunks dropped to make room (least recently used first)
};

// One registered chunk, for policies outside the store (tiers.hpp): its length, the live sequences it is
// spliced into, how often it was ever spliced, and its place in the registry's LRU clock.
struct ChunkInfo {
  std::int32_t tokens = 0;
  std::int64_t users = 0;
  std::int64_t splices = 0;
  std::uint64_t last_used = 0;  // larger: used more recently
};

}  // namespace redknot
