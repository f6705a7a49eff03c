// CPU tests of what the CUDA kernels apply, as the same __host__ __device__ functions: the visibility rule
// at the kernels' int type, the candidate hull of a page entry (no visible key may fall outside it, and
// outside a sink/window gap it holds only keys some query sees), plan-slot indexing, decode staging
// (include/redknot/cuda/staging.hpp) and the prefill KeyWalker.
#include <catch2/catch_test_macros.hpp>

#include <barrier>
#include <cmath>
#include <limits>
#include <random>
#include <thread>
#include <vector>

#include "redknot/attention_plan.hpp"
#include "redknot/cuda/key_walker.hpp"
#include "redknot/cuda/staging.hpp"
#include "redknot/kv_head_store.hpp"
#include "redknot/visibility.hpp"

using namespace redknot;

// The kernels instantiate the rule on int, the host on int64: both must agree, up to the largest positions
// and windows (p - window must not overflow int32).
TEST_CASE("cuda rules: the int instantiation of the rule agrees with the int64 one", "[cuda][rules]") {
  constexpr int kMax = std::numeric_limits<int>::max();
  for (const HeadPolicy& p :
       {HeadPolicy{}, HeadPolicy{HeadClass::kLocal, 1, 0}, HeadPolicy{HeadClass::kLocal, 5, 3},
        HeadPolicy{HeadClass::kLocal, 1000, 0}, HeadPolicy{HeadClass::kLocal, 3, 64},
        HeadPolicy{HeadClass::kLocal, kMax, kMax}, HeadPolicy{HeadClass::kLocal, kMax, 0}}) {
    for (int q = 0; q < 80; ++q)
      for (int k = -2; k < 82; ++k) CHECK(is_visible<int>(p, q, k) == is_visible<std::int64_t>(p, q, k));
    for (int q : {kMax - 1, kMax})
      for (int k : {0, 1, 63, 64, q - 1000, q - 2, q - 1, q})
        CHECK(is_visible<int>(p, q, k) == is_visible<std::int64_t>(p, q, k));
  }
}

TEST_CASE("cuda rules: clip_entry hull holds every visible key and little else", "[cuda][rules]") {
  std::mt19937 rng(42);
  std::uniform_int_distribution<int> u(0, 1 << 20);
  long long checked = 0;
  for (int it = 0; it < 20000; ++it) {
    HeadPolicy p;
    if (it % 5 != 0) p = HeadPolicy{HeadClass::kLocal, 1 + u(rng) % 70, u(rng) % 3 == 0 ? 0 : u(rng) % 20};
    const PageEntry e = make_entry(0, 0, 1 + u(rng) % 64, u(rng) % 200);
    const int pmin = u(rng) % 260;
    const int pmax = pmin + (u(rng) % 3 == 0 ? 0 : u(rng) % 70);
    int lo = 0, hi = 0;
    clip_entry(p, e, visible_hull<int>(p, pmin, pmax), lo, hi);
    REQUIRE(lo <= hi);
    REQUIRE(lo >= e.pos0);
    REQUIRE(hi <= e.pos0 + e.count);
    bool gap = false;  // a key in the hull no query sees: allowed only between the sink and the window
    for (int k = e.pos0; k < e.pos0 + e.count; ++k) {
      bool seen = false;
      for (int q = pmin; q <= pmax; ++q) seen = seen || is_visible(p, q, k);
      if (seen) CHECK((k >= lo && k < hi));
      if (!seen && k >= lo && k < hi) gap = true;
      ++checked;
    }
    if (gap) {
      // The hull is the convex hull of sink and window parts: it must touch both.
      REQUIRE(p.is_local());
      CHECK(lo < p.sink);
    }
  }
  CHECK(checked > 0);
}

