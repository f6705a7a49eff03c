// The CUDA kernels as a scenario backend (support/backend.hpp): a CudaKVHeadStore driven through
// CudaAttention (plan per layer, then run: the decode kernel when every item has one query, else prefill),
// with a host KVHeadStore mirror that takes the same calls. Besides the runner's oracle comparison, it checks
//   * after every operation (invariant_error): the device store's page accounting, its tables equal the
//     mirror's entry for entry, and every referenced K/V row of the device pool equals the mirror's
//     (appends alternate between append_from_host and the append_device kernel);
//   * on every attention: a DevicePlan re-uploads its whole arena only when the arena grew;
//   * on decode steps: the device-built split-KV partition equals the host reference
//     (make_decode_partition), and with `graphs`, the step replays a captured CUDA graph (re-captured when
//     the batch size or the DevicePlan generation changes) whose output must equal an eager run bit for bit.
// f16/bf16 storage with activations of the same dtype only (Scenario::applies_to(BackendKind::kCuda)).
#pragma once

#include "redknot/cuda/runtime_api.hpp"

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "../support/backend.hpp"
#include "../support/checks.hpp"
#include "redknot/cuda/attention.hpp"
#include "redknot/cuda/decode.hpp"
#include "redknot/cuda/partition.hpp"
#include "redknot/cuda/store.hpp"
#include "redknot/kv_head_store.hpp"

namespace rktest {

// A device buffer of count elements (at least one).
template <class T>
struct DevBuf {
  T* p = nullptr;
  std::size_t n = 0;
  explicit DevBuf(std::size_t count) : n(count) {
    void* raw = nullptr;
    redknot::cuda::check_cuda(cudaMalloc(&raw, std::max<std::size_t>(count, 1) * sizeof(T)), "cudaMalloc");
    p = static_cast<T*>(raw);
  }
  ~DevBuf() { cudaFree(p); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  void upload(const T* src, std::size_t count, cudaStream_t s) {
    redknot::cuda::check_cuda(cudaMemcpyAsync(p, src, count * sizeof(T), cudaMemcpyHostToDevice, s),
                              "upload");
  }
  void download(T* dst, std::size_t count, cudaStream_t s) const {
    redknot::cuda::check_cuda(cudaMemcpyAsync(dst, p, count * sizeof(T), cudaMemcpyDeviceToHost, s),
                              "download");
    redknot::cuda::check_cuda(cudaStreamSynchronize(s), "download");
  }
};

struct CudaCounters {
  int decode_steps = 0, prefill_steps = 0, graph_captures = 0, graph_replays = 0;
};

struct CudaBackendOptions {
  redknot::cuda::DecodePartitionConfig partition{1, 1 << 20};  // default: one decode chunk per unit
  bool graphs = false;                                         // decode steps replayed from CUDA graphs
  // Capture mode of those graphs: thread-local, or global (PyTorch's default: any unsafe call made by any
  // thread during the capture, e.g. a cudaMalloc, invalidates it).
  cudaStreamCaptureMode capture_mode = cudaStreamCaptureModeThreadLocal;
  CudaCounters* counters = nullptr;  // optional, outlives the stores
};

template <redknot::StorageType T>
class CudaStore final : public BackendStore {
 public:
  CudaStore(const StoreSpec& spec, CudaBackendOptions opt)
      : spec_(spec),
        opt_(opt),
        dev_(spec.shape, spec.map, spec.config, spec.rope),
        host_(spec.shape, spec.map, spec.config, spec.rope),
        attn_(dev_, redknot::cuda::CudaAttentionConfig{spec.max_batch, spec.max_queries, 0.f, opt.partition}),
        max_units_(spec.max_batch * spec.shape.num_kv_heads),
        ws_bytes_(redknot::cuda::decode_workspace_bytes(max_units_, opt.partition, spec.shape.group_size(),
                                                        spec.shape.head_dim)),
        q_(q_elems()),
        out_(q_elems()),
        out2_(q_elems()),
        lse_(lse_elems()),
        lse2_(lse_elems()),
        k_(kv_elems()),
        v_(kv_elems()),
        rows_(static_cast<std::size_t>(spec.max_tokens) * spec.shape.num_kv_heads),
        ws_(ws_bytes_),
        layers_(static_cast<std::size_t>(spec.shape.num_layers)) {
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  }
  ~CudaStore() override {
    for (Layer& l : layers_) drop_graph(l);
    cudaStreamDestroy(stream_);
  }
  CudaStore(const CudaStore&) = delete;
  CudaStore& operator=(const CudaStore&) = delete;

