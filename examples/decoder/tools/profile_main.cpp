// redknot-profile: classifies every (layer, kv_head) of a model as global or local from calibration text and
// writes a RedKnot JSON head map, a score file and a heatmap.
//
// Two scores per head, each the max over the q heads of its GQA group (reference.md §1.4):
//   edge mass     mean attention mass outside sink ∪ window over sampled query rows of long documents
//   prefix shift  mean 1 - cos between the head's attention over a chunk alone and behind an unrelated prefix
//                 (over the chunk's keys past its first `sink` tokens, which alone act as the sink)
//   output error  mean |o_local - o| / |o| of the head's attention output when it sees only sink ∪ window
// --score output (default): score = output error, what a local head costs the model (docs/fidelity.md shows
// it picks better maps than the reference score on SmolLM2); --score reference: max(edge mass, prefix shift).
// The top floor(ratio * L * H) heads (at least one) become global.
//
// Two optional stages make the map fit a small model whose long-range reading is spread over many heads:
//   --retrieval N   N synthetic passkey prompts (calibration filler, not the evaluation's); each head's
//                   retrieval score is the attention mass on the passkey sentence from the tokens that write
//                   the answer. --retrieval-heads of the global slots (default: all of them) go to the best
//                   of these heads, the rest follow the score above.
//   --kv-reduction R  instead of one window for all local heads, windows are allocated per head (from the
//                   output error measured at each of --windows) so that one sequence of --budget-tokens holds
//                   1/R of the dense KV: window_allocation.hpp.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>

#include "attention_probe.hpp"
#include "cli_args.hpp"
#include "corpus.hpp"
#include "gguf.hpp"
#include "heatmap_png.hpp"
#include "model_path.hpp"
#include "progress.hpp"
#include "redknot/pool_sizing.hpp"
#include "thread_env.hpp"
#include "tokenizer.hpp"
#include "window_allocation.hpp"

using namespace redknot;
using namespace redknot::decoder;

