// The C ABI (c_api.h, libredknot) as a scenario backend: every call goes through rk_* functions with
// DLTensors. The head map crosses as JSON. Appends rotate through rk_append_batch in the storage dtype,
// per-sequence rk_append with [n, Hk * D] tensors, and rk_append_batch with f32 K/V (converted by the
// library; the values are exact in the storage dtype, so the oracle sees the same keys); outputs alternate
// between [total_q, Hq, D] and [total_q, Hq * D]. A step is one rk_plan and one rk_attention per layer.
// Links redknot::c.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend.hpp"
#include "redknot/c_api.h"
#include "redknot/error.hpp"

namespace rktest {

class CApiStore final : public BackendStore {
 public:
  explicit CApiStore(const StoreSpec& spec) : spec_(spec) {
    const std::string json = spec.map.to_json();
    rk_head_map* map = nullptr;
    ok(rk_head_map_from_json(json.data(), json.size(), &map), "rk_head_map_from_json");
    rk_store_config cfg{};
    rk_store_config_init(&cfg);
    cfg.num_layers = spec.shape.num_layers;
    cfg.num_q_heads = spec.shape.num_q_heads;
    cfg.num_kv_heads = spec.shape.num_kv_heads;
    cfg.head_dim = spec.shape.head_dim;
    cfg.dtype = static_cast<int32_t>(spec.shape.dtype);  // rk_dtype codes equal DType's
    cfg.page_size = spec.config.page_size;
    cfg.num_pages = spec.config.num_pages;
    if (spec.rope) {  // rk_rope_config codes equal the core's enums
      const redknot::RopeConfig& r = *spec.rope;
      cfg.rope.scaling = static_cast<int32_t>(r.scaling);
      cfg.rope.pairing = static_cast<int32_t>(r.pairing);
      cfg.rope.rotary_dim = r.rotary_dim;
      cfg.rope.original_max_position = r.original_max_position;
      cfg.rope.theta = r.theta;
      cfg.rope.factor = r.factor;
      cfg.rope.low_freq_factor = r.low_freq_factor;
      cfg.rope.high_freq_factor = r.high_freq_factor;
      cfg.rope.beta_fast = r.beta_fast;
      cfg.rope.beta_slow = r.beta_slow;
    }
    const int st = rk_store_create(&cfg, map, &store_);
    rk_head_map_destroy(map);
    ok(st, "rk_store_create");
  }
  ~CApiStore() override { rk_store_destroy(store_); }
  CApiStore(const CApiStore&) = delete;
  CApiStore& operator=(const CApiStore&) = delete;

  redknot::SeqId create_sequence() override {
    std::int64_t id = 0;
    ok(rk_sequence_create(store_, &id), "rk_sequence_create");
    return id;
  }
  redknot::SeqId fork(redknot::SeqId parent) override {
    std::int64_t id = 0;
    ok(rk_sequence_fork(store_, parent, &id), "rk_sequence_fork");
    return id;
  }
  void free_sequence(redknot::SeqId id) override { ok(rk_sequence_free(store_, id), "rk_sequence_free"); }
  void retire_queries(redknot::SeqId id, std::int32_t next_query_pos, int layer) override {
    ok(rk_sequence_retire_queries(store_, id, next_query_pos, layer), "rk_sequence_retire_queries");
  }

  void append(int layer, std::span<const redknot::SeqId> seqs, std::span<const std::int32_t> offsets,
              ConstTensor k, ConstTensor v, std::span<const std::int32_t> positions) override {
    const std::int64_t Hk = spec_.shape.num_kv_heads, D = spec_.shape.head_dim;
    const auto batch = static_cast<std::int32_t>(seqs.size());
    const int mode = appends_++ % 3;
    if (mode == 1) {  // per sequence, 2-D tensors
      for (std::size_t i = 0; i < seqs.size(); ++i) {
        const std::int64_t b = offsets[i], n = offsets[i + 1] - b;
        if (n == 0) continue;
        std::int64_t shape[2] = {n, Hk * D};
        DLTensor kt = tensor(k.dtype, elem(k, b * Hk * D), shape, 2);
        DLTensor vt = tensor(v.dtype, elem(v, b * Hk * D), shape, 2);
        ok(rk_append(store_, seqs[i], layer, &kt, &vt, positions.data() + b, n, nullptr), "rk_append");
      }
      return;
    }
    std::int64_t shape[3] = {static_cast<std::int64_t>(positions.size()), Hk, D};
    std::vector<float> kf, vf;
    DLTensor kt = tensor(k.dtype, k.data, shape, 3), vt = tensor(v.dtype, v.data, shape, 3);
    if (mode == 2) {  // f32 K/V, converted by the library
      kf = to_f32(k);
      vf = to_f32(v);
      kt = tensor(redknot::DType::kF32, kf.data(), shape, 3);
      vt = tensor(redknot::DType::kF32, vf.data(), shape, 3);
    }
    ok(rk_append_batch(store_, layer, seqs.data(), batch, offsets.data(), &kt, &vt, positions.data(),
                       nullptr),
       "rk_append_batch");
  }

  void begin_step(std::span<const redknot::SeqId> seqs, std::span<const std::int32_t> q_lens,
                  std::span<const std::int32_t> q_positions) override {
    total_q_ = static_cast<std::int64_t>(q_positions.size());
    ok(rk_plan(store_, seqs.data(), q_lens.data(), static_cast<std::int32_t>(seqs.size()), q_positions.data(),
               total_q_),
       "rk_plan");
  }

