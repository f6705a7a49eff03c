// Rotary position embedding (RoPE): configuration, inverse frequencies and the fp32 rotations, on the CPU.
//
// RoPE rotates each pair of a head vector's rotary dims by pos * inv_freq[i]. Rotations of one plane compose
// additively, R(a + b) = R(b) R(a), which is what position-independent reuse relies on:
//   * applying RoPE at position p is rotating an un-rotated vector by p (rope_apply);
//   * a key stored with RoPE at `old` is moved to `new` by rotating it by delta = new - old (rope_rotate,
//     rope_relocate_reference), and a query counter-rotated by -delta sees the same scores as keys moved by
//     +delta: dot(R(-delta) q, R(j) k) == dot(q, R(j + delta) k).
//
// The rotation runs in fp32 on the values; the angle pos * inv_freq[i] is formed in fp64 (one per pair and
// position, not per element) because pos * inv_freq can reach 1e5 rad, where an fp32 product alone would
// already be off by ~1e-2 rad. Magnitude scaling (YaRN's attention factor, "mscale") belongs to the model's
// first application and is not part of these rotations; in particular a relocation never re-applies it.
//
// No CUDA headers. The per-pair functions (rope_pair, rope_cos_sin, rope_rotate_pair) are REDKNOT_HD: the
// CUDA relocation kernel and the decode / prefill kernels' query counter-rotation run exactly this code
// (tests/test_rope.cpp tests it on the CPU; tests/gpu/ compares the kernels with the CPU path).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "redknot/error.hpp"
#include "redknot/host_device.hpp"

namespace redknot {

enum class RopePairing : int {
  kRotateHalf = 0,   // GPT-NeoX / HF Llama: pair (i, i + rotary_dim / 2)
  kInterleaved = 1,  // GPT-J / Meta original / GGUF llama: pair (2i, 2i + 1)
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

// Throws InvalidArgument naming the first field at fault and its value. The comparisons are written so that
// NaN fails them.
inline void validate(const RopeConfig& c) {
  require(c.head_dim > 0 && c.head_dim % 2 == 0, "rope: head_dim=", c.head_dim, " must be positive and even");
  require(c.rotary_dim >= 0 && c.rotary_dim <= c.head_dim && c.rotary_dim % 2 == 0,
          "rope: rotary_dim=", c.rotary_dim, " must be even and in [0, head_dim=", c.head_dim,
          "] (0: head_dim)");
  require(c.theta > 1.0, "rope: theta=", c.theta, " must be > 1");
  if (c.scaling != RopeScaling::kDefault) require(c.factor > 0.0, "rope: factor=", c.factor, " must be > 0");
  if (c.scaling == RopeScaling::kLlama3) {
    require(c.low_freq_factor > 0.0, "rope: low_freq_factor=", c.low_freq_factor, " must be > 0");
    require(c.high_freq_factor > c.low_freq_factor, "rope: high_freq_factor=", c.high_freq_factor,
            " must be > low_freq_factor=", c.low_freq_factor);
  }
  if (c.scaling == RopeScaling::kLlama3 || c.scaling == RopeScaling::kYarn)
    require(c.original_max_position > 0, "rope: original_max_position=", c.original_max_position,
            " must be > 0");
  if (c.scaling == RopeScaling::kYarn) {
    require(c.beta_fast > 0.0, "rope: beta_fast=", c.beta_fast, " must be > 0");
    require(c.beta_slow > 0.0, "rope: beta_slow=", c.beta_slow, " must be > 0");
  }
}

// inv_freq[i], i < rot / 2, as the HF transformers rope initialisers define them (default, linear, llama3,
// yarn). Validates c.
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

// ---- per pair: what a kernel does for one (vector, pair) ------------------------------------------------

// Indices {a, b} of the two members of rotary pair i (i < half = rot / 2).
struct RopePair {
  int a, b;
};
REDKNOT_HD RopePair rope_pair(RopePairing pairing, int half, int i) {
  return pairing == RopePairing::kRotateHalf ? RopePair{i, i + half} : RopePair{2 * i, 2 * i + 1};
}

// cos and sin of the angle pos * inv_freq, formed in fp64 (see above) and rounded to fp32 once.
struct RopeCosSin {
  float cos, sin;
};
REDKNOT_HD RopeCosSin rope_cos_sin(std::int64_t pos, double inv_freq) {
  const double angle = static_cast<double>(pos) * inv_freq;
#if defined(__CUDA_ARCH__)
  double s, c;
  sincos(angle, &s, &c);
  return {static_cast<float>(c), static_cast<float>(s)};
#else
  return {static_cast<float>(std::cos(angle)), static_cast<float>(std::sin(angle))};
#endif
}

// (x, y) <- R (x, y), in fp32.
REDKNOT_HD void rope_rotate_pair(float& x, float& y, RopeCosSin r) {
  const float nx = x * r.cos - y * r.sin, ny = x * r.sin + y * r.cos;
  x = nx;
  y = ny;
}

// ---- per vector ------------------------------------------------------------------------------------------

// Rotates one head vector x[head_dim] in place by the precomputed angles cs[rot / 2] (rope_cos_sin of each
// pair): the hot-path form, for callers that rotate many heads at one position. Dims [rot, head_dim) are
// left alone.
inline void rope_rotate(const RopeConfig& c, const RopeCosSin* cs, float* x) {
  const int half = c.rot() / 2;
  for (int i = 0; i < half; ++i) {
    const RopePair p = rope_pair(c.pairing, half, i);
    rope_rotate_pair(x[p.a], x[p.b], cs[i]);
  }
}

// Rotates one head vector x[head_dim] in place by `delta` positions, inv_freq = rope_inv_freq(c). With
// delta = new - old it relocates a key stored at `old` to `new`; with delta = -D it counter-rotates a query
// so that it scores keys at j as an unrotated query would score keys at j + D.
inline void rope_rotate(const RopeConfig& c, const std::vector<double>& inv_freq, float* x,
                        std::int64_t delta) {
  const int half = c.rot() / 2;
  require(inv_freq.size() == static_cast<std::size_t>(half), "rope: inv_freq has ", inv_freq.size(),
          " entries, rot / 2 = ", half);
  for (int i = 0; i < half; ++i) {
    const RopePair p = rope_pair(c.pairing, half, i);
    rope_rotate_pair(x[p.a], x[p.b], rope_cos_sin(delta, inv_freq[static_cast<std::size_t>(i)]));
  }
}

// Applies RoPE at position pos to an un-rotated head vector: the rotation by pos from position 0.
inline void rope_apply(const RopeConfig& c, const std::vector<double>& inv_freq, float* x, std::int64_t pos) {
  rope_rotate(c, inv_freq, x, pos);
}

// CPU reference of cuda::rope_relocate for one fp32 K row of the pool: rotates it in place by delta positions
// (the kernel's arithmetic, per pair: rope_cos_sin, then rope_rotate_pair; V rows are never rotated).
inline void rope_relocate_reference(const RopeConfig& c, const std::vector<double>& inv_freq,
                                    std::int64_t delta, float* row) {
  rope_rotate(c, inv_freq, row, delta);
}

}  // namespace redknot
