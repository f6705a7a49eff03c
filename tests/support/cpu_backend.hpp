// The CPU core as a scenario backend: KVHeadStore, one AttentionPlan per layer (kept across steps, so updates
// are incremental) and cpu_attention. Appends alternate between append_batch and per-sequence append; every
// plan update is checked to mirror the store entry for entry, and invariant_error() checks the tables
// against the pool's refcounts.
#pragma once

#include <stdlib.h>  // mkdtemp

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "backend.hpp"
#include "checks.hpp"
#include "redknot/attention_plan.hpp"
#include "redknot/cpu_attention.hpp"
#include "redknot/kv_head_store.hpp"
#include "redknot/tiers.hpp"

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
  // Rotates the three ways an engine swaps: local heads to a host tier and global heads to a disk tier, read
  // back with a prefetcher; everything through one host tier, read one object at a time; split again and
  // restored layer by layer (SwapInPipeline), each layer refused before its rows are written.
  redknot::SeqId swap(redknot::SeqId id) override {
    if (!tiers_) tiers_ = std::make_unique<Tiers>();
    const std::string name = "seq" + std::to_string(swaps_);
    const int way = swaps_++ % 3;
    const bool split = way != 1;
    redknot::KvTier& hot = tiers_->host;
    redknot::KvTier& cold = split ? static_cast<redknot::KvTier&>(tiers_->disk) : tiers_->host;
    const auto ticket = redknot::swap_out(store_, id, hot, cold, tiers_->model_fp, name);
    if (!ticket) throw std::runtime_error("swap_out: a tier refused an object");
    std::string why;
    std::optional<redknot::SeqId> back;
    if (way == 2) {
      redknot::SwapInPipeline<T> pipe(store_, *ticket, hot, cold, tiers_->prefetcher);
      for (int l = 0; l < store_.shape().num_layers; ++l) {
        if (!store_.layer_pending(pipe.sequence(), l))
          throw std::runtime_error("SwapInPipeline: a layer was readable before its rows were written");
        if (!pipe.ensure_layer(l, &why)) throw std::runtime_error(why);
      }
      if (!pipe.done()) throw std::runtime_error("SwapInPipeline: every layer written but not done");
      back = pipe.sequence();
    } else {
      back = redknot::swap_in(store_, *ticket, hot, cold,
                              redknot::SwapInOptions{split ? &tiers_->prefetcher : nullptr, &why});
    }
    if (!back) throw std::runtime_error(why);
    if (tiers_->host.stats().objects != 0 || tiers_->disk.stats().objects != 0)
      throw std::runtime_error("swap_in left objects in the tiers");
    return *back;
  }
  void drop_chunk(int chunk) override {
    if (!store_.drop_chunk(key(chunk))) throw std::runtime_error("drop_chunk: the chunk is not registered");
  }
  std::string invariant_error() const override { return accounting_error(store_); }

 private:
  redknot::ChunkKey key(int chunk) const { return scenario_chunk_key(store_, chunk); }

  // A host tier and a disk tier in a fresh temporary directory (removed with the store).
  struct Tiers {
    std::filesystem::path dir = make_dir();
    redknot::HostTier host{std::int64_t{1} << 30};
    redknot::DiskTier disk{dir, std::int64_t{1} << 30};
    redknot::TierPrefetcher prefetcher{2};
    std::uint64_t model_fp = redknot::model_fingerprint(kChunkModel);
    ~Tiers() {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
    static std::filesystem::path make_dir() {
      std::string t = (std::filesystem::temp_directory_path() / "rktest-swap-XXXXXX").string();
      if (::mkdtemp(t.data()) == nullptr) throw std::runtime_error("mkdtemp failed for " + t);
      return t;
    }
  };

  StoreSpec spec_;
  std::unique_ptr<Tiers> tiers_;
  int swaps_ = 0;
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
