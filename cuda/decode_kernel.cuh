// Decode attention kernels (templates), instantiated per dtype in decode_f16.cu and decode_bf16.cu so that
// the two halves compile in parallel; the plan kernels and the host entry points are in decode.cu.
#pragma once

#include <cmath>
#include <string>
#include <type_traits>

#include "kernel_utils.cuh"
#include "redknot/cuda/decode.hpp"

namespace redknot::cuda::detail {

constexpr int kDecodeThreads = 128;
constexpr int kStage = kDecodeThreads;  // entries staged per round

// Kernel shape. One CTA of 128 threads per chunk. A K (or V) row of head_dim 16-bit values is read by D / 8
// threads with one 16-byte load each; the CTA thus holds 128 / (D / 8) "row groups" (8 for D = 128, 16 for
// D = 64), each running its own online softmax over the keys it is given, with the g query heads of the unit
// in registers. Row groups are merged through shared memory at the end. The chunk's page entries are staged
// 128 at a time into shared memory (one per thread: clip to the visible hull, block prefix sum of the key
// counts; rules.hpp) so that keys are spread evenly over row groups however partial the pages are.

// Out of line on purpose: the counter-rotation runs only where a key's rope delta changes (chunk boundaries),
// and inlined its fp64 sincos would take registers from the hot loop.
__device__ __noinline__ inline float decode_counter_rotated_dim(const float* q, int d, int half,
                                                                RopePairing pairing, const double* inv_freq,
                                                                int delta) {
  return counter_rotated_dim(q, d, half, pairing, inv_freq, delta);
}

template <DType K, int D, int G>
struct DecodeCfg {
  static constexpr int kLanesPerRow = D / 8;
  static constexpr int kGroups = kDecodeThreads / kLanesPerRow;
  // Keys per row group per iteration: several independent 16-byte loads in flight per thread, fewer when the
  // GQA group is large (registers: G * 8 accumulators + G * 8 query values per thread).
  static constexpr int kBatch = G >= 8 ? 2 : 4;
  static constexpr int kKeysPerIter = kGroups * kBatch;
};

template <DType K, int D, int G>
__global__ void __launch_bounds__(kDecodeThreads)
    decode_kernel(DecodeParams p, float qk_scale_log2, const int32_t* __restrict__ chunk_offset,
                  const DecodeChunk* __restrict__ chunks, int units, float* __restrict__ partial_out,
                  float* __restrict__ partial_lse) {
  using Cfg = DecodeCfg<K, D, G>;
  using T = typename KvTraits<K>::T;
  constexpr int L = Cfg::kLanesPerRow;
  constexpr int NG = Cfg::kGroups;
  constexpr int B = Cfg::kBatch;

  __shared__ int32_t s_row[kStage];    // pool row (page_id * 2 * page_size + slot) of the first candidate key
  __shared__ int32_t s_pos[kStage];    // its position
  __shared__ int32_t s_start[kStage];  // exclusive prefix of candidate key counts
  __shared__ int32_t s_delta[kStage];  // its entry's rope_delta (keys of a chunk spliced elsewhere)
  __shared__ float s_q[G][D];          // the scaled queries as given: the source of counter-rotations
  __shared__ int32_t s_total;
  __shared__ float s_m[NG][G], s_l[NG][G];
  __shared__ float s_acc[NG][G][D];
  using BlockScan = BlockScanOf<int, kDecodeThreads>;
  __shared__ typename BlockScan::TempStorage s_scan;

  const int total_chunks = units > 0 ? chunk_offset[units] : 0;
  const int chunk_id = blockIdx.x;
  if (chunk_id >= total_chunks) return;  // the grid is sized for the worst case (graph-capturable)
  const DecodeChunk ck = chunks[chunk_id];
  const int Hk = p.kv.num_kv_heads;
  const int item = ck.unit / Hk, kv_head = ck.unit % Hk;
  const PlanSlot slot = p.kv.slots[ck.unit];
  const HeadPolicy pol = p.kv.policies[kv_head];
  const int q_pos = p.q_pos[item];
  const int ps = p.kv.page_size;
  const T* __restrict__ pool = static_cast<const T*>(p.kv.pool);

  const int tid = threadIdx.x;
  const int grp = tid / L, lane_d = tid % L;  // row group; which 8 of the D values this thread owns

  // Queries of the G heads, pre-scaled by scale * log2(e) so the softmax runs on exp2.
  float qf[G][8];
#pragma unroll
  for (int h = 0; h < G; ++h) {
    const T* qp = static_cast<const T*>(p.q) +
                  (static_cast<long long>(item) * p.num_q_heads + kv_head * G + h) * D + lane_d * 8;
    unpack8<K>(*reinterpret_cast<const uint4*>(qp), qf[h]);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      qf[h][i] *= qk_scale_log2;
      if (grp == 0) s_q[h][lane_d * 8 + i] = qf[h][i];  // visible after the first staging round's barrier
    }
  }
  // Keys stored rotated for other positions than they sit at (rope_delta != 0) are scored with the queries
  // counter-rotated by -delta: qf holds the queries for `q_delta`, recomputed from s_q when a key's entry
  // has another delta (at chunk boundaries only: entries are position-ordered).
  int q_delta = 0;
  const auto rotate_queries = [&](int delta) {
#pragma unroll
    for (int h = 0; h < G; ++h)
#pragma unroll
      for (int i = 0; i < 8; ++i)
        qf[h][i] = delta == 0 ? s_q[h][lane_d * 8 + i]
                              : decode_counter_rotated_dim(s_q[h], lane_d * 8 + i, p.kv.rope_half,
                                                           p.kv.rope_pairing, p.kv.rope_inv_freq, delta);
    q_delta = delta;
  };

