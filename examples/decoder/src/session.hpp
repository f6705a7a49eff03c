// One decoding sequence of a LlamaModel whose KV cache is a redknot::KVHeadStore.
//
// The forward pass is the standard Llama block (RMSNorm, RoPE, GQA attention, SwiGLU) with GEMMs in BLAS; the
// attention reads K/V back from the store through redknot's CPU SegPagedAttention, so what a head can see is
// exactly what the head map lets the store keep. "dense" is simply the all-global map.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "llama_model.hpp"
#include "redknot/attention_plan.hpp"
#include "redknot/head_map.hpp"
#include "redknot/kv_head_store.hpp"
#include "redknot/rope.hpp"

namespace redknot::decoder {

struct SessionOptions {
  int max_context = 8192;  // positions the pool is sized for
  int chunk = 256;         // prefill chunk (tokens per forward call in prefill())
  int page_size = 16;
  int threads = 0;  // attention threads; 0: OpenMP default
};

// Sees the post-RoPE queries [n, Hq, D], keys and values [n, Hk, D] of every layer of every forward call, for
// tools that measure attention (the head profiler). Called after the keys are appended to the store.
class ForwardObserver {
 public:
  virtual ~ForwardObserver() = default;
  virtual void on_qkv(int layer, std::span<const std::int32_t> positions, std::span<const float> q,
                      std::span<const float> k, std::span<const float> v) = 0;
};

using Store = KVHeadStore<float>;

class Session {
 public:
  Session(const LlamaModel& model, HeadMap map, SessionOptions opt = {});

  // Runs `tokens` at the next positions. logits receives [n, vocab] when all_logits, else the last row only.
  void forward(std::span<const std::int32_t> tokens, bool all_logits, std::vector<float>& logits,
               ForwardObserver* observer = nullptr);
  // forward() over chunks of opt.chunk tokens; returns the last token's logits. progress(done, total) per
  // chunk.
  std::vector<float> prefill(std::span<const std::int32_t> tokens,
                             const std::function<void(std::size_t, std::size_t)>& progress = {},
                             ForwardObserver* observer = nullptr);
  // Starts over with an empty sequence (same store, same map).
  void reset();

  std::int32_t position() const { return pos_; }
  const Store& store() const { return *store_; }
  SeqId sequence() const { return seq_; }
  SequenceStats kv_stats() const { return store_->sequence_stats(seq_); }
  const SessionOptions& options() const { return opt_; }
  const LlamaModel& model() const { return model_; }

 private:
  // Rotates x [n, n_heads, head_dim] by the angles of rope_cs_ (n positions).
  void rope(float* x, int n_heads, std::size_t n) const;

  const LlamaModel& model_;
  SessionOptions opt_;
  std::unique_ptr<Store> store_;
  std::vector<AttentionPlan> plans_;  // one per layer, so plan updates stay incremental
  SeqId seq_ = 0;
  std::int32_t pos_ = 0;
  // Activations, reused across calls.
  std::vector<float> x_, h_, q_, k_, v_, att_, gate_, up_;
  // cos/sin of every (position, pair) of the current forward call [n][head_dim / 2]: formed once per call
  // and shared by the Q and K of every layer.
  std::vector<RopeCosSin> rope_cs_;
};

std::int32_t argmax(std::span<const float> logits);

}  // namespace redknot::decoder
