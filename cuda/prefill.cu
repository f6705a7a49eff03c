// Prefill attention on tensor cores: see include/redknot/cuda/prefill.hpp for the contract.
//
// CTA = 4 warps = 64 packed rows (16 per warp); key tiles of 64. Per key tile:
//   S = Q K^T   mma.sync m16n8k16, Q fragments kept in registers, K B-fragments by ldmatrix from shared
//   memory; mask        canonical rule from the row's query position and the key's position (from its page
//   entry); softmax     online, exp2 domain, row statistics reduced over the 4 lanes of a quad; O += P V    P
//   reused from the S accumulators as A fragments (no shared-memory round trip), V by
//               ldmatrix.trans.
// K and V tiles arrive by cp.async in separate commit groups so that the V load overlaps S and the next K
// load overlaps the softmax and P V. The keys of a tile are gathered by warp 0 walking the head's page
// entries (clip to the tile's visible hull, warp prefix sum, scatter row ids into a 64-entry table), one tile
// ahead.
#include <cmath>
#include <string>

#include "kernel_utils.cuh"
#include "redknot/cuda/key_walker.hpp"
#include "redknot/cuda/prefill.hpp"

namespace redknot::cuda {
namespace detail {

constexpr int kPfThreads = 128;
constexpr int kBQ = kPrefillTileRows;  // packed rows per CTA
constexpr int kBK = 64;                // keys per tile

// bf16 keeps 8 bits of mantissa: a query counter-rotated for spliced keys (rebuilt from fp32) and rounded
// once to bf16 would score with ~2^-9 relative error, several times what the stored keys' own rounding costs
// the log-sum-exp. So for bf16 the rebuilt Q tile is split as hi + lo (both bf16, lo = x - hi) and S = Q_hi
// K^T
// + Q_lo K^T on tiles with a rope delta (error ~2^-17); f16's 11 bits make one rounding enough.
template <DType K>
constexpr bool kSplitRotatedQ = K == DType::kBF16;

template <int D, bool kSplit>
struct PfSmem {
  static constexpr int kStride = D + 8;  // +16 bytes per row: ldmatrix rows hit distinct bank groups
  static constexpr std::size_t kTileElems = static_cast<std::size_t>(kBK) * kStride;
  static constexpr std::size_t kBytes = (kSplit ? 4 : 3) * kTileElems * 2;  // Q, K, V (, Q lo) (16-bit)
};

// The collectives KeyWalker needs, on the hardware.
struct DeviceWarp {
  int lane_;
  __device__ int lane() const { return lane_; }
  __device__ unsigned ballot(bool p) const { return __ballot_sync(0xffffffffu, p); }
  __device__ int shfl_up(int v, int off) const { return __shfl_up_sync(0xffffffffu, v, off); }
  __device__ int shfl(int v, int src) const { return __shfl_sync(0xffffffffu, v, src); }
};

template <DType K, int D>
__global__ void __launch_bounds__(kPfThreads) prefill_kernel(PrefillParams p, float qk_scale_log2) {
  using T = typename KvTraits<K>::T;
  constexpr bool kSplit = kSplitRotatedQ<K>;
  using S = PfSmem<D, kSplit>;
  constexpr int kStride = S::kStride;
  constexpr int kVecPerRow = D / 8;
  constexpr int KD = D / 16;  // k-steps of S = Q K^T
  constexpr int ND = D / 8;   // n-tiles of O

  REDKNOT_DYNAMIC_SMEM(unsigned char, smem_raw);
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + S::kTileElems;
  T* sV = sK + S::kTileElems;
  T* sQlo = sV + S::kTileElems;  // kSplit only: the low part of a counter-rotated Q tile
  __shared__ int32_t s_rows[2][kBK];
  __shared__ int32_t s_kpos[2][kBK];
  __shared__ int32_t s_nkeys[2];
  __shared__ int32_t s_delta[2];  // the tile's rope delta (KeyWalker: one per tile)
  __shared__ int32_t s_qpos[kBQ];
  __shared__ int32_t s_prange[2];

  const PrefillTile tile = p.tiles[blockIdx.x];
  const int Hk = p.kv.num_kv_heads, Hq = p.num_q_heads, g = Hq / Hk;
  const int item = tile.item, kv_head = tile.kv_head;
  const int q_begin = p.q_begin[item], q_len = p.q_len[item];
  const int nrows = q_len * g;
  const PlanSlot slot = p.kv.slots[item * Hk + kv_head];
  const HeadPolicy pol = p.kv.policies[kv_head];
  const int ps = p.kv.page_size;
  const T* __restrict__ pool = static_cast<const T*>(p.kv.pool);
  const T* __restrict__ qg = static_cast<const T*>(p.q);

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

  // ---- Q tile (commit group 0) and query positions ----
  for (int v = tid; v < kBQ * kVecPerRow; v += kPfThreads) {
    const int r = v / kVecPerRow, c = v % kVecPerRow;
    const int row = tile.row0 + r;
    const bool ok = row < nrows;
    const long long qrow = ok ? static_cast<long long>(q_begin + row / g) * Hq + kv_head * g + row % g : 0;
    cp_async16(sQ + r * kStride + c * 8, qg + qrow * D + c * 8, ok ? 16 : 0);
  }
  cp_async_commit();
  if constexpr (kSplit) {  // dims a rotation leaves alone (partial rotary) and padding rows: lo = 0
    const uint32_t zero = 0;
    for (int v = tid; v < kBQ * kStride / 2; v += kPfThreads) reinterpret_cast<uint32_t*>(sQlo)[v] = zero;
  }
  if (tid < kBQ) {
    const int row = tile.row0 + tid;
    s_qpos[tid] = row < nrows ? p.q_pos[q_begin + row / g] : -1;
  }
  __syncthreads();

  KeyWalker walker;
  if (warp == 0) {
    int lo = 0x7fffffff, hi = -1;
    for (int r = lane; r < kBQ; r += 32)
      if (s_qpos[r] >= 0) {
        lo = min(lo, s_qpos[r]);
        hi = max(hi, s_qpos[r]);
      }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      lo = min(lo, __shfl_xor_sync(0xffffffffu, lo, off));
      hi = max(hi, __shfl_xor_sync(0xffffffffu, hi, off));
    }
    if (lane == 0) {
      s_prange[0] = lo;
      s_prange[1] = hi;
    }
  }
  __syncthreads();
  const int tile_pmax = s_prange[1];
  const VisibleHull<int> hull = visible_hull<int>(pol, s_prange[0], tile_pmax);

