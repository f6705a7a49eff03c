// Host execution mode of the CUDA kernels: what device code needs to compile and run as plain C++ on the CPU
// (REDKNOT_CUDA_HOST_MODE; the precedents are Triton's interpreter and HIP-CPU).
//
// A launch runs the grid CTA by CTA on the calling thread; the threads of a CTA are fibers (each with its own
// stack) scheduled cooperatively: a thread runs until it reaches a barrier or a warp collective, then the
// next one runs. So
//   * __syncthreads() is a real barrier over the CTA's live threads (a CTA whose threads cannot all reach one
//     is reported as a deadlock: a launch failure);
//   * warp collectives (__shfl*_sync, __ballot_sync, ldmatrix, mma) are a barrier over the warp's 32 lanes
//     plus an exchange of every lane's operands; each lane then computes its own result from the PTX ISA's
//     definition (ldmatrix / mma fragment layouts: ptx_fragments.hpp);
//   * cp.async copies are done at the latest moment the PTX memory model allows (the cp.async.wait_group that
//     covers them: a read before the wait sees stale data) or at the earliest (at issue: an overwrite of
//     shared memory that other threads still read shows), CTA by CTA in turn;
//   * shared memory: `__shared__` variables are function-local statics of the OS thread (one CTA at a time
//     runs on it), dynamic shared memory is a per-CTA buffer filled with 0xff (NaN) before each CTA;
//   * threads run in ascending or descending order, CTA by CTA in turn, so a missing barrier between a write
//     and a read by another thread is seen in one of the two orders.
// Device memory is host memory (host_mode/runtime.hpp). Included by cuda/kernel_utils.cuh in host mode only.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>

#include "redknot/cuda/host_mode/runtime.hpp"
#include "redknot/dtype.hpp"

// ---- keywords
// -----------------------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static thread_local

// ---- vector types and thread indices
// ----------------------------------------------------------------------------------------
struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }

namespace redknot::cuda::host {

struct ThreadCtx {
  uint3 thread_idx, block_idx, block_dim, grid_dim;
};
// The running CUDA thread's indices.
const ThreadCtx& cur();

// A CTA-wide barrier over the live threads.
void sync_block();
// Warp all-gather: every lane of the calling thread's warp deposits `bytes` (<= 64) from `mine`; when all 32
// lanes have, each receives all 32 deposits (lane-major) in `all`. mask must name all 32 lanes.
void warp_all_gather(unsigned mask, const void* mine, std::size_t bytes, void* all);
int lane_id();
// Dynamic shared memory of the running CTA (the launch's smem bytes, 16-byte aligned).
unsigned char* dynamic_smem();

// cp.async of the calling thread: done at once, or queued in its open group (see above); commit closes the
// group; wait(n) performs every committed group but the newest n.
void cp_async(void* dst, const void* src, int src_bytes);
void cp_async_commit();
void cp_async_wait(int n);

// A grid: every CTA of `grid`, `block` threads each running `kernel` (the bound launch).
void run_grid(uint3 grid, uint3 block, std::size_t smem, const std::function<void()>& kernel);

template <class T>
T shfl_gather(unsigned mask, T v, int src) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 64);
  T all[32];
  warp_all_gather(mask, &v, sizeof(T), all);
  return all[src];
}

// A launch configuration bound to a kernel: REDKNOT_LAUNCH(grid, block, smem, stream, kernel)(args...).
class Launch {
 public:
  template <class G, class B, class S>
  Launch(G grid, B block, S smem, cudaStream_t stream)
      : grid_{static_cast<unsigned>(grid), 1, 1},
        block_{static_cast<unsigned>(block), 1, 1},
        smem_(static_cast<std::size_t>(smem)),
        stream_(stream) {}
  template <class... P>
  auto of(void (*kernel)(P...)) const {
    return [cfg = *this, kernel](auto&&... args) {
      // The kernel's parameters by value, as a launch copies them.
      cfg.enqueue(
          [kernel, a = std::tuple<std::decay_t<P>...>(static_cast<P>(args)...)] { std::apply(kernel, a); });
    };
  }

