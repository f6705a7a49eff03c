// CPU tests of the RoPE relocation math (include/redknot/cuda/rope_math.hpp): frequency rules (default,
// linear, llama3, yarn), pairings, partial rotary, and the relocation identity R(new) = R(new - old) R(old).
#include <catch2/catch_approx.hpp>
#include <catch2/catch_test_macros.hpp>

#include <cmath>
#include <random>
#include <vector>

#include "redknot/cuda/rope_math.hpp"

using namespace redknot::cuda;
using Catch::Approx;

namespace {
const double kPi = 3.14159265358979323846;

std::vector<float> random_row(int d, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> r(static_cast<std::size_t>(d));
  for (auto& x : r) x = u(rng);
  return r;
}
}  // namespace

TEST_CASE("rope inv_freq: default and linear", "[cuda][rope]") {
  RopeConfig c;
  c.head_dim = 64;
  c.theta = 10000.0;
  const auto f = rope_inv_freq(c);
  REQUIRE(f.size() == 32);
  CHECK(f[0] == Approx(1.0));
  CHECK(f[1] == Approx(std::pow(10000.0, -2.0 / 64)));
  CHECK(f[31] == Approx(std::pow(10000.0, -62.0 / 64)));
  c.scaling = RopeScaling::kLinear;
  c.factor = 4.0;
  const auto g = rope_inv_freq(c);
  for (std::size_t i = 0; i < f.size(); ++i) CHECK(g[i] == Approx(f[i] / 4.0));
}

TEST_CASE("rope inv_freq: llama3 keeps high, divides low, blends the middle", "[cuda][rope]") {
  RopeConfig c;  // Llama 3.1 8B
  c.head_dim = 128;
  c.theta = 500000.0;
  c.scaling = RopeScaling::kLlama3;
  c.factor = 8.0;
  c.low_freq_factor = 1.0;
  c.high_freq_factor = 4.0;
  c.original_max_position = 8192;
  RopeConfig d = c;
  d.scaling = RopeScaling::kDefault;
  const auto f = rope_inv_freq(c), base = rope_inv_freq(d);
  int high = 0, low = 0, mid = 0;
  for (std::size_t i = 0; i < f.size(); ++i) {
    const double wavelen = 2 * kPi / base[i];
    if (wavelen < 8192.0 / 4.0) {
      CHECK(f[i] == Approx(base[i]));
      ++high;
    } else if (wavelen > 8192.0) {
      CHECK(f[i] == Approx(base[i] / 8.0));
      ++low;
    } else {
      CHECK(f[i] < base[i]);
      CHECK(f[i] > base[i] / 8.0);
      const double smooth = (8192.0 / wavelen - 1.0) / 3.0;
      CHECK(f[i] == Approx((1 - smooth) * base[i] / 8.0 + smooth * base[i]));
      ++mid;
    }
  }
  CHECK(high > 0);
  CHECK(low > 0);
  CHECK(mid > 0);
}

TEST_CASE("rope inv_freq: yarn ramps between the correction dims", "[cuda][rope]") {
  RopeConfig c;
  c.head_dim = 128;
  c.theta = 10000.0;
  c.scaling = RopeScaling::kYarn;
  c.factor = 4.0;
  c.original_max_position = 4096;
  RopeConfig d = c;
  d.scaling = RopeScaling::kDefault;
  const auto f = rope_inv_freq(c), base = rope_inv_freq(d);
  // Correction dims for beta_fast = 32 and beta_slow = 1: floor(20.9) = 20 and ceil(45.0x) = 46.
  const double lo = std::floor(128 * std::log(4096 / (32 * 2 * kPi)) / (2 * std::log(10000.0)));
  const double hi = std::ceil(128 * std::log(4096 / (1 * 2 * kPi)) / (2 * std::log(10000.0)));
  REQUIRE(lo == 20.0);
  REQUIRE(hi == 46.0);
  for (int i = 0; i < 64; ++i) {
    if (i <= 20)
      CHECK(f[static_cast<std::size_t>(i)] == Approx(base[static_cast<std::size_t>(i)]));
    else if (i >= 46)
      CHECK(f[static_cast<std::size_t>(i)] == Approx(base[static_cast<std::size_t>(i)] / 4.0));
    else {
      const double ramp = (i - lo) / (hi - lo);
      CHECK(f[static_cast<std::size_t>(i)] == Approx(base[static_cast<std::size_t>(i)] / 4.0 * ramp +
                                                     base[static_cast<std::size_t>(i)] * (1 - ramp)));
    }
  }
  // factor 1 changes nothing.
  c.factor = 1.0;
  const auto one = rope_inv_freq(c);
  for (std::size_t i = 0; i < one.size(); ++i) CHECK(one[i] == Approx(base[i]));
}

