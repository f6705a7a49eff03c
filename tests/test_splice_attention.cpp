// Attention over spliced chunks against the truth: a chunk computed alone (keys rotated for 0..n-1) and
// spliced at `at` must attend exactly like keys rotated for their true positions at..at+n-1 — the CPU kernel
// counter-rotates the queries per run of entries. Every pairing, partial rotary, llama3 and yarn scaling,
// offsets 0, small and beyond 100K, f32 and bf16 storage; and the same with the classic path (relocate: copy
// the chunk, rotate its keys). A kernel that ignored the rotation offset fails these checks (shown below).
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>

#include "harness.hpp"

using namespace rktest;

namespace {

constexpr int kLayers = 2, kHk = 2, kGqa = 2, kD = 64;

HeadMap splice_map() {
  HeadMap m = HeadMap::all_global(kLayers, kHk);
  m.set(0, 1, HeadPolicy{HeadClass::kLocal, 24, 4});
  m.set(1, 0, HeadPolicy{HeadClass::kLocal, 9, 0});
  return m;
}

// Largest |a - b|; NaN anywhere makes it NaN, so `!(err <= tol)` fails on it.
double max_abs_err(std::span<const double> ref, const auto& got, auto&& to_double) {
  double worst = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double e = std::abs(to_double(got[i]) - ref[i]);
    if (std::isnan(e)) return e;
    worst = std::max(worst, e);
  }
  return worst;
}

// Raw (un-rotated) key rows [n, Hk, D] rotated for positions p0 + i, rounded to T.
template <StorageType T>
std::vector<T> rotated_keys(const RopeConfig& rc, const std::vector<double>& inv,
                            const std::vector<float>& raw, std::int32_t n, std::int64_t p0) {
  std::vector<T> out(raw.size());
  std::vector<float> row(kD);
  for (std::int32_t i = 0; i < n; ++i)
    for (int h = 0; h < kHk; ++h) {
      const std::size_t off = (static_cast<std::size_t>(i) * kHk + h) * kD;
      std::copy(raw.begin() + static_cast<std::ptrdiff_t>(off),
                raw.begin() + static_cast<std::ptrdiff_t>(off + kD), row.begin());
      rope_apply(rc, inv, row.data(), p0 + i);
      for (int d = 0; d < kD; ++d)
        out[off + static_cast<std::size_t>(d)] = from_float<T>(row[static_cast<std::size_t>(d)]);
    }
  return out;
}

enum class Path { kSplice, kRelocate };

template <StorageType T>
void splice_case(const RopeConfig& rc, std::int32_t at, Path path) {
  const ModelShape shape{kLayers, kHk * kGqa, kHk, kD, dtype_of<T>()};
  KVHeadStore<T> store(shape, splice_map(), StoreConfig{16, 4096}, rc);
  DenseOracle truth(shape, splice_map());    // keys rotated for where they sit
  DenseOracle ignored(shape, splice_map());  // what a kernel ignoring rope_pos0 would compute
  const auto inv = rope_inv_freq(rc);
  std::mt19937 rng(static_cast<unsigned>(at) * 7u + static_cast<unsigned>(rc.pairing) * 3u + 1u);
  const std::size_t row = static_cast<std::size_t>(kHk) * kD;
  const auto randf = [&](std::size_t n) { return random_tensor<float>(rng, n); };

  // The chunk, computed alone at 0..n-1.
  const std::int32_t n = 40;
  std::vector<std::vector<float>> raw_k, chunk_v;
  const SeqId cs = store.create_sequence();
  for (int l = 0; l < kLayers; ++l) {
    raw_k.push_back(randf(n * row));
    const auto v = random_tensor<T>(rng, n * row);
    chunk_v.emplace_back(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) chunk_v.back()[i] = to_float(v[i]);
    const auto k = rotated_keys<T>(rc, inv, raw_k.back(), n, 0);
    const auto pos = iota_positions(0, n);
    store.append(cs, l, std::span<const T>(k), std::span<const T>(v), std::span<const std::int32_t>(pos));
  }
  const std::vector<std::int32_t> tokens(static_cast<std::size_t>(n), 42);
  const ChunkKey key = store.chunk_key("m", tokens);
  store.register_chunk(key, cs);

  // A request: its own prefix, the chunk at `at`, then a question, attended as one prefill chunk per layer.
  const SeqId s = store.create_sequence();
  const std::int32_t own = std::min<std::int32_t>(at, 6);
  const std::int32_t q_first = at + n, nq = 5;
  std::vector<AttentionPlan> plans(kLayers);
  for (int l = 0; l < kLayers; ++l) {
    if (own > 0) {
      const auto raw = randf(static_cast<std::size_t>(own) * row);
      const auto k = rotated_keys<T>(rc, inv, raw, own, 0);
      const auto v = random_tensor<T>(rng, static_cast<std::size_t>(own) * row);
      const auto pos = iota_positions(0, own);
      store.append(s, l, std::span<const T>(k), std::span<const T>(v), std::span<const std::int32_t>(pos));
      for (DenseOracle* o : {&truth, &ignored})
        o->append<T>(s, l, std::span<const T>(k), std::span<const T>(v), pos);
    }
    std::vector<T> v(chunk_v[static_cast<std::size_t>(l)].size());
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = from_float<T>(chunk_v[static_cast<std::size_t>(l)][i]);
    const auto pos = iota_positions(at, n);
    const auto k_true = rotated_keys<T>(rc, inv, raw_k[static_cast<std::size_t>(l)], n, at);
    const auto k_stored = rotated_keys<T>(rc, inv, raw_k[static_cast<std::size_t>(l)], n, 0);
    truth.append<T>(s, l, std::span<const T>(k_true), std::span<const T>(v), pos);
    ignored.append<T>(s, l, std::span<const T>(k_stored), std::span<const T>(v), pos);
  }
  if (path == Path::kSplice)
    store.splice(s, key, at);
  else
    store.relocate(s, key, at);
  check_accounting(store);

  const auto qpos = iota_positions(q_first, nq);
  const std::int32_t q_lens[1] = {nq};
  for (int l = 0; l < kLayers; ++l) {
    const auto raw = randf(static_cast<std::size_t>(nq) * row);
    const auto k = rotated_keys<T>(rc, inv, raw, nq, q_first);
    const auto v = random_tensor<T>(rng, static_cast<std::size_t>(nq) * row);
    store.append(s, l, std::span<const T>(k), std::span<const T>(v), std::span<const std::int32_t>(qpos));
    for (DenseOracle* o : {&truth, &ignored})
      o->append<T>(s, l, std::span<const T>(k), std::span<const T>(v), qpos);
    AttentionPlan& plan = plans[static_cast<std::size_t>(l)];
    plan.update(store, l, std::span<const SeqId>(&s, 1), std::span<const std::int32_t>(q_lens, 1),
                std::span<const std::int32_t>(qpos));
    const auto q = random_tensor<float>(rng, static_cast<std::size_t>(nq) * shape.num_q_heads * kD);
    std::vector<float> out(q.size()), lse(static_cast<std::size_t>(nq) * shape.num_q_heads);
    cpu_attention<float>(store, plan, std::span<const float>(q), std::span<float>(out),
                         std::span<float>(lse));
    std::vector<double> ref_out, ref_lse, bad_out, bad_lse;
    truth.attention<float>(s, l, std::span<const float>(q), qpos, ref_out, ref_lse);
    ignored.attention<float>(s, l, std::span<const float>(q), qpos, bad_out, bad_lse);
    const auto id = [](float x) { return static_cast<double>(x); };
    const double tol = std::is_same_v<T, float> ? 1e-4 : 3e-2;
    const double err_out = max_abs_err(ref_out, out, id), err_lse = max_abs_err(ref_lse, lse, id);
    INFO("layer " << l << " at " << at << " out err " << err_out << " lse err " << err_lse);
    CHECK(err_out <= tol);
    CHECK(err_lse <= 4 * tol);
    // The check can fail: ignoring the rotation offset is far off whenever the chunk moved.
    if (at != 0) CHECK(max_abs_err(bad_out, out, id) > 10 * tol);
  }
  store.free_sequence(s);
  if (path == Path::kSplice) CHECK(store.drop_chunk(key));
  check_accounting(store);
}