  auto walk = [&](int buf) {
    if (warp == 0) {
      int n = 0, delta = 0;
      if (tile_pmax >= 0)
        n = walker.fill<kBK>(DeviceWarp{lane}, p.kv.arena, slot, pol, hull, ps, s_rows[buf], s_kpos[buf],
                             delta);
      for (int i = n + lane; i < kBK; i += 32) {
        s_rows[buf][i] = -1;
        s_kpos[buf][i] = -1;
      }
      if (lane == 0) {
        s_nkeys[buf] = n;
        s_delta[buf] = delta;
      }
    }
  };
  auto load_kv = [&](T* dst, int buf, int v_offset) {
    for (int v = tid; v < kBK * kVecPerRow; v += kPfThreads) {
      const int r = v / kVecPerRow, c = v % kVecPerRow;
      const int row = s_rows[buf][r];
      const T* src = row >= 0 ? pool + (static_cast<long long>(row) + v_offset) * D + c * 8 : pool;
      cp_async16(dst + r * kStride + c * 8, src, row >= 0 ? 16 : 0);
    }
    cp_async_commit();
  };

  walk(0);
  __syncthreads();
  load_kv(sK, 0, 0);   // group 1
  load_kv(sV, 0, ps);  // group 2

  uint32_t qf[KD][4];
  float o[ND][4];
#pragma unroll
  for (int j = 0; j < ND; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) o[j][i] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const int r_lo = warp * 16 + lane / 4, r_hi = r_lo + 8;  // the two rows this thread accumulates
  const int qpos_lo = s_qpos[r_lo], qpos_hi = s_qpos[r_hi];

  // Keys stored rotated for other positions than they sit at (a tile's delta != 0) are scored with the
  // queries counter-rotated by -delta: the Q tile is rebuilt in shared memory from the engine's q (fp32
  // rotation, one rounding to the storage type) when the delta changes, i.e. at chunk boundaries only.
  const auto rebuild_q = [&](int delta) {
    const int half = p.kv.rope_half;
    for (int v = tid; v < kBQ * half; v += kPfThreads) {
      const int r = v / half, i = v % half;
      const int row = tile.row0 + r;
      if (row >= nrows) continue;
      const long long qrow = static_cast<long long>(q_begin + row / g) * Hq + kv_head * g + row % g;
      const RopePair pr = rope_pair(p.kv.rope_pairing, half, i);
      float x = to_f32<K>(qg[qrow * D + pr.a]), y = to_f32<K>(qg[qrow * D + pr.b]);
      if (delta != 0)
        rope_rotate_pair(x, y, rope_cos_sin(-static_cast<long long>(delta), p.kv.rope_inv_freq[i]));
      const T xh = from_f32<K>(x), yh = from_f32<K>(y);
      sQ[r * kStride + pr.a] = xh;
      sQ[r * kStride + pr.b] = yh;
      if constexpr (kSplit) {
        sQlo[r * kStride + pr.a] = from_f32<K>(x - to_f32<K>(xh));
        sQlo[r * kStride + pr.b] = from_f32<K>(y - to_f32<K>(yh));
      }
    }
  };

