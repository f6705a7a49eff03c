// Append (scatter new K/V into pages) and RoPE relocation (rotate cached keys by a position delta).
// Both are memory-bound and tiny next to attention; they favour simple, coalesced 16-byte accesses.
#include <string>

#include "kernel_utils.cuh"
#include "redknot/cuda/append.hpp"
#include "redknot/cuda/rope.hpp"

namespace redknot::cuda {
namespace detail {

// One thread per 16-byte vector of K or V. Consecutive threads walk one (token, head) row, so both the read
// of the engine's tensor and the write into the page are coalesced.
__global__ void append_kernel(uint4* __restrict__ pool, int page_size, int vec_per_row, int num_kv_heads,
                              const uint4* __restrict__ k, const uint4* __restrict__ v,
                              const int32_t* __restrict__ dst_row, long long n_vec) {
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= 2 * n_vec) return;
  const bool is_v = i >= n_vec;
  const long long j = is_v ? i - n_vec : i;
  const long long src_row = j / vec_per_row;  // = token * num_kv_heads + head
  const int c = static_cast<int>(j % vec_per_row);
  const int32_t r = dst_row[src_row];
  if (r < 0) return;
  const long long dst = (static_cast<long long>(r) + (is_v ? page_size : 0)) * vec_per_row + c;
  pool[dst] = (is_v ? v : k)[j];
}

template <DType K>
__global__ void rope_kernel(typename KvTraits<K>::T* __restrict__ pool, int page_size, int head_dim,
                            const PageEntry* __restrict__ entries, const int32_t* __restrict__ deltas,
                            int half, RopePairing pairing, const double* __restrict__ inv_freq) {
  using T = typename KvTraits<K>::T;
  REDKNOT_DYNAMIC_SMEM(RopeCosSin, s_cs);  // [rot / 2]
  const PageEntry e = entries[blockIdx.x];
  const long long delta = deltas[blockIdx.x];
  for (int i = threadIdx.x; i < half; i += blockDim.x) s_cs[i] = rope_cos_sin(delta, inv_freq[i]);
  __syncthreads();
  if (delta == 0) return;
  T* base = pool + (static_cast<long long>(e.page_id) * 2 * page_size + e.first) * head_dim;
  const int work = e.count * half;
  for (int w = threadIdx.x; w < work; w += blockDim.x) {
    const int slot = w / half, i = w % half;
    const RopePair pr = rope_pair(pairing, half, i);
    T* row = base + static_cast<long long>(slot) * head_dim;
    float x = to_f32<K>(row[pr.a]), y = to_f32<K>(row[pr.b]);
    rope_rotate_pair(x, y, s_cs[i]);
    row[pr.a] = from_f32<K>(x);
    row[pr.b] = from_f32<K>(y);
  }
}

}  // namespace detail

void append_kv(void* pool, DType dtype, int page_size, int head_dim, int num_kv_heads, const void* k,
               const void* v, const std::int32_t* dst_row, int n_tokens, cudaStream_t stream) {
  (void)dtype;  // a byte copy: both 16-bit dtypes move alike
  check_arg(head_dim > 0 && head_dim % 8 == 0, "append_kv: head_dim must be a positive multiple of 8");
  check_arg(page_size > 0 && num_kv_heads > 0 && n_tokens >= 0, "append_kv: bad sizes");
  if (n_tokens == 0) return;
  check_arg(pool && k && v && dst_row, "append_kv: null device pointer");
  const int vec_per_row = head_dim / 8;
  const long long n_vec = static_cast<long long>(n_tokens) * num_kv_heads * vec_per_row;
  const int threads = 256;
  const long long blocks = (2 * n_vec + threads - 1) / threads;
  REDKNOT_LAUNCH(static_cast<unsigned>(blocks), threads, 0, stream, detail::append_kernel)
  (static_cast<uint4*>(pool), page_size, vec_per_row, num_kv_heads, static_cast<const uint4*>(k),
   static_cast<const uint4*>(v), dst_row, n_vec);
  check_cuda(cudaGetLastError(), "append_kv launch");
}

void rope_relocate(void* pool, DType dtype, int page_size, const PageEntry* entries,
                   const std::int32_t* deltas, int num_entries, const RopeConfig& cfg, const double* inv_freq,
                   cudaStream_t stream) {
  validate(cfg);
  check_arg(page_size > 0 && num_entries >= 0, "rope_relocate: bad sizes");
  if (num_entries == 0) return;
  check_arg(pool && entries && deltas && inv_freq, "rope_relocate: null device pointer");
  const int half = cfg.rot() / 2;
  const std::size_t smem = static_cast<std::size_t>(half) * sizeof(RopeCosSin);
  if (dtype == DType::kBF16) REDKNOT_LAUNCH(num_entries, 128, smem, stream, detail::rope_kernel<DType::kBF16>)
  (static_cast<__nv_bfloat16*>(pool), page_size, cfg.head_dim, entries, deltas, half, cfg.pairing, inv_freq);
  else REDKNOT_LAUNCH(num_entries, 128, smem, stream, detail::rope_kernel<DType::kF16>)(
      static_cast<__half*>(pool), page_size, cfg.head_dim, entries, deltas, half, cfg.pairing, inv_freq);
  check_cuda(cudaGetLastError(), "rope_relocate launch");
}

}  // namespace redknot::cuda
