// Decode attention: split-KV over page-entry chunks with a log-sum-exp merge, GQA heads packed per CTA.
// See include/redknot/cuda/decode.hpp for the contract and partition.hpp for the work-partition rule.
//
// This file: the device-side partition (plan kernels + CUB scans), the workspace layout and the host entry
// points. The attention and merge kernels are in decode_kernel.cuh.
#if !defined(REDKNOT_CUDA_HOST_MODE)
#include <cub/device/device_scan.cuh>
#endif

#include <algorithm>
#include <cmath>
#include <string>

#include "decode_kernel.cuh"
#include "redknot/cuda/decode.hpp"

namespace redknot::cuda {
namespace detail {

// ---- prefix sums over the units (CUB's device scans; plain loops in the host execution mode)

#if defined(REDKNOT_CUDA_HOST_MODE)
template <bool kInclusive>
cudaError_t host_scan(void* tmp, std::size_t& bytes, const int32_t* in, int32_t* out, int n,
                      cudaStream_t stream) {
  if (tmp == nullptr) {
    bytes = 1;
    return cudaSuccess;
  }
  return host::enqueue(stream, [=] {
    int32_t run = 0;
    for (int i = 0; i < n; ++i) {
      const int32_t x = in[i];
      if (!kInclusive) out[i] = run;
      run += x;
      if (kInclusive) out[i] = run;
    }
  });
}
inline cudaError_t inclusive_sum(void* tmp, std::size_t& bytes, const int32_t* in, int32_t* out, int n,
                                 cudaStream_t stream = nullptr) {
  return host_scan<true>(tmp, bytes, in, out, n, stream);
}
inline cudaError_t exclusive_sum(void* tmp, std::size_t& bytes, const int32_t* in, int32_t* out, int n,
                                 cudaStream_t stream = nullptr) {
  return host_scan<false>(tmp, bytes, in, out, n, stream);
}
#else
inline cudaError_t inclusive_sum(void* tmp, std::size_t& bytes, const int32_t* in, int32_t* out, int n,
                                 cudaStream_t stream = nullptr) {
  return cub::DeviceScan::InclusiveSum(tmp, bytes, in, out, n, stream);
}
inline cudaError_t exclusive_sum(void* tmp, std::size_t& bytes, const int32_t* in, int32_t* out, int n,
                                 cudaStream_t stream = nullptr) {
  return cub::DeviceScan::ExclusiveSum(tmp, bytes, in, out, n, stream);
}
#endif

// ---- plan kernels
// ----------------------------------------------------------------------------------------------

__global__ void plan_count_kernel(const PlanSlot* __restrict__ slots, int units,
                                  int32_t* __restrict__ entries) {
  const int u = blockIdx.x * blockDim.x + threadIdx.x;
  if (u < units) entries[u] = slots[u].sink_len + slots[u].ring_len;
}

// After the inclusive scan of entries: derive chunk_len from the total, then each unit's chunk count.
// counts has units + 1 elements; the last is 0 so that the exclusive scan yields the total in offset[units].
__global__ void plan_chunks_kernel(const int32_t* __restrict__ entries,
                                   const int32_t* __restrict__ entries_scan, int units, int target_chunks,
                                   int min_chunk, int32_t* __restrict__ counts,
                                   int32_t* __restrict__ chunk_len_out) {
  const long long total = units > 0 ? entries_scan[units - 1] : 0;
  const long long target = target_chunks > 0 ? target_chunks : 1;
  long long len = (total + target - 1) / target;
  len = len > min_chunk ? len : min_chunk;
  len = len > 1 ? len : 1;
  const int u = blockIdx.x * blockDim.x + threadIdx.x;
  if (u < units) {
    const int n = entries[u];
    const int c = static_cast<int>((n + len - 1) / len);
    counts[u] = c > 1 ? c : 1;
  } else if (u == units) {
    counts[u] = 0;
    *chunk_len_out = static_cast<int32_t>(len);
  }
}

__global__ void plan_fill_kernel(const int32_t* __restrict__ entries, const int32_t* __restrict__ offsets,
                                 const int32_t* __restrict__ chunk_len_p, int units,
                                 DecodeChunk* __restrict__ chunks) {
  const int u = blockIdx.x * blockDim.x + threadIdx.x;
  if (u >= units) return;
  const int len = *chunk_len_p, n = entries[u];
  const int o = offsets[u], c = offsets[u + 1] - o;
  for (int k = 0; k < c; ++k) {
    const int b = min(n, k * len), e = min(n, (k + 1) * len);
    chunks[o + k] = DecodeChunk{u, b, e, k};
  }
}

// ---- workspace layout
// ------------------------------------------------------------------------------------------

constexpr std::size_t align256(std::size_t x) { return (x + 255) & ~std::size_t(255); }

struct WsLayout {
  std::size_t entries, entries_scan, counts, offsets, chunk_len, chunks, pout, plse, cub_tmp, cub_bytes,
      total;
  std::int64_t max_chunks;
};

inline WsLayout ws_layout(int max_units, const DecodePartitionConfig& cfg, int group, int head_dim) {
  WsLayout w{};
  const std::size_t U = static_cast<std::size_t>(std::max(max_units, 1));
  w.max_chunks = max_decode_chunks(static_cast<std::int64_t>(U), cfg);
  const std::size_t C = static_cast<std::size_t>(w.max_chunks);
  std::size_t o = 0;
  w.entries = o, o += align256(U * 4);
  w.entries_scan = o, o += align256(U * 4);
  w.counts = o, o += align256((U + 1) * 4);
  w.offsets = o, o += align256((U + 1) * 4);
  w.chunk_len = o, o += 256;
  w.chunks = o, o += align256(C * sizeof(DecodeChunk));
  w.pout = o, o += align256(C * group * head_dim * sizeof(float));
  w.plse = o, o += align256(C * group * sizeof(float));
  std::size_t b1 = 0, b2 = 0;
  check_cuda(inclusive_sum(nullptr, b1, nullptr, nullptr, static_cast<int>(U)),
             "cub::DeviceScan::InclusiveSum (size query)");
  check_cuda(exclusive_sum(nullptr, b2, nullptr, nullptr, static_cast<int>(U + 1)),
             "cub::DeviceScan::ExclusiveSum (size query)");
  w.cub_bytes = std::max(b1, b2);
  w.cub_tmp = o, o += align256(w.cub_bytes);
  w.total = o;
  return w;
}

void check_params(const DecodeParams& p, int max_units) {
  check_arg(p.kv.num_kv_heads > 0, "decode: kv.num_kv_heads must be > 0");
  check_arg(p.num_q_heads > 0 && p.num_q_heads % p.kv.num_kv_heads == 0,
            "decode: num_q_heads must be a positive multiple of num_kv_heads");
  check_arg(p.batch >= 0, "decode: batch must be >= 0");
  check_arg(static_cast<long long>(p.batch) * p.kv.num_kv_heads <= max_units,
            "decode: batch * num_kv_heads = " +
                std::to_string(static_cast<long long>(p.batch) * p.kv.num_kv_heads) +
                " exceeds max_units = " + std::to_string(max_units));
  check_arg(p.kv.page_size > 0, "decode: page_size must be > 0");
  const int g = p.num_q_heads / p.kv.num_kv_heads;
  // Checked before anything is enqueued, so a bad call leaves the stream untouched.
  check_arg((p.kv.head_dim == 64 || p.kv.head_dim == 128) && (g == 1 || g == 2 || g == 4 || g == 8),
            "decode: unsupported head_dim=" + std::to_string(p.kv.head_dim) +
                " group_size=" + std::to_string(g) + " (supported: head_dim 64/128, group size 1/2/4/8)");
  check_arg(p.dtype == DType::kF16 || p.dtype == DType::kBF16, "decode: dtype must be f16 or bf16");
  check_arg(p.kv.pool && p.kv.arena && p.kv.slots && p.kv.policies && p.q && p.q_pos && p.out,
            "decode: null device pointer");
  check_aligned16(p.q, "decode", "q");
  check_aligned16(p.out, "decode", "out");
}

}  // namespace detail

std::size_t decode_workspace_bytes(int max_units, const DecodePartitionConfig& cfg, int group_size,
                                   int head_dim) {
  return detail::ws_layout(max_units, cfg, group_size, head_dim).total;
}

DecodeWorkspaceView decode_workspace_view(void* workspace, int max_units, const DecodePartitionConfig& cfg,
                                          int group_size, int head_dim) {
  const auto w = detail::ws_layout(max_units, cfg, group_size, head_dim);
  char* b = static_cast<char*>(workspace);
  DecodeWorkspaceView v;
  v.unit_entries = reinterpret_cast<int32_t*>(b + w.entries);
  v.chunk_offset = reinterpret_cast<int32_t*>(b + w.offsets);
  v.chunk_len = reinterpret_cast<int32_t*>(b + w.chunk_len);
  v.chunks = reinterpret_cast<DecodeChunk*>(b + w.chunks);
  v.partial_out = reinterpret_cast<float*>(b + w.pout);
  v.partial_lse = reinterpret_cast<float*>(b + w.plse);
  v.max_chunks = w.max_chunks;
  return v;
}

DecodePartitionConfig default_decode_partition_config(int device) {
  if (device < 0) check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  int sms = 0;
  check_cuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  DecodePartitionConfig cfg;
  // ~4 resident CTAs per SM, two waves: enough chunks to balance, few enough that the merge stays cheap.
  cfg.target_chunks = std::max(1, sms * 8);
  cfg.min_chunk_entries = 4;
  return cfg;
}

void decode_plan(const DecodeParams& p, void* workspace, std::size_t workspace_bytes,
                 const DecodePartitionConfig& cfg, int max_units, cudaStream_t stream) {
  detail::check_params(p, max_units);
  const int G = p.num_q_heads / p.kv.num_kv_heads;
  const auto w = detail::ws_layout(max_units, cfg, G, p.kv.head_dim);
  check_arg(workspace && workspace_bytes >= w.total, "decode: workspace_bytes=", workspace_bytes,
            " too small: need ", w.total, " bytes");
  char* b = static_cast<char*>(workspace);
  auto* entries = reinterpret_cast<int32_t*>(b + w.entries);
  auto* scan = reinterpret_cast<int32_t*>(b + w.entries_scan);
  auto* counts = reinterpret_cast<int32_t*>(b + w.counts);
  auto* offsets = reinterpret_cast<int32_t*>(b + w.offsets);
  auto* chunk_len = reinterpret_cast<int32_t*>(b + w.chunk_len);
  auto* chunks = reinterpret_cast<DecodeChunk*>(b + w.chunks);
  const int U = p.batch * p.kv.num_kv_heads;
  const int threads = 256;
  if (U == 0) {
    check_cuda(cudaMemsetAsync(offsets, 0, sizeof(int32_t), stream), "cudaMemsetAsync");
    return;
  }
  REDKNOT_LAUNCH((U + threads - 1) / threads, threads, 0, stream, detail::plan_count_kernel)
  (p.kv.slots, U, entries);
  std::size_t tmp = w.cub_bytes;
  check_cuda(detail::inclusive_sum(b + w.cub_tmp, tmp, entries, scan, U, stream), "InclusiveSum");
  REDKNOT_LAUNCH((U + 1 + threads - 1) / threads, threads, 0, stream, detail::plan_chunks_kernel)
  (entries, scan, U, cfg.target_chunks, cfg.min_chunk_entries, counts, chunk_len);
  tmp = w.cub_bytes;
  check_cuda(detail::exclusive_sum(b + w.cub_tmp, tmp, counts, offsets, U + 1, stream), "ExclusiveSum");
  REDKNOT_LAUNCH((U + threads - 1) / threads, threads, 0, stream, detail::plan_fill_kernel)
  (entries, offsets, chunk_len, U, chunks);
  check_cuda(cudaGetLastError(), "decode plan launch");
}

void decode_attention(const DecodeParams& p, void* workspace, std::size_t workspace_bytes,
                      const DecodePartitionConfig& cfg, int max_units, cudaStream_t stream) {
  decode_plan(p, workspace, workspace_bytes, cfg, max_units, stream);
  const int G = p.num_q_heads / p.kv.num_kv_heads;
  const int D = p.kv.head_dim;
  const int U = p.batch * p.kv.num_kv_heads;
  if (U == 0) return;
  const auto w = detail::ws_layout(max_units, cfg, G, D);
  char* b = static_cast<char*>(workspace);
  const auto* offsets = reinterpret_cast<const int32_t*>(b + w.offsets);
  const auto* chunks = reinterpret_cast<const DecodeChunk*>(b + w.chunks);
  auto* pout = reinterpret_cast<float*>(b + w.pout);
  auto* plse = reinterpret_cast<float*>(b + w.plse);
  const float scale = p.scale > 0.f ? p.scale : 1.f / std::sqrt(static_cast<float>(D));
  // Grid of the worst case for this batch (not max_units): CTAs past the device-side chunk count exit at
  // once.
  const long long grid = max_decode_chunks(U, cfg);
  const detail::DecodeLaunch l{&p, scale * detail::kLog2e, offsets, chunks, U, pout, plse, grid, stream};
  if (p.dtype == DType::kBF16)
    detail::launch_decode_bf16(l, D, G);
  else
    detail::launch_decode_f16(l, D, G);
  check_cuda(cudaGetLastError(), "decode launch");
}

}  // namespace redknot::cuda
