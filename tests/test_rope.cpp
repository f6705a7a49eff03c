// CPU tests of the core RoPE (include/redknot/rope.hpp): frequency rules (default, linear, llama3, yarn),
// both pairings, partial rotary, validation, and the identities position-independent reuse relies on:
// applying at p then rotating by D equals applying at p + D, and a query counter-rotated by -D scores keys at
// j as the query scores keys at j + D. Every comparison fails on NaN (near() and Catch's Approx both do).
#include <catch2/catch_approx.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "redknot/rope.hpp"

using namespace redknot;
using Catch::Approx;
using Catch::Matchers::ContainsSubstring;

namespace {
const double kPi = 3.14159265358979323846;

// |a - b| <= tol, false when either is NaN.
bool near(double a, double b, double tol) { return std::abs(a - b) <= tol; }

std::vector<float> random_row(int d, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> r(static_cast<std::size_t>(d));
  for (auto& x : r) x = u(rng);
  return r;
}

double dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

// Largest |a[i] - b[i]|; NaN when any element is NaN (so near(max_diff(...), 0, tol) fails).
template <class A, class B>
double max_diff(const std::vector<A>& a, const std::vector<B>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i]));
    if (std::isnan(d)) return d;
    m = std::max(m, d);
  }
  return m;
}

// One config per scaling rule (HF defaults where the model families use them).
std::vector<RopeConfig> every_scaling(int head_dim, int rotary_dim, RopePairing pairing) {
  RopeConfig c;
  c.head_dim = head_dim;
  c.rotary_dim = rotary_dim;
  c.pairing = pairing;
  std::vector<RopeConfig> out;
  out.push_back(c);  // default
  c.scaling = RopeScaling::kLinear;
  c.factor = 4.0;
  out.push_back(c);
  c.scaling = RopeScaling::kLlama3;
  c.theta = 500000.0;
  c.factor = 8.0;
  out.push_back(c);
  c.scaling = RopeScaling::kYarn;
  c.theta = 10000.0;
  c.factor = 4.0;
  c.original_max_position = 4096;
  out.push_back(c);
  return out;
}

std::string describe(const RopeConfig& c) {
  return "scaling " + std::to_string(static_cast<int>(c.scaling)) + " pairing " +
         std::to_string(static_cast<int>(c.pairing)) + " rot " + std::to_string(c.rot()) + "/" +
         std::to_string(c.head_dim);
}

// Calls fn(c, rope_inv_freq(c)) for every scaling x both pairings x full and partial (`partial` of 64)
// rotary.
template <class F>
void for_every_config(int partial, F&& fn) {
  for (auto pairing : {RopePairing::kRotateHalf, RopePairing::kInterleaved})
    for (int rot : {0, partial})
      for (const RopeConfig& c : every_scaling(64, rot, pairing)) {
        INFO(describe(c));
        fn(c, rope_inv_freq(c));
      }
}
}  // namespace

TEST_CASE("rope checks fail on NaN", "[rope]") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  CHECK_FALSE(near(nan, 0.0, 1.0));
  CHECK_FALSE(near(0.0, nan, 1.0));
  CHECK_FALSE(near(nan, nan, 1.0));
  CHECK_FALSE(nan == Approx(0.0).margin(1.0));
  CHECK_FALSE(near(max_diff(std::vector<float>{0.f, std::nanf("")}, std::vector<float>{0.f, 0.f}), 0.0, 1.0));
}

TEST_CASE("rope inv_freq: default and linear", "[rope]") {
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
  // Partial rotary: the exponent's denominator is rotary_dim, not head_dim.
  c.scaling = RopeScaling::kDefault;
  c.rotary_dim = 16;
  const auto p = rope_inv_freq(c);
  REQUIRE(p.size() == 8);
  CHECK(p[1] == Approx(std::pow(10000.0, -2.0 / 16)));
}

