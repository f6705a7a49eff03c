// Types shared by the CUDA kernels and their host entry points.
//
// This header is included by .cu files, which CMake 3.25 compiles as C++17, and by C++20 host code, so it uses
// C++17 only and includes nothing of the C++20 core headers. The structs below are bit-for-bit mirrors of the core
// types (PageEntry, PlanSlot, HeadPolicy's fields); device_plan.hpp static_asserts the layouts match.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace redknot::cuda {

// Storage / activation dtype of a kernel call. Values match redknot::DType.
enum class KvType : int { kF16 = 1, kBF16 = 2 };

// Mirror of redknot::PageEntry: slots [first, first + count) of page page_id hold positions pos0, pos0 + 1, ...
struct DevPageEntry {
  std::int32_t page_id;
  std::int32_t first;
  std::int32_t count;
  std::int32_t pos0;
};
static_assert(sizeof(DevPageEntry) == 16, "DevPageEntry mirrors PageEntry (16 bytes)");

// Mirror of redknot::PlanSlot: entry i is arena[sink_offset + i] for i < sink_len, else
// arena[ring_offset + ((ring_start + i - sink_len) & (ring_cap - 1))].
struct DevSlot {
  std::int32_t sink_offset;
  std::int32_t sink_cap;
  std::int32_t sink_len;
  std::int32_t ring_offset;
  std::int32_t ring_cap;
  std::int32_t ring_start;
  std::int32_t ring_len;
};
static_assert(sizeof(DevSlot) == 28, "DevSlot mirrors PlanSlot (7 x int32)");

// One kv head's visibility parameters for a layer (the canonical rule, DESIGN §2).
// is_local == 0: sees every k <= p. Otherwise: k <= p and (k < sink or k > p - window).
struct DevPolicy {
  std::int32_t is_local;
  std::int32_t window;
  std::int32_t sink;
};

// The paged KV of one layer as the kernels see it.
struct PagedKV {
  const void* pool = nullptr;  // [num_pages][2][page_size][head_dim] of KvType
  int page_size = 16;
  int head_dim = 128;
  int num_kv_heads = 0;
  const DevPageEntry* arena = nullptr;  // AttentionPlan arena mirror
  const DevSlot* slots = nullptr;       // [batch][num_kv_heads]
  const DevPolicy* policies = nullptr;  // [num_kv_heads], this layer
};

// Error from a CUDA entry point: bad arguments (std::invalid_argument) or a failed CUDA call.
class CudaError : public std::runtime_error {
 public:
  CudaError(cudaError_t code, const std::string& what)
      : std::runtime_error(what + ": " + cudaGetErrorString(code)), code_(code) {}
  cudaError_t code() const { return code_; }

 private:
  cudaError_t code_;
};

inline void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw CudaError(e, what);
}

inline void check_arg(bool cond, const std::string& msg) {
  if (!cond) throw std::invalid_argument(msg);
}

}  // namespace redknot::cuda
