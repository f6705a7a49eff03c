#include "rag.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>

#include "redknot/error.hpp"

namespace redknot::decoder {

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  std::size_t b = 0;
  for (std::size_t i = 0; i <= s.size(); ++i)
    if (i == s.size() || s[i] == sep) {
      out.push_back(s.substr(b, i - b));
      b = i + 1;
    }
  return out;
}

double parse_number(std::string_view s, std::string_view what) {
  std::size_t used = 0;
  double x = 0;
  try {
    x = std::stod(std::string(s), &used);
  } catch (const std::exception&) {
    used = 0;
  }
  require(used == s.size() && !s.empty(), "recompute spec: ", what, " '", s, "' is not a number");
  return x;
}

// select_recompute over the pages of a document (tokens [p * page_size, (p + 1) * page_size) share page p of
// a chunk prefilled from position 0), expanded back to tokens.
std::vector<std::int32_t> select_pages(const RecomputeConfig& cfg, const RecomputeInputs& in, int page_size) {
  const std::int32_t n = in.n_tokens, P = (n + page_size - 1) / page_size;
  const std::size_t H = in.policies.size();
  std::vector<float> dev;
  RecomputeInputs pin;
  pin.n_tokens = P;
  pin.policies = in.policies;
  if (!in.deviation.empty()) {
    dev.assign(static_cast<std::size_t>(P) * H, 0.f);
    for (std::int32_t t = 0; t < n; ++t)
      for (std::size_t h = 0; h < H; ++h) {
        const float d = in.deviation[static_cast<std::size_t>(t) * H + h];
        float& acc = dev[static_cast<std::size_t>(t / page_size) * H + h];
        if (!std::isnan(d)) acc += d;
      }
    pin.deviation = dev;
  }
  RecomputeConfig pc = cfg;
  pc.first_k = (cfg.first_k + page_size - 1) / page_size;
  std::vector<std::int32_t> out;
  for (std::int32_t p : select_recompute(pc, pin))
    for (std::int32_t t = p * page_size; t < std::min(n, (p + 1) * page_size); ++t) out.push_back(t);
  return out;
}

}  // namespace

RecomputeSpec parse_recompute_spec(std::string_view text) {
  RecomputeSpec spec;
  std::string_view body = text;
  if (body.size() > 5 && body.substr(body.size() - 5) == "/page") {
    spec.pages = true;
    body.remove_suffix(5);
  }
  if (const auto at = body.find("+tail:"); at != std::string_view::npos) {
    spec.tail = static_cast<int>(parse_number(body.substr(at + 6), "tail"));
    body = body.substr(0, at);
  }
  if (const auto at = body.find('@'); at != std::string_view::npos) {
    spec.layer = static_cast<int>(parse_number(body.substr(at + 1), "layer"));
    body = body.substr(0, at);
  }
  const auto parts = split(body, ':');
  spec.cfg.strategy = parse_recompute_strategy(parts[0]);
  spec.cfg.ratio = 0;
  spec.cfg.first_k = 0;
  const auto want = [&](std::size_t n, const char* form) {
    require(parts.size() == n, "recompute spec '", text, "': expected ", form);
  };
  switch (spec.cfg.strategy) {
    case RecomputeStrategy::kNone:
      want(1, "none");
      break;
    case RecomputeStrategy::kFirstK:
      want(2, "first_k:K");
      spec.cfg.first_k = static_cast<int>(parse_number(parts[1], "k"));
      break;
    case RecomputeStrategy::kDeviationTopK:
      want(2, "deviation_topk:RATIO");
      spec.cfg.ratio = parse_number(parts[1], "ratio");
      break;
    case RecomputeStrategy::kGlobalDeviationTopK:
      require(parts.size() == 2 || parts.size() == 3, "recompute spec '", text,
              "': expected global_deviation_topk:RATIO[:K]");
      spec.cfg.ratio = parse_number(parts[1], "ratio");
      if (parts.size() == 3) spec.cfg.first_k = static_cast<int>(parse_number(parts[2], "k"));
      break;
    case RecomputeStrategy::kQueryTopK:
      throw InvalidArgument(detail::concat("recompute spec '", text,
                                           "': query_topk needs the question's attention, which the "
                                           "decoder does not measure"));
  }
  require(spec.cfg.ratio >= 0 && spec.cfg.ratio <= 1, "recompute spec '", text, "': ratio must be in [0, 1]");
  require(spec.cfg.first_k >= 0, "recompute spec '", text, "': k must be >= 0");
  require(spec.layer >= 0, "recompute spec '", text, "': layer must be >= 0");
  require(spec.tail >= 0, "recompute spec '", text, "': tail must be >= 0");
  return spec;
}