 private:
  void enqueue(std::function<void()> kernel_once) const;
  uint3 grid_, block_;
  std::size_t smem_;
  cudaStream_t stream_;
};

}  // namespace redknot::cuda::host

#define threadIdx (::redknot::cuda::host::cur().thread_idx)
#define blockIdx (::redknot::cuda::host::cur().block_idx)
#define blockDim (::redknot::cuda::host::cur().block_dim)
#define gridDim (::redknot::cuda::host::cur().grid_dim)

// ---- intrinsics
// ------------------------------------------------------------------------------------------------------
inline void __syncthreads() { ::redknot::cuda::host::sync_block(); }

template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  const int lane = ::redknot::cuda::host::lane_id();
  const int src = lane ^ lane_mask;
  // Outside the lane's segment of `width` lanes: its own value.
  const bool inside = (src & ~(width - 1)) == (lane & ~(width - 1));
  const T got = ::redknot::cuda::host::shfl_gather(mask, v, src & 31);
  return inside ? got : v;
}
template <class T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
  const int lane = ::redknot::cuda::host::lane_id();
  return ::redknot::cuda::host::shfl_gather(mask, v, (lane & ~(width - 1)) + (src_lane & (width - 1)));
}
template <class T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = ::redknot::cuda::host::lane_id();
  const int src = lane - static_cast<int>(delta);
  const T got = ::redknot::cuda::host::shfl_gather(mask, v, src < 0 ? lane : src);
  return src < (lane & ~(width - 1)) ? v : got;
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  int all[32];
  const int mine = pred != 0;
  ::redknot::cuda::host::warp_all_gather(mask, &mine, sizeof mine, all);
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= all[i] ? 1u << i : 0u;
  return r;
}
inline int __ffs(int x) { return __builtin_ffs(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }

// ---- 16-bit floating point (cuda_fp16.h / cuda_bf16.h subset; round to nearest even)
// ---------------------------------
struct __half {
  std::uint16_t x;
};
struct __half2 {
  __half x, y;
};
struct __nv_bfloat16 {
  std::uint16_t x;
};
struct __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
inline float __half2float(__half h) { return redknot::Half::to_float(h.x); }
inline __half __float2half_rn(float f) { return __half{redknot::Half::from_float(f)}; }
inline float2 __half22float2(__half2 h) { return float2{__half2float(h.x), __half2float(h.y)}; }
inline __half2 __floats2half2_rn(float a, float b) { return __half2{__float2half_rn(a), __float2half_rn(b)}; }
inline float __bfloat162float(__nv_bfloat16 h) { return redknot::BFloat16::to_float(h.x); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16{redknot::BFloat16::from_float(f)}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
  return __nv_bfloat162{__float2bfloat16_rn(a), __float2bfloat16_rn(b)};
}

namespace redknot::cuda {
// Device code's integer min/max (found before std:: by the kernels' unqualified calls).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a < b ? b : a; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a < b ? b : a; }
}  // namespace redknot::cuda

// ---- cub subset
// ------------------------------------------------------------------------------------------------------
namespace redknot::cuda::host {

// cub::BlockScan<T, N>::ExclusiveSum over the CTA's N threads.
template <class T, int N>
class BlockScan {
 public:
  struct TempStorage {
    T v[N];
  };
  explicit BlockScan(TempStorage& s) : s_(s) {}
  void ExclusiveSum(T x, T& out, T& total) {
    const int tid = static_cast<int>(cur().thread_idx.x);
    s_.v[tid] = x;
    sync_block();
    T run{};
    for (int i = 0; i < N; ++i) {
      if (i == tid) out = run;
      run += s_.v[i];
    }
    total = run;
    sync_block();  // the storage may be reused right after
  }

 private:
  TempStorage& s_;
};

}  // namespace redknot::cuda::host
