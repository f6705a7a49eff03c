// DevicePlan: the device mirror of an AttentionPlan (docs/design.md, "AttentionPlan layout"): device-side
// tables stay resident and are updated incrementally. It owns preallocated device buffers for the plan arena,
// the slots, the layer's head policies and the query metadata, and sync() uploads only the arena spans the
// last AttentionPlan::update() wrote (dirty_spans()), so the host->device bytes of a decode step are
// proportional to changed entries, not to context length. Buffers keep their addresses until a capacity is
// exceeded (generation() then changes, and a captured CUDA graph must be re-captured).
//
// C++20 host code (it reads the core's AttentionPlan); implementation in cuda/device_plan.cpp.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "redknot/attention_plan.hpp"
#include "redknot/cuda/common.hpp"
#include "redknot/head_map.hpp"

namespace redknot::cuda {

class DevicePlan {
 public:
  struct SyncStats {
    std::int64_t arena_bytes = 0;  // arena bytes uploaded by the last sync
    std::int64_t meta_bytes = 0;   // slots, policies, query metadata
    bool full_upload = false;      // the arena was re-uploaded whole (first sync or growth)
  };

  // Capacities: batch items, kv heads, total queries per step. The arena grows on demand.
  DevicePlan(int max_items, int num_kv_heads, int max_queries, std::int64_t initial_arena_entries = 1 << 14);
  ~DevicePlan();
  DevicePlan(const DevicePlan&) = delete;
  DevicePlan& operator=(const DevicePlan&) = delete;

  // Brings the device copy up to date with `plan` (which must be the same AttentionPlan object every call,
  // just updated; its dirty spans describe the change). policies: the layer's [num_kv_heads] head policies.
  void sync(const AttentionPlan& plan, std::span<const HeadPolicy> policies, cudaStream_t stream);

  PagedKV paged_kv(const void* pool, int page_size, int head_dim) const {
    return PagedKV{pool, page_size, head_dim, num_kv_heads_, arena_, slots_, policies_};
  }
  int batch() const { return batch_; }
  int total_queries() const { return total_q_; }
  const std::int32_t* q_pos() const { return q_pos_; }
  const std::int32_t* q_begin() const { return q_begin_; }
  const std::int32_t* q_len() const { return q_len_; }
  std::uint64_t generation() const { return generation_; }
  const SyncStats& last_sync() const { return last_; }

 private:
  void grow_arena(std::int64_t entries);
  void release() noexcept;  // frees every device buffer (cudaFree(nullptr) is a no-op)

  int max_items_, num_kv_heads_, max_queries_;
  int batch_ = 0, total_q_ = 0;
  std::int64_t arena_cap_ = 0;
  std::int64_t synced_arena_size_ = -1;  // -1: nothing uploaded yet
  PageEntry* arena_ = nullptr;
  PlanSlot* slots_ = nullptr;
  HeadPolicy* policies_ = nullptr;
  std::int32_t* q_pos_ = nullptr;
  std::int32_t* q_begin_ = nullptr;
  std::int32_t* q_len_ = nullptr;
  std::vector<std::int32_t> staging_;
  std::uint64_t generation_ = 0;
  SyncStats last_;
};

}  // namespace redknot::cuda
