// Chunk reuse through the C ABI: key, register, lookup, splice and relocate (which must attend alike: both
// are checked against the truth in tests/test_splice_attention.cpp), drop, stats, read_rows / overwrite,
// recompute selection, and the errors that leave the store unchanged.
#include <catch2/catch_test_macros.hpp>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "redknot/c_api.h"

namespace {

constexpr int kL = 2, kHk = 2, kHq = 4, kD = 16;
constexpr DLDataType kF32{kDLFloat, 32, 1};

DLTensor tensor(float* data, std::vector<std::int64_t>& shape) {
  DLTensor t{};
  t.data = data;
  t.device = DLDevice{kDLCPU, 0};
  t.ndim = static_cast<int32_t>(shape.size());
  t.dtype = kF32;
  t.shape = shape.data();
  return t;
}

struct Store {
  rk_store* s = nullptr;
  explicit Store(bool with_rope) {
    rk_head_map* map = nullptr;
    REQUIRE(rk_head_map_uniform(kL, kHk, RK_HEAD_GLOBAL, -1, 0, &map) == RK_OK);
    rk_store_config cfg{};
    REQUIRE(rk_store_config_init(&cfg) == RK_OK);
    CHECK(cfg.rope.scaling == RK_ROPE_NONE);
    cfg.num_layers = kL;
    cfg.num_q_heads = kHq;
    cfg.num_kv_heads = kHk;
    cfg.head_dim = kD;
    cfg.dtype = RK_DTYPE_F32;
    cfg.page_size = 4;
    cfg.num_pages = 256;
    if (with_rope) {
      cfg.rope.scaling = RK_ROPE_LLAMA3;
      cfg.rope.factor = 8.0;
      cfg.rope.theta = 500000.0;
    }
    REQUIRE(rk_store_create(&cfg, map, &s) == RK_OK);
    REQUIRE(rk_head_map_destroy(map) == RK_OK);
  }
  ~Store() { rk_store_destroy(s); }
  void append(int64_t seq, int32_t p0, int32_t n, std::mt19937& rng) {
    std::normal_distribution<float> nd;
    for (int l = 0; l < kL; ++l) {
      std::vector<float> k(static_cast<std::size_t>(n) * kHk * kD), v(k.size());
      for (auto& x : k) x = nd(rng);
      for (auto& x : v) x = nd(rng);
      std::vector<int32_t> pos(static_cast<std::size_t>(n));
      for (int32_t i = 0; i < n; ++i) pos[static_cast<std::size_t>(i)] = p0 + i;
      std::vector<std::int64_t> shape{n, kHk, kD};
      DLTensor kt = tensor(k.data(), shape), vt = tensor(v.data(), shape);
      REQUIRE(rk_append(s, seq, l, &kt, &vt, pos.data(), n, nullptr) == RK_OK);
    }
  }
  // Attention of one query at q_pos per sequence, layer l.
  std::vector<float> attend(const std::vector<int64_t>& seqs, int32_t q_pos, int l,
                            const std::vector<float>& q) {
    std::vector<int32_t> lens(seqs.size(), 1), qp(seqs.size(), q_pos);
    REQUIRE(rk_plan(s, seqs.data(), lens.data(), static_cast<int32_t>(seqs.size()), qp.data(),
                    static_cast<int64_t>(seqs.size())) == RK_OK);
    std::vector<float> qq, out(seqs.size() * kHq * kD);
    for (std::size_t i = 0; i < seqs.size(); ++i) qq.insert(qq.end(), q.begin(), q.end());
    std::vector<std::int64_t> shape{static_cast<std::int64_t>(seqs.size()), kHq, kD};
    DLTensor qt = tensor(qq.data(), shape), ot = tensor(out.data(), shape);
    REQUIRE(rk_attention(s, l, &qt, &ot, nullptr, nullptr, nullptr) == RK_OK);
    return out;
  }
};

}  // namespace

