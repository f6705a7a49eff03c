// Prefill / chunked-prefill attention over the head-aware paged KV cache, CUDA backend (tensor cores).
//
// FlashAttention-2-style: a CTA owns a tile of 64 packed rows of one (batch item, kv_head) — row r is query
// r / g, query head r % g of the GQA group, so K/V tiles are shared by the whole group — and streams 64-key
// tiles through mma.sync m16n8k16 (fp16/bf16 in, fp32 accumulate) with an online softmax. Key tiles are
// gathered from the head's page entries, visiting only entries some query of the tile can see (causal, sink,
// window from positions), so a local head costs O(sink + window + tile span), not O(context). The engine
// appends a chunk's K/V before attending (KVHeadStore contract), so "cached pages plus the new chunk" are all
// in the pages.
//
// Semantics are those of redknot::cpu_attention: out [total_q, Hq, D], optional natural-log lse [total_q,
// Hq]; a row that sees no key yields zeros and lse = -inf. Plain host functions; no kernels here.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "redknot/cuda/common.hpp"

namespace redknot::cuda {

constexpr int kPrefillTileRows = 64;

// One CTA of work: packed rows [row0, row0 + 64) of (item, kv_head).
struct PrefillTile {
  std::int32_t item;
  std::int32_t kv_head;
  std::int32_t row0;
  std::int32_t reserved;
};
static_assert(sizeof(PrefillTile) == 16, "PrefillTile is read by device code as one 16-byte load");

struct PrefillParams {
  PagedKV kv;
  DType dtype = DType::kBF16;
  int num_q_heads = 0;
  const void* q = nullptr;                // [total_q, num_q_heads, head_dim]
  const std::int32_t* q_pos = nullptr;    // [total_q]
  const std::int32_t* q_begin = nullptr;  // [batch] first row of each item in q (PlanItem::q_begin)
  const std::int32_t* q_len = nullptr;    // [batch]
  void* out = nullptr;                    // [total_q, num_q_heads, head_dim]
  float* lse = nullptr;                   // [total_q, num_q_heads], optional
  float scale = 0.f;                      // 0: 1 / sqrt(head_dim)
  const PrefillTile* tiles = nullptr;     // [num_tiles] (device)
  int num_tiles = 0;
};

// Host: the tiles of a batch, costliest first so the long tiles start in the first wave: tiles of global
// heads (cost ~ context) before local ones (cost ~ window), later query tiles (more causal keys) before
// earlier ones.
inline std::vector<PrefillTile> make_prefill_tiles(const std::vector<std::int32_t>& q_lens,
                                                   const std::vector<bool>& head_is_local, int group_size) {
  std::vector<PrefillTile> t;
  const int H = static_cast<int>(head_is_local.size());
  for (std::size_t i = 0; i < q_lens.size(); ++i)
    for (int h = 0; h < H; ++h)
      for (std::int64_t r = 0; r < static_cast<std::int64_t>(q_lens[i]) * group_size; r += kPrefillTileRows)
        t.push_back(PrefillTile{static_cast<std::int32_t>(i), h, static_cast<std::int32_t>(r), 0});
  std::stable_sort(t.begin(), t.end(), [&](const PrefillTile& a, const PrefillTile& b) {
    const bool la = head_is_local[static_cast<std::size_t>(a.kv_head)];
    const bool lb = head_is_local[static_cast<std::size_t>(b.kv_head)];
    if (la != lb) return !la;
    return a.row0 > b.row0;
  });
  return t;
}

void prefill_attention(const PrefillParams& p, cudaStream_t stream);

}  // namespace redknot::cuda
