// How the kernels stage keys: an entry of a plan slot, clipped to what a query (or a tile of queries) can
// see, becomes a run of pool rows. The visibility rule itself is the core's (redknot/visibility.hpp); these
// are the kernels' index maths on top of it, as __host__ __device__ functions that tests/test_cuda_rules.cpp
// checks on the CPU.
#pragma once

#include "redknot/core_types.hpp"
#include "redknot/rope.hpp"
#include "redknot/visibility.hpp"

namespace redknot::cuda {

// Staging of one entry for the hull of the queries: its n candidate keys start at pool row `row`
// (page_id * 2 * page_size + slot, a K row; the V row is row + page_size) and position `pos`.
REDKNOT_HD void stage_entry(const HeadPolicy& pol, const PageEntry& e, const VisibleHull<int>& hull,
                            int page_size, int& n, int& row, int& pos) {
  int lo, hi;
  clip_entry(pol, e, hull, lo, hi);
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

// Dim d of R(-delta) q for a head vector q[head_dim]: the query counter-rotation of keys spliced `delta`
// positions away from where they were rotated (PageEntry::rope_delta()), one dim at a time so that a thread
// rotates only the dims it owns (rope.hpp's per-pair functions; dims >= 2 * half are not rotated).
REDKNOT_HD float counter_rotated_dim(const float* q, int d, int half, RopePairing pairing,
                                     const double* inv_freq, int delta) {
  if (d >= 2 * half) return q[d];
  const int i = pairing == RopePairing::kRotateHalf ? (d < half ? d : d - half) : d / 2;
  const RopePair pr = rope_pair(pairing, half, i);
  float x = q[pr.a], y = q[pr.b];
  rope_rotate_pair(x, y, rope_cos_sin(-static_cast<std::int64_t>(delta), inv_freq[i]));
  return d == pr.a ? x : y;
}

}  // namespace redknot::cuda
