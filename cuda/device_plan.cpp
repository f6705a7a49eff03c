// DevicePlan: incremental host->device mirror of an AttentionPlan. See include/redknot/cuda/device_plan.hpp.
#include "redknot/cuda/device_plan.hpp"

#include "redknot/cuda/runtime_api.hpp"

#include <algorithm>
#include <string>

namespace redknot::cuda {

namespace {
template <class T>
T* device_alloc(std::int64_t n, const char* what) {
  void* p = nullptr;
  check_cuda(cudaMalloc(&p, static_cast<std::size_t>(std::max<std::int64_t>(n, 1)) * sizeof(T)), what);
  return static_cast<T*>(p);
}
}  // namespace

DevicePlan::DevicePlan(int max_items, int num_kv_heads, int max_queries, std::int64_t initial_arena_entries)
    : max_items_(max_items), num_kv_heads_(num_kv_heads), max_queries_(max_queries) {
  check_arg(max_items > 0 && num_kv_heads > 0 && max_queries > 0,
            "DevicePlan: max_items, num_kv_heads and max_queries must be > 0");
  try {
    slots_ = device_alloc<PlanSlot>(static_cast<std::int64_t>(max_items) * num_kv_heads, "cudaMalloc(slots)");
    policies_ = device_alloc<HeadPolicy>(num_kv_heads, "cudaMalloc(policies)");
    q_pos_ = device_alloc<std::int32_t>(max_queries, "cudaMalloc(q_pos)");
    q_begin_ = device_alloc<std::int32_t>(max_items, "cudaMalloc(q_begin)");
    q_len_ = device_alloc<std::int32_t>(max_items, "cudaMalloc(q_len)");
    grow_arena(std::max<std::int64_t>(initial_arena_entries, 16));
  } catch (...) {
    release();  // the destructor does not run for a constructor that throws
    throw;
  }
}

DevicePlan::~DevicePlan() { release(); }

void DevicePlan::release() noexcept {
  cudaFree(arena_);
  cudaFree(slots_);
  cudaFree(policies_);
  cudaFree(q_pos_);
  cudaFree(q_begin_);
  cudaFree(q_len_);
  arena_ = nullptr;
  slots_ = nullptr;
  policies_ = nullptr;
  q_pos_ = q_begin_ = q_len_ = nullptr;
}

void DevicePlan::grow_arena(std::int64_t entries) {
  PageEntry* p = device_alloc<PageEntry>(entries, "cudaMalloc(plan arena)");
  cudaFree(arena_);
  arena_ = p;
  arena_cap_ = entries;
  synced_arena_size_ = -1;  // the new buffer holds nothing yet
  ++generation_;
}

void DevicePlan::sync(const AttentionPlan& plan, std::span<const HeadPolicy> policies, cudaStream_t stream) {
  const auto items = plan.items();
  check_arg(plan.num_kv_heads() == num_kv_heads_, "DevicePlan::sync: plan has ", plan.num_kv_heads(),
            " kv heads, expected ", num_kv_heads_);
  check_arg(static_cast<int>(items.size()) <= max_items_, "DevicePlan::sync: batch of ", items.size(),
            " exceeds max_items ", max_items_);
  check_arg(plan.total_queries() <= max_queries_, "DevicePlan::sync: ", plan.total_queries(),
            " queries exceed max_queries ", max_queries_);
  check_arg(static_cast<int>(policies.size()) == num_kv_heads_,
            "DevicePlan::sync: policies must hold one entry per kv head");
  last_ = {};
  const auto arena = plan.arena();
  const auto n_arena = static_cast<std::int64_t>(arena.size());
  if (n_arena > arena_cap_) grow_arena(std::max<std::int64_t>(n_arena, 2 * arena_cap_));
  if (synced_arena_size_ < 0) {
    // First upload into this buffer: everything.
    if (n_arena > 0)
      check_cuda(cudaMemcpyAsync(arena_, arena.data(), static_cast<std::size_t>(n_arena) * sizeof(PageEntry),
                                 cudaMemcpyHostToDevice, stream),
                 "cudaMemcpyAsync(arena)");
    last_.arena_bytes = n_arena * static_cast<std::int64_t>(sizeof(PageEntry));
    last_.full_upload = true;
  } else {
    for (const auto& [off, cnt] : plan.dirty_spans()) {
      check_cuda(
          cudaMemcpyAsync(arena_ + off, arena.data() + off, static_cast<std::size_t>(cnt) * sizeof(PageEntry),
                          cudaMemcpyHostToDevice, stream),
          "cudaMemcpyAsync(arena span)");
      last_.arena_bytes += static_cast<std::int64_t>(cnt) * static_cast<std::int64_t>(sizeof(PageEntry));
    }
  }
  synced_arena_size_ = n_arena;

  const auto slots = plan.slots();
  if (!slots.empty())
    check_cuda(cudaMemcpyAsync(slots_, slots.data(), slots.size() * sizeof(PlanSlot), cudaMemcpyHostToDevice,
                               stream),
               "cudaMemcpyAsync(slots)");
  // Policies and query metadata are pageable copies, staged by the driver before cudaMemcpyAsync returns, so
  // the sources may change right after.
  check_cuda(cudaMemcpyAsync(policies_, policies.data(), policies.size() * sizeof(HeadPolicy),
                             cudaMemcpyHostToDevice, stream),
             "cudaMemcpyAsync(policies)");
  const auto qp = plan.q_positions();
  if (!qp.empty())
    check_cuda(
        cudaMemcpyAsync(q_pos_, qp.data(), qp.size() * sizeof(std::int32_t), cudaMemcpyHostToDevice, stream),
        "cudaMemcpyAsync(q_pos)");
  staging_.resize(2 * items.size());
  for (std::size_t i = 0; i < items.size(); ++i) {
    staging_[i] = items[i].q_begin;
    staging_[items.size() + i] = items[i].q_len;
  }
  if (!items.empty()) {
    check_cuda(cudaMemcpyAsync(q_begin_, staging_.data(), items.size() * sizeof(std::int32_t),
                               cudaMemcpyHostToDevice, stream),
               "cudaMemcpyAsync(q_begin)");
    check_cuda(cudaMemcpyAsync(q_len_, staging_.data() + items.size(), items.size() * sizeof(std::int32_t),
                               cudaMemcpyHostToDevice, stream),
               "cudaMemcpyAsync(q_len)");
  }
  last_.meta_bytes =
      static_cast<std::int64_t>(slots.size() * sizeof(PlanSlot) + policies.size() * sizeof(HeadPolicy) +
                                qp.size() * 4 + items.size() * 8);
  batch_ = static_cast<int>(items.size());
  total_q_ = plan.total_queries();
}

}  // namespace redknot::cuda
