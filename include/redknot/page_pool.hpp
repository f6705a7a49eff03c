// PagePool: a fixed-capacity, refcounted pool of KV pages for one (dtype, head_dim).
//
// Layout: [num_pages][2][page_size][head_dim] — page p holds K rows at k_ptr(p) and V rows at v_ptr(p).
// One pool serves every layer, head and sequence of a store. Capacity is fixed at creation, as engines
// reserve memory up front; alloc is O(1) from a free stack and all-or-nothing for batches, so exhaustion is
// an exception the caller can handle and never leaves a half-done allocation behind.
#pragma once

#include <atomic>
#include <cstdint>
#include <span>
#include <vector>

#include "redknot/allocator.hpp"
#include "redknot/core_types.hpp"
#include "redknot/dtype.hpp"
#include "redknot/error.hpp"

namespace redknot {

template <StorageType T, Allocator Alloc = HostAllocator>
class PagePool {
 public:
  PagePool(std::int32_t num_pages, int page_size, int head_dim, Alloc alloc = Alloc{})
      : num_pages_(num_pages), page_size_(page_size), head_dim_(head_dim), alloc_(std::move(alloc)) {
    require(num_pages > 0, "num_pages=", num_pages, " must be > 0");
    require(page_size > 0 && page_size <= kMaxPageSize, "page_size=", page_size, " must be in [1, ",
            kMaxPageSize, "]");
    require(head_dim > 0, "head_dim=", head_dim, " must be > 0");
    data_ = static_cast<T*>(alloc_.allocate(bytes()));
    refcount_.assign(static_cast<std::size_t>(num_pages), 0);
    free_.resize(static_cast<std::size_t>(num_pages));
    // Pop order 0, 1, 2, ...: the stack holds ids in reverse.
    for (std::int32_t i = 0; i < num_pages; ++i) free_[static_cast<std::size_t>(i)] = num_pages - 1 - i;
    free_count_.store(num_pages, std::memory_order_relaxed);
  }
  ~PagePool() { alloc_.deallocate(data_, bytes()); }
  PagePool(const PagePool&) = delete;
  PagePool& operator=(const PagePool&) = delete;

  std::int32_t num_pages() const { return num_pages_; }
  int page_size() const { return page_size_; }
  int head_dim() const { return head_dim_; }
  std::size_t page_elems() const { return 2 * static_cast<std::size_t>(page_size_) * head_dim_; }
  std::size_t page_bytes() const { return page_elems() * sizeof(T); }
  std::size_t bytes() const { return page_bytes() * static_cast<std::size_t>(num_pages_); }

  // Safe to read concurrently with a writer (docs/design.md, "Contracts": thread safety).
  std::int32_t free_pages() const { return free_count_.load(std::memory_order_relaxed); }
  std::int32_t used_pages() const { return num_pages_ - free_pages(); }

  // Allocates n pages with refcount 1 into out, or throws PoolExhausted and allocates nothing.
  void alloc(std::int32_t n, std::vector<PageId>& out) {
    require(n >= 0, "alloc: n=", n, " must be >= 0");
    require<PoolExhausted>(n <= static_cast<std::int32_t>(free_.size()), "page pool exhausted: need ", n,
                           " pages, ", free_.size(), " free of ", num_pages_);
    for (std::int32_t i = 0; i < n; ++i) {
      const PageId p = free_.back();
      free_.pop_back();
      refcount_[static_cast<std::size_t>(p)] = 1;
      out.push_back(p);
    }
    free_count_.store(static_cast<std::int32_t>(free_.size()), std::memory_order_relaxed);
  }

  void incref(PageId p) {
    check_live(p, "incref");
    ++refcount_[static_cast<std::size_t>(p)];
  }
  // Returns true when the page went back to the free list.
  bool decref(PageId p) {
    check_live(p, "decref");
    if (--refcount_[static_cast<std::size_t>(p)] > 0) return false;
    free_.push_back(p);
    free_count_.store(static_cast<std::int32_t>(free_.size()), std::memory_order_relaxed);
    return true;
  }
  std::int32_t refcount(PageId p) const {
    check_id(p);
    return refcount_[static_cast<std::size_t>(p)];
  }

  // Page storage. Host-dereferenceable only when Alloc::kHostAccessible.
  T* k_ptr(PageId p) { return data_ ? data_ + static_cast<std::size_t>(p) * page_elems() : nullptr; }
  T* v_ptr(PageId p) { return data_ ? k_ptr(p) + static_cast<std::size_t>(page_size_) * head_dim_ : nullptr; }
  const T* k_ptr(PageId p) const {
    return data_ ? data_ + static_cast<std::size_t>(p) * page_elems() : nullptr;
  }
  const T* v_ptr(PageId p) const {
    return data_ ? k_ptr(p) + static_cast<std::size_t>(page_size_) * head_dim_ : nullptr;
  }
  T* data() { return data_; }
  const T* data() const { return data_; }
  Alloc& allocator() { return alloc_; }

 private:
  void check_id(PageId p) const {
    if (p < 0 || p >= num_pages_)
      throw InvalidArgument(detail::concat("page id ", p, " out of range [0, ", num_pages_, ")"));
  }
  void check_live(PageId p, const char* op) const {
    check_id(p);
    if (refcount_[static_cast<std::size_t>(p)] <= 0)
      throw std::logic_error(detail::concat(op, " of free page ", p, " (double free)"));
  }

  std::int32_t num_pages_;
  int page_size_;
  int head_dim_;
  Alloc alloc_;
  T* data_ = nullptr;
  std::vector<std::int32_t> refcount_;
  std::vector<PageId> free_;
  std::atomic<std::int32_t> free_count_{0};
};

}  // namespace redknot
