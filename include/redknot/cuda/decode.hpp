// Decode attention over the head-aware paged KV cache (one query token per sequence), CUDA backend.
//
// Work item = (batch item, kv_head) — a "unit" — with its g = Hq / Hk query heads packed in one CTA, so every
// K/V row is read once for the whole GQA group. Units are cut into chunks of page entries (split-KV) by a
// device-side plan (partition.hpp gives the rule and a host reference); chunks of one unit are merged with a
// log-sum-exp reduction. All buffers are caller-provided and the step does no host synchronisation, so a
// whole decode step (plan + attention + merge) can be captured in a CUDA graph.
//
// Semantics are those of redknot::cpu_attention for q_len = 1: out[b, qh, :] attends over the visible keys of
// kv head qh / g (canonical rule, visibility.hpp); a query that sees no key yields zeros and lse = -inf.
//
// Plain host functions (pointers, sizes, cudaStream_t); no kernels here.
#pragma once

#include <cstddef>
#include <cstdint>

#include "redknot/cuda/common.hpp"
#include "redknot/cuda/partition.hpp"

namespace redknot::cuda {

struct DecodeParams {
  PagedKV kv;
  DType dtype = DType::kBF16;  // of the pool, q and out
  int batch = 0;               // batch items; slot of (item, h) is kv.slots[item * num_kv_heads + h]
  int num_q_heads = 0;
  const void* q = nullptr;              // [batch, num_q_heads, head_dim]
  const std::int32_t* q_pos = nullptr;  // [batch] query positions (device)
  void* out = nullptr;                  // [batch, num_q_heads, head_dim]
  float* lse = nullptr;                 // [batch, num_q_heads] natural-log LSE, optional
  float scale = 0.f;                    // 0: 1 / sqrt(head_dim)
};

// Device pointers into a decode workspace (for tests and inspection).
struct DecodeWorkspaceView {
  std::int32_t* unit_entries = nullptr;  // [max_units]
  std::int32_t* chunk_offset = nullptr;  // [max_units + 1]
  std::int32_t* chunk_len = nullptr;     // [1]
  DecodeChunk* chunks = nullptr;         // [max_chunks]
  float* partial_out = nullptr;          // [max_chunks, group, head_dim]
  float* partial_lse = nullptr;          // [max_chunks, group]
  std::int64_t max_chunks = 0;
};

// Bytes of workspace a decode step with up to max_units = batch * num_kv_heads units needs.
std::size_t decode_workspace_bytes(int max_units, const DecodePartitionConfig& cfg, int group_size,
                                   int head_dim);

DecodeWorkspaceView decode_workspace_view(void* workspace, int max_units, const DecodePartitionConfig& cfg,
                                          int group_size, int head_dim);

// A sensible partition config for the current device: target ~ 2 waves of CTAs.
DecodePartitionConfig default_decode_partition_config(int device = -1);

// Builds the split-KV partition on the device (plan kernels + CUB scans). Enqueued on stream; no host sync.
void decode_plan(const DecodeParams& p, void* workspace, std::size_t workspace_bytes,
                 const DecodePartitionConfig& cfg, int max_units, cudaStream_t stream);

// Plan + attention + merge. max_units (>= batch * num_kv_heads) is what the workspace was sized for. The grid
// is sized for the worst case of this batch (batch * num_kv_heads + cfg.target_chunks CTAs; the device plan
// decides how many do work), so a captured graph stays valid for any contexts as long as the batch size, the
// pointers and cfg stay the same (capture one graph per batch size, as engines do).
void decode_attention(const DecodeParams& p, void* workspace, std::size_t workspace_bytes,
                      const DecodePartitionConfig& cfg, int max_units, cudaStream_t stream);

}  // namespace redknot::cuda
