// A tiny random Llama written as GGUF by the tests themselves: 2 layers, GQA, every supported tensor type and
// a byte-level BPE vocabulary (256 byte tokens, a few merges, ChatML specials).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace redknot::decoder {
class LlamaModel;
}

namespace redknot::decoder::testing {

struct TinySpec {
  int n_layers = 2, d_model = 64, n_heads = 4, n_kv_heads = 2, d_ff = 96, context = 512;
  std::uint32_t seed = 7;
  // RoPE metadata: llama.rope.scaling.type when not empty ("linear": factor 4; "llama3": factor 8, low 1,
  // high 4, original context 64), and a rope_freqs.weight tensor of divisors 1, 2, 3, ... when rope_freqs.
  std::string rope_scaling;
  bool rope_freqs = false;
};

// GGUF bytes of the tiny model.
std::vector<std::uint8_t> tiny_model_gguf(const TinySpec& spec = {});

// The default tiny model, parsed and loaded once per process.
const LlamaModel& tiny_llama();

// n token ids drawn uniformly from [3, vocab) (ids below 3 are specials of the tiny vocabulary).
std::vector<std::int32_t> random_tokens(std::size_t n, int vocab, std::uint32_t seed);

}  // namespace redknot::decoder::testing
