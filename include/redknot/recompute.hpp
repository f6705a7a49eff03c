// Which tokens of a spliced chunk to recompute (position-independent reuse).
//
// A chunk computed alone has not seen the text before it. Reuse stays accurate when a few of its tokens are
// run through the model again with their real context and their fresh K/V replace the cached ones for that
// sequence (KVHeadStore::overwrite; the shared chunk stays intact). The selector decides which tokens, from
// what the engine measured. Strategies:
//   none                   pure reuse;
//   first_k                the chunk's first k tokens (EPIC / LegoLink: the chunk's own attention sink);
//   deviation_topk         CacheBlend: at an early layer the engine computes the tokens' fresh K/V with
//   context;
//                          the ratio r of tokens whose K/V deviate most from the cached ones (all heads);
//   global_deviation_topk  ours, head-aware: the same measured on global heads only. Local heads read only
//   sink
//                          + window, which a relocated chunk reproduces past its first window; the deviation
//                          that matters is what global heads read. Adds the first k tokens (0: none);
//   query_topk             the tokens the question's queries attend to most (attention mass on global heads,
//                          measured by the engine), ratio r.
// Selection is deterministic: ties break towards the earlier token. Results are sorted token indices.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <span>
#include <string_view>
#include <vector>

#include "redknot/core_types.hpp"
#include "redknot/error.hpp"

namespace redknot {

enum class RecomputeStrategy : std::uint8_t {
  kNone = 0,
  kFirstK = 1,
  kDeviationTopK = 2,
  kGlobalDeviationTopK = 3,
  kQueryTopK = 4,
};

std::string_view recompute_strategy_name(RecomputeStrategy s);
RecomputeStrategy parse_recompute_strategy(std::string_view name);  // InvalidArgument naming the value

struct RecomputeConfig {
  RecomputeStrategy strategy = RecomputeStrategy::kNone;
  double ratio = 0.15;  // deviation_topk, global_deviation_topk, query_topk: fraction of tokens, in [0, 1]
  int first_k = 0;      // first_k, global_deviation_topk: leading tokens always recomputed, >= 0
};

// What the engine measured for one chunk of n tokens at one layer (whatever the strategy needs; the rest may
// be empty).
struct RecomputeInputs {
  std::int32_t n_tokens = 0;
  std::span<const float> deviation;      // [n_tokens, num_kv_heads], e.g. from kv_deviation(); NaN: not held
  std::span<const HeadPolicy> policies;  // [num_kv_heads] of that layer (which heads are global)
  std::span<const float> query_attention;  // [n_tokens]
};

// Squared L2 distance between fresh and cached K plus fresh and cached V, per (token, kv_head), for rows laid
// out [n, num_kv_heads, head_dim]. The cached keys must be rotated for the same positions as the fresh ones
// (KVHeadStore::read_rows returns them so).
inline std::vector<float> kv_deviation(std::span<const float> k_fresh, std::span<const float> v_fresh,
                                       std::span<const float> k_cached, std::span<const float> v_cached,
                                       std::int32_t n, int num_kv_heads, int head_dim) {
  const std::size_t rows = static_cast<std::size_t>(n) * static_cast<std::size_t>(num_kv_heads);
  const std::size_t need = rows * static_cast<std::size_t>(head_dim);
  require(n >= 0 && num_kv_heads > 0 && head_dim > 0, "kv_deviation: n=", n, ", num_kv_heads=", num_kv_heads,
          ", head_dim=", head_dim, " must be >= 0, > 0, > 0");
  require(
      k_fresh.size() == need && v_fresh.size() == need && k_cached.size() == need && v_cached.size() == need,
      "kv_deviation: every input must hold n*num_kv_heads*head_dim = ", need, " values (got ", k_fresh.size(),
      ", ", v_fresh.size(), ", ", k_cached.size(), ", ", v_cached.size(), ")");
  std::vector<float> dev(rows);
  for (std::size_t r = 0; r < rows; ++r) {
    double s = 0;
    for (std::size_t d = r * static_cast<std::size_t>(head_dim);
         d < (r + 1) * static_cast<std::size_t>(head_dim); ++d) {
      const double dk = static_cast<double>(k_fresh[d]) - k_cached[d],
                   dv = static_cast<double>(v_fresh[d]) - v_cached[d];
      s += dk * dk + dv * dv;
    }
    dev[r] = static_cast<float>(s);
  }
  return dev;
}

// Sorted token indices to recompute. Throws InvalidArgument (naming the field and value) on a ratio outside
// [0, 1], a negative first_k, or inputs the strategy needs that are missing, mis-sized or not finite.
std::vector<std::int32_t> select_recompute(const RecomputeConfig& cfg, const RecomputeInputs& in);

}  // namespace redknot
