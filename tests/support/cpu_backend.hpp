// The CPU core as a scenario backend: KVHeadStore, one AttentionPlan per layer (kept across steps, so updates
// are incremental) and cpu_attention. Appends alternate between append_batch and per-sequence append; every
// plan update is checked to mirror the store entry for entry, and invariant_error() checks the tables
// against the pool's refcounts.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "backend.hpp"
#include "checks.hpp"
#include "redknot/attention_plan.hpp"
#include "redknot/cpu_attention.hpp"
#include "redknot/kv_head_store.hpp"

namespace rktest {

template <redknot::StorageType T>
class CpuStore final : public BackendStore {
 public:
  explicit CpuStore(const StoreSpec& spec)
      : spec_(spec),
        store_(spec.shape, spec.map, spec.config, spec.rope),
        plans_(static_cast<std::size_t>(spec.shape.num_layers)) {
    if (spec.kv_chunk > 0) params_.kv_chunk = spec.kv_chunk;
  }

  redknot::SeqId create_sequence() override { return store_.create_sequence(); }
  redknot::SeqId fork(redknot::SeqId parent) override { return store_.fork(parent); }
  void free_sequence(redknot::SeqId id) override { store_.free_sequence(id); }
  void retire_queries(redknot::SeqId id, std::int32_t next_query_pos, int layer) override {
    store_.retire_queries(id, next_query_pos, layer);
  }

  void append(int layer, std::span<const redknot::SeqId> seqs, std::span<const std::int32_t> offsets,
              ConstTensor k, ConstTensor v, std::span<const std::int32_t> positions) override {
    const auto ks = k.as<T>(), vs = v.as<T>();
    if (appends_++ % 2 == 0) {
      store_.append_batch(layer, seqs, offsets, ks, vs, positions);
      return;
    }
    const std::size_t row = static_cast<std::size_t>(spec_.shape.num_kv_heads) * spec_.shape.head_dim;
    for (std::size_t i = 0; i < seqs.size(); ++i) {
      const auto b = static_cast<std::size_t>(offsets[i]), n = static_cast<std::size_t>(offsets[i + 1]) - b;
      if (n > 0)
        store_.append(seqs[i], layer, ks.subspan(b * row, n * row), vs.subspan(b * row, n * row),
                      positions.subspan(b, n));
    }
  }

  void begin_step(std::span<const redknot::SeqId> seqs, std::span<const std::int32_t> q_lens,
                  std::span<const std::int32_t> q_positions) override {
    batch_.assign(seqs, q_lens, q_positions);
  }

  void attend(int layer, ConstTensor q, MutTensor out, std::span<float> lse) override {
    redknot::AttentionPlan& plan = plans_.at(static_cast<std::size_t>(layer));
    plan.update(store_, layer, std::span<const redknot::SeqId>(batch_.seqs),
                std::span<const std::int32_t>(batch_.q_lens),
                std::span<const std::int32_t>(batch_.q_positions));
    if (const std::string err = plan_mirror_error(plan, store_); !err.empty())
      throw std::runtime_error("plan update: " + err);
    visit_dtype(spec_.activation, [&](auto tag) {
      using QT = decltype(tag);
      redknot::cpu_attention<QT>(store_, plan, q.as<QT>(), out.as<QT>(), lse, params_);
    });
  }

  redknot::StoreStats stats() const override { return store_.stats(); }
  void register_chunk(redknot::SeqId id, int chunk) override { store_.register_chunk(key(chunk), id); }
  void splice(redknot::SeqId dst, int chunk, std::int32_t at, std::int32_t first_query,
              bool relocate) override {
    if (relocate)
      store_.relocate(dst, key(chunk), at, first_query);
    else
      store_.splice(dst, key(chunk), at, first_query);
  }
  void drop_chunk(int chunk) override {
    if (!store_.drop_chunk(key(chunk))) throw std::runtime_error("drop_chunk: the chunk is not registered");
  }
  std::string invariant_error() const override { return accounting_error(store_); }

 private:
  redknot::ChunkKey key(int chunk) const { return scenario_chunk_key(store_, chunk); }

  StoreSpec spec_;
  redknot::KVHeadStore<T> store_;
  std::vector<redknot::AttentionPlan> plans_;  // one per layer
  redknot::AttentionParams params_;
  StepBatch batch_;
  int appends_ = 0;
};

inline std::unique_ptr<BackendStore> make_cpu_store(const StoreSpec& spec) {
  return visit_dtype(spec.shape.dtype, [&](auto tag) -> std::unique_ptr<BackendStore> {
    return std::make_unique<CpuStore<decltype(tag)>>(spec);
  });
}

inline Backend cpu_backend() { return Backend{"cpu", BackendKind::kCpu, Precision::kHost, make_cpu_store}; }

}  // namespace rktest