namespace {

void usage() {
  std::fprintf(
      stderr,
      "usage: redknot-profile [--model M.gguf] [--out head_map.json] [--heatmap scores.png]\n"
      "                       [--global-ratio 0.15] [--window 512] [--sink 16] [--tokens 2048]\n"
      "                       [--docs 3] [--synthetic 1] [--rows 48] [--chunk-len 256] [--prefix-len 256]\n"
      "                       [--score output|reference] [--refine N] [--refine-tokens 1024]\n"
      "                       [--retrieval N] [--retrieval-tokens 4096] [--retrieval-heads K]\n"
      "                       [--kv-reduction R] [--budget-tokens 8192] [--windows 64,128,...]\n");
}

std::vector<std::int32_t> sample_rows(std::int32_t lo, std::int32_t hi, int n) {
  std::vector<std::int32_t> r;
  if (hi <= lo) return r;
  for (int i = 0; i < n; ++i)
    r.push_back(lo + static_cast<std::int32_t>((static_cast<std::int64_t>(hi - lo) * i) / n));
  r.erase(std::unique(r.begin(), r.end()), r.end());
  return r;
}

std::vector<std::int32_t> first_tokens(const Tokenizer& tok, const std::string& text, std::size_t n) {
  auto ids = tok.encode(text, false);
  if (ids.size() > n) ids.resize(n);
  return ids;
}

// Log-softmax rows [from, n) of a teacher-forced pass of `ids` under `map`, flattened.
std::vector<float> log_probs(const LlamaModel& model, const HeadMap& map,
                             const std::vector<std::int32_t>& ids, int from, int chunk) {
  SessionOptions so;
  so.max_context = static_cast<int>(ids.size());
  so.chunk = chunk;
  Session s(model, map, so);
  const auto V = static_cast<std::size_t>(model.config().vocab);
  std::vector<float> out, logits;
  for (std::size_t i = 0; i < ids.size(); i += static_cast<std::size_t>(chunk)) {
    const std::size_t n = std::min<std::size_t>(static_cast<std::size_t>(chunk), ids.size() - i);
    s.forward(std::span<const std::int32_t>(ids).subspan(i, n), true, logits);
    for (std::size_t r = 0; r < n; ++r) {
      if (static_cast<int>(i + r) < from) continue;
      const float* x = logits.data() + r * V;
      const float mx = *std::max_element(x, x + V);
      double z = 0;
      for (std::size_t v = 0; v < V; ++v) z += std::exp(static_cast<double>(x[v] - mx));
      const auto lse = static_cast<float>(mx + std::log(z));
      for (std::size_t v = 0; v < V; ++v) out.push_back(x[v] - lse);
    }
  }
  return out;
}

std::vector<int> parse_ints(const std::string& s) {
  std::vector<int> out;
  std::size_t at = 0;
  while (at < s.size()) {
    const std::size_t comma = std::min(s.find(',', at), s.size());
    out.push_back(std::stoi(s.substr(at, comma - at)));
    at = comma + 1;
  }
  return out;
}

// A passkey prompt for the retrieval score: token ids of prompt + answer, the passkey sentence's token range
// and the query rows whose next token is an answer token.
struct NeedleProbe {
  std::vector<std::int32_t> ids;
  std::int32_t span_begin = 0, span_end = 0;
  std::vector<std::int32_t> rows;
};

NeedleProbe needle_probe(const Tokenizer& tok, const std::vector<std::int32_t>& filler_ids, int tokens,
                         double depth, std::uint32_t seed) {
  const auto shape = needle_case("", depth, seed);
  const std::string overhead = tok.apply_chat_template(shape.facts + shape.question) + shape.answer_prefix;
  const auto budget = static_cast<std::size_t>(
      std::max<std::ptrdiff_t>(64, tokens - std::ssize(tok.encode(overhead)) - std::ssize(shape.answer)));
  const std::string filler = tok.decode(std::vector<std::int32_t>(
      filler_ids.begin(),
      filler_ids.begin() + static_cast<std::ptrdiff_t>(std::min(budget, filler_ids.size()))));
  const auto rc = needle_case(filler, depth, seed);
  const std::string text =
      tok.apply_chat_template(rc.haystack_before + rc.facts + rc.haystack_after + rc.question) +
      rc.answer_prefix;
  const std::size_t at = text.find(rc.facts);
  NeedleProbe p;
  p.ids = tok.encode(text);
  // Token boundaries of the facts, give or take the one token BPE may merge across the cut.
  p.span_begin =
      static_cast<std::int32_t>(std::max<std::ptrdiff_t>(0, std::ssize(tok.encode(text.substr(0, at))) - 1));
  p.span_end = static_cast<std::int32_t>(tok.encode(text.substr(0, at + rc.facts.size())).size() + 1);
  const auto answer = tok.encode(rc.answer, false);
  const auto prompt_len = static_cast<std::int32_t>(p.ids.size());
  p.ids.insert(p.ids.end(), answer.begin(), answer.end());
  for (std::int32_t r = prompt_len - 1; r + 1 < static_cast<std::int32_t>(p.ids.size()); ++r)
    p.rows.push_back(r);
  return p;
}

double mean_kl(const std::vector<float>& ref, const std::vector<float>& x, std::size_t V) {
  double kl = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) kl += std::exp(static_cast<double>(ref[i])) * (ref[i] - x[i]);
  return ref.empty() ? 0.0 : kl / static_cast<double>(ref.size() / V);
}

}  // namespace

