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

#include "redknot/attention_params.hpp"
#include "redknot/attention_plan.hpp"
#include "redknot/dtype.hpp"
#include "redknot/error.hpp"
#include "redknot/kv_head_store.hpp"
#include "redknot/rope.hpp"
#include "redknot/visibility.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace redknot {

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

// The visible hull of a tile's queries (visibility.hpp): what clip_entry() cuts each entry to.
inline VisibleHull<std::int64_t> tile_hull(const HeadPolicy& pol, std::span<const std::int32_t> qpos) {
  std::int32_t pmin = std::numeric_limits<std::int32_t>::max(), pmax = -1;
  for (const std::int32_t p : qpos) pmin = std::min(pmin, p), pmax = std::max(pmax, p);
  return visible_hull<std::int64_t>(pol, pmin, pmax);
}

// Positions [a, b) of an entry that some query of the tile may see; a >= b when none.
inline std::pair<std::int64_t, std::int64_t> clip_to_hull(const PageEntry& e, const HeadPolicy& pol,
                                                          const VisibleHull<std::int64_t>& h) {
  std::int64_t a = 0, b = 0;
  clip_entry(pol, e, h, a, b);
  return {a, b};
}

// Unnormalised state of one split of a tile, merged by merge_splits(): running max m, sum l, sum p.v acc.
struct SplitState {
  float* m;
  float* l;
  float* acc;
};

