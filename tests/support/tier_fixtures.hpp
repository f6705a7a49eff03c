// What the tier tests share (test_tiers, test_redis_tier): the small model shape their stores use, a store of
// it with RoPE, the fingerprint their slices carry, and bit-exact attention of one sequence in every layer
// (what "came back bit for bit" is checked with).
#pragma once

#include <cstdint>
#include <cstring>
#include <random>
#include <span>
#include <utility>
#include <vector>

#include "../harness.hpp"
#include "redknot/attention_plan.hpp"
#include "redknot/cpu_attention.hpp"
#include "redknot/kv_head_store.hpp"
#include "redknot/kv_slice.hpp"

namespace rktest::tiers {

constexpr int kLayers = 2, kKvHeads = 4, kQHeads = 8, kD = 16, kPage = 4;
inline const std::uint64_t kModel = redknot::model_fingerprint("tier-model");

template <class T>
redknot::KVHeadStore<T> make_tier_store(redknot::HeadMap map, std::int32_t pages) {
  const redknot::ModelShape shape{kLayers, kQHeads, kKvHeads, kD, redknot::dtype_of<T>()};
  redknot::RopeConfig rc;
  rc.head_dim = kD;
  return redknot::KVHeadStore<T>(shape, std::move(map), redknot::StoreConfig{kPage, pages}, rc);
}

// The attention output of queries at q0 .. q0 + nq - 1 (within [query_floor, next_position)) of sequence s in
// every layer, queries drawn from `seed`.
template <class T>
std::vector<float> attend(const redknot::KVHeadStore<T>& store, redknot::SeqId s, std::int32_t q0,
                          std::int32_t nq, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<float> all;
  const std::int32_t q_lens[1] = {nq};
  const auto qpos = iota_positions(q0, nq);
  for (int l = 0; l < kLayers; ++l) {
    redknot::AttentionPlan plan;
    plan.update(store, l, std::span<const redknot::SeqId>(&s, 1), std::span<const std::int32_t>(q_lens),
                std::span<const std::int32_t>(qpos));
    const auto q = random_tensor<float>(rng, static_cast<std::size_t>(nq) * kQHeads * kD);
    std::vector<float> out(q.size());
    redknot::cpu_attention<float>(store, plan, std::span<const float>(q), std::span<float>(out));
    all.insert(all.end(), out.begin(), out.end());
  }
  return all;
}

inline bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace rktest::tiers