// The kernels read a slot through plan_entry() over the raw arena: it must yield the head table's entries.
TEST_CASE("cuda rules: plan_entry over the arena reads the head tables", "[cuda][rules]") {
  ModelShape shape{1, 4, 2, 8, DType::kF32};
  HeadMap map = HeadMap::uniform(1, 2, HeadClass::kGlobal);
  map.set(0, 1, HeadPolicy{HeadClass::kLocal, 20, 5});
  KVHeadStore<float> store(shape, map, StoreConfig{4, 4096});
  std::vector<SeqId> seqs = {store.create_sequence(), store.create_sequence()};
  AttentionPlan plan;
  std::vector<float> kv(2 * 8);
  for (int step = 0; step < 120; ++step) {
    for (std::size_t s = 0; s < seqs.size(); ++s) {
      // A position jump now and then (spliced chunks) and a sink that freezes as the window moves on.
      const std::int32_t pos = store.next_position(seqs[s], 0) + (step % 37 == 36 ? 9 : 0);
      store.append(seqs[s], 0, std::span<const float>(kv), std::span<const float>(kv), std::span(&pos, 1));
    }
    std::vector<std::int32_t> qpos, ones(seqs.size(), 1);
    for (SeqId s : seqs) qpos.push_back(store.next_position(s, 0) - 1);
    plan.update(store, 0, seqs, ones, qpos);
    const PageEntry* arena = plan.arena().data();
    for (std::size_t i = 0; i < seqs.size(); ++i)
      for (int h = 0; h < 2; ++h) {
        const PlanSlot& ps = plan.slot(i, h);
        const HeadTable& t = store.table(seqs[i], 0, h);
        REQUIRE(static_cast<std::size_t>(ps.num_entries()) == t.size());
        for (int e = 0; e < ps.num_entries(); ++e)
          CHECK(plan_entry(arena, ps, e) == t[static_cast<std::size_t>(e)]);
      }
  }
}

// Emulates the decode kernel's key enumeration (stage 128 entries, exclusive prefix sum, find_staged for the
// first key of each row group, step_staged for the next ones) and checks it yields every candidate key of
// every entry exactly once, in order, at the right pool row — and so every visible key.
TEST_CASE("cuda rules: decode staging enumerates each candidate key once", "[cuda][rules]") {
  constexpr int kStage = 128, kGroups = 8, kBatch = 4;
  const int ps = 16;
  ModelShape shape{1, 2, 2, 8, DType::kF32};
  HeadMap map = HeadMap::uniform(1, 2, HeadClass::kGlobal);
  map.set(0, 1, HeadPolicy{HeadClass::kLocal, 40, 6});
  KVHeadStore<float> store(shape, map, StoreConfig{ps, 8192});
  const SeqId seq = store.create_sequence();
  std::vector<float> kv(2 * 8 * 300);
  std::vector<std::int32_t> pos;
  std::int32_t next = 0;
  for (int chunk = 0; chunk < 40; ++chunk) {  // chunks of odd sizes with jumps: partial pages, shared pages
    pos.clear();
    const int n = 1 + (chunk * 37) % 150;
    next += chunk % 7 == 6 ? 11 : 0;
    for (int i = 0; i < n; ++i) pos.push_back(next++);
    store.append(seq, 0, std::span<const float>(kv.data(), pos.size() * 16),
                 std::span<const float>(kv.data(), pos.size() * 16), pos);
  }
  const std::int32_t q = next - 1;
  for (int h = 0; h < 2; ++h) {
    const HeadPolicy pol = store.policy(0, h);
    const VisibleHull<int> hull = visible_hull<int>(pol, q, q);
    const HeadTable& t = store.table(seq, 0, h);
    // Expected: candidate keys of every entry in order.
    std::vector<std::pair<int, int>> expected;  // (row, position)
    for (std::size_t i = 0; i < t.size(); ++i) {
      const PageEntry& e = t[i];
      int lo, hi;
      clip_entry(pol, e, hull, lo, hi);
      for (int k = lo; k < hi; ++k) expected.emplace_back(e.page_id * 2 * ps + e.first + (k - e.pos0), k);
      for (int k = e.pos0; k < e.pos0 + e.count; ++k)
        if (is_visible(pol, q, k)) CHECK((k >= lo && k < hi));
    }
    // Emulated kernel, with chunks of entries as the partition would cut them.
    for (int chunk_len : {1, 5, 128, 300, 100000}) {
      std::vector<std::pair<int, int>> got;
      const int n_entries = static_cast<int>(t.size());
      for (int cb = 0; cb < n_entries; cb += chunk_len) {
        const int ce = std::min(n_entries, cb + chunk_len);
        for (int e0 = cb; e0 < ce; e0 += kStage) {
          int row[kStage], p0[kStage], start[kStage], total = 0;
          for (int tid = 0; tid < kStage; ++tid) {
            int n = 0;
            row[tid] = p0[tid] = 0;
            if (e0 + tid < ce) {
              const PageEntry& e = t[static_cast<std::size_t>(e0 + tid)];
              cuda::stage_entry(pol, e, hull, ps, n, row[tid], p0[tid]);
            }
            start[tid] = total;
            total += n;
          }
          for (int t0 = 0; t0 < total; t0 += kGroups * kBatch)
            for (int grp = 0; grp < kGroups; ++grp) {
              const int first = t0 + grp * kBatch;
              int idx = cuda::find_staged(start, kStage, first);
              for (int j = 0; j < kBatch; ++j) {
                const int key = first + j;
                if (key >= total) break;
                idx = cuda::step_staged(start, kStage, idx, key);
                got.emplace_back(row[idx] + key - start[idx], p0[idx] + key - start[idx]);
              }
            }
        }
      }
      CHECK(got == expected);
    }
  }
}

