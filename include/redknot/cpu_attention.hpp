// CPU SegPagedAttention: prefill (a chunk of queries) and decode (one query) over a head-aware store.
//
// Work item = (batch item, kv_head, tile of up to kQueryTile queries). The g = Hq / Hk query heads of a kv head
// are processed together, so every K/V row is read (and converted to fp32) once per tile for all of them: GQA
// without duplication. Keys are visited through the plan's page entries; per entry, only the slots some query
// of the tile can see (canonical rule, visibility.hpp) are touched, so local heads cost O(sink + window).
// Accumulation is fp32 with an online (streaming) softmax; storage may be fp32, fp16 or bf16.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "redknot/attention_plan.hpp"
#include "redknot/dtype.hpp"
#include "redknot/error.hpp"
#include "redknot/kv_head_store.hpp"
#include "redknot/visibility.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace redknot {

struct AttentionParams {
  float scale = 0.f;     // softmax scale; 0 means 1 / sqrt(head_dim)
  int num_threads = 0;   // 0: OpenMP default
};

namespace detail {

inline constexpr int kQueryTile = 16;
inline constexpr int kKeyBlock = 32;

template <class QT>
inline float load_f(const QT* p, std::size_t i) {
  return to_float(p[i]);
}

// One (item, kv_head, query tile) of attention. Rows are (query, q-head-in-group) pairs.
template <class QT, StorageType T, Allocator A, RetentionPolicy R>
void attend_tile(const KVHeadStore<T, A, R>& store, const AttentionPlan& plan, std::size_t item, int kv_head,
                 std::int32_t q0, std::int32_t nq, const QT* q, QT* out, float* lse, float scale) {
  const ModelShape& sh = store.shape();
  const int D = sh.head_dim, g = sh.group_size(), Hq = sh.num_q_heads;
  const HeadPolicy& pol = store.policy(plan.layer(), kv_head);
  const PlanSlot& slot = plan.slot(item, kv_head);
  const auto& pool = store.pool();
  const int rows = nq * g;

  // Per-thread scratch: queries, accumulators, scores and one converted K/V block.
  thread_local std::vector<float> qf, acc, kb, vb, sc;
  thread_local std::vector<float> m, l;
  thread_local std::vector<std::int32_t> qpos;
  qf.assign(static_cast<std::size_t>(rows) * D, 0.f);
  acc.assign(static_cast<std::size_t>(rows) * D, 0.f);
  m.assign(static_cast<std::size_t>(rows), -std::numeric_limits<float>::infinity());
  l.assign(static_cast<std::size_t>(rows), 0.f);
  kb.resize(static_cast<std::size_t>(kKeyBlock) * D);
  vb.resize(static_cast<std::size_t>(kKeyBlock) * D);
  sc.resize(static_cast<std::size_t>(rows) * kKeyBlock);
  qpos.resize(static_cast<std::size_t>(nq));

  std::int32_t pmin = std::numeric_limits<std::int32_t>::max(), pmax = -1;
  for (int i = 0; i < nq; ++i) {
    qpos[i] = plan.q_positions()[static_cast<std::size_t>(q0 + i)];
    pmin = std::min(pmin, qpos[i]);
    pmax = std::max(pmax, qpos[i]);
    for (int j = 0; j < g; ++j) {
      const QT* src = q + (static_cast<std::size_t>(q0 + i) * Hq + static_cast<std::size_t>(kv_head) * g + j) * D;
      float* dst = &qf[(static_cast<std::size_t>(i) * g + j) * D];
      for (int d = 0; d < D; ++d) dst[d] = load_f(src, d) * scale;
    }
  }
  // Union of what the tile's queries can see: [0, sink_end) and [win_lo, pmax].
  const VisibleRanges lo_r = visible_ranges(pol, pmin);
  const VisibleRanges hi_r = visible_ranges(pol, pmax);
  const std::int64_t sink_end = std::max(lo_r.sink_end, hi_r.sink_end);
  const std::int64_t win_lo = lo_r.win_begin;

  const std::int32_t n_entries = slot.num_entries();
  for (std::int32_t ei = 0; ei < n_entries; ++ei) {
    const PageEntry& e = plan.entry(slot, ei);
    // Entries are position-ordered: nothing after pmax is visible to any query of the tile.
    if (e.pos0 > pmax) break;
    // Slot range of this entry some query may see.
    std::int64_t a = e.pos0, b = static_cast<std::int64_t>(e.pos0) + e.count;  // positions [a, b)
    b = std::min<std::int64_t>(b, pmax + 1);
    if (pol.is_local()) {
      const bool touches_sink = a < sink_end;
      const bool touches_win = b > win_lo;
      if (!touches_sink && !touches_win) continue;
      if (!touches_sink) a = std::max<std::int64_t>(a, win_lo);
      if (!touches_win) b = std::min<std::int64_t>(b, sink_end);
    }
    const T* kpage = pool.k_ptr(e.page_id);
    const T* vpage = pool.v_ptr(e.page_id);
    for (std::int64_t kb0 = a; kb0 < b; kb0 += kKeyBlock) {
      const int nk = static_cast<int>(std::min<std::int64_t>(kKeyBlock, b - kb0));
      const std::size_t slot0 = static_cast<std::size_t>(e.first + (kb0 - e.pos0));
      for (int j = 0; j < nk; ++j) {
        const T* kr = kpage + (slot0 + static_cast<std::size_t>(j)) * D;
        const T* vr = vpage + (slot0 + static_cast<std::size_t>(j)) * D;
        float* kd = &kb[static_cast<std::size_t>(j) * D];
        float* vd = &vb[static_cast<std::size_t>(j) * D];
#pragma omp simd
        for (int d = 0; d < D; ++d) kd[d] = to_float(kr[d]);
#pragma omp simd
        for (int d = 0; d < D; ++d) vd[d] = to_float(vr[d]);
      }
      for (int r = 0; r < rows; ++r) {
        const std::int32_t p = qpos[static_cast<std::size_t>(r / g)];
        // The block holds positions kb0 .. kb0 + nk - 1: this row sees two index ranges of it, found
        // analytically (the canonical rule), so the dot-product loops below carry no per-key branch.
        const VisibleRanges vr = visible_ranges(pol, p);
        const auto clip = [&](std::int64_t lo, std::int64_t hi) {
          return std::pair<int, int>{static_cast<int>(std::clamp<std::int64_t>(lo - kb0, 0, nk)),
                                     static_cast<int>(std::clamp<std::int64_t>(hi - kb0, 0, nk))};
        };
        const auto [s0, s1] = clip(0, vr.sink_end);
        const auto [w0, w1] = clip(vr.win_begin, vr.win_end);
        if (s0 == s1 && w0 == w1) continue;
        const float* qr = &qf[static_cast<std::size_t>(r) * D];
        float* s = &sc[static_cast<std::size_t>(r) * kKeyBlock];
        float bmax = -std::numeric_limits<float>::infinity();
        const auto score = [&](int j0, int j1) {
          for (int j = j0; j < j1; ++j) {
            const float* kd = &kb[static_cast<std::size_t>(j) * D];
            float dot = 0.f;
#pragma omp simd reduction(+ : dot)
            for (int d = 0; d < D; ++d) dot += qr[d] * kd[d];
            s[j] = dot;
            bmax = std::max(bmax, dot);
          }
        };
        score(s0, s1);
        score(w0, w1);
        const float m_new = std::max(m[r], bmax);
        const float alpha = std::exp(m[r] - m_new);  // exp(-inf) = 0 on the first visible block
        float* ar = &acc[static_cast<std::size_t>(r) * D];
        if (alpha != 1.f) {
#pragma omp simd
          for (int d = 0; d < D; ++d) ar[d] *= alpha;
        }
        float psum = 0.f;
        const auto accumulate = [&](int j0, int j1) {
          for (int j = j0; j < j1; ++j) {
            const float pj = std::exp(s[j] - m_new);
            psum += pj;
            const float* vd = &vb[static_cast<std::size_t>(j) * D];
#pragma omp simd
            for (int d = 0; d < D; ++d) ar[d] += pj * vd[d];
          }
        };
        accumulate(s0, s1);
        accumulate(w0, w1);
        l[r] = l[r] * alpha + psum;
        m[r] = m_new;
      }
    }
  }
  for (int r = 0; r < rows; ++r) {
    const int i = r / g, j = r % g;
    const std::size_t row = static_cast<std::size_t>(q0 + i) * Hq + static_cast<std::size_t>(kv_head) * g + j;
    QT* dst = out + row * D;
    const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
    const float* ar = &acc[static_cast<std::size_t>(r) * D];
    for (int d = 0; d < D; ++d) {
      if constexpr (std::is_same_v<QT, float>) dst[d] = ar[d] * inv;
      else dst[d] = from_float<QT>(ar[d] * inv);
    }
    if (lse) lse[row] = l[r] > 0.f ? m[r] + std::log(l[r]) : -std::numeric_limits<float>::infinity();
  }
}

}  // namespace detail

