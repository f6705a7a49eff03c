// Retrieval-augmented requests over precomputed documents (position-independent chunk reuse).
//
// A DocumentCache prefills each document ALONE once (positions 0..n-1, one forward over all its tokens so no
// head drops a key) and registers its K/V in the store's chunk registry under chunk_key(model_id, tokens). A
// request is [system][doc_a][doc_b]...[question] with any subset and order of documents:
//   1. the system tokens are prefilled normally;
//   2. each document in turn is spliced at its offset (zero-copy) and, per the recompute strategy, some of
//      its tokens are recomputed: CacheBlend-style, the tokens' fresh K/V at an early layer (default 1) are
//      computed with the real context (layers below run them as queries over the spliced cache), compared
//      with the cached rows (KVHeadStore::read_rows, kv_deviation), select_recompute() picks tokens, and
//      those run through every layer at their true positions, their fresh K/V overwriting the cached rows
//      for this request only (copy-on-write);
//   3. the question is prefilled normally and its last logits give the first answer token.
// Documents are processed in request order, so a document's recomputed tokens attend over the already
// corrected documents before it (the causal order of a full prefill).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "llama_model.hpp"
#include "redknot/recompute.hpp"
#include "session.hpp"

namespace redknot::decoder {

// A reuse method: which tokens of each spliced document to recompute, and at which layer the deviation
// strategies measure the K/V deviation.
struct RecomputeSpec {
  RecomputeConfig cfg;
  int layer = 1;
  // Select whole pages of the document instead of tokens: the strategy runs on pages (deviation summed over
  // a page's tokens, first_k rounded up to pages, ratio of pages) and every token of a chosen page is
  // recomputed. Copy-on-write copies pages, so scattered tokens cost a private copy of nearly every page;
  // page-aligned selection costs ratio x the document.
  bool pages = false;
  // Also recompute every document token among the last `tail` before the question: the keys the question's
  // local heads read (sink + window) come from there, global heads read everything. 0: none.
  int tail = 0;
  bool needs_deviation() const {
    return cfg.strategy == RecomputeStrategy::kDeviationTopK ||
           cfg.strategy == RecomputeStrategy::kGlobalDeviationTopK;
  }
};

// "none", "first_k:K", "deviation_topk:R", "global_deviation_topk:R:K", each optionally followed by "@L" (the
// deviation layer; default 1), "+tail:N" (also the last N document tokens) and "/page" (page-aligned
// selection), in this order. query_topk needs attention the
// decoder does not measure: rejected.
RecomputeSpec parse_recompute_spec(std::string_view text);
// The decoder's default (docs/reuse.md): head-aware deviation on 5% of each document plus its first 16
// tokens, plus the last 1024 document tokens (the reach of most local heads' windows from the question).
inline constexpr const char* kDefaultRecomputeSpec = "global_deviation_topk:0.05:16+tail:1024";
std::string recompute_spec_name(const RecomputeSpec& spec);

class DocumentCache {
 public:
  // `store` holds the registry (Session::make_store: it needs the model's RoPE); model_id names the weights
  // in the chunk keys. opt.threads applies to the prefills.
  DocumentCache(const LlamaModel& model, std::shared_ptr<Store> store, std::string model_id,
                SessionOptions opt = {});

  ChunkKey key(std::span<const std::int32_t> tokens) const;
  bool contains(std::span<const std::int32_t> tokens) const;
  // Prefills the document alone and registers it, unless the store already holds it. Returns the seconds the
  // prefill took (0 when cached).
  double add(std::span<const std::int32_t> tokens);
  // Seconds the prefill of a document this cache added took (0 if unknown).
  double prefill_seconds(std::span<const std::int32_t> tokens) const;

  const std::shared_ptr<Store>& store() const { return store_; }
  const LlamaModel& model() const { return model_; }

 private:
  const LlamaModel& model_;
  std::shared_ptr<Store> store_;
  std::string model_id_;
  SessionOptions opt_;
  std::map<ChunkKey, double> seconds_;
};

struct RagRequest {
  std::vector<std::int32_t> system;                  // prefilled normally (may be empty)
  std::vector<std::vector<std::int32_t>> documents;  // in request order; each must be cached
  std::vector<std::int32_t> question;                // prefilled after the documents (not empty)
  // What a full prefill runs: the concatenation.
  std::vector<std::int32_t> tokens() const;
  std::int64_t document_tokens() const;
};

struct RagResult {
  std::vector<float> logits;  // of the last question token: the first answer token's distribution
  std::int64_t document_tokens = 0;
  std::int64_t recomputed = 0;  // document tokens run through every layer again
  double system_s = 0, splice_s = 0, select_s = 0, recompute_s = 0, question_s = 0;
  double ttft_s = 0;  // request in -> first answer token chosen (warm: documents already cached)
};

// Runs `req` on `s`, which must hold an empty sequence (position 0) in the cache's store.
RagResult prefill_rag(Session& s, const DocumentCache& cache, const RagRequest& req,
                      const RecomputeSpec& spec);

// Greedy continuation from the logits of the last prompt token: up to max_new tokens, stopping after an
// end-of-generation token. Optionally records the log-softmax of the first `keep` distributions.
std::vector<std::int32_t> greedy_answer(Session& s, std::vector<float> logits, int max_new,
                                        const std::function<bool(std::int32_t)>& is_end,
                                        std::vector<std::vector<float>>* log_probs = nullptr, int keep = 0);
// Log-softmax distributions of the first forced.size() answer positions when the answer is `forced` (teacher
// forcing from the logits of the last prompt token): the last forced token is not run.
std::vector<std::vector<float>> forced_log_probs(Session& s, std::vector<float> logits,
                                                 std::span<const std::int32_t> forced);
std::vector<float> log_softmax(std::span<const float> logits);
// KL(p || q) of two log-softmax distributions, in nats.
double kl_divergence(std::span<const float> log_p, std::span<const float> log_q);

}  // namespace redknot::decoder
