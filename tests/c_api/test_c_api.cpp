// Tests of the C ABI (c_api.h) through the shared library: statuses and messages for bad input, the store
// left intact after every failure, CSR export, leak checks. Attention through the C ABI against the dense
// oracle, in every dtype, is tests/test_backends.cpp's c_api backend (the shared scenario list).
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "redknot/c_api.h"
#include "redknot/cpu_attention.hpp"
#include "redknot/dtype.hpp"
#include "redknot/head_map.hpp"
#include "redknot/version.hpp"

namespace {

const char* kMapJson = R"({"num_layers": 2, "num_kv_heads": 2,
  "kv_head_classification": [["global", "local"], ["local", "global"]],
  "kv_head_max_distance": [[-1, 6], [5, -1]],
  "kv_head_sink_size": [[0, 2], [4, 0]]})";

struct Tensor {
  explicit Tensor(std::vector<std::int64_t> shape_, std::vector<std::int64_t> strides_ = {})
      : shape(std::move(shape_)), strides(std::move(strides_)) {}
  std::vector<std::int64_t> shape;
  std::vector<std::int64_t> strides;  // empty: row-major
  DLTensor t{};
  DLTensor* make(void* data, DLDataType dt, DLDevice dev = {kDLCPU, 0}) {
    t.data = data;
    t.device = dev;
    t.ndim = static_cast<int32_t>(shape.size());
    t.dtype = dt;
    t.shape = shape.data();
    t.strides = strides.empty() ? nullptr : strides.data();
    t.byte_offset = 0;
    return &t;
  }
};

constexpr DLDataType kF32{kDLFloat, 32, 1};
constexpr DLDataType kF16{kDLFloat, 16, 1};
constexpr DLDataType kBF16{kDLBfloat, 16, 1};
constexpr DLDataType kI32{kDLInt, 32, 1};

// A store built from kMapJson with the given dtype (and a few knobs), released at scope exit.
struct Fixture {
  rk_store_config cfg{};
  rk_store* store = nullptr;
  explicit Fixture(int dtype = RK_DTYPE_F32, int page_size = 4, int num_pages = 256, int hq = 4) {
    rk_head_map* map = nullptr;
    REQUIRE(rk_head_map_from_json(kMapJson, static_cast<size_t>(-1), &map) == RK_OK);
    REQUIRE(rk_store_config_init(&cfg) == RK_OK);
    cfg.num_layers = 2;
    cfg.num_q_heads = hq;
    cfg.num_kv_heads = 2;
    cfg.head_dim = 16;
    cfg.dtype = dtype;
    cfg.page_size = page_size;
    cfg.num_pages = num_pages;
    REQUIRE(rk_store_create(&cfg, map, &store) == RK_OK);
    REQUIRE(rk_head_map_destroy(map) == RK_OK);
  }
  ~Fixture() { rk_store_destroy(store); }
  rk_store_stats stats() const {
    rk_store_stats s{};
    REQUIRE(rk_store_get_stats(store, &s) == RK_OK);
    return s;
  }
};

template <class T>
std::vector<T> random_vec(std::size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<T> v(n);
  for (auto& x : v) x = redknot::from_float<T>(u(rng));
  return v;
}

bool contains(const char* haystack, const char* needle) { return std::strstr(haystack, needle) != nullptr; }

}  // namespace

TEST_CASE("library version, ABI and status names") {
  CHECK(rk_abi_version() == RK_ABI_VERSION);
  CHECK(std::string(rk_version()) == REDKNOT_VERSION);
  CHECK(std::string(rk_status_string(RK_ERR_POOL_EXHAUSTED)) == "RK_ERR_POOL_EXHAUSTED");
  CHECK(std::string(rk_status_string(42)) == "RK_ERR_UNKNOWN_STATUS");
}

TEST_CASE("head maps: JSON in and out, policies, errors") {
  rk_head_map* map = nullptr;
  REQUIRE(rk_head_map_from_json(kMapJson, std::strlen(kMapJson), &map) == RK_OK);
  rk_head_map_info info{};
  REQUIRE(rk_head_map_get_info(map, &info) == RK_OK);
  CHECK(info.num_layers == 2);
  CHECK(info.num_kv_heads == 2);
  CHECK(info.num_local == 2);
  CHECK(info.num_global_like == 2);
  rk_head_policy p{};
  REQUIRE(rk_head_map_get_policy(map, 0, 1, &p) == RK_OK);
  CHECK(p.head_class == RK_HEAD_LOCAL);
  CHECK(p.window == 6);
  CHECK(p.sink == 2);
  CHECK(rk_head_map_get_policy(map, 2, 0, &p) == RK_ERR_INVALID_ARGUMENT);
  CHECK(contains(rk_last_error(), "layer=2"));

  // Pool sizing: 2 global heads hold all 7 pages of 100 tokens; the local heads (window 6 sink 2, window 5
  // sink 4) with chunks of 32 hold 1 + ceil(36/16) + 1 = 5 and 1 + ceil(35/16) + 1 = 5 pages.
  std::int64_t peak = 0;
  REQUIRE(rk_head_map_peak_sequence_pages(map, 16, 100, 32, &peak) == RK_OK);
  CHECK(peak == 7 + 7 + 5 + 5);
  CHECK(rk_head_map_peak_sequence_pages(map, 16, 100, 0, &peak) == RK_ERR_INVALID_ARGUMENT);
  CHECK(contains(rk_last_error(), "chunk=0"));
  CHECK(rk_head_map_peak_sequence_pages(map, 16, 100, 32, nullptr) == RK_ERR_INVALID_ARGUMENT);

  size_t len = 0;
  REQUIRE(rk_head_map_to_json(map, 2, nullptr, 0, &len) == RK_OK);
  std::string buf(len + 1, '\0');
  CHECK(rk_head_map_to_json(map, 2, buf.data(), len, nullptr) == RK_ERR_INVALID_ARGUMENT);  // no room for NUL
  REQUIRE(rk_head_map_to_json(map, 2, buf.data(), buf.size(), nullptr) == RK_OK);
  rk_head_map* again = nullptr;
  REQUIRE(rk_head_map_from_json(buf.c_str(), static_cast<size_t>(-1), &again) == RK_OK);
  rk_head_policy q{};
  REQUIRE(rk_head_map_get_policy(again, 1, 0, &q) == RK_OK);
  CHECK(q.window == 5);
  CHECK(q.sink == 4);
  rk_head_map_destroy(again);
  rk_head_map_destroy(map);

  rk_head_map* untouched = reinterpret_cast<rk_head_map*>(0x1);
  CHECK(rk_head_map_from_json("{not json", static_cast<size_t>(-1), &untouched) == RK_ERR_INVALID_ARGUMENT);
  CHECK(contains(rk_last_error(), "does not parse"));
  CHECK(untouched == reinterpret_cast<rk_head_map*>(0x1));  // out written only on success
  CHECK(rk_head_map_from_json(R"({"num_layers": 1})", static_cast<size_t>(-1), &untouched) ==
        RK_ERR_INVALID_ARGUMENT);
  CHECK(contains(rk_last_error(), "num_kv_heads"));
  CHECK(rk_head_map_from_json(nullptr, 0, &untouched) == RK_ERR_INVALID_ARGUMENT);
  CHECK(rk_head_map_load("/nonexistent/map.json", &untouched) == RK_ERR_INVALID_ARGUMENT);
  CHECK(contains(rk_last_error(), "cannot be opened"));
  CHECK(rk_head_map_uniform(2, 2, 7, 4, 0, &untouched) == RK_ERR_INVALID_ARGUMENT);
  CHECK(rk_head_map_uniform(2, 2, RK_HEAD_LOCAL, 0, 0, &untouched) == RK_ERR_INVALID_ARGUMENT);
  CHECK(rk_head_map_with_global_ratio(2, 2, NAN, 4, 0, &untouched) == RK_ERR_INVALID_ARGUMENT);
  CHECK(rk_head_map_get_info(nullptr, &info) == RK_ERR_INVALID_ARGUMENT);
  CHECK(rk_head_map_destroy(nullptr) == RK_OK);

  REQUIRE(rk_head_map_with_global_ratio(4, 8, 0.25, 16, 4, &map) == RK_OK);
  REQUIRE(rk_head_map_get_info(map, &info) == RK_OK);
  CHECK(info.num_global_like == 8);
  rk_head_map_destroy(map);
}

