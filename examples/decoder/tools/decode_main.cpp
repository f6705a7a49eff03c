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
//
//   redknot-decode --role prefill|decode --name NAME (--remote HOST:PORT[,...] | --tier-dir DIR) ...
// Prefill/decode disaggregation (src/pd_transfer.hpp): `prefill` prefills the prompt, samples the first token
// and publishes the KV and a handoff record under NAME; `decode` (another process, same --model, --mode and
// --head-map) restores them into a store of its own and generates. --remote: a Redis Cluster (RedisTier);
// --tier-dir: a DiskTier directory.
//
// --prompt-tokens N keeps the first N tokens of the (templated) prompt; --ids prints the generated ids on a
// second line. Both work with and without --role, so a single-process run can be compared with a P/D pair.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>

#include "cli_args.hpp"
#include "generate.hpp"
#include "gguf.hpp"
#include "model_path.hpp"
#include "pd_transfer.hpp"
#include "rag.hpp"
#include "rag_bench.hpp"
#include "thread_env.hpp"
#include "tokenizer.hpp"
#ifdef REDKNOT_HAS_REDIS
#include "redknot/redis_tier.hpp"
#endif

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

// --key as an int, or InvalidArgument naming the flag and its value (std::stoi would only say "stoi").
int int_arg(const CliArgs& args, const std::string& key, int fallback) {
  if (!args.has(key)) return fallback;
  const std::string v = args.get(key);
  std::size_t used = 0;
  int n = 0;
  try {
    n = std::stoi(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  require(used != 0 && used == v.size(), "--", key, " '", v, "' is not an integer");
  return n;
}

// The prompt's token ids: templated unless --raw, cut to --prompt-tokens when given.
std::vector<std::int32_t> prompt_ids(const CliArgs& args, const Tokenizer& tok, const std::string& prompt) {
  const std::string text =
      !args.has("raw") && tok.has_chat_template() ? tok.apply_chat_template(prompt) : prompt;
  std::vector<std::int32_t> ids = tok.encode(text);
  if (args.has("prompt-tokens")) {
    const int n = int_arg(args, "prompt-tokens", 0);
    require(n > 0, "--prompt-tokens ", n, " must be > 0");
    require(static_cast<std::size_t>(n) <= ids.size(), "--prompt-tokens ", n, ": the prompt has only ",
            ids.size(), " tokens");
    ids.resize(static_cast<std::size_t>(n));
  }
  require(!ids.empty(), "the prompt is empty");
  return ids;
}

void print_ids(const std::vector<std::int32_t>& ids) {
  for (std::size_t i = 0; i < ids.size(); ++i) std::printf("%s%d", i == 0 ? "ids " : " ", ids[i]);
  std::printf("\n");
}

// The tier a --role names: a Redis Cluster (--remote) or a directory (--tier-dir).
struct RoleTier {
#ifdef REDKNOT_HAS_REDIS
  std::unique_ptr<RedisClusterClient> client;
#endif
  std::unique_ptr<KvTier> tier;
  std::string where;
};

RoleTier open_role_tier(const CliArgs& args) {
  RoleTier t;
  require(args.has("remote") != args.has("tier-dir"),
          "--role needs one of --remote HOST:PORT[,...] and --tier-dir DIR");
  if (args.has("tier-dir")) {
    const std::string dir = args.get("tier-dir");
    require(!dir.empty(), "--tier-dir '", dir, "' is empty");
    t.tier = std::make_unique<DiskTier>(dir, std::int64_t{1} << 40);
    t.where = "DiskTier " + dir;
    return t;
  }
#ifdef REDKNOT_HAS_REDIS
  RedisClusterOptions o;
  o.seeds = split_list(args.get("remote"));
  require(!o.seeds.empty(), "--remote '", args.get("remote"), "' names no HOST:PORT");
  for (const std::string& s : o.seeds)
    require(s.find(':') != std::string::npos, "--remote '", args.get("remote"), "': seed '", s,
            "' is not HOST:PORT");
  // Objects of a long prompt are several MiB: give a put or get room beyond the defaults.
  o.command_timeout = std::chrono::milliseconds(5000);
  o.request_deadline = std::chrono::milliseconds(20000);
  t.client = std::make_unique<RedisClusterClient>(o);
  RedisTierOptions ro;
  ro.prefix = "redknot-pd";
  t.tier = std::make_unique<RedisTier>(*t.client, ro);
  t.where = "RedisTier " + args.get("remote");
  return t;
#else
  throw Unavailable("--remote: this build has no RedisTier (hiredis was not found); use --tier-dir");
#endif
}

// The model's fingerprint for the handoff: of the GGUF file's name, so both sides agree wherever the file is.
std::uint64_t role_model_fp(const CliArgs& args) {
  const std::string path = args.get("model", "").empty() ? default_model_path() : args.get("model");
  return model_fingerprint(std::filesystem::path(path).filename().string());
}

// --role prefill|decode.
int run_role(const CliArgs& args, const LlamaModel& model, const Tokenizer& tok, bool quiet) {
  using Clock = std::chrono::steady_clock;
  const std::string role = args.get("role");
  require(role == "prefill" || role == "decode", "--role '", role, "' is not one of prefill, decode");
  const std::string name = args.get("name");
  require(!name.empty(), "--role ", role, " needs --name NAME");
  check_object_name(name);
  const LlamaConfig& c = model.config();
  const std::string mode = args.get("mode", "redknot");
  const HeadMap map = head_map_for(mode, args.get("head-map"), c);
  const int max_new = int_arg(args, "max-new", 64);
  require(max_new > 0, "--max-new ", max_new, " must be > 0");
  SessionOptions so;
  so.chunk = int_arg(args, "chunk", 256);
  so.threads = int_arg(args, "threads", 0);
  RoleTier rt = open_role_tier(args);
  const std::uint64_t fp = role_model_fp(args);
  if (role == "prefill") {
    const std::vector<std::int32_t> prompt = prompt_ids(args, tok, read_prompt(args));
    // As generate_tokens() sizes it, so that both runs are the same computation.
    so.max_context = int_arg(args, "max-context", static_cast<int>(prompt.size()) + max_new + 1);
    Session s(model, map, so);
    const auto t0 = Clock::now();
    const std::vector<float> logits = s.prefill(prompt);
    const std::int32_t first = argmax(logits);
    const double prefill_s = std::chrono::duration<double>(Clock::now() - t0).count();
    const PdPublishStats st = publish_prefill(s, first, *rt.tier, fp, name);
    // Dense payload: every head, every position, fp32 K and V rows, no headers.
    const std::int64_t dense =
        static_cast<std::int64_t>(prompt.size()) * c.n_layers * c.n_kv_heads * c.head_dim * 2 * 4;
    const std::int64_t published = st.kv_bytes + st.ticket_bytes;
    std::printf("first_token %d %s\n", first, tok.decode({first}).c_str());
    std::printf("published %lld bytes (kv %lld in %lld objects, ticket %lld), dense %lld, ratio %.4f\n",
                static_cast<long long>(published), static_cast<long long>(st.kv_bytes),
                static_cast<long long>(st.objects), static_cast<long long>(st.ticket_bytes),
                static_cast<long long>(dense), static_cast<double>(published) / static_cast<double>(dense));
    std::printf("prompt_tokens %zu prefill_s %.3f publish_s %.3f\n", prompt.size(), prefill_s, st.seconds);
    if (!quiet) std::fprintf(stderr, "published '%s' to %s\n", name.c_str(), rt.where.c_str());
    return 0;
  }
  // decode: the pool holds the prompt's KV twice while the position is moved (pd_transfer.hpp).
  so.max_context = int_arg(args, "max-context", 0);
  const auto t0 = Clock::now();
  // The prompt's length is in the record; max_context is fixed when the session is made, so read it first.
  const auto record = rt.tier->get(pd_ticket_name(name));
  require<NotFound>(record.has_value(), "--name '", name, "': no handoff record '", pd_ticket_name(name),
                    "' in ", rt.where);
  std::string why;
  const auto peek = decode_pd_handoff(*record, &why);
  require<Unavailable>(peek.has_value(), "--name '", name, "': ", why);
  if (so.max_context <= 0) so.max_context = peek->position + max_new + 1;
  auto store = Session::make_store(model, map, so.page_size,
                                   pd_decode_store_pages(model, so.page_size, so.max_context, 0));
  Session s(model, store, so);
  PdRestoreStats rs;
  const PdHandoff h = restore_decode(s, *rt.tier, fp, name, &rs);
  const double restore_s = std::chrono::duration<double>(Clock::now() - t0).count();
  const auto t1 = Clock::now();
  std::vector<std::int32_t> ids =
      continue_greedy(s, h.first_token, max_new, [&](std::int32_t t) { return tok.is_end_of_generation(t); });
  const double decode_s = std::chrono::duration<double>(Clock::now() - t1).count();
  std::vector<std::int32_t> shown = ids;
  if (!shown.empty() && tok.is_end_of_generation(shown.back())) shown.pop_back();
  std::printf("%s\n", tok.decode(shown).c_str());
  if (args.has("ids")) print_ids(ids);
  std::fflush(stdout);
  // Always, in a form scripts/pd-transfer.sh reads.
  if (!quiet)
    std::fprintf(stderr, "restored '%s' from %s: %lld KV bytes, %d prompt tokens, %zu new tokens\n",
                 name.c_str(), rt.where.c_str(), static_cast<long long>(rs.kv_bytes), h.position, ids.size());
  std::fprintf(stderr, "restore_s %.3f (%.3f, %.3f)\n", restore_s, rs.read_ticket_s, rs.swap_in_s);
  std::fprintf(stderr, "decode_s %.3f\n", decode_s);
  return 0;
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
    const CliArgs args(argc, argv, {"raw", "quiet", "help", "rag", "ids"});
    if (args.has("help")) {
      usage();
      return 0;
    }
    const LoadedModel loaded = load_model(args.get("model", ""));
    const bool quiet = args.has("quiet");
    const LlamaModel& model = loaded.model;
    const Tokenizer& tok = loaded.tokenizer;
    if (args.has("rag")) return run_rag(args, model, tok, quiet);
    if (args.has("role")) return run_role(args, model, tok, quiet);

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

    // --prompt-tokens / --ids: the same run from token ids (to compare with a --role prefill/decode pair).
    const bool by_ids = args.has("prompt-tokens") || args.has("ids");
    const GenerateResult r =
        by_ids ? generate_tokens(model, tok, prompt_ids(args, tok, prompt),
                                 head_map_for(go.mode, go.head_map_path, model.config()), go)
               : generate(model, tok, prompt, go);
    std::printf("%s\n", r.text.c_str());
    if (args.has("ids")) print_ids(r.tokens);
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
