// redknot-demo: one long prompt through dense and redknot modes, side by side.
//
// The prompt is a long document (package docs found on the machine, or --prompt-file) with a passkey hidden
// in it and a question about it, so the outputs show whether what the local heads dropped mattered.
#include <algorithm>
#include <cstdio>
#include <string>

#include "cli_args.hpp"
#include "corpus.hpp"
#include "generate.hpp"
#include "gguf.hpp"
#include "model_path.hpp"
#include "thread_env.hpp"
#include "tokenizer.hpp"

using namespace redknot;
using namespace redknot::decoder;

namespace {

std::string one_line(std::string s, std::size_t width) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  if (s.size() > width) s = s.substr(0, width - 3) + "...";
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  settle_thread_env(argv);
  try {
    const CliArgs args(argc, argv, {"help"});
    if (args.has("help") || !args.has("head-map")) {
      std::fprintf(stderr,
                   "usage: redknot-demo --head-map map.json [--model M.gguf] [--tokens 8128] [--depth 0.3]\n"
                   "                    [--prompt-file F] [--max-new 32]\n");
      return args.has("help") ? 0 : 1;
    }
    const LoadedModel loaded = load_model(args.get("model", ""));
    const LlamaModel& model = loaded.model;
    const Tokenizer& tok = loaded.tokenizer;
    // Default: as long as the model allows (SmolLM2: 8192) with room for the answer: the KV budget of the
    // shipped map is set at 8K, where the reduction is largest.
    const int target = args.get_int("tokens", 8128);

    std::string user, primer;
    if (args.has("prompt-file")) {
      user = read_file(args.get("prompt-file"));
    } else {
      const auto filler_ids =
          tok.encode(concat_files(evaluation_files(), 3, 40 * static_cast<std::size_t>(target)), false);
      const auto probe = needle_case("", 0.3, 42);
      // --tokens is the whole prompt: chat template, passkey sentence, question and primer included.
      const std::size_t overhead =
          tok.encode(tok.apply_chat_template(probe.facts + probe.question) + probe.answer_prefix).size();
      require(static_cast<std::size_t>(target) > overhead + 64, "--tokens=", target,
              " leaves no room for filler (", overhead, " tokens of template, passkey and question)");
      const std::size_t budget = std::min(filler_ids.size(), static_cast<std::size_t>(target) - overhead);
      const auto rc =
          needle_case(tok.decode(std::vector<std::int32_t>(
                          filler_ids.begin(), filler_ids.begin() + static_cast<std::ptrdiff_t>(budget))),
                      args.get_double("depth", 0.3), 42);
      user = rc.haystack_before + rc.facts + rc.haystack_after + rc.question;
      // Primed like the evaluation's needle cases: a 135M model otherwise often rambles instead of answering.
      primer = rc.answer_prefix;
      std::printf(
          "prompt: %d tokens of package documentation, a passkey (%s) at depth %.0f%%, then the question\n",
          target, rc.answer.c_str(), 100 * args.get_double("depth", 0.3));
    }
    const auto prompt = tok.encode(tok.apply_chat_template(user) + primer);
    if (!primer.empty()) std::printf("assistant turn primed with \"%s\"\n", primer.c_str());

    GenerateOptions go;
    go.max_new = args.get_int("max-new", 32);
    const int ctx = model.config().context_length;
    require(ctx <= 0 || static_cast<int>(prompt.size()) + go.max_new <= ctx, "prompt of ", prompt.size(),
            " tokens + --max-new=", go.max_new, " exceeds the model's context length ", ctx);
    go.session.chunk = args.get_int("chunk", 256);
    const LlamaConfig& c = model.config();
    std::printf("running dense...\n");
    std::fflush(stdout);
    const auto d = generate_tokens(model, tok, prompt, HeadMap::all_global(c.n_layers, c.n_kv_heads), go);
    const HeadMap map = head_map_for("redknot", args.get("head-map"), c);
    std::printf("running redknot (%s)...\n", args.get("head-map").c_str());
    std::fflush(stdout);
    const auto r = generate_tokens(model, tok, prompt, map, go);

    // Agreement: generated positions where both modes chose the same token, until the first divergence and
    // over all positions both produced.
    std::size_t prefix = 0, same = 0;
    const std::size_t both = std::min(d.tokens.size(), r.tokens.size());
    while (prefix < both && d.tokens[prefix] == r.tokens[prefix]) ++prefix;
    for (std::size_t i = 0; i < both; ++i) same += d.tokens[i] == r.tokens[i];
    const auto mib = [](std::int64_t b) { return static_cast<double>(b) / 1048576.0; };
    std::printf("\n%-22s %18s %18s\n", "", "dense", "redknot");
    std::printf("%-22s %18zu %18zu\n", "prompt tokens", d.prompt_tokens, r.prompt_tokens);
    std::printf("%-22s %18s %18s\n", "global kv heads",
                (std::to_string(d.global_heads) + "/" + std::to_string(d.total_heads)).c_str(),
                (std::to_string(r.global_heads) + "/" + std::to_string(r.total_heads)).c_str());
    std::printf("%-22s %16.2f s %16.2f s\n", "TTFT", d.ttft_s, r.ttft_s);
    std::printf("%-22s %14.2f tok/s %12.2f tok/s\n", "decode", d.decode_tok_s, r.decode_tok_s);
    std::printf("%-22s %14.2f MiB %14.2f MiB\n", "KV bytes", mib(d.kv_bytes), mib(r.kv_bytes));
    std::printf("%-22s %14.2f MiB %14.2f MiB\n", "  global heads", mib(d.kv_bytes_global),
                mib(r.kv_bytes_global));
    std::printf("%-22s %14.2f MiB %14.2f MiB\n", "  local heads", mib(d.kv_bytes_local),
                mib(r.kv_bytes_local));
    std::printf("%-22s %18s %17.1fx\n", "KV reduction", "1.0x",
                r.kv_bytes ? static_cast<double>(d.kv_bytes) / static_cast<double>(r.kv_bytes) : 0.0);
    std::printf("%-22s %18s %18s\n", "token agreement", "",
                (std::to_string(same) + "/" + std::to_string(both) + " (first " + std::to_string(prefix) +
                 " identical)")
                    .c_str());
    std::printf("\ndense   : %s\nredknot : %s\n", one_line(d.text, 100).c_str(),
                one_line(r.text, 100).c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "redknot-demo: %s\n", e.what());
    return 1;
  }
}
