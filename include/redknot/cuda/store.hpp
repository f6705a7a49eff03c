// The KVHeadStore's CUDA backend: same API, pages in device memory.
//
//   CudaKVHeadStore<T>  = KVHeadStore<T, CudaPagedAllocator>
//   append_from_host()  host K/V: the store's AppendPlan, then its page copies and one host-to-device copy
//   per
//                       row;
//   append_device()     K/V already on the device [n, Hk, D]: the AppendPlan's page copies on the stream,
//   then
//                       one append_kv kernel scatters every row to the plan's destinations.
//
// C++20 host code.
#pragma once

#include "redknot/cuda/runtime_api.hpp"

#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "redknot/allocator.hpp"
#include "redknot/append_plan.hpp"
#include "redknot/cuda/append.hpp"
#include "redknot/cuda/common.hpp"
#include "redknot/kv_head_store.hpp"

namespace redknot::cuda {

// Device-memory page allocator (cudaMalloc'd pages; Unavailable when the device is absent, PoolExhausted when
// it is full). Allocate and free only: bytes move by the AppendPlan movers below.
struct CudaPagedAllocator {
  static constexpr bool kHostAccessible = false;
  int device = 0;

  void* allocate(std::size_t bytes) {
    if (bytes == 0) return nullptr;
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || device >= n) {
      cudaGetLastError();
      throw Unavailable(
          redknot::detail::concat("CudaPagedAllocator: device ", device, " not present (", n, " visible)"));
    }
    check_cuda(cudaSetDevice(device), "cudaSetDevice");
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, bytes);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      throw PoolExhausted(
          redknot::detail::concat("cudaMalloc of ", bytes, " bytes failed: out of device memory"));
    }
    check_cuda(e, "cudaMalloc(page pool)");
    return p;
  }
  void deallocate(void* p, std::size_t) {
    if (p) cudaFree(p);
  }
};
static_assert(Allocator<CudaPagedAllocator>);

template <StorageType T>
using CudaKVHeadStore = KVHeadStore<T, CudaPagedAllocator>;

template <StorageType T>
constexpr DType kv_type_of() {
  static_assert(!std::is_same_v<T, float>, "the CUDA kernels store fp16 or bf16");
  return dtype_of<T>();
}

// The append kernel's row index of every (token, kv_head) of a plan: page * 2 * page_size + slot (the pool's
// [page][K|V][slot] layout; V rows are page_size further). The kernel indexes rows with int32: guarded.
inline void plan_rows_i32(const AppendPlan& plan, std::vector<std::int32_t>& out) {
  out.resize(plan.rows.size());
  for (std::size_t i = 0; i < plan.rows.size(); ++i) {
    const RowDest& d = plan.rows[i];
    const std::int64_t row = static_cast<std::int64_t>(d.page) * 2 * plan.page_size + d.slot;
    require(row + plan.page_size <= std::numeric_limits<std::int32_t>::max(), "append: pool row ", row,
            " does not fit the append kernel's int32 row index (pool too large)");
    out[i] = static_cast<std::int32_t>(row);
  }
}

// The plan's page copies (copy-on-write), enqueued on `stream` before any row is written.
template <StorageType T>
void move_device_copies(CudaKVHeadStore<T>& store, const AppendPlan& plan, cudaStream_t stream) {
  auto& pool = store.pool();
  const std::size_t row_bytes = static_cast<std::size_t>(pool.head_dim()) * sizeof(T);
  for (const PageCopy& c : plan.copies) {
    const std::size_t bytes = row_bytes * static_cast<std::size_t>(c.slots);
    check_cuda(cudaMemcpyAsync(pool.k_ptr(c.dst), pool.k_ptr(c.src), bytes, cudaMemcpyDeviceToDevice, stream),
               "cudaMemcpyAsync(page copy K)");
    check_cuda(cudaMemcpyAsync(pool.v_ptr(c.dst), pool.v_ptr(c.src), bytes, cudaMemcpyDeviceToDevice, stream),
               "cudaMemcpyAsync(page copy V)");
  }
}

// Appends n tokens of one layer whose K/V are on the host ([n, Hk, D], contiguous). Synchronous. Same
// validation and all-or-nothing guarantee as KVHeadStore::append.
template <StorageType T>
void append_from_host(CudaKVHeadStore<T>& store, SeqId seq, int layer, std::span<const T> k,
                      std::span<const T> v, std::span<const std::int32_t> positions) {
  const std::size_t D = static_cast<std::size_t>(store.shape().head_dim);
  const std::size_t elems = positions.size() * static_cast<std::size_t>(store.shape().num_kv_heads) * D;
  require(k.size() == elems && v.size() == elems, "append: k has ", k.size(), " and v ", v.size(),
          " elements, expected n_tokens*num_kv_heads*head_dim = ", elems);
  const AppendPlan plan = store.reserve_append(seq, layer, positions);
  move_device_copies(store, plan, nullptr);
  auto& pool = store.pool();
  const std::size_t row_bytes = D * sizeof(T);
  for (std::size_t i = 0; i < plan.rows.size(); ++i) {  // rows are [token][kv_head], like k and v
    const RowDest& d = plan.rows[i];
    check_cuda(cudaMemcpyAsync(pool.k_ptr(d.page) + static_cast<std::size_t>(d.slot) * D, k.data() + i * D,
                               row_bytes, cudaMemcpyHostToDevice, nullptr),
               "cudaMemcpyAsync(append K)");
    check_cuda(cudaMemcpyAsync(pool.v_ptr(d.page) + static_cast<std::size_t>(d.slot) * D, v.data() + i * D,
                               row_bytes, cudaMemcpyHostToDevice, nullptr),
               "cudaMemcpyAsync(append V)");
  }
  check_cuda(cudaStreamSynchronize(nullptr), "cudaStreamSynchronize(append)");
}

// Appends n tokens of one layer whose K/V are already on the device ([n, Hk, D], contiguous). dst_rows: a
// device buffer of at least n * Hk int32 (scratch, caller-owned so the call allocates nothing on the device).
// Same validation and all-or-nothing guarantee as KVHeadStore::append.
template <StorageType T>
void append_device(CudaKVHeadStore<T>& store, SeqId seq, int layer, const T* k_dev, const T* v_dev,
                   std::span<const std::int32_t> positions, std::int32_t* dst_rows, cudaStream_t stream) {
  const auto& sh = store.shape();
  const AppendPlan plan = store.reserve_append(seq, layer, positions);
  move_device_copies(store, plan, stream);
  thread_local std::vector<std::int32_t> rows;
  plan_rows_i32(plan, rows);
  check_cuda(cudaMemcpyAsync(dst_rows, rows.data(), rows.size() * sizeof(std::int32_t),
                             cudaMemcpyHostToDevice, stream),
             "cudaMemcpyAsync(append rows)");
  append_kv(store.pool().data(), kv_type_of<T>(), store.page_size(), sh.head_dim, sh.num_kv_heads, k_dev,
            v_dev, dst_rows, static_cast<int>(positions.size()), stream);
}

}  // namespace redknot::cuda
