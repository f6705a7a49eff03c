// Plays a scenario (scenarios.hpp) on a backend (backend.hpp) and checks it:
//   * every attention output and LSE against the fp64 DenseOracle over the visible set, with a tolerance per
//     activation dtype and backend precision; a comparison is written `!(err <= tol)`, so NaN never passes,
//     and outputs start as NaN, so a row the backend does not write fails too;
//   * after every operation, the backend's own invariants (invariant_error()) and its page statistics
//     against a bookkeeping-only store (KVHeadStore<T, NullAllocator>) that plays the same script, and at
//     the end that freeing every sequence empties the pool.
// K and V are uniform in [-1, 1], queries in [-3, 3], drawn from the scenario's seed. No test framework: the
// first failure ends the run and is reported in RunReport (Catch2 tests and the GPU driver both use it).
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend.hpp"
#include "oracle.hpp"
#include "redknot/allocator.hpp"
#include "redknot/kv_head_store.hpp"
#include "scenarios.hpp"

namespace rktest {

using redknot::detail::concat;

// |got - oracle| <= abs + rel * |oracle|, for outputs and LSEs.
struct Tolerance {
  double out_abs, out_rel, lse_abs, lse_rel;
};

// Host kernels accumulate in fp32 and see exactly the oracle's (rounded) q, K and V: what remains is fp32
// arithmetic and the rounding of the output to the activation dtype. Device kernels also round the softmax
// probabilities to 16 bits for the tensor-core P.V product.
inline Tolerance tolerance(redknot::DType activation, Precision p) {
  using redknot::DType;
  if (p == Precision::kDevice && activation != DType::kF32)
    return activation == DType::kF16 ? Tolerance{4e-3, 4e-3, 2e-3, 2e-3}
                                     : Tolerance{2.5e-2, 2.5e-2, 2e-3, 2e-3};
  switch (activation) {
    case DType::kF32:
      return {2e-5, 0, 2e-5, 2e-6};
    case DType::kF16:
      return {2e-3, 0, 2e-5, 2e-6};
    case DType::kBF16:
      break;
  }
  return {1.6e-2, 0, 2e-5, 2e-6};
}

struct RunOptions {
  bool attention = true;  // false: play the store operations only (no attention, no oracle comparison)
};

struct RunReport {
  enum class Failure { kNone, kAttention, kAccounting, kError };
  Failure failure = Failure::kNone;
  std::string message;  // the first failure: where (operation, layer, item, position, head, dim) and values
  int attention_calls = 0;
  std::int64_t values_compared = 0;
  double worst_out = 0;  // largest error / tolerance of any output (a pass is < 1)
  double worst_lse = 0;
  double seconds = 0;
  bool ok() const { return failure == Failure::kNone; }
};

namespace run_detail {

struct RunFailure : std::runtime_error {
  RunFailure(RunReport::Failure k, const std::string& m) : std::runtime_error(m), kind(k) {}
  RunReport::Failure kind;
};

class RunBase {
 public:
  virtual ~RunBase() = default;
  virtual void apply(const Op& op) = 0;
  virtual void check_store() = 0;
  virtual void free_all() = 0;
  virtual BackendStore& store() = 0;
};

template <class T>
std::vector<T> uniform(std::mt19937& rng, std::size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<T> v(n);
  for (auto& x : v) x = redknot::from_float<T>(u(rng));
  return v;
}

template <redknot::StorageType T, redknot::StorageType QT>
class TypedRun final : public RunBase {
 public:
  TypedRun(const Scenario& sc, const Backend& b, RunOptions opt, RunReport& rep)
      : sc_(sc),
        opt_(opt),
        rep_(rep),
        tol_(tolerance(sc.activation, b.precision)),
        oracle_(sc.shape, sc.map),
        shadow_(sc.shape, sc.map, redknot::StoreConfig{sc.page_size, sc.num_pages}, sc.rope),
        handles_(static_cast<std::size_t>(sc.num_handles)),
        rng_(sc.seed) {
    store_ = b.make_store(StoreSpec::of(sc));
  }

