// The KVHeadStore's CUDA backend: same API, pages in device memory.
//
//   CudaKVHeadStore<T>  = KVHeadStore<T, CudaPagedAllocator>
//   append(...)         the store's own append takes host K/V and copies rows host->device (cudaMemcpy2D);
//   append_device(...)  takes K/V already on the device [n, Hk, D]: the store does its page bookkeeping with
//                       writes deferred, then one append_kv kernel scatters all rows through the slot
//                       mapping.
//
// C++20 host code.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <span>
#include <vector>

#include "redknot/allocator.hpp"
#include "redknot/cuda/append.hpp"
#include "redknot/cuda/common.hpp"
#include "redknot/kv_head_store.hpp"

namespace redknot::cuda {

// Device-memory page allocator (cudaMalloc'd pages; Unavailable when the device is absent), with two
// switches append_device() uses: host writes can be deferred (the store then only does bookkeeping; a kernel
// writes the rows), and page copies (copy-on-write) are enqueued on `stream` so they are ordered before that
// kernel.
struct CudaPagedAllocator {
  static constexpr bool kHostAccessible = false;
  int device = 0;
  bool defer_host_writes = false;
  cudaStream_t stream = nullptr;

  void* allocate(std::size_t bytes) {
    if (bytes == 0) return nullptr;
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || device >= n) {
      cudaGetLastError();
      throw Unavailable(
          detail::concat("CudaPagedAllocator: device ", device, " not present (", n, " visible)"));
    }
    check_cuda(cudaSetDevice(device), "cudaSetDevice");
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, bytes);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      throw PoolExhausted(detail::concat("cudaMalloc of ", bytes, " bytes failed: out of device memory"));
    }
    check_cuda(e, "cudaMalloc(page pool)");
    return p;
  }
  void deallocate(void* p, std::size_t) {
    if (p) cudaFree(p);
  }
  void copy_rows_from_host(void* dst, const void* src, std::size_t rows, std::size_t row_bytes,
                           std::size_t src_stride_bytes) {
    if (defer_host_writes) return;  // append_device writes these rows with a kernel
    check_cuda(cudaMemcpy2D(dst, row_bytes, src, src_stride_bytes, row_bytes, rows, cudaMemcpyHostToDevice),
               "cudaMemcpy2D(append)");
  }
  void copy(void* dst, const void* src, std::size_t bytes) {
    check_cuda(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream),
               "cudaMemcpyAsync(page copy)");
    if (!defer_host_writes) check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize(page copy)");
  }
};
static_assert(Allocator<CudaPagedAllocator>);

template <StorageType T>
using CudaKVHeadStore = KVHeadStore<T, CudaPagedAllocator>;

template <StorageType T>
constexpr KvType kv_type_of() {
  static_assert(!std::is_same_v<T, float>, "the CUDA kernels store fp16 or bf16");
  return std::is_same_v<T, Half> ? KvType::kF16 : KvType::kBF16;
}

// Where the tokens at `positions` of (seq, layer) live, per head: out[t * Hk + h] = page_id * 2 * page_size +
// slot
// (-1 where a head does not hold the position). Walks each head's body from the back, so it costs
// O(positions + entries touched) right after an append of those positions.
template <class Store>
void slot_mapping(const Store& store, SeqId seq, int layer, std::span<const std::int32_t> positions,
                  std::vector<std::int32_t>& out) {
  const int H = store.shape().num_kv_heads;
  const int ps = store.page_size();
  const std::size_t n = positions.size();
  out.assign(n * static_cast<std::size_t>(H), -1);
  if (n == 0) return;
  for (int h = 0; h < H; ++h) {
    const HeadTable& t = store.table(seq, layer, h);
    std::size_t i = n;  // tokens [i, n) are mapped; walk entries and tokens backwards together
    for (std::size_t e = t.size(); e-- > 0 && i > 0;) {
      const PageEntry& pe = t[e];
      while (i > 0 && positions[i - 1] > pe.last_pos()) --i;  // not stored (cannot happen right after append)
      while (i > 0 && positions[i - 1] >= pe.pos0 && positions[i - 1] <= pe.last_pos()) {
        const std::int32_t p = positions[i - 1];
        out[(i - 1) * static_cast<std::size_t>(H) + static_cast<std::size_t>(h)] =
            pe.page_id * 2 * ps + pe.first + (p - pe.pos0);
        --i;
      }
      if (pe.pos0 <= positions[0]) break;
    }
  }
}

// Appends n tokens of one layer whose K/V are already on the device ([n, Hk, D], contiguous). dst_rows: a
// device buffer of at least n * Hk int32 (scratch, caller-owned so the call allocates nothing on the device).
// Same validation and all-or-nothing guarantee as KVHeadStore::append.
template <StorageType T>
void append_device(CudaKVHeadStore<T>& store, SeqId seq, int layer, const T* k_dev, const T* v_dev,
                   std::span<const std::int32_t> positions, std::int32_t* dst_rows, cudaStream_t stream) {
  const auto& sh = store.shape();
  const std::size_t elems = positions.size() * static_cast<std::size_t>(sh.num_kv_heads) * sh.head_dim;
  auto& alloc = store.pool().allocator();
  alloc.defer_host_writes = true;
  alloc.stream = stream;
  try {
    // The spans only carry device addresses: with writes deferred the store never dereferences them.
    store.append(seq, layer, std::span<const T>(k_dev, elems), std::span<const T>(v_dev, elems), positions);
  } catch (...) {
    alloc.defer_host_writes = false;
    alloc.stream = nullptr;
    throw;
  }
  alloc.defer_host_writes = false;
  alloc.stream = nullptr;
  thread_local std::vector<std::int32_t> map;
  slot_mapping(store, seq, layer, positions, map);
  check_cuda(cudaMemcpyAsync(dst_rows, map.data(), map.size() * sizeof(std::int32_t), cudaMemcpyHostToDevice,
                             stream),
             "cudaMemcpyAsync(slot mapping)");
  append_kv(store.pool().data(), kv_type_of<T>(), store.page_size(), sh.head_dim, sh.num_kv_heads, k_dev,
            v_dev, dst_rows, static_cast<int>(positions.size()), stream);
}

}  // namespace redknot::cuda
