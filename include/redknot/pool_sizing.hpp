// How many pages to give a pool before any sequence exists: the peak a sequence can reach while it is
// appended chunk by chunk, per head and in total.
//
// KVHeadStore::pages_per_sequence() is the steady state of decoding (after each query ran alone). During a
// chunked prefill a local head holds more: append() evicts only what the chunk's *earliest* query can no
// longer see, so the head briefly holds its sink, that query's window and the whole chunk. Engines size their
// pool (or their admission control) by this peak; the bound is exact up to page alignment.
#pragma once

#include <algorithm>
#include <cstdint>

#include "redknot/error.hpp"
#include "redknot/head_map.hpp"
#include "redknot/limits.hpp"
#include "redknot/visibility.hpp"

namespace redknot {

// Pages one (sequence, layer, kv_head) holds after positions [0, num_tokens) were appended and the query at
// num_tokens - 1 ran alone: the steady state of decoding, by the page-granular retention rule.
// KVHeadStore::pages_per_sequence() sums this over its heads.
inline std::int64_t steady_head_pages(const HeadPolicy& p, int page_size, std::int64_t num_tokens) {
  require(page_size > 0, "steady_head_pages: page_size=", page_size, " must be > 0");
  require(num_tokens >= 0, "steady_head_pages: num_tokens=", num_tokens, " must be >= 0");
  const std::int64_t ps = page_size;
  if (num_tokens == 0) return 0;
  const std::int64_t last_page = (num_tokens - 1) / ps;
  const std::int64_t se = std::min(retained_sink_end(p), num_tokens);
  const std::int64_t wb = std::max<std::int64_t>(0, retained_window_begin(p, num_tokens - 1));
  const std::int64_t win_first = std::min(wb / ps, last_page + 1);
  const std::int64_t sink_pages = se > 0 ? (se - 1) / ps + 1 : 0;  // pages [0, sink_pages)
  const std::int64_t window_pages = last_page - win_first + 1;     // pages [win_first, last_page]
  const std::int64_t overlap = std::max<std::int64_t>(0, sink_pages - win_first);
  return sink_pages + window_pages - overlap;
}

// Sum of steady_head_pages() over every (layer, kv_head) of `map`.
inline std::int64_t steady_sequence_pages(const HeadMap& map, int page_size, std::int64_t num_tokens) {
  std::int64_t total = 0;
  for (int l = 0; l < map.num_layers(); ++l)
    for (int h = 0; h < map.num_kv_heads(); ++h)
      total += steady_head_pages(map.policy(l, h), page_size, num_tokens);
  return total;
}

// Upper bound on the pages one (sequence, layer, kv_head) holds at any moment while positions
// [0, num_tokens) are appended in chunks of at most `chunk` positions (decode: chunk 1).
// The arguments of peak_head_pages() / peak_sequence_pages(); `op` prefixes the message.
inline void check_peak_args(int page_size, std::int64_t num_tokens, std::int64_t chunk, const char* op) {
  require(page_size > 0, op, ": page_size=", page_size, " must be > 0");
  require(num_tokens >= 0 && num_tokens <= kMaxTokens, op, ": num_tokens=", num_tokens, " must be in [0, ",
          kMaxTokens, "] (positions are int32)");
  require(chunk > 0 && chunk <= kMaxTokens, op, ": chunk=", chunk, " must be in [1, ", kMaxTokens, "]");
}

inline std::int64_t peak_head_pages(const HeadPolicy& p, int page_size, std::int64_t num_tokens,
                                    std::int64_t chunk) {
  check_peak_args(page_size, num_tokens, chunk, "peak_head_pages");
  const auto ceil_div = [](std::int64_t a, std::int64_t b) { return (a + b - 1) / b; };
  const std::int64_t all = ceil_div(num_tokens, page_size);
  if (!p.is_local() || num_tokens == 0) return all;
  const std::int64_t sink_pages = ceil_div(std::min(retained_sink_end(p), num_tokens), page_size);
  // Keys [window_begin(q), q + chunk - 1] for the chunk's earliest query q: `span` consecutive positions,
  // which touch at most ceil((span - 1) / page_size) + 1 pages whatever their alignment.
  const std::int64_t q = num_tokens;  // any query far enough from 0; the canonical window is shift-invariant
  const std::int64_t span = std::max<std::int64_t>(1, q + chunk - retained_window_begin(p, q));
  return std::min(all, sink_pages + ceil_div(span - 1, page_size) + 1);
}

// Sum of peak_head_pages() over every (layer, kv_head) of `map`: pages to reserve per sequence.
inline std::int64_t peak_sequence_pages(const HeadMap& map, int page_size, std::int64_t num_tokens,
                                        std::int64_t chunk) {
  check_peak_args(page_size, num_tokens, chunk, "peak_sequence_pages");
  std::int64_t total = 0;
  for (int l = 0; l < map.num_layers(); ++l)
    for (int h = 0; h < map.num_kv_heads(); ++h)
      total += peak_head_pages(map.policy(l, h), page_size, num_tokens, chunk);
  return total;
}

}  // namespace redknot
