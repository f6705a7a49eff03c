// REDKNOT_HD marks the small functions that host code and CUDA kernels share (the visibility rule, the plan
// slot layout): __host__ __device__ under nvcc, plain inline elsewhere, so one definition serves both.
#pragma once

#if defined(__CUDACC__)
#define REDKNOT_HD __host__ __device__ __forceinline__
#else
#define REDKNOT_HD inline
#endif

namespace redknot {

// std::min/std::max are not device functions without --expt-relaxed-constexpr; these are.
template <class T>
REDKNOT_HD T hd_min(T a, T b) {
  return b < a ? b : a;
}
template <class T>
REDKNOT_HD T hd_max(T a, T b) {
  return a < b ? b : a;
}

}  // namespace redknot