TEST_CASE("store creation rejects bad configs with a status") {
  rk_head_map* map = nullptr;
  REQUIRE(rk_head_map_from_json(kMapJson, static_cast<size_t>(-1), &map) == RK_OK);
  rk_store_config cfg{};
  REQUIRE(rk_store_config_init(&cfg) == RK_OK);
  cfg.num_layers = 2;
  cfg.num_q_heads = 4;
  cfg.num_kv_heads = 2;
  cfg.head_dim = 16;
  cfg.num_pages = 8;
  rk_store* s = nullptr;

  auto expect = [&](rk_store_config c, int status, const char* needle) {
    rk_store* out = nullptr;
    CHECK(rk_store_create(&c, map, &out) == status);
    CHECK(out == nullptr);
    INFO(rk_last_error());
    CHECK(contains(rk_last_error(), needle));
  };
  rk_store_config c = cfg;
  c.head_dim = 12;
  expect(c, RK_ERR_INVALID_ARGUMENT, "head_dim=12");
  c = cfg;
  c.num_q_heads = 3;
  expect(c, RK_ERR_INVALID_ARGUMENT, "num_q_heads=3");
  c = cfg;
  c.num_layers = 3;
  expect(c, RK_ERR_INVALID_ARGUMENT, "num_layers");
  c = cfg;
  c.dtype = 9;
  expect(c, RK_ERR_INVALID_ARGUMENT, "dtype=9");
  c = cfg;
  c.page_size = 0;
  expect(c, RK_ERR_INVALID_ARGUMENT, "page_size=0");
  c = cfg;
  c.num_pages = 0;
  expect(c, RK_ERR_INVALID_ARGUMENT, "num_pages=0");
  c = cfg;
  c.struct_size = 4;
  expect(c, RK_ERR_INVALID_ARGUMENT, "struct_size");
  c = cfg;
  c.device = DLDevice{kDLCUDA, 0};
  expect(c, RK_ERR_UNAVAILABLE, "cuda:0");
  c = cfg;
  c.device = DLDevice{kDLMetal, 0};
  expect(c, RK_ERR_INVALID_ARGUMENT, "not supported");
  CHECK(rk_store_create(nullptr, map, &s) == RK_ERR_INVALID_ARGUMENT);
  CHECK(rk_store_create(&cfg, nullptr, &s) == RK_ERR_INVALID_ARGUMENT);
  CHECK(rk_store_create(&cfg, map, nullptr) == RK_ERR_INVALID_ARGUMENT);
  CHECK(rk_store_destroy(nullptr) == RK_OK);

  REQUIRE(rk_store_create(&cfg, map, &s) == RK_OK);
  rk_store_config got{};
  REQUIRE(rk_store_get_config(s, &got) == RK_OK);
  CHECK(got.num_pages == 8);
  CHECK(got.dtype == RK_DTYPE_BF16);
  CHECK(got.device.device_type == kDLCPU);
  rk_head_map* copy = nullptr;
  REQUIRE(rk_store_get_head_map(s, &copy) == RK_OK);
  rk_head_map_info info{};
  REQUIRE(rk_head_map_get_info(copy, &info) == RK_OK);
  CHECK(info.num_local == 2);
  rk_head_map_destroy(copy);
  rk_store_destroy(s);
  rk_head_map_destroy(map);

  std::int64_t stores = -1, maps = -1;
  REQUIRE(rk_live_handles(&stores, &maps) == RK_OK);
  CHECK(stores == 0);
  CHECK(maps == 0);
}

