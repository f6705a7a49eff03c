// The canonical visibility rule, the single definition every code path uses.
//
// A query at absolute position p in a head with policy P sees key position k iff k <= p and
//   - P is not local: always;
//   - P is local:     k < sink  or  k > p - window   (sink and window are disjoint; window counts the query).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

#include "redknot/head_map.hpp"

namespace redknot {

inline bool is_visible(const HeadPolicy& p, std::int64_t q_pos, std::int64_t k_pos) {
  if (k_pos > q_pos || k_pos < 0) return false;
  if (!p.is_local()) return true;
  return k_pos < p.sink || k_pos > q_pos - p.window;
}

// The visible key positions of one query as two disjoint half-open ranges [sink_begin, sink_end) and
// [win_begin, win_end). For non-local heads the first range is empty and the second is [0, q_pos].
struct VisibleRanges {
  std::int64_t sink_end = 0;   // sink range is [0, sink_end)
  std::int64_t win_begin = 0;  // window range is [win_begin, win_end)
  std::int64_t win_end = 0;

  // Number of visible positions among [lo, hi) (clipped to both ranges).
  std::int64_t count_in(std::int64_t lo, std::int64_t hi) const {
    const auto overlap = [](std::int64_t a0, std::int64_t a1, std::int64_t b0, std::int64_t b1) {
      return std::max<std::int64_t>(0, std::min(a1, b1) - std::max(a0, b0));
    };
    return overlap(lo, hi, 0, sink_end) + overlap(lo, hi, win_begin, win_end);
  }
};

inline VisibleRanges visible_ranges(const HeadPolicy& p, std::int64_t q_pos) {
  VisibleRanges r;
  r.win_end = q_pos + 1;
  if (!p.is_local()) {
    r.sink_end = 0;
    r.win_begin = 0;
    return r;
  }
  r.sink_end = std::min<std::int64_t>(p.sink, q_pos + 1);
  r.win_begin = std::max<std::int64_t>(r.sink_end, q_pos - p.window + 1);
  r.win_begin = std::min(r.win_begin, r.win_end);
  return r;
}

// Which keys a head must keep once no query before q_earliest remains: exactly the ones some query at
// q >= q_earliest can still see under is_visible(), so retention can never drop a key the kernels would read.
// A local head keeps k < retained_sink_end(p) or k >= retained_window_begin(p, q_earliest); other heads keep
// everything.
inline std::int64_t retained_sink_end(const HeadPolicy& p) {
  return p.is_local() ? p.sink : std::numeric_limits<std::int64_t>::max();
}
// A query at q >= q_earliest sees k > q - W, so every k > q_earliest - W may still be read.
inline std::int64_t retained_window_begin(const HeadPolicy& p, std::int64_t q_earliest) {
  return p.is_local() ? q_earliest - p.window + 1 : std::numeric_limits<std::int64_t>::min();
}

}  // namespace redknot
