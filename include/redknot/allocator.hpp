// Memory backends for the page pool.
//
// An Allocator provides the pool's raw storage: allocate and free. Bytes move elsewhere: the store decides
// where an append's rows go (AppendPlan, append_plan.hpp) and a mover for the memory kind copies them.
// HostAllocator keeps pages in host memory, NullAllocator keeps only the bookkeeping: it lets capacity
// studies run the real append path for pools far larger than host RAM. Device memory:
// redknot::cuda::CudaPagedAllocator (cuda/store.hpp, part of redknot::cuda).
#pragma once

#include <concepts>
#include <cstddef>
#include <new>

#include "redknot/error.hpp"

namespace redknot {

template <class A>
concept Allocator = requires(A a, void* p, std::size_t n) {
  { A::kHostAccessible } -> std::convertible_to<bool>;
  { a.allocate(n) } -> std::same_as<void*>;
  a.deallocate(p, n);
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
};

// Bookkeeping only: no bytes are stored. Page pointers are null; attention cannot run on such a store.
struct NullAllocator {
  static constexpr bool kHostAccessible = false;
  void* allocate(std::size_t) { return nullptr; }
  void deallocate(void*, std::size_t) {}
};

static_assert(Allocator<HostAllocator> && Allocator<NullAllocator>);

}  // namespace redknot
