// AnyStore: a type-erased KVHeadStore for bindings (the C ABI and the Python module).
//
// KVHeadStore is templated on the storage type so kernels see concrete types; language bindings need one
// runtime type. make_store() picks the instantiation from ModelShape::dtype and the device, and the wrapper
// adds what an engine's step needs on top of the store:
//   * tensors in as DLTensor (any strides; dtype and device checked against the store, naming the argument),
//   * the FlashInfer-style step protocol: plan() records the batch once per step, run(layer) brings that
//     layer's AttentionPlan up to date (incrementally: one plan per layer lives across steps) and attends,
//   * a mutex, so that calls on one store from several threads are serialised instead of racing,
//   * FlashInfer CSR export of a layer's page tables.
// Every call validates before it mutates, like the store it wraps: on an exception nothing changed.
//
// This header is the interface only: it declares the class and make_store() and compiles none of the store or
// kernel templates, so the binding translation units (src/c_api/c_api.cpp, python/src/module.cpp) stay light.
// The implementation — KVHeadStore<f32 | f16 | bf16> and the CPU kernels, instantiated once — is
// src/c_api/any_store.cpp. Value rules (ranges, sizes, ids) are the core's; this layer adds the DLTensor
// checks (tensor_view.hpp) and the plan/run protocol.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "redknot/attention_params.hpp"
#include "redknot/dlpack_types.h"
#include "redknot/model_shape.hpp"
#include "redknot/rope.hpp"
#include "redknot/store_types.hpp"

namespace redknot {

class HeadMap;         // head_map.hpp
struct PageEntry;      // head_table.hpp
struct PageTableCsr;   // flashinfer_csr.hpp
class KvTier;          // tiers.hpp
class TierPrefetcher;  // tiers.hpp
struct SwapTicket;     // tiers.hpp
class AnyChunkTiers;   // any_tiers.hpp

class AnyStore {
 public:
  virtual ~AnyStore();
  AnyStore(const AnyStore&) = delete;
  AnyStore& operator=(const AnyStore&) = delete;

  virtual const ModelShape& shape() const = 0;
  virtual const HeadMap& head_map() const = 0;
  virtual int page_size() const = 0;
  virtual std::int32_t num_pages() const = 0;
  virtual DLDevice device() const = 0;
  virtual const RopeConfig* rope() const = 0;  // nullptr: the store has no RoPE spec

  // ---- sequences (KVHeadStore semantics) ----
  virtual SeqId create_sequence() = 0;
  virtual SeqId fork(SeqId parent) = 0;
  virtual void free_sequence(SeqId id) = 0;
  virtual bool contains(SeqId id) const = 0;
  virtual std::vector<SeqId> sequences() const = 0;
  virtual std::int32_t next_position(SeqId id, int layer) const = 0;
  virtual std::int32_t query_floor(SeqId id, int layer) const = 0;
  virtual void retire_queries(SeqId id, std::int32_t next_query_pos, int layer) = 0;
  // A copy of one head's page entries (sink then body), for inspection.
  virtual std::vector<PageEntry> table(SeqId id, int layer, int kv_head) const = 0;

  // ---- data path ----
  // k, v: [n, num_kv_heads, head_dim] or [n, num_kv_heads * head_dim], store dtype or f32, host memory.
  virtual void append(SeqId id, int layer, const DLTensor& k, const DLTensor& v,
                      std::span<const std::int32_t> positions) = 0;
  // Batched append of one layer: seqs[i] takes rows [token_offsets[i], token_offsets[i + 1]) of k, v and
  // positions (token_offsets has seqs.size() + 1 entries, starts at 0). All-or-nothing across the batch.
  virtual void append_batch(int layer, std::span<const SeqId> seqs,
                            std::span<const std::int32_t> token_offsets, const DLTensor& k, const DLTensor& v,
                            std::span<const std::int32_t> positions) = 0;
  // Records the step's batch (see rk_plan). Replaces the previous plan.
  virtual void plan(std::span<const SeqId> seqs, std::span<const std::int32_t> q_lens,
                    std::span<const std::int32_t> q_positions) = 0;
  // Attention of the planned batch in `layer`. q, out: [total_q, Hq, D] or [total_q, Hq * D], both f32 or
  // both the store dtype; lse (nullable): f32 [total_q, Hq].
  virtual void run(int layer, const DLTensor& q, const DLTensor& out, const DLTensor* lse,
                   AttentionParams params) = 0;
  // Sum of q_lens of the current plan (-1 when there is none).
  virtual std::int64_t planned_queries() const = 0;

  // ---- accounting ----
  virtual StoreStats stats() const = 0;
  virtual SequenceStats sequence_stats(SeqId id) const = 0;
  virtual std::int64_t pages_per_sequence(std::int64_t num_tokens) const = 0;
  virtual std::int64_t sequences_that_fit(std::int64_t num_tokens) const = 0;

  // FlashInfer's paged-KV CSR of `layer` for seqs: flashinfer_csr() of flashinfer_csr.hpp, under the lock.
  virtual PageTableCsr export_page_table(int layer, std::span<const SeqId> seqs) const = 0;

