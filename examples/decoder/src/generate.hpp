// Prompt in, text out: the tokenise / chunked prefill / greedy decode loop shared by the CLI, the demo and
// tests.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "llama_model.hpp"
#include "redknot/head_map.hpp"
#include "session.hpp"
#include "tokenizer.hpp"

namespace redknot::decoder {

struct GenerateOptions {
  std::string mode = "redknot";  // "dense" (every head global) or "redknot" (head_map_path)
  std::string head_map_path;     // redknot mode; empty: the map must be given to generate() directly
  int max_new = 64;
  bool chat = true;      // wrap the prompt in the model's chat template
  bool progress = true;  // progress bar on stderr during prefill
  // max_context 0 (the default here): sized to prompt + max_new, so the pool holds no more than needed.
  SessionOptions session = [] {
    SessionOptions so;
    so.max_context = 0;
    return so;
  }();
};

struct GenerateResult {
  std::string text;
  std::vector<std::int32_t> tokens;  // generated ids
  std::size_t prompt_tokens = 0;
  double ttft_s = 0;        // prompt in -> first generated token out (prefill + first sample)
  double decode_tok_s = 0;  // generated tokens after the first, per second
  std::int64_t kv_bytes = 0, kv_bytes_global = 0, kv_bytes_local = 0;  // at the end of generation
  int global_heads = 0, total_heads = 0;
};

// The head map a mode stands for.
HeadMap head_map_for(const std::string& mode, const std::string& path, const LlamaConfig& c);

GenerateResult generate(const LlamaModel& model, const Tokenizer& tok, const std::string& prompt,
                        const GenerateOptions& opt);
GenerateResult generate_tokens(const LlamaModel& model, const Tokenizer& tok,
                               std::vector<std::int32_t> prompt, const HeadMap& map,
                               const GenerateOptions& opt);

}  // namespace redknot::decoder