  redknot::cuda::CudaKVHeadStore<T>& device_store() { return dev_; }
  const redknot::KVHeadStore<T>& host_mirror() const { return host_; }

  redknot::SeqId create_sequence() override { return same(dev_.create_sequence(), host_.create_sequence()); }
  redknot::SeqId fork(redknot::SeqId parent) override { return same(dev_.fork(parent), host_.fork(parent)); }
  void free_sequence(redknot::SeqId id) override {
    dev_.free_sequence(id);
    host_.free_sequence(id);
  }
  void retire_queries(redknot::SeqId id, std::int32_t next_query_pos, int layer) override {
    dev_.retire_queries(id, next_query_pos, layer);
    host_.retire_queries(id, next_query_pos, layer);
  }

  // Chunks: splice is table-only (the device pages are shared as they are); the kernels counter-rotate the
  // queries of spliced keys. relocate copies through host memory and is not offered on the device store.
  void register_chunk(redknot::SeqId id, int chunk) override {
    dev_.register_chunk(key(chunk), id);
    host_.register_chunk(key(chunk), id);
  }
  void splice(redknot::SeqId dst, int chunk, std::int32_t at, std::int32_t first_query,
              bool relocate) override {
    if (relocate) throw std::logic_error("the CUDA store does not relocate (no scenario asks it to)");
    dev_.splice(dst, key(chunk), at, first_query);
    host_.splice(dst, key(chunk), at, first_query);
  }
  void drop_chunk(int chunk) override {
    if (!dev_.drop_chunk(key(chunk)) || !host_.drop_chunk(key(chunk)))
      throw std::runtime_error("drop_chunk: the chunk is not registered");
  }

  void append(int layer, std::span<const redknot::SeqId> seqs, std::span<const std::int32_t> offsets,
              ConstTensor k, ConstTensor v, std::span<const std::int32_t> positions) override {
    const auto ks = k.as<T>(), vs = v.as<T>();
    // The mirror appends sequence by sequence as the device store does: append_batch takes pages in another
    // order, and the tables are compared entry for entry, page ids included.
    const std::size_t row = static_cast<std::size_t>(spec_.shape.num_kv_heads) * spec_.shape.head_dim;
    for (std::size_t i = 0; i < seqs.size(); ++i) {
      const auto b = static_cast<std::size_t>(offsets[i]), n = static_cast<std::size_t>(offsets[i + 1]) - b;
      if (n == 0) continue;
      const auto kb = ks.subspan(b * row, n * row), vb = vs.subspan(b * row, n * row);
      const auto pos = positions.subspan(b, n);
      host_.append(seqs[i], layer, kb, vb, pos);
      if (appends_++ % 2 == 0) {
        redknot::cuda::append_from_host(dev_, seqs[i], layer, kb, vb, pos);
      } else {
        k_.upload(kb.data(), kb.size(), stream_);
        v_.upload(vb.data(), vb.size(), stream_);
        redknot::cuda::append_device(dev_, seqs[i], layer, k_.p, v_.p, pos, rows_.p, stream_);
        check(cudaStreamSynchronize(stream_), "append_device");
      }
    }
  }

