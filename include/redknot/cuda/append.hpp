// Append: scatter the engine's new K/V [n_tokens, num_kv_heads, head_dim] into each head's pages (the role of
// vLLM's reshape_and_cache). Where each (token, head) goes is decided on the host by the store's bookkeeping
// (KVHeadStore::append) and passed as a slot mapping: dst_row[t * num_kv_heads + h] = page_id * 2 * page_size
// + slot, or -1 to skip. Plain host function.
#pragma once

#include <cstdint>

#include "redknot/cuda/common.hpp"

namespace redknot::cuda {

// k, v: [n_tokens, num_kv_heads, head_dim] in the pool's dtype (device). dst_row: [n_tokens * num_kv_heads]
// (device). head_dim must be a multiple of 8 (16-byte vectors).
void append_kv(void* pool, DType dtype, int page_size, int head_dim, int num_kv_heads, const void* k,
               const void* v, const std::int32_t* dst_row, int n_tokens, cudaStream_t stream);

}  // namespace redknot::cuda
