// Measures what heads attend to, for the head profiler: exact softmax rows for a few sampled query positions,
// computed from the post-RoPE Q and a private dense copy of K (never a full L x L map).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "llama_model.hpp"
#include "session.hpp"

namespace redknot::decoder {

struct ProbeConfig {
  ProbeConfig(int window_, int sink_, std::vector<std::int32_t> rows_, std::int32_t key_begin_ = 0,
              bool keep_rows_ = false)
      : window(window_), sink(sink_), rows(std::move(rows_)), key_begin(key_begin_), keep_rows(keep_rows_) {}

  int window = 512;  // the local window the edge mass is measured against
  int sink = 16;
  std::vector<std::int32_t> rows;  // sampled query positions (sorted)
  std::int32_t key_begin = 0;      // kept rows cover keys [key_begin, p]
  bool keep_rows = false;          // keep probability rows (for the prefix-shift comparison)
  // Output error at each of these windows (ascending), for window allocation: error_curve().
  std::vector<int> curve_windows;
  // Keys [span_begin, span_end) whose attention mass span_mass() reports (a needle, for retrieval scores).
  std::int32_t span_begin = -1, span_end = -1;
};

class AttentionProbe : public ForwardObserver {
 public:
  AttentionProbe(const LlamaConfig& c, ProbeConfig cfg);
  void on_qkv(int layer, std::span<const std::int32_t> positions, std::span<const float> q,
              std::span<const float> k, std::span<const float> v) override;

  // Per (layer, kv_head): mean over sampled rows of the attention mass a local head would lose (keys in
  // [sink, p - window]), taking the max over the q heads of the GQA group.
  std::vector<double> edge_mass() const;
  // Per (layer, kv_head): mean over sampled rows of |o_local - o| / |o|, the relative change of the head's
  // attention output when it sees only sink ∪ window (softmax renormalised), max over the GQA group. This is
  // what a local head actually costs the next layer; diffuse mass spread over similar values costs little.
  std::vector<double> output_error() const;
  // Per (layer, kv_head) and curve window w: mean over rows of the output error above at window w, max over
  // the GQA group; [LH][curve_windows.size()].
  std::vector<std::vector<double>> error_curve() const;
  // Per (layer, kv_head): mean over rows of the attention mass on keys [span_begin, span_end), max over the
  // GQA group (the retrieval-head score of Wu et al. when the rows are the tokens that write the answer).
  std::vector<double> span_mass() const;
  // Kept row r of (layer, q head): probabilities of keys [key_begin, rows[r]].
  const std::vector<float>& row(int layer, int q_head, std::size_t r) const;
  std::size_t num_rows() const { return cfg_.rows.size(); }

 private:
  LlamaConfig c_;
  ProbeConfig cfg_;
  std::vector<std::vector<float>> keys_;               // per layer [T][Hk][D]
  std::vector<std::vector<float>> values_;             // per layer [T][Hk][D]
  std::vector<double> edge_sum_;                       // [L][Hk]
  std::vector<double> out_err_sum_;                    // [L][Hk]
  std::vector<double> curve_sum_;                      // [L][Hk][curve windows]
  std::vector<double> span_sum_;                       // [L][Hk]
  std::vector<int> edge_count_;                        // [L][Hk]
  std::vector<std::vector<std::vector<float>>> kept_;  // [L * Hq][row] -> probabilities
};

// Per (layer, kv_head): mean over rows of clamp(1 - cos(a, b), 0, 1) between a head's attention over a chunk
// alone (`alone`) and behind an unrelated prefix (`behind`), max over the GQA group. Both probes must have
// kept the same number of rows, row r of each being the same chunk token.
std::vector<double> prefix_shift(const AttentionProbe& alone, const AttentionProbe& behind,
                                 const LlamaConfig& c);

}  // namespace redknot::decoder
