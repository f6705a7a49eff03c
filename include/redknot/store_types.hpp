// The plain types of a store's interface — sequence ids, configuration, statistics — apart from the store
// template, so that interfaces over it (any_store.hpp) need not compile it.
#pragma once

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

}  // namespace redknot
