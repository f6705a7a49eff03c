// The paged KV of one layer as the kernels see it: plain data, no CUDA headers. The entries, slots and
// policies are the core's own types (redknot/core_types.hpp), so a device copy of an AttentionPlan is a
// memcpy.
#pragma once

#include <cstdint>

#include "redknot/core_types.hpp"
#include "redknot/dtype.hpp"
#include "redknot/rope.hpp"

namespace redknot::cuda {

// Kernels address K/V rows as page_id * 2 * page_size + slot in int32 (the row count of the pool,
// num_pages * 2 * page_size, must stay below 2^31) and elements in int64.
struct PagedKV {
  const void* pool = nullptr;  // [num_pages][2][page_size][head_dim] of the store's DType (f16 or bf16)
  int page_size = 16;
  int head_dim = 128;
  int num_kv_heads = 0;
  const PageEntry* arena = nullptr;      // AttentionPlan arena mirror
  const PlanSlot* slots = nullptr;       // [batch][num_kv_heads]
  const HeadPolicy* policies = nullptr;  // [num_kv_heads], this layer
  // The model's RoPE, for entries whose keys were rotated for other positions than they sit at (a chunk
  // spliced elsewhere: PageEntry::rope_delta() != 0). The kernels score such keys with queries
  // counter-rotated by -delta (rope.hpp). rope_inv_freq: rope_half values (rope_inv_freq()); null when the
  // store has no RoPE spec, in which case no entry has a delta.
  const double* rope_inv_freq = nullptr;
  int rope_half = 0;
  RopePairing rope_pairing = RopePairing::kRotateHalf;
};

}  // namespace redknot::cuda