// One (item, kv_head, query tile) of attention over entries [e_begin, e_end) of the slot. Rows are (query,
// q-head-in-group) pairs, padded to a multiple of kRowBlock with zero rows whose results are dropped.
template <class QT, StorageType T, Allocator A>
void attend_tile(const KVHeadStore<T, A>& store, const AttentionPlan& plan, std::size_t item, int kv_head,
                 std::int32_t q0, std::int32_t nq, std::int32_t e_begin, std::int32_t e_end, const QT* q,
                 QT* out, float* lse, float scale, const SplitState* split) {
  const ModelShape& sh = store.shape();
  const int D = sh.head_dim, g = sh.group_size(), Hq = sh.num_q_heads;
  const HeadPolicy& pol = store.policy(plan.layer(), kv_head);
  const PlanSlot& slot = plan.slot(item, kv_head);
  const auto& pool = store.pool();
  const int rows = nq * g;
  const int rows_padded = (rows + kRowBlock - 1) / kRowBlock * kRowBlock;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();

  // Per-thread scratch: queries (as given and counter-rotated), accumulators, scores and one converted K
  // (transposed) / V block.
  thread_local std::vector<float> qf, qr, acc, kb, kt, vb, sc, m, l;
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

  for (int i = 0; i < nq; ++i) {
    qpos[i] = plan.q_positions()[static_cast<std::size_t>(q0 + i)];
    for (int j = 0; j < g; ++j) {
      const QT* src =
          q + (static_cast<std::size_t>(q0 + i) * Hq + static_cast<std::size_t>(kv_head) * g + j) * D;
      float* dst = &qf[(static_cast<std::size_t>(i) * g + j) * D];
      for (int d = 0; d < D; ++d) dst[d] = load_f(src, d) * scale;
    }
  }
  const VisibleHull<std::int64_t> hull =
      tile_hull(pol, std::span<const std::int32_t>(qpos.data(), qpos.size()));
  // Keys of a spliced chunk are stored rotated for rope_pos0.. while they sit at pos0..: a query at p scores
  // them as q_p . R(delta) k = (R(-delta) q_p) . k, so the tile's queries are counter-rotated once per run of
  // entries with one delta (never the keys: no key is rotated or rounded twice).
  std::int32_t cur_delta = 0;
  const float* qcur = qf.data();
  const auto counter_rotate = [&](std::int32_t delta) -> const float* {
    if (delta == 0) return qf.data();
    const RopeConfig& rc = *store.rope();
    const auto inv = store.rope_inv_freq();
    thread_local std::vector<RopeCosSin> cs;
    cs.resize(inv.size());
    for (std::size_t i = 0; i < inv.size(); ++i)
      cs[i] = rope_cos_sin(-static_cast<std::int64_t>(delta), inv[i]);
    qr.assign(qf.begin(), qf.end());
    for (int r = 0; r < rows; ++r) rope_rotate(rc, cs.data(), &qr[static_cast<std::size_t>(r) * D]);
    return qr.data();
  };

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
        score_block(qcur + static_cast<std::size_t>(r0) * D, kt.data(), D,
                    &sc[static_cast<std::size_t>(r0) * kKeyBlock]);
    } else {
      score_rows(qcur, rows, kb.data(), nk, D, sc.data());
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

  for (std::int32_t ei = e_begin; ei < e_end; ++ei) {
    const PageEntry& e = plan.entry(slot, ei);
    if (e.pos0 > hull.pmax) break;  // position order: nothing further is visible to the tile
    const auto [a, b] = clip_to_hull(e, pol, hull);
    if (a >= b) continue;
    if (e.rope_delta() != cur_delta) {  // keys rotated for other positions: score them with other queries
      flush();
      cur_delta = e.rope_delta();
      qcur = counter_rotate(cur_delta);
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
  if (split) {  // one split of several: hand the unnormalised state to merge_splits()
    std::copy(m.begin(), m.end(), split->m);
    std::copy(l.begin(), l.end(), split->l);
    std::copy(acc.begin(), acc.begin() + static_cast<std::ptrdiff_t>(rows) * D, split->acc);
    return;
  }
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

// Combines n split states of one tile (rows x D each, laid out consecutively) into the tile's output rows:
// out = sum_s exp(m_s - m) acc_s / sum_s exp(m_s - m) l_s, lse = m + log(sum ...), m = max_s m_s.
template <class QT>
void merge_splits(const float* m, const float* l, const float* acc, int n, int rows, int g, int D, int Hq,
                  int kv_head, std::int32_t q0, QT* out, float* lse) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  thread_local std::vector<float> o;
  o.resize(static_cast<std::size_t>(D));
  for (int r = 0; r < rows; ++r) {
    float mx = kNegInf;
    for (int s = 0; s < n; ++s) mx = std::max(mx, m[s * rows + r]);
    std::fill(o.begin(), o.end(), 0.f);
    float sum = 0.f;
    if (mx != kNegInf)
      for (int s = 0; s < n; ++s) {
        const float w = std::exp(m[s * rows + r] - mx);  // 0 for a split that saw nothing
        sum += w * l[s * rows + r];
        const float* a = acc + (static_cast<std::size_t>(s) * rows + r) * D;
        for (int d = 0; d < D; ++d) o[static_cast<std::size_t>(d)] += w * a[d];
      }
    const int i = r / g, j = r % g;
    const std::size_t row = static_cast<std::size_t>(q0 + i) * Hq + static_cast<std::size_t>(kv_head) * g + j;
    const float inv = sum > 0.f ? 1.f / sum : 0.f;
    for (int d = 0; d < D; ++d) {
      if constexpr (std::is_same_v<QT, float>)
        out[row * D + d] = o[static_cast<std::size_t>(d)] * inv;
      else
        out[row * D + d] = from_float<QT>(o[static_cast<std::size_t>(d)] * inv);
    }
    if (lse) lse[row] = sum > 0.f ? mx + std::log(sum) : kNegInf;
  }
}

}  // namespace detail

// out[total_q, Hq, D] = attention of q[total_q, Hq, D] over the plan's sequences in the plan's layer.
// lse (optional, [total_q, Hq]) receives the natural-log sum of exp(scaled scores) per row.
// QT is the activation type (float, Half or BFloat16); storage is the store's T.
template <class QT, StorageType T, Allocator A>
void cpu_attention(const KVHeadStore<T, A>& store, const AttentionPlan& plan, std::span<const QT> q,
                   std::span<QT> out, std::span<float> lse = {}, AttentionParams params = {}) {
  static_assert(A::kHostAccessible, "cpu_attention needs a store whose pages live in host memory");
  const ModelShape& sh = store.shape();
  const std::size_t rows = static_cast<std::size_t>(plan.total_queries()) * sh.num_q_heads;
  REDKNOT_CHECK(plan.num_kv_heads() == sh.num_kv_heads, InvalidArgument,
                "cpu_attention: plan has num_kv_heads=", plan.num_kv_heads(), ", store has ", sh.num_kv_heads,
                " (plan built for another store?)");
  REDKNOT_CHECK(q.size() == rows * sh.head_dim, InvalidArgument, "cpu_attention: q has ", q.size(),
                " elements, expected total_queries*num_q_heads*head_dim = ", plan.total_queries(), "*",
                sh.num_q_heads, "*", sh.head_dim);
  REDKNOT_CHECK(out.size() == q.size(), InvalidArgument, "cpu_attention: out has ", out.size(),
                " elements, expected ", q.size());
  REDKNOT_CHECK(lse.empty() || lse.size() == rows, InvalidArgument, "cpu_attention: lse has ", lse.size(),
                " elements, expected total_queries*num_q_heads = ", rows, " (or none)");
  check_attention_params(params, "cpu_attention");
  const float scale = params.scale > 0.f ? params.scale : 1.f / std::sqrt(static_cast<float>(sh.head_dim));

  // Work items: (item, kv_head, query tile), cut by split-KV into entry ranges of ~kv_chunk keys each.
  struct Work {
    std::size_t item;
    int head;
    std::int32_t q0, nq, e_begin, e_end;
    std::int64_t split_group;  // -1: writes its output directly; else index into groups
  };
  struct Group {
    std::size_t item;
    int head;
    std::int32_t q0, nq, n_splits;
    std::size_t state;  // offset of the first split's rows in the m / l arrays
  };
  const int D = sh.head_dim, g = sh.group_size();
  std::vector<Work> work;
  std::vector<Group> groups;
  std::size_t state_rows = 0;
  std::vector<std::int64_t> keys;  // candidate keys per entry, for the split points
  const auto items = plan.items();
  for (std::size_t i = 0; i < items.size(); ++i)
    for (int h = 0; h < sh.num_kv_heads; ++h) {
      const PlanSlot& slot = plan.slot(i, h);
      const HeadPolicy& pol = store.policy(plan.layer(), h);
      for (std::int32_t t = 0; t < items[i].q_len; t += detail::kQueryTile) {
        const std::int32_t q0 = items[i].q_begin + t, nq = std::min(detail::kQueryTile, items[i].q_len - t);
        const std::int32_t n_entries = slot.num_entries();
        std::int64_t total = 0;
        if (params.kv_chunk > 0) {
          const VisibleHull<std::int64_t> hull = detail::tile_hull(
              pol, plan.q_positions().subspan(static_cast<std::size_t>(q0), static_cast<std::size_t>(nq)));
          keys.assign(static_cast<std::size_t>(n_entries), 0);
          for (std::int32_t e = 0; e < n_entries; ++e) {
            const auto [a, b] = detail::clip_to_hull(plan.entry(slot, e), pol, hull);
            keys[static_cast<std::size_t>(e)] = std::max<std::int64_t>(0, b - a);
            total += keys[static_cast<std::size_t>(e)];
          }
        }
        const std::int64_t n_splits =
            params.kv_chunk > 0 ? std::clamp<std::int64_t>(total / params.kv_chunk, 1, 64) : 1;
        if (n_splits == 1) {
          work.push_back(Work{i, h, q0, nq, 0, n_entries, -1});
          continue;
        }
        // Cut at entry boundaries once each range holds about total / n_splits keys.
        const auto gi = static_cast<std::int64_t>(groups.size());
        std::int32_t begin = 0, made = 0;
        std::int64_t acc_keys = 0;
        for (std::int32_t e = 0; e < n_entries; ++e) {
          acc_keys += keys[static_cast<std::size_t>(e)];
          if (acc_keys * n_splits >= total * (made + 1) && made + 1 < n_splits) {
            work.push_back(Work{i, h, q0, nq, begin, e + 1, gi});
            begin = e + 1;
            ++made;
          }
        }
        work.push_back(Work{i, h, q0, nq, begin, n_entries, gi});
        ++made;
        groups.push_back(Group{i, h, q0, nq, made, state_rows});
        state_rows += static_cast<std::size_t>(made) * static_cast<std::size_t>(nq * g);
      }
    }
  std::vector<float> st_m(state_rows), st_l(state_rows), st_acc(state_rows * static_cast<std::size_t>(D));
  std::vector<std::int32_t> next_split(groups.size(), 0);  // split index of each work item within its group
  std::vector<detail::SplitState> states(work.size());
  for (std::size_t w = 0; w < work.size(); ++w) {
    if (work[w].split_group < 0) continue;
    const Group& gr = groups[static_cast<std::size_t>(work[w].split_group)];
    const std::size_t rows0 =
        gr.state + static_cast<std::size_t>(next_split[static_cast<std::size_t>(work[w].split_group)]++) *
                       static_cast<std::size_t>(gr.nq * g);
    states[w] = detail::SplitState{&st_m[rows0], &st_l[rows0], &st_acc[rows0 * static_cast<std::size_t>(D)]};
  }

  const auto n_work = static_cast<std::int64_t>(work.size());
  const auto n_groups = static_cast<std::int64_t>(groups.size());
  float* lse_ptr = lse.empty() ? nullptr : lse.data();
#if defined(_OPENMP)
  const int threads = params.num_threads > 0 ? params.num_threads : omp_get_max_threads();
#pragma omp parallel num_threads(threads)
#endif
  {
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
    for (std::int64_t w = 0; w < n_work; ++w) {
      const Work& wk = work[static_cast<std::size_t>(w)];
      detail::attend_tile<QT>(store, plan, wk.item, wk.head, wk.q0, wk.nq, wk.e_begin, wk.e_end, q.data(),
                              out.data(), lse_ptr, scale,
                              wk.split_group < 0 ? nullptr : &states[static_cast<std::size_t>(w)]);
    }
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
    for (std::int64_t gi = 0; gi < n_groups; ++gi) {
      const Group& gr = groups[static_cast<std::size_t>(gi)];
      const int rows = gr.nq * g;
      detail::merge_splits<QT>(&st_m[gr.state], &st_l[gr.state],
                               &st_acc[gr.state * static_cast<std::size_t>(D)], gr.n_splits, rows, g, D,
                               sh.num_q_heads, gr.head, gr.q0, out.data(), lse_ptr);
    }
  }
}

}  // namespace redknot
