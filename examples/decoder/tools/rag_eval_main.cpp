// redknot-rag-eval: position-independent document reuse against full prefill on the same requests.
//
// Requests of 2K/4K/8K tokens are built from a pool of documents cut from package docs (rag_bench.hpp): one
// document per request carries the planted fact asked about, documents recur across requests in shuffled
// orders (so the same chunks sit at different offsets). Methods, side by side on every request:
//   dense, headaware         full prefill (all-global map / the profiled map)
//   none, first_k:K, ...     documents spliced from the chunk registry (prefilled alone once, head-aware map
//                            unless --reuse-map dense), recomputed per strategy (rag.hpp), question prefilled
// Per method: TTFT warm (documents cached) and cold (+ the documents' own prefills), accuracy (the planted
// code in the greedy answer), agreement (answer tokens identical to dense's), mean KL(dense || method) over
// the first --kl-tokens answer positions teacher-forced on dense's answer, recomputed fraction of document
// tokens, and the KV memory of the first --concurrent requests alive together: zero-copy sharing of the
// registry's documents against one copy per request.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>

#include "cli_args.hpp"
#include "corpus.hpp"
#include "generate.hpp"
#include "model_path.hpp"
#include "rag.hpp"
#include "rag_bench.hpp"
#include "redknot/error.hpp"
#include "redknot/pool_sizing.hpp"
#include "session.hpp"
#include "thread_env.hpp"

using namespace redknot;
using namespace redknot::decoder;
using nlohmann::json;