  float m[G], l[G], acc[G][8];
#pragma unroll
  for (int h = 0; h < G; ++h) {
    m[h] = -INFINITY;
    l[h] = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[h][i] = 0.f;
  }

  const VisibleHull<int> hull = visible_hull<int>(pol, q_pos, q_pos);
  for (int e0 = ck.entry_begin; e0 < ck.entry_end; e0 += kStage) {
    // Stage: one entry per thread, clipped to what the query can see.
    int n = 0, row = 0, pos = 0, delta = 0;
    if (e0 + tid < ck.entry_end) {
      const PageEntry e = plan_entry(p.kv.arena, slot, e0 + tid);
      stage_entry(pol, e, hull, ps, n, row, pos);
      delta = e.rope_delta();
    }
    int start, total;
    BlockScan(s_scan).ExclusiveSum(n, start, total);
    s_row[tid] = row;
    s_pos[tid] = pos;
    s_start[tid] = start;
    s_delta[tid] = delta;
    if (tid == 0) s_total = total;
    __syncthreads();
    const int nkeys = s_total;

    for (int t0 = 0; t0 < nkeys; t0 += Cfg::kKeysPerIter) {
      uint4 kv_k[B], kv_v[B];
      int kpos[B], kdelta[B];
      // The B keys of this row group are consecutive: one binary search (last staged entry whose start <= t;
      // starts are an exclusive prefix sum, so an empty entry shares its start with the next one and the
      // search never stops on it), then step forward across entry boundaries.
      const int t_first = t0 + grp * B;
      int idx = find_staged(s_start, kStage, t_first);
#pragma unroll
      for (int j = 0; j < B; ++j) {
        const int t = t_first + j;
        kpos[j] = -1;
        kdelta[j] = q_delta;
        kv_k[j] = make_uint4(0, 0, 0, 0);
        kv_v[j] = make_uint4(0, 0, 0, 0);
        if (t < nkeys) {
          idx = step_staged(s_start, kStage, idx, t);
          const int off = t - s_start[idx];
          const long long r = static_cast<long long>(s_row[idx]) + off;
          kpos[j] = s_pos[idx] + off;
          kdelta[j] = s_delta[idx];
          kv_k[j] = ldg_nc(pool + r * D + lane_d * 8);
          kv_v[j] = ldg_nc(pool + (r + ps) * D + lane_d * 8);
        }
      }
      float s[B][G];
#pragma unroll
      for (int j = 0; j < B; ++j) {
        float kf[8];
        unpack8<K>(kv_k[j], kf);
        if (kdelta[j] != q_delta)
          rotate_queries(kdelta[j]);  // the lanes of a row share the key: no divergence
                                      // inside a row before the shuffles below
#pragma unroll
        for (int h = 0; h < G; ++h) {
          float d = 0.f;
#pragma unroll
          for (int i = 0; i < 8; ++i) d = fmaf(qf[h][i], kf[i], d);
#pragma unroll
          for (int off = L / 2; off > 0; off >>= 1) d += __shfl_xor_sync(0xffffffffu, d, off);
          s[j][h] = (kpos[j] >= 0 && is_visible(pol, q_pos, kpos[j])) ? d : -INFINITY;
        }
      }
#pragma unroll
      for (int h = 0; h < G; ++h) {
        float mb = s[0][h];
#pragma unroll
        for (int j = 1; j < B; ++j) mb = fmaxf(mb, s[j][h]);
        const float m_new = fmaxf(m[h], mb);
        if (m_new == -INFINITY) continue;  // nothing visible yet for this head
        const float alpha = exp2f(m[h] - m_new);
        float pj[B], psum = 0.f;
#pragma unroll
        for (int j = 0; j < B; ++j) {
          pj[j] = exp2f(s[j][h] - m_new);
          psum += pj[j];
        }
        l[h] = l[h] * alpha + psum;
        m[h] = m_new;
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[h][i] *= alpha;
#pragma unroll
        for (int j = 0; j < B; ++j) {
          float vf[8];
          unpack8<K>(kv_v[j], vf);
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[h][i] = fmaf(pj[j], vf[i], acc[h][i]);
        }
      }
    }
    __syncthreads();  // before the next round overwrites the staged entries
  }

