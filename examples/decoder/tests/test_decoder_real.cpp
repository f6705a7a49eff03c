// The real model (SmolLM2-135M-Instruct, Q4_1 GGUF) against a reference run of an independent numpy
// implementation (examples/decoder/reference/numpy_reference.py), recorded in tests/fixtures. Skipped when
// the model has not been downloaded (scripts/get-model.sh).
#include <catch2/catch_test_macros.hpp>

#include <fstream>
#include <nlohmann/json.hpp>

#include "generate.hpp"
#include "gguf.hpp"
#include "llama_model.hpp"
#include "model_path.hpp"
#include "session.hpp"
#include "tokenizer.hpp"

using namespace redknot;
using namespace redknot::decoder;

TEST_CASE("SmolLM2-135M matches the numpy reference", "[decoder][real]") {
  const std::string path = default_model_path();
  if (path.empty()) SKIP("model not downloaded (scripts/get-model.sh)");
  std::ifstream in(std::string(REDKNOT_DECODER_FIXTURES) + "/smollm2_reference.json");
  REQUIRE(in);
  const nlohmann::json fx = nlohmann::json::parse(in);
  const GgufFile gguf = GgufFile::open(path);
  const LlamaModel model = LlamaModel::load(gguf);
  const Tokenizer tok = Tokenizer::from_gguf(gguf);

  for (const auto& c : fx["cases"]) {
    const std::string text = c["text"];
    const auto want_ids = c["prompt_ids"].get<std::vector<std::int32_t>>();
    INFO(text);
    CHECK(tok.encode(text) == want_ids);

    // Prompt logits: top-5 ids of the last position agree and values are close (fp32 vs float64 reference).
    SessionOptions so;
    so.max_context = static_cast<int>(want_ids.size()) + 64;
    so.chunk = 16;
    Session s(model, HeadMap::all_global(model.config().n_layers, model.config().n_kv_heads), so);
    const std::vector<float> logits = s.prefill(want_ids);
    const auto top = c["last_top5"].get<std::vector<std::int32_t>>();
    const auto top_val = c["last_top5_logits"].get<std::vector<double>>();
    CHECK(argmax(logits) == top[0]);
    for (std::size_t i = 0; i < top.size(); ++i)
      CHECK(std::abs(logits[static_cast<std::size_t>(top[i])] - top_val[i]) < 0.05);

    GenerateOptions go;
    go.max_new = static_cast<int>(c["greedy"].size());
    go.progress = false;
    go.session.chunk = 16;
    const auto r = generate_tokens(
        model, tok, want_ids, HeadMap::all_global(model.config().n_layers, model.config().n_kv_heads), go);
    CHECK(r.tokens == c["greedy"].get<std::vector<std::int32_t>>());
  }
}