  void begin_step(std::span<const redknot::SeqId> seqs, std::span<const std::int32_t> q_lens,
                  std::span<const std::int32_t> q_positions) override {
    batch_.assign(seqs, q_lens, q_positions);
  }

  void attend(int layer, ConstTensor q, MutTensor out, std::span<float> lse) override {
    Layer& L = layers_.at(static_cast<std::size_t>(layer));
    attn_.plan(layer, batch_.seqs, batch_.q_lens, batch_.q_positions, stream_);
    const redknot::cuda::DevicePlan& dp = *attn_.device_plan(layer);
    if (L.synced && dp.generation() == L.generation && dp.last_sync().full_upload)
      throw std::runtime_error("DevicePlan re-uploaded its whole arena although the arena did not grow");
    L.synced = true;
    L.generation = dp.generation();
    if (q.size == 0) {  // nothing to run; the plan was still brought up to date
      check(cudaStreamSynchronize(stream_), "plan upload");
      return;
    }

    const auto qs = q.as<T>();
    q_.upload(qs.data(), qs.size(), stream_);
    // Outputs start as NaN (all-ones bytes in every dtype), so a row the kernels do not write fails the
    // oracle comparison instead of passing with the previous step's values.
    check(cudaMemsetAsync(out_.p, 0xff, qs.size() * sizeof(T), stream_), "poison out");
    check(cudaMemsetAsync(lse_.p, 0xff, lse.size() * sizeof(float), stream_), "poison lse");
    const bool decode =
        std::all_of(batch_.q_lens.begin(), batch_.q_lens.end(), [](std::int32_t n) { return n == 1; });
    if (decode && opt_.graphs)
      run_graph(layer, L, qs.size(), lse.size());
    else
      attn_.run(layer, q_.p, out_.p, lse_.p, stream_);
    check(cudaGetLastError(), "attention launch");
    out_.download(out.as<T>().data(), qs.size(), stream_);
    lse_.download(lse.data(), lse.size(), stream_);
    if (decode) check_partition(layer, dp);
    if (opt_.counters) ++(decode ? opt_.counters->decode_steps : opt_.counters->prefill_steps);
  }

  redknot::StoreStats stats() const override { return dev_.stats(); }

  std::string invariant_error() const override {
    if (std::string err = accounting_error(dev_); !err.empty()) return "device store: " + err;
    if (dev_.sequences() != host_.sequences()) return "device and host stores hold different sequences";
    const auto& sh = spec_.shape;
    const auto& hp = host_.pool();
    const std::size_t D = static_cast<std::size_t>(sh.head_dim), page = hp.page_elems();
    std::vector<T> pool(page * static_cast<std::size_t>(hp.num_pages()));
    check(cudaMemcpy(pool.data(), dev_.pool().data(), pool.size() * sizeof(T), cudaMemcpyDeviceToHost),
          "download pool");
    for (redknot::SeqId s : host_.sequences())
      for (int l = 0; l < sh.num_layers; ++l)
        for (int h = 0; h < sh.num_kv_heads; ++h) {
          const redknot::HeadTable& th = host_.table(s, l, h);
          const redknot::HeadTable& td = dev_.table(s, l, h);
          if (th.size() != td.size())
            return concat("sequence ", s, " layer ", l, " head ", h, ": table sizes differ");
          for (std::size_t e = 0; e < th.size(); ++e) {
            if (!(th[e] == td[e]))
              return concat("sequence ", s, " layer ", l, " head ", h, " entry ", e, " differs");
            for (int slot = th[e].first; slot < th[e].end_slot(); ++slot) {
              const std::size_t off = static_cast<std::size_t>(slot) * D;
              const T* dk = pool.data() + static_cast<std::size_t>(th[e].page_id) * page + off;
              const T* dv = dk + static_cast<std::size_t>(spec_.config.page_size) * D;  // [page][K|V][slot]
              if (std::memcmp(hp.k_ptr(th[e].page_id) + off, dk, D * sizeof(T)) != 0 ||
                  std::memcmp(hp.v_ptr(th[e].page_id) + off, dv, D * sizeof(T)) != 0)
                return concat("sequence ", s, " layer ", l, " head ", h, " position ",
                              th[e].pos0 + (slot - th[e].first), ": device K/V row differs from the host's");
            }
          }
        }
    return {};
  }

