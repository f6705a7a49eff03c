// Memory backends for the page pool.
//
// An Allocator provides raw storage plus the three copies the store needs (host rows into pages, page to page
// for copy-on-write). HostAllocator keeps pages in host memory, NullAllocator keeps only the bookkeeping: it
// lets capacity studies run the real append path for pools far larger than host RAM. Device memory:
// redknot::cuda::CudaPagedAllocator (cuda/store.hpp, part of redknot::cuda).
#pragma once

#include <concepts>
#include <cstddef>
#include <cstring>
#include <new>

#include "redknot/error.hpp"

namespace redknot {

template <class A>
concept Allocator = requires(A a, void* p, const void* cp, std::size_t n) {
  { A::kHostAccessible } -> std::convertible_to<bool>;
  { a.allocate(n) } -> std::same_as<void*>;
  a.deallocate(p, n);
  // Copy `rows` rows of `row_bytes` from host memory with a source stride into contiguous page memory.
  a.copy_rows_from_host(p, cp, n, n, n);
  // Copy within the backend's own memory (copy-on-write of a page).
  a.copy(p, cp, n);
};

struct HostAllocator {
  static constexpr bool kHostAccessible = true;
  static constexpr std::size_t kAlignment = 64;

  void* allocate(std::size_t bytes) {
    if (bytes == 0) return nullptr;
    // nothrow: a pool larger than memory is an error the caller handles (PoolExhausted), also under ASan,
    // whose throwing operator new aborts instead of throwing std::bad_alloc.
    void* p = ::operator new (bytes, std::align_val_t{kAlignment}, std::nothrow);
    if (p == nullptr)
      throw PoolExhausted(detail::concat("out of memory: host allocation of ", bytes, " bytes failed"));
    return p;
  }
  void deallocate(void* p, std::size_t) {
    if (p) ::operator delete (p, std::align_val_t{kAlignment});
  }
  void copy_rows_from_host(void* dst, const void* src, std::size_t rows, std::size_t row_bytes,
                           std::size_t src_stride_bytes) {
    auto* d = static_cast<char*>(dst);
    const auto* s = static_cast<const char*>(src);
    for (std::size_t r = 0; r < rows; ++r)
      std::memcpy(d + r * row_bytes, s + r * src_stride_bytes, row_bytes);
  }
  void copy(void* dst, const void* src, std::size_t bytes) { std::memmove(dst, src, bytes); }
};

// Bookkeeping only: no bytes are stored. Page pointers are null; attention cannot run on such a store.
struct NullAllocator {
  static constexpr bool kHostAccessible = false;
  void* allocate(std::size_t) { return nullptr; }
  void deallocate(void*, std::size_t) {}
  void copy_rows_from_host(void*, const void*, std::size_t, std::size_t, std::size_t) {}
  void copy(void*, const void*, std::size_t) {}
};

static_assert(Allocator<HostAllocator> && Allocator<NullAllocator>);

}  // namespace redknot