  int buf = 0;
  bool first = true;
  int q_delta = 0;
  while (s_nkeys[buf] > 0) {
    cp_async_wait<1>();  // Q and K of this tile have landed (V may still be in flight)
    __syncthreads();
    const int t_delta = s_delta[buf];  // CTA-uniform: the barrier below is reached by every thread
    if (first || t_delta != q_delta) {
      if (t_delta != q_delta) {  // the first tile with delta 0 uses the Q tile as loaded
        rebuild_q(t_delta);
        __syncthreads();
      }
#pragma unroll
      for (int kk = 0; kk < KD; ++kk)
        ldmatrix_x4(qf[kk], sQ + (warp * 16 + (lane & 15)) * kStride + kk * 16 + (lane >> 4) * 8);
      first = false;
      q_delta = t_delta;
    }
    walk(buf ^ 1);  // warp 0 gathers the next tile's keys while the others start on S

    // S = Q K^T for 16 rows x 64 keys per warp.
    float s[kBK / 8][4];
#pragma unroll
    for (int j = 0; j < kBK / 8; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) s[j][i] = 0.f;
    const bool split = kSplit && q_delta != 0;  // CTA-uniform
#pragma unroll
    for (int kk = 0; kk < KD; ++kk) {
      uint32_t qlo[4] = {0, 0, 0, 0};
      if (split) ldmatrix_x4(qlo, sQlo + (warp * 16 + (lane & 15)) * kStride + kk * 16 + (lane >> 4) * 8);
#pragma unroll
      for (int np = 0; np < kBK / 16; ++np) {
        uint32_t b[4];
        ldmatrix_x4(
            b, sK + (np * 16 + (lane & 7) + ((lane >> 4) << 3)) * kStride + kk * 16 + ((lane >> 3) & 1) * 8);
        mma_16816<K>(s[2 * np], qf[kk], b[0], b[1]);
        mma_16816<K>(s[2 * np + 1], qf[kk], b[2], b[3]);
        if (split) {
          mma_16816<K>(s[2 * np], qlo, b[0], b[1]);
          mma_16816<K>(s[2 * np + 1], qlo, b[2], b[3]);
        }
      }
    }
    __syncthreads();  // K buffer free; next key table visible
    load_kv(sK, buf ^ 1, 0);

    // Mask and online softmax (exp2 domain).
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < kBK / 8; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int key = j * 8 + (lane % 4) * 2 + (i & 1);
        const int kp = s_kpos[buf][key];
        const int qp = i < 2 ? qpos_lo : qpos_hi;
        const float v = s[j][i] * qk_scale_log2;
        s[j][i] = (kp >= 0 && is_visible(pol, qp, kp)) ? v : -INFINITY;
        mx[i >> 1] = fmaxf(mx[i >> 1], s[j][i]);
      }
    float alpha[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
      const float m_new = fmaxf(m[h], mx[h]);
      const float m_use = m_new == -INFINITY ? 0.f : m_new;  // no key visible yet: keep everything at 0
      alpha[h] = exp2f(m[h] - m_use);
      m[h] = m_new;
      mx[h] = m_use;
    }
    float rs[2] = {0.f, 0.f};
    uint32_t pa[kBK / 16][4];
#pragma unroll
    for (int j = 0; j < kBK / 8; ++j) {
      const float p0 = exp2f(s[j][0] - mx[0]), p1 = exp2f(s[j][1] - mx[0]);
      const float p2 = exp2f(s[j][2] - mx[1]), p3 = exp2f(s[j][3] - mx[1]);
      rs[0] += p0 + p1;
      rs[1] += p2 + p3;
      // Accumulator layout of n-tile j == A-fragment halves of k-step j / 2 (FA2 register reuse).
      pa[j / 2][(j & 1) * 2 + 0] = pack2<K>(p0, p1);
      pa[j / 2][(j & 1) * 2 + 1] = pack2<K>(p2, p3);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) l[h] = l[h] * alpha[h] + rs[h];
#pragma unroll
    for (int j = 0; j < ND; ++j) {
      o[j][0] *= alpha[0];
      o[j][1] *= alpha[0];
      o[j][2] *= alpha[1];
      o[j][3] *= alpha[1];
    }

