// Llama-family weights and hyper-parameters read from GGUF (architecture "llama"), dequantised to fp32 once.
//
// Conventions are those of GGUF llama files: a weight matrix is stored [out][in] (ggml dims {in, out}); Q and
// K projections are permuted at conversion so that RoPE rotates adjacent pairs (2i, 2i + 1); a missing
// output.weight means the embeddings are tied.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "gguf.hpp"
#include "redknot/rope.hpp"

namespace redknot::decoder {

struct LlamaConfig {
  int n_layers = 0;
  int d_model = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int d_ff = 0;
  int vocab = 0;
  int context_length = 0;
  float rms_eps = 1e-5f;
  // RoPE as the core defines it: adjacent pairs (kInterleaved), theta = rope.freq_base, rope.scaling.type
  // "linear" or "llama3" with its factors (other scaling types are rejected).
  RopeConfig rope;
  std::string name;

  static LlamaConfig from_gguf(const GgufFile& f);
};

struct LlamaLayer {
  std::vector<float> attn_norm, wq, wk, wv, wo;
  std::vector<float> ffn_norm, w_gate, w_up, w_down;
};

class LlamaModel {
 public:
  static LlamaModel load(const GgufFile& f);

  const LlamaConfig& config() const { return cfg_; }
  const std::vector<LlamaLayer>& layers() const { return layers_; }
  const std::vector<float>& embeddings() const { return tok_embd_; }  // [vocab][d_model]
  const std::vector<float>& output_norm() const { return out_norm_; }
  // [vocab][d_model]: output.weight, or the embeddings when tied.
  const std::vector<float>& output() const { return output_.empty() ? tok_embd_ : output_; }
  // RoPE inverse frequencies [head_dim / 2]: rope_inv_freq(config().rope), divided by the file's
  // rope_freqs.weight when it ships one (llama3-style GGUFs store the llama3 rule as per-frequency divisors).
  const std::vector<double>& inv_freq() const { return inv_freq_; }

 private:
  LlamaConfig cfg_;
  std::vector<float> tok_embd_, out_norm_, output_;
  std::vector<LlamaLayer> layers_;
  std::vector<double> inv_freq_;
};

}  // namespace redknot::decoder
