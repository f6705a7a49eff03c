// The visibility rule, the single definition every code path uses: the CPU kernel, retention and pool
// sizing, the CUDA kernels (REDKNOT_HD functions) and the test oracle.
//
// A query at absolute position p in a head with policy P sees key position k iff k <= p and
//   - P is not local: always;
//   - P is local:     k < sink  or  k > p - window   (sink and window are disjoint; window counts the query).
//
// Positions are a template parameter: the host works in int64, kernels in int (positions are < 2^31, and
// p - window >= -2^31 + 1 for window <= INT32_MAX, so nothing below overflows int32).
#pragma once

#include <cstdint>
#include <limits>
#include <type_traits>

#include "redknot/core_types.hpp"
#include "redknot/host_device.hpp"

namespace redknot {

template <class P>
REDKNOT_HD bool is_visible(const HeadPolicy& p, P q_pos, std::type_identity_t<P> k_pos) {
  if (k_pos > q_pos || k_pos < 0) return false;
  if (!p.is_local()) return true;
  return k_pos < p.sink || k_pos > q_pos - p.window;
}

// The visible key positions of one query as two disjoint half-open ranges [0, sink_end) and
// [win_begin, win_end). For non-local heads the first range is empty and the second is [0, q_pos].
struct VisibleRanges {
  std::int64_t sink_end = 0;   // sink range is [0, sink_end)
  std::int64_t win_begin = 0;  // window range is [win_begin, win_end)
  std::int64_t win_end = 0;

  // Number of visible positions among [lo, hi) (clipped to both ranges).
  REDKNOT_HD std::int64_t count_in(std::int64_t lo, std::int64_t hi) const {
    const auto overlap = [](std::int64_t a0, std::int64_t a1, std::int64_t b0, std::int64_t b1) {
      return hd_max<std::int64_t>(0, hd_min(a1, b1) - hd_max(a0, b0));
    };
    return overlap(lo, hi, 0, sink_end) + overlap(lo, hi, win_begin, win_end);
  }
};

REDKNOT_HD VisibleRanges visible_ranges(const HeadPolicy& p, std::int64_t q_pos) {
  VisibleRanges r;
  r.win_end = q_pos + 1;
  if (!p.is_local()) return r;  // sink_end = win_begin = 0
  r.sink_end = hd_min<std::int64_t>(p.sink, q_pos + 1);
  r.win_begin = hd_max<std::int64_t>(r.sink_end, q_pos - p.window + 1);
  return r;
}

// What any query with a position in [pmin, pmax] may see: positions <= pmax that are < sink_end (local heads)
// or >= win_lo. It is a hull (an entry is clipped to it, then the exact rule is applied per key): the window
// of the earliest query starts first, and later queries' sinks are never shorter.
template <class P>
struct VisibleHull {
  P pmax = -1;
  P sink_end = 0;  // local heads only
  P win_lo = 0;    // local heads only
};

template <class P>
REDKNOT_HD VisibleHull<P> visible_hull(const HeadPolicy& p, P pmin, std::type_identity_t<P> pmax) {
  VisibleHull<P> h;
  h.pmax = pmax;
  if (p.is_local()) {
    h.sink_end = hd_min<P>(p.sink, pmax + 1);
    h.win_lo = hd_max<P>(hd_min<P>(p.sink, pmin + 1), pmin - p.window + 1);
  }
  return h;
}

// Positions [lo, hi) of an entry that some query of the hull may see; lo >= hi when none. Entries are
// position ordered, so an entry starting after pmax ends a walk.
template <class P>
REDKNOT_HD void clip_entry(const HeadPolicy& p, const PageEntry& e, const VisibleHull<P>& h, P& lo, P& hi) {
  lo = e.pos0;
  hi = hd_min<P>(static_cast<P>(e.pos0) + e.count, h.pmax + 1);
  if (p.is_local()) {
    const bool touches_sink = lo < h.sink_end;
    const bool touches_win = hi > h.win_lo;
    if (!touches_sink && !touches_win) {
      hi = lo;
      return;
    }
    if (!touches_sink) lo = hd_max(lo, h.win_lo);
    if (!touches_win) hi = hd_min(hi, h.sink_end);
  }
  if (hi < lo) hi = lo;
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
