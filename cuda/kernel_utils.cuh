// Device helpers shared by the kernels of cuda/: dtype conversion of 16-byte vectors and cp.async / ldmatrix
// / mma.sync wrappers (the visibility rule and plan-entry indexing come from the core headers via
// staging.hpp). Private to cuda/ (device code).
//
// Host execution mode (REDKNOT_CUDA_HOST_MODE, host_mode/device.hpp): the same kernels compile as C++ and run
// on the CPU; the inline-PTX wrappers below are then emulations (cp.async queued to its wait, ldmatrix and
// mma by the PTX fragment tables, host_mode/ptx_fragments.hpp) and launches go through REDKNOT_LAUNCH.
#pragma once

#if defined(REDKNOT_CUDA_HOST_MODE)
#include "host_mode/device.hpp"
#include "host_mode/ptx_fragments.hpp"
#define REDKNOT_LAUNCH(grid, block, smem, stream, ...) \
  ::redknot::cuda::host::Launch((grid), (block), (smem), (stream)).of(__VA_ARGS__)
#define REDKNOT_DYNAMIC_SMEM(type, name) \
  type* const name = reinterpret_cast<type*>(::redknot::cuda::host::dynamic_smem())
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cub/block/block_scan.cuh>
#define REDKNOT_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<(grid), (block), (smem), (stream)>>>
#define REDKNOT_DYNAMIC_SMEM(type, name) extern __shared__ __align__(16) type name[]
#endif

#include <cstdint>

#include "redknot/cuda/common.hpp"
#include "redknot/cuda/staging.hpp"

namespace redknot::cuda::detail {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

template <DType K>
struct KvTraits;
template <>
struct KvTraits<DType::kF16> {
  using T = __half;
  using T2 = __half2;
};
template <>
struct KvTraits<DType::kBF16> {
  using T = __nv_bfloat16;
  using T2 = __nv_bfloat162;
};

// One 16-bit value to fp32 and back (round to nearest even).
template <DType K>
__device__ __forceinline__ float to_f32(typename KvTraits<K>::T x) {
  if constexpr (K == DType::kBF16)
    return __bfloat162float(x);
  else
    return __half2float(x);
}
template <DType K>
__device__ __forceinline__ typename KvTraits<K>::T from_f32(float x) {
  if constexpr (K == DType::kBF16)
    return __float2bfloat16_rn(x);
  else
    return __float2half_rn(x);
}

// 8 packed 16-bit values (one 16-byte load) to fp32.
template <DType K>
__device__ __forceinline__ void unpack8(const uint4& v, float (&f)[8]) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (K == DType::kBF16) {
      // bf16 -> fp32 is a shift: cheaper than the intrinsic's cvt on some targets.
      f[2 * i] = __uint_as_float(w[i] << 16);
      f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    } else {
      __half2 h;
      memcpy(&h, &w[i], 4);
      const float2 t = __half22float2(h);
      f[2 * i] = t.x;
      f[2 * i + 1] = t.y;
    }
  }
}

template <DType K>
__device__ __forceinline__ uint32_t pack2(float a, float b) {
  uint32_t r;
  if constexpr (K == DType::kBF16) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    memcpy(&r, &h, 4);
  } else {
    const __half2 h = __floats2half2_rn(a, b);
    memcpy(&r, &h, 4);
  }
  return r;
}

template <DType K>
__device__ __forceinline__ uint4 pack8(const float (&f)[8]) {
  return make_uint4(pack2<K>(f[0], f[1]), pack2<K>(f[2], f[3]), pack2<K>(f[4], f[5]), pack2<K>(f[6], f[7]));
}

#if defined(REDKNOT_CUDA_HOST_MODE)

__device__ __forceinline__ uint4 ldg_nc(const void* p) {
  uint4 r;
  std::memcpy(&r, p, sizeof r);
  return r;
}
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
  host::cp_async(smem, gmem, src_bytes);
}
__device__ __forceinline__ void cp_async_commit() { host::cp_async_commit(); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  host::cp_async_wait(N);
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  const void* rows[32];
  host::warp_all_gather(0xffffffffu, &p, sizeof p, rows);
  host::ptx::ldmatrix_x4(rows, host::lane_id(), false, r);
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  const void* rows[32];
  host::warp_all_gather(0xffffffffu, &p, sizeof p, rows);
  host::ptx::ldmatrix_x4(rows, host::lane_id(), true, r);
}
template <DType K>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  const host::ptx::MmaOperands mine{{a[0], a[1], a[2], a[3]}, {b0, b1}};
  host::ptx::MmaOperands all[32];
  host::warp_all_gather(0xffffffffu, &mine, sizeof mine, all);
  host::ptx::mma_16816(all, host::lane_id(), K == DType::kBF16, d);
}
template <class T, int N>
using BlockScanOf = host::BlockScan<T, N>;

#else

__device__ __forceinline__ uint4 ldg_nc(const void* p) {
  // Read-only, streamed once per step: do not pollute L1.
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

// ---- Ampere+ primitives (sm_80 and sm_90)
// --------------------------------------------------------------------

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy; src_bytes == 0 zero-fills the destination (used for padding rows of a partial tile).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(smem)), "l"(gmem),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// D = A * B + D, m16n8k16, fp32 accumulators.
template <DType K>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (K == DType::kBF16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

template <class T, int N>
using BlockScanOf = cub::BlockScan<T, N>;

#endif  // REDKNOT_CUDA_HOST_MODE

}  // namespace redknot::cuda::detail