namespace {

// A warp simulated in lock step by 32 host threads: each collective publishes the lane's value, waits for all
// lanes, reads, and waits again before the slots are reused. A divergent collective would deadlock (and time
// out).
struct SimWarpShared {
  std::barrier<> bar{32};
  int vals[32] = {};
};
struct SimWarp {
  SimWarpShared* sh;
  int lane_;
  int lane() const { return lane_; }
  unsigned ballot(bool p) const {
    sh->vals[lane_] = p ? 1 : 0;
    sh->bar.arrive_and_wait();
    unsigned m = 0;
    for (int i = 0; i < 32; ++i) m |= sh->vals[i] ? (1u << i) : 0u;
    sh->bar.arrive_and_wait();
    return m;
  }
  int shfl_up(int v, int off) const {
    sh->vals[lane_] = v;
    sh->bar.arrive_and_wait();
    const int r = lane_ >= off ? sh->vals[lane_ - off] : v;
    sh->bar.arrive_and_wait();
    return r;
  }
  int shfl(int v, int src) const {
    sh->vals[lane_] = v;
    sh->bar.arrive_and_wait();
    const int r = sh->vals[src];
    sh->bar.arrive_and_wait();
    return r;
  }
};

}  // namespace

// Runs the prefill kernel's KeyWalker (the same template) on a simulated warp over real head tables, tile
// after tile, and checks the concatenated tiles are exactly the candidate keys of every entry in position
// order, that every tile but the last is full, and that the 32 lanes keep identical cursors. With spliced
// entries (keys rotated for other positions: rope deltas), a tile holds keys of one delta and ends early only
// where the next key's delta differs.
TEST_CASE("cuda rules: prefill KeyWalker gathers every candidate key once", "[cuda][rules]") {
  constexpr int kTile = 64;
  for (bool spliced : {false, true})
    for (int ps : {16, 64}) {
      ModelShape shape{1, 3, 3, 8, DType::kF32};
      HeadMap map = HeadMap::uniform(1, 3, HeadClass::kGlobal);
      map.set(0, 1, HeadPolicy{HeadClass::kLocal, 70, 5});
      map.set(0, 2, HeadPolicy{HeadClass::kLocal, 3, 0});
      KVHeadStore<float> store(shape, map, StoreConfig{ps, 8192});
      const SeqId seq = store.create_sequence();
      std::vector<float> kv(3 * 8 * 400);
      std::vector<std::int32_t> pos;
      std::int32_t next = 0;
      for (int chunk = 0; chunk < 12; ++chunk) {
        pos.clear();
        const int n = 1 + (chunk * 53) % 97;
        next += chunk % 4 == 3 ? 13 : 0;  // spliced jumps
        for (int i = 0; i < n; ++i) pos.push_back(next++);
        store.append(seq, 0, std::span<const float>(kv.data(), pos.size() * 24),
                     std::span<const float>(kv.data(), pos.size() * 24), pos);
      }
      // The query range of the last chunk, like a chunked-prefill tile (and a single query, like decode).
      for (auto [pmin, pmax] : {std::pair{pos.front(), pos.back()}, std::pair{pos.back(), pos.back()}}) {
        // h = 3, 4: the local policies of heads 1 and 2 over head 0's table (every key kept, as a chunk
        // prefilled in one pass keeps them): the walk must jump the gap between sink and window.
        for (int h = 0; h < 5; ++h) {
          const HeadTable& t = store.table(seq, 0, h < 3 ? h : 0);
          std::vector<PageEntry> arena;
          for (std::size_t i = 0; i < t.size(); ++i) arena.push_back(t[i]);
          constexpr std::int32_t kDeltas[] = {0, 7, 100000, -3};
          if (spliced)  // runs of entries with one delta, as chunks spliced at other offsets leave them
            for (std::size_t i = 0; i < arena.size(); ++i)
              arena[i].rope_pos0 = arena[i].pos0 - kDeltas[(i / 3) % 4];
          const PlanSlot slot{0, static_cast<int>(arena.size()), static_cast<int>(arena.size()), 0, 0, 0, 0};
          const HeadPolicy dp = store.policy(0, h < 3 ? h : h - 2);
          const VisibleHull<int> hull = visible_hull<int>(dp, pmin, pmax);
          std::vector<std::pair<int, int>> expected;
          std::vector<int> expected_delta;
          for (const auto& e : arena) {
            if (e.pos0 > pmax) break;
            int lo, hi;
            clip_entry(dp, e, hull, lo, hi);
            for (int k = lo; k < hi; ++k) {
              expected.emplace_back(e.page_id * 2 * ps + e.first + (k - e.pos0), k);
              expected_delta.push_back(e.rope_delta());
            }
          }
          SimWarpShared sh;
          std::vector<std::pair<int, int>> got;
          std::vector<int> tile_sizes, tile_deltas, got_delta;
          bool lanes_agree = true;
          std::int32_t rows[kTile], kpos[kTile];
          std::vector<cuda::KeyWalker> walkers(32);
          for (int tile = 0; tile < 10000; ++tile) {
            int filled[32], delta[32];
            std::vector<std::thread> lanes;
            for (int l = 0; l < 32; ++l)
              lanes.emplace_back([&, l] {
                filled[l] = walkers[static_cast<std::size_t>(l)].fill<kTile>(
                    SimWarp{&sh, l}, arena.data(), slot, dp, hull, ps, rows, kpos, delta[l]);
              });
            for (auto& th : lanes) th.join();
            for (int l = 1; l < 32; ++l)
              lanes_agree = lanes_agree && filled[l] == filled[0] && delta[l] == delta[0] &&
                            walkers[l].ce == walkers[0].ce && walkers[l].rp == walkers[0].rp &&
                            walkers[l].done == walkers[0].done;
            if (filled[0] == 0) break;
            tile_sizes.push_back(filled[0]);
            tile_deltas.push_back(delta[0]);
            for (int i = 0; i < filled[0]; ++i) {
              got.emplace_back(rows[i], kpos[i]);
              got_delta.push_back(delta[0]);
            }
          }
          CHECK(lanes_agree);
          CHECK(got == expected);
          CHECK(got_delta == expected_delta);  // every key scored with its own entry's delta
          for (std::size_t i = 0; i + 1 < tile_sizes.size(); ++i)
            CHECK((tile_sizes[i] == kTile || tile_deltas[i + 1] != tile_deltas[i]));
        }
      }
    }
}

