// CPU SegPagedAttention: prefill (a chunk of queries) and decode (one query) over a head-aware store.
//
// Work item = (batch item, kv_head, tile of up to kQueryTile queries). The g = Hq / Hk query heads of a kv
// head are processed together, so every K/V row is read (and converted to fp32) once per tile for all of
// them: GQA without duplication. Keys are visited through the plan's page entries; per entry, only the slots
// some query of the tile can see (canonical rule, visibility.hpp) are touched, so local heads cost O(sink +
// window). Accumulation is fp32 with an online (streaming) softmax; storage may be fp32, fp16 or bf16.
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
  float scale = 0.f;    // softmax scale; 0 means 1 / sqrt(head_dim)
  int num_threads = 0;  // 0: OpenMP default
};

namespace detail {

inline constexpr int kQueryTile = 16;  // queries per work item (x g query heads = rows)
inline constexpr int kKeyBlock = 32;   // keys converted to fp32 and scored together
inline constexpr int kRowBlock = 4;    // rows sharing each loaded K/V vector in the micro-kernels
inline constexpr int kColBlock = 16;   // fp32 lanes per micro-kernel accumulator row

template <class QT>
inline float load_f(const QT* p, std::size_t i) {
  return to_float(p[i]);
}

// S[r][j] = sum_d Q[r][d] * Kt[d][j] for kRowBlock rows and kKeyBlock keys. K is stored transposed so each
// loaded K vector serves kRowBlock rows with broadcast q values, and no horizontal sums are needed.
inline void score_block(const float* q, const float* kt, int D, float* s) {
  for (int jc = 0; jc < kKeyBlock; jc += kColBlock) {
    float acc[kRowBlock][kColBlock] = {};
    for (int d = 0; d < D; ++d) {
      const float* k = kt + static_cast<std::size_t>(d) * kKeyBlock + jc;
      for (int r = 0; r < kRowBlock; ++r) {
        const float qv = q[static_cast<std::size_t>(r) * D + d];
#pragma omp simd
        for (int c = 0; c < kColBlock; ++c) acc[r][c] += qv * k[c];
      }
    }
    for (int r = 0; r < kRowBlock; ++r)
      for (int c = 0; c < kColBlock; ++c) s[r * kKeyBlock + jc + c] = acc[r][c];
  }
}

// Decode-sized tiles (few rows): S[r][j] = q_r . k_j with K row-major, one SIMD reduction per (row, key).
// Cheaper than transposing K when only a handful of rows share each key.
inline void score_rows(const float* q, int rows, const float* kb, int nk, int D, float* s) {
  for (int r = 0; r < rows; ++r) {
    const float* qr = q + static_cast<std::size_t>(r) * D;
    for (int j = 0; j < nk; ++j) {
      const float* kj = kb + static_cast<std::size_t>(j) * D;
      float dot = 0.f;
#pragma omp simd reduction(+ : dot)
      for (int d = 0; d < D; ++d) dot += qr[d] * kj[d];
      s[r * kKeyBlock + j] = dot;
    }
  }
}

// O[r][dc, dc + W) += sum_j P[r][j] * V[j][dc, dc + W) for kRowBlock rows over nk keys: each loaded V vector
// serves kRowBlock rows.
template <int W>
inline void accumulate_cols(const float* p, const float* v, int nk, int D, int dc, float* o) {
  float acc[kRowBlock][W];
  for (int r = 0; r < kRowBlock; ++r)
    for (int c = 0; c < W; ++c) acc[r][c] = o[static_cast<std::size_t>(r) * D + dc + c];
  for (int j = 0; j < nk; ++j) {
    const float* vj = v + static_cast<std::size_t>(j) * D + dc;
    for (int r = 0; r < kRowBlock; ++r) {
      const float pv = p[r * kKeyBlock + j];
#pragma omp simd
      for (int c = 0; c < W; ++c) acc[r][c] += pv * vj[c];
    }
  }
  for (int r = 0; r < kRowBlock; ++r)
    for (int c = 0; c < W; ++c) o[static_cast<std::size_t>(r) * D + dc + c] = acc[r][c];
}

// O[r][:] += sum_j P[r][j] * V[j][:] for kRowBlock rows over nk keys.
// head_dim is a multiple of 8 but not always of kColBlock (8, 24, 40, ...): the last 8 columns then take a
// narrower block. (Fix by the C-ABI/Python work: full kColBlock blocks read and wrote past the rows for
// head_dim % 16 == 8, found by the head_dim=8 cases of python/tests and examples/c_embed.)
inline void accumulate_block(const float* p, const float* v, int nk, int D, float* o) {
  static_assert(kColBlock == 16, "the tail below assumes head_dim % kColBlock is 0 or 8");
  int dc = 0;
  for (; dc + kColBlock <= D; dc += kColBlock) accumulate_cols<kColBlock>(p, v, nk, D, dc, o);
  if (dc < D) accumulate_cols<8>(p, v, nk, D, dc, o);
}

// One (item, kv_head, query tile) of attention. Rows are (query, q-head-in-group) pairs, padded to a multiple
// of kRowBlock with zero rows whose results are dropped.
template <class QT, StorageType T, Allocator A, RetentionPolicy R>
void attend_tile(const KVHeadStore<T, A, R>& store, const AttentionPlan& plan, std::size_t item, int kv_head,
                 std::int32_t q0, std::int32_t nq, const QT* q, QT* out, float* lse, float scale) {
  const ModelShape& sh = store.shape();
  const int D = sh.head_dim, g = sh.group_size(), Hq = sh.num_q_heads;
  const HeadPolicy& pol = store.policy(plan.layer(), kv_head);
  const PlanSlot& slot = plan.slot(item, kv_head);
  const auto& pool = store.pool();
  const int rows = nq * g;
  const int rows_padded = (rows + kRowBlock - 1) / kRowBlock * kRowBlock;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();

  // Per-thread scratch: queries, accumulators, scores and one converted K (transposed) / V block.
  thread_local std::vector<float> qf, acc, kb, kt, vb, sc, m, l;
  thread_local std::vector<std::int32_t> qpos;
  qf.assign(static_cast<std::size_t>(rows_padded) * D, 0.f);
  acc.assign(static_cast<std::size_t>(rows_padded) * D, 0.f);
  m.assign(static_cast<std::size_t>(rows), kNegInf);
  l.assign(static_cast<std::size_t>(rows), 0.f);
  kb.assign(static_cast<std::size_t>(kKeyBlock) * D, 0.f);
  kt.assign(static_cast<std::size_t>(kKeyBlock) * D, 0.f);
  // Transposing K pays off only when enough rows share each key block (prefill tiles, wide GQA groups).
  const bool transpose_k = rows_padded >= 2 * kRowBlock;
  vb.assign(static_cast<std::size_t>(kKeyBlock) * D, 0.f);
  sc.resize(static_cast<std::size_t>(rows_padded) * kKeyBlock);
  qpos.resize(static_cast<std::size_t>(nq));

  std::int32_t pmin = std::numeric_limits<std::int32_t>::max(), pmax = -1;
  for (int i = 0; i < nq; ++i) {
    qpos[i] = plan.q_positions()[static_cast<std::size_t>(q0 + i)];
    pmin = std::min(pmin, qpos[i]);
    pmax = std::max(pmax, qpos[i]);
    for (int j = 0; j < g; ++j) {
      const QT* src =
          q + (static_cast<std::size_t>(q0 + i) * Hq + static_cast<std::size_t>(kv_head) * g + j) * D;
      float* dst = &qf[(static_cast<std::size_t>(i) * g + j) * D];
      for (int d = 0; d < D; ++d) dst[d] = load_f(src, d) * scale;
    }
  }
  // Union of what the tile's queries can see: [0, sink_end) and [win_lo, pmax].
  const VisibleRanges lo_r = visible_ranges(pol, pmin);
  const VisibleRanges hi_r = visible_ranges(pol, pmax);
  const std::int64_t sink_end = std::max(lo_r.sink_end, hi_r.sink_end);
  const std::int64_t win_lo = lo_r.win_begin;

  // Keys are gathered from successive page entries into blocks of kKeyBlock (pages are often smaller than a
  // block), converted to fp32 once and scored against all rows; kpos holds each gathered key's position.
  thread_local std::vector<std::int32_t> kpos;
  kpos.assign(kKeyBlock, 0);
  int nk = 0;
  const auto flush = [&] {
    if (nk == 0) return;
    if (nk < kKeyBlock)  // stale keys of a previous block would score as real ones: zero them
      std::fill(vb.begin() + static_cast<std::ptrdiff_t>(nk) * D, vb.end(), 0.f);
    if (transpose_k) {
      for (int j = 0; j < kKeyBlock; ++j)
        for (int d = 0; d < D; ++d)
          kt[static_cast<std::size_t>(d) * kKeyBlock + j] =
              j < nk ? kb[static_cast<std::size_t>(j) * D + d] : 0.f;
      for (int r0 = 0; r0 < rows_padded; r0 += kRowBlock)
        score_block(&qf[static_cast<std::size_t>(r0) * D], kt.data(), D,
                    &sc[static_cast<std::size_t>(r0) * kKeyBlock]);
    } else {
      score_rows(qf.data(), rows, kb.data(), nk, D, sc.data());
    }
    // Online softmax per row over the keys it sees (canonical rule); hidden keys get probability 0.
    for (int r = 0; r < rows; ++r) {
      float* s = &sc[static_cast<std::size_t>(r) * kKeyBlock];
      const std::int32_t p = qpos[static_cast<std::size_t>(r / g)];
      float bmax = kNegInf;
      for (int j = 0; j < nk; ++j) {
        s[j] = is_visible(pol, p, kpos[static_cast<std::size_t>(j)]) ? s[j] : kNegInf;
        bmax = std::max(bmax, s[j]);
      }
      if (bmax == kNegInf) {
        std::fill(s, s + kKeyBlock, 0.f);
        continue;
      }
      const float m_new = std::max(m[r], bmax);
      const float alpha = std::exp(m[r] - m_new);  // exp(-inf) = 0 on the first visible block
      float psum = 0.f;
      for (int j = 0; j < nk; ++j) {
        const float pj = s[j] == kNegInf ? 0.f : std::exp(s[j] - m_new);
        s[j] = pj;
        psum += pj;
      }
      std::fill(s + nk, s + kKeyBlock, 0.f);
      if (alpha != 1.f) {
        float* ar = &acc[static_cast<std::size_t>(r) * D];
#pragma omp simd
        for (int d = 0; d < D; ++d) ar[d] *= alpha;
      }
      l[r] = l[r] * alpha + psum;
      m[r] = m_new;
    }
    for (int r = rows; r < rows_padded; ++r)
      std::fill(&sc[static_cast<std::size_t>(r) * kKeyBlock],
                &sc[static_cast<std::size_t>(r + 1) * kKeyBlock], 0.f);
    for (int r0 = 0; r0 < rows_padded; r0 += kRowBlock)
      accumulate_block(&sc[static_cast<std::size_t>(r0) * kKeyBlock], vb.data(), nk, D,
                       &acc[static_cast<std::size_t>(r0) * D]);
    nk = 0;
  };

  const std::int32_t n_entries = slot.num_entries();
  for (std::int32_t ei = 0; ei < n_entries; ++ei) {
    const PageEntry& e = plan.entry(slot, ei);
    // Entries are position-ordered: nothing after pmax is visible to any query of the tile.
    if (e.pos0 > pmax) break;
    // Positions [a, b) of this entry some query of the tile may see.
    std::int64_t a = e.pos0, b = static_cast<std::int64_t>(e.pos0) + e.count;
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
    for (std::int64_t pos = a; pos < b; ++pos) {
      const std::size_t slot_idx = static_cast<std::size_t>(e.first + (pos - e.pos0));
      const T* kr = kpage + slot_idx * D;
      const T* vr = vpage + slot_idx * D;
      float* kd = &kb[static_cast<std::size_t>(nk) * D];
      float* vd = &vb[static_cast<std::size_t>(nk) * D];
#pragma omp simd
      for (int d = 0; d < D; ++d) kd[d] = to_float(kr[d]);
#pragma omp simd
      for (int d = 0; d < D; ++d) vd[d] = to_float(vr[d]);
      kpos[static_cast<std::size_t>(nk)] = static_cast<std::int32_t>(pos);
      if (++nk == kKeyBlock) flush();
    }
  }
  flush();
  for (int r = 0; r < rows; ++r) {
    const int i = r / g, j = r % g;
    const std::size_t row = static_cast<std::size_t>(q0 + i) * Hq + static_cast<std::size_t>(kv_head) * g + j;
    QT* dst = out + row * D;
    const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
    const float* ar = &acc[static_cast<std::size_t>(r) * D];
    for (int d = 0; d < D; ++d) {
      if constexpr (std::is_same_v<QT, float>)
        dst[d] = ar[d] * inv;
      else
        dst[d] = from_float<QT>(ar[d] * inv);
    }
    if (lse) lse[row] = l[r] > 0.f ? m[r] + std::log(l[r]) : kNegInf;
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
  require(plan.num_kv_heads() == sh.num_kv_heads,
          "cpu_attention: plan has num_kv_heads=", plan.num_kv_heads(), ", store has ", sh.num_kv_heads,
          " (plan built for another store?)");
  require(q.size() == rows * sh.head_dim, "cpu_attention: q has ", q.size(),
          " elements, expected total_queries*num_q_heads*head_dim = ", plan.total_queries(), "*",
          sh.num_q_heads, "*", sh.head_dim);
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
    detail::attend_tile<QT>(store, plan, wk.item, wk.head, wk.q0, wk.nq, q.data(), out.data(), lse_ptr,
                            scale);
  }
}

}  // namespace redknot
