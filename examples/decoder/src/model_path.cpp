#include "model_path.hpp"

#include <cstdlib>
#include <filesystem>
#include <stdexcept>

#include "gguf.hpp"

namespace redknot::decoder {

std::string default_model_path() {
  namespace fs = std::filesystem;
  if (const char* env = std::getenv("REDKNOT_MODEL"); env && *env) return env;
  fs::path root;
  if (const char* dir = std::getenv("REDKNOT_MODEL_DIR"); dir && *dir) {
    root = dir;
  } else {
    const char* home = std::getenv("HOME");
    if (!home) return {};
    root = fs::path(home) / ".cache" / "redknot" / "models";
  }
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return {};
  std::string best;
  for (auto it = fs::recursive_directory_iterator(root, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec))
    if (it->is_regular_file() && it->path().extension() == ".gguf") {
      const std::string p = it->path().string();
      if (best.empty() || p < best) best = p;
    }
  return best;
}

}  // namespace redknot::decoder

namespace redknot::decoder {

LoadedModel load_model(const std::string& path) {
  const std::string resolved = path.empty() ? default_model_path() : path;
  if (resolved.empty()) throw std::runtime_error("no model: pass --model or run scripts/get-model.sh");
  const GgufFile gguf = GgufFile::open(resolved);
  return LoadedModel{LlamaModel::load(gguf), Tokenizer::from_gguf(gguf)};
}

}  // namespace redknot::decoder
