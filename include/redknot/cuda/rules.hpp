// The index and visibility rules the kernels apply, as __host__ __device__ functions: the kernels call them,
// and tests/test_cuda_rules.cpp checks them on the CPU against redknot::is_visible and AttentionPlan::entry.
// C++17, no CUDA headers.
#pragma once

#include "redknot/cuda/types.hpp"

#if defined(__CUDACC__)
#define REDKNOT_HD __host__ __device__ __forceinline__
#else
#define REDKNOT_HD inline
#endif

namespace redknot::cuda {

REDKNOT_HD int kmin(int a, int b) { return a < b ? a : b; }
REDKNOT_HD int kmax(int a, int b) { return a > b ? a : b; }

// Entry i of a plan slot (AttentionPlan::entry).
REDKNOT_HD DevPageEntry slot_entry(const DevPageEntry* arena, const DevSlot& s, int i) {
  if (i < s.sink_len) return arena[s.sink_offset + i];
  return arena[s.ring_offset + ((s.ring_start + (i - s.sink_len)) & (s.ring_cap - 1))];
}

REDKNOT_HD bool visible(const DevPolicy& pol, int q_pos, int k_pos) {
  if (k_pos > q_pos || k_pos < 0) return false;
  if (!pol.is_local) return true;
  return k_pos < pol.sink || k_pos > q_pos - pol.window;
}

// Candidate positions [lo, hi) of an entry for queries with positions in [pmin, pmax]: the hull of what any
// of them may see (the exact rule is applied per key afterwards). Mirrors cpu_attention's clipping.
REDKNOT_HD void clip_entry(const DevPolicy& pol, const DevPageEntry& e, int pmin, int pmax, int& lo,
                           int& hi) {
  lo = e.pos0;
  hi = kmin(e.pos0 + e.count, pmax + 1);
  if (pol.is_local) {
    const int sink_end = kmin(pol.sink, pmax + 1);
    // Window of the earliest query: later queries' windows start later, so this is the union's lower bound.
    const int win_lo = kmax(kmin(pol.sink, pmin + 1), pmin - pol.window + 1);
    const bool touches_sink = lo < sink_end;
    const bool touches_win = hi > win_lo;
    if (!touches_sink && !touches_win) {
      hi = lo;
      return;
    }
    if (!touches_sink) lo = kmax(lo, win_lo);
    if (!touches_win) hi = kmin(hi, sink_end);
  }
  if (hi < lo) hi = lo;
}

// Decode staging of one entry for queries in [pmin, pmax]: its n candidate keys start at pool row `row`
// (page_id * 2 * page_size + slot, a K row; the V row is row + page_size) and position `pos`.
REDKNOT_HD void stage_entry(const DevPolicy& pol, const DevPageEntry& e, int pmin, int pmax, int page_size,
                            int& n, int& row, int& pos) {
  int lo, hi;
  clip_entry(pol, e, pmin, pmax, lo, hi);
  n = hi - lo;
  row = e.page_id * 2 * page_size + e.first + (lo - e.pos0);
  pos = lo;
}

// The staged entry holding key t: the last i in [0, count) with starts[i] <= t, where starts are the
// exclusive prefix sums of the staged key counts. An empty entry shares its start with the next one, so the
// last match is never empty (for t < total).
REDKNOT_HD int find_staged(const int* starts, int count, int t) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (starts[mid] <= t)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

// From the entry holding key t - 1 (or any earlier one) to the one holding key t.
REDKNOT_HD int step_staged(const int* starts, int count, int idx, int t) {
  while (idx + 1 < count && starts[idx + 1] <= t) ++idx;
  return idx;
}

}  // namespace redknot::cuda
