// Plain data shared by the CUDA kernels, their host entry points and CPU tests: C++17, no CUDA headers.
//
// The structs are bit-for-bit mirrors of the core types (PageEntry, PlanSlot, HeadPolicy's fields);
// device_plan.hpp static_asserts that the layouts match.
#pragma once

#include <cstdint>

namespace redknot::cuda {

// Storage / activation dtype of a kernel call. Values match redknot::DType.
enum class KvType : int { kF16 = 1, kBF16 = 2 };

// Mirror of redknot::PageEntry: slots [first, first + count) of page page_id hold positions pos0, pos0 + 1,
// ...
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

// One kv head's visibility parameters for a layer (the canonical rule of visibility.hpp).
// is_local == 0: sees every k <= p. Otherwise: k <= p and (k < sink or k > p - window).
struct DevPolicy {
  std::int32_t is_local;
  std::int32_t window;
  std::int32_t sink;
};

// The paged KV of one layer as the kernels see it. Kernels address K/V rows as page_id * 2 * page_size + slot
// in int32 (the row count of the pool, num_pages * 2 * page_size, must stay below 2^31) and elements in
// int64.
struct PagedKV {
  const void* pool = nullptr;  // [num_pages][2][page_size][head_dim] of KvType
  int page_size = 16;
  int head_dim = 128;
  int num_kv_heads = 0;
  const DevPageEntry* arena = nullptr;  // AttentionPlan arena mirror
  const DevSlot* slots = nullptr;       // [batch][num_kv_heads]
  const DevPolicy* policies = nullptr;  // [num_kv_heads], this layer
};

}  // namespace redknot::cuda
