// Storage dtypes: fp32, fp16 and bf16, with exact host-side conversions (round to nearest even).
//
// Half and BFloat16 are plain 16-bit wrappers so that pages can be shared bit-for-bit with CUDA kernels
// (which use __half / __nv_bfloat16) without this header depending on the CUDA toolkit.
#pragma once

#include <bit>
#include <cstdint>
#include <string_view>
#include <type_traits>

#include "redknot/error.hpp"

namespace redknot {

enum class DType : std::uint8_t { kF32 = 0, kF16 = 1, kBF16 = 2 };

constexpr std::size_t dtype_size(DType t) { return t == DType::kF32 ? 4 : 2; }

constexpr std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::kF32:
      return "f32";
    case DType::kF16:
      return "f16";
    case DType::kBF16:
      return "bf16";
  }
  return "?";
}

inline DType parse_dtype(std::string_view s) {
  if (s == "f32" || s == "float32" || s == "fp32") return DType::kF32;
  if (s == "f16" || s == "float16" || s == "fp16" || s == "half") return DType::kF16;
  if (s == "bf16" || s == "bfloat16") return DType::kBF16;
  throw InvalidArgument(detail::concat("dtype='", s, "' is not one of f32, f16, bf16"));
}

// IEEE binary16.
struct Half {
  std::uint16_t bits = 0;
  Half() = default;
  explicit Half(float f) : bits(from_float(f)) {}
  explicit operator float() const { return to_float(bits); }

  static std::uint16_t from_float(float f) {
    const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
    const std::uint32_t sign = (x >> 16) & 0x8000u;
    const std::uint32_t abs = x & 0x7fffffffu;
    if (abs >= 0x7f800000u) return static_cast<std::uint16_t>(sign | (abs > 0x7f800000u ? 0x7e00u : 0x7c00u));
    if (abs >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: inf
    if (abs < 0x38800000u) {
      // Subnormal half (or zero): add 0.5 in the float domain so the FPU rounds to nearest even for us.
      const float r = std::bit_cast<float>(abs) + 0.5f;
      return static_cast<std::uint16_t>(sign | (std::bit_cast<std::uint32_t>(r) - 0x3f000000u));
    }
    const std::uint32_t odd = (abs >> 13) & 1u;
    const std::uint32_t rounded = abs + 0xc8000fffu + odd;  // rebias exponent (-112 << 23) and round
    return static_cast<std::uint16_t>(sign | (rounded >> 13));
  }
  static float to_float(std::uint16_t h) {
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    const std::uint32_t exp = (h >> 10) & 0x1fu;
    const std::uint32_t man = h & 0x3ffu;
    if (exp == 0) {
      const float mag = static_cast<float>(man) * 5.9604644775390625e-8f;  // 2^-24
      return std::bit_cast<float>(std::bit_cast<std::uint32_t>(mag) | sign);
    }
    if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000u | (man << 13));
    return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (man << 13));
  }
};

// bfloat16: the top half of an IEEE binary32.
struct BFloat16 {
  std::uint16_t bits = 0;
  BFloat16() = default;
  explicit BFloat16(float f) : bits(from_float(f)) {}
  explicit operator float() const { return to_float(bits); }

  static std::uint16_t from_float(float f) {
    const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x40u);  // quiet NaN
    return static_cast<std::uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
  }
  static float to_float(std::uint16_t b) { return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16); }
};

static_assert(sizeof(Half) == 2 && sizeof(BFloat16) == 2);

template <class T>
concept StorageType = std::is_same_v<T, float> || std::is_same_v<T, Half> || std::is_same_v<T, BFloat16>;

template <StorageType T>
constexpr DType dtype_of() {
  if constexpr (std::is_same_v<T, float>)
    return DType::kF32;
  else if constexpr (std::is_same_v<T, Half>)
    return DType::kF16;
  else
    return DType::kBF16;
}

template <StorageType T>
inline float to_float(T x) {
  if constexpr (std::is_same_v<T, float>)
    return x;
  else
    return static_cast<float>(x);
}

template <StorageType T>
inline T from_float(float x) {
  if constexpr (std::is_same_v<T, float>)
    return x;
  else
    return T(x);
}

}  // namespace redknot
