// redknot-eval: fidelity of head maps against dense attention on one model.
//
//   teacher-forced  long natural text, every position p >= window: top-1 agreement of the next-token argmax
//                   and mean KL(dense || map) of the next-token distributions
//   needle          one passkey hidden at several depths of a long haystack; correct when every answer digit
//                   is the argmax (teacher-forced greedy)
//   multikey        several named passkeys together at a depth, one of them asked for
// Maps: dense (reference), the given profiled map, a random map with as many global heads, and all-local; the
// last two give every local head one window: the profiled map's when it has one, else (per-head windows) the
// widest page-multiple window that keeps the random map within the profiled map's KV at --budget-tokens.
// With per-head windows a fourth map, "profiled-uniform", keeps the profiled global heads with that uniform
// window, so the value of the window allocation is measured separately from the head selection.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "cli_args.hpp"
#include "corpus.hpp"
#include "gguf.hpp"
#include "model_path.hpp"
#include "progress.hpp"
#include "redknot/error.hpp"
#include "redknot/pool_sizing.hpp"
#include "session.hpp"
#include "thread_env.hpp"
#include "tokenizer.hpp"

using namespace redknot;
using namespace redknot::decoder;

namespace {

void usage() {
  std::fprintf(stderr,
               "usage: redknot-eval --head-map profiled.json [--model M.gguf] [--lengths 2048,4096,8192]\n"
               "                    [--tasks teacher,needle,multikey] [--depths 0.1,0.5,0.9] [--keys 4]\n"
               "                    [--json results.json] [--seed 1] [--extra-maps name=path,...]\n"
               "                    [--score-from 512] [--budget-tokens 8192]\n");
}

struct NamedMap {
  std::string name;
  HeadMap map;
};

HeadPolicy first_local(const HeadMap& m) {
  for (int l = 0; l < m.num_layers(); ++l)
    for (int h = 0; h < m.num_kv_heads(); ++h)
      if (m.policy(l, h).is_local()) return m.policy(l, h);
  return HeadPolicy{HeadClass::kLocal, 512, 16};
}

bool uniform_windows(const HeadMap& m) {
  const HeadPolicy first = first_local(m);
  for (int l = 0; l < m.num_layers(); ++l)
    for (int h = 0; h < m.num_kv_heads(); ++h)
      if (m.policy(l, h).is_local() && m.policy(l, h) != first) return false;
  return true;
}

// Pages one sequence of `tokens` holds under `m`, by the store's retention rule.
std::int64_t map_pages(const HeadMap& m, int tokens) { return steady_sequence_pages(m, 16, tokens); }

// `like` with its global heads kept and every local head given `loc`.
HeadMap with_uniform_local(const HeadMap& like, HeadPolicy loc) {
  HeadMap m = like;
  for (int l = 0; l < m.num_layers(); ++l)
    for (int h = 0; h < m.num_kv_heads(); ++h)
      if (m.raw(l, h).is_local()) m.set(l, h, loc);
  return m;
}

// The local policy the baselines use: the profiled map's own when uniform, else the widest window (a page
// multiple) at which the same global heads with one window hold no more KV at `tokens` than `like`.
HeadPolicy baseline_local(const HeadMap& like, int tokens) {
  const HeadPolicy first = first_local(like);
  if (uniform_windows(like)) return first;
  const std::int64_t target = map_pages(like, tokens);
  HeadPolicy best{HeadClass::kLocal, 16, first.sink};
  for (int w = 16; w <= tokens; w += 16) {
    const HeadPolicy p{HeadClass::kLocal, w, first.sink};
    if (map_pages(with_uniform_local(like, p), tokens) > target) break;
    best = p;
  }
  return best;
}

HeadMap random_map(const HeadMap& like, HeadPolicy loc, std::uint32_t seed) {
  const int L = like.num_layers(), H = like.num_kv_heads();
  HeadMap m = HeadMap::uniform(L, H, HeadClass::kLocal, loc.window, loc.sink);
  std::vector<int> idx(static_cast<std::size_t>(L * H));
  for (int i = 0; i < L * H; ++i) idx[static_cast<std::size_t>(i)] = i;
  std::mt19937 rng(seed);
  std::shuffle(idx.begin(), idx.end(), rng);
  for (int k = 0; k < like.count_global_like(); ++k)
    m.set(idx[static_cast<std::size_t>(k)] / H, idx[static_cast<std::size_t>(k)] % H,
          HeadPolicy{HeadClass::kGlobal});
  return m;
}

// log-softmax of one row, in double.
void log_softmax(const float* x, std::size_t n, std::vector<double>& out) {
  out.resize(n);
  const float mx = *std::max_element(x, x + n);
  double s = 0;
  for (std::size_t i = 0; i < n; ++i) s += std::exp(static_cast<double>(x[i] - mx));
  const double lse = mx + std::log(s);
  for (std::size_t i = 0; i < n; ++i) out[i] = x[i] - lse;
}

struct TeacherStats {
  std::int64_t n = 0, agree = 0;
  double kl = 0, nll = 0;
  std::int64_t kv_bytes = 0;
};

// Runs dense and every map side by side over `ids` in chunks; scores positions >= from.
std::vector<TeacherStats> teacher_forced(const LlamaModel& model, const std::vector<NamedMap>& maps,
                                         const std::vector<std::int32_t>& ids, int from, int chunk,
                                         ProgressBar& bar) {
  SessionOptions so;
  so.max_context = static_cast<int>(ids.size());
  so.chunk = chunk;
  std::vector<std::unique_ptr<Session>> ss;
  for (const auto& m : maps) ss.push_back(std::make_unique<Session>(model, m.map, so));
  std::vector<TeacherStats> st(maps.size());
  const auto V = static_cast<std::size_t>(model.config().vocab);
  std::vector<std::vector<float>> logits(maps.size());
  std::vector<double> ld, lx;
  for (std::size_t i = 0; i < ids.size(); i += static_cast<std::size_t>(chunk)) {
    const std::size_t n = std::min<std::size_t>(static_cast<std::size_t>(chunk), ids.size() - i);
    const auto part = std::span<const std::int32_t>(ids).subspan(i, n);
    for (std::size_t m = 0; m < maps.size(); ++m) ss[m]->forward(part, true, logits[m]);
    for (std::size_t r = 0; r < n; ++r) {
      const std::size_t p = i + r;
      if (static_cast<int>(p) < from || p + 1 >= ids.size()) continue;
      const float* d = logits[0].data() + r * V;
      log_softmax(d, V, ld);
      const auto top_d = std::max_element(d, d + V) - d;
      for (std::size_t m = 0; m < maps.size(); ++m) {
        const float* x = logits[m].data() + r * V;
        log_softmax(x, V, lx);
        double kl = 0;
        for (std::size_t v = 0; v < V; ++v) kl += std::exp(ld[v]) * (ld[v] - lx[v]);
        st[m].n += 1;
        st[m].agree += (std::max_element(x, x + V) - x) == top_d;
        st[m].kl += kl;
        st[m].nll -= lx[static_cast<std::size_t>(ids[p + 1])];
      }
    }
    bar.update(i + n, ids.size());
  }
  for (std::size_t m = 0; m < maps.size(); ++m) st[m].kv_bytes = ss[m]->kv_stats().bytes();
  return st;
}

// True when every answer token is the argmax after the prompt (greedy decoding would write the answer).
bool answers(const LlamaModel& model, const HeadMap& map, const std::vector<std::int32_t>& prompt,
             const std::vector<std::int32_t>& answer, int chunk) {
  SessionOptions so;
  so.max_context = static_cast<int>(prompt.size() + answer.size());
  so.chunk = chunk;
  Session s(model, map, so);
  std::vector<float> logits = s.prefill(prompt);
  if (argmax(logits) != answer[0]) return false;
  if (answer.size() == 1) return true;
  s.forward(std::span<const std::int32_t>(answer).first(answer.size() - 1), true, logits);
  const auto V = static_cast<std::size_t>(model.config().vocab);
  for (std::size_t j = 1; j < answer.size(); ++j)
    if (argmax(std::span<const float>(logits).subspan((j - 1) * V, V)) != answer[j]) return false;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  settle_thread_env(argv);
  try {
    const CliArgs args(argc, argv, {"help", "quiet"});
    if (args.has("help") || !args.has("head-map")) {
      usage();
      return args.has("help") ? 0 : 1;
    }
    const LoadedModel loaded = load_model(args.get("model", ""));
    const LlamaModel& model = loaded.model;
    const Tokenizer& tok = loaded.tokenizer;
    const LlamaConfig& c = model.config();
    const int chunk = args.get_int("chunk", 256);
    const auto seed = static_cast<std::uint32_t>(args.get_int("seed", 1));
    const bool show = !args.has("quiet");

    HeadMap profiled = HeadMap::load(args.get("head-map"));
    profiled.validate_shape(c.n_layers, c.n_kv_heads);
    const int budget_tokens = args.get_int("budget-tokens", 8192);
    const HeadPolicy loc = baseline_local(profiled, budget_tokens);
    std::vector<NamedMap> maps = {
        {"dense", HeadMap::all_global(c.n_layers, c.n_kv_heads)},
        {"profiled", profiled},
        {"random", random_map(profiled, loc, seed)},
        {"all-local", HeadMap::uniform(c.n_layers, c.n_kv_heads, HeadClass::kLocal, loc.window, loc.sink)}};
    if (!uniform_windows(profiled)) maps.push_back({"profiled-uniform", with_uniform_local(profiled, loc)});
    // Extra maps to compare, "name=path,name=path".
    for (const auto& spec : split_list(args.get("extra-maps"))) {
      const auto eq = spec.find('=');
      require(eq != std::string::npos, "--extra-maps entries are name=path, got '", spec, "'");
      HeadMap m = HeadMap::load(spec.substr(eq + 1));
      m.validate_shape(c.n_layers, c.n_kv_heads);
      maps.push_back({spec.substr(0, eq), std::move(m)});
    }
    std::vector<int> lengths;
    for (const auto& s : split_list(args.get("lengths", "2048"))) lengths.push_back(std::stoi(s));
    const auto tasks = split_list(args.get("tasks", "teacher,needle,multikey"));
    std::vector<double> depths;
    for (const auto& s : split_list(args.get("depths", "0.1,0.5,0.9"))) depths.push_back(std::stod(s));
    const int n_keys = args.get_int("keys", 4);

    nlohmann::json out;
    out["model"] = c.name;
    out["head_map"] = args.get("head-map");
    out["window"] = loc.window;  // the baselines' window
    out["sink"] = loc.sink;
    out["per_head_windows"] = !uniform_windows(profiled);
    const int score_from = args.get_int("score-from", 512);
    out["score_from"] = score_from;
    for (const auto& m : maps)
      out["kv_reduction_at_budget"][m.name] = static_cast<double>(map_pages(maps[0].map, budget_tokens)) /
                                              static_cast<double>(map_pages(m.map, budget_tokens));
    out["budget_tokens"] = budget_tokens;
    for (const auto& m : maps) out["global_heads"][m.name] = m.map.count_global_like();
    const auto eval_text = concat_files(evaluation_files(), 0, 40 * 8192);
    const auto filler_text = concat_files(evaluation_files(), 7, 40 * 8192);
    const auto text_ids = tok.encode(eval_text, false);
    const auto filler_ids = tok.encode(filler_text, false);
    const auto t_start = std::chrono::steady_clock::now();

    for (const int L : lengths) {
      const std::string key = std::to_string(L);
      if (std::find(tasks.begin(), tasks.end(), "teacher") != tasks.end()) {
        require(text_ids.size() >= static_cast<std::size_t>(L), "evaluation text has only ", text_ids.size(),
                " tokens, need ", L);
        const std::vector<std::int32_t> ids(text_ids.begin(), text_ids.begin() + L);
        ProgressBar bar("teacher " + key, show);
        const auto st = teacher_forced(model, maps, ids, score_from, chunk, bar);
        bar.finish();
        for (std::size_t m = 0; m < maps.size(); ++m) {
          auto& j = out["teacher"][key][maps[m].name];
          j["positions"] = st[m].n;
          j["top1_agreement"] = st[m].n ? static_cast<double>(st[m].agree) / st[m].n : 0.0;
          j["mean_kl"] = st[m].n ? st[m].kl / st[m].n : 0.0;
          j["nll"] = st[m].n ? st[m].nll / st[m].n : 0.0;
          j["kv_bytes"] = st[m].kv_bytes;
        }
      }
      for (const std::string task : {"needle", "multikey"}) {
        if (std::find(tasks.begin(), tasks.end(), task) == tasks.end()) continue;
        std::vector<int> correct(maps.size(), 0);
        int total = 0;
        ProgressBar bar(task + " " + key, show);
        for (std::size_t di = 0; di < depths.size(); ++di) {
          const auto case_seed = seed * 1000 + static_cast<std::uint32_t>(L + di);
          const auto probe = task == "needle" ? needle_case("", depths[di], case_seed)
                                              : multikey_case("", depths[di], n_keys, case_seed);
          const std::string overhead =
              tok.apply_chat_template(probe.facts + probe.question) + probe.answer_prefix;
          const auto budget = static_cast<std::size_t>(L) - tok.encode(overhead).size() - probe.answer.size();
          const std::string filler = tok.decode(std::vector<std::int32_t>(
              filler_ids.begin(), filler_ids.begin() + static_cast<std::ptrdiff_t>(budget)));
          const auto rc = task == "needle" ? needle_case(filler, depths[di], case_seed)
                                           : multikey_case(filler, depths[di], n_keys, case_seed);
          const auto prompt = tok.encode(
              tok.apply_chat_template(rc.haystack_before + rc.facts + rc.haystack_after + rc.question) +
              rc.answer_prefix);
          const auto answer = tok.encode(rc.answer, false);
          nlohmann::json cj;
          cj["depth"] = depths[di];
          cj["prompt_tokens"] = prompt.size();
          for (std::size_t m = 0; m < maps.size(); ++m) {
            const bool ok = answers(model, maps[m].map, prompt, answer, chunk);
            correct[m] += ok;
            cj[maps[m].name] = ok;
            bar.update(di * maps.size() + m + 1, depths.size() * maps.size());
          }
          out[task][key]["cases"].push_back(cj);
          ++total;
        }
        bar.finish();
        for (std::size_t m = 0; m < maps.size(); ++m)
          out[task][key]["accuracy"][maps[m].name] = total ? static_cast<double>(correct[m]) / total : 0.0;
      }
    }
    out["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    const std::string dump = out.dump(1);
    if (args.has("json")) std::ofstream(args.get("json")) << dump << "\n";
    std::printf("%s\n", dump.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "redknot-eval: %s\n", e.what());
    usage();
    return 1;
  }
}
