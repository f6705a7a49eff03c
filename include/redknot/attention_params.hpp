// AttentionParams: the knobs of one attention call, and their one check (every binding relies on it).
#pragma once

#include <cmath>

#include "redknot/error.hpp"
#include "redknot/limits.hpp"

namespace redknot {

struct AttentionParams {
  float scale = 0.f;    // softmax scale (sm_scale); 0 selects 1 / sqrt(head_dim)
  int num_threads = 0;  // 0: OpenMP default; else [1, kMaxAttentionThreads]
  // Split-KV: a (sequence, kv_head, query tile) that sees more than kv_chunk keys is cut into ranges of page
  // entries of about kv_chunk keys, attended in parallel and merged by log-sum-exp, so one long global head
  // does not serialise a batch of short local ones. 0 disables splitting.
  int kv_chunk = 4096;
};

// The one check of AttentionParams, for cpu_attention and for bindings that must reject bad parameters even
// when a call has no query to run (`op` prefixes the message). The scale is named sm_scale, as in the C ABI,
// Python and FlashInfer: 0 is the default 1/sqrt(head_dim); negative, NaN and infinite values are rejected.
inline void check_attention_params(const AttentionParams& params, const char* op) {
  REDKNOT_CHECK(params.scale >= 0.f && std::isfinite(params.scale), InvalidArgument, op,
                ": sm_scale=", params.scale, " must be finite and >= 0 (0 selects 1/sqrt(head_dim))");
  REDKNOT_CHECK(params.num_threads >= 0 && params.num_threads <= kMaxAttentionThreads, InvalidArgument, op,
                ": num_threads=", params.num_threads, " must be in [0, ", kMaxAttentionThreads,
                "] (0: the OpenMP default)");
  REDKNOT_CHECK(params.kv_chunk >= 0, InvalidArgument, op, ": kv_chunk=", params.kv_chunk,
                " must be >= 0 (0: no split)");
}

}  // namespace redknot
