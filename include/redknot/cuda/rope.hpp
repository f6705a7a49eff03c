// RoPE relocation kernel (host entry point). The configuration, the frequency math and the CPU reference
// (rope_relocate_reference) are the core's, in redknot/rope.hpp.
#pragma once

#include <cstdint>

#include "redknot/cuda/common.hpp"
#include "redknot/rope.hpp"

namespace redknot::cuda {

// Rotates the K rows of `num_entries` page entries in place: entry e's slots [first, first + count) of page
// page_id by deltas[e]. pool is [num_pages][2][page_size][head_dim]; inv_freq (rot / 2 doubles, from
// rope_inv_freq(cfg)), entries and deltas are device pointers. V is never touched (RoPE applies to keys
// only).
void rope_relocate(void* pool, DType dtype, int page_size, const PageEntry* entries,
                   const std::int32_t* deltas, int num_entries, const RopeConfig& cfg, const double* inv_freq,
                   cudaStream_t stream);

}  // namespace redknot::cuda
