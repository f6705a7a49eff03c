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
  float rope_base = 10000.f;
  float rope_position_scale = 1.f;  // "linear" RoPE scaling divides positions by the factor
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
  // RoPE inverse frequencies [head_dim / 2], llama3 frequency factors already applied.
  const std::vector<float>& inv_freq() const { return inv_freq_; }

 private:
  LlamaConfig cfg_;
  std::vector<float> tok_embd_, out_norm_, output_;
  std::vector<LlamaLayer> layers_;
  std::vector<float> inv_freq_;
};

}  // namespace redknot::decoder
