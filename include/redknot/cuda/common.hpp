// Types shared by the CUDA kernels and their host entry points.
//
// This header is included by .cu files, which CMake 3.25 compiles as C++17, and by C++20 host code, so it
// uses C++17 only and includes nothing of the C++20 core headers. The structs below are bit-for-bit mirrors
// of the core types (PageEntry, PlanSlot, HeadPolicy's fields); device_plan.hpp static_asserts the layouts
// match.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "redknot/cuda/types.hpp"

namespace redknot::cuda {

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