TEST_CASE("rope relocation composes: R(new) == R(new - old) R(old)", "[cuda][rope]") {
  for (auto pairing : {RopePairing::kRotateHalf, RopePairing::kInterleaved}) {
    for (int rot : {0, 32}) {  // full and partial rotary
      RopeConfig c;
      c.head_dim = 64;
      c.rotary_dim = rot;
      c.pairing = pairing;
      const auto f = rope_inv_freq(c);
      const auto raw = random_row(64, 7);
      for (std::int64_t old_pos : {0, 5, 1000}) {
        for (std::int64_t new_pos : {0, 3, 1000, 70000}) {
          auto direct = raw;
          rope_relocate_reference(c, f, new_pos, direct.data());
          auto moved = raw;
          rope_relocate_reference(c, f, old_pos, moved.data());
          rope_relocate_reference(c, f, new_pos - old_pos, moved.data());
          for (int i = 0; i < 64; ++i)
            CHECK(moved[static_cast<std::size_t>(i)] ==
                  Approx(direct[static_cast<std::size_t>(i)]).margin(2e-5));
          if (rot == 32)  // dims past the rotary part never move
            for (int i = 32; i < 64; ++i)
              CHECK(moved[static_cast<std::size_t>(i)] == raw[static_cast<std::size_t>(i)]);
        }
      }
    }
  }
}

TEST_CASE("rope relocation pairs the right dims and keeps norms", "[cuda][rope]") {
  RopeConfig c;
  c.head_dim = 8;
  const auto f = rope_inv_freq(c);
  // A unit vector in dim 0 rotated by one position: rotate-half pairs dim 0 with dim 4 (inv_freq[0] = 1 rad).
  std::vector<float> r(8, 0.f);
  r[0] = 1.f;
  rope_relocate_reference(c, f, 1, r.data());
  CHECK(r[0] == Approx(std::cos(1.0)));
  CHECK(r[4] == Approx(std::sin(1.0)));
  c.pairing = RopePairing::kInterleaved;
  std::fill(r.begin(), r.end(), 0.f);
  r[0] = 1.f;
  rope_relocate_reference(c, f, 1, r.data());
  CHECK(r[0] == Approx(std::cos(1.0)));
  CHECK(r[1] == Approx(std::sin(1.0)));
  CHECK(r[4] == 0.f);
}

TEST_CASE("rope config validation", "[cuda][rope]") {
  RopeConfig c;
  c.head_dim = 64;
  c.rotary_dim = 33;
  CHECK_THROWS_AS(rope_inv_freq(c), std::invalid_argument);
  c.rotary_dim = 128;
  CHECK_THROWS_AS(rope_inv_freq(c), std::invalid_argument);
  c.rotary_dim = 0;
  c.scaling = RopeScaling::kLinear;
  c.factor = 0.0;
  CHECK_THROWS_AS(rope_inv_freq(c), std::invalid_argument);
  c.factor = 8.0;
  c.scaling = RopeScaling::kLlama3;
  c.low_freq_factor = 4.0;
  c.high_freq_factor = 1.0;
  CHECK_THROWS_AS(rope_inv_freq(c), std::invalid_argument);
}