TEST_CASE("bad data-path input is a status, and the store is left intact") {
  Fixture f(RK_DTYPE_F32, 4, 6);
  const int Hk = 2, D = 16;
  std::int64_t s = 0;
  REQUIRE(rk_sequence_create(f.store, &s) == RK_OK);
  std::vector<float> k(3 * Hk * D, 0.5f), v(3 * Hk * D, 0.25f);
  std::vector<std::int32_t> pos = {0, 1, 2};
  Tensor kt{{3, Hk, D}}, vt{{3, Hk, D}};
  REQUIRE(rk_append(f.store, s, 0, kt.make(k.data(), kF32), vt.make(v.data(), kF32), pos.data(), 3,
                    nullptr) == RK_OK);
  const rk_store_stats before = f.stats();

  auto expect = [&](int got, int status, const char* needle) {
    INFO(rk_last_error());
    CHECK(got == status);
    CHECK(contains(rk_last_error(), needle));
    const rk_store_stats now = f.stats();
    CHECK(now.pages_in_use == before.pages_in_use);
    CHECK(now.num_sequences == before.num_sequences);
  };
  std::vector<std::int32_t> later = {3, 4, 5};
  Tensor bad{{3, Hk, D + 1}};
  expect(
      rk_append(f.store, s, 0, bad.make(k.data(), kF32), vt.make(v.data(), kF32), later.data(), 3, nullptr),
      RK_ERR_INVALID_ARGUMENT, "append: k has shape [3, 2, 17]");
  Tensor k2{{2, Hk, D}};
  expect(rk_append(f.store, s, 0, k2.make(k.data(), kF32), vt.make(v.data(), kF32), later.data(), 3, nullptr),
         RK_ERR_INVALID_ARGUMENT, "n_tokens=3");
  expect(rk_append(f.store, s, 0, kt.make(k.data(), kI32), vt.make(v.data(), kF32), later.data(), 3, nullptr),
         RK_ERR_INVALID_ARGUMENT, "dtype int32");
  expect(rk_append(f.store, s, 0, kt.make(k.data(), kF32), vt.make(v.data(), kF32, {kDLCUDA, 0}),
                   later.data(), 3, nullptr),
         RK_ERR_INVALID_ARGUMENT, "append: v lives on device");
  expect(rk_append(f.store, s, 0, kt.make(nullptr, kF32), vt.make(v.data(), kF32), later.data(), 3, nullptr),
         RK_ERR_INVALID_ARGUMENT, "k.data is NULL");
  expect(rk_append(f.store, s, 0, nullptr, vt.make(v.data(), kF32), later.data(), 3, nullptr),
         RK_ERR_INVALID_ARGUMENT, "k is NULL");
  expect(rk_append(f.store, s, 0, kt.make(k.data(), kF32), vt.make(v.data(), kF32), nullptr, 3, nullptr),
         RK_ERR_INVALID_ARGUMENT, "positions is NULL");
  expect(rk_append(f.store, s, 0, kt.make(k.data(), kF32), vt.make(v.data(), kF32), pos.data(), 3, nullptr),
         RK_ERR_INVALID_ARGUMENT, "must be >= 3");
  expect(rk_append(f.store, s, 5, kt.make(k.data(), kF32), vt.make(v.data(), kF32), later.data(), 3, nullptr),
         RK_ERR_INVALID_ARGUMENT, "layer=5");
  expect(
      rk_append(f.store, 77, 0, kt.make(k.data(), kF32), vt.make(v.data(), kF32), later.data(), 3, nullptr),
      RK_ERR_NOT_FOUND, "id=77");
  expect(rk_append(nullptr, s, 0, kt.make(k.data(), kF32), vt.make(v.data(), kF32), later.data(), 3, nullptr),
         RK_ERR_INVALID_ARGUMENT, "store handle is NULL");

  // Pool exhaustion: 6 pages, 2 in use; 16 tokens need 4 pages per head.
  std::vector<float> big(16 * Hk * D, 1.f);
  std::vector<std::int32_t> big_pos(16);
  for (int i = 0; i < 16; ++i) big_pos[static_cast<std::size_t>(i)] = 3 + i;
  Tensor bt{{16, Hk, D}};
  expect(rk_append(f.store, s, 0, bt.make(big.data(), kF32), bt.make(big.data(), kF32), big_pos.data(), 16,
                   nullptr),
         RK_ERR_POOL_EXHAUSTED, "needs");

  // Plans and attention.
  std::int32_t one = 1, p2 = 2, p9 = 9, p23[2] = {2, 3};
  expect(rk_plan(f.store, &s, &one, 1, p23, 2), RK_ERR_INVALID_ARGUMENT, "expected sum(q_lens)=1");
  std::int64_t twice[2] = {s, s};
  std::int32_t lens[2] = {1, 1}, qp[2] = {2, 2};
  expect(rk_plan(f.store, twice, lens, 2, qp, 2), RK_ERR_INVALID_ARGUMENT, "appears twice");
  std::int64_t ghost = 1234;
  expect(rk_plan(f.store, &ghost, &one, 1, &p2, 1), RK_ERR_NOT_FOUND, "1234");
  std::vector<float> q(4 * D, 0.1f), out(4 * D, 0.f);
  Tensor qt{{1, 4, D}}, ot{{1, 4, D}};
  expect(
      rk_attention(f.store, 0, qt.make(q.data(), kF32), ot.make(out.data(), kF32), nullptr, nullptr, nullptr),
      RK_ERR_INVALID_ARGUMENT, "no batch planned");
  REQUIRE(rk_plan(f.store, &s, &one, 1, &p9, 1) == RK_OK);
  expect(
      rk_attention(f.store, 0, qt.make(q.data(), kF32), ot.make(out.data(), kF32), nullptr, nullptr, nullptr),
      RK_ERR_INVALID_ARGUMENT, "query position 9");
  REQUIRE(rk_plan(f.store, &s, &one, 1, &p2, 1) == RK_OK);
  Tensor qbad{{2, 4, D}};
  expect(rk_attention(f.store, 0, qbad.make(q.data(), kF32), ot.make(out.data(), kF32), nullptr, nullptr,
                      nullptr),
         RK_ERR_INVALID_ARGUMENT, "run: q has shape [2, 4, 16]");
  expect(
      rk_attention(f.store, 0, qt.make(q.data(), kF32), ot.make(out.data(), kF16), nullptr, nullptr, nullptr),
      RK_ERR_INVALID_ARGUMENT, "run: out has dtype float16");
  expect(rk_attention(f.store, 0, qt.make(q.data(), kBF16), ot.make(out.data(), kBF16), nullptr, nullptr,
                      nullptr),
         RK_ERR_INVALID_ARGUMENT, "run: q has dtype bfloat16");
  Tensor lbad{{1, 3}};
  std::vector<float> lse(4);
  expect(rk_attention(f.store, 0, qt.make(q.data(), kF32), ot.make(out.data(), kF32),
                      lbad.make(lse.data(), kF32), nullptr, nullptr),
         RK_ERR_INVALID_ARGUMENT, "run: lse has shape [1, 3]");
  rk_attention_params bad_params{-1.f, 0};
  expect(rk_attention(f.store, 0, qt.make(q.data(), kF32), ot.make(out.data(), kF32), nullptr, &bad_params,
                      nullptr),
         RK_ERR_INVALID_ARGUMENT, "sm_scale=-1");
  expect(
      rk_attention(f.store, 2, qt.make(q.data(), kF32), ot.make(out.data(), kF32), nullptr, nullptr, nullptr),
      RK_ERR_INVALID_ARGUMENT, "layer=2");

  // Still fully usable: attention of the query at position 2 sees the three keys (all V rows are 0.25).
  REQUIRE(rk_attention(f.store, 0, qt.make(q.data(), kF32), ot.make(out.data(), kF32), nullptr, nullptr,
                       nullptr) == RK_OK);
  for (float x : out) CHECK(std::abs(x - 0.25f) < 1e-6f);

  // Sequence calls.
  std::int64_t id = -5;
  expect(rk_sequence_fork(f.store, 99, &id), RK_ERR_NOT_FOUND, "fork");
  CHECK(id == -5);
  expect(rk_sequence_free(f.store, 99), RK_ERR_NOT_FOUND, "free_sequence");
  expect(rk_sequence_retire_queries(f.store, s, 10, 0), RK_ERR_INVALID_ARGUMENT, "beyond the next position");
  std::int32_t np = -1, live = -1;
  REQUIRE(rk_sequence_next_position(f.store, s, 0, &np) == RK_OK);
  CHECK(np == 3);
  REQUIRE(rk_sequence_contains(f.store, 99, &live) == RK_OK);
  CHECK(live == 0);
  rk_sequence_stats ss{};
  expect(rk_sequence_get_stats(f.store, 99, &ss), RK_ERR_NOT_FOUND, "99");
  std::int64_t n = 0;
  expect(rk_store_pages_per_sequence(f.store, -1, &n), RK_ERR_INVALID_ARGUMENT, "num_tokens=-1");
  REQUIRE(rk_sequence_free(f.store, s) == RK_OK);
  CHECK(f.stats().pages_in_use == 0);
}

