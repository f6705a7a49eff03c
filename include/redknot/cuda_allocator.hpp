// Device-memory backend for the page pool. Always compiles; where the library was built without the CUDA
// runtime, or no device is present, allocate() throws Unavailable with the reason.
#pragma once

#include <cstddef>

#include "redknot/allocator.hpp"

namespace redknot {

// Number of CUDA devices usable by this process; 0 when the runtime is absent, the driver is too old or no
// device exists (cudaErrorNoDevice / cudaErrorInsufficientDriver are not errors here).
int cuda_device_count();

struct CudaAllocator {
  static constexpr bool kHostAccessible = false;
  static constexpr const char* kName = "cuda";
  int device = 0;

  void* allocate(std::size_t bytes);
  void deallocate(void* p, std::size_t bytes);
  void copy_rows_from_host(void* dst, const void* src, std::size_t rows, std::size_t row_bytes,
                           std::size_t src_stride_bytes);
  void copy(void* dst, const void* src, std::size_t bytes);
};

static_assert(Allocator<CudaAllocator>);

}  // namespace redknot