    cp_async_wait<1>();  // V of this tile (the next K may still be in flight)
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK / 16; ++kk) {
#pragma unroll
      for (int np = 0; np < D / 16; ++np) {
        uint32_t b[4];
        ldmatrix_x4_trans(
            b, sV + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * kStride + np * 16 + (lane >> 4) * 8);
        mma_16816<K>(o[2 * np], pa[kk], b[0], b[1]);
        mma_16816<K>(o[2 * np + 1], pa[kk], b[2], b[3]);
      }
    }
    __syncthreads();  // V buffer free
    load_kv(sV, buf ^ 1, ps);
    buf ^= 1;
  }
  cp_async_wait<0>();

  // Epilogue: row sums over the quad, normalise, store.
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = h == 0 ? r_lo : r_hi;
    const int row = tile.row0 + r;
    if (row >= nrows) continue;
    const long long qrow = static_cast<long long>(q_begin + row / g) * Hq + kv_head * g + row % g;
    const float inv = l[h] > 0.f ? 1.f / l[h] : 0.f;
    T* dst = static_cast<T*>(p.out) + qrow * D;
#pragma unroll
    for (int j = 0; j < ND; ++j) {
      const uint32_t v = pack2<K>(o[j][2 * h] * inv, o[j][2 * h + 1] * inv);
      *reinterpret_cast<uint32_t*>(dst + j * 8 + (lane % 4) * 2) = v;
    }
    if (p.lse && lane % 4 == 0) p.lse[qrow] = l[h] > 0.f ? (m[h] + log2f(l[h])) * kLn2 : -INFINITY;
  }
}

}  // namespace detail

void prefill_attention(const PrefillParams& p, cudaStream_t stream) {
  check_arg(p.kv.num_kv_heads > 0 && p.num_q_heads > 0 && p.num_q_heads % p.kv.num_kv_heads == 0,
            "prefill: num_q_heads must be a positive multiple of num_kv_heads");
  check_arg(p.kv.page_size > 0, "prefill: page_size must be > 0");
  check_arg(p.num_tiles >= 0, "prefill: num_tiles must be >= 0");
  if (p.num_tiles == 0) return;
  check_arg(p.kv.pool && p.kv.arena && p.kv.slots && p.kv.policies && p.q && p.q_pos && p.q_begin &&
                p.q_len && p.out && p.tiles,
            "prefill: null device pointer");
  check_aligned16(p.q, "prefill", "q");
  check_aligned16(p.out, "prefill", "out");
  const int D = p.kv.head_dim;
  const float scale = p.scale > 0.f ? p.scale : 1.f / std::sqrt(static_cast<float>(D));
  auto launch = [&](auto kernel, std::size_t smem) {
    check_cuda(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
        "cudaFuncSetAttribute(prefill)");
    REDKNOT_LAUNCH(p.num_tiles, detail::kPfThreads, smem, stream, kernel)(p, scale * detail::kLog2e);
  };
  using detail::kSplitRotatedQ;
  using detail::PfSmem;
  if (p.dtype == DType::kBF16 && D == 128)
    launch(detail::prefill_kernel<DType::kBF16, 128>, PfSmem<128, kSplitRotatedQ<DType::kBF16>>::kBytes);
  else if (p.dtype == DType::kBF16 && D == 64)
    launch(detail::prefill_kernel<DType::kBF16, 64>, PfSmem<64, kSplitRotatedQ<DType::kBF16>>::kBytes);
  else if (p.dtype == DType::kF16 && D == 128)
    launch(detail::prefill_kernel<DType::kF16, 128>, PfSmem<128, kSplitRotatedQ<DType::kF16>>::kBytes);
  else if (p.dtype == DType::kF16 && D == 64)
    launch(detail::prefill_kernel<DType::kF16, 64>, PfSmem<64, kSplitRotatedQ<DType::kF16>>::kBytes);
  else
    throw InvalidArgument(
        redknot::detail::concat("prefill: unsupported head_dim=", D, " (supported: 64, 128)"));
  check_cuda(cudaGetLastError(), "prefill launch");
}

}  // namespace redknot::cuda
