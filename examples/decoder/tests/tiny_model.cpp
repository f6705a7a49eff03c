#include "tiny_model.hpp"

#include <cmath>
#include <random>

#include "gguf.hpp"
#include "gguf_writer.hpp"
#include "llama_model.hpp"
#include "unicode.hpp"

namespace redknot::decoder::testing {

namespace {

// The GPT-2 byte alphabet, rebuilt here independently of the tokenizer under test.
std::string byte_symbol(int b) {
  int n = 0;
  auto printable = [](int x) {
    return (x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255);
  };
  for (int x = 0; x < b; ++x) n += printable(x) ? 0 : 1;
  std::string s;
  utf8_append(s, static_cast<char32_t>(printable(b) ? b : 256 + n));
  return s;
}

}  // namespace

std::vector<std::uint8_t> tiny_model_gguf(const TinySpec& sp) {
  std::vector<std::string> tokens = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
  std::vector<std::int32_t> types = {3, 3, 3};
  for (int b = 0; b < 256; ++b) {
    tokens.push_back(byte_symbol(b));
    types.push_back(1);
  }
  const std::string sp_sym = byte_symbol(' ');
  const std::vector<std::string> merges = {"h e", sp_sym + " t", "l l", "he ll", sp_sym + "t he"};
  for (const auto& m : merges) {
    const auto at = m.find(' ');
    tokens.push_back(m.substr(0, at) + m.substr(at + 1));
    types.push_back(1);
  }
  const int vocab = static_cast<int>(tokens.size());
  const int hd = sp.d_model / sp.n_heads, kvd = sp.n_kv_heads * hd;

  GgufWriter w;
  w.set_string("general.architecture", "llama");
  w.set_string("general.name", "redknot-tiny");
  w.set_u32("llama.block_count", static_cast<std::uint32_t>(sp.n_layers));
  w.set_u32("llama.context_length", static_cast<std::uint32_t>(sp.context));
  w.set_u32("llama.embedding_length", static_cast<std::uint32_t>(sp.d_model));
  w.set_u32("llama.feed_forward_length", static_cast<std::uint32_t>(sp.d_ff));
  w.set_u32("llama.attention.head_count", static_cast<std::uint32_t>(sp.n_heads));
  w.set_u32("llama.attention.head_count_kv", static_cast<std::uint32_t>(sp.n_kv_heads));
  w.set_u32("llama.rope.dimension_count", static_cast<std::uint32_t>(hd));
  w.set_f32("llama.rope.freq_base", 10000.f);
  if (!sp.rope_scaling.empty()) {
    w.set_string("llama.rope.scaling.type", sp.rope_scaling);
    w.set_f32("llama.rope.scaling.factor", sp.rope_scaling == "llama3" ? 8.f : 4.f);
    if (sp.rope_scaling == "llama3") {
      w.set_f32("llama.rope.scaling.low_freq_factor", 1.f);
      w.set_f32("llama.rope.scaling.high_freq_factor", 4.f);
      w.set_u32("llama.rope.scaling.original_context_length", 64);
    }
  }
  w.set_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  w.set_string("tokenizer.ggml.model", "gpt2");
  w.set_string("tokenizer.ggml.pre", "smollm");
  w.set_strings("tokenizer.ggml.tokens", tokens);
  w.set_i32s("tokenizer.ggml.token_type", types);
  w.set_strings("tokenizer.ggml.merges", merges);
  w.set_u32("tokenizer.ggml.bos_token_id", 1);
  w.set_u32("tokenizer.ggml.eos_token_id", 2);
  w.set_bool("tokenizer.ggml.add_bos_token", false);
  w.set_string(
      "tokenizer.chat_template",
      "{{'<|im_start|>system\nYou are tiny.<|im_end|>\n'}}{{'<|im_start|>' + message['role'] + '\n'}}");

  std::mt19937 rng(sp.seed);
  auto rand = [&](std::size_t n, float scale) {
    std::normal_distribution<float> nd(0.f, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = nd(rng);
    return v;
  };
  auto ones = [&](std::size_t n) {
    std::vector<float> v = rand(n, 0.1f);
    for (auto& x : v) x += 1.f;
    return v;
  };
  const auto d = static_cast<std::size_t>(sp.d_model), ff = static_cast<std::size_t>(sp.d_ff);
  const float ws = 1.f / std::sqrt(static_cast<float>(sp.d_model));
  w.add_tensor("token_embd.weight", {sp.d_model, vocab}, GgmlType::kQ8_0, rand(d * vocab, 1.f));
  w.add_tensor("output_norm.weight", {sp.d_model}, GgmlType::kF32, ones(d));
  for (int l = 0; l < sp.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    w.add_tensor(p + "attn_norm.weight", {sp.d_model}, GgmlType::kF32, ones(d));
    w.add_tensor(p + "attn_q.weight", {sp.d_model, sp.d_model}, GgmlType::kQ4_1, rand(d * d, 3 * ws));
    w.add_tensor(p + "attn_k.weight", {sp.d_model, kvd}, GgmlType::kQ4_0, rand(d * kvd, 3 * ws));
    w.add_tensor(p + "attn_v.weight", {sp.d_model, kvd}, GgmlType::kF16, rand(d * kvd, ws));
    w.add_tensor(p + "attn_output.weight", {sp.d_model, sp.d_model}, GgmlType::kBF16, rand(d * d, ws));
    w.add_tensor(p + "ffn_norm.weight", {sp.d_model}, GgmlType::kF32, ones(d));
    w.add_tensor(p + "ffn_gate.weight", {sp.d_model, sp.d_ff}, GgmlType::kQ8_0, rand(d * ff, ws));
    w.add_tensor(p + "ffn_up.weight", {sp.d_model, sp.d_ff}, GgmlType::kQ4_1, rand(d * ff, ws));
    w.add_tensor(p + "ffn_down.weight", {sp.d_ff, sp.d_model}, GgmlType::kF32, rand(ff * d, ws));
  }
  if (sp.rope_freqs) {
    std::vector<float> divisors(static_cast<std::size_t>(hd / 2));
    for (std::size_t i = 0; i < divisors.size(); ++i) divisors[i] = static_cast<float>(i + 1);
    w.add_tensor("rope_freqs.weight", {hd / 2}, GgmlType::kF32, divisors);
  }
  return w.bytes();
}

std::vector<std::int32_t> random_tokens(std::size_t n, int vocab, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(3, vocab - 1);
  std::vector<std::int32_t> t(n);
  for (auto& x : t) x = d(rng);
  return t;
}

const LlamaModel& tiny_llama() {
  static const GgufFile f = GgufFile::parse(tiny_model_gguf(), "tiny");
  static const LlamaModel m = LlamaModel::load(f);
  return m;
}

}  // namespace redknot::decoder::testing