std::string recompute_spec_name(const RecomputeSpec& spec) {
  // snprintf rather than string concatenation: GCC 12 warns falsely (-Wrestrict) about the latter at -O3.
  char b[96];
  const std::string_view name = recompute_strategy_name(spec.cfg.strategy);
  const int nn = static_cast<int>(name.size());
  switch (spec.cfg.strategy) {
    case RecomputeStrategy::kFirstK:
      std::snprintf(b, sizeof b, "%.*s:%d", nn, name.data(), spec.cfg.first_k);
      break;
    case RecomputeStrategy::kDeviationTopK:
      std::snprintf(b, sizeof b, "%.*s:%g", nn, name.data(), spec.cfg.ratio);
      break;
    case RecomputeStrategy::kGlobalDeviationTopK:
      if (spec.cfg.first_k > 0)
        std::snprintf(b, sizeof b, "%.*s:%g:%d", nn, name.data(), spec.cfg.ratio, spec.cfg.first_k);
      else
        std::snprintf(b, sizeof b, "%.*s:%g", nn, name.data(), spec.cfg.ratio);
      break;
    default:
      std::snprintf(b, sizeof b, "%.*s", nn, name.data());
      break;
  }
  std::string s = b;
  if (spec.needs_deviation() && spec.layer != 1) {
    std::snprintf(b, sizeof b, "@%d", spec.layer);
    s += b;
  }
  if (spec.tail > 0) {
    std::snprintf(b, sizeof b, "+tail:%d", spec.tail);
    s += b;
  }
  if (spec.pages) s += "/page";
  return s;
}

DocumentCache::DocumentCache(const LlamaModel& model, std::shared_ptr<Store> store, std::string model_id,
                             SessionOptions opt)
    : model_(model), store_(std::move(store)), model_id_(std::move(model_id)), opt_(opt) {
  require(store_ != nullptr, "DocumentCache: no store");
  require(store_->rope() != nullptr,
          "DocumentCache: the store has no RoPE spec, so chunks could not sit at other offsets "
          "(Session::make_store)");
}

ChunkKey DocumentCache::key(std::span<const std::int32_t> tokens) const {
  return store_->chunk_key(model_id_, tokens);
}

bool DocumentCache::contains(std::span<const std::int32_t> tokens) const {
  return store_->has_chunk(key(tokens));
}

double DocumentCache::add(std::span<const std::int32_t> tokens) {
  require(!tokens.empty(), "DocumentCache::add: empty document");
  const ChunkKey k = key(tokens);
  if (store_->has_chunk(k)) return 0;
  const auto t0 = Clock::now();
  SessionOptions o = opt_;
  o.max_context = static_cast<int>(tokens.size());
  o.chunk = static_cast<int>(tokens.size());
  Session s(model_, store_, o);
  s.prefill_chunk(tokens);  // one forward: every head keeps every key
  store_->register_chunk(k, s.release());
  const double sec = since(t0);
  seconds_[k] = sec;
  return sec;
}

double DocumentCache::prefill_seconds(std::span<const std::int32_t> tokens) const {
  auto it = seconds_.find(key(tokens));
  return it == seconds_.end() ? 0 : it->second;
}

std::vector<std::int32_t> RagRequest::tokens() const {
  std::vector<std::int32_t> t = system;
  for (const auto& d : documents) t.insert(t.end(), d.begin(), d.end());
  t.insert(t.end(), question.begin(), question.end());
  return t;
}

std::int64_t RagRequest::document_tokens() const {
  std::int64_t n = 0;
  for (const auto& d : documents) n += static_cast<std::int64_t>(d.size());
  return n;
}