TEST_CASE("strided inputs and outputs are gathered and scattered") {
  Fixture f(RK_DTYPE_F32, 4, 64, 2);  // MHA: q heads == kv heads == 2
  const int Hk = 2, D = 16, n = 5;
  std::int64_t s = 0;
  REQUIRE(rk_sequence_create(f.store, &s) == RK_OK);
  std::mt19937 rng(3);
  // A fused [n, 3, Hk, D] qkv buffer; k and v are strided views into it, as an engine's projections give
  // them.
  auto qkv = random_vec<float>(static_cast<std::size_t>(n) * 3 * Hk * D, rng);
  std::vector<std::int32_t> pos = {0, 1, 2, 3, 4};
  Tensor kt{{n, Hk, D}, {3 * Hk * D, D, 1}}, vt{{n, Hk, D}, {3 * Hk * D, D, 1}},
      qt{{n, Hk, D}, {3 * Hk * D, D, 1}};
  for (int l = 0; l < 2; ++l) {
    DLTensor* kp = kt.make(qkv.data() + Hk * D, kF32);
    DLTensor* vp = vt.make(qkv.data() + 2 * Hk * D, kF32);
    REQUIRE(rk_append(f.store, s, l, kp, vp, pos.data(), n, nullptr) == RK_OK);
  }
  std::int32_t len = n;
  REQUIRE(rk_plan(f.store, &s, &len, 1, pos.data(), n) == RK_OK);
  // Output transposed in memory ([Hk][n][D] storage, seen as [n, Hk, D]).
  std::vector<float> out_t(static_cast<std::size_t>(n) * Hk * D), out_c(out_t.size());
  Tensor ot{{n, Hk, D}, {D, n * D, 1}}, oc{{n, Hk, D}};
  REQUIRE(rk_attention(f.store, 1, qt.make(qkv.data(), kF32), ot.make(out_t.data(), kF32), nullptr, nullptr,
                       nullptr) == RK_OK);
  // The same through contiguous copies.
  std::vector<float> q(static_cast<std::size_t>(n) * Hk * D);
  for (int i = 0; i < n; ++i)
    for (int e = 0; e < Hk * D; ++e)
      q[static_cast<std::size_t>(i * Hk * D + e)] = qkv[static_cast<std::size_t>(i * 3 * Hk * D + e)];
  Tensor qc{{n, Hk, D}};
  REQUIRE(rk_attention(f.store, 1, qc.make(q.data(), kF32), oc.make(out_c.data(), kF32), nullptr, nullptr,
                       nullptr) == RK_OK);
  for (int i = 0; i < n; ++i)
    for (int h = 0; h < Hk; ++h)
      for (int d = 0; d < D; ++d)
        CHECK(out_t[static_cast<std::size_t>((h * n + i) * D + d)] ==
              out_c[static_cast<std::size_t>((i * Hk + h) * D + d)]);
}

TEST_CASE("FlashInfer CSR export of a layer's page tables") {
  Fixture f(RK_DTYPE_F32, 4, 128);
  const int Hk = 2, D = 16;
  std::int64_t a = 0, b = 0;
  REQUIRE(rk_sequence_create(f.store, &a) == RK_OK);
  REQUIRE(rk_sequence_create(f.store, &b) == RK_OK);
  auto append = [&](std::int64_t s, int l, int p0, int n) {
    std::vector<float> kv(static_cast<std::size_t>(n) * Hk * D, 1.f);
    std::vector<std::int32_t> pos(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) pos[static_cast<std::size_t>(i)] = p0 + i;
    Tensor t{{n, Hk, D}};
    REQUIRE(rk_append(f.store, s, l, t.make(kv.data(), kF32), t.make(kv.data(), kF32), pos.data(), n,
                      nullptr) == RK_OK);
  };
  append(a, 1, 0, 10);  // layer 1: head 0 local (window 5, sink 4), head 1 global
  append(b, 1, 0, 3);
  std::int64_t seqs[2] = {a, b};
  std::int64_t n = -1;
  REQUIRE(rk_export_page_table(f.store, 1, seqs, 2, nullptr, nullptr, 0, nullptr, nullptr, &n) == RK_OK);
  std::vector<std::int32_t> indptr(5), indices(64), last(4), pos0(64);
  CHECK(rk_export_page_table(f.store, 1, seqs, 2, indptr.data(), indices.data(), n - 1, last.data(), nullptr,
                             nullptr) == RK_ERR_INVALID_ARGUMENT);
  REQUIRE(rk_export_page_table(f.store, 1, seqs, 2, indptr.data(), indices.data(), n, last.data(),
                               pos0.data(), nullptr) == RK_OK);
  indices.resize(static_cast<std::size_t>(n));
  pos0.resize(static_cast<std::size_t>(n));
  // After a 10-token prefill appended in one call nothing is evicted yet: 3 pages (4+4+2) per head of a,
  // 1 page (3) per head of b.
  CHECK(indptr == std::vector<std::int32_t>{0, 3, 6, 7, 8});
  CHECK(last == std::vector<std::int32_t>{2, 2, 3, 3});
  CHECK(pos0 == std::vector<std::int32_t>{0, 4, 8, 0, 4, 8, 0, 0});
  std::vector<std::int32_t> sorted = indices;
  std::sort(sorted.begin(), sorted.end());
  CHECK(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end());  // no page twice

  // Decoding far enough evicts the local head's middle pages: its sink page (4 = page_size, full) and window
  // pages remain, so the row stays expressible with a position jump that page_pos0 reveals.
  for (int p = 10; p < 24; ++p) append(a, 1, p, 1);
  indices.assign(64, -1);
  pos0.assign(64, -1);
  REQUIRE(rk_export_page_table(f.store, 1, seqs, 1, indptr.data(), indices.data(), 64, last.data(),
                               pos0.data(), &n) == RK_OK);
  CHECK(n == 9);
  CHECK(indptr[1] == 3);  // head 0: sink page [0, 4) + window pages [16, 20) and [20, 24)
  CHECK(pos0[0] == 0);
  CHECK(pos0[1] == 16);
  CHECK(pos0[2] == 20);
  CHECK(indptr[2] - indptr[1] == 6);  // head 1 (global): 24 tokens in 6 full pages
  CHECK(last[1] == 4);

  // Layer 0 head 1 is local with sink 2: after eviction its sink page is partial and not last -> not
  // expressible.
  append(a, 0, 0, 10);
  for (int p = 10; p < 20; ++p) append(a, 0, p, 1);
  std::vector<std::int32_t> big(64);
  CHECK(rk_export_page_table(f.store, 0, seqs, 1, indptr.data(), big.data(), 64, last.data(), nullptr,
                             nullptr) == RK_ERR_INVALID_ARGUMENT);
  INFO(rk_last_error());
  CHECK(contains(rk_last_error(), "kv_head 1"));
  CHECK(contains(rk_last_error(), "partial page"));

  std::int64_t ghost = 555;
  CHECK(rk_export_page_table(f.store, 0, &ghost, 1, nullptr, nullptr, 0, nullptr, nullptr, &n) ==
        RK_ERR_NOT_FOUND);
  CHECK(rk_export_page_table(f.store, 3, seqs, 1, nullptr, nullptr, 0, nullptr, nullptr, &n) ==
        RK_ERR_INVALID_ARGUMENT);
}

