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
#include "thread_env.hpp"
#include "tokenizer.hpp"

using namespace redknot;
using namespace redknot::decoder;

namespace {

void usage() {
  std::fprintf(
      stderr,
      "usage: redknot-profile [--model M.gguf] [--out head_map.json] [--heatmap scores.png]\n"
      "                       [--global-ratio 0.15] [--window 512] [--sink 16] [--tokens 2048]\n"
      "                       [--docs 3] [--synthetic 1] [--rows 48] [--chunk-len 256] [--prefix-len 256]\n"
      "                       [--score output|reference] [--refine N] [--refine-tokens 1024]\n");
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
    std::vector<double> edge(LH, 0.0), shift(LH, 0.0), oerr(LH, 0.0);
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
        AttentionProbe probe(c, ProbeConfig{window, sink, sample_rows(window + sink, n, n_rows), 0, false});
        s.prefill(ids, {}, &probe);
        const auto e = probe.edge_mass();
        const auto o = probe.output_error();
        for (std::size_t i = 0; i < LH; ++i) {
          edge[i] += e[i] / static_cast<double>(docs.size());
          oerr[i] += o[i] / static_cast<double>(docs.size());
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
    for (std::size_t k = 0; k < n_global && k < LH; ++k) {
      const std::size_t i = order[k];
      is_global[i] = true;
      map.set(static_cast<int>(i / c.n_kv_heads), static_cast<int>(i % c.n_kv_heads),
              HeadPolicy{HeadClass::kGlobal});
    }
    map.save(out);

    nlohmann::json js;
    js["model"] = c.name;
    js["command"] = "redknot-profile --score " + score_kind + " --refine " + std::to_string(refine) +
                    " --global-ratio " + std::to_string(ratio) + " --window " + std::to_string(window) +
                    " --sink " + std::to_string(sink) + " --tokens " + std::to_string(T) + " --docs " +
                    std::to_string(n_docs) + " --synthetic " + std::to_string(n_synth) + " --rows " +
                    std::to_string(n_rows);
    js["calibration_files"] =
        files.size() > 12 ? std::vector<std::string>(files.begin(), files.begin() + 12) : files;
    js["documents"] = docs.size();
    js["tokens_per_document"] = T;
    js["cutoff_score"] = score[order[std::min(n_global, LH) - 1]];
    js["realized_global_ratio"] = static_cast<double>(n_global) / static_cast<double>(LH);
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
    std::ofstream(scores_path) << js.dump(1) << "\n";

    // Heatmap: rows are layers; four panels (edge mass | prefix shift | output error | score or refined KL),
    // each scaled to its own max, separated by a blank column; global heads framed in white.
    const int H = c.n_kv_heads, cols = 4 * H + 3;
    std::vector<float> cells(static_cast<std::size_t>(c.n_layers) * cols, 0.f);
    std::vector<bool> marks(cells.size(), false);
    // With --refine the last panel shows the measured KL (unmeasured heads 0): the combined score would only
    // show the candidates saturated.
    std::vector<double> last = score;
    if (refine > 0)
      for (std::size_t i = 0; i < LH; ++i) last[i] = std::max(ablation[i], 0.0);
    const std::vector<double>* panels[4] = {&edge, &shift, &oerr, &last};
    for (int p = 0; p < 4; ++p) {
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

    std::printf("%zu of %zu heads global (%.1f%%), cutoff score %.4f\n", n_global, LH,
                100.0 * static_cast<double>(n_global) / static_cast<double>(LH), score[order[n_global - 1]]);
    std::printf("head map  %s\nscores    %s\nheatmap   %s\n", out.c_str(), scores_path.c_str(),
                heatmap.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "redknot-profile: %s\n", e.what());
    usage();
    return 1;
  }
}
