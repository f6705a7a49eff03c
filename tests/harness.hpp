// Shared Catch2 test helpers: random tensors, the invariants of support/checks.hpp as assertions, and
// snapshots for "bad input leaves the store unchanged" checks.
#pragma once

#include <catch2/catch_test_macros.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "redknot/redknot.hpp"
#include "support/checks.hpp"
#include "support/oracle.hpp"

namespace rktest {

using namespace redknot;

template <class T>
std::vector<T> random_tensor(std::mt19937& rng, std::size_t n, float stddev = 1.f) {
  std::normal_distribution<float> nd(0.f, stddev);
  std::vector<T> v(n);
  for (auto& x : v) x = from_float<T>(nd(rng));
  return v;
}

inline std::vector<std::int32_t> iota_positions(std::int32_t p0, std::int32_t n) {
  std::vector<std::int32_t> p(static_cast<std::size_t>(n));
  for (std::int32_t i = 0; i < n; ++i) p[static_cast<std::size_t>(i)] = p0 + i;
  return p;
}

// Appends positions [p0, p0 + n) to every layer of sequence s, one call per layer (so no head drops a key of
// them), with K/V drawn from `seed`: the same seed gives the same rows whatever the store's page size.
template <class Store>
void append_seeded(Store& store, SeqId s, std::int32_t p0, std::int32_t n, unsigned seed) {
  using T = typename Store::value_type;
  std::mt19937 rng(seed);
  const std::size_t row = static_cast<std::size_t>(store.shape().num_kv_heads) * store.shape().head_dim;
  const auto pos = iota_positions(p0, n);
  for (int l = 0; l < store.shape().num_layers; ++l) {
    const auto k = random_tensor<T>(rng, static_cast<std::size_t>(n) * row);
    const auto v = random_tensor<T>(rng, static_cast<std::size_t>(n) * row);
    store.append(s, l, std::span<const T>(k), std::span<const T>(v), std::span<const std::int32_t>(pos));
  }
}

// A chunk of n tokens (each `seed`) of model `model_id`, appended by append_seeded() and registered.
template <class Store>
ChunkKey seeded_chunk(Store& store, std::string_view model_id, std::int32_t n, unsigned seed) {
  const SeqId s = store.create_sequence();
  append_seeded(store, s, 0, n, seed);
  const std::vector<std::int32_t> tokens(static_cast<std::size_t>(n), static_cast<std::int32_t>(seed));
  const ChunkKey key = store.chunk_key(model_id, tokens);
  store.register_chunk(key, s);
  return key;
}

// The checks of support/checks.hpp as Catch2 assertions.
template <class Store>
void check_accounting(const Store& store) {
  const std::string err = accounting_error(store);
  INFO(err);
  REQUIRE(err.empty());
}

// Everything observable about a store, for before/after comparisons.
template <class Store>
struct Snapshot {
  std::vector<SeqId> seqs;
  std::vector<std::vector<PageEntry>> tables;
  std::vector<std::int32_t> next_pos;
  std::vector<std::int32_t> refcounts;
  std::int32_t used = 0;
  StoreStats stats;
  std::vector<ChunkKey> chunks;

  explicit Snapshot(const Store& s) {
    const auto& sh = s.shape();
    seqs = s.sequences();
    for (SeqId id : seqs)
      for (int l = 0; l < sh.num_layers; ++l) {
        next_pos.push_back(s.next_position(id, l));
        for (int h = 0; h < sh.num_kv_heads; ++h) {
          const HeadTable& t = s.table_layout(id, l, h);
          std::vector<PageEntry> es;
          for (std::size_t i = 0; i < t.size(); ++i) es.push_back(t[i]);
          tables.push_back(es);
        }
      }
    for (PageId p = 0; p < s.pool().num_pages(); ++p) refcounts.push_back(s.pool().refcount(p));
    used = s.pool().used_pages();
    stats = s.stats();
    chunks = s.chunk_keys();
  }
  bool operator==(const Snapshot& o) const {
    return seqs == o.seqs && tables == o.tables && next_pos == o.next_pos && refcounts == o.refcounts &&
           used == o.used && stats.pages_global == o.stats.pages_global &&
           stats.pages_local == o.stats.pages_local && stats.num_sequences == o.stats.num_sequences &&
           chunks == o.chunks;
  }
};

template <class Store>
void check_plan_mirrors_store(const AttentionPlan& plan, const Store& store) {
  const std::string err = plan_mirror_error(plan, store);
  INFO(err);
  REQUIRE(err.empty());
}

}  // namespace rktest
