// Checks and copies on DLTensors shared by AnyStore's entry points (private to the bindings).
//
// Binding code receives tensors from foreign producers (numpy, torch, C callers), so every property the
// kernels rely on — host residency, dtype, shape, contiguity — is checked here with a message that names the
// argument. Strided tensors are supported by gathering into (and scattering out of) a contiguous buffer.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "redknot/dlpack_types.h"
#include "redknot/dtype.hpp"
#include "redknot/error.hpp"

namespace redknot::detail {

enum class ElemType { kF32, kF16, kBF16, kOther };

inline ElemType elem_type(const DLDataType& t) {
  if (t.lanes != 1) return ElemType::kOther;
  if (t.code == kDLFloat && t.bits == 32) return ElemType::kF32;
  if (t.code == kDLFloat && t.bits == 16) return ElemType::kF16;
  if (t.code == kDLBfloat && t.bits == 16) return ElemType::kBF16;
  return ElemType::kOther;
}

inline ElemType elem_type(DType t) {
  switch (t) {
    case DType::kF32:
      return ElemType::kF32;
    case DType::kF16:
      return ElemType::kF16;
    case DType::kBF16:
      return ElemType::kBF16;
  }
  return ElemType::kOther;
}

inline const char* elem_type_name(ElemType t) {
  switch (t) {
    case ElemType::kF32:
      return "float32";
    case ElemType::kF16:
      return "float16";
    case ElemType::kBF16:
      return "bfloat16";
    case ElemType::kOther:
      return "?";
  }
  return "?";
}

inline std::size_t elem_bytes(const DLDataType& t) {
  return (static_cast<std::size_t>(t.bits) * t.lanes + 7) / 8;
}

inline std::string shape_string(const DLTensor& t) {
  std::string s = "[";
  for (int i = 0; i < t.ndim; ++i) s += (i ? ", " : "") + std::to_string(t.shape[i]);
  return s + "]";
}

// Saturates at INT64_MAX so that absurd extents from a foreign producer cannot overflow before the shape
// checks.
inline std::int64_t numel(const DLTensor& t) {
  std::int64_t n = 1;
  for (int i = 0; i < t.ndim; ++i) {
    if (t.shape[i] == 0) return 0;
    if (n > std::numeric_limits<std::int64_t>::max() / t.shape[i])
      n = std::numeric_limits<std::int64_t>::max();
    else
      n *= t.shape[i];
  }
  return n;
}

// Row-major compact (strides NULL, or equal to the row-major strides wherever the extent is > 1).
inline bool is_compact(const DLTensor& t) {
  if (t.strides == nullptr) return true;
  std::int64_t expect = 1;
  for (int i = t.ndim - 1; i >= 0; --i) {
    if (t.shape[i] != 1 && t.strides[i] != expect) return false;
    expect *= t.shape[i];
  }
  return true;
}

inline char* base_ptr(const DLTensor& t) { return static_cast<char*>(t.data) + t.byte_offset; }

// Structural sanity of a tensor from outside: pointers present, extents non-negative, host memory.
inline void check_tensor(const DLTensor* t, const char* name) {
  REDKNOT_CHECK(t != nullptr, InvalidArgument, name, " is NULL");
  REDKNOT_CHECK(t->ndim >= 0 && t->ndim <= 8, InvalidArgument, name, ".ndim=", t->ndim, " must be in [0, 8]");
  REDKNOT_CHECK(t->ndim == 0 || t->shape != nullptr, InvalidArgument, name,
                ".shape is NULL with ndim=", t->ndim);
  for (int i = 0; i < t->ndim; ++i)
    REDKNOT_CHECK(t->shape[i] >= 0, InvalidArgument, name, ".shape[", i, "]=", t->shape[i], " is negative");
  // Read as an integer: a foreign device_type outside the DLDeviceType enum must not be loaded as the enum.
  std::int32_t dev = 0;
  static_assert(sizeof(t->device.device_type) == sizeof(dev), "DLDeviceType is expected to be 32-bit");
  std::memcpy(&dev, &t->device.device_type, sizeof dev);
  REDKNOT_CHECK(
      dev == kDLCPU || dev == kDLCUDAHost, InvalidArgument, name, " lives on device type ", dev, " (",
      dev == kDLCUDA                                                                   ? "cuda"
      : (dev >= kDLCPU && dev <= kDLOpenCL) || (dev >= kDLVulkan && dev <= kDLHexagon) ? "not host memory"
                                                                                       : "not a DLDeviceType",
      "), but this store is on the cpu: pass a host tensor (kDLCPU=1 or kDLCUDAHost=3; CUDA stores are not "
      "available yet)");
  REDKNOT_CHECK(t->data != nullptr || numel(*t) == 0, InvalidArgument, name,
                ".data is NULL but the tensor has ", numel(*t), " elements");
}

// Visits every element of t in row-major order: f(byte pointer of the element, index in row-major order).
template <class F>
void for_each_element(const DLTensor& t, F&& f) {
  const std::size_t es = elem_bytes(t.dtype);
  const std::int64_t n = numel(t);
  if (n == 0) return;
  std::vector<std::int64_t> idx(static_cast<std::size_t>(t.ndim), 0);
  char* base = base_ptr(t);
  for (std::int64_t lin = 0; lin < n; ++lin) {
    std::int64_t off = 0;
    for (int d = 0; d < t.ndim; ++d) off += idx[static_cast<std::size_t>(d)] * t.strides[d];
    f(base + off * static_cast<std::int64_t>(es), lin);
    for (int d = t.ndim - 1; d >= 0; --d) {
      if (++idx[static_cast<std::size_t>(d)] < t.shape[d]) break;
      idx[static_cast<std::size_t>(d)] = 0;
    }
  }
}

// Copies t (any strides) into the row-major buffer dst.
inline void gather(const DLTensor& t, void* dst) {
  const std::size_t es = elem_bytes(t.dtype);
  if (is_compact(t)) {
    if (numel(t) > 0) std::memcpy(dst, base_ptr(t), static_cast<std::size_t>(numel(t)) * es);
    return;
  }
  auto* d = static_cast<char*>(dst);
  for_each_element(
      t, [&](char* p, std::int64_t i) { std::memcpy(d + i * static_cast<std::int64_t>(es), p, es); });
}

// Copies the row-major buffer src into t (any strides).
inline void scatter(const void* src, const DLTensor& t) {
  const std::size_t es = elem_bytes(t.dtype);
  if (is_compact(t)) {
    if (numel(t) > 0) std::memcpy(base_ptr(t), src, static_cast<std::size_t>(numel(t)) * es);
    return;
  }
  const auto* s = static_cast<const char*>(src);
  for_each_element(
      t, [&](char* p, std::int64_t i) { std::memcpy(p, s + i * static_cast<std::int64_t>(es), es); });
}

// Requires t to be [rows, heads, dim] or [rows, heads * dim].
inline void check_rows(const DLTensor& t, const char* name, std::int64_t rows, std::int64_t heads,
                       std::int64_t dim, const char* rows_name, const char* heads_name) {
  const bool ok3 = t.ndim == 3 && t.shape[0] == rows && t.shape[1] == heads && t.shape[2] == dim;
  const bool ok2 = t.ndim == 2 && t.shape[0] == rows && t.shape[1] == heads * dim;
  REDKNOT_CHECK(ok3 || ok2, InvalidArgument, name, " has shape ", shape_string(t), ", expected [", rows_name,
                "=", rows, ", ", heads_name, "=", heads, ", head_dim=", dim, "] or [", rows, ", ",
                heads * dim, "]");
}

}  // namespace redknot::detail