  void attend(int layer, ConstTensor q, MutTensor out, std::span<float> lse) override {
    const std::int64_t Hq = spec_.shape.num_q_heads, D = spec_.shape.head_dim;
    std::int64_t q_shape[3] = {total_q_, Hq, D}, out2_shape[2] = {total_q_, Hq * D},
                 lse_shape[2] = {total_q_, Hq};
    DLTensor qt = tensor(q.dtype, q.data, q_shape, 3);
    DLTensor ot = attends_++ % 2 == 0 ? tensor(out.dtype, out.data, q_shape, 3)
                                      : tensor(out.dtype, out.data, out2_shape, 2);
    DLTensor lt = tensor(redknot::DType::kF32, lse.data(), lse_shape, 2);
    ok(rk_attention(store_, layer, &qt, &ot, &lt, nullptr, nullptr), "rk_attention");
  }

  redknot::StoreStats stats() const override {
    rk_store_stats s{};
    ok(rk_store_get_stats(store_, &s), "rk_store_get_stats");
    redknot::StoreStats r;
    r.num_sequences = s.num_sequences;
    r.pages_total = s.pages_total;
    r.pages_in_use = s.pages_in_use;
    r.pages_global = s.pages_global;
    r.pages_local = s.pages_local;
    r.bytes_in_use = s.bytes_in_use;
    r.bytes_global = s.bytes_global;
    r.bytes_local = s.bytes_local;
    return r;
  }

  void register_chunk(redknot::SeqId id, int chunk) override {
    ok(rk_chunk_register(store_, key(chunk), id), "rk_chunk_register");
  }
  void splice(redknot::SeqId dst, int chunk, std::int32_t at, std::int32_t first_query,
              bool relocate) override {
    if (relocate)
      ok(rk_chunk_relocate(store_, dst, key(chunk), at, first_query), "rk_chunk_relocate");
    else
      ok(rk_chunk_splice(store_, dst, key(chunk), at, first_query), "rk_chunk_splice");
  }
  void drop_chunk(int chunk) override {
    int32_t dropped = 0;
    ok(rk_chunk_drop(store_, key(chunk), &dropped), "rk_chunk_drop");
    if (dropped != 1) throw std::runtime_error("rk_chunk_drop: the chunk was not registered");
  }

  // What the ABI shows of the accounting: class counters and bytes add up.
  std::string invariant_error() const override {
    const redknot::StoreStats s = stats();
    const std::int64_t page_bytes = 2 * static_cast<std::int64_t>(spec_.config.page_size) *
                                    spec_.shape.head_dim * redknot::dtype_size(spec_.shape.dtype);
    if (s.pages_in_use != s.pages_global + s.pages_local || s.bytes_in_use != s.pages_in_use * page_bytes ||
        s.bytes_global != s.pages_global * page_bytes || s.bytes_local != s.pages_local * page_bytes ||
        s.pages_total != spec_.config.num_pages)
      return redknot::detail::concat("rk_store_get_stats: pages ", s.pages_in_use, " = ", s.pages_global,
                                     " global + ", s.pages_local, " local, bytes ", s.bytes_in_use, " (",
                                     page_bytes, " a page), total ", s.pages_total);
    return {};
  }

 private:
  rk_chunk_key key(int chunk) const {
    const int32_t token = chunk;
    rk_chunk_key k{};
    ok(rk_chunk_key_make(store_, kChunkModel, &token, 1, &k), "rk_chunk_key_make");
    return k;
  }
  static void ok(int status, const char* what) {
    if (status != RK_OK)
      throw std::runtime_error(
          redknot::detail::concat(what, ": ", rk_status_string(status), ": ", rk_last_error()));
  }
  static DLDataType dl(redknot::DType t) {
    switch (t) {
      case redknot::DType::kF32:
        return DLDataType{kDLFloat, 32, 1};
      case redknot::DType::kF16:
        return DLDataType{kDLFloat, 16, 1};
      case redknot::DType::kBF16:
        break;
    }
    return DLDataType{kDLBfloat, 16, 1};
  }
  static DLTensor tensor(redknot::DType t, const void* data, std::int64_t* shape, int ndim) {
    DLTensor x{};
    x.data = const_cast<void*>(data);  // DLTensor has no const flavour; inputs are only read
    x.device = DLDevice{kDLCPU, 0};
    x.ndim = ndim;
    x.dtype = dl(t);
    x.shape = shape;
    x.strides = nullptr;
    x.byte_offset = 0;
    return x;
  }
  static const void* elem(ConstTensor t, std::int64_t i) {
    return static_cast<const char*>(t.data) + i * static_cast<std::int64_t>(redknot::dtype_size(t.dtype));
  }
  static std::vector<float> to_f32(ConstTensor t) {
    return visit_dtype(t.dtype, [&](auto tag) {
      using T = decltype(tag);
      std::vector<float> f;
      for (const T& x : t.as<T>()) f.push_back(redknot::to_float(x));
      return f;
    });
  }

  StoreSpec spec_;
  rk_store* store_ = nullptr;
  std::int64_t total_q_ = 0;
  int appends_ = 0, attends_ = 0;
};

inline Backend c_api_backend() {
  return Backend{"c_api", BackendKind::kCApi, Precision::kHost,
                 [](const StoreSpec& spec) -> std::unique_ptr<BackendStore> {
                   return std::make_unique<CApiStore>(spec);
                 }};
}

}  // namespace rktest