RopeConfig config(RopePairing pairing, int rotary_dim, RopeScaling scaling) {
  RopeConfig rc;
  rc.head_dim = kD;
  rc.rotary_dim = rotary_dim;
  rc.pairing = pairing;
  rc.scaling = scaling;
  rc.theta = 500000.0;
  if (scaling != RopeScaling::kDefault) rc.factor = 8.0;
  return rc;
}

}  // namespace

TEST_CASE("spliced chunks attend like keys at their true positions (CPU, counter-rotated queries)",
          "[splice]") {
  const auto pairing = GENERATE(RopePairing::kRotateHalf, RopePairing::kInterleaved);
  const int rotary = GENERATE(0, 32);
  const auto scaling = GENERATE(RopeScaling::kDefault, RopeScaling::kLlama3, RopeScaling::kYarn);
  const std::int32_t at = GENERATE(0, 5, 150001);
  INFO("pairing " << static_cast<int>(pairing) << " rotary " << rotary << " scaling "
                  << static_cast<int>(scaling));
  splice_case<float>(config(pairing, rotary, scaling), at, Path::kSplice);
  splice_case<BFloat16>(config(pairing, rotary, scaling), at, Path::kSplice);
}

TEST_CASE("relocated chunks (copied, keys rotated) attend like keys at their true positions", "[splice]") {
  const auto pairing = GENERATE(RopePairing::kRotateHalf, RopePairing::kInterleaved);
  const std::int32_t at = GENERATE(0, 7, 120000);
  splice_case<float>(config(pairing, 32, RopeScaling::kLlama3), at, Path::kRelocate);
  splice_case<Half>(config(pairing, 0, RopeScaling::kDefault), at, Path::kRelocate);
}

TEST_CASE("splicing away from the computed positions needs the store's RoPE spec", "[splice]") {
  const ModelShape shape{kLayers, kHk * kGqa, kHk, kD, DType::kF32};
  KVHeadStore<float> store(shape, splice_map(), StoreConfig{16, 256});
  const SeqId cs = store.create_sequence();
  std::mt19937 rng(3);
  for (int l = 0; l < kLayers; ++l) {
    const auto k = random_tensor<float>(rng, 8 * kHk * kD), v = random_tensor<float>(rng, 8 * kHk * kD);
    const auto pos = iota_positions(0, 8);
    store.append(cs, l, std::span<const float>(k), std::span<const float>(v),
                 std::span<const std::int32_t>(pos));
  }
  const ChunkKey key{1, 1};
  store.register_chunk(key, cs);
  const SeqId s = store.create_sequence();
  const Snapshot<KVHeadStore<float>> before(store);
  CHECK_THROWS_AS(store.splice(s, key, 3), InvalidArgument);
  CHECK_THROWS_AS(store.relocate(s, key, 3), InvalidArgument);
  CHECK(before == Snapshot<KVHeadStore<float>>(store));
  store.splice(s, key, 0);  // at its computed positions: nothing to account for
  CHECK_FALSE(store.has_relocated_keys(s));
  RopeConfig bad;
  bad.head_dim = 32;
  CHECK_THROWS_AS(KVHeadStore<float>(shape, splice_map(), StoreConfig{16, 256}, bad), InvalidArgument);
}
