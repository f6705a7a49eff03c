// CudaAttention: the plan/run pair an engine (or the Python and C bindings) calls, FlashInfer-style, over a
// CudaKVHeadStore (plan(...) once per step and layer, run(q, ...) per layer).
//
//   CudaAttention<BFloat16> attn(store, {.max_batch = 64, .max_queries = 8192});
//   attn.plan(layer, seqs, q_lens, q_positions, stream);   // host: incremental plan + device upload
//   attn.run(layer, q, out, lse, stream);                   // device only: decode if every q_len == 1, else
//   prefill
//
// Each layer keeps its own AttentionPlan and DevicePlan, so the per-step host work and host->device bytes
// stay proportional to what changed. run() does no host synchronisation and allocates nothing: a decode run()
// can be captured in a CUDA graph (re-capture when DevicePlan::generation() or the batch size changes).
//
// C++20 host code, header-only (templated on the storage type).
#pragma once

#include "redknot/cuda/runtime_api.hpp"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "redknot/attention_plan.hpp"
#include "redknot/cuda/decode.hpp"
#include "redknot/cuda/device_plan.hpp"
#include "redknot/cuda/prefill.hpp"
#include "redknot/cuda/store.hpp"

namespace redknot::cuda {

struct CudaAttentionConfig {
  int max_batch = 64;                 // sequences per step
  int max_queries = 8192;             // total query tokens per step (prefill chunks)
  float scale = 0.f;                  // softmax scale; 0: 1 / sqrt(head_dim)
  DecodePartitionConfig partition{};  // target_chunks == 0: derived from the device
};

template <StorageType T>
class CudaAttention {
 public:
  CudaAttention(const CudaKVHeadStore<T>& store, CudaAttentionConfig cfg) : store_(store), cfg_(cfg) {
    const ModelShape& sh = store.shape();
    check_arg(cfg.max_batch > 0 && cfg.max_queries > 0,
              "CudaAttention: max_batch and max_queries must be > 0");
    // The kernels address K/V rows (page_id * 2 * page_size + slot) in int32.
    const std::int64_t pool_rows =
        static_cast<std::int64_t>(store.pool().num_pages()) * 2 * store.page_size();
    check_arg(pool_rows <= std::numeric_limits<std::int32_t>::max(), "CudaAttention: the pool's ",
              store.pool().num_pages(), " pages x 2 x page_size ", store.page_size(), " = ", pool_rows,
              " K/V rows exceed int32 row ids: use fewer or smaller pages per store");
    if (cfg_.partition.target_chunks <= 0) cfg_.partition = default_decode_partition_config();
    max_units_ = cfg.max_batch * sh.num_kv_heads;
    ws_bytes_ = decode_workspace_bytes(max_units_, cfg_.partition, sh.group_size(), sh.head_dim);
    // Prefill tiles: per head, ceil(rows / 64) summed over items <= total rows / 64 + one partial tile per
    // item.
    const std::int64_t rows = static_cast<std::int64_t>(cfg.max_queries) * sh.group_size();
    max_tiles_ = static_cast<std::int64_t>(sh.num_kv_heads) * (rows / kPrefillTileRows + cfg.max_batch);
    layers_.resize(static_cast<std::size_t>(sh.num_layers));
    // The RoPE frequencies the kernels counter-rotate queries with, for chunks spliced at other positions
    // than they were computed at (a store without a RoPE spec holds no such keys).
    if (const RopeConfig* rc = store.rope()) {
      const std::span<const double> inv = store.rope_inv_freq();
      void* f = nullptr;
      check_cuda(cudaMalloc(&f, inv.size_bytes()), "cudaMalloc(rope inv_freq)");
      rope_inv_freq_.reset(f);
      check_cuda(cudaMemcpy(f, inv.data(), inv.size_bytes(), cudaMemcpyHostToDevice),
                 "cudaMemcpy(rope inv_freq)");
      rope_half_ = static_cast<int>(inv.size());
      rope_pairing_ = rc->pairing;
    }
  }

