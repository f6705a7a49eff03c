// Random call orders against the oracle: the adversarial counterpart of the scripted scenarios
// (support/scenarios.hpp, played by test_backends).
//
// A seeded generator drives a store, its per-layer plans and the dense oracle through every legal order of
// the public calls: zero-query batch items, appends without attention, several appends to one layer between
// plans, per-layer and all-layer retire_queries, position jumps, forks of forks, frees, plans shared across
// layers and stores, pool exhaustion, with tiny windows, sinks and pages. After every mutation the page
// accounting must hold; after every plan update the plan must mirror the store entry for entry; every
// attention output must match the oracle (a comparison that fails on NaN).
//
// REDKNOT_CALL_ORDER_SEEDS=N runs N seeds instead of the default (long runs, e.g. under a sanitizer).
#include <catch2/catch_test_macros.hpp>

#include <cstdlib>
#include <memory>
#include <optional>

#include "harness.hpp"

using namespace rktest;

namespace {

// Largest |a - b|, NaN-propagating: any NaN makes the result NaN, which fails every `<= tol` check.
double max_abs_diff(double worst, double a, double b) {
  const double d = std::abs(a - b);
  return (std::isnan(d) || std::isnan(worst)) ? std::numeric_limits<double>::quiet_NaN() : std::max(worst, d);
}

struct Config {
  int layers, kv_heads, gqa, head_dim, page_size;
  std::int32_t num_pages;
  HeadMap map;
};

Config random_config(std::mt19937& rng) {
  auto pick = [&](std::initializer_list<int> xs) {
    return *(xs.begin() + std::uniform_int_distribution<std::size_t>(0, xs.size() - 1)(rng));
  };
  Config c{pick({1, 2, 3}),
           pick({1, 2, 3}),
           pick({1, 2, 4}),
           pick({8, 16, 24, 64}),
           pick({1, 2, 3, 4, 16}),
           0,
           {}};
  // Mostly a roomy pool; sometimes a tight one so appends and copy-on-write run out of pages.
  c.num_pages = std::uniform_int_distribution<int>(0, 4)(rng) == 0 ? pick({4, 12, 40}) : 4096;
  c.map = HeadMap::all_global(c.layers, c.kv_heads);
  for (int l = 0; l < c.layers; ++l)
    for (int h = 0; h < c.kv_heads; ++h)
      if (std::uniform_int_distribution<int>(0, 3)(rng) != 0)
        c.map.set(l, h,
                  HeadPolicy{HeadClass::kLocal, pick({1, 1, 2, 3, 5, 8, 17, 64}), pick({0, 0, 1, 2, 4, 9})});
  if (c.layers > 1 && std::uniform_int_distribution<int>(0, 3)(rng) == 0) c.map.set_dense_prefix_layers(1);
  return c;
}

template <StorageType T>
class Driver {
 public:
  Driver(const Config& c, std::mt19937& rng)
      : c_(c),
        shape_{c.layers, c.kv_heads * c.gqa, c.kv_heads, c.head_dim, dtype_of<T>()},
        store_(std::make_unique<KVHeadStore<T>>(shape_, c.map, StoreConfig{c.page_size, c.num_pages})),
        oracle_(shape_, c.map),
        plans_(static_cast<std::size_t>(c.layers)),
        rng_(rng) {}

  void run(int ops) {
    for (int i = 0; i < ops; ++i) {
      const int op = uniform(0, 99);
      INFO("op " << i << " kind " << op);
      if (op < 8 || live_.empty())
        create();
      else if (op < 14)
        fork();
      else if (op < 19)
        free_one();
      else if (op < 36)
        append_only();
      else if (op < 44)
        append_batch();
      else if (op < 54)
        retire();
      else if (op < 60)
        restore_step();
      else if (op < 80)
        attend(uniform(0, c_.layers - 1), /*append_first=*/false);
      else
        attend(uniform(0, c_.layers - 1), /*append_first=*/true);
      check_accounting(*store_);
    }
    for (SeqId s : std::vector<SeqId>(live_)) free_seq(s);
    for (const Restoring& r : restoring_) store_->free_sequence(r.id);  // abandoned mid-restore
    REQUIRE(store_->pool().used_pages() == 0);
    REQUIRE(store_->stats().pages_global == 0);
    REQUIRE(store_->stats().pages_local == 0);
  }