RagResult prefill_rag(Session& s, const DocumentCache& cache, const RagRequest& req,
                      const RecomputeSpec& spec) {
  require(s.position() == 0, "prefill_rag: the session must start empty (position ", s.position(), ")");
  require(s.shared_store() == cache.store(), "prefill_rag: the session is not in the cache's store");
  require(!req.question.empty(), "prefill_rag: empty question");
  const LlamaConfig& c = s.model().config();
  require(!spec.needs_deviation() || spec.layer < c.n_layers, "prefill_rag: deviation layer ", spec.layer,
          " out of range [0, ", c.n_layers, ")");
  RagResult r;
  const auto t0 = Clock::now();
  if (!req.system.empty()) s.prefill(req.system);
  r.system_s = since(t0);

  Store& store = s.store();
  const std::size_t H = static_cast<std::size_t>(c.n_kv_heads), D = static_cast<std::size_t>(c.head_dim);
  std::vector<float> kf, vf, kc, vc;
  std::vector<HeadPolicy> policies;
  if (spec.needs_deviation())
    for (int h = 0; h < c.n_kv_heads; ++h) policies.push_back(store.policy(spec.layer, h));
  const std::int64_t question_at = static_cast<std::int64_t>(req.system.size()) + req.document_tokens();
  for (const auto& doc : req.documents) {
    auto t = Clock::now();
    const ChunkKey key = cache.key(doc);
    require(store.has_chunk(key), "prefill_rag: a document of ", doc.size(),
            " tokens is not cached (DocumentCache::add it first)");
    const std::int32_t at = s.position();
    const auto n = static_cast<std::int32_t>(doc.size());
    // Queries inside the document run when tokens may be recomputed: the first may be its first token.
    const std::int64_t tail_from = std::max<std::int64_t>(0, question_at - spec.tail - at);  // doc-local
    const bool in_tail = spec.tail > 0 && tail_from < static_cast<std::int64_t>(doc.size());
    const bool recompute = spec.cfg.strategy != RecomputeStrategy::kNone || in_tail;
    s.splice(key, recompute ? at : -1);
    r.splice_s += since(t);
    r.document_tokens += n;
    if (!recompute) continue;

    t = Clock::now();
    std::vector<std::int32_t> positions(doc.size());
    for (std::int32_t i = 0; i < n; ++i) positions[static_cast<std::size_t>(i)] = at + i;
    RecomputeInputs in;
    in.n_tokens = n;
    std::vector<float> dev;
    if (spec.needs_deviation()) {
      s.fresh_kv(doc, positions, spec.layer, kf, vf);
      kc.resize(kf.size());
      vc.resize(vf.size());
      store.read_rows(s.sequence(), spec.layer, positions, kc, vc);
      dev = kv_deviation(kf, vf, kc, vc, n, static_cast<int>(H), static_cast<int>(D));
      in.deviation = dev;
      in.policies = policies;
    }
    std::vector<std::int32_t> sel =
        spec.pages ? select_pages(spec.cfg, in, store.page_size()) : select_recompute(spec.cfg, in);
    if (in_tail) {  // union with [tail_from, n), still sorted
      std::vector<std::int32_t> merged;
      for (std::int32_t i : sel)
        if (i < tail_from) merged.push_back(i);
      for (auto i = static_cast<std::int32_t>(tail_from); i < n; ++i) merged.push_back(i);
      sel = std::move(merged);
    }
    r.select_s += since(t);
    if (sel.empty()) continue;

    t = Clock::now();
    std::vector<std::int32_t> toks(sel.size()), pos(sel.size());
    for (std::size_t i = 0; i < sel.size(); ++i) {
      toks[i] = doc[static_cast<std::size_t>(sel[i])];
      pos[i] = at + sel[i];
    }
    s.recompute(toks, pos);
    r.recompute_s += since(t);
    r.recomputed += static_cast<std::int64_t>(sel.size());
  }

  const auto tq = Clock::now();
  r.logits = s.prefill(req.question);
  (void)argmax(r.logits);  // the first answer token is chosen here: part of TTFT
  r.question_s = since(tq);
  r.ttft_s = since(t0);
  return r;
}

std::vector<float> log_softmax(std::span<const float> logits) {
  const float m = *std::max_element(logits.begin(), logits.end());
  double z = 0;
  for (float x : logits) z += std::exp(static_cast<double>(x) - m);
  const double lz = m + std::log(z);
  std::vector<float> out(logits.size());
  for (std::size_t i = 0; i < logits.size(); ++i) out[i] = static_cast<float>(logits[i] - lz);
  return out;
}

double kl_divergence(std::span<const float> log_p, std::span<const float> log_q) {
  require(log_p.size() == log_q.size(), "kl_divergence: sizes differ");
  double kl = 0;
  for (std::size_t i = 0; i < log_p.size(); ++i) {
    const double lp = log_p[i];
    if (lp == -std::numeric_limits<double>::infinity()) continue;
    kl += std::exp(lp) * (lp - log_q[i]);
  }
  return std::max(0.0, kl);
}

std::vector<std::int32_t> greedy_answer(Session& s, std::vector<float> logits, int max_new,
                                        const std::function<bool(std::int32_t)>& is_end,
                                        std::vector<std::vector<float>>* log_probs, int keep) {
  std::vector<std::int32_t> out;
  while (static_cast<int>(out.size()) < max_new) {
    if (log_probs && static_cast<int>(log_probs->size()) < keep) log_probs->push_back(log_softmax(logits));
    const std::int32_t next = argmax(logits);
    out.push_back(next);
    if ((is_end && is_end(next)) || static_cast<int>(out.size()) == max_new) break;
    s.forward(std::span<const std::int32_t>(&next, 1), false, logits);
  }
  return out;
}

std::vector<std::vector<float>> forced_log_probs(Session& s, std::vector<float> logits,
                                                 std::span<const std::int32_t> forced) {
  std::vector<std::vector<float>> out;
  for (std::size_t i = 0; i < forced.size(); ++i) {
    out.push_back(log_softmax(logits));
    if (i + 1 < forced.size()) s.forward(forced.subspan(i, 1), false, logits);
  }
  return out;
}

}  // namespace redknot::decoder