  // Merge the row groups.
#pragma unroll
  for (int h = 0; h < G; ++h) {
    if (lane_d == 0) {
      s_m[grp][h] = m[h];
      s_l[grp][h] = l[h];
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) s_acc[grp][h][lane_d * 8 + i] = acc[h][i];
  }
  __syncthreads();
  const int nchunks = chunk_offset[ck.unit + 1] - chunk_offset[ck.unit];
  for (int idx = tid; idx < G * D; idx += kDecodeThreads) {
    const int h = idx / D, d = idx % D;
    float M = -INFINITY;
#pragma unroll
    for (int g = 0; g < NG; ++g) M = fmaxf(M, s_m[g][h]);
    float Lsum = 0.f, O = 0.f;
    if (M != -INFINITY) {
#pragma unroll
      for (int g = 0; g < NG; ++g) {
        const float w = exp2f(s_m[g][h] - M);  // exp2(-inf) = 0 for empty groups
        Lsum += s_l[g][h] * w;
        O += s_acc[g][h][d] * w;
      }
    }
    const float o = Lsum > 0.f ? O / Lsum : 0.f;
    const float lse = Lsum > 0.f ? (M + log2f(Lsum)) * kLn2 : -INFINITY;
    const long long qrow = static_cast<long long>(item) * p.num_q_heads + kv_head * G + h;
    if (nchunks == 1) {
      T* out = static_cast<T*>(p.out) + qrow * D + d;
      if constexpr (K == DType::kBF16)
        *out = __float2bfloat16_rn(o);
      else
        *out = __float2half_rn(o);
      if (d == 0 && p.lse) p.lse[qrow] = lse;
    } else {
      partial_out[(static_cast<long long>(chunk_id) * G + h) * D + d] = o;
      if (d == 0) partial_lse[static_cast<long long>(chunk_id) * G + h] = lse;
    }
  }
}