  // Host side of a step for one layer. q_positions are the flattened positions of the queries (sum(q_lens)).
  void plan(int layer, std::span<const SeqId> seqs, std::span<const std::int32_t> q_lens,
            std::span<const std::int32_t> q_positions, cudaStream_t stream) {
    const ModelShape& sh = store_.shape();
    check_arg(layer >= 0 && layer < sh.num_layers, "CudaAttention::plan: layer=", layer, " out of range [0, ",
              sh.num_layers, ")");
    check_arg(static_cast<int>(seqs.size()) <= cfg_.max_batch, "CudaAttention::plan: batch of ", seqs.size(),
              " exceeds max_batch ", cfg_.max_batch);
    check_arg(static_cast<std::int64_t>(q_positions.size()) <= cfg_.max_queries,
              "CudaAttention::plan: ", q_positions.size(), " queries exceed max_queries ", cfg_.max_queries);
    workspace_for(stream, true);
    Layer& L = layers_[static_cast<std::size_t>(layer)];
    if (!L.dplan) L.dplan = std::make_unique<DevicePlan>(cfg_.max_batch, sh.num_kv_heads, cfg_.max_queries);
    L.plan.update(store_, layer, seqs, q_lens, q_positions);
    std::vector<HeadPolicy> pol;
    std::vector<bool> local;
    for (int h = 0; h < sh.num_kv_heads; ++h) {
      pol.push_back(store_.policy(layer, h));
      local.push_back(pol.back().is_local());
    }
    L.dplan->sync(L.plan, pol, stream);
    L.decode = std::all_of(q_lens.begin(), q_lens.end(), [](std::int32_t n) { return n == 1; });
    if (!L.decode) {
      const std::vector<std::int32_t> lens(q_lens.begin(), q_lens.end());
      L.tiles = make_prefill_tiles(lens, local, sh.group_size());
      check_arg(static_cast<std::int64_t>(L.tiles.size()) <= max_tiles_,
                "CudaAttention::plan: too many tiles");
      // Tiles are uploaded here, in plan(), so that run() enqueues kernels only; one buffer per layer so that
      // an engine may plan every layer of a step before running them.
      if (!L.tiles_dev) {
        void* p = nullptr;
        check_cuda(cudaMalloc(&p, static_cast<std::size_t>(max_tiles_) * sizeof(PrefillTile)),
                   "cudaMalloc(tiles)");
        L.tiles_dev.reset(p);
      }
      if (!L.tiles.empty())
        check_cuda(cudaMemcpyAsync(L.tiles_dev.get(), L.tiles.data(), L.tiles.size() * sizeof(PrefillTile),
                                   cudaMemcpyHostToDevice, stream),
                   "cudaMemcpyAsync(tiles)");
    }
  }

  // q, out: [total_queries, num_q_heads, head_dim] device; lse: [total_queries, num_q_heads] or null.
  void run(int layer, const T* q, T* out, float* lse, cudaStream_t stream) {
    const ModelShape& sh = store_.shape();
    Layer& L = layers_.at(static_cast<std::size_t>(layer));
    check_arg(L.dplan != nullptr, "CudaAttention::run: plan() was not called for this layer");
    PagedKV kv = L.dplan->paged_kv(store_.pool().data(), store_.page_size(), sh.head_dim);
    kv.rope_inv_freq = static_cast<const double*>(rope_inv_freq_.get());
    kv.rope_half = rope_half_;
    kv.rope_pairing = rope_pairing_;
    if (L.decode) {
      DecodeParams p;
      p.kv = kv;
      p.dtype = kv_type_of<T>();
      p.batch = L.dplan->batch();
      p.num_q_heads = sh.num_q_heads;
      p.q = q;
      p.q_pos = L.dplan->q_pos();
      p.out = out;
      p.lse = lse;
      p.scale = cfg_.scale;
      decode_attention(p, workspace_for(stream, false), ws_bytes_, cfg_.partition, max_units_, stream);
    } else {
      PrefillParams p;
      p.kv = kv;
      p.dtype = kv_type_of<T>();
      p.num_q_heads = sh.num_q_heads;
      p.q = q;
      p.q_pos = L.dplan->q_pos();
      p.q_begin = L.dplan->q_begin();
      p.q_len = L.dplan->q_len();
      p.out = out;
      p.lse = lse;
      p.scale = cfg_.scale;
      p.tiles = static_cast<const PrefillTile*>(L.tiles_dev.get());
      p.num_tiles = static_cast<int>(L.tiles.size());
      prefill_attention(p, stream);
    }
  }

  const DevicePlan* device_plan(int layer) const {
    return layers_.at(static_cast<std::size_t>(layer)).dplan.get();
  }

 private:
  struct CudaFree {
    void operator()(void* p) const { cudaFree(p); }
  };
  struct Layer {
    AttentionPlan plan;
    std::unique_ptr<DevicePlan> dplan;
    std::vector<PrefillTile> tiles;
    std::unique_ptr<void, CudaFree> tiles_dev;
    bool decode = true;
  };

  const CudaKVHeadStore<T>& store_;
  CudaAttentionConfig cfg_;
  int max_units_ = 0;
  std::size_t ws_bytes_ = 0;
  std::int64_t max_tiles_ = 0;
  // The decode workspace (chunk lists, partial outputs) of each stream plan() was called with: layers that
  // run on one stream in order share one; layers running concurrently on different streams never do.
  // Allocated in plan() (host side), so that run() allocates nothing and can be captured in a graph.
  void* workspace_for(cudaStream_t stream, bool create) {
    for (auto& [s, w] : workspaces_)
      if (s == stream) return w.get();
    check_arg(create, "CudaAttention::run: stream ", static_cast<const void*>(stream),
              " was not passed to plan(): plan and run each step on the same stream");
    void* p = nullptr;
    check_cuda(cudaMalloc(&p, ws_bytes_), "cudaMalloc(decode workspace)");
    workspaces_.emplace_back(stream, std::unique_ptr<void, CudaFree>(p));
    return p;
  }

  std::vector<std::pair<cudaStream_t, std::unique_ptr<void, CudaFree>>> workspaces_;
  std::unique_ptr<void, CudaFree> rope_inv_freq_;
  int rope_half_ = 0;
  RopePairing rope_pairing_ = RopePairing::kRotateHalf;
  std::vector<Layer> layers_;
};

}  // namespace redknot::cuda