  // ---- chunks: position-independent reuse (KVHeadStore semantics; kv_head_store.hpp) ----
  virtual ChunkKey chunk_key(std::string_view model_id, std::span<const std::int32_t> tokens) const = 0;
  virtual void register_chunk(const ChunkKey& key, SeqId seq) = 0;
  // Tokens of the chunk, or -1 when the key is not registered (counted as a hit or a miss).
  virtual std::int32_t lookup_chunk(const ChunkKey& key) = 0;
  virtual void splice(SeqId dst, const ChunkKey& key, std::int32_t at, std::int32_t first_query) = 0;
  virtual void relocate(SeqId dst, const ChunkKey& key, std::int32_t at, std::int32_t first_query) = 0;
  virtual bool drop_chunk(const ChunkKey& key) = 0;
  virtual ChunkStats chunk_stats() const = 0;
  // Recomputed tokens: k and v [n, num_kv_heads, head_dim] in the store dtype or f32, as for append.
  virtual void overwrite(SeqId id, int layer, const DLTensor& k, const DLTensor& v,
                         std::span<const std::int32_t> positions) = 0;
  // Cached rows as fp32, keys rotated for their current positions (NaN rows: not held by that head).
  virtual void read_rows(SeqId id, int layer, std::span<const std::int32_t> positions, std::span<float> k,
                         std::span<float> v) const = 0;
  // The page pool as one tensor [num_pages, 2, page_size, head_dim] (K = [:, 0], V = [:, 1]) in the store
  // dtype, row-major: with export_page_table it is exactly what FlashInfer's paged kernels read (num_kv_heads
  // = 1 per row). The view is valid for the store's lifetime; the shape array belongs to the store. Read it
  // only while no writer runs.
  virtual DLTensor kv_pool() const = 0;

  // ---- tiers: swap and chunks below the pool (tiers.hpp; the bindings use them through any_tiers.hpp) ----
  // swap_out() of tiers.hpp under the store's lock. false: a tier refused an object (the sequence stays live
  // and nothing of it stays in the tiers); else `out` is the ticket and the sequence is freed.
  virtual bool swap_out(SeqId seq, KvTier& hot, KvTier& cold, std::uint64_t model_fp, std::string_view name,
                        SwapTicket& out) = 0;
  // swap_in() of tiers.hpp under the store's lock: the restored sequence, or nullopt with the reason in *why
  // (an object missing or failing a check: the objects are removed, the store is unchanged). PoolExhausted
  // leaves store and objects as they were. prefetcher may be nullptr.
  virtual std::optional<SeqId> swap_in(const SwapTicket& ticket, KvTier& hot, KvTier& cold,
                                       TierPrefetcher* prefetcher, std::string* why) = 0;
  // A TieredChunkCache over this store whose calls take the store's lock. The store, the tiers and the
  // prefetcher (nullable) must outlive it: the bindings hold them.
  virtual std::unique_ptr<AnyChunkTiers> make_chunk_tiers(std::uint64_t model_fp, std::vector<KvTier*> tiers,
                                                          std::int64_t min_splices,
                                                          TierPrefetcher* prefetcher) = 0;

  // Stores alive in this process (leak checks).
  static std::int64_t live_count();

 protected:
  AnyStore();
};

// Instantiates KVHeadStore<float | Half | BFloat16, HostAllocator> from shape.dtype. device must be kDLCPU
// (kDLCUDA throws Unavailable: there is no CUDA attention backend behind this wrapper yet; a device_type
// outside DLDeviceType throws InvalidArgument). The shape is checked by ModelShape::validate (limits.hpp); a
// page pool the host cannot allocate throws PoolExhausted ("out of memory ...").
// rope: the model's RoPE as the engine applies it (needed to splice chunks at other offsets, relocate and
// overwrite; see KVHeadStore).
std::unique_ptr<AnyStore> make_store(const ModelShape& shape, HeadMap map, StoreConfig config,
                                     DLDevice device = DLDevice{kDLCPU, 0},
                                     std::optional<RopeConfig> rope = std::nullopt);

// The device type of d as an integer. DLDevice comes from foreign producers, and a value outside the
// DLDeviceType enum must not be loaded as the enum (undefined behaviour): read the bytes instead.
inline std::int32_t device_type_int(const DLDevice& d) {
  static_assert(sizeof(d.device_type) == sizeof(std::int32_t), "DLDeviceType is expected to be 32-bit");
  std::int32_t v;
  std::memcpy(&v, &d.device_type, sizeof v);
  return v;
}
// Whether t is one of the named DLDeviceType values.
inline bool is_known_device_type(std::int32_t t) {
  return (t >= kDLCPU && t <= kDLOpenCL) || (t >= kDLVulkan && t <= kDLHexagon);
}

// "cpu", "cuda:1", ... for messages.
std::string device_name(const DLDevice& d);
// "float32", "bfloat16", "int64", ... for messages.
std::string dl_dtype_name(DLDataType t);

}  // namespace redknot
