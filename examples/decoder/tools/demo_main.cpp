// redknot-demo: one long prompt through dense and redknot modes, side by side.
//
// The prompt is a long document (package docs found on the machine, or --prompt-file) with a passkey hidden
// in it and a question about it, so the outputs show whether what the local heads dropped mattered.
//
// --rag: document reuse instead. A request of several documents (one holds "The access code for <name> is
// <code>."), answered by a full dense prefill, then from the chunk registry cold (every document prefilled
// alone first) and warm (the same documents in the reverse order: every one cached, spliced at new offsets).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>

#include "cli_args.hpp"
#include "corpus.hpp"
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

std::string one_line(std::string s, std::size_t width) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  if (s.size() > width) s = s.substr(0, width - 3) + "...";
  return s;
}

std::string answer_text(const Tokenizer& tok, std::vector<std::int32_t> ids) {
  if (!ids.empty() && tok.is_end_of_generation(ids.back())) ids.pop_back();
  return tok.decode(ids);
}

int rag_demo(const CliArgs& args, const LlamaModel& model, const Tokenizer& tok) {
  using Clock = std::chrono::steady_clock;
  const auto secs = [](Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
  };
  const LlamaConfig& c = model.config();
  const int target = args.get_int("tokens", 4096), max_new = args.get_int("max-new", 8);
  const RecomputeSpec spec = parse_recompute_spec(args.get("strategy", kDefaultRecomputeSpec));
  RagBenchOptions bo;
  bo.fact_docs = 1;
  bo.plain_docs = args.get_int("docs", 12);
  bo.seed = static_cast<std::uint32_t>(args.get_int("seed", 1));
  const RagBench bench(
      tok, concat_files(evaluation_files(), 3, static_cast<std::size_t>(bo.plain_docs + 1) * bo.doc_max * 6),
      bo);
  std::mt19937 rng(bo.seed);
  const RagCase cold_case = bench.make_case(target, max_new, 0, rng);
  RagRequest warm_req = cold_case.request;  // the same documents, reversed: each at another offset
  std::reverse(warm_req.documents.begin(), warm_req.documents.end());
  std::printf(
      "request: %zu tokens = system %zu + %zu documents (%zu tokens, one holds the access code of %s) + "
      "question %zu\nreuse strategy: %s, head map %s\n",
      cold_case.tokens(), cold_case.request.system.size(), cold_case.request.documents.size(),
      cold_case.doc_tokens(), cold_case.name.c_str(), cold_case.request.question.size(),
      recompute_spec_name(spec).c_str(), args.get("head-map").c_str());
  const auto is_end = [&](std::int32_t t) { return tok.is_end_of_generation(t); };

  struct Column {
    double doc_prefill_s = 0, ttft_s = 0;
    std::int64_t recomputed = 0, kv_bytes = 0;
    std::size_t cached_before = 0;
    std::string answer;
  };
  Column dense, cold, warm;
  std::printf("running full dense prefill...\n");
  std::fflush(stdout);
  {
    SessionOptions so;
    so.max_context = static_cast<int>(cold_case.tokens()) + max_new + 1;
    Session s(model, HeadMap::all_global(c.n_layers, c.n_kv_heads), so);
    const auto t0 = Clock::now();
    std::vector<float> logits = s.prefill(cold_case.request.tokens());
    (void)argmax(logits);
    dense.ttft_s = secs(t0);
    dense.answer = answer_text(tok, greedy_answer(s, logits, max_new, is_end));
    dense.kv_bytes = s.kv_stats().bytes();
  }
  const HeadMap map = head_map_for("redknot", args.get("head-map"), c);
  const std::int64_t page_size = 16, heads = static_cast<std::int64_t>(c.n_layers) * c.n_kv_heads;
  auto store =
      Session::make_store(model, map, static_cast<int>(page_size),
                          heads * 4 * (static_cast<std::int64_t>(cold_case.tokens()) / page_size + 64));
  DocumentCache cache(model, store, args.get("model", "default"));
  SessionOptions so;
  so.max_context = c.context_length > 0 ? c.context_length : 8192;
  const auto run = [&](const RagRequest& req, Column& col, const char* what) {
    std::printf("running RAG %s...\n", what);
    std::fflush(stdout);
    for (const auto& d : req.documents) {
      col.cached_before += cache.contains(d);
      col.doc_prefill_s += cache.add(d);
    }
    Session s(model, store, so);
    const RagResult r = prefill_rag(s, cache, req, spec);
    col.ttft_s = col.doc_prefill_s + r.ttft_s;
    col.recomputed = r.recomputed;
    col.answer = answer_text(tok, greedy_answer(s, r.logits, max_new, is_end));
    col.kv_bytes = store->stats().bytes_in_use;  // the registry's documents + this request
  };
  run(cold_case.request, cold, "cold (documents prefilled alone, then spliced)");
  run(warm_req, warm, "warm (every document cached, spliced in the reverse order)");

  const auto mib = [](std::int64_t b) { return static_cast<double>(b) / 1048576.0; };
  const std::size_t nd = cold_case.request.documents.size();
  std::printf("\n%-26s %18s %18s %18s\n", "", "full dense", "RAG cold", "RAG warm");
  std::printf("%-26s %18s %18s %18s\n", "documents cached before", "-",
              (std::to_string(cold.cached_before) + "/" + std::to_string(nd)).c_str(),
              (std::to_string(warm.cached_before) + "/" + std::to_string(nd)).c_str());
  std::printf("%-26s %18s %16.2f s %16.2f s\n", "  document prefill", "-", cold.doc_prefill_s,
              warm.doc_prefill_s);
  std::printf("%-26s %16.2f s %16.2f s %16.2f s\n", "TTFT", dense.ttft_s, cold.ttft_s, warm.ttft_s);
  std::printf("%-26s %18s %17.1fx %17.1fx\n", "  speed-up vs dense", "1.0x", dense.ttft_s / cold.ttft_s,
              dense.ttft_s / warm.ttft_s);
  std::printf("%-26s %18s %18lld %18lld\n", "recomputed doc tokens", "-",
              static_cast<long long>(cold.recomputed), static_cast<long long>(warm.recomputed));
  std::printf("%-26s %14.2f MiB %14.2f MiB %14.2f MiB\n", "KV held", mib(dense.kv_bytes), mib(cold.kv_bytes),
              mib(warm.kv_bytes));
  std::printf(
      "(RAG: the store's pages, i.e. every cached document once + the request's own and recomputed rows)\n");
  std::printf("\nexpected : %s\ndense    :%s\nRAG cold :%s\nRAG warm :%s\n", cold_case.code.c_str(),
              one_line(dense.answer, 100).c_str(), one_line(cold.answer, 100).c_str(),
              one_line(warm.answer, 100).c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  settle_thread_env(argv);
  try {
    const CliArgs args(argc, argv, {"help", "rag"});
    if (args.has("help") || !args.has("head-map")) {
      std::fprintf(stderr,
                   "usage: redknot-demo --head-map map.json [--model M.gguf] [--tokens 8128] [--depth 0.3]\n"
                   "                    [--prompt-file F] [--max-new 32]\n"
                   "       redknot-demo --rag --head-map map.json [--model M.gguf] [--tokens 4096]\n"
                   "                    [--strategy global_deviation_topk:0.05:16+tail:1024] [--docs 12] "
                   "[--max-new 8]\n");
      return args.has("help") ? 0 : 1;
    }
    const LoadedModel loaded = load_model(args.get("model", ""));
    const LlamaModel& model = loaded.model;
    const Tokenizer& tok = loaded.tokenizer;
    if (args.has("rag")) return rag_demo(args, model, tok);
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