// The decode kernel's per-dim query counter-rotation equals rope.hpp's whole-vector rotation by -delta, for
// both pairings and partial rotary.
TEST_CASE("cuda rules: counter_rotated_dim matches rope_rotate", "[cuda][rules][rope]") {
  for (RopePairing pairing : {RopePairing::kRotateHalf, RopePairing::kInterleaved})
    for (int rot : {0, 32, 48}) {
      RopeConfig c;
      c.head_dim = 64;
      c.rotary_dim = rot;
      c.pairing = pairing;
      c.scaling = RopeScaling::kLlama3;
      c.factor = 8.0;
      const std::vector<double> inv = rope_inv_freq(c);
      std::vector<float> q(64);
      for (int d = 0; d < 64; ++d)
        q[static_cast<std::size_t>(d)] = std::sin(0.37f * static_cast<float>(d) + 1.f);
      for (int delta : {1, -5, 4096, 131071}) {
        std::vector<float> want = q;
        rope_rotate(c, inv, want.data(), -static_cast<std::int64_t>(delta));
        for (int d = 0; d < 64; ++d) {
          const float got = cuda::counter_rotated_dim(q.data(), d, c.rot() / 2, pairing, inv.data(), delta);
          CHECK(got == want[static_cast<std::size_t>(d)]);
        }
      }
    }
}