TEST_CASE("the page pool as a DLTensor, read through the CSR export") {
  Fixture f(RK_DTYPE_F32, 4, 32);
  const int Hk = 2, D = 16, n = 7;
  std::int64_t s = 0;
  REQUIRE(rk_sequence_create(f.store, &s) == RK_OK);
  std::mt19937 rng(5);
  auto k = random_vec<float>(static_cast<std::size_t>(n) * Hk * D, rng);
  auto v = random_vec<float>(k.size(), rng);
  std::vector<std::int32_t> pos = {0, 1, 2, 3, 4, 5, 6};
  Tensor kt{{n, Hk, D}}, vt{{n, Hk, D}};
  REQUIRE(rk_append(f.store, s, 1, kt.make(k.data(), kF32), vt.make(v.data(), kF32), pos.data(), n,
                    nullptr) == RK_OK);
  DLTensor pool{};
  REQUIRE(rk_store_get_kv_pool(f.store, &pool) == RK_OK);
  REQUIRE(pool.ndim == 4);
  CHECK(pool.shape[0] == 32);
  CHECK(pool.shape[1] == 2);
  CHECK(pool.shape[2] == 4);
  CHECK(pool.shape[3] == D);
  CHECK(pool.strides == nullptr);
  CHECK(pool.dtype.code == kDLFloat);
  CHECK(pool.dtype.bits == 32);
  std::vector<std::int32_t> indptr(3), indices(8), last(2);
  REQUIRE(rk_export_page_table(f.store, 1, &s, 1, indptr.data(), indices.data(), 8, last.data(), nullptr,
                               nullptr) == RK_OK);
  const auto* data = static_cast<const float*>(pool.data);
  for (int h = 0; h < Hk; ++h)
    for (int p = 0; p < n; ++p) {
      const std::int32_t page =
          indices[static_cast<std::size_t>(indptr[static_cast<std::size_t>(h)] + p / 4)];
      for (int d = 0; d < D; ++d) {
        const std::size_t slot = ((static_cast<std::size_t>(page) * 2 + 0) * 4 + p % 4) * D + d;
        const std::size_t vslot = ((static_cast<std::size_t>(page) * 2 + 1) * 4 + p % 4) * D + d;
        REQUIRE(data[slot] == k[static_cast<std::size_t>((p * Hk + h) * D + d)]);
        REQUIRE(data[vslot] == v[static_cast<std::size_t>((p * Hk + h) * D + d)]);
      }
    }
  CHECK(rk_store_get_kv_pool(nullptr, &pool) == RK_ERR_INVALID_ARGUMENT);
  CHECK(rk_store_get_kv_pool(f.store, nullptr) == RK_ERR_INVALID_ARGUMENT);
}

TEST_CASE("stats and capacity queries") {
  Fixture f(RK_DTYPE_BF16, 4, 100);
  std::int64_t per = 0, fit = 0;
  REQUIRE(rk_store_pages_per_sequence(f.store, 64, &per) == RK_OK);
  REQUIRE(rk_store_sequences_that_fit(f.store, 64, &fit) == RK_OK);
  CHECK(per > 0);
  CHECK(fit == 100 / per);
  const rk_store_stats st = f.stats();
  CHECK(st.pages_total == 100);
  CHECK(st.pages_in_use == 0);
}

// ---- regressions from the independent robustness suite ----------------------------------------------------

namespace {

// Everything a failed call must leave as it was: pages in use, live sequences, next position per layer.
struct Snapshot {
  rk_store_stats st{};
  std::vector<std::int32_t> next;  // [seq][layer] for the given sequences
  bool operator==(const Snapshot& o) const {
    return st.pages_in_use == o.st.pages_in_use && st.num_sequences == o.st.num_sequences &&
           st.bytes_in_use == o.st.bytes_in_use && next == o.next;
  }
};

Snapshot snapshot(rk_store* store, const std::vector<std::int64_t>& seqs, int num_layers) {
  Snapshot s;
  REQUIRE(rk_store_get_stats(store, &s.st) == RK_OK);
  for (const std::int64_t id : seqs)
    for (int l = 0; l < num_layers; ++l) {
      std::int32_t np = -1;
      REQUIRE(rk_sequence_next_position(store, id, l, &np) == RK_OK);
      s.next.push_back(np);
    }
  return s;
}

}  // namespace

TEST_CASE("num_threads is validated before it reaches OpenMP") {
  Fixture f(RK_DTYPE_F32, 4, 32);
  const int Hk = 2, Hq = 4, D = 16;
  std::int64_t s = 0;
  REQUIRE(rk_sequence_create(f.store, &s) == RK_OK);
  std::vector<float> k(2 * Hk * D, 0.5f), v(2 * Hk * D, 0.25f);
  std::vector<std::int32_t> pos = {0, 1};
  Tensor kt{{2, Hk, D}}, vt{{2, Hk, D}};
  REQUIRE(rk_append(f.store, s, 0, kt.make(k.data(), kF32), vt.make(v.data(), kF32), pos.data(), 2,
                    nullptr) == RK_OK);
  const std::int32_t ql = 1, qp = 1;
  REQUIRE(rk_plan(f.store, &s, &ql, 1, &qp, 1) == RK_OK);
  std::vector<float> q(Hq * D, 0.1f), out(Hq * D, -7.f);
  Tensor qt{{1, Hq, D}}, ot{{1, Hq, D}};
  const Snapshot before = snapshot(f.store, {s}, 2);
  for (const std::int32_t n : {40000, 65536, 70000, RK_MAX_NUM_THREADS + 1, INT32_MAX, -1, INT32_MIN}) {
    rk_attention_params p{0.f, n};
    INFO("num_threads=" << n);
    CHECK(rk_attention(f.store, 0, qt.make(q.data(), kF32), ot.make(out.data(), kF32), nullptr, &p,
                       nullptr) == RK_ERR_INVALID_ARGUMENT);
    INFO(rk_last_error());
    CHECK(contains(rk_last_error(), "num_threads"));
    CHECK(contains(rk_last_error(), std::to_string(n).c_str()));
    CHECK(out[0] == -7.f);  // outputs untouched on failure
    CHECK(snapshot(f.store, {s}, 2) == before);
  }
  for (const std::int32_t n : {0, 1, 3, RK_MAX_NUM_THREADS}) {
    rk_attention_params p{0.f, n};
    INFO("num_threads=" << n);
    REQUIRE(rk_attention(f.store, 0, qt.make(q.data(), kF32), ot.make(out.data(), kF32), nullptr, &p,
                         nullptr) == RK_OK);
    for (const float x : out) CHECK(std::abs(x - 0.25f) < 1e-6f);
  }
}