  BackendStore& store() override { return *store_; }

  void apply(const Op& op) override {
    switch (op.kind) {
      case Op::Kind::kCreate:
        handles_.at(static_cast<std::size_t>(op.seq)) = {true, store_->create_sequence(),
                                                         shadow_.create_sequence()};
        break;
      case Op::Kind::kFork: {
        const Handle& p = handle(op.seq);
        handles_.at(static_cast<std::size_t>(op.child)) = {true, store_->fork(p.id), shadow_.fork(p.shadow)};
        oracle_.fork(op.seq, op.child);
        break;
      }
      case Op::Kind::kFree: {
        Handle& h = handle(op.seq);
        store_->free_sequence(h.id);
        shadow_.free_sequence(h.shadow);
        oracle_.free(op.seq);
        h.live = false;
        break;
      }
      case Op::Kind::kRetire: {
        const Handle& h = handle(op.seq);
        store_->retire_queries(h.id, op.next_query_pos, op.layer);
        shadow_.retire_queries(h.shadow, op.next_query_pos, op.layer);
        break;
      }
      case Op::Kind::kStep:
        step(op.items);
        break;
      case Op::Kind::kRegister: {
        Handle& h = handle(op.seq);
        store_->register_chunk(h.id, op.chunk);
        shadow_.register_chunk(shadow_key(op.chunk), h.shadow);
        oracle_.take_chunk(op.seq, op.chunk);
        h.live = false;
        chunks_.push_back(op.chunk);
        break;
      }
      case Op::Kind::kSplice:
        splice(op);
        break;
      case Op::Kind::kSwap:
        swap(op);
        break;
    }
  }

  // The backend's invariants, and its page statistics against the bookkeeping store's.
  void check_store() override {
    if (const std::string err = store_->invariant_error(); !err.empty())
      throw RunFailure(RunReport::Failure::kAccounting, "store invariants: " + err);
    const redknot::StoreStats got = store_->stats(), want = shadow_.stats();
    if (got.num_sequences != want.num_sequences || got.pages_in_use != want.pages_in_use ||
        got.pages_global != want.pages_global || got.pages_local != want.pages_local)
      throw RunFailure(
          RunReport::Failure::kAccounting,
          concat("stats: ", got.num_sequences, " sequences, pages ", got.pages_in_use, " (", got.pages_global,
                 " global, ", got.pages_local, " local); expected ", want.num_sequences, " sequences, pages ",
                 want.pages_in_use, " (", want.pages_global, " global, ", want.pages_local, " local)"));
  }

  void free_all() override {
    for (std::size_t i = 0; i < handles_.size(); ++i)
      if (handles_[i].live) apply(Op{Op::Kind::kFree, static_cast<int>(i), -1, 0, -1, {}});
    for (int c : chunks_) {  // unused now: dropping them returns their pages
      store_->drop_chunk(c);
      shadow_.drop_chunk(shadow_key(c));
    }
    check_store();
    if (store_->stats().pages_in_use != 0)
      throw RunFailure(RunReport::Failure::kAccounting,
                       concat("every sequence freed, but ", store_->stats().pages_in_use, " pages in use"));
    store_.reset();
  }

 private:
  struct Handle {
    bool live = false;
    redknot::SeqId id = 0, shadow = 0;
  };
  Handle& handle(int h) {
    Handle& x = handles_.at(static_cast<std::size_t>(h));
    if (!x.live) throw std::logic_error(concat("script handle ", h, " is not live"));
    return x;
  }

  redknot::ChunkKey shadow_key(int chunk) const { return scenario_chunk_key(shadow_, chunk); }

