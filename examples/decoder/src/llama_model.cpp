#include "llama_model.hpp"

#include "redknot/error.hpp"

namespace redknot::decoder {

LlamaConfig LlamaConfig::from_gguf(const GgufFile& f) {
  const std::string arch = f.get_string("general.architecture");
  require(arch == "llama", "decoder: only the 'llama' architecture is supported, got '", arch, "'");
  LlamaConfig c;
  c.n_layers = static_cast<int>(f.get_int("llama.block_count"));
  c.d_model = static_cast<int>(f.get_int("llama.embedding_length"));
  c.n_heads = static_cast<int>(f.get_int("llama.attention.head_count"));
  c.n_kv_heads = static_cast<int>(f.get_int("llama.attention.head_count_kv", c.n_heads));
  c.head_dim = static_cast<int>(f.get_int("llama.rope.dimension_count", c.d_model / c.n_heads));
  c.d_ff = static_cast<int>(f.get_int("llama.feed_forward_length"));
  c.context_length = static_cast<int>(f.get_int("llama.context_length", 2048));
  c.rms_eps = static_cast<float>(f.get_float("llama.attention.layer_norm_rms_epsilon", 1e-5));
  c.rope.head_dim = c.head_dim;
  c.rope.pairing = RopePairing::kInterleaved;  // Q and K are permuted at conversion (see the header)
  c.rope.theta = f.get_float("llama.rope.freq_base", 10000.0);
  const std::string scaling = f.get_string("llama.rope.scaling.type");
  if (scaling == "linear") {
    c.rope.scaling = RopeScaling::kLinear;  // positions divided by the factor
    c.rope.factor = f.get_float("llama.rope.scaling.factor", 1.0);
  } else if (scaling == "llama3") {
    // Only used when the file has no rope_freqs.weight (LlamaModel::load).
    c.rope.scaling = RopeScaling::kLlama3;
    c.rope.factor = f.get_float("llama.rope.scaling.factor", 8.0);
    c.rope.low_freq_factor = f.get_float("llama.rope.scaling.low_freq_factor", 1.0);
    c.rope.high_freq_factor = f.get_float("llama.rope.scaling.high_freq_factor", 4.0);
    c.rope.original_max_position =
        static_cast<int>(f.get_float("llama.rope.scaling.original_context_length", 8192.0));
  } else {
    // yarn would also need its attention factor, which the core rotations do not apply.
    require(scaling.empty() || scaling == "none", "decoder: llama.rope.scaling.type='", scaling,
            "' is not supported (none, linear, llama3)");
  }
  validate(c.rope);
  c.name = f.get_string("general.name", "llama");
  c.vocab = static_cast<int>(f.tensor("token_embd.weight").dims[1]);
  require(c.n_heads > 0 && c.n_kv_heads > 0 && c.n_heads % c.n_kv_heads == 0,
          "decoder: head_count=", c.n_heads, " must be a multiple of head_count_kv=", c.n_kv_heads);
  require(c.head_dim * c.n_heads == c.d_model, "decoder: head_dim * head_count != embedding_length (",
          c.head_dim, " * ", c.n_heads, " != ", c.d_model, ")");
  return c;
}

namespace {

std::vector<float> load_checked(const GgufFile& f, const std::string& name, std::int64_t cols,
                                std::int64_t rows) {
  const GgufTensorInfo& t = f.tensor(name);
  const std::int64_t got_rows = t.dims.size() > 1 ? t.dims[1] : 1;
  require(t.dims[0] == cols && got_rows == rows, "decoder: tensor '", name, "' has dims {", t.dims[0], ", ",
          got_rows, "}, expected {", cols, ", ", rows, "}");
  return f.load_f32(name);
}

}  // namespace

LlamaModel LlamaModel::load(const GgufFile& f) {
  LlamaModel m;
  m.cfg_ = LlamaConfig::from_gguf(f);
  const LlamaConfig& c = m.cfg_;
  const std::int64_t d = c.d_model, kv = static_cast<std::int64_t>(c.n_kv_heads) * c.head_dim;
  m.tok_embd_ = load_checked(f, "token_embd.weight", d, c.vocab);
  m.out_norm_ = load_checked(f, "output_norm.weight", d, 1);
  if (f.find_tensor("output.weight")) m.output_ = load_checked(f, "output.weight", d, c.vocab);
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    LlamaLayer L;
    L.attn_norm = load_checked(f, p + "attn_norm.weight", d, 1);
    L.wq = load_checked(f, p + "attn_q.weight", d, d);
    L.wk = load_checked(f, p + "attn_k.weight", d, kv);
    L.wv = load_checked(f, p + "attn_v.weight", d, kv);
    L.wo = load_checked(f, p + "attn_output.weight", d, d);
    L.ffn_norm = load_checked(f, p + "ffn_norm.weight", d, 1);
    L.w_gate = load_checked(f, p + "ffn_gate.weight", d, c.d_ff);
    L.w_up = load_checked(f, p + "ffn_up.weight", d, c.d_ff);
    L.w_down = load_checked(f, p + "ffn_down.weight", c.d_ff, d);
    m.layers_.push_back(std::move(L));
  }
  // llama3-style GGUFs ship the llama3 rule as per-frequency divisors of the unscaled frequencies; they
  // replace the rule, as in llama.cpp.
  const bool freq_divisors = f.find_tensor("rope_freqs.weight") != nullptr;
  if (freq_divisors) m.cfg_.rope.scaling = RopeScaling::kDefault;
  m.inv_freq_ = rope_inv_freq(c.rope);
  if (freq_divisors) {
    const auto half = static_cast<std::int64_t>(m.inv_freq_.size());
    const std::vector<float> divisors = load_checked(f, "rope_freqs.weight", half, 1);
    for (std::size_t i = 0; i < m.inv_freq_.size(); ++i) m.inv_freq_[i] /= divisors[i];
  }
  return m;
}

}  // namespace redknot::decoder
