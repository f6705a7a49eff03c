// Error handling of the CUDA entry points, in the core's exception types (redknot/error.hpp) so that bindings
// map them like every other error: bad arguments are InvalidArgument, a device out of memory is
// PoolExhausted ("out of memory: ..."), a missing device or driver is Unavailable, and any other failed CUDA
// call is a CudaError (a bug or a broken device, RK_ERR_INTERNAL in the C ABI).
#pragma once

#include <cstdint>

#include "redknot/cuda/runtime_api.hpp"

#include <stdexcept>
#include <string>

#include "redknot/cuda/types.hpp"
#include "redknot/error.hpp"

namespace redknot::cuda {

class CudaError : public std::runtime_error {
 public:
  CudaError(cudaError_t code, const std::string& what)
      : std::runtime_error(what + ": " + cudaGetErrorString(code)), code_(code) {}
  cudaError_t code() const { return code_; }

 private:
  cudaError_t code_;
};

// Throws the core exception that matches a failed CUDA call; `what` names the call.
[[noreturn]] inline void throw_cuda_error(cudaError_t e, const char* what) {
  switch (e) {
    case cudaErrorMemoryAllocation:
      throw PoolExhausted(redknot::detail::concat("out of memory: ", what, " failed on the device (",
                                                  cudaGetErrorString(e),
                                                  "); free sequences or stores and retry"));
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorInvalidDevice:
      throw Unavailable(
          redknot::detail::concat(what, ": no usable CUDA device (", cudaGetErrorString(e), ")"));
    default:
      throw CudaError(e, what);
  }
}

inline void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) [[unlikely]]
    throw_cuda_error(e, what);
}

// Argument checks of the CUDA entry points: InvalidArgument, message streamed only on failure.
template <class... Args>
inline void check_arg(bool cond, Args&&... msg) {
  require<InvalidArgument>(cond, std::forward<Args>(msg)...);
}

// The kernels move q, K and V 16 bytes at a time: a device pointer must be 16-byte aligned (a torch view at
// an odd element offset is not). An InvalidArgument naming the argument, rather than a misaligned-address
// fault.
inline void check_aligned16(const void* p, const char* fn, const char* name) {
  check_arg(reinterpret_cast<std::uintptr_t>(p) % 16 == 0, fn, ": ", name, "=", p,
            " is not 16-byte aligned (the kernels load 16 bytes at a time; a tensor view at an odd element "
            "offset cannot be used: pass a contiguous copy)");
}

}  // namespace redknot::cuda
