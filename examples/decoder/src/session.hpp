// One decoding sequence of a LlamaModel whose KV cache is a redknot::KVHeadStore.
//
// The forward pass is the standard Llama block (RMSNorm, RoPE, GQA attention, SwiGLU) with GEMMs in BLAS; the
// attention reads K/V back from the store through redknot's CPU SegPagedAttention, so what a head can see is
// exactly what the head map lets the store keep. "dense" is simply the all-global map.
//
// Chunk reuse (src/rag.hpp): a session may live in a store shared with other sessions and the store's chunk
// registry; it can splice a registered chunk at its next position, measure fresh K/V of spliced tokens at one
// layer (fresh_kv) and recompute a scattered set of spliced tokens through every layer (recompute), their
// fresh K/V overwriting the cached rows for this sequence only.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "llama_model.hpp"
#include "redknot/attention_plan.hpp"
#include "redknot/head_map.hpp"
#include "redknot/kv_head_store.hpp"
#include "redknot/rope.hpp"
#include "redknot/tiers.hpp"

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
  // A session with a store of its own, sized for opt.max_context tokens in chunks of opt.chunk.
  Session(const LlamaModel& model, HeadMap map, SessionOptions opt = {});
  // A new sequence in a store shared with other sessions (a document cache, concurrent requests): the pool is
  // the caller's to size (make_store); opt.max_context and opt.chunk only bound this session's calls.
  Session(const LlamaModel& model, std::shared_ptr<Store> store, SessionOptions opt = {});
  // Frees the sequence unless release() handed it over.
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // A store for `model` with its RoPE (so chunks can be spliced at other offsets) and num_pages pages (host
  // memory is reserved, not touched: only pages in use cost memory).
  static std::shared_ptr<Store> make_store(const LlamaModel& model, HeadMap map, int page_size,
                                           std::int64_t num_pages);

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

  // ---- chunk reuse
  // Runs `tokens` at the next positions in ONE forward call, without logits and without retiring queries, so
  // every head keeps every key: what KVHeadStore::register_chunk needs of a chunk prefilled alone.
  void prefill_chunk(std::span<const std::int32_t> tokens);
  // Hands the sequence over (e.g. to register_chunk, which takes it out of the sequence registry): the
  // session no longer frees it and holds no sequence until reset().
  SeqId release();
  // Splices the registered chunk `key` at position() (KVHeadStore::splice: zero-copy) and advances past it.
  // first_query: the first position whose query will still run (-1: none inside the chunk). Returns the
  // chunk's length.
  std::int32_t splice(const ChunkKey& key, std::int32_t first_query = -1);
  // Fresh K and V [n, n_kv_heads, head_dim] of tokens the sequence already holds (spliced), at `layer`, with
  // the sequence's real context: layers below run them as queries over the cached K/V and write nothing.
  // positions strictly increase, each in [query_floor, position()); gaps are allowed. Keys are rotated for
  // their positions (what KVHeadStore::read_rows returns for the cached rows).
  void fresh_kv(std::span<const std::int32_t> tokens, std::span<const std::int32_t> positions, int layer,
                std::vector<float>& k, std::vector<float>& v);
  // Recomputes tokens the sequence already holds through every layer at their positions (strictly
  // increasing, any gaps, each in [query_floor, position())): at each layer their fresh K/V overwrite the
  // cached rows (KVHeadStore::overwrite, copy-on-write: a shared chunk stays intact), then they attend as
  // queries over the sequence (the causal mask orders them among themselves and the cached tokens).
  void recompute(std::span<const std::int32_t> tokens, std::span<const std::int32_t> positions);
  // A session on the same store continuing a fork of this sequence (shares its pages).
  std::unique_ptr<Session> fork() const;

  // ---- preemption (redknot::swap_out / swap_in, tiers.hpp)
  // Writes the sequence as objects "<name>.l<layer>.{local,global}" and frees its pages: the session then
  // holds no sequence (position() stays, so swap_in continues where it stopped). By head class: local heads'
  // objects to `hot` (or `cold` when `hot` refuses them), global heads' to `cold`. model_fp:
  // model_fingerprint of the model id. Unavailable when a tier refuses an object (the sequence stays).
  SwapTicket swap_out(KvTier& hot, KvTier& cold, std::uint64_t model_fp, std::string_view name);
  // Every object in one tier.
  SwapTicket swap_out(KvTier& tier, std::uint64_t model_fp, std::string_view name) {
    return swap_out(tier, tier, model_fp, name);
  }
  // Restores a sequence this session swapped out, bit for bit, under a new sequence id (each object from the
  // tier swap_out put it in; prefetcher: read them ahead). A fresh session (nothing run yet) adopts the
  // ticket's sequence and its position instead: a sequence another session or process swapped out (the
  // decode side of prefill/decode transfer). Unavailable when an object is missing or fails its checks (the
  // sequence is lost, the session stays empty); PoolExhausted when the pool lacks pages (nothing changed:
  // make room and retry).
  void swap_in(const SwapTicket& ticket, KvTier& hot, KvTier& cold, TierPrefetcher* prefetcher = nullptr,
               SwapInStats* stats = nullptr);
  void swap_in(const SwapTicket& ticket, KvTier& tier) { swap_in(ticket, tier, tier); }
  // swap_in whose layers arrive while the next forward runs (SwapInPipeline): the sequence is laid out now
  // (PoolExhausted here, nothing changed) and the mover reads, checks and decodes its layers in order, so
  // each layer of the next forward waits only for its own rows. When an object turns out missing or bad,
  // that forward (or whichever call needs the whole sequence first) throws Unavailable: the sequence is lost
  // and the session empty, as after a failed swap_in. The tiers and the mover must outlive the restore
  // (until the next forward over every layer, or fork / splice / swap_out / release / reset).
  void swap_in_pipelined(const SwapTicket& ticket, KvTier& hot, KvTier& cold, TierPrefetcher& mover);
  bool restoring() const { return restore_ != nullptr; }
  // Bytes read, time the forward waited for rows, and the start of the restore to its last layer, of the
  // last pipelined swap-in that finished.
  const SwapInStats& last_pipelined_swap_in() const { return restore_stats_; }
  bool swapped_out() const { return swapped_out_; }

  std::int32_t position() const { return pos_; }
  const Store& store() const { return *store_; }
  Store& store() { return *store_; }
  const std::shared_ptr<Store>& shared_store() const { return store_; }
  SeqId sequence() const { return seq_; }
  SequenceStats kv_stats() const { return store_->sequence_stats(seq_); }
  const SessionOptions& options() const { return opt_; }
  const LlamaModel& model() const { return model_; }

 private:
  // What a layer does with the K/V it computes: append them (a normal forward), overwrite the rows the
  // sequence already holds (recompute), or leave the store as it is (fresh_kv).
  enum class KvWrite { kAppend, kOverwrite, kNone };

  Session(const LlamaModel& model, std::shared_ptr<Store> store, SessionOptions opt, SeqId seq,
          std::int32_t pos);
  // The pipelined restore: layer l's rows written (Unavailable when the restore failed: the session is left
  // empty), every layer's, or the restore abandoned (the pipeline frees an unfinished sequence).
  // Where a swap-in leaves the session: its own position, or for a fresh session the ticket's (checked).
  std::int32_t swap_in_position(const SwapTicket& ticket, const char* op) const;
  // Takes restored sequence `id` at position `pos` (a fresh session's empty sequence is freed).
  void adopt(SeqId id, std::int32_t pos);
  void restore_layer(int layer);
  void finish_restore();
  void drop_restore();
  // Rotates x [n, n_heads, head_dim] by the angles of rope_cs_ (n positions).
  void rope(float* x, int n_heads, std::size_t n) const;
  // The layer stack over tokens at `positions`: layers [0, stop_layer) in full; when stop_layer < n_layers,
  // only the K/V of layer stop_layer (left in k_, v_). The final hidden states are in x_.
  void run_layers(std::span<const std::int32_t> tokens, std::span<const std::int32_t> positions, KvWrite kv,
                  int stop_layer, ForwardObserver* observer);

  const LlamaModel& model_;
  SessionOptions opt_;
  std::shared_ptr<Store> store_;
  std::vector<AttentionPlan> plans_;  // one per layer, so plan updates stay incremental
  SeqId seq_ = 0;
  std::int32_t pos_ = 0;
  bool swapped_out_ = false;  // seq_ is 0 and pos_ is where the swapped-out sequence stopped
  std::unique_ptr<SwapInPipeline<float>> restore_;  // a pipelined swap-in still writing seq_'s layers
  SwapInStats restore_stats_;
  // Activations, reused across calls.
  std::vector<float> x_, h_, q_, k_, v_, att_, gate_, up_;
  // cos/sin of every (position, pair) of the current forward call [n][head_dim / 2]: formed once per call
  // and shared by the Q and K of every layer.
  std::vector<RopeCosSin> rope_cs_;
};

std::int32_t argmax(std::span<const float> logits);

}  // namespace redknot::decoder