  // The backend splices or relocates; the bookkeeping store splices, or appends the copy (its pages hold no
  // data to rotate) and retires the queries before first_query, as relocate() does.
  void splice(const Op& op) {
    const Handle& h = handle(op.seq);
    store_->splice(h.id, op.chunk, op.at, op.first_query, op.relocate);
    const redknot::ChunkKey key = shadow_key(op.chunk);
    if (!op.relocate) {
      shadow_.splice(h.shadow, key, op.at, op.first_query);
    } else {
      const std::int32_t n = *shadow_.lookup_chunk(key);
      const std::size_t rows = static_cast<std::size_t>(n) * sc_.shape.num_kv_heads * sc_.shape.head_dim;
      const std::vector<T> zeros(rows);
      std::vector<std::int32_t> pos(static_cast<std::size_t>(n));
      for (std::int32_t i = 0; i < n; ++i) pos[static_cast<std::size_t>(i)] = op.at + i;
      for (int l = 0; l < sc_.shape.num_layers; ++l)
        shadow_.append(h.shadow, l, std::span<const T>(zeros), std::span<const T>(zeros),
                       std::span<const std::int32_t>(pos));
      shadow_.retire_queries(h.shadow, op.first_query < 0 ? op.at + n : op.first_query);
    }
    oracle_.splice(op.seq, op.chunk, op.at, sc_.rope ? &*sc_.rope : nullptr);
  }

  // The backend swaps out and in; the bookkeeping store restores the same runs swap_out exports (maximal
  // runs of consecutive positions with consecutive rotations, per head) with zero rows, so that its page
  // statistics follow the restore's packing. The oracle's sequence does not change.
  void swap(const Op& op) {
    Handle& h = handle(op.seq);
    const redknot::ModelShape& sh = sc_.shape;
    const std::size_t D = static_cast<std::size_t>(sh.head_dim);
    std::vector<redknot::RestoreRun<T>> runs;
    std::size_t longest = 0;
    for (int l = 0; l < sh.num_layers; ++l)
      for (int kh = 0; kh < sh.num_kv_heads; ++kh) {
        const redknot::HeadTable& t = shadow_.table(h.shadow, l, kh);
        for (std::size_t e = 0; e < t.size(); ++e) {
          const redknot::PageEntry& pe = t[e];
          redknot::RestoreRun<T>* last = runs.empty() ? nullptr : &runs.back();
          if (last != nullptr && last->layer == l && last->kv_head == kh &&
              last->pos0 + last->count == pe.pos0 && last->rope_pos0 + last->count == pe.rope_pos0)
            last->count += pe.count;
          else
            runs.push_back(redknot::RestoreRun<T>{l, kh, pe.pos0, pe.count, pe.rope_pos0, {}, {}});
          longest = std::max(longest, static_cast<std::size_t>(runs.back().count));
        }
      }
    const std::vector<T> zeros(longest * D);
    for (auto& r : runs) r.k = r.v = std::span<const T>(zeros).first(static_cast<std::size_t>(r.count) * D);
    std::vector<std::int32_t> next_pos, floor;
    for (int l = 0; l < sh.num_layers; ++l) {
      next_pos.push_back(shadow_.next_position(h.shadow, l));
      floor.push_back(shadow_.query_floor(h.shadow, l));
    }
    const redknot::SeqId id = store_->swap(h.id);
    shadow_.free_sequence(h.shadow);
    h.shadow = shadow_.restore_sequence(std::span<const redknot::RestoreRun<T>>(runs),
                                        std::span<const std::int32_t>(next_pos),
                                        std::span<const std::int32_t>(floor));
    h.id = id;
  }

