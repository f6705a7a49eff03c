// Bad input: every public entry point rejects it with a message naming the argument and the value, and the
// store is exactly as before (same tables, refcounts, positions and stats: nothing leaked or double-freed).
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include "harness.hpp"

using namespace rktest;
using Catch::Matchers::ContainsSubstring;

namespace {

using Store = KVHeadStore<BFloat16>;

struct Fixture {
  ModelShape shape{2, 4, 2, 16, DType::kBF16};
  HeadMap map = HeadMap::with_global_ratio(2, 2, 0.5, 8, 2);
  Store store{shape, map, StoreConfig{4, 40}};
  std::mt19937 rng{11};
  SeqId a = store.create_sequence();
  SeqId b = store.create_sequence();

  Fixture() {
    for (int l = 0; l < 2; ++l) {
      append(a, l, 0, 10);
      append(b, l, 0, 6);
    }
  }
  void append(SeqId s, int l, std::int32_t p0, std::int32_t n) {
    const auto k = random_tensor<BFloat16>(rng, static_cast<std::size_t>(n) * 2 * 16);
    const auto v = random_tensor<BFloat16>(rng, static_cast<std::size_t>(n) * 2 * 16);
    const auto pos = iota_positions(p0, n);
    store.append(s, l, std::span<const BFloat16>(k), std::span<const BFloat16>(v),
                 std::span<const std::int32_t>(pos));
  }
};

// Runs f, expects Exc whose message contains `needle`, and checks the store is unchanged.
template <class Exc, class F>
void expect_rejected(Fixture& fx, F&& f, const std::string& needle) {
  const Snapshot<Store> before(fx.store);
  REQUIRE_THROWS_AS(f(), Exc);
  REQUIRE_THROWS_WITH(f(), ContainsSubstring(needle));
  REQUIRE(Snapshot<Store>(fx.store) == before);
  check_accounting(fx.store);
}

}  // namespace

TEST_CASE("append rejects bad shapes, ids, layers and positions", "[bad_input]") {
  Fixture fx;
  const std::vector<BFloat16> k(3 * 2 * 16), v(3 * 2 * 16), k_short(3 * 2 * 16 - 1);
  const std::vector<std::int32_t> pos{10, 11, 12}, back{9, 10, 11}, dup{10, 10, 11}, desc{10, 12, 11};
  const std::span<const BFloat16> K(k), V(v), KS(k_short);
  const std::span<const std::int32_t> P(pos);

  expect_rejected<InvalidArgument>(
      fx, [&] { fx.store.append(fx.a, 0, KS, V, P); }, "k has 95 elements");
  expect_rejected<InvalidArgument>(
      fx, [&] { fx.store.append(fx.a, 0, K, KS, P); }, "v has 95 elements");
  expect_rejected<InvalidArgument>(
      fx, [&] { fx.store.append(fx.a, 0, K, V, {}); }, "positions is empty");
  expect_rejected<NotFound>(
      fx, [&] { fx.store.append(12345, 0, K, V, P); }, "sequence id=12345");
  expect_rejected<InvalidArgument>(
      fx, [&] { fx.store.append(fx.a, 2, K, V, P); }, "layer=2 out of range [0, 2)");
  expect_rejected<InvalidArgument>(
      fx, [&] { fx.store.append(fx.a, -1, K, V, P); }, "layer=-1");
  expect_rejected<InvalidArgument>(
      fx, [&] { fx.store.append(fx.a, 0, K, V, std::span<const std::int32_t>(back)); },
      "positions[0]=9 must be >= 10");
  expect_rejected<InvalidArgument>(
      fx, [&] { fx.store.append(fx.a, 0, K, V, std::span<const std::int32_t>(dup)); }, "positions[1]=10");
  expect_rejected<InvalidArgument>(
      fx, [&] { fx.store.append(fx.a, 0, K, V, std::span<const std::int32_t>(desc)); }, "positions[2]=11");
}

TEST_CASE("freed sequences are unknown to every entry point", "[bad_input]") {
  Fixture fx;
  const SeqId gone = fx.store.create_sequence();
  fx.store.free_sequence(gone);
  const std::vector<BFloat16> k(2 * 16), v(2 * 16);
  const std::vector<std::int32_t> pos{0};
  expect_rejected<NotFound>(
      fx,
      [&] {
        fx.store.append(gone, 0, std::span<const BFloat16>(k), std::span<const BFloat16>(v),
                        std::span<const std::int32_t>(pos));
      },
      "is not live");
  expect_rejected<NotFound>(
      fx, [&] { fx.store.free_sequence(gone); }, "free_sequence: sequence id=");
  expect_rejected<NotFound>(
      fx, [&] { fx.store.fork(gone); }, "fork: sequence id=");
  expect_rejected<NotFound>(
      fx, [&] { fx.store.retire_queries(gone, 0); }, "retire_queries");
  expect_rejected<NotFound>(
      fx, [&] { (void)fx.store.sequence_stats(gone); }, "sequence_stats");
  expect_rejected<NotFound>(
      fx, [&] { (void)fx.store.table(gone, 0, 0); }, "table");
  expect_rejected<InvalidArgument>(
      fx, [&] { (void)fx.store.table(fx.a, 0, 2); }, "kv_head=2 out of range [0, 2)");
}