// One CTA per unit: merge its chunks (natural-log LSE weights). Units with one chunk were written directly.
template <DType K, int D, int G>
__global__ void __launch_bounds__(kDecodeThreads)
    decode_merge_kernel(DecodeParams p, const int32_t* __restrict__ chunk_offset, int units,
                        const float* __restrict__ partial_out, const float* __restrict__ partial_lse) {
  using T = typename KvTraits<K>::T;
  const int u = blockIdx.x;
  if (u >= units) return;
  const int c0 = chunk_offset[u], n = chunk_offset[u + 1] - c0;
  if (n <= 1) return;
  const int Hk = p.kv.num_kv_heads;
  const int item = u / Hk, kv_head = u % Hk;
  for (int idx = threadIdx.x; idx < G * D; idx += blockDim.x) {
    const int h = idx / D, d = idx % D;
    float M = -INFINITY;
    for (int c = 0; c < n; ++c) M = fmaxf(M, partial_lse[static_cast<long long>(c0 + c) * G + h]);
    float Lsum = 0.f, O = 0.f;
    if (M != -INFINITY) {
      for (int c = 0; c < n; ++c) {
        const float w = __expf(partial_lse[static_cast<long long>(c0 + c) * G + h] - M);
        Lsum += w;
        O += w * partial_out[(static_cast<long long>(c0 + c) * G + h) * D + d];
      }
    }
    const long long qrow = static_cast<long long>(item) * p.num_q_heads + kv_head * G + h;
    const float o = Lsum > 0.f ? O / Lsum : 0.f;
    T* out = static_cast<T*>(p.out) + qrow * D + d;
    if constexpr (K == DType::kBF16)
      *out = __float2bfloat16_rn(o);
    else
      *out = __float2half_rn(o);
    if (d == 0 && p.lse) p.lse[qrow] = Lsum > 0.f ? M + logf(Lsum) : -INFINITY;
  }
}

// Launches the attention and merge kernels of one dtype (defined in decode_f16.cu / decode_bf16.cu).
struct DecodeLaunch {
  const DecodeParams* p;
  float qk_scale_log2;
  const int32_t* chunk_offset;
  const DecodeChunk* chunks;
  int units;
  float* partial_out;
  float* partial_lse;
  long long grid;
  cudaStream_t stream;
};
void launch_decode_f16(const DecodeLaunch& l, int head_dim, int group);
void launch_decode_bf16(const DecodeLaunch& l, int head_dim, int group);

template <DType K>
void launch_decode_dtype(const DecodeLaunch& l, int head_dim, int group) {
#define REDKNOT_DECODE_CASE(DD, GG)                                                                      \
  if (head_dim == DD && group == GG) {                                                                   \
    REDKNOT_LAUNCH(static_cast<unsigned>(l.grid), kDecodeThreads, 0, l.stream, decode_kernel<K, DD, GG>) \
    (*l.p, l.qk_scale_log2, l.chunk_offset, l.chunks, l.units, l.partial_out, l.partial_lse);            \
    REDKNOT_LAUNCH(l.units, kDecodeThreads, 0, l.stream, decode_merge_kernel<K, DD, GG>)                 \
    (*l.p, l.chunk_offset, l.units, l.partial_out, l.partial_lse);                                       \
    return;                                                                                              \
  }
  REDKNOT_DECODE_CASE(64, 1)
  REDKNOT_DECODE_CASE(64, 2)
  REDKNOT_DECODE_CASE(64, 4)
  REDKNOT_DECODE_CASE(64, 8)
  REDKNOT_DECODE_CASE(128, 1)
  REDKNOT_DECODE_CASE(128, 2)
  REDKNOT_DECODE_CASE(128, 4)
  REDKNOT_DECODE_CASE(128, 8)
#undef REDKNOT_DECODE_CASE
  throw InvalidArgument(redknot::detail::concat("decode_attention: unsupported head_dim=", head_dim,
                                                " group_size=", group,
                                                " (supported: head_dim 64/128, group size 1/2/4/8)"));
}

}  // namespace redknot::cuda::detail