 private:
  int uniform(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
  SeqId any_live() { return live_[static_cast<std::size_t>(uniform(0, static_cast<int>(live_.size()) - 1))]; }

  void create() {
    const SeqId s = store_->create_sequence();
    live_.push_back(s);
  }
  void fork() {
    const SeqId p = any_live();
    const SeqId c = store_->fork(p);
    if (oracle_has(p)) {
      oracle_.fork(p, c);
      appended_.insert(c);
    }
    live_.push_back(c);
  }
  void free_seq(SeqId s) {
    store_->free_sequence(s);
    oracle_.free(s);
    appended_.erase(s);
    live_.erase(std::find(live_.begin(), live_.end(), s));
  }
  void free_one() { free_seq(any_live()); }
  bool oracle_has(SeqId s) const { return appended_.count(s) != 0; }

  // Positions for n new tokens of (s, layer): from next_position, with an occasional jump and gaps.
  std::vector<std::int32_t> new_positions(SeqId s, int layer, int n) {
    std::int32_t p = store_->next_position(s, layer);
    if (uniform(0, 9) == 0) p += uniform(1, 3 * c_.page_size + 5);  // a spliced chunk further on
    std::vector<std::int32_t> pos;
    for (int i = 0; i < n; ++i) {
      pos.push_back(p);
      p += uniform(0, 7) == 0 ? uniform(2, 4) : 1;
    }
    return pos;
  }

  // Runs a mutating call; false when it ran out of pages, in which case nothing may have changed. Only a
  // tight pool can run out; snapshotting a roomy one on every append would dominate the run time.
  template <class F>
  bool all_or_nothing(F&& f) {
    std::optional<Snapshot<KVHeadStore<T>>> before;
    if (c_.num_pages < 4096) before.emplace(*store_);
    try {
      f();
    } catch (const PoolExhausted&) {
      REQUIRE(before.has_value());
      REQUIRE(Snapshot(*store_) == *before);
      return false;
    }
    return true;
  }

  // Appends to (s, layer); false (and nothing changed) when the pool is full.
  bool append(SeqId s, int layer, const std::vector<std::int32_t>& pos) {
    const std::size_t row = static_cast<std::size_t>(c_.kv_heads) * c_.head_dim;
    const auto k = random_tensor<T>(rng_, pos.size() * row);
    const auto v = random_tensor<T>(rng_, pos.size() * row);
    if (!all_or_nothing([&] {
          store_->append(s, layer, std::span<const T>(k), std::span<const T>(v),
                         std::span<const std::int32_t>(pos));
        }))
      return false;
    // The oracle keeps a sequence's whole history; forks copy it, so seed it for sequences created empty.
    if (!oracle_has(s)) appended_.insert(s);
    oracle_.append<T>(s, layer, std::span<const T>(k), std::span<const T>(v), pos);
    return true;
  }

  void append_only() {
    const SeqId s = any_live();
    const int layer = uniform(0, c_.layers - 1);
    append(s, layer, new_positions(s, layer, uniform(1, 2 * c_.page_size + 3)));
  }

  // A batched append of one layer over a random subset of live sequences (some with no tokens); on
  // PoolExhausted nothing of the batch may have changed.
  void append_batch() {
    const int layer = uniform(0, c_.layers - 1);
    std::vector<SeqId> batch = live_;
    std::shuffle(batch.begin(), batch.end(), rng_);
    batch.resize(static_cast<std::size_t>(uniform(1, static_cast<int>(batch.size()))));
    std::vector<std::int32_t> offsets{0}, pos;
    std::vector<std::vector<std::int32_t>> per_item;
    for (SeqId s : batch) {
      std::vector<std::int32_t> p;
      if (uniform(0, 3) != 0) p = new_positions(s, layer, uniform(1, c_.page_size + 4));
      pos.insert(pos.end(), p.begin(), p.end());
      offsets.push_back(static_cast<std::int32_t>(pos.size()));
      per_item.push_back(std::move(p));
    }
    const std::size_t row = static_cast<std::size_t>(c_.kv_heads) * c_.head_dim;
    const auto k = random_tensor<T>(rng_, pos.size() * row);
    const auto v = random_tensor<T>(rng_, pos.size() * row);
    if (!all_or_nothing([&] {
          store_->append_batch(layer, std::span<const SeqId>(batch), std::span<const std::int32_t>(offsets),
                               std::span<const T>(k), std::span<const T>(v),
                               std::span<const std::int32_t>(pos));
        }))
      return;
    for (std::size_t b = 0; b < batch.size(); ++b) {
      if (per_item[b].empty()) continue;
      const std::size_t r0 = static_cast<std::size_t>(offsets[b]) * row, n = per_item[b].size() * row;
      appended_.insert(batch[b]);
      oracle_.append<T>(batch[b], layer, std::span<const T>(k.data() + r0, n),
                        std::span<const T>(v.data() + r0, n), per_item[b]);
    }
  }

  // A pipelined restore copying a live sequence (begin_restore from its runs, then its layers one call at a
  // time, in random order, with other operations in between): a restoring sequence refuses every call on a
  // pending layer and every whole-sequence call, leaving the store unchanged; once its last layer is written
  // it is a live sequence equal to a fork of the original; some are abandoned half way.
  struct Restoring {
    SeqId id;
    SeqId source;
    std::vector<std::vector<T>> rows;  // per run: K then V rows (the rows live here until written)
    std::vector<RestoreRun<T>> runs;   // with rows
    std::vector<int> layers_left;
  };
  void restore_step() {
    if (restoring_.empty() || uniform(0, 2) == 0) return begin_restore();
    const std::size_t i = static_cast<std::size_t>(uniform(0, static_cast<int>(restoring_.size()) - 1));
    Restoring& r = restoring_[i];
    const int pending =
        r.layers_left[static_cast<std::size_t>(uniform(0, static_cast<int>(r.layers_left.size()) - 1))];
    {  // every refusal leaves the store as it was
      const Snapshot<KVHeadStore<T>> before(*store_);
      CHECK_THROWS_AS(store_->table(r.id, pending, 0), InvalidArgument);
      CHECK_THROWS_AS(store_->check_query_position(r.id, pending, 0), InvalidArgument);
      CHECK_THROWS_AS(store_->fork(r.id), InvalidArgument);
      CHECK_THROWS_AS(store_->retire_queries(r.id, 0, pending), InvalidArgument);
      const std::size_t row = static_cast<std::size_t>(c_.kv_heads) * c_.head_dim;
      const std::vector<T> kv(row);
      const std::int32_t at[1] = {store_->next_position(r.id, pending)};
      CHECK_THROWS_AS(store_->append(r.id, pending, std::span<const T>(kv), std::span<const T>(kv),
                                     std::span<const std::int32_t>(at)),
                      InvalidArgument);
      REQUIRE(Snapshot(*store_) == before);
    }
    if (uniform(0, 9) == 0) {  // the engine gives up on it
      store_->free_sequence(r.id);
      restoring_.erase(restoring_.begin() + static_cast<std::ptrdiff_t>(i));
      return;
    }
    std::vector<RestoreRun<T>> layer_runs;
    for (const RestoreRun<T>& run : r.runs)
      if (run.layer == pending) layer_runs.push_back(run);
    std::shuffle(layer_runs.begin(), layer_runs.end(), rng_);
    store_->write_restored_layer(r.id, pending, std::span<const RestoreRun<T>>(layer_runs));
    r.layers_left.erase(std::find(r.layers_left.begin(), r.layers_left.end(), pending));
    if (!r.layers_left.empty()) return;
    REQUIRE(store_->pending_layers(r.id) == 0);
    live_.push_back(r.id);
    restoring_.erase(restoring_.begin() + static_cast<std::ptrdiff_t>(i));
  }
  void begin_restore() {
    const SeqId src = any_live();
    const std::size_t D = static_cast<std::size_t>(c_.head_dim);
    Restoring r{0, src, {}, {}, {}};
    std::vector<RestoreRun<T>> layout;
    std::vector<std::int32_t> next, floor;
    for (int l = 0; l < c_.layers; ++l) {
      next.push_back(store_->next_position(src, l));
      floor.push_back(store_->query_floor(src, l));
      r.layers_left.push_back(l);
      for (int h = 0; h < c_.kv_heads; ++h) {
        const HeadTable& t = store_->table(src, l, h);
        for (std::size_t e = 0; e < t.size(); ++e) {
          const PageEntry& pe = t[e];
          std::vector<T> kv(2 * static_cast<std::size_t>(pe.count) * D);
          const std::size_t off = static_cast<std::size_t>(pe.first) * D,
                            n = static_cast<std::size_t>(pe.count) * D;
          std::copy_n(store_->pool().k_ptr(pe.page_id) + off, n, kv.begin());
          std::copy_n(store_->pool().v_ptr(pe.page_id) + off, n, kv.begin() + static_cast<std::ptrdiff_t>(n));
          r.rows.push_back(std::move(kv));
          layout.push_back(RestoreRun<T>{l, h, pe.pos0, pe.count, pe.rope_pos0, {}, {}});
        }
      }
    }
    for (std::size_t j = 0; j < layout.size(); ++j) {
      const std::size_t n = static_cast<std::size_t>(layout[j].count) * D;
      RestoreRun<T> run = layout[j];
      run.k = std::span<const T>(r.rows[j]).first(n);
      run.v = std::span<const T>(r.rows[j]).subspan(n, n);
      r.runs.push_back(run);
    }
    if (!all_or_nothing(
            [&] { r.id = store_->begin_restore(std::span<const RestoreRun<T>>(layout), next, floor); }))
      return;
    REQUIRE(store_->pending_layers(r.id) == c_.layers);
    if (oracle_has(src)) {
      oracle_.fork(src, r.id);
      appended_.insert(r.id);
    }
    restoring_.push_back(std::move(r));
  }

  void retire() {
    const SeqId s = any_live();
    const int layer = uniform(0, 2) == 0 ? -1 : uniform(0, c_.layers - 1);
    std::int32_t hi = std::numeric_limits<std::int32_t>::max(), lo = 0;
    for (int l = (layer < 0 ? 0 : layer); l < (layer < 0 ? c_.layers : layer + 1); ++l) {
      hi = std::min(hi, store_->next_position(s, l));
      lo = std::max(lo, store_->query_floor(s, l));
    }
    if (hi < lo) lo = hi;  // retire never lowers a floor; any value <= hi is legal
    // Half the time retire everything that can be: the most entries popped at once.
    store_->retire_queries(s, uniform(0, 1) == 0 ? hi : uniform(lo, hi), layer);
  }

  // One layer's attention for a random batch (random subset and order, some items with 0 queries). With
  // append_first, every item first appends its query tokens (the normal forward), else the queries are drawn
  // from the already-appended, not yet retired positions.
  void attend(int layer, bool append_first) {
    std::vector<SeqId> batch = live_;
    std::shuffle(batch.begin(), batch.end(), rng_);
    // Half the time every live sequence, so idle and still-empty ones sit in the batch with 0 queries.
    if (uniform(0, 1) == 0)
      batch.resize(static_cast<std::size_t>(uniform(1, static_cast<int>(batch.size()))));
    std::vector<std::int32_t> q_lens, q_pos;
    std::vector<std::vector<std::int32_t>> per_item;
    for (SeqId s : batch) {
      std::vector<std::int32_t> qp;
      if (append_first && uniform(0, 4) != 0) {
        const auto pos = new_positions(s, layer, uniform(1, c_.page_size + 2));
        if (append(s, layer, pos)) qp = pos;
      } else if (uniform(0, 2) != 0) {
        const std::int32_t lo = store_->query_floor(s, layer), hi = store_->next_position(s, layer);
        for (int j = uniform(0, 3); j > 0 && lo < hi; --j) qp.push_back(uniform(lo, hi - 1));
      }
      q_lens.push_back(static_cast<std::int32_t>(qp.size()));
      q_pos.insert(q_pos.end(), qp.begin(), qp.end());
      per_item.push_back(std::move(qp));
    }
    // Usually the layer's own plan (incremental across steps); sometimes one plan for several layers.
    AttentionPlan& plan = uniform(0, 5) == 0 ? shared_plan_ : plans_[static_cast<std::size_t>(layer)];
    plan.update(*store_, layer, std::span<const SeqId>(batch), std::span<const std::int32_t>(q_lens),
                std::span<const std::int32_t>(q_pos));
    check_plan_mirrors_store(plan, *store_);
    const std::size_t q_row = static_cast<std::size_t>(shape_.num_q_heads) * c_.head_dim;
    const auto q = random_tensor<float>(rng_, q_pos.size() * q_row);
    std::vector<float> out(q.size(), std::numeric_limits<float>::quiet_NaN());
    std::vector<float> lse(q_pos.size() * static_cast<std::size_t>(shape_.num_q_heads));
    const int kv_chunk = uniform(0, 2) == 0 ? uniform(1, 9) : 4096;
    cpu_attention<float>(*store_, plan, std::span<const float>(q), std::span<float>(out),
                         std::span<float>(lse), AttentionParams{0.f, uniform(1, 2), kv_chunk});
    std::size_t row0 = 0;
    for (std::size_t b = 0; b < batch.size(); ++b) {
      const auto& qp = per_item[b];
      if (qp.empty()) continue;
      std::vector<double> ref_out, ref_lse;
      oracle_.attention<float>(batch[b], layer,
                               std::span<const float>(q.data() + row0 * q_row, qp.size() * q_row), qp,
                               ref_out, ref_lse);
      double worst_out = 0, worst_lse = 0;
      for (std::size_t i = 0; i < ref_out.size(); ++i)
        worst_out = max_abs_diff(worst_out, out[row0 * q_row + i], ref_out[i]);
      for (std::size_t i = 0; i < ref_lse.size(); ++i) {
        const double got = lse[row0 * shape_.num_q_heads + i];
        // A query that sees no key: lse is -inf on both sides.
        if (std::isinf(ref_lse[i]) && got == ref_lse[i]) continue;
        worst_lse = max_abs_diff(worst_lse, got, ref_lse[i]);
      }
      INFO("layer " << layer << " item " << b << " seq " << batch[b] << " q " << qp.front() << "..");
      REQUIRE(worst_out <= 1e-4);
      REQUIRE(worst_lse <= 1e-3);
      row0 += qp.size();
    }
  }

  Config c_;
  ModelShape shape_;
  std::unique_ptr<KVHeadStore<T>> store_;
  DenseOracle oracle_;
  std::vector<AttentionPlan> plans_;
  AttentionPlan shared_plan_;
  std::mt19937& rng_;
  std::vector<SeqId> live_;
  std::vector<Restoring> restoring_;  // not in live_ until every layer is written
  std::set<SeqId> appended_;
};

int num_seeds(int dflt) {
  const char* e = std::getenv("REDKNOT_CALL_ORDER_SEEDS");
  return e ? std::max(1, std::atoi(e)) : dflt;
}

}  // namespace

TEST_CASE("random call orders match the oracle (f32 storage)", "[oracle][call-orders]") {
  for (int seed = 1; seed <= num_seeds(300); ++seed) {
    std::mt19937 rng(static_cast<unsigned>(seed));
    const Config c = random_config(rng);
    INFO("seed " << seed << " layers " << c.layers << " kv_heads " << c.kv_heads << " gqa " << c.gqa
                 << " head_dim " << c.head_dim << " page " << c.page_size << " pages " << c.num_pages);
    Driver<float>(c, rng).run(60);
  }
}

TEST_CASE("random call orders match the oracle (bf16 storage)", "[oracle][call-orders]") {
  for (int seed = 1001; seed <= 1000 + num_seeds(60); ++seed) {
    std::mt19937 rng(static_cast<unsigned>(seed));
    const Config c = random_config(rng);
    INFO("seed " << seed);
    Driver<BFloat16>(c, rng).run(60);
  }
}

// The reviewer's reproduction of the stale-plan bug, scripted: a sequence sits in the batch with 0 queries
// while its table is empty (so its ring region is never allocated), then gets append + retire_queries
// (entries pushed and popped between two plan updates). The sequence before it in the batch keeps sink
// entries at arena offset 0, where the broken update wrote.
TEST_CASE("plan stays exact after pushes and pops between updates (zero-query item)", "[oracle][plan]") {
  const ModelShape shape{1, 1, 1, 8, DType::kF32};
  const HeadMap map = HeadMap::uniform(1, 1, HeadClass::kLocal, 1, 2);
  KVHeadStore<float> store(shape, map, StoreConfig{1, 256});
  DenseOracle oracle(shape, map);
  std::mt19937 rng(3);
  auto add = [&](SeqId s, std::int32_t p0, std::int32_t n) {
    const auto pos = iota_positions(p0, n);
    const auto k = random_tensor<float>(rng, static_cast<std::size_t>(n) * 8);
    const auto v = random_tensor<float>(rng, static_cast<std::size_t>(n) * 8);
    store.append(s, 0, std::span<const float>(k), std::span<const float>(v),
                 std::span<const std::int32_t>(pos));
    oracle.append<float>(s, 0, std::span<const float>(k), std::span<const float>(v), pos);
  };
  const SeqId b = store.create_sequence();
  const SeqId a = store.create_sequence();  // empty when first planned
  add(b, 0, 6);
  store.retire_queries(b, 5);  // b: sink entries {0}, {1}; body {5}
  AttentionPlan plan;
  const std::vector<SeqId> seqs{b, a};
  const std::vector<std::int32_t> ql{1, 0}, qp{5};
  plan.update(store, 0, std::span<const SeqId>(seqs), std::span<const std::int32_t>(ql),
              std::span<const std::int32_t>(qp));
  // a: three one-token pages pushed, then all three popped (two into its sink), before the next update.
  add(a, 0, 3);
  store.retire_queries(a, 3);
  plan.update(store, 0, std::span<const SeqId>(seqs), std::span<const std::int32_t>(ql),
              std::span<const std::int32_t>(qp));
  check_plan_mirrors_store(plan, store);
  const auto q = random_tensor<float>(rng, 8);
  std::vector<float> out(8), lse(1);
  cpu_attention<float>(store, plan, std::span<const float>(q), std::span<float>(out), std::span<float>(lse));
  std::vector<double> ref, ref_lse;
  oracle.attention<float>(b, 0, std::span<const float>(q), std::vector<std::int32_t>{5}, ref, ref_lse);
  double worst = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) worst = max_abs_diff(worst, out[i], ref[i]);
  REQUIRE(worst <= 1e-5);
}

TEST_CASE("a plan handed another store rebuilds instead of reusing the first store's slots", "[plan]") {
  const ModelShape shape{1, 1, 1, 8, DType::kF32};
  const HeadMap map = HeadMap::all_global(1, 1);
  std::mt19937 rng(5);
  AttentionPlan plan;
  std::vector<PageEntry> first_view;
  for (int round = 0; round < 2; ++round) {
    KVHeadStore<float> store(shape, map, StoreConfig{4, 64});
    const SeqId s = store.create_sequence();        // same id (1) in both stores
    const auto pos = iota_positions(round * 7, 3);  // identical counters, different positions
    const auto k = random_tensor<float>(rng, 24), v = random_tensor<float>(rng, 24);
    store.append(s, 0, std::span<const float>(k), std::span<const float>(v),
                 std::span<const std::int32_t>(pos));
    const std::vector<SeqId> seqs{s};
    const std::vector<std::int32_t> ql{1}, qp{pos.back()};
    plan.update(store, 0, std::span<const SeqId>(seqs), std::span<const std::int32_t>(ql),
                std::span<const std::int32_t>(qp));
    check_plan_mirrors_store(plan, store);
  }
}
