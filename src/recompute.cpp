// select_recompute: the strategies of recompute.hpp.
#include "redknot/recompute.hpp"

namespace redknot {

namespace {

constexpr std::string_view kNames[] = {"none", "first_k", "deviation_topk", "global_deviation_topk",
                                       "query_topk"};

// Indices of the `count` largest scores (ties: earlier first), plus [0, first_k), sorted.
std::vector<std::int32_t> top_tokens(std::span<const double> score, std::int64_t count,
                                     std::int32_t first_k) {
  const auto n = static_cast<std::int32_t>(score.size());
  std::vector<std::int32_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  count = std::clamp<std::int64_t>(count, 0, n);
  std::partial_sort(order.begin(), order.begin() + count, order.end(), [&](std::int32_t a, std::int32_t b) {
    return score[static_cast<std::size_t>(a)] != score[static_cast<std::size_t>(b)]
               ? score[static_cast<std::size_t>(a)] > score[static_cast<std::size_t>(b)]
               : a < b;
  });
  std::vector<bool> pick(static_cast<std::size_t>(n), false);
  for (std::int64_t i = 0; i < count; ++i)
    pick[static_cast<std::size_t>(order[static_cast<std::size_t>(i)])] = true;
  for (std::int32_t i = 0; i < std::min(first_k, n); ++i) pick[static_cast<std::size_t>(i)] = true;
  std::vector<std::int32_t> out;
  for (std::int32_t i = 0; i < n; ++i)
    if (pick[static_cast<std::size_t>(i)]) out.push_back(i);
  return out;
}

std::int64_t ratio_count(double ratio, std::int32_t n) {
  return static_cast<std::int64_t>(std::ceil(ratio * static_cast<double>(n) - 1e-9));
}

// Per-token sum of the deviation over the heads `use` selects.
std::vector<double> head_sum(const RecomputeInputs& in, bool global_only) {
  const std::size_t H = in.policies.size();
  require(H > 0, "select_recompute: policies is empty (one per kv head of the layer is needed)");
  require(in.deviation.size() == static_cast<std::size_t>(in.n_tokens) * H,
          "select_recompute: deviation has ", in.deviation.size(),
          " values, expected n_tokens*num_kv_heads = ", in.n_tokens, "*", H);
  std::vector<double> s(static_cast<std::size_t>(in.n_tokens), 0.0);
  bool any = false;
  for (std::size_t h = 0; h < H; ++h) {
    if (global_only && in.policies[h].is_local()) continue;
    any = true;
    for (std::size_t t = 0; t < s.size(); ++t) {
      const float d = in.deviation[t * H + h];
      if (std::isnan(d)) continue;  // the head no longer holds the token (read_rows): nothing reads it
      require(std::isfinite(d) && d >= 0.f, "select_recompute: deviation[", t, ", ", h, "]=", d,
              " must be finite and >= 0 (or NaN for a token the head no longer holds)");
      s[t] += d;
    }
  }
  // A layer without global heads gives the head-aware strategy nothing to measure: fall back to all heads.
  if (!any) return head_sum(in, false);
  return s;
}

}  // namespace

std::string_view recompute_strategy_name(RecomputeStrategy s) {
  const auto i = static_cast<std::size_t>(s);
  return i < std::size(kNames) ? kNames[i] : "?";
}

RecomputeStrategy parse_recompute_strategy(std::string_view name) {
  for (std::size_t i = 0; i < std::size(kNames); ++i)
    if (name == kNames[i]) return static_cast<RecomputeStrategy>(i);
  throw InvalidArgument(
      detail::concat("recompute strategy '", name,
                     "' is not one of none, first_k, deviation_topk, global_deviation_topk, "
                     "query_topk"));
}

std::vector<std::int32_t> select_recompute(const RecomputeConfig& cfg, const RecomputeInputs& in) {
  require(in.n_tokens >= 0, "select_recompute: n_tokens=", in.n_tokens, " must be >= 0");
  require(cfg.ratio >= 0.0 && cfg.ratio <= 1.0, "select_recompute: ratio=", cfg.ratio, " must be in [0, 1]");
  require(cfg.first_k >= 0, "select_recompute: first_k=", cfg.first_k, " must be >= 0");
  const std::int32_t n = in.n_tokens;
  switch (cfg.strategy) {
    case RecomputeStrategy::kNone:
      return {};
    case RecomputeStrategy::kFirstK:
      return top_tokens(std::vector<double>(static_cast<std::size_t>(n), 0.0), 0, cfg.first_k);
    case RecomputeStrategy::kDeviationTopK:
      return top_tokens(head_sum(in, false), ratio_count(cfg.ratio, n), 0);
    case RecomputeStrategy::kGlobalDeviationTopK:
      return top_tokens(head_sum(in, true), ratio_count(cfg.ratio, n), cfg.first_k);
    case RecomputeStrategy::kQueryTopK: {
      require(in.query_attention.size() == static_cast<std::size_t>(n),
              "select_recompute: query_attention has ", in.query_attention.size(),
              " values, expected n_tokens = ", n);
      std::vector<double> s(static_cast<std::size_t>(n));
      for (std::size_t t = 0; t < s.size(); ++t) {
        require(std::isfinite(in.query_attention[t]), "select_recompute: query_attention[", t,
                "]=", in.query_attention[t], " is not finite");
        s[t] = in.query_attention[t];
      }
      return top_tokens(s, ratio_count(cfg.ratio, n), 0);
    }
  }
  throw InvalidArgument(detail::concat("select_recompute: strategy=", static_cast<int>(cfg.strategy),
                                       " is not a RecomputeStrategy"));
}

}  // namespace redknot
