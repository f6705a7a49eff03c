// Finding and loading the model the tools run: $REDKNOT_MODEL, else the first .gguf under $REDKNOT_MODEL_DIR
// or ~/.cache/redknot/models (where scripts/get-model.sh puts it).
#pragma once

#include <string>

#include "llama_model.hpp"
#include "tokenizer.hpp"

namespace redknot::decoder {

// Empty when nothing is found.
std::string default_model_path();

struct LoadedModel {
  LlamaModel model;
  Tokenizer tokenizer;
};

// Loads weights and tokenizer from `path`, or from default_model_path() when `path` is empty; throws with a
// hint (pass --model or run scripts/get-model.sh) when there is no model.
LoadedModel load_model(const std::string& path);

}  // namespace redknot::decoder