  void step(const std::vector<StepItem>& items) {
    const redknot::ModelShape& sh = sc_.shape;
    const std::size_t kv_row = static_cast<std::size_t>(sh.num_kv_heads) * sh.head_dim;
    std::vector<redknot::SeqId> ids, shadow_ids;
    std::vector<std::int32_t> offsets{0}, positions, q_lens, q_pos;
    for (const StepItem& it : items) {
      ids.push_back(handle(it.seq).id);
      shadow_ids.push_back(handle(it.seq).shadow);
      positions.insert(positions.end(), it.append.begin(), it.append.end());
      offsets.push_back(static_cast<std::int32_t>(positions.size()));
      q_lens.push_back(static_cast<std::int32_t>(it.query.size()));
      q_pos.insert(q_pos.end(), it.query.begin(), it.query.end());
    }
    store_->begin_step(ids, q_lens, q_pos);
    for (int layer = 0; layer < sh.num_layers; ++layer) {
      if (!positions.empty()) {
        const auto k = uniform<T>(rng_, positions.size() * kv_row, -1.f, 1.f);
        const auto v = uniform<T>(rng_, positions.size() * kv_row, -1.f, 1.f);
        store_->append(layer, ids, offsets, view(k), view(v), positions);
        shadow_.append_batch(layer, shadow_ids, offsets, std::span<const T>(k), std::span<const T>(v),
                             positions);
        for (std::size_t i = 0; i < items.size(); ++i) {
          const auto b = static_cast<std::size_t>(offsets[i]), n = items[i].append.size();
          if (n == 0) continue;
          oracle_.append<T>(items[i].seq, layer, std::span<const T>(k).subspan(b * kv_row, n * kv_row),
                            std::span<const T>(v).subspan(b * kv_row, n * kv_row),
                            std::span<const std::int32_t>(items[i].append));
        }
      }
      if (opt_.attention) attend(layer, items, q_pos.size());
    }
  }

  void attend(int layer, const std::vector<StepItem>& items, std::size_t total_q) {
    const redknot::ModelShape& sh = sc_.shape;
    const std::size_t Hq = static_cast<std::size_t>(sh.num_q_heads),
                      D = static_cast<std::size_t>(sh.head_dim);
    const std::size_t q_row = Hq * D;
    const auto q = uniform<QT>(rng_, total_q * q_row, -3.f, 3.f);
    std::vector<QT> out(q.size(), redknot::from_float<QT>(std::numeric_limits<float>::quiet_NaN()));
    std::vector<float> lse(total_q * Hq, std::numeric_limits<float>::quiet_NaN());
    store_->attend(layer, view(q), view(out), lse);
    ++rep_.attention_calls;
    std::vector<double> ref, ref_lse;
    std::size_t row = 0;  // first query row of the item
    for (std::size_t i = 0; i < items.size(); ++i) {
      const std::vector<std::int32_t>& qp = items[i].query;
      if (qp.empty()) continue;
      oracle_.attention<QT>(items[i].seq, layer,
                            std::span<const QT>(q).subspan(row * q_row, qp.size() * q_row),
                            std::span<const std::int32_t>(qp), ref, ref_lse);
      const auto where = [&](std::size_t e, std::size_t per_query, const char* what) {
        const std::size_t j = e / per_query;
        return concat(what, " of layer ", layer, ", item ", i, " (script handle ", items[i].seq,
                      "), query position ", qp[j], ", q head ", (e % per_query) / (per_query / Hq),
                      per_query == q_row ? concat(", dim ", e % D) : std::string());
      };
      for (std::size_t e = 0; e < ref.size(); ++e) {
        const double got = redknot::to_float(out[row * q_row + e]);
        const double lim = tol_.out_abs + tol_.out_rel * std::abs(ref[e]);
        const double err = std::abs(got - ref[e]);
        if (!(err <= lim))
          throw RunFailure(RunReport::Failure::kAttention, concat(where(e, q_row, "output"), ": got ", got,
                                                                  ", oracle ", ref[e], ", tolerance ", lim));
        rep_.worst_out = std::max(rep_.worst_out, err / lim);
      }
      for (std::size_t e = 0; e < ref_lse.size(); ++e) {
        const double got = lse[row * Hq + e], r = ref_lse[e];
        const double lim = tol_.lse_abs + tol_.lse_rel * std::abs(r);
        // A query that sees nothing has lse -inf (never the case here: a query sees its own key).
        const bool ok = std::isinf(r) ? got == r : std::abs(got - r) <= lim;
        if (!ok)
          throw RunFailure(RunReport::Failure::kAttention,
                           concat(where(e, Hq, "lse"), ": got ", got, ", oracle ", r, ", tolerance ", lim));
        if (!std::isinf(r)) rep_.worst_lse = std::max(rep_.worst_lse, std::abs(got - r) / lim);
      }
      rep_.values_compared += static_cast<std::int64_t>(ref.size() + ref_lse.size());
      row += qp.size();
    }
  }