 private:
  struct Layer {
    bool synced = false;
    std::uint64_t generation = 0;
    cudaGraphExec_t exec = nullptr;
    int graph_batch = -1;
    std::uint64_t graph_generation = 0;
  };

  std::size_t q_elems() const {
    return static_cast<std::size_t>(spec_.max_queries) * spec_.shape.num_q_heads * spec_.shape.head_dim;
  }
  std::size_t lse_elems() const {
    return static_cast<std::size_t>(spec_.max_queries) * spec_.shape.num_q_heads;
  }
  std::size_t kv_elems() const {
    return static_cast<std::size_t>(spec_.max_tokens) * spec_.shape.num_kv_heads * spec_.shape.head_dim;
  }
  static void check(cudaError_t e, const char* what) { redknot::cuda::check_cuda(e, what); }
  static redknot::SeqId same(redknot::SeqId dev, redknot::SeqId host) {
    if (dev != host) throw std::logic_error("device and host stores gave different sequence ids");
    return dev;
  }
  static void drop_graph(Layer& L) {
    if (L.exec) cudaGraphExecDestroy(L.exec);
    L.exec = nullptr;
  }

  // The decode step through a captured graph (captured again when the batch size or the DevicePlan's buffers
  // changed), then an eager run into other buffers: the two must agree bit for bit.
  void run_graph(int layer, Layer& L, std::size_t q_size, std::size_t lse_size) {
    const redknot::cuda::DevicePlan& dp = *attn_.device_plan(layer);
    if (!L.exec || L.graph_batch != dp.batch() || L.graph_generation != dp.generation()) {
      drop_graph(L);
      cudaGraph_t graph = nullptr;
      check(cudaStreamBeginCapture(stream_, opt_.capture_mode), "cudaStreamBeginCapture");
      attn_.run(layer, q_.p, out_.p, lse_.p, stream_);
      check(cudaStreamEndCapture(stream_, &graph), "cudaStreamEndCapture");
      const cudaError_t e = cudaGraphInstantiate(&L.exec, graph, 0);
      cudaGraphDestroy(graph);
      check(e, "cudaGraphInstantiate");
      L.graph_batch = dp.batch();
      L.graph_generation = dp.generation();
      if (opt_.counters) ++opt_.counters->graph_captures;
    }
    check(cudaGraphLaunch(L.exec, stream_), "cudaGraphLaunch");
    if (opt_.counters) ++opt_.counters->graph_replays;
    // The eager run writes buffers poisoned with another pattern than the graph's (0xff, above): an element
    // neither writes differs between the two, so the comparison below cannot pass on stale values.
    check(cudaMemsetAsync(out2_.p, 0x7e, q_size * sizeof(T), stream_), "poison out2");
    check(cudaMemsetAsync(lse2_.p, 0x7e, lse_size * sizeof(float), stream_), "poison lse2");
    attn_.run(layer, q_.p, out2_.p, lse2_.p, stream_);
    std::vector<T> a(q_size), b(q_size);
    std::vector<float> la(lse_size), lb(lse_size);
    out_.download(a.data(), q_size, stream_);
    out2_.download(b.data(), q_size, stream_);
    lse_.download(la.data(), lse_size, stream_);
    lse2_.download(lb.data(), lse_size, stream_);
    if (std::memcmp(a.data(), b.data(), q_size * sizeof(T)) != 0 ||
        std::memcmp(la.data(), lb.data(), lse_size * sizeof(float)) != 0)
      throw std::runtime_error("a decode step replayed from a CUDA graph differs from the eager run");
  }

