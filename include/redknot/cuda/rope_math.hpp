// RoPE relocation of cached keys (position-independent reuse).
//
// A key stored with RoPE applied at position `old` is moved to position `new` by rotating each pair of its
// rotary dims by delta = new - old: R(new) = R(delta) R(old), since rotations of one plane compose
// additively. The rotation runs in fp32 on the stored values; the angle delta * inv_freq[i] is formed in fp64
// (one per pair and entry, not per element) because delta * inv_freq can reach 1e5 rad, where an fp32 product
// alone would already be off by ~1e-2 rad. Magnitude scaling (YaRN's attention factor, "mscale") belongs to
// the first application and is never re-applied here.
//
// This header is the host math (C++17, no CUDA headers), unit-tested on the CPU (tests/test_cuda_rope.cpp)
// through rope_relocate_reference(); rope.hpp declares the device kernel, which only rotates.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace redknot::cuda {

enum class RopePairing : int {
  kRotateHalf = 0,   // GPT-NeoX / HF Llama: pair (i, i + rotary_dim / 2)
  kInterleaved = 1,  // GPT-J / Meta original: pair (2i, 2i + 1)
};

enum class RopeScaling : int { kDefault = 0, kLinear = 1, kLlama3 = 2, kYarn = 3 };

struct RopeConfig {
  int head_dim = 128;
  int rotary_dim = 0;  // 0: head_dim (full rotary); partial rotary rotates dims [0, rotary_dim) only
  double theta = 10000.0;
  RopePairing pairing = RopePairing::kRotateHalf;
  RopeScaling scaling = RopeScaling::kDefault;
  double factor = 1.0;  // linear / llama3 / yarn
  // llama3
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int original_max_position = 8192;  // llama3 and yarn
  // yarn
  double beta_fast = 32.0;
  double beta_slow = 1.0;

  int rot() const { return rotary_dim > 0 ? rotary_dim : head_dim; }
};

inline void validate(const RopeConfig& c) {
  if (c.head_dim <= 0 || c.head_dim % 2)
    throw std::invalid_argument("rope: head_dim must be positive and even");
  const int r = c.rot();
  if (r <= 0 || r > c.head_dim || r % 2)
    throw std::invalid_argument("rope: rotary_dim=" + std::to_string(c.rotary_dim) +
                                " must be even and in (0, head_dim]");
  if (!(c.theta > 1.0)) throw std::invalid_argument("rope: theta must be > 1");
  if (c.scaling != RopeScaling::kDefault && !(c.factor > 0.0))
    throw std::invalid_argument("rope: scaling factor must be > 0");
  if (c.scaling == RopeScaling::kLlama3 && !(c.high_freq_factor > c.low_freq_factor))
    throw std::invalid_argument("rope: llama3 needs high_freq_factor > low_freq_factor");
  if ((c.scaling == RopeScaling::kLlama3 || c.scaling == RopeScaling::kYarn) && c.original_max_position <= 0)
    throw std::invalid_argument("rope: original_max_position must be > 0");
}

// inv_freq[i], i < rot / 2, as the HF transformers rope initialisers define them (default, linear, llama3,
// yarn).
inline std::vector<double> rope_inv_freq(const RopeConfig& c) {
  validate(c);
  const int r = c.rot();
  const int n = r / 2;
  const double pi = 3.14159265358979323846;
  std::vector<double> f(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) f[static_cast<std::size_t>(i)] = 1.0 / std::pow(c.theta, (2.0 * i) / r);
  switch (c.scaling) {
    case RopeScaling::kDefault:
      break;
    case RopeScaling::kLinear:
      // Positions divided by factor == frequencies divided by factor.
      for (auto& x : f) x /= c.factor;
      break;
    case RopeScaling::kLlama3: {
      const double old_ctx = c.original_max_position;
      const double low_wavelen = old_ctx / c.low_freq_factor;
      const double high_wavelen = old_ctx / c.high_freq_factor;
      for (auto& x : f) {
        const double wavelen = 2.0 * pi / x;
        if (wavelen < high_wavelen) continue;  // high frequency: unchanged
        if (wavelen > low_wavelen) {
          x /= c.factor;  // low frequency: fully interpolated
        } else {
          const double smooth =
              (old_ctx / wavelen - c.low_freq_factor) / (c.high_freq_factor - c.low_freq_factor);
          x = (1.0 - smooth) * x / c.factor + smooth * x;
        }
      }
      break;
    }
    case RopeScaling::kYarn: {
      // Dimension index at which a frequency completes num_rot rotations over the original context.
      const auto correction_dim = [&](double num_rot) {
        return (r * std::log(c.original_max_position / (num_rot * 2.0 * pi))) / (2.0 * std::log(c.theta));
      };
      double low = std::floor(correction_dim(c.beta_fast));
      double high = std::ceil(correction_dim(c.beta_slow));
      low = std::max(low, 0.0);
      high = std::min(high, static_cast<double>(r - 1));
      if (low == high) high += 0.001;  // avoid a zero-width ramp
      for (int i = 0; i < n; ++i) {
        const double ramp = std::min(1.0, std::max(0.0, (i - low) / (high - low)));
        const double extrap_weight = 1.0 - ramp;  // high frequencies keep their original value
        const double base = f[static_cast<std::size_t>(i)];
        f[static_cast<std::size_t>(i)] = (base / c.factor) * (1.0 - extrap_weight) + base * extrap_weight;
      }
      break;
    }
  }
  return f;
}

// Indices of the two members of rotary pair i.
inline void rope_pair(const RopeConfig& c, int i, int& a, int& b) {
  if (c.pairing == RopePairing::kRotateHalf) {
    a = i;
    b = i + c.rot() / 2;
  } else {
    a = 2 * i;
    b = 2 * i + 1;
  }
}

// CPU reference: rotates one fp32 key row in place by delta positions (the exact math of the kernel).
inline void rope_relocate_reference(const RopeConfig& c, const std::vector<double>& inv_freq,
                                    std::int64_t delta, float* row) {
  const int n = c.rot() / 2;
  for (int i = 0; i < n; ++i) {
    const double ang = static_cast<double>(delta) * inv_freq[static_cast<std::size_t>(i)];
    const float cs = static_cast<float>(std::cos(ang)), sn = static_cast<float>(std::sin(ang));
    int a, b;
    rope_pair(c, i, a, b);
    const float x = row[a], y = row[b];
    row[a] = x * cs - y * sn;
    row[b] = x * sn + y * cs;
  }
}

}  // namespace redknot::cuda