int main(int argc, char** argv) {
  settle_thread_env(argv);
  try {
    const CliArgs args(argc, argv, {"help", "quiet"});
    if (args.has("help")) {
      usage();
      return 0;
    }
    const LoadedModel loaded = load_model(args.get("model", ""));
    const std::string out = args.get("out", "head_map.json");
    const std::string stem = out.size() > 5 && out.ends_with(".json") ? out.substr(0, out.size() - 5) : out;
    const std::string heatmap = args.get("heatmap", stem + ".png");
    const std::string scores_path = args.get("scores", stem + ".scores.json");
    const double ratio = args.get_double("global-ratio", 0.15);
    const int window = args.get_int("window", 512), sink = args.get_int("sink", 16);
    const int T = args.get_int("tokens", 2048), n_docs = args.get_int("docs", 3);
    const int n_synth = args.get_int("synthetic", 1), n_rows = args.get_int("rows", 48);
    const int chunk_len = args.get_int("chunk-len", 256), prefix_len = args.get_int("prefix-len", 256);
    const bool show = !args.has("quiet");
    const int n_retrieval = args.get_int("retrieval", 0);
    const int retrieval_tokens = args.get_int("retrieval-tokens", 4096);
    const double kv_reduction = args.get_double("kv-reduction", 0.0);
    const int budget_tokens = args.get_int("budget-tokens", 8192);
    const std::vector<int> windows =
        parse_ints(args.get("windows", "64,128,256,384,512,640,768,896,1024,1280,1536,2048,3072"));
    if (kv_reduction != 0.0 && kv_reduction < 1.0)
      throw std::runtime_error(
          "--kv-reduction must be >= 1 (or 0 for one window for every local head), got " +
          std::to_string(kv_reduction));

    const LlamaModel& model = loaded.model;
    const Tokenizer& tok = loaded.tokenizer;
    const LlamaConfig& c = model.config();
    const std::size_t LH = static_cast<std::size_t>(c.n_layers) * c.n_kv_heads;

    // Calibration documents: natural text from the machine, then synthetic record documents.
    const auto files = calibration_files();
    std::vector<std::vector<std::int32_t>> docs;
    for (int d = 0; d < n_docs && !files.empty(); ++d)
      docs.push_back(first_tokens(tok, concat_files(files, static_cast<std::size_t>(d) * 3, 12 * T), T));
    for (int d = 0; d < n_synth; ++d)
      docs.push_back(first_tokens(tok, synthetic_records_document(1000 + d, T / 40), T));
    if (docs.empty()) throw std::runtime_error("no calibration text found");

    const std::string score_kind = args.get("score", "output");
    if (score_kind != "output" && score_kind != "reference")
      throw std::runtime_error("--score must be output or reference");
    std::vector<double> edge(LH, 0.0), shift(LH, 0.0), oerr(LH, 0.0), retrieval(LH, 0.0);
    std::vector<std::vector<double>> curve(LH, std::vector<double>(windows.size(), 0.0));
    const HeadMap dense = HeadMap::all_global(c.n_layers, c.n_kv_heads);
    SessionOptions so;
    so.chunk = 256;
    ProgressBar bar("profile", show);
    const std::size_t steps = docs.size() * 3;
    std::size_t step = 0;
    for (std::size_t d = 0; d < docs.size(); ++d) {
      const auto& ids = docs[d];
      const auto n = static_cast<std::int32_t>(ids.size());
      // Edge mass over the whole document.
      {
        so.max_context = n;
        Session s(model, dense, so);
        ProbeConfig pc{window, sink, sample_rows(window + sink, n, n_rows), 0, false};
        if (kv_reduction > 0) pc.curve_windows = windows;
        AttentionProbe probe(c, pc);
        s.prefill(ids, {}, &probe);
        const auto e = probe.edge_mass();
        const auto o = probe.output_error();
        const auto cv = probe.error_curve();
        for (std::size_t i = 0; i < LH; ++i) {
          edge[i] += e[i] / static_cast<double>(docs.size());
          oerr[i] += o[i] / static_cast<double>(docs.size());
          for (std::size_t w = 0; w < cv[i].size(); ++w)
            curve[i][w] += cv[i][w] / static_cast<double>(docs.size());
        }
      }
      bar.update(++step, steps);
      // Prefix shift: a chunk from the middle of this document, alone and behind the start of another one.
      const auto cl = std::min(chunk_len, n / 2);
      const auto start = static_cast<std::size_t>(n / 2 - cl / 2);
      const std::vector<std::int32_t> chunk(ids.begin() + static_cast<std::ptrdiff_t>(start),
                                            ids.begin() + static_cast<std::ptrdiff_t>(start + cl));
      const auto& other = docs[(d + 1) % docs.size()];
      std::vector<std::int32_t> behind(
          other.begin(), other.begin() + std::min<std::ptrdiff_t>(prefix_len, std::ssize(other)));
      const auto P = static_cast<std::int32_t>(behind.size());
      behind.insert(behind.end(), chunk.begin(), chunk.end());
      const auto rows_a = sample_rows(std::max(cl / 4, sink + 1), cl, 32);
      std::vector<std::int32_t> rows_b;
      for (auto r : rows_a) rows_b.push_back(r + P);
      so.max_context = static_cast<int>(behind.size());
      Session sa(model, dense, so), sb(model, dense, so);
      // Alone, the chunk's first tokens become the attention sink; behind the prefix they are ordinary
      // tokens. Comparing over keys past the chunk's first `sink` tokens keeps that artefact out of the
      // score.
      AttentionProbe pa(c, ProbeConfig{window, sink, rows_a, sink, true});
      AttentionProbe pb(c, ProbeConfig{window, sink, rows_b, P + sink, true});
      sa.prefill(chunk, {}, &pa);
      bar.update(++step, steps);
      sb.prefill(behind, {}, &pb);
      bar.update(++step, steps);
      const auto sh = prefix_shift(pa, pb, c);
      for (std::size_t i = 0; i < LH; ++i) shift[i] += sh[i] / static_cast<double>(docs.size());
    }
    bar.finish();

    // Retrieval score: passkey prompts over calibration filler at spread depths.
    if (n_retrieval > 0) {
      const auto filler_ids =
          tok.encode(concat_files(files, 5, 12 * static_cast<std::size_t>(retrieval_tokens)), false);
      ProgressBar rbar("retrieval", show);
      for (int k = 0; k < n_retrieval; ++k) {
        const double depth = (k + 0.5) / n_retrieval;
        const auto np =
            needle_probe(tok, filler_ids, retrieval_tokens, depth, 7000u + static_cast<std::uint32_t>(k));
        SessionOptions ro;
        ro.chunk = 256;
        ro.max_context = static_cast<int>(np.ids.size());
        Session s(model, dense, ro);
        ProbeConfig pc{window, sink, np.rows, 0, false};
        pc.span_begin = np.span_begin;
        pc.span_end = np.span_end;
        AttentionProbe probe(c, pc);
        s.prefill(np.ids, {}, &probe);
        const auto m = probe.span_mass();
        for (std::size_t i = 0; i < LH; ++i) retrieval[i] += m[i] / n_retrieval;
        rbar.update(static_cast<std::size_t>(k + 1), static_cast<std::size_t>(n_retrieval));
      }
      rbar.finish();
    }

    std::vector<double> score(LH);
    for (std::size_t i = 0; i < LH; ++i)
      score[i] = score_kind == "output" ? oerr[i] : std::max(edge[i], shift[i]);
    std::vector<std::size_t> order(LH);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](auto a, auto b) { return score[a] > score[b]; });

    // Optional second stage: the top `refine` candidates are measured directly, by the mean KL of the model's
    // next-token distribution (positions past the window of a natural document) when only that head is local.
    // Candidates are then ranked by that KL, above every head not measured.
    const int refine = std::min<int>(args.get_int("refine", 0), static_cast<int>(LH));
    std::vector<double> ablation(LH, -1.0);
    if (refine > 0) {
      const int rt = args.get_int("refine-tokens", 1024);
      std::vector<std::int32_t> ids = docs[0];
      if (static_cast<int>(ids.size()) > rt) ids.resize(static_cast<std::size_t>(rt));
      const auto V = static_cast<std::size_t>(c.vocab);
      const auto ref = log_probs(model, dense, ids, window + sink, 256);
      ProgressBar rbar("refine", show);
      for (int k = 0; k < refine; ++k) {
        const std::size_t i = order[static_cast<std::size_t>(k)];
        HeadMap one = HeadMap::all_global(c.n_layers, c.n_kv_heads);
        one.set(static_cast<int>(i / c.n_kv_heads), static_cast<int>(i % c.n_kv_heads),
                HeadPolicy{HeadClass::kLocal, window, sink});
        ablation[i] = mean_kl(ref, log_probs(model, one, ids, window + sink, 256), V);
        rbar.update(static_cast<std::size_t>(k + 1), static_cast<std::size_t>(refine));
      }
      rbar.finish();
      std::stable_sort(order.begin(), order.begin() + refine,
                       [&](auto a, auto b) { return ablation[a] > ablation[b]; });
      // The map's score becomes: measured KL for candidates (shifted above the rest), stage-1 score
      // otherwise.
      const double top = *std::max_element(score.begin(), score.end());
      for (std::size_t i = 0; i < LH; ++i)
        if (ablation[i] >= 0) score[i] = top + ablation[i];
    }
    // floor, so the realised ratio never exceeds the requested one (round would give 14/90 = 15.6% here).
    const auto n_global =
        static_cast<std::size_t>(std::max(1.0, std::floor(ratio * static_cast<double>(LH) + 1e-9)));
    HeadMap map = HeadMap::uniform(c.n_layers, c.n_kv_heads, HeadClass::kLocal, window, sink);
    std::vector<bool> is_global(LH, false);
    std::size_t chosen = 0;
    // The retrieval heads first, then the score order.
    const auto n_by_retrieval = static_cast<std::size_t>(
        n_retrieval > 0 ? std::clamp(args.get_int("retrieval-heads", static_cast<int>(n_global)), 0,
                                     static_cast<int>(n_global))
                        : 0);
    std::vector<std::size_t> by_retrieval(LH);
    std::iota(by_retrieval.begin(), by_retrieval.end(), 0);
    std::stable_sort(by_retrieval.begin(), by_retrieval.end(),
                     [&](auto a, auto b) { return retrieval[a] > retrieval[b]; });
    for (std::size_t k = 0; k < n_by_retrieval; ++k, ++chosen) is_global[by_retrieval[k]] = true;
    double score_cutoff = -1;  // lowest score among the heads the score order made global
    for (std::size_t k = 0; chosen < std::min(n_global, LH) && k < LH; ++k)
      if (!is_global[order[k]]) {
        is_global[order[k]] = true;
        score_cutoff = score[order[k]];
        ++chosen;
      }
    for (std::size_t i = 0; i < LH; ++i)
      if (is_global[i])
        map.set(static_cast<int>(i / c.n_kv_heads), static_cast<int>(i % c.n_kv_heads),
                HeadPolicy{HeadClass::kGlobal});

    // Page accounting by the store's own retention rule (pool_sizing.hpp), at the budget's context length.
    const auto pages_of = [&](const HeadPolicy& p) { return steady_head_pages(p, 16, budget_tokens); };
    std::vector<int> head_window(LH, -1);
    if (kv_reduction > 0) {
      const std::int64_t dense_pages =
          static_cast<std::int64_t>(LH) * pages_of(HeadPolicy{HeadClass::kGlobal});
      const auto budget =
          static_cast<std::int64_t>(std::floor(static_cast<double>(dense_pages) / kv_reduction)) -
          static_cast<std::int64_t>(chosen) * pages_of(HeadPolicy{HeadClass::kGlobal});
      const auto alloc = allocate_windows(curve, windows, is_global, budget, [&](std::size_t, int w) {
        return pages_of(HeadPolicy{HeadClass::kLocal, w, sink});
      });
      for (std::size_t i = 0; i < LH; ++i)
        if (!is_global[i]) {
          head_window[i] = alloc.window[i];
          map.set(static_cast<int>(i / c.n_kv_heads), static_cast<int>(i % c.n_kv_heads),
                  HeadPolicy{HeadClass::kLocal, alloc.window[i], sink});
        }
    } else {
      for (std::size_t i = 0; i < LH; ++i)
        if (!is_global[i]) head_window[i] = window;
    }
    const std::int64_t map_pages = steady_sequence_pages(map, 16, budget_tokens);
    const double reduction =
        static_cast<double>(static_cast<std::int64_t>(LH) * pages_of(HeadPolicy{HeadClass::kGlobal})) /
        static_cast<double>(map_pages);
    map.save(out);

    nlohmann::json js;
    js["model"] = c.name;
    js["command"] = "redknot-profile --score " + score_kind + " --refine " + std::to_string(refine) +
                    " --global-ratio " + std::to_string(ratio) + " --window " + std::to_string(window) +
                    " --sink " + std::to_string(sink) + " --tokens " + std::to_string(T) + " --docs " +
                    std::to_string(n_docs) + " --synthetic " + std::to_string(n_synth) + " --rows " +
                    std::to_string(n_rows) + " --retrieval " + std::to_string(n_retrieval) +
                    " --retrieval-heads " + std::to_string(n_by_retrieval) + " --kv-reduction " +
                    std::to_string(kv_reduction) + " --budget-tokens " + std::to_string(budget_tokens);
    js["calibration_files"] =
        files.size() > 12 ? std::vector<std::string>(files.begin(), files.begin() + 12) : files;
    js["documents"] = docs.size();
    js["tokens_per_document"] = T;
    // The lowest score that made a head global, for the ranking(s) that filled the global slots.
    if (score_cutoff >= 0) js["cutoff_score"] = score_cutoff;
    if (n_by_retrieval > 0) js["cutoff_retrieval_mass"] = retrieval[by_retrieval[n_by_retrieval - 1]];
    js["realized_global_ratio"] = static_cast<double>(chosen) / static_cast<double>(LH);
    js["kv_reduction_at_budget_tokens"] = reduction;
    js["budget_tokens"] = budget_tokens;
    auto grid = [&](const std::vector<double>& v) {
      nlohmann::json g = nlohmann::json::array();
      for (int l = 0; l < c.n_layers; ++l)
        g.push_back(std::vector<double>(v.begin() + l * c.n_kv_heads, v.begin() + (l + 1) * c.n_kv_heads));
      return g;
    };
    js["edge_mass"] = grid(edge);
    js["prefix_shift"] = grid(shift);
    js["output_error"] = grid(oerr);
    js["score_kind"] = score_kind;
    js["refine"] = refine;
    js["ablation_kl"] = grid(ablation);
    js["score"] = grid(score);
    js["retrieval_mass"] = grid(retrieval);
    std::vector<double> wgrid(head_window.begin(), head_window.end());
    js["window"] = grid(wgrid);
    if (kv_reduction > 0) {
      js["curve_windows"] = windows;
      js["error_curve"] = curve;
    }
    std::ofstream(scores_path) << js.dump(1) << "\n";

    // Heatmap: rows are layers; six panels (edge mass | prefix shift | output error | score or refined KL |
    // retrieval mass | window, global heads as the widest),
    // each scaled to its own max, separated by a blank column; global heads framed in white.
    constexpr int kPanels = 6;
    const int H = c.n_kv_heads, cols = kPanels * H + kPanels - 1;
    std::vector<float> cells(static_cast<std::size_t>(c.n_layers) * cols, 0.f);
    std::vector<bool> marks(cells.size(), false);
    // With --refine the last panel shows the measured KL (unmeasured heads 0): the combined score would only
    // show the candidates saturated.
    std::vector<double> last = score;
    if (refine > 0)
      for (std::size_t i = 0; i < LH; ++i) last[i] = std::max(ablation[i], 0.0);
    std::vector<double> wpanel(LH, 0.0);  // global heads shown as the largest window
    const double wmax = std::max<double>(window, *std::max_element(head_window.begin(), head_window.end()));
    for (std::size_t i = 0; i < LH; ++i) wpanel[i] = is_global[i] ? wmax : head_window[i];
    const std::vector<double>* panels[kPanels] = {&edge, &shift, &oerr, &last, &retrieval, &wpanel};
    for (int p = 0; p < kPanels; ++p) {
      const double mx = std::max(1e-9, *std::max_element(panels[p]->begin(), panels[p]->end()));
      for (int l = 0; l < c.n_layers; ++l)
        for (int h = 0; h < H; ++h) {
          const std::size_t i = static_cast<std::size_t>(l) * H + h;
          const std::size_t cell = static_cast<std::size_t>(l) * cols + p * (H + 1) + h;
          cells[cell] = static_cast<float>((*panels[p])[i] / mx);
          marks[cell] = is_global[i];
        }
    }
    write_heatmap_png(heatmap, cells, c.n_layers, cols, 24, 14, marks);

    std::printf(
        "%zu of %zu heads global (%.1f%%, %zu by retrieval score), KV %.2fx smaller than dense at %d "
        "tokens\n",
        chosen, LH, 100.0 * static_cast<double>(chosen) / static_cast<double>(LH), n_by_retrieval, reduction,
        budget_tokens);
    std::printf("head map  %s\nscores    %s\nheatmap   %s\n", out.c_str(), scores_path.c_str(),
                heatmap.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "redknot-profile: %s\n", e.what());
    usage();
    return 1;
  }
}