TEST_CASE("pool exhaustion mid-append leaves the store intact and the caller can recover", "[bad_input]") {
  Fixture fx;  // 40 pages of 4 slots; a and b use 2 layers x 2 heads x (3 or 2) pages = 20
  REQUIRE(fx.store.pool().used_pages() == 20);
  // 50 more tokens need 2 slots of the tail page + 12 pages for each of the 2 heads of layer 0: 24 > 20 free.
  expect_rejected<PoolExhausted>(
      fx, [&] { fx.append(fx.a, 0, 10, 50); }, "needs 24 pages, pool has 20 free");
  // Freeing a sequence makes room; the same append now succeeds.
  fx.store.free_sequence(fx.b);
  check_accounting(fx.store);
  fx.append(fx.a, 0, 10, 50);
  check_accounting(fx.store);
  // Exhaustion on a fork's copy-on-write page is detected before anything is written.
  Fixture fy;
  const SeqId c = fy.store.fork(fy.a);  // shares a's 6+6 pages including partial tails
  try {
    while (fy.store.pool().free_pages() > 0) fy.append(fy.b, 1, fy.store.next_position(fy.b, 1), 1);
  } catch (const PoolExhausted&) {
  }
  REQUIRE(fy.store.pool().free_pages() <= 1);
  // One token into c's shared partial tails needs a private copy of the tail page of each head.
  expect_rejected<PoolExhausted>(
      fy, [&] { fy.append(c, 0, 10, 1); }, "needs 2 pages, pool has");
}

TEST_CASE("plan and attention reject bad batches and tensors", "[bad_input]") {
  Fixture fx;
  AttentionPlan plan;
  const std::vector<SeqId> seqs{fx.a, fx.b}, twice{fx.a, fx.a}, unknown{fx.a, 999};
  const std::vector<std::int32_t> ql{1, 1}, qp{9, 5}, qp_future{10, 5}, ql_bad{1, -1}, qp_short{9};
  auto update = [&](const std::vector<SeqId>& s, const std::vector<std::int32_t>& l,
                    const std::vector<std::int32_t>& p, int layer = 0) {
    plan.update(fx.store, layer, std::span<const SeqId>(s), std::span<const std::int32_t>(l),
                std::span<const std::int32_t>(p));
  };
  expect_rejected<InvalidArgument>(
      fx, [&] { update(twice, ql, qp); }, "appears twice");
  expect_rejected<NotFound>(
      fx, [&] { update(unknown, ql, qp); }, "sequence id=999");
  expect_rejected<InvalidArgument>(
      fx, [&] { update(seqs, ql, qp_future); }, "query position 10");
  expect_rejected<InvalidArgument>(
      fx, [&] { update(seqs, ql_bad, qp); }, "q_lens[1]=-1");
  expect_rejected<InvalidArgument>(
      fx, [&] { update(seqs, ql, qp_short); }, "q_positions has 1 entries");
  expect_rejected<InvalidArgument>(
      fx, [&] { update(seqs, ql, qp, 5); }, "layer=5");
  // After a decode append, earlier queries were declared done: they may no longer attend.
  fx.append(fx.a, 0, 10, 1);
  expect_rejected<InvalidArgument>(
      fx, [&] { update(seqs, ql, qp); }, "query position 9 of sequence");

  const std::vector<std::int32_t> qp_ok{10, 5};
  update(seqs, ql, qp_ok);
  std::vector<float> q(2 * 4 * 16), out(q.size()), lse(8), q_bad(q.size() - 1), lse_bad(7);
  expect_rejected<InvalidArgument>(
      fx, [&] { cpu_attention<float>(fx.store, plan, std::span<const float>(q_bad), std::span<float>(out)); },
      "q has 127 elements");
  expect_rejected<InvalidArgument>(
      fx, [&] { cpu_attention<float>(fx.store, plan, std::span<const float>(q), std::span<float>(q_bad)); },
      "out has 127 elements");
  expect_rejected<InvalidArgument>(
      fx,
      [&] {
        cpu_attention<float>(fx.store, plan, std::span<const float>(q), std::span<float>(out),
                             std::span<float>(lse_bad));
      },
      "lse has 7 elements");
  expect_rejected<InvalidArgument>(
      fx,
      [&] {
        cpu_attention<float>(fx.store, plan, std::span<const float>(q), std::span<float>(out), {},
                             AttentionParams{-1.f});
      },
      "scale=-1");
  cpu_attention<float>(fx.store, plan, std::span<const float>(q), std::span<float>(out),
                       std::span<float>(lse));
}

TEST_CASE("store construction rejects inconsistent shapes, maps and configs", "[bad_input]") {
  const HeadMap map = HeadMap::all_global(2, 2);
  auto make = [&](ModelShape s, HeadMap m, StoreConfig c) { Store st(s, std::move(m), c); };
  REQUIRE_THROWS_WITH(make({2, 4, 2, 16, DType::kF16}, map, {4, 8}),
                      ContainsSubstring("ModelShape.dtype=f16 does not match the store's element type bf16"));
  REQUIRE_THROWS_WITH(make({2, 5, 2, 16, DType::kBF16}, map, {4, 8}),
                      ContainsSubstring("num_q_heads=5 must be a positive multiple of num_kv_heads=2"));
  REQUIRE_THROWS_WITH(make({2, 4, 2, 12, DType::kBF16}, map, {4, 8}), ContainsSubstring("head_dim=12"));
  REQUIRE_THROWS_WITH(make({0, 4, 2, 16, DType::kBF16}, map, {4, 8}), ContainsSubstring("num_layers=0"));
  REQUIRE_THROWS_WITH(make({3, 4, 2, 16, DType::kBF16}, map, {4, 8}),
                      ContainsSubstring("head map num_layers=2 does not match the model's 3"));
  REQUIRE_THROWS_WITH(make({2, 4, 2, 16, DType::kBF16}, map, {0, 8}), ContainsSubstring("page_size=0"));
  REQUIRE_THROWS_WITH(make({2, 4, 2, 16, DType::kBF16}, map, {4, 0}), ContainsSubstring("num_pages=0"));
}
