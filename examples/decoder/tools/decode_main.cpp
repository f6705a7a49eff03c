// redknot-decode: greedy generation with a Llama-family GGUF model whose KV cache is a redknot store.
//
//   redknot-decode [--model M.gguf] [--prompt-file F | --prompt TEXT] [--mode dense|redknot]
//                  [--head-map map.json] [--max-new N] [--chunk N] [--raw] [--max-context N] [--quiet]
// The prompt is read from stdin when neither --prompt nor --prompt-file is given.
//
//   redknot-decode --rag --docs a.txt,b.txt [--strategy global_deviation_topk:0.05:16+tail:1024] [--primer
//   TEXT] ...
// RAG mode (src/rag.hpp): each document is prefilled alone into the chunk registry, then the request
// [system][documents in the given order][prompt] is answered from it: documents spliced, tokens recomputed
// per --strategy (none, first_k:K, deviation_topk:R, global_deviation_topk:R[:K], optional @LAYER).
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>

#include "cli_args.hpp"
#include "generate.hpp"
#include "gguf.hpp"
#include "model_path.hpp"
#include "rag.hpp"
#include "rag_bench.hpp"
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
      "                      [--threads N] [--quiet]\n"
      "       redknot-decode --rag --docs a.txt,b.txt [--prompt QUESTION] [--strategy S] [--primer TEXT]\n"
      "                      [--mode dense|redknot] [--head-map map.json] [--max-new N]\n");
}

std::string read_prompt(const CliArgs& args) {
  if (args.has("prompt")) return args.get("prompt");
  const std::string f = args.get("prompt-file", "-");
  if (f == "-") return {std::istreambuf_iterator<char>(std::cin), {}};
  std::ifstream in(f, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open prompt file '" + f + "'");
  return {std::istreambuf_iterator<char>(in), {}};
}

// --rag: documents from files, the prompt as the question.
int run_rag(const CliArgs& args, const LlamaModel& model, const Tokenizer& tok, bool quiet) {
  using Clock = std::chrono::steady_clock;
  const LlamaConfig& c = model.config();
  std::vector<std::string> docs;
  for (const std::string& f : split_list(args.get("docs"))) {
    std::ifstream in(f, std::ios::binary);
    if (!in) throw std::runtime_error("cannot open document '" + f + "'");
    docs.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  if (docs.empty()) throw std::runtime_error("--rag needs --docs a.txt[,b.txt...]");
  const RagRequest req = rag_request_from_text(tok, docs, read_prompt(args), "", args.get("primer"));
  const RecomputeSpec spec = parse_recompute_spec(args.get("strategy", kDefaultRecomputeSpec));
  const std::string mode = args.get("mode", "redknot");
  const HeadMap map = head_map_for(mode, args.get("head-map"), c);
  SessionOptions so;
  so.chunk = args.get_int("chunk", 256);
  so.threads = args.get_int("threads", 0);
  so.max_context = args.get_int("max-context", c.context_length > 0 ? c.context_length : 8192);
  const std::int64_t heads = static_cast<std::int64_t>(c.n_layers) * c.n_kv_heads;
  auto store =
      Session::make_store(model, map, so.page_size,
                          heads * 3 * (static_cast<std::int64_t>(req.tokens().size()) / so.page_size + 64));
  DocumentCache cache(model, store, args.get("model", "default"), so);
  double doc_s = 0;
  for (const auto& d : req.documents) doc_s += cache.add(d);
  Session s(model, store, so);
  const RagResult r = prefill_rag(s, cache, req, spec);
  const auto t1 = Clock::now();
  const std::vector<std::int32_t> ids = greedy_answer(
      s, r.logits, args.get_int("max-new", 64), [&](std::int32_t t) { return tok.is_end_of_generation(t); });
  const double decode_s = std::chrono::duration<double>(Clock::now() - t1).count();
  std::vector<std::int32_t> shown = ids;
  if (!shown.empty() && tok.is_end_of_generation(shown.back())) shown.pop_back();
  std::printf("%s%s\n", args.get("primer").c_str(), tok.decode(shown).c_str());
  std::fflush(stdout);
  if (!quiet) {
    std::fprintf(stderr, "---\nmode            rag, %s, strategy %s\n", mode.c_str(),
                 recompute_spec_name(spec).c_str());
    std::fprintf(stderr, "prompt tokens   %zu (%zu documents, %lld tokens)\n", req.tokens().size(),
                 req.documents.size(), static_cast<long long>(r.document_tokens));
    std::fprintf(stderr, "documents       prefilled alone in %.3f s (cold cache)\n", doc_s);
    std::fprintf(stderr,
                 "TTFT            %.3f s warm (system %.3f, splice %.3f, select %.3f, recompute %.3f, "
                 "question %.3f), %.3f s cold\n",
                 r.ttft_s, r.system_s, r.splice_s, r.select_s, r.recompute_s, r.question_s, r.ttft_s + doc_s);
    std::fprintf(stderr, "recomputed      %lld of %lld document tokens\n",
                 static_cast<long long>(r.recomputed), static_cast<long long>(r.document_tokens));
    if (ids.size() > 1 && decode_s > 0)
      std::fprintf(stderr, "decode          %.2f tok/s\n", static_cast<double>(ids.size() - 1) / decode_s);
    std::fprintf(stderr, "KV bytes        %.2f MiB in the store (documents once + this request)\n",
                 static_cast<double>(store->stats().bytes_in_use) / 1048576.0);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  settle_thread_env(argv);
  try {
    const CliArgs args(argc, argv, {"raw", "quiet", "help", "rag"});
    if (args.has("help")) {
      usage();
      return 0;
    }
    const LoadedModel loaded = load_model(args.get("model", ""));
    const bool quiet = args.has("quiet");
    const LlamaModel& model = loaded.model;
    const Tokenizer& tok = loaded.tokenizer;
    if (args.has("rag")) return run_rag(args, model, tok, quiet);

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
