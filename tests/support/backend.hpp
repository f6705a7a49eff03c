// The backend interface runner.hpp drives: a store on one backend — the CPU core (cpu_backend.hpp), the C ABI
// (c_api_backend.hpp), the CUDA kernels (tests/gpu/cuda_backend.hpp) — made from a StoreSpec, with the calls
// of an engine's step. Errors are exceptions (the runner reports them as failures).
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "redknot/dtype.hpp"
#include "redknot/head_map.hpp"
#include "redknot/kv_head_store.hpp"
#include "redknot/model_shape.hpp"
#include "scenarios.hpp"

namespace rktest {

// What a store is made from: the scenario's shape (storage dtype included), map and pool, plus the most a
// step asks for (backends that preallocate step buffers size them from these).
struct StoreSpec {
  redknot::ModelShape shape;
  redknot::HeadMap map;
  redknot::StoreConfig config;
  std::optional<redknot::RopeConfig> rope;
  redknot::DType activation = redknot::DType::kF32;
  int kv_chunk = 0;  // CPU split-KV chunk, 0: the kernel's default
  int max_batch = 1;
  int max_queries = 1;
  int max_tokens = 1;

  static StoreSpec of(const Scenario& sc) {
    StoreSpec s;
    s.shape = sc.shape;
    s.map = sc.map;
    s.config = redknot::StoreConfig{sc.page_size, sc.num_pages};
    s.rope = sc.rope;
    s.activation = sc.activation;
    s.kv_chunk = sc.kv_chunk;
    s.max_batch = std::max(sc.max_batch, 1);
    s.max_queries = std::max(sc.max_queries, 1);
    s.max_tokens = std::max(sc.max_tokens, 1);
    return s;
  }
};

// A host tensor handed across the interface: its dtype says which typed view is valid.
template <class Byte>
struct TensorView {
  redknot::DType dtype = redknot::DType::kF32;
  Byte* data = nullptr;
  std::size_t size = 0;  // elements

  template <redknot::StorageType T>
  auto as() const {
    if (redknot::dtype_of<T>() != dtype) throw std::logic_error("tensor view of the wrong dtype");
    using E = std::conditional_t<std::is_const_v<Byte>, const T, T>;
    return std::span<E>(static_cast<E*>(data), size);
  }
};
using ConstTensor = TensorView<const void>;
using MutTensor = TensorView<void>;

template <redknot::StorageType T>
ConstTensor view(const std::vector<T>& v) {
  return {redknot::dtype_of<T>(), v.data(), v.size()};
}
template <redknot::StorageType T>
MutTensor view(std::vector<T>& v) {
  return {redknot::dtype_of<T>(), v.data(), v.size()};
}

// f(T{}) with T the storage type of dtype t.
template <class F>
decltype(auto) visit_dtype(redknot::DType t, F&& f) {
  switch (t) {
    case redknot::DType::kF32:
      return f(float{});
    case redknot::DType::kF16:
      return f(redknot::Half{});
    case redknot::DType::kBF16:
      break;
  }
  return f(redknot::BFloat16{});
}

// The batch of a step as begin_step() received it, for backends that plan layer by layer.
struct StepBatch {
  std::vector<redknot::SeqId> seqs;
  std::vector<std::int32_t> q_lens, q_positions;
  void assign(std::span<const redknot::SeqId> s, std::span<const std::int32_t> lens,
              std::span<const std::int32_t> pos) {
    seqs.assign(s.begin(), s.end());
    q_lens.assign(lens.begin(), lens.end());
    q_positions.assign(pos.begin(), pos.end());
  }
};

// A store on one backend. Sequence ids are the backend's own.
class BackendStore {
 public:
  virtual ~BackendStore() = default;
  virtual redknot::SeqId create_sequence() = 0;
  virtual redknot::SeqId fork(redknot::SeqId parent) = 0;
  virtual void free_sequence(redknot::SeqId id) = 0;
  virtual void retire_queries(redknot::SeqId id, std::int32_t next_query_pos, int layer) = 0;
  // One layer's appends of a step: seqs[i] takes rows [offsets[i], offsets[i + 1]) of k and v ([n, Hk, D],
  // storage dtype) and of positions; an item may take none.
  virtual void append(int layer, std::span<const redknot::SeqId> seqs, std::span<const std::int32_t> offsets,
                      ConstTensor k, ConstTensor v, std::span<const std::int32_t> positions) = 0;
  // The step's batch, before the step's first append (an engine plans a step once): seqs[i] has q_lens[i]
  // queries at the next q_lens[i] of q_positions.
  virtual void begin_step(std::span<const redknot::SeqId> seqs, std::span<const std::int32_t> q_lens,
                          std::span<const std::int32_t> q_positions) = 0;
  // The batch's attention in `layer`: q and out [total_q, Hq, D] in the activation dtype, lse [total_q, Hq].
  virtual void attend(int layer, ConstTensor q, MutTensor out, std::span<float> lse) = 0;
  virtual redknot::StoreStats stats() const = 0;
  // Chunk reuse (KVHeadStore semantics). Chunks are named by script index; a backend keys chunk c as
  // chunk_key(kChunkModel, {c}).
  virtual void register_chunk(redknot::SeqId id, int chunk) = 0;
  virtual void splice(redknot::SeqId dst, int chunk, std::int32_t at, std::int32_t first_query,
                      bool relocate) = 0;
  virtual void drop_chunk(int chunk) = 0;
  // Swaps sequence `id` out to tiers and back in (swap_out / swap_in of tiers.hpp); returns its new id.
  virtual redknot::SeqId swap(redknot::SeqId id) {
    (void)id;
    throw std::logic_error("this backend cannot swap sequences");
  }
  // What is wrong inside the store beyond its stats (tables against the pool's refcounts, ...); "" when
  // nothing is, or when the backend cannot be inspected.
  virtual std::string invariant_error() const { return {}; }
};

inline constexpr const char* kChunkModel = "rktest-scenario";

// The key of script chunk `chunk` in a KVHeadStore of any allocator (the C ABI backend makes the same key
// through rk_chunk_key_make).
template <class Store>
redknot::ChunkKey scenario_chunk_key(const Store& store, int chunk) {
  const std::int32_t token = chunk;
  return store.chunk_key(kChunkModel, std::span<const std::int32_t>(&token, 1));
}

// How a backend's kernels compute, which sets the runner's tolerances: fp32 softmax and accumulation
// (host), or 16-bit probabilities in the P.V products (device tensor cores).
enum class Precision { kHost, kDevice };

struct Backend {
  std::string name;
  BackendKind kind = BackendKind::kCpu;
  Precision precision = Precision::kHost;
  std::function<std::unique_ptr<BackendStore>(const StoreSpec&)> make_store;
};

}  // namespace rktest