TEST_CASE("huge counts and sizes are a precise error, never INTERNAL") {
  // Head maps: layers * heads beyond RK_MAX_LAYERS_X_KV_HEADS.
  rk_head_map* untouched = reinterpret_cast<rk_head_map*>(0x1);
  CHECK(rk_head_map_uniform(INT32_MAX, INT32_MAX, RK_HEAD_GLOBAL, -1, 0, &untouched) ==
        RK_ERR_INVALID_ARGUMENT);
  CHECK(contains(rk_last_error(), "num_layers * num_kv_heads"));
  CHECK(contains(rk_last_error(), "2147483647"));
  CHECK(rk_head_map_uniform(INT32_MAX, INT32_MAX, RK_HEAD_LOCAL, 4, 0, &untouched) ==
        RK_ERR_INVALID_ARGUMENT);
  CHECK(rk_head_map_uniform(1 << 11, 1 << 10, RK_HEAD_GLOBAL, -1, 0, &untouched) == RK_ERR_INVALID_ARGUMENT);
  CHECK(rk_head_map_with_global_ratio(INT32_MAX, INT32_MAX, 0.5, 4, 0, &untouched) ==
        RK_ERR_INVALID_ARGUMENT);
  CHECK(contains(rk_last_error(), "exceeds the limit of 1048576 heads"));  // RK_MAX_LAYERS_X_KV_HEADS
  CHECK(rk_head_map_with_global_ratio(INT32_MAX, 1, 1.0, 4, 0, &untouched) == RK_ERR_INVALID_ARGUMENT);
  CHECK(rk_head_map_uniform(-1, 2, RK_HEAD_GLOBAL, -1, 0, &untouched) == RK_ERR_INVALID_ARGUMENT);
  CHECK(contains(rk_last_error(), "num_layers=-1"));
  CHECK(untouched == reinterpret_cast<rk_head_map*>(0x1));
  // At the limit it works.
  rk_head_map* big = nullptr;
  REQUIRE(rk_head_map_uniform(1 << 10, 1 << 10, RK_HEAD_GLOBAL, -1, 0, &big) == RK_OK);

  // Stores: huge shapes are InvalidArgument, a huge pool is out of memory (POOL_EXHAUSTED).
  rk_store_config cfg{};
  REQUIRE(rk_store_config_init(&cfg) == RK_OK);
  cfg.num_layers = 1 << 10;
  cfg.num_q_heads = 1 << 10;
  cfg.num_kv_heads = 1 << 10;
  cfg.head_dim = 1024;
  cfg.page_size = 4096;
  cfg.num_pages = INT32_MAX;  // 2^31 pages of 2 * 4096 * 1024 bf16: 2^55 bytes
  rk_store* store = nullptr;
  CHECK(rk_store_create(&cfg, big, &store) == RK_ERR_POOL_EXHAUSTED);
  INFO(rk_last_error());
  CHECK(contains(rk_last_error(), "out of memory"));
  CHECK(store == nullptr);
  rk_store_config c = cfg;
  c.num_q_heads = 1 << 30;
  CHECK(rk_store_create(&c, big, &store) == RK_ERR_INVALID_ARGUMENT);
  CHECK(contains(rk_last_error(), "num_q_heads=1073741824"));
  c = cfg;
  c.num_layers = INT32_MAX;
  c.num_kv_heads = INT32_MAX;
  CHECK(rk_store_create(&c, big, &store) == RK_ERR_INVALID_ARGUMENT);
  CHECK(contains(rk_last_error(), "num_layers * num_kv_heads"));
  CHECK(store == nullptr);
  REQUIRE(rk_head_map_destroy(big) == RK_OK);

  // Counts on a live store.
  Fixture f(RK_DTYPE_BF16, 4, 16);
  std::int64_t s = 0;
  REQUIRE(rk_sequence_create(f.store, &s) == RK_OK);
  const Snapshot before = snapshot(f.store, {s}, 2);
  std::vector<float> k(2 * 16, 0.5f);
  std::vector<std::int32_t> pos = {0, 1, 2};
  // A tensor that claims the huge n_tokens (the caller lies): rejected before any buffer is sized by it.
  Tensor huge{{std::int64_t{1} << 40, 2, 16}};
  CHECK(rk_append(f.store, s, 0, huge.make(k.data(), kF32), huge.make(k.data(), kF32), pos.data(),
                  std::int64_t{1} << 40, nullptr) == RK_ERR_INVALID_ARGUMENT);
  CHECK(contains(rk_last_error(), "n_tokens=1099511627776"));
  CHECK(rk_append(f.store, s, 0, huge.make(k.data(), kF32), huge.make(k.data(), kF32), pos.data(), INT64_MAX,
                  nullptr) == RK_ERR_INVALID_ARGUMENT);
  CHECK(rk_append(f.store, s, 0, huge.make(k.data(), kF32), huge.make(k.data(), kF32), pos.data(), -3,
                  nullptr) == RK_ERR_INVALID_ARGUMENT);
  const std::int32_t ql = 1;
  CHECK(rk_plan(f.store, &s, &ql, -1, pos.data(), 1) == RK_ERR_INVALID_ARGUMENT);
  CHECK(rk_plan(f.store, &s, &ql, 1, pos.data(), INT64_MAX) == RK_ERR_INVALID_ARGUMENT);
  CHECK(contains(rk_last_error(), "q_positions has 9223372036854775807 entries"));  // total_q
  const std::int32_t big_len = INT32_MAX;
  CHECK(rk_plan(f.store, &s, &big_len, 1, pos.data(), 1) == RK_ERR_INVALID_ARGUMENT);
  std::int64_t n = -1;
  for (const std::int64_t tokens : {INT64_MAX, std::int64_t{1} << 40, RK_MAX_TOKENS + 1}) {
    CHECK(rk_store_pages_per_sequence(f.store, tokens, &n) == RK_ERR_INVALID_ARGUMENT);
    CHECK(contains(rk_last_error(), "num_tokens="));
    CHECK(rk_store_sequences_that_fit(f.store, tokens, &n) == RK_ERR_INVALID_ARGUMENT);
  }
  CHECK(n == -1);
  REQUIRE(rk_store_pages_per_sequence(f.store, RK_MAX_TOKENS, &n) == RK_OK);
  rk_head_map* m = nullptr;
  REQUIRE(rk_store_get_head_map(f.store, &m) == RK_OK);
  CHECK(rk_head_map_peak_sequence_pages(m, 1, INT64_MAX, 1, &n) == RK_ERR_INVALID_ARGUMENT);
  CHECK(rk_head_map_peak_sequence_pages(m, 1, 100, INT64_MAX, &n) == RK_ERR_INVALID_ARGUMENT);
  CHECK(contains(rk_last_error(), "chunk="));
  CHECK(rk_head_map_peak_sequence_pages(m, INT32_MIN, 100, 4, &n) == RK_ERR_INVALID_ARGUMENT);
  REQUIRE(rk_head_map_peak_sequence_pages(m, 1, RK_MAX_TOKENS, RK_MAX_TOKENS, &n) == RK_OK);
  size_t len = 0;
  char tiny[4];
  CHECK(rk_head_map_to_json(m, 2, tiny, sizeof tiny, &len) == RK_ERR_INVALID_ARGUMENT);
  REQUIRE(rk_head_map_destroy(m) == RK_OK);
  std::int64_t ids[2] = {s, s};
  std::int64_t nidx = 0;
  CHECK(rk_export_page_table(f.store, 0, ids, -1, nullptr, nullptr, 0, nullptr, nullptr, &nidx) ==
        RK_ERR_INVALID_ARGUMENT);
  CHECK(rk_export_page_table(f.store, INT32_MAX, ids, 1, nullptr, nullptr, 0, nullptr, nullptr, &nidx) ==
        RK_ERR_INVALID_ARGUMENT);
  CHECK(rk_export_page_table(f.store, 0, ids, 1, nullptr, nullptr, -1, nullptr, nullptr, &nidx) ==
        RK_ERR_INVALID_ARGUMENT);
  CHECK(snapshot(f.store, {s}, 2) == before);
}