// out[total_q, Hq, D] = attention of q[total_q, Hq, D] over the plan's sequences in the plan's layer.
// lse (optional, [total_q, Hq]) receives the natural-log sum of exp(scaled scores) per row.
// QT is the activation type (float, Half or BFloat16); storage is the store's T.
template <class QT, StorageType T, Allocator A, RetentionPolicy R>
void cpu_attention(const KVHeadStore<T, A, R>& store, const AttentionPlan& plan, std::span<const QT> q,
                   std::span<QT> out, std::span<float> lse = {}, AttentionParams params = {}) {
  static_assert(A::kHostAccessible, "cpu_attention needs a store whose pages live in host memory");
  const ModelShape& sh = store.shape();
  const std::size_t rows = static_cast<std::size_t>(plan.total_queries()) * sh.num_q_heads;
  require(plan.num_kv_heads() == sh.num_kv_heads, "cpu_attention: plan has num_kv_heads=", plan.num_kv_heads(),
          ", store has ", sh.num_kv_heads, " (plan built for another store?)");
  require(q.size() == rows * sh.head_dim, "cpu_attention: q has ", q.size(),
          " elements, expected total_queries*num_q_heads*head_dim = ", plan.total_queries(), "*", sh.num_q_heads,
          "*", sh.head_dim);
  require(out.size() == q.size(), "cpu_attention: out has ", out.size(), " elements, expected ", q.size());
  require(lse.empty() || lse.size() == rows, "cpu_attention: lse has ", lse.size(),
          " elements, expected total_queries*num_q_heads = ", rows, " (or none)");
  require(params.scale >= 0.f && std::isfinite(params.scale), "cpu_attention: scale=", params.scale,
          " must be finite and >= 0 (0 selects 1/sqrt(head_dim))");
  const float scale = params.scale > 0.f ? params.scale : 1.f / std::sqrt(static_cast<float>(sh.head_dim));

  struct Work {
    std::size_t item;
    int head;
    std::int32_t q0, nq;
  };
  std::vector<Work> work;
  const auto items = plan.items();
  for (std::size_t i = 0; i < items.size(); ++i)
    for (int h = 0; h < sh.num_kv_heads; ++h)
      for (std::int32_t t = 0; t < items[i].q_len; t += detail::kQueryTile)
        work.push_back(Work{i, h, items[i].q_begin + t, std::min(detail::kQueryTile, items[i].q_len - t)});

  const auto n_work = static_cast<std::int64_t>(work.size());
  float* lse_ptr = lse.empty() ? nullptr : lse.data();
#if defined(_OPENMP)
  const int threads = params.num_threads > 0 ? params.num_threads : omp_get_max_threads();
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
#endif
  for (std::int64_t w = 0; w < n_work; ++w) {
    const Work& wk = work[static_cast<std::size_t>(w)];
    detail::attend_tile<QT>(store, plan, wk.item, wk.head, wk.q0, wk.nq, q.data(), out.data(), lse_ptr, scale);
  }
}

}  // namespace redknot