  // The split-KV partition the device plan builds equals make_decode_partition over the tables' entry counts.
  void check_partition(int layer, const redknot::cuda::DevicePlan& dp) {
    namespace rc = redknot::cuda;
    const auto& sh = spec_.shape;
    rc::DecodeParams p;
    p.kv = dp.paged_kv(dev_.pool().data(), dev_.page_size(), sh.head_dim);
    p.dtype = rc::kv_type_of<T>();
    p.batch = dp.batch();
    p.num_q_heads = sh.num_q_heads;
    p.q = q_.p;
    p.q_pos = dp.q_pos();
    p.out = out2_.p;
    p.lse = lse2_.p;
    rc::decode_plan(p, ws_.p, ws_bytes_, opt_.partition, max_units_, stream_);
    check(cudaStreamSynchronize(stream_), "decode_plan");
    std::vector<std::int32_t> entries;
    for (redknot::SeqId s : batch_.seqs)
      for (int h = 0; h < sh.num_kv_heads; ++h)
        entries.push_back(static_cast<std::int32_t>(host_.table(s, layer, h).size()));
    const rc::DecodePartition ref = rc::make_decode_partition(entries, opt_.partition);
    const auto view =
        rc::decode_workspace_view(ws_.p, max_units_, opt_.partition, sh.group_size(), sh.head_dim);
    std::vector<std::int32_t> off(entries.size() + 1);
    check(
        cudaMemcpy(off.data(), view.chunk_offset, off.size() * sizeof(std::int32_t), cudaMemcpyDeviceToHost),
        "download chunk offsets");
    if (off != ref.chunk_offset)
      throw std::runtime_error("decode partition: chunk offsets differ from the host's");
    std::vector<rc::DecodeChunk> ch(static_cast<std::size_t>(ref.num_chunks()));
    check(cudaMemcpy(ch.data(), view.chunks, ch.size() * sizeof(rc::DecodeChunk), cudaMemcpyDeviceToHost),
          "download chunks");
    for (std::size_t i = 0; i < ch.size(); ++i)
      if (ch[i].unit != ref.chunks[i].unit || ch[i].entry_begin != ref.chunks[i].entry_begin ||
          ch[i].entry_end != ref.chunks[i].entry_end)
        throw std::runtime_error(concat("decode partition: chunk ", i, " differs from the host's"));
  }

  redknot::ChunkKey key(int chunk) const { return scenario_chunk_key(host_, chunk); }

  StoreSpec spec_;
  CudaBackendOptions opt_;
  redknot::cuda::CudaKVHeadStore<T> dev_;
  redknot::KVHeadStore<T> host_;
  redknot::cuda::CudaAttention<T> attn_;
  int max_units_;
  std::size_t ws_bytes_;
  DevBuf<T> q_, out_, out2_;
  DevBuf<float> lse_, lse2_;
  DevBuf<T> k_, v_;
  DevBuf<std::int32_t> rows_;
  DevBuf<unsigned char> ws_;  // decode workspace of the partition check
  std::vector<Layer> layers_;
  cudaStream_t stream_ = nullptr;
  StepBatch batch_;
  int appends_ = 0;
};

inline Backend cuda_backend(CudaBackendOptions opt = {}) {
  return Backend{"cuda", BackendKind::kCuda, Precision::kDevice,
                 [opt](const StoreSpec& spec) -> std::unique_ptr<BackendStore> {
                   if (spec.shape.dtype == redknot::DType::kF16)
                     return std::make_unique<CudaStore<redknot::Half>>(spec, opt);
                   if (spec.shape.dtype == redknot::DType::kBF16)
                     return std::make_unique<CudaStore<redknot::BFloat16>>(spec, opt);
                   throw std::invalid_argument("the CUDA kernels store f16 or bf16");
                 }};
}

}  // namespace rktest