TEST_CASE("chunks through the C ABI: splice equals relocate, errors change nothing", "[c_api][chunks]") {
  Store st(true);
  std::mt19937 rng(11);
  int64_t c = 0;
  REQUIRE(rk_sequence_create(st.s, &c) == RK_OK);
  st.append(c, 0, 13, rng);
  const int32_t tokens[13] = {5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17};
  rk_chunk_key key{};
  REQUIRE(rk_chunk_key_make(st.s, "model", tokens, 13, &key) == RK_OK);
  int32_t n = 0;
  REQUIRE(rk_chunk_lookup(st.s, key, &n) == RK_OK);
  CHECK(n == -1);
  REQUIRE(rk_chunk_register(st.s, key, c) == RK_OK);
  REQUIRE(rk_chunk_lookup(st.s, key, &n) == RK_OK);
  CHECK(n == 13);
  int32_t live = 1;
  REQUIRE(rk_sequence_contains(st.s, c, &live) == RK_OK);
  CHECK(live == 0);

  int64_t a = 0, b = 0;
  REQUIRE(rk_sequence_create(st.s, &a) == RK_OK);
  REQUIRE(rk_sequence_create(st.s, &b) == RK_OK);
  std::mt19937 same1(3), same2(3);
  st.append(a, 0, 37, same1);
  st.append(b, 0, 37, same2);
  rk_store_stats before{};
  REQUIRE(rk_store_get_stats(st.s, &before) == RK_OK);
  REQUIRE(rk_chunk_splice(st.s, a, key, 37, -1) == RK_OK);
  rk_store_stats after{};
  REQUIRE(rk_store_get_stats(st.s, &after) == RK_OK);
  CHECK(after.pages_in_use == before.pages_in_use);  // zero-copy
  REQUIRE(rk_chunk_relocate(st.s, b, key, 37, -1) == RK_OK);
  std::mt19937 q1(9), q2(9);  // the question token: the same K/V in both
  st.append(a, 50, 1, q1);
  st.append(b, 50, 1, q2);
  std::vector<float> q(kHq * kD);
  std::normal_distribution<float> nd;
  for (auto& x : q) x = nd(rng);
  for (int l = 0; l < kL; ++l) {
    const auto out = st.attend({a, b}, 50, l, q);
    double worst = 0;
    for (int i = 0; i < kHq * kD; ++i) {
      const double e = std::abs(static_cast<double>(out[static_cast<std::size_t>(i)]) -
                                out[static_cast<std::size_t>(kHq * kD + i)]);
      worst = std::isnan(e) ? e : std::max(worst, e);
    }
    CHECK(worst <= 1e-4);  // fails on NaN
  }

  // read_rows / overwrite: a's rows change, the chunk (seen through b's copy) does not matter here.
  const int32_t pos[2] = {40, 45};
  std::vector<float> k(2 * kHk * kD), v(k.size()), k2(k.size()), v2(k.size());
  REQUIRE(rk_read_rows(st.s, a, 0, pos, 2, k.data(), v.data()) == RK_OK);
  for (auto& x : k) x += 1.f;
  std::vector<std::int64_t> shape{2, kHk, kD};
  DLTensor kt = tensor(k.data(), shape), vt = tensor(v.data(), shape);
  REQUIRE(rk_overwrite(st.s, a, 0, &kt, &vt, pos, 2) == RK_OK);
  REQUIRE(rk_read_rows(st.s, a, 0, pos, 2, k2.data(), v2.data()) == RK_OK);
  for (std::size_t i = 0; i < k.size(); ++i) CHECK(std::abs(k2[i] - k[i]) < 1e-4);

  // Errors: a status and a message naming the argument, nothing changed.
  rk_chunk_stats cs{};
  REQUIRE(rk_chunk_get_stats(st.s, &cs) == RK_OK);
  CHECK(cs.chunks == 1);
  CHECK(cs.chunks_in_use == 1);
  CHECK(rk_chunk_splice(st.s, a, key, 3, -1) == RK_ERR_INVALID_ARGUMENT);
  CHECK(std::strstr(rk_last_error(), "at=3") != nullptr);
  CHECK(rk_chunk_splice(st.s, a, rk_chunk_key{1, 2}, 100, -1) == RK_ERR_NOT_FOUND);
  CHECK(rk_chunk_splice(st.s, 999, key, 100, -1) == RK_ERR_NOT_FOUND);
  int32_t dropped = -1;
  CHECK(rk_chunk_drop(st.s, key, &dropped) == RK_ERR_INVALID_ARGUMENT);  // in use by a
  CHECK(rk_chunk_register(st.s, key, b) == RK_ERR_INVALID_ARGUMENT);     // key taken
  CHECK(rk_overwrite(st.s, a, 0, &kt, &vt, nullptr, 2) == RK_ERR_INVALID_ARGUMENT);
  CHECK(rk_read_rows(st.s, a, 0, pos, 2, nullptr, v.data()) == RK_ERR_INVALID_ARGUMENT);
  rk_chunk_stats cs2{};
  REQUIRE(rk_chunk_get_stats(st.s, &cs2) == RK_OK);
  CHECK(cs2.chunks == 1);
  CHECK(cs2.splices == cs.splices);
  REQUIRE(rk_sequence_free(st.s, a) == RK_OK);
  REQUIRE(rk_chunk_drop(st.s, key, &dropped) == RK_OK);
  CHECK(dropped == 1);
}