TEST_CASE("a DLTensor or store device_type outside DLDeviceType is read as an integer") {
  Fixture f(RK_DTYPE_F32, 4, 16);
  std::int64_t s = 0;
  REQUIRE(rk_sequence_create(f.store, &s) == RK_OK);
  const Snapshot before = snapshot(f.store, {s}, 2);
  std::vector<float> k(2 * 16, 0.5f);
  std::vector<std::int32_t> pos = {0};
  Tensor kt{{1, 2, 16}}, vt{{1, 2, 16}};
  for (const std::int32_t dev : {0, 5, 6, 17, 99, 12345, -1, INT32_MAX, INT32_MIN}) {
    DLDevice d{};
    std::memcpy(&d.device_type, &dev, sizeof dev);  // what a foreign producer may hand over
    INFO("device_type=" << dev);
    CHECK(rk_append(f.store, s, 0, kt.make(k.data(), kF32), vt.make(k.data(), kF32, d), pos.data(), 1,
                    nullptr) == RK_ERR_INVALID_ARGUMENT);
    INFO(rk_last_error());
    CHECK(contains(rk_last_error(), "append: v"));
    CHECK(contains(rk_last_error(), ("device type " + std::to_string(dev)).c_str()));
    CHECK(contains(rk_last_error(), dev == 0 || dev == 5 || dev == 6 || dev > 16 || dev < 0
                                        ? "not a DLDeviceType"
                                        : "not host memory"));
    CHECK(snapshot(f.store, {s}, 2) == before);

    rk_store_config c = f.cfg;
    c.device = d;
    rk_store* out = nullptr;
    rk_head_map* map = nullptr;
    REQUIRE(rk_store_get_head_map(f.store, &map) == RK_OK);
    CHECK(rk_store_create(&c, map, &out) == RK_ERR_INVALID_ARGUMENT);
    CHECK(contains(rk_last_error(), ("device_type=" + std::to_string(dev)).c_str()));
    CHECK(out == nullptr);
    REQUIRE(rk_head_map_destroy(map) == RK_OK);
  }
}

TEST_CASE("use after destroy and double destroy of handles are errors, not crashes") {
  std::int64_t stores0 = 0, maps0 = 0;
  REQUIRE(rk_live_handles(&stores0, &maps0) == RK_OK);

  rk_head_map* map = nullptr;
  REQUIRE(rk_head_map_from_json(kMapJson, static_cast<size_t>(-1), &map) == RK_OK);
  rk_store_config cfg{};
  REQUIRE(rk_store_config_init(&cfg) == RK_OK);
  cfg.num_layers = 2;
  cfg.num_q_heads = 2;
  cfg.num_kv_heads = 2;
  cfg.head_dim = 8;
  cfg.dtype = RK_DTYPE_F32;
  cfg.page_size = 2;
  cfg.num_pages = 8;
  rk_store* store = nullptr;
  REQUIRE(rk_store_create(&cfg, map, &store) == RK_OK);

  SECTION("store") {
    std::int64_t id = 0;
    REQUIRE(rk_sequence_create(store, &id) == RK_OK);
    REQUIRE(rk_store_destroy(store) == RK_OK);
    std::int64_t out = -5;
    CHECK(rk_sequence_create(store, &out) == RK_ERR_INVALID_ARGUMENT);
    INFO(rk_last_error());
    CHECK(contains(rk_last_error(), "rk_sequence_create: store handle 0x"));
    CHECK(contains(rk_last_error(), "is not live (destroyed or never created)"));
    CHECK(out == -5);
    rk_store_stats st{};
    CHECK(rk_store_get_stats(store, &st) == RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_sequence_free(store, id) == RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_sequence_fork(store, id, &out) == RK_ERR_INVALID_ARGUMENT);
    std::int32_t i32 = 0;
    CHECK(rk_sequence_contains(store, id, &i32) == RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_sequence_next_position(store, id, 0, &i32) == RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_sequence_retire_queries(store, id, 0, -1) == RK_ERR_INVALID_ARGUMENT);
    const std::int32_t ql = 0;
    CHECK(rk_plan(store, &id, &ql, 1, nullptr, 0) == RK_ERR_INVALID_ARGUMENT);
    DLTensor t{};
    CHECK(rk_store_get_kv_pool(store, &t) == RK_ERR_INVALID_ARGUMENT);
    rk_store_config got{};
    CHECK(rk_store_get_config(store, &got) == RK_ERR_INVALID_ARGUMENT);
    rk_head_map* m = nullptr;
    CHECK(rk_store_get_head_map(store, &m) == RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_store_pages_per_sequence(store, 4, &out) == RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_attention(store, 0, &t, &t, nullptr, nullptr, nullptr) == RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_append(store, id, 0, &t, &t, nullptr, 0, nullptr) == RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_export_page_table(store, 0, &id, 1, nullptr, nullptr, 0, nullptr, nullptr, &out) ==
          RK_ERR_INVALID_ARGUMENT);
    // Double destroy.
    CHECK(rk_store_destroy(store) == RK_ERR_INVALID_ARGUMENT);
    CHECK(contains(rk_last_error(), "rk_store_destroy: store handle 0x"));
    // A pointer that never was a handle.
    int junk = 0;
    CHECK(rk_store_destroy(reinterpret_cast<rk_store*>(&junk)) == RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_store_get_stats(reinterpret_cast<rk_store*>(&junk), &st) == RK_ERR_INVALID_ARGUMENT);
    REQUIRE(rk_head_map_destroy(map) == RK_OK);
  }
  SECTION("head map") {
    REQUIRE(rk_head_map_destroy(map) == RK_OK);
    rk_head_map_info info{};
    CHECK(rk_head_map_get_info(map, &info) == RK_ERR_INVALID_ARGUMENT);
    INFO(rk_last_error());
    CHECK(contains(rk_last_error(), "head map handle 0x"));
    CHECK(contains(rk_last_error(), "is not live"));
    rk_head_policy p{};
    CHECK(rk_head_map_get_policy(map, 0, 0, &p) == RK_ERR_INVALID_ARGUMENT);
    size_t len = 0;
    CHECK(rk_head_map_to_json(map, 2, nullptr, 0, &len) == RK_ERR_INVALID_ARGUMENT);
    std::int64_t n = 0;
    CHECK(rk_head_map_peak_sequence_pages(map, 4, 10, 1, &n) == RK_ERR_INVALID_ARGUMENT);
    rk_store* other = nullptr;
    CHECK(rk_store_create(&cfg, map, &other) == RK_ERR_INVALID_ARGUMENT);
    CHECK(other == nullptr);
    CHECK(rk_head_map_destroy(map) == RK_ERR_INVALID_ARGUMENT);  // double destroy
    CHECK(contains(rk_last_error(), "rk_head_map_destroy: head map handle 0x"));
    // The store kept its own copy of the map and works on.
    std::int64_t id = 0;
    REQUIRE(rk_sequence_create(store, &id) == RK_OK);
    REQUIRE(rk_store_destroy(store) == RK_OK);
  }
  std::int64_t stores1 = -1, maps1 = -1;
  REQUIRE(rk_live_handles(&stores1, &maps1) == RK_OK);
  CHECK(stores1 == stores0);
  CHECK(maps1 == maps0);
}

