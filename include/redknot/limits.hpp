// The limits redknot enforces on sizes and counts, one constant each. The C ABI mirrors them as RK_MAX_* in
// c_api.h (static_asserts keep the two equal); the checks themselves live with the value they bound, in the
// core, so every binding rejects the same inputs with the same message.
#pragma once

#include <cstdint>

namespace redknot {

// OpenMP threads one attention call may ask for (AttentionParams::num_threads; RK_MAX_NUM_THREADS). libgomp
// exits the process when it cannot create the threads (~40000) and crashes beyond 65535.
inline constexpr int kMaxAttentionThreads = 1024;

// Query heads of a model (ModelShape::num_q_heads; RK_MAX_NUM_Q_HEADS).
inline constexpr std::int64_t kMaxNumQHeads = 65536;

// num_layers * num_kv_heads of a head map or a model (RK_MAX_LAYERS_X_KV_HEADS): every head holds a table in
// every sequence, so a larger grid is a mistake, not a model.
inline constexpr std::int64_t kMaxLayersTimesKvHeads = std::int64_t{1} << 20;

// Token counts (a capacity query's num_tokens and chunk; RK_MAX_TOKENS): positions are int32, so a sequence
// never holds more than 2^31 of them.
inline constexpr std::int64_t kMaxTokens = std::int64_t{1} << 31;

// HeadMap::to_json's indent (-1: compact): a larger one is a mistake and makes a huge string.
inline constexpr int kMaxJsonIndent = 16;

}  // namespace redknot
