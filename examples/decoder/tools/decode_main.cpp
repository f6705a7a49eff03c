// redknot-decode: greedy generation with a Llama-family GGUF model whose KV cache is a redknot store.
//
//   redknot-decode [--model M.gguf] [--prompt-file F | --prompt TEXT] [--mode dense|redknot]
//                  [--head-map map.json] [--max-new N] [--chunk N] [--raw] [--max-context N] [--quiet]
// The prompt is read from stdin when neither --prompt nor --prompt-file is given.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>

#include "cli_args.hpp"
#include "generate.hpp"
#include "gguf.hpp"
#include "model_path.hpp"
#include "thread_env.hpp"
#include "tokenizer.hpp"

using namespace redknot;
using namespace redknot::decoder;

namespace {

void usage() {
  std::fprintf(
      stderr,
      "usage: redknot-decode [--model M.gguf] [--prompt-file F|-] [--prompt TEXT] [--mode dense|redknot]\n"
      "                      [--head-map map.json] [--max-new N] [--chunk N] [--raw] [--max-context N]\n"
      "                      [--threads N] [--quiet]\n");
}

std::string read_prompt(const CliArgs& args) {
  if (args.has("prompt")) return args.get("prompt");
  const std::string f = args.get("prompt-file", "-");
  if (f == "-") return {std::istreambuf_iterator<char>(std::cin), {}};
  std::ifstream in(f, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open prompt file '" + f + "'");
  return {std::istreambuf_iterator<char>(in), {}};
}

}  // namespace

int main(int argc, char** argv) {
  settle_thread_env(argv);
  try {
    const CliArgs args(argc, argv, {"raw", "quiet", "help"});
    if (args.has("help")) {
      usage();
      return 0;
    }
    const LoadedModel loaded = load_model(args.get("model", ""));
    const bool quiet = args.has("quiet");
    const LlamaModel& model = loaded.model;
    const Tokenizer& tok = loaded.tokenizer;

    GenerateOptions go;
    go.mode = args.get("mode", "redknot");
    go.head_map_path = args.get("head-map");
    go.max_new = args.get_int("max-new", 64);
    go.session.chunk = args.get_int("chunk", 256);
    go.session.threads = args.get_int("threads", 0);
    go.chat = !args.has("raw");
    go.progress = !quiet;
    const std::string prompt = read_prompt(args);
    go.session.max_context = args.get_int("max-context", 0);

    const GenerateResult r = generate(model, tok, prompt, go);
    std::printf("%s\n", r.text.c_str());
    std::fflush(stdout);
    if (!quiet) {
      std::fprintf(stderr, "---\nmode            %s%s\n", go.mode.c_str(),
                   go.head_map_path.empty() ? "" : (" (" + go.head_map_path + ")").c_str());
      std::fprintf(stderr, "prompt tokens   %zu\n", r.prompt_tokens);
      std::fprintf(stderr, "new tokens      %zu\n", r.tokens.size());
      std::fprintf(stderr, "TTFT            %.3f s\n", r.ttft_s);
      std::fprintf(stderr, "decode          %.2f tok/s\n", r.decode_tok_s);
      std::fprintf(stderr, "KV bytes        %.2f MiB (global %.2f MiB, local %.2f MiB)\n",
                   r.kv_bytes / 1048576.0, r.kv_bytes_global / 1048576.0, r.kv_bytes_local / 1048576.0);
      std::fprintf(stderr, "global heads    %d of %d\n", r.global_heads, r.total_heads);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "redknot-decode: %s\n", e.what());
    usage();
    return 1;
  }
}