TEST_CASE("cpu_attention itself rejects num_threads beyond kMaxAttentionThreads (every binding gets it)") {
  using namespace redknot;
  const ModelShape shape{1, 2, 1, 16, DType::kF32};
  KVHeadStore<float> store(shape, HeadMap::all_global(1, 1), StoreConfig{4, 8});
  const SeqId s = store.create_sequence();
  const std::vector<std::int32_t> pos{0, 1, 2};
  const std::vector<float> kv(3 * 16, 0.5f);
  store.append(s, 0, std::span<const float>(kv), std::span<const float>(kv),
               std::span<const std::int32_t>(pos));
  AttentionPlan plan;
  const std::vector<SeqId> seqs{s};
  const std::vector<std::int32_t> ql{3};
  plan.update(store, 0, std::span<const SeqId>(seqs), std::span<const std::int32_t>(ql),
              std::span<const std::int32_t>(pos));
  const std::vector<float> q(3 * 2 * 16, 0.1f);
  std::vector<float> out(q.size(), -7.f);
  STATIC_REQUIRE(kMaxAttentionThreads == RK_MAX_NUM_THREADS);
  for (const int n : {-1, kMaxAttentionThreads + 1, 40000, 65536, INT32_MAX}) {
    AttentionParams p;
    p.num_threads = n;
    INFO("num_threads=" << n);
    CHECK_THROWS_AS(
        cpu_attention<float>(store, plan, std::span<const float>(q), std::span<float>(out), {}, p),
        InvalidArgument);
    try {
      cpu_attention<float>(store, plan, std::span<const float>(q), std::span<float>(out), {}, p);
    } catch (const InvalidArgument& e) {
      CHECK(contains(e.what(), ("num_threads=" + std::to_string(n)).c_str()));
    }
    CHECK(out[0] == -7.f);
  }
  AttentionParams ok;
  ok.num_threads = 2;
  cpu_attention<float>(store, plan, std::span<const float>(q), std::span<float>(out), {}, ok);
  for (const float x : out) CHECK(std::abs(x - 0.5f) < 1e-6f);
}

TEST_CASE("rk_append_batch equals per-sequence rk_append, and is all-or-nothing") {
  Fixture batched(RK_DTYPE_F32, 4, 64), single(RK_DTYPE_F32, 4, 64);
  const int Hk = 2, D = 16;
  std::mt19937 rng(11);
  std::int64_t ids[3];
  for (auto& id : ids) {
    REQUIRE(rk_sequence_create(batched.store, &id) == RK_OK);
    std::int64_t same = 0;
    REQUIRE(rk_sequence_create(single.store, &same) == RK_OK);
    REQUIRE(same == id);
  }
  // Sequence 1 takes no tokens; the others 3 and 2.
  const std::vector<std::int32_t> offsets = {0, 3, 3, 5}, pos = {0, 1, 2, 0, 1};
  auto k = random_vec<float>(5 * Hk * D, rng), v = random_vec<float>(5 * Hk * D, rng);
  Tensor kt{{5, Hk, D}}, vt{{5, Hk, D}};
  REQUIRE(rk_append_batch(batched.store, 1, ids, 3, offsets.data(), kt.make(k.data(), kF32),
                          vt.make(v.data(), kF32), pos.data(), nullptr) == RK_OK);
  for (int i = 0; i < 3; ++i) {
    const std::int32_t b = offsets[static_cast<std::size_t>(i)], e = offsets[static_cast<std::size_t>(i) + 1];
    if (b == e) continue;
    Tensor ki{{e - b, Hk, D}}, vi{{e - b, Hk, D}};
    REQUIRE(rk_append(single.store, ids[i], 1, ki.make(k.data() + b * Hk * D, kF32),
                      vi.make(v.data() + b * Hk * D, kF32), pos.data() + b, e - b, nullptr) == RK_OK);
  }
  CHECK(batched.stats().pages_in_use == single.stats().pages_in_use);
  for (int i = 0; i < 3; ++i) {
    std::int32_t nb = 0, ns = 0;
    REQUIRE(rk_sequence_next_position(batched.store, ids[i], 1, &nb) == RK_OK);
    REQUIRE(rk_sequence_next_position(single.store, ids[i], 1, &ns) == RK_OK);
    CHECK(nb == ns);
  }

  const rk_store_stats before = batched.stats();
  auto expect = [&](int got, int status, const char* needle) {
    INFO(rk_last_error());
    CHECK(got == status);
    CHECK(contains(rk_last_error(), needle));
    CHECK(batched.stats().pages_in_use == before.pages_in_use);
    std::int32_t n0 = 0;
    REQUIRE(rk_sequence_next_position(batched.store, ids[0], 1, &n0) == RK_OK);
    CHECK(n0 == 3);
  };
  // The last item is stale: the first item (fine on its own) must not land either.
  const std::vector<std::int32_t> stale = {3, 4, 5, 0, 1};
  expect(rk_append_batch(batched.store, 1, ids, 3, offsets.data(), kt.make(k.data(), kF32),
                         vt.make(v.data(), kF32), stale.data(), nullptr),
         RK_ERR_INVALID_ARGUMENT, "must be >= 2");
  const std::vector<std::int32_t> bad_offsets = {0, 3, 2, 5};
  expect(rk_append_batch(batched.store, 1, ids, 3, bad_offsets.data(), kt.make(k.data(), kF32),
                         vt.make(v.data(), kF32), stale.data(), nullptr),
         RK_ERR_INVALID_ARGUMENT, "token_offsets[2]=2");
  expect(rk_append_batch(batched.store, 1, ids, -1, offsets.data(), kt.make(k.data(), kF32),
                         vt.make(v.data(), kF32), stale.data(), nullptr),
         RK_ERR_INVALID_ARGUMENT, "batch_size=-1");
  expect(rk_append_batch(batched.store, 1, ids, 3, nullptr, kt.make(k.data(), kF32), vt.make(v.data(), kF32),
                         stale.data(), nullptr),
         RK_ERR_INVALID_ARGUMENT, "token_offsets");
  const std::int64_t dead[3] = {ids[0], 999, ids[2]};
  expect(rk_append_batch(batched.store, 1, dead, 3, offsets.data(), kt.make(k.data(), kF32),
                         vt.make(v.data(), kF32), stale.data(), nullptr),
         RK_ERR_NOT_FOUND, "999");
  Tensor short_k{{4, Hk, D}};
  expect(rk_append_batch(batched.store, 1, ids, 3, offsets.data(), short_k.make(k.data(), kF32),
                         vt.make(v.data(), kF32), stale.data(), nullptr),
         RK_ERR_INVALID_ARGUMENT, "append_batch: k");
}
