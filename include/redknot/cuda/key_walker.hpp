// KeyWalker: how the prefill kernel gathers a tile of keys from a head's page entries (one warp, one tile
// ahead of the tensor-core loop). Shared with CPU tests: the warp collectives come from a Warp policy —
// intrinsics in prefill.cu, a lock-step 32-thread simulation in tests/test_cuda_rules.cpp — so the very code
// the kernel runs is checked on the CPU. No CUDA headers.
//
// Warp must provide: lane(), ballot(bool) -> unsigned, shfl_up(int, int) -> int, shfl(int, int) -> int.
#pragma once

#include <cstdint>

#include "redknot/cuda/staging.hpp"

namespace redknot::cuda {

// 1-based index of the lowest set bit (0 for none), like __ffs.
REDKNOT_HD int first_set_bit(unsigned x) {
#if defined(__CUDA_ARCH__)
  return __ffs(static_cast<int>(x));
#else
  return __builtin_ffs(static_cast<int>(x));
#endif
}

// Fills a table of up to kTile keys (pool row ids and positions) with the candidate keys of a head's entries
// for the queries of `hull` (visibility.hpp), in position order, resuming where the previous call stopped.
// Run by all 32 lanes of one warp; the cursor is warp-uniform: entry ce is next, and its keys at positions <
// rp were taken by the previous tile. Lanes look at 32 entries at a time (clip each to the visible hull, warp
// prefix sum of the key counts, scatter), so a tile costs a few warp steps even when most entries are
// invisible. A tile holds keys of one rope delta only (PageEntry::rope_delta(): keys of a chunk spliced away
// from the positions they were rotated for), returned in `delta`, so that the kernel counter-rotates its
// query tile once per tile at most: a tile ends early at the first entry with another delta.
struct KeyWalker {
  int ce = 0;
  int rp = 0;
  bool done = false;

#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
  template <int kTile, class Warp>
  REDKNOT_HD int fill(const Warp& w, const PageEntry* arena, const PlanSlot& slot, const HeadPolicy& pol,
                      const VisibleHull<int>& hull, int ps, std::int32_t* rows, std::int32_t* kpos,
                      int& delta) {
    const int lane = w.lane();
    const int n_entries = slot.sink_len + slot.ring_len;
    int filled = 0;
    delta = 0;
    while (!done && filled < kTile && ce < n_entries) {
      if (pol.is_local()) ce = skip_unseen(arena, slot, hull, n_entries);
      if (ce >= n_entries) {
        done = true;
        break;
      }
      const int idx = ce + lane;
      int n = 0, row = 0, pos = 0, d = 0;
      bool beyond = false;
      if (idx < n_entries) {
        const PageEntry e = plan_entry(arena, slot, idx);
        d = e.rope_delta();
        beyond = e.pos0 > hull.pmax;  // entries are position-ordered: nothing from here on is visible
        if (!beyond) {
          int lo, hi;
          clip_entry(pol, e, hull, lo, hi);
          if (lane == 0) lo = hd_max(lo, rp);
          n = hd_max(0, hi - lo);
          row = e.page_id * 2 * ps + e.first + (lo - e.pos0);
          pos = lo;
        }
      }
      const unsigned beyond_mask = w.ballot(beyond);
      const int first_beyond = beyond_mask ? first_set_bit(beyond_mask) - 1 : 32;
      if (lane >= first_beyond) n = 0;
      // One delta per tile: an empty tile takes the delta of its first key; entries from the first one with
      // another delta wait for the next tile.
      if (filled == 0) {
        const unsigned some = w.ballot(n > 0);
        if (some) delta = w.shfl(d, first_set_bit(some) - 1);
      }
      const unsigned other_mask = w.ballot(n > 0 && d != delta);
      const int first_other = other_mask ? first_set_bit(other_mask) - 1 : 32;
      if (lane >= first_other) n = 0;
      int incl = n;
      for (int off = 1; off < 32; off <<= 1) {
        const int y = w.shfl_up(incl, off);
        if (lane >= off) incl += y;
      }
      const int excl = incl - n;
      const int total = w.shfl(incl, 31);
      const int room = kTile - filled;
      for (int o = 0; o < n && excl + o < room; ++o) {
        rows[filled + excl + o] = row + o;
        kpos[filled + excl + o] = pos + o;
      }
      if (total <= room && first_other < 32) {
        // The tile ends before entry ce + first_other (its first key has another delta). When that is entry
        // ce itself (lane 0), rp still applies to it.
        filled += total;
        if (first_other > 0) rp = 0;
        ce += first_other;
        break;
      } else if (total <= room) {
        filled += total;
        rp = 0;
        if (first_beyond < 32 || ce + 32 >= n_entries) done = true;
        ce += 32;
      } else {
        // The tile fills up inside entry ce + k, k the first lane whose inclusive sum reaches room.
        const int k = first_set_bit(w.ballot(incl >= room)) - 1;
        const int used = room - w.shfl(excl, k);
        const int n_k = w.shfl(n, k);
        const int pos_k = w.shfl(pos, k);
        if (used == n_k) {
          ce += k + 1;
          rp = 0;
        } else {
          ce += k;
          rp = pos_k + used;
        }
        filled = kTile;
      }
    }
    return filled;
  }

  // A local head's entries between its sink and the hull's window hold no key any query of the hull sees:
  // when entry ce is one of them, jump past all of them by a binary search on entry ends (entries are
  // position ordered and disjoint, so both pos0 and pos0 + count increase with the index), instead of
  // clipping them 32 at a time. What a tile walks is then O(sink entries + log entries + window), not the
  // whole table (a chunk prefilled in one pass keeps every key of every head). Warp-uniform: every lane
  // searches alike.
  REDKNOT_HD int skip_unseen(const PageEntry* arena, const PlanSlot& slot, const VisibleHull<int>& hull,
                             int n_entries) {
    const auto unseen = [&](int i) {
      const PageEntry e = plan_entry(arena, slot, i);
      return e.pos0 >= hull.sink_end && e.pos0 + e.count <= hull.win_lo;
    };
    if (!unseen(ce)) return ce;
    int lo = ce + 1, hi = n_entries;  // the first entry past the gap is in [lo, hi]
    while (lo < hi) {
      const int mid = (lo + hi) >> 1;
      const PageEntry e = plan_entry(arena, slot, mid);
      if (e.pos0 + e.count <= hull.win_lo)
        lo = mid + 1;
      else
        hi = mid;
    }
    rp = 0;
    return lo;
  }
};

}  // namespace redknot::cuda
