#include "llama_model.hpp"

#include <cmath>
#include <numbers>

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
  c.rope_base = static_cast<float>(f.get_float("llama.rope.freq_base", 10000.0));
  if (f.get_string("llama.rope.scaling.type") == "linear")
    c.rope_position_scale = 1.f / static_cast<float>(f.get_float("llama.rope.scaling.factor", 1.0));
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

// llama3 scaling stretches low frequencies by `factor`, keeps high ones and blends in between.
void apply_llama3_scaling(const GgufFile& f, std::vector<float>& inv_freq) {
  const double factor = f.get_float("llama.rope.scaling.factor", 8.0);
  const double low = f.get_float("llama.rope.scaling.low_freq_factor", 1.0);
  const double high = f.get_float("llama.rope.scaling.high_freq_factor", 4.0);
  const double orig = f.get_float("llama.rope.scaling.original_context_length", 8192.0);
  for (float& w : inv_freq) {
    const double wavelen = 2 * std::numbers::pi / w;
    if (wavelen < orig / high) continue;
    if (wavelen > orig / low) {
      w = static_cast<float>(w / factor);
      continue;
    }
    const double smooth = (orig / wavelen - low) / (high - low);
    w = static_cast<float>((1 - smooth) * w / factor + smooth * w);
  }
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
  const int half = c.head_dim / 2;
  m.inv_freq_.resize(static_cast<std::size_t>(half));
  for (int i = 0; i < half; ++i)
    m.inv_freq_[static_cast<std::size_t>(i)] =
        static_cast<float>(std::pow(static_cast<double>(c.rope_base), -2.0 * i / c.head_dim));
  if (f.find_tensor("rope_freqs.weight")) {
    // llama3-style GGUFs ship the per-frequency divisors as a tensor.
    const std::vector<float> factors = load_checked(f, "rope_freqs.weight", half, 1);
    for (int i = 0; i < half; ++i)
      m.inv_freq_[static_cast<std::size_t>(i)] /= factors[static_cast<std::size_t>(i)];
  } else if (f.get_string("llama.rope.scaling.type") == "llama3") {
    apply_llama3_scaling(f, m.inv_freq_);
  }
  return m;
}

}  // namespace redknot::decoder
