// CudaAllocator: cudaMalloc-backed page storage. Built against cudart when the toolkit is found
// (REDKNOT_HAVE_CUDART); otherwise every call reports that CUDA is unavailable.
#include "redknot/cuda_allocator.hpp"

#if REDKNOT_HAVE_CUDART
#include <cuda_runtime_api.h>
#endif

namespace redknot {

#if REDKNOT_HAVE_CUDART

namespace {
void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Unavailable(detail::concat("CUDA ", what, " failed: ", cudaGetErrorString(e)));
}
}  // namespace

int cuda_device_count() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later probes start clean
    return 0;
  }
  return n;
}

void* CudaAllocator::allocate(std::size_t bytes) {
  require<Unavailable>(device < cuda_device_count(), "CudaAllocator: device=", device, " not present (",
                       cuda_device_count(), " CUDA devices visible)");
  check(cudaSetDevice(device), "cudaSetDevice");
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    throw PoolExhausted(
        detail::concat("cudaMalloc of ", bytes, " bytes on device ", device, " failed: out of memory"));
  }
  check(e, "cudaMalloc");
  return p;
}

void CudaAllocator::deallocate(void* p, std::size_t) {
  if (p) cudaFree(p);
}

void CudaAllocator::copy_rows_from_host(void* dst, const void* src, std::size_t rows, std::size_t row_bytes,
                                        std::size_t src_stride_bytes) {
  check(cudaMemcpy2D(dst, row_bytes, src, src_stride_bytes, row_bytes, rows, cudaMemcpyHostToDevice),
        "cudaMemcpy2D");
}

void CudaAllocator::copy(void* dst, const void* src, std::size_t bytes) {
  check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice), "cudaMemcpy");
}

#else

int cuda_device_count() { return 0; }

void* CudaAllocator::allocate(std::size_t) {
  throw Unavailable("CudaAllocator: redknot was built without the CUDA runtime");
}
void CudaAllocator::deallocate(void*, std::size_t) {}
void CudaAllocator::copy_rows_from_host(void*, const void*, std::size_t, std::size_t, std::size_t) {
  throw Unavailable("CudaAllocator: redknot was built without the CUDA runtime");
}
void CudaAllocator::copy(void*, const void*, std::size_t) {
  throw Unavailable("CudaAllocator: redknot was built without the CUDA runtime");
}

#endif

}  // namespace redknot
