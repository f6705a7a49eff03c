// Split-KV work partition for decode: how the (batch item, kv_head) units of a decode step are
// cut into chunks of page entries so that long global heads and short local heads keep every SM busy.
//
// The rule, shared bit-for-bit by the host reference below and the device plan (decode.cu, CUB prefix sums):
//   total      = sum of entries over units
//   chunk_len  = max(min_chunk_entries, ceil(total / target_chunks))
//   chunks[u]  = max(1, ceil(entries[u] / chunk_len))          (an empty unit still gets one chunk: it writes
//                                                              the empty-softmax output, zeros and -inf)
//   offset[u]  = exclusive prefix sum of chunks; chunk k of unit u covers entries [k*chunk_len, ...).
// Because ceil(x / c) <= x / c + 1, the number of chunks never exceeds num_units + target_chunks, which is
// what the preallocated buffers (and the fixed grid of a captured CUDA graph) are sized for.
//
// Cost is counted in page entries, not tokens: an entry holds at most page_size keys, so chunks are balanced
// to within one page, and the count is known from the slot header without reading the entries.
//
// Header-only, no CUDA: unit-tested on the CPU (tests/test_cuda_partition.cpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "redknot/error.hpp"

namespace redknot::cuda {

// One chunk of split-KV work: entries [entry_begin, entry_end) of unit `unit` (unit = item * num_kv_heads +
// h).
struct DecodeChunk {
  std::int32_t unit;
  std::int32_t entry_begin;
  std::int32_t entry_end;
  std::int32_t chunk_in_unit;
};
static_assert(sizeof(DecodeChunk) == 16, "DecodeChunk is read by device code as one 16-byte load");

struct DecodePartitionConfig {
  std::int32_t target_chunks = 0;      // chunks the grid should hold (e.g. 4 x SM count); >= 1
  std::int32_t min_chunk_entries = 4;  // never cut finer than this many entries (merge cost, load latency)
};

struct DecodePartition {
  std::int32_t chunk_len = 1;
  std::vector<std::int32_t> chunk_offset;  // [num_units + 1]; chunk_offset[num_units] = number of chunks
  std::vector<DecodeChunk> chunks;
  std::int32_t num_chunks() const { return chunk_offset.empty() ? 0 : chunk_offset.back(); }
};

// Upper bound on DecodePartition::num_chunks() for any entry counts: sizes the device buffers.
inline std::int64_t max_decode_chunks(std::int64_t num_units, const DecodePartitionConfig& cfg) {
  return num_units + std::max<std::int32_t>(cfg.target_chunks, 1);
}

inline std::int32_t decode_chunk_len(std::int64_t total_entries, const DecodePartitionConfig& cfg) {
  const std::int64_t target = std::max<std::int32_t>(cfg.target_chunks, 1);
  const std::int64_t by_target = (total_entries + target - 1) / target;
  return static_cast<std::int32_t>(std::max<std::int64_t>({by_target, cfg.min_chunk_entries, 1}));
}

inline std::int32_t decode_unit_chunks(std::int32_t entries, std::int32_t chunk_len) {
  return std::max<std::int32_t>(1, (entries + chunk_len - 1) / chunk_len);
}

// Host reference of the device plan. entries[u] is the number of page entries of unit u.
inline DecodePartition make_decode_partition(const std::vector<std::int32_t>& entries,
                                             const DecodePartitionConfig& cfg) {
  if (cfg.target_chunks < 1)
    throw InvalidArgument(
        redknot::detail::concat("make_decode_partition: target_chunks=", cfg.target_chunks, " must be >= 1"));
  if (cfg.min_chunk_entries < 1)
    throw InvalidArgument(redknot::detail::concat(
        "make_decode_partition: min_chunk_entries=", cfg.min_chunk_entries, " must be >= 1"));
  std::int64_t total = 0;
  for (std::int32_t e : entries) {
    if (e < 0)
      throw InvalidArgument(
          redknot::detail::concat("make_decode_partition: entries holds a negative count ", e));
    total += e;
  }
  DecodePartition p;
  p.chunk_len = decode_chunk_len(total, cfg);
  p.chunk_offset.assign(entries.size() + 1, 0);
  for (std::size_t u = 0; u < entries.size(); ++u)
    p.chunk_offset[u + 1] = p.chunk_offset[u] + decode_unit_chunks(entries[u], p.chunk_len);
  p.chunks.reserve(static_cast<std::size_t>(p.num_chunks()));
  for (std::size_t u = 0; u < entries.size(); ++u) {
    const std::int32_t n = p.chunk_offset[u + 1] - p.chunk_offset[u];
    for (std::int32_t k = 0; k < n; ++k) {
      const std::int32_t b = std::min(entries[u], k * p.chunk_len);
      const std::int32_t e = std::min(entries[u], (k + 1) * p.chunk_len);
      p.chunks.push_back(DecodeChunk{static_cast<std::int32_t>(u), b, e, k});
    }
  }
  return p;
}

}  // namespace redknot::cuda
