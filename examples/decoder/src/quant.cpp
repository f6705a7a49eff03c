#include "quant.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "redknot/dtype.hpp"
#include "redknot/error.hpp"

namespace redknot::decoder {

namespace {

constexpr int kBlock = 32;

float read_half(const std::uint8_t* p) {
  std::uint16_t h;
  std::memcpy(&h, p, 2);
  return Half::to_float(h);
}

void write_half(std::uint8_t* p, float f) {
  const std::uint16_t h = Half::from_float(f);
  std::memcpy(p, &h, 2);
}

// Q4 blocks keep element j in the low nibble of byte j and element j + 16 in its high nibble.
void dequant_q4(const std::uint8_t* qs, float d, float m, float* out) {
  for (int j = 0; j < kBlock / 2; ++j) {
    out[j] = static_cast<float>(qs[j] & 0x0F) * d + m;
    out[j + kBlock / 2] = static_cast<float>(qs[j] >> 4) * d + m;
  }
}

}  // namespace

void dequantize(GgmlType type, const std::uint8_t* src, std::int64_t n, float* out) {
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(out, src, static_cast<std::size_t>(n) * sizeof(float));
      return;
    case GgmlType::kF16:
      for (std::int64_t i = 0; i < n; ++i) out[i] = read_half(src + 2 * i);
      return;
    case GgmlType::kBF16:
      for (std::int64_t i = 0; i < n; ++i) {
        std::uint16_t b;
        std::memcpy(&b, src + 2 * i, 2);
        out[i] = BFloat16::to_float(b);
      }
      return;
    default:
      break;
  }
  require(n % kBlock == 0, "dequantize: ", n, " elements is not a multiple of the block size ", kBlock);
  const int bytes = ggml_block_bytes(type);
  for (std::int64_t b = 0; b < n / kBlock; ++b) {
    const std::uint8_t* blk = src + b * bytes;
    float* y = out + b * kBlock;
    switch (type) {
      case GgmlType::kQ8_0: {
        const float d = read_half(blk);
        for (int j = 0; j < kBlock; ++j) y[j] = static_cast<float>(static_cast<std::int8_t>(blk[2 + j])) * d;
        break;
      }
      case GgmlType::kQ4_0: {
        const float d = read_half(blk);
        dequant_q4(blk + 2, d, -8.f * d, y);
        break;
      }
      case GgmlType::kQ4_1:
        dequant_q4(blk + 4, read_half(blk), read_half(blk + 2), y);
        break;
      default:
        throw InvalidArgument("dequantize: unsupported tensor type " + std::string(ggml_type_name(type)));
    }
  }
}

std::vector<std::uint8_t> quantize(GgmlType type, std::span<const float> x) {
  const auto n = static_cast<std::int64_t>(x.size());
  std::vector<std::uint8_t> out;
  switch (type) {
    case GgmlType::kF32:
      out.resize(x.size() * 4);
      std::memcpy(out.data(), x.data(), out.size());
      return out;
    case GgmlType::kF16:
    case GgmlType::kBF16:
      out.resize(x.size() * 2);
      for (std::int64_t i = 0; i < n; ++i) {
        const std::uint16_t h = type == GgmlType::kF16 ? Half::from_float(x[i]) : BFloat16::from_float(x[i]);
        std::memcpy(out.data() + 2 * i, &h, 2);
      }
      return out;
    default:
      break;
  }
  require(n % kBlock == 0, "quantize: ", n, " elements is not a multiple of the block size ", kBlock);
  const int bytes = ggml_block_bytes(type);
  out.assign(static_cast<std::size_t>(n / kBlock * bytes), 0);
  for (std::int64_t b = 0; b < n / kBlock; ++b) {
    const float* v = x.data() + b * kBlock;
    std::uint8_t* blk = out.data() + b * bytes;
    switch (type) {
      case GgmlType::kQ8_0: {
        float amax = 0.f;
        for (int j = 0; j < kBlock; ++j) amax = std::max(amax, std::fabs(v[j]));
        const float d = amax / 127.f;
        write_half(blk, d);
        for (int j = 0; j < kBlock; ++j)
          blk[2 + j] = static_cast<std::uint8_t>(static_cast<std::int8_t>(d > 0 ? std::lround(v[j] / d) : 0));
        break;
      }
      case GgmlType::kQ4_0: {
        // Scale by the signed extreme so it maps to -8, the end of the range with one extra step.
        float ext = 0.f;
        for (int j = 0; j < kBlock; ++j)
          if (std::fabs(v[j]) > std::fabs(ext)) ext = v[j];
        const float d = ext / -8.f;
        write_half(blk, d);
        const float id = d != 0.f ? 1.f / d : 0.f;
        for (int j = 0; j < kBlock / 2; ++j) {
          const int lo = std::clamp(static_cast<int>(v[j] * id + 8.5f), 0, 15);
          const int hi = std::clamp(static_cast<int>(v[j + kBlock / 2] * id + 8.5f), 0, 15);
          blk[2 + j] = static_cast<std::uint8_t>(lo | (hi << 4));
        }
        break;
      }
      case GgmlType::kQ4_1: {
        const auto [mn, mx] = std::minmax_element(v, v + kBlock);
        const float d = (*mx - *mn) / 15.f;
        write_half(blk, d);
        write_half(blk + 2, *mn);
        const float id = d != 0.f ? 1.f / d : 0.f;
        for (int j = 0; j < kBlock / 2; ++j) {
          const int lo = std::clamp(static_cast<int>((v[j] - *mn) * id + 0.5f), 0, 15);
          const int hi = std::clamp(static_cast<int>((v[j + kBlock / 2] - *mn) * id + 0.5f), 0, 15);
          blk[4 + j] = static_cast<std::uint8_t>(lo | (hi << 4));
        }
        break;
      }
      default:
        throw InvalidArgument("quantize: unsupported tensor type " + std::string(ggml_type_name(type)));
    }
  }
  return out;
}

}  // namespace redknot::decoder