TEST_CASE("rope inv_freq: llama3 keeps high, divides low, blends the middle", "[rope]") {
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

TEST_CASE("rope inv_freq: yarn ramps between the correction dims", "[rope]") {
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

TEST_CASE("rope_apply matches the definition for every scaling, pairing and rotary width", "[rope]") {
  // The definition, written independently in fp64: pair i is (i, i + rot/2) or (2i, 2i + 1), rotated by
  // pos * inv_freq[i]; dims past rot are unchanged.
  for_every_config(32, [](const RopeConfig& c, const std::vector<double>& f) {
    const auto raw = random_row(64, 11);
    const int r = c.rot(), half = r / 2;
    for (std::int64_t pos : {0, 1, 17, 4095, 8192, 100000, 131071}) {
      INFO("pos " << pos);
      auto got = raw;
      rope_apply(c, f, got.data(), pos);
      std::vector<double> want(raw.begin(), raw.end());
      for (int i = 0; i < half; ++i) {
        const int a = c.pairing == RopePairing::kRotateHalf ? i : 2 * i;
        const int b = c.pairing == RopePairing::kRotateHalf ? i + half : 2 * i + 1;
        const double ang = static_cast<double>(pos) * f[static_cast<std::size_t>(i)];
        const double x = raw[static_cast<std::size_t>(a)], y = raw[static_cast<std::size_t>(b)];
        want[static_cast<std::size_t>(a)] = x * std::cos(ang) - y * std::sin(ang);
        want[static_cast<std::size_t>(b)] = x * std::sin(ang) + y * std::cos(ang);
      }
      // fp32 rounding of cos/sin and of two products: a few ulps of |x| <= 1. An fp32 angle would be off
      // by up to ~4e-3 rad at pos 131071.
      CHECK(near(max_diff(got, want), 0.0, 1e-6));
      for (int i = r; i < 64; ++i)
        CHECK(got[static_cast<std::size_t>(i)] == raw[static_cast<std::size_t>(i)]);
    }
  });
}

TEST_CASE("rope: apply at p, then rotate by D == apply at p + D (positions past 100K)", "[rope]") {
  for_every_config(32, [](const RopeConfig& c, const std::vector<double>& f) {
    const auto raw = random_row(64, 7);
    for (std::int64_t p : {0, 5, 1000, 65536, 131072})
      for (std::int64_t delta : {-131072, -100001, -3, 0, 1, 977, 70000, 140000}) {
        if (p + delta < 0) continue;
        INFO("p " << p << " delta " << delta);
        auto direct = raw;
        rope_apply(c, f, direct.data(), p + delta);
        auto moved = raw;
        rope_apply(c, f, moved.data(), p);
        rope_rotate(c, f, moved.data(), delta);
        CHECK(near(max_diff(moved, direct), 0.0, 2e-6));
        // The kernel's reference is the same rotation.
        auto relocated = raw;
        rope_apply(c, f, relocated.data(), p);
        rope_relocate_reference(c, f, delta, relocated.data());
        CHECK(relocated == moved);
        for (int i = c.rot(); i < 64; ++i)  // dims past the rotary part never move
          CHECK(moved[static_cast<std::size_t>(i)] == raw[static_cast<std::size_t>(i)]);
      }
  });
}

TEST_CASE("rope: a query counter-rotated by -D scores keys at j as the query scores keys at j + D",
          "[rope]") {
  for_every_config(32, [](const RopeConfig& c, const std::vector<double>& f) {
    const auto k_raw = random_row(64, 3);
    auto q = random_row(64, 4);
    rope_apply(c, f, q.data(), 120000);  // a query as a model produces it, at its own position
    const double scale = std::sqrt(dot(q, q) * dot(k_raw, k_raw));
    for (std::int64_t j : {0, 9, 4096, 110000})
      for (std::int64_t delta : {-110000, -4096, -1, 1, 33, 4096, 100003}) {
        if (j + delta < 0) continue;
        INFO("j " << j << " delta " << delta);
        auto q_counter = q;
        rope_rotate(c, f, q_counter.data(), -delta);
        auto k_j = k_raw, k_moved = k_raw;
        rope_apply(c, f, k_j.data(), j);
        rope_apply(c, f, k_moved.data(), j + delta);
        CHECK(near(dot(q_counter, k_j), dot(q, k_moved), 1e-6 * scale));
      }
  });
}

TEST_CASE("rope: the precomputed-angle form equals the inv_freq form", "[rope]") {
  for_every_config(16, [](const RopeConfig& c, const std::vector<double>& f) {
    std::vector<RopeCosSin> cs(f.size());
    for (std::int64_t pos : {0, 3, 99999}) {
      for (std::size_t i = 0; i < f.size(); ++i) cs[i] = rope_cos_sin(pos, f[i]);
      auto a = random_row(64, 5), b = a;
      rope_rotate(c, cs.data(), a.data());
      rope_apply(c, f, b.data(), pos);
      CHECK(a == b);
    }
  });
}

TEST_CASE("rope relocation pairs the right dims and keeps norms", "[rope]") {
  RopeConfig c;
  c.head_dim = 8;
  const auto f = rope_inv_freq(c);
  // A unit vector in dim 0 rotated by one position: rotate-half pairs dim 0 with dim 4 (inv_freq[0] = 1 rad).
  std::vector<float> r(8, 0.f);
  r[0] = 1.f;
  rope_relocate_reference(c, f, 1, r.data());
  CHECK(near(r[0], std::cos(1.0), 1e-7));
  CHECK(near(r[4], std::sin(1.0), 1e-7));
  c.pairing = RopePairing::kInterleaved;
  std::fill(r.begin(), r.end(), 0.f);
  r[0] = 1.f;
  rope_relocate_reference(c, f, 1, r.data());
  CHECK(near(r[0], std::cos(1.0), 1e-7));
  CHECK(near(r[1], std::sin(1.0), 1e-7));
  CHECK(r[4] == 0.f);
  // Rotations keep the norm, at any distance.
  c.head_dim = 64;
  const auto g = rope_inv_freq(c);
  auto v = random_row(64, 9);
  const double n0 = dot(v, v);
  rope_rotate(c, g, v.data(), -123457);
  CHECK(near(dot(v, v), n0, 1e-5 * n0));
  CHECK(rope_pair(RopePairing::kRotateHalf, 16, 3).a == 3);
  CHECK(rope_pair(RopePairing::kRotateHalf, 16, 3).b == 19);
  CHECK(rope_pair(RopePairing::kInterleaved, 16, 3).a == 6);
  CHECK(rope_pair(RopePairing::kInterleaved, 16, 3).b == 7);
}

TEST_CASE("rope config validation names the field and the value", "[rope]") {
  // Each case breaks one field of a valid config; the message must name it with its value.
  struct Bad {
    const char* message;
    void (*set)(RopeConfig&);
  };
  const Bad bad[] = {
      {"rotary_dim=33", [](RopeConfig& c) { c.rotary_dim = 33; }},
      {"rotary_dim=128", [](RopeConfig& c) { c.rotary_dim = 128; }},
      {"rotary_dim=-2", [](RopeConfig& c) { c.rotary_dim = -2; }},
      {"head_dim=63", [](RopeConfig& c) { c.head_dim = 63; }},
      {"theta=1", [](RopeConfig& c) { c.theta = 1.0; }},
      {"theta=nan", [](RopeConfig& c) { c.theta = std::numeric_limits<double>::quiet_NaN(); }},
      {"factor=0",
       [](RopeConfig& c) {
         c.scaling = RopeScaling::kLinear;
         c.factor = 0.0;
       }},
      {"high_freq_factor=1 must be > low_freq_factor=4",
       [](RopeConfig& c) {
         c.scaling = RopeScaling::kLlama3;
         c.low_freq_factor = 4.0;
         c.high_freq_factor = 1.0;
       }},
      {"original_max_position=0",
       [](RopeConfig& c) {
         c.scaling = RopeScaling::kLlama3;
         c.original_max_position = 0;
       }},
      {"beta_slow=0",
       [](RopeConfig& c) {
         c.scaling = RopeScaling::kYarn;
         c.beta_slow = 0.0;
       }},
  };
  for (const Bad& b : bad) {
    RopeConfig c;
    c.head_dim = 64;
    b.set(c);
    INFO(b.message);
    CHECK_THROWS_AS(rope_inv_freq(c), InvalidArgument);
    CHECK_THROWS_WITH(rope_inv_freq(c), ContainsSubstring(b.message));
  }
  RopeConfig c;
  c.head_dim = 64;
  for (auto scaling : {RopeScaling::kLinear, RopeScaling::kLlama3, RopeScaling::kYarn}) {
    c.scaling = scaling;
    CHECK_NOTHROW(rope_inv_freq(c));
  }
  // The factor of the default rule is unused, hence unchecked.
  c.scaling = RopeScaling::kDefault;
  c.factor = 0.0;
  CHECK_NOTHROW(rope_inv_freq(c));
  // inv_freq that does not belong to the config.
  const auto f = rope_inv_freq(c);
  c.rotary_dim = 32;
  std::vector<float> x(64, 0.f);
  CHECK_THROWS_WITH(rope_rotate(c, f, x.data(), 1), ContainsSubstring("inv_freq has 32 entries"));
}
