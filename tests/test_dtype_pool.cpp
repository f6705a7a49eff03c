// Storage dtypes and the page pool.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <cmath>
#include <limits>

#include "redknot/dtype.hpp"
#include "redknot/page_pool.hpp"

using namespace redknot;
using Catch::Matchers::ContainsSubstring;

TEST_CASE("fp16 conversion is exact on representable values and rounds to nearest even", "[dtype]") {
  // Every finite half converts to float and back bit-for-bit.
  for (std::uint32_t b = 0; b < 0x10000; ++b) {
    const auto bits = static_cast<std::uint16_t>(b);
    const float f = Half::to_float(bits);
    if (std::isnan(f)) continue;
    REQUIRE(Half::from_float(f) == bits);
  }
  REQUIRE(Half::from_float(1.0f + std::ldexp(1.0f, -11)) == Half::from_float(1.0f));  // tie -> even
  REQUIRE(Half::from_float(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02);              // tie -> even (up)
  REQUIRE(Half::from_float(65520.f) == 0x7c00);                                       // overflow -> inf
  REQUIRE(Half::from_float(65519.f) == 0x7bff);
  REQUIRE(std::isnan(Half::to_float(Half::from_float(std::numeric_limits<float>::quiet_NaN()))));
  REQUIRE(Half::to_float(Half::from_float(std::ldexp(1.0f, -24))) ==
          std::ldexp(1.0f, -24));  // smallest subnormal
}

TEST_CASE("bf16 conversion rounds to nearest even", "[dtype]") {
  for (std::uint32_t b = 0; b < 0x10000; b += 7) {
    const float f = BFloat16::to_float(static_cast<std::uint16_t>(b));
    if (std::isnan(f)) continue;
    REQUIRE(BFloat16::from_float(f) == b);
  }
  REQUIRE(BFloat16::from_float(1.0f + std::ldexp(1.0f, -8)) == BFloat16::from_float(1.0f));
  REQUIRE(BFloat16::from_float(1.0f + 3 * std::ldexp(1.0f, -8)) == 0x3f82);
  REQUIRE(std::isnan(BFloat16::to_float(BFloat16::from_float(std::numeric_limits<float>::quiet_NaN()))));
  REQUIRE(parse_dtype("bfloat16") == DType::kBF16);
  REQUIRE_THROWS_WITH(parse_dtype("int8"), ContainsSubstring("dtype='int8'"));
}

TEST_CASE("page pool: O(1) alloc/free, refcounts, all-or-nothing batches", "[pool]") {
  PagePool<float> pool(8, 16, 64);
  REQUIRE(pool.page_bytes() == 2 * 16 * 64 * 4);
  std::vector<PageId> got;
  pool.alloc(5, got);
  REQUIRE(got.size() == 5);
  REQUIRE(pool.used_pages() == 5);
  // v rows follow the k rows of the same page.
  REQUIRE(pool.v_ptr(got[0]) == pool.k_ptr(got[0]) + 16 * 64);
  // A batch that does not fit allocates nothing.
  REQUIRE_THROWS_AS(pool.alloc(4, got), PoolExhausted);
  REQUIRE_THROWS_WITH(pool.alloc(4, got), ContainsSubstring("need 4 pages, 3 free of 8"));
  REQUIRE(got.size() == 5);
  REQUIRE(pool.used_pages() == 5);
  pool.incref(got[0]);
  REQUIRE_FALSE(pool.decref(got[0]));
  REQUIRE(pool.decref(got[0]));
  REQUIRE(pool.used_pages() == 4);
  REQUIRE_THROWS_WITH(pool.decref(got[0]), ContainsSubstring("double free"));
  REQUIRE_THROWS_WITH(pool.incref(99), ContainsSubstring("page id 99 out of range [0, 8)"));
  REQUIRE(pool.used_pages() == 4);
  for (std::size_t i = 1; i < got.size(); ++i) pool.decref(got[i]);
  REQUIRE(pool.free_pages() == 8);
}