  const Scenario& sc_;
  RunOptions opt_;
  RunReport& rep_;
  Tolerance tol_;
  redknot::DenseOracle oracle_;                             // keyed by script handle
  redknot::KVHeadStore<T, redknot::NullAllocator> shadow_;  // page bookkeeping only
  std::unique_ptr<BackendStore> store_;
  std::vector<Handle> handles_;
  std::vector<int> chunks_;  // registered
  std::mt19937 rng_;
};

}  // namespace run_detail

// A run that can be inspected between play() and finish() (the GPU driver reads the device store there).
class ScenarioRun {
 public:
  ScenarioRun(const Scenario& sc, const Backend& b, RunOptions opt = {}) : sc_(sc) {
    guard([&] {
      if (sc.activation != redknot::DType::kF32 && sc.activation != sc.shape.dtype)
        throw std::logic_error("activations are f32 or the storage dtype");
      visit_dtype(sc.shape.dtype, [&](auto st) {
        using T = decltype(st);
        if (sc.activation == redknot::DType::kF32)
          run_ = std::make_unique<run_detail::TypedRun<T, float>>(sc, b, opt, rep_);
        else
          run_ = std::make_unique<run_detail::TypedRun<T, T>>(sc, b, opt, rep_);
      });
    });
  }

  // Every operation of the script, checking the store after each; false at the first failure.
  bool play() {
    for (std::size_t i = 0; i < sc_.ops.size() && rep_.ok(); ++i)
      guard(
          [&] {
            run_->apply(sc_.ops[i]);
            run_->check_store();
          },
          i);
    return rep_.ok();
  }

  // Frees every live sequence, checks the pool is empty and destroys the backend's store.
  bool finish() {
    if (rep_.ok()) guard([&] { run_->free_all(); });
    return rep_.ok();
  }

  const RunReport& report() const { return rep_; }
  // Valid between a successful play() and finish().
  BackendStore& store() { return run_->store(); }

 private:
  template <class F>
  void guard(F&& f, std::size_t op = static_cast<std::size_t>(-1)) {
    const auto t0 = std::chrono::steady_clock::now();
    const std::string where = op == static_cast<std::size_t>(-1) ? std::string(sc_.name)
                                                                 : concat(sc_.name, ", operation ", op, " (",
                                                                          kind_name(sc_.ops[op].kind), ")");
    try {
      f();
    } catch (const run_detail::RunFailure& e) {
      rep_.failure = e.kind;
      rep_.message = where + ": " + e.what();
    } catch (const std::exception& e) {
      rep_.failure = RunReport::Failure::kError;
      rep_.message = where + ": exception: " + e.what();
    }
    rep_.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  static const char* kind_name(Op::Kind k) {
    switch (k) {
      case Op::Kind::kCreate:
        return "create";
      case Op::Kind::kFork:
        return "fork";
      case Op::Kind::kFree:
        return "free";
      case Op::Kind::kRetire:
        return "retire";
      case Op::Kind::kRegister:
        return "register chunk";
      case Op::Kind::kSplice:
        return "splice";
      case Op::Kind::kSwap:
        return "swap";
      case Op::Kind::kStep:
        break;
    }
    return "step";
  }

  const Scenario& sc_;
  RunReport rep_;
  std::unique_ptr<run_detail::RunBase> run_;
};

// play() then finish().
inline RunReport run_scenario(const Scenario& sc, const Backend& b, RunOptions opt = {}) {
  ScenarioRun r(sc, b, opt);
  if (r.report().ok() && r.play()) r.finish();
  return r.report();
}

}  // namespace rktest