namespace {

using Clock = std::chrono::steady_clock;

void usage() {
  std::fprintf(stderr,
               "usage: redknot-rag-eval --head-map map.json [--model M.gguf] [--lengths 2048,4096,8192]\n"
               "         [--requests 30] [--methods dense,headaware,none,first_k:16,...] (dense first)\n"
               "         [--reuse-map headaware|dense] [--concurrent 16]\n"
               "         [--max-new 8] [--kl-tokens 8] [--fact-docs 8] [--plain-docs 20] [--doc-min 300]\n"
               "         [--doc-max 1500] [--seed 1] [--chunk 256] [--threads N] [--json out.json]\n"
               "         [--md out.md] [--only 0,2] [--quiet]\n");
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// The answer sentence: what agreement compares (the model often carries on after it).
std::string first_line(const std::string& s) {
  const std::size_t b = s.find_first_not_of(" \n");
  if (b == std::string::npos) return {};
  return s.substr(b, s.find('\n', b) - b);
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}

std::string load_average() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

// A method: full prefill with a map, or reuse with a recompute spec.
struct Method {
  std::string name;
  bool full = false;
  const HeadMap* map = nullptr;  // full prefill
  RecomputeSpec spec;            // reuse
};

// What one method produced on one request.
struct Outcome {
  double ttft = 0, ttft_cold = 0;
  std::vector<std::int32_t> answer;
  std::string text;
  bool correct = false, agree = false;
  double kl = 0;
  std::int64_t recomputed = 0, doc_tokens = 0;
  std::int64_t private_bytes = 0;  // reuse: bytes the request added to the store (kept alive)
  std::int64_t kv_bytes = 0;       // full: the sequence's KV at the end
  double select_s = 0, recompute_s = 0;
};

}  // namespace

int main(int argc, char** argv) {
  settle_thread_env(argv);
  try {
    const CliArgs args(argc, argv, {"help", "quiet"});
    if (args.has("help") || !args.has("head-map")) {
      usage();
      return args.has("help") ? 0 : 1;
    }
    const bool quiet = args.has("quiet");
    const std::string model_path = args.has("model") ? args.get("model") : default_model_path();
    const LoadedModel loaded = load_model(model_path);
    const LlamaModel& model = loaded.model;
    const Tokenizer& tok = loaded.tokenizer;
    const LlamaConfig& c = model.config();

    std::vector<int> lengths;
    for (const auto& s : split_list(args.get("lengths", "2048,4096,8192"))) lengths.push_back(std::stoi(s));
    const int n_requests = args.get_int("requests", 30);
    const int max_new = args.get_int("max-new", 8);
    const int kl_tokens = args.get_int("kl-tokens", 8);
    const int concurrent = args.get_int("concurrent", 16);
    std::set<int> only;  // --only i,j: run these requests (0-based) of each length and skip the others
    for (const auto& s : split_list(args.get("only"))) only.insert(std::stoi(s));
    const int page_size = 16;
    SessionOptions so;
    so.chunk = args.get_int("chunk", 256);
    so.threads = args.get_int("threads", 0);
    so.page_size = page_size;
    so.max_context = c.context_length > 0 ? c.context_length : 8192;
    for (int L : lengths)
      require(L <= so.max_context, "--lengths: ", L, " exceeds the model's context ", so.max_context,
              " (a request of L tokens leaves --max-new of them for the answer)");

    const HeadMap dense = HeadMap::all_global(c.n_layers, c.n_kv_heads);
    const HeadMap headaware = head_map_for("redknot", args.get("head-map"), c);
    const std::string reuse_map_name = args.get("reuse-map", "headaware");
    require(reuse_map_name == "headaware" || reuse_map_name == "dense",
            "--reuse-map must be headaware or dense");
    const HeadMap& reuse_map = reuse_map_name == "dense" ? dense : headaware;

    std::vector<Method> methods;
    for (const auto& m : split_list(args.get(
             "methods",
             "dense,headaware,none,first_k:16,first_k:128,deviation_topk:0.15,first_k:16+tail:1024,"
             "global_deviation_topk:0.05:16+tail:1024,global_deviation_topk:0.05:16+tail:1024/page"))) {
      Method x;
      if (m == "dense" || m == "headaware") {
        x.name = m;
        x.full = true;
        x.map = m == "dense" ? &dense : &headaware;
      } else {
        x.spec = parse_recompute_spec(m);
        x.name = recompute_spec_name(x.spec);
      }
      methods.push_back(x);
    }
    require(!methods.empty() && methods[0].name == "dense",
            "--methods must start with dense (the reference of agreement and KL)");

    // Documents and the cache (the chunk registry of a store with the reuse map).
    RagBenchOptions bo;
    bo.fact_docs = args.get_int("fact-docs", 8);
    bo.plain_docs = args.get_int("plain-docs", 20);
    bo.doc_min = args.get_int("doc-min", 300);
    bo.doc_max = args.get_int("doc-max", 1500);
    bo.seed = static_cast<std::uint32_t>(args.get_int("seed", 1));
    const std::size_t text_chars = static_cast<std::size_t>(bo.fact_docs + bo.plain_docs) * bo.doc_max * 6;
    const RagBench bench(tok, concat_files(evaluation_files(), 0, text_chars), bo);
    const auto& docs = bench.documents();
    std::int64_t doc_tokens_total = 0;
    for (const auto& d : docs) doc_tokens_total += static_cast<std::int64_t>(d.tokens.size());

    // Pools: host memory is reserved, not touched (only pages in use cost memory), but one reservation must
    // stay below RAM for the kernel to grant it. The registry holds every head of every document; a kept
    // request holds at most what a full prefill with the reuse map would (its own tokens, recomputed pages of
    // global heads, sink + window of local heads); the request in flight may copy every page it recomputes.
    const std::int64_t ctx = so.max_context;
    const std::int64_t heads = static_cast<std::int64_t>(c.n_layers) * c.n_kv_heads;
    std::int64_t n_reuse = 0;
    for (const auto& m : methods) n_reuse += m.full ? 0 : 1;
    const std::int64_t reuse_pages =
        heads * (doc_tokens_total / page_size + static_cast<std::int64_t>(docs.size())) +
        concurrent * n_reuse * peak_sequence_pages(reuse_map, page_size, ctx, page_size) +
        3 * peak_sequence_pages(dense, page_size, ctx, so.chunk);
    auto reuse_store = Session::make_store(model, reuse_map, page_size, reuse_pages);
    auto dense_store = Session::make_store(model, dense, page_size,
                                           3 * peak_sequence_pages(dense, page_size, ctx, so.chunk));
    auto ha_store = Session::make_store(model, headaware, page_size,
                                        3 * peak_sequence_pages(headaware, page_size, ctx, so.chunk));
    DocumentCache cache(model, reuse_store, model_path, so);

    const auto page_bytes = static_cast<std::int64_t>(reuse_store->pool().page_bytes());
    json out;
    out["model"] = model_path;
    out["head_map"] = args.get("head-map");
    out["reuse_map"] = reuse_map_name;
    out["load_start"] = load_average();
    {
      const std::time_t now = std::time(nullptr);
      char b[64];
      std::strftime(b, sizeof b, "%Y-%m-%d %H:%M:%S %Z", std::localtime(&now));
      out["date"] = b;
    }
    out["options"] = {{"requests", n_requests},
                      {"max_new", max_new},
                      {"kl_tokens", kl_tokens},
                      {"concurrent", concurrent},
                      {"chunk", so.chunk},
                      {"threads", so.threads},
                      {"fact_docs", bo.fact_docs},
                      {"plain_docs", bo.plain_docs},
                      {"doc_min", bo.doc_min},
                      {"doc_max", bo.doc_max},
                      {"seed", bo.seed}};
    for (const auto& m : methods) out["methods"].push_back(m.name);

    // Cold cache: every document prefilled alone once.
    if (!quiet)
      std::fprintf(stderr, "prefilling %zu documents (%lld tokens) into the chunk registry...\n", docs.size(),
                   static_cast<long long>(doc_tokens_total));
    std::vector<double> doc_seconds;
    std::vector<std::int64_t> doc_pages;
    double build_s = 0;
    for (std::size_t i = 0; i < docs.size(); ++i) {
      doc_seconds.push_back(cache.add(docs[i].tokens));
      build_s += doc_seconds.back();
      std::int64_t pages = 0;
      const ChunkKey k = cache.key(docs[i].tokens);
      for (int l = 0; l < c.n_layers; ++l)
        for (int h = 0; h < c.n_kv_heads; ++h) pages += reuse_store->chunk_table(k, l, h).num_pages();
      doc_pages.push_back(pages);
      out["documents"].push_back({{"tokens", docs[i].tokens.size()},
                                  {"fact", docs[i].name.empty() ? "" : docs[i].name + "=" + docs[i].code},
                                  {"prefill_s", doc_seconds.back()},
                                  {"kv_bytes", pages * page_bytes}});
    }
    out["cache"] = {{"documents", docs.size()},
                    {"tokens", doc_tokens_total},
                    {"build_s", build_s},
                    {"bytes", reuse_store->chunk_stats().pages_held * page_bytes}};

    const auto write_outputs = [&] {
      if (args.has("json")) std::ofstream(args.get("json")) << out.dump(2) << "\n";
    };
    const auto is_end = [&](std::int32_t t) { return tok.is_end_of_generation(t); };

    for (int length : lengths) {
      std::mt19937 rng(bo.seed * 7919u + static_cast<std::uint32_t>(length));
      json jl;
      jl["length"] = length;
      std::vector<std::vector<Outcome>> all(methods.size());
      std::vector<std::unique_ptr<Session>> kept;  // the first `concurrent` requests of every reuse method
      std::set<int> kept_docs;
      std::vector<std::int64_t> own_bytes;  // per kept request: its own tokens' pages
      // Summary of the first `done` requests and memory with the first `concurrent` of them alive (written
      // after every request, so a run cut short still has one).
      const auto summarize = [&](int done) {
        const int kept_n = std::min(concurrent, done);
        std::int64_t docs_once = 0;
        for (int d : kept_docs) docs_once += doc_pages[static_cast<std::size_t>(d)] * page_bytes;
        std::int64_t own_total = 0;
        for (auto b : own_bytes) own_total += b;
        const auto first_n_sum = [&](std::size_t mi, auto field) {
          std::int64_t s = 0;
          for (int r = 0; r < kept_n; ++r) s += field(all[mi][static_cast<std::size_t>(r)]);
          return s;
        };
        std::int64_t copy_dense = 0, copy_ha = 0;
        for (std::size_t mi = 0; mi < methods.size(); ++mi)
          if (methods[mi].full) {
            const std::int64_t b = first_n_sum(mi, [](const Outcome& o) { return o.kv_bytes; });
            (methods[mi].map == &dense ? copy_dense : copy_ha) = b;
          }
        jl["memory"] = {{"requests", kept_n},
                        {"docs_once_bytes", docs_once},
                        {"own_tokens_bytes", own_total},
                        {"one_copy_dense_bytes", copy_dense},
                        {"one_copy_headaware_bytes", copy_ha}};
        const double dense_ttft = median([&] {
          std::vector<double> v;
          for (const auto& o : all[0]) v.push_back(o.ttft);
          return v;
        }());
        for (std::size_t mi = 0; mi < methods.size(); ++mi) {
          const auto& os = all[mi];
          std::vector<double> ttft, cold, kl;
          double correct = 0, agree = 0, recomputed = 0, doc_tok = 0;
          for (const auto& o : os) {
            ttft.push_back(o.ttft);
            cold.push_back(o.ttft_cold);
            kl.push_back(o.kl);
            correct += o.correct;
            agree += o.agree;
            recomputed += static_cast<double>(o.recomputed);
            doc_tok += static_cast<double>(o.doc_tokens);
          }
          const double n = static_cast<double>(os.size());
          json js = {{"requests", os.size()},
                     {"ttft_median_s", median(ttft)},
                     {"ttft_mean_s", mean(ttft)},
                     {"ttft_cold_median_s", median(cold)},
                     {"speedup_vs_dense", median(ttft) > 0 ? dense_ttft / median(ttft) : 0},
                     {"accuracy", correct / n},
                     {"agreement", agree / n},
                     {"kl_mean", mean(kl)},
                     {"recomputed_fraction", doc_tok > 0 ? recomputed / doc_tok : 0}};
          if (methods[mi].full) {
            js["kv_bytes_concurrent"] = first_n_sum(mi, [](const Outcome& o) { return o.kv_bytes; });
          } else {
            const std::int64_t kv =
                docs_once + first_n_sum(mi, [](const Outcome& o) { return o.private_bytes; });
            js["kv_bytes_concurrent"] = kv;
            // Against the target's reference: one copy of the documents plus each request's own tokens.
            js["kv_vs_docs_plus_own"] = static_cast<double>(kv) /
                                        static_cast<double>(std::max<std::int64_t>(docs_once + own_total, 1));
          }
          jl["summary"][methods[mi].name] = js;
        }
      };
      for (int r = 0; r < n_requests; ++r) {
        const RagCase rc = bench.make_case(length, max_new, r % bo.fact_docs, rng);
        if (!only.empty() && !only.count(r))
          continue;  // drawn all the same: the other cases stay as they were
        const int ran = static_cast<int>(all[0].size());  // requests run before this one
        const std::vector<std::int32_t> prompt = rc.request.tokens();
        double cold_extra = 0;
        for (int d : rc.doc_ids) cold_extra += doc_seconds[static_cast<std::size_t>(d)];
        json jr = {{"tokens", prompt.size()},
                   {"doc_tokens", rc.doc_tokens()},
                   {"docs", rc.doc_ids},
                   {"fact_doc", rc.fact_doc},
                   {"code", rc.code}};
        std::vector<std::vector<float>> ref_lp;  // dense's log-probs of its first answer tokens
        std::vector<std::int32_t> ref_answer;
        std::string ref_text;
        for (std::size_t mi = 0; mi < methods.size(); ++mi) {
          const Method& m = methods[mi];
          Outcome o;
          std::unique_ptr<Session> s;
          std::vector<float> logits;
          std::int64_t pages_before = 0;
          if (m.full) {
            s = std::make_unique<Session>(model, m.map == &dense ? dense_store : ha_store, so);
            const auto t0 = Clock::now();
            logits = s->prefill(prompt);
            (void)argmax(logits);
            o.ttft = o.ttft_cold = std::chrono::duration<double>(Clock::now() - t0).count();
          } else {
            s = std::make_unique<Session>(model, reuse_store, so);
            pages_before = reuse_store->pool().used_pages();
            const RagResult rr = prefill_rag(*s, cache, rc.request, m.spec);
            logits = rr.logits;
            o.ttft = rr.ttft_s;
            o.ttft_cold = rr.ttft_s + cold_extra;
            o.recomputed = rr.recomputed;
            o.doc_tokens = rr.document_tokens;
            o.select_s = rr.select_s;
            o.recompute_s = rr.recompute_s;
          }
          if (mi == 0) {
            o.answer = greedy_answer(*s, logits, max_new, is_end, &ref_lp, kl_tokens);
            ref_answer = o.answer;
            std::vector<std::int32_t> shown = o.answer;
            if (!shown.empty() && tok.is_end_of_generation(shown.back())) shown.pop_back();
            ref_text = tok.decode(shown);
          } else {
            {  // KL on a fork teacher-forced on dense's answer, so every method is scored on the same tokens
              const auto f = s->fork();
              const std::size_t k = std::min(ref_lp.size(), ref_answer.size());
              const auto lp =
                  forced_log_probs(*f, logits, std::span<const std::int32_t>(ref_answer).first(k));
              for (std::size_t i = 0; i < k; ++i) o.kl += kl_divergence(ref_lp[i], lp[i]);
              o.kl /= static_cast<double>(std::max<std::size_t>(k, 1));
            }
            o.answer = greedy_answer(*s, logits, max_new, is_end);
          }
          std::vector<std::int32_t> shown = o.answer;
          if (!shown.empty() && tok.is_end_of_generation(shown.back())) shown.pop_back();
          o.text = tok.decode(shown);
          o.correct = o.text.find(rc.code) != std::string::npos;
          o.agree = first_line(o.text) == first_line(ref_text);
          if (m.full) {
            o.kv_bytes = s->kv_stats().bytes();
          } else {
            o.private_bytes = (reuse_store->pool().used_pages() - pages_before) * page_bytes;
            if (ran < concurrent) kept.push_back(std::move(s));
          }
          s.reset();
          if (!quiet)
            std::fprintf(stderr, "[%d tokens, request %d/%d] %-30s TTFT %7.2f s  %s  kl %.4f  %s\n", length,
                         r + 1, n_requests, m.name.c_str(), o.ttft, o.correct ? "ok  " : "MISS", o.kl,
                         o.text.c_str());
          jr["methods"][m.name] = {
              {"ttft_s", o.ttft},           {"ttft_cold_s", o.ttft_cold}, {"answer", o.text},
              {"correct", o.correct},       {"agree", o.agree},           {"kl", o.kl},
              {"recomputed", o.recomputed}, {"doc_tokens", o.doc_tokens}, {"private_bytes", o.private_bytes},
              {"kv_bytes", o.kv_bytes},     {"select_s", o.select_s},     {"recompute_s", o.recompute_s}};
          all[mi].push_back(o);
        }
        if (ran < concurrent) {
          for (int d : rc.doc_ids) kept_docs.insert(d);
          // The request's own tokens (system, question, answer) as pages of every head.
          const std::int64_t own_tok_pages =
              (static_cast<std::int64_t>(rc.request.system.size()) + page_size - 1) / page_size +
              (static_cast<std::int64_t>(rc.request.question.size()) + max_new + page_size - 1) / page_size;
          own_bytes.push_back(own_tok_pages * heads * page_bytes);
        }
        jl["requests"].push_back(jr);
        summarize(ran + 1);
        out["lengths_partial"] = jl;
        write_outputs();
      }

      kept.clear();
      out["lengths"].push_back(jl);
      out.erase("lengths_partial");
      out["load_end"] = load_average();
      write_outputs();
    }

    // The markdown table.
    std::ostringstream md;
    const auto mib = [](double b) { return b / 1048576.0; };
    for (const auto& jl : out["lengths"]) {
      const auto& mem = jl["memory"];
      md << "\n**" << jl["length"].get<int>() << "-token requests** (" << jl["requests"].size()
         << " requests; KV of the first " << mem["requests"].get<int>() << " alive together: documents once "
         << static_cast<long long>(std::lround(mib(mem["docs_once_bytes"].get<double>())))
         << " MiB + own tokens "
         << static_cast<long long>(std::lround(mib(mem["own_tokens_bytes"].get<double>()))) << " MiB)\n\n";
      md << "| method | TTFT warm (median) | TTFT cold (median) | speed-up vs dense | accuracy | agreement | "
            "KL "
            "(mean) | recomputed | KV, "
         << mem["requests"].get<int>() << " requests | KV / (docs once + own) |\n";
      md << "|---|---|---|---|---|---|---|---|---|---|\n";
      for (const auto& m : out["methods"]) {
        const auto& s = jl["summary"][m.get<std::string>()];
        char ratio[32] = "-";
        if (s.contains("kv_vs_docs_plus_own"))
          std::snprintf(ratio, sizeof ratio, "%.2fx", s["kv_vs_docs_plus_own"].get<double>());
        char b[512];
        std::snprintf(
            b, sizeof b, "| %s | %.2f s | %.2f s | %.1fx | %.2f | %.2f | %.4f | %.1f%% | %.0f MiB | %s |\n",
            m.get<std::string>().c_str(), s["ttft_median_s"].get<double>(),
            s["ttft_cold_median_s"].get<double>(), s["speedup_vs_dense"].get<double>(),
            s["accuracy"].get<double>(), s["agreement"].get<double>(), s["kl_mean"].get<double>(),
            100 * s["recomputed_fraction"].get<double>(), mib(s["kv_bytes_concurrent"].get<double>()), ratio);
        md << b;
      }
    }
    std::printf("%s", md.str().c_str());
    if (args.has("md")) std::ofstream(args.get("md")) << md.str();
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "redknot-rag-eval: %s\n", e.what());
    return 1;
  }
}