TEST_CASE("a store without a RoPE spec splices only at the computed positions", "[c_api][chunks]") {
  Store st(false);
  std::mt19937 rng(5);
  int64_t c = 0, a = 0;
  REQUIRE(rk_sequence_create(st.s, &c) == RK_OK);
  st.append(c, 0, 5, rng);
  const rk_chunk_key key{7, 7};
  REQUIRE(rk_chunk_register(st.s, key, c) == RK_OK);
  REQUIRE(rk_sequence_create(st.s, &a) == RK_OK);
  CHECK(rk_chunk_splice(st.s, a, key, 4, -1) == RK_ERR_INVALID_ARGUMENT);
  CHECK(std::strstr(rk_last_error(), "RoPE") != nullptr);
  CHECK(rk_chunk_splice(st.s, a, key, 0, -1) == RK_OK);
}

TEST_CASE("recompute selection through the C ABI", "[c_api][chunks]") {
  const float dev[] = {0, 9, 5, 0, 1, 1, 7, 0, 0, 20};  // [5 tokens][2 heads]
  const int32_t local[] = {0, 1};
  int32_t out[5], count = -1;
  REQUIRE(rk_select_recompute("global_deviation_topk", 0.4, 1, 5, dev, 2, local, nullptr, out, &count) ==
          RK_OK);
  REQUIRE(count == 3);
  CHECK((out[0] == 0 && out[1] == 1 && out[2] == 3));
  REQUIRE(rk_select_recompute("deviation_topk", 0.4, 0, 5, dev, 2, nullptr, nullptr, out, &count) == RK_OK);
  REQUIRE(count == 2);
  CHECK((out[0] == 0 && out[1] == 4));
  CHECK(rk_select_recompute("cacheblend", 0.4, 0, 5, dev, 2, nullptr, nullptr, out, &count) ==
        RK_ERR_INVALID_ARGUMENT);
  CHECK(std::strstr(rk_last_error(), "cacheblend") != nullptr);
  CHECK(rk_select_recompute("deviation_topk", 1.5, 0, 5, dev, 2, nullptr, nullptr, out, &count) ==
        RK_ERR_INVALID_ARGUMENT);
  CHECK(rk_select_recompute("deviation_topk", 0.4, 0, 5, nullptr, 2, nullptr, nullptr, out, &count) ==
        RK_ERR_INVALID_ARGUMENT);
  CHECK(rk_select_recompute(nullptr, 0.4, 0, 5, dev, 2, nullptr, nullptr, out, &count) ==
        RK_ERR_INVALID_ARGUMENT);
}
