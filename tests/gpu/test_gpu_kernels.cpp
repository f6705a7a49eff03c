// GPU kernels vs the CPU oracle: one parametrised harness runs decode, prefill, append and RoPE
// relocation over dtype {f16, bf16} x head_dim {64, 128} x GQA {1, 4, 8} x page size {16, 32, 64}, with heads
// of every kind in one layer (global; local with a small sink and window; window larger than the context;
// sink 0; window 1), partial pages, spliced position jumps and contexts shorter than the sink. Also: the
// device plan vs its host reference, incremental DevicePlan uploads over several decode steps, and a decode
// step captured in a CUDA graph and replayed. Skips (exit 4) without a device.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <sstream>
#include <vector>

#include "../support/oracle.hpp"
#include "gpu_test.hpp"
#include "redknot/attention_plan.hpp"
#include "redknot/cuda/attention.hpp"
#include "redknot/cuda/decode.hpp"
#include "redknot/cuda/device_plan.hpp"
#include "redknot/cuda/prefill.hpp"
#include "redknot/cuda/rope.hpp"
#include "redknot/cuda/store.hpp"
#include "redknot/kv_head_store.hpp"

using namespace redknot;
using namespace redknot::cuda;

namespace {

template <class T>
struct DevBuf {
  T* p = nullptr;
  std::size_t n = 0;
  explicit DevBuf(std::size_t count) : n(count) {
    void* raw = nullptr;
    if (cudaMalloc(&raw, std::max<std::size_t>(count, 1) * sizeof(T)) != cudaSuccess)
      throw std::runtime_error("cudaMalloc");
    p = static_cast<T*>(raw);
  }
  ~DevBuf() { cudaFree(p); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  void upload(const std::vector<T>& v, cudaStream_t s = nullptr) {
    if (cudaMemcpyAsync(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice, s) != cudaSuccess)
      throw std::runtime_error("upload");
  }
  std::vector<T> download(std::size_t count) const {
    std::vector<T> v(count);
    if (cudaMemcpy(v.data(), p, count * sizeof(T), cudaMemcpyDeviceToHost) != cudaSuccess)
      throw std::runtime_error("download");
    return v;
  }
};

struct Params {
  DType dtype;
  int head_dim;
  int group;
  int page_size;
};

std::string describe(const Params& p) {
  std::ostringstream os;
  os << "dtype=" << dtype_name(p.dtype) << " head_dim=" << p.head_dim << " group=" << p.group
     << " page_size=" << p.page_size;
  return os.str();
}

// The full grid, or (REDKNOT_GPU_TEST_SMALL=1, used under compute-sanitizer, which is ~100x slower) a corner
// subset that still covers every dtype, head_dim, GQA extreme and page size once.
std::vector<Params> all_params() {
  std::vector<Params> v;
  const char* small = std::getenv("REDKNOT_GPU_TEST_SMALL");
  if (small && *small && *small != '0') {
    v = {{DType::kBF16, 128, 8, 16},
         {DType::kF16, 64, 1, 32},
         {DType::kBF16, 64, 4, 64},
         {DType::kF16, 128, 1, 16}};
    return v;
  }
  for (DType dt : {DType::kF16, DType::kBF16})
    for (int d : {64, 128})
      for (int g : {1, 4, 8})
        for (int ps : {16, 32, 64}) v.push_back(Params{dt, d, g, ps});
  return v;
}

constexpr int kLayers = 2;
constexpr int kLayer = 1;  // the layer under test (layer 0 gets different policies, to catch layer mix-ups)
constexpr int kHk = 5;

// Head policies of the tested layer: one of each kind the issue lists.
HeadMap make_map() {
  HeadMap m = HeadMap::uniform(kLayers, kHk, HeadClass::kGlobal);
  m.set(kLayer, 1, HeadPolicy{HeadClass::kLocal, 24, 4});    // small window, small sink
  m.set(kLayer, 2, HeadPolicy{HeadClass::kLocal, 4096, 8});  // window larger than any context here
  m.set(kLayer, 3, HeadPolicy{HeadClass::kLocal, 40, 0});    // sink 0
  m.set(kLayer, 4, HeadPolicy{HeadClass::kLocal, 1, 2});     // window 1: sees the sink and itself
  m.set(0, 0, HeadPolicy{HeadClass::kLocal, 2, 0});          // layer 0 differs on purpose
  return m;
}

std::vector<std::int32_t> iota_pos(std::int32_t a, std::int32_t b) {  // [a, b)
  std::vector<std::int32_t> v;
  for (std::int32_t i = a; i < b; ++i) v.push_back(i);
  return v;
}

// The append history of each sequence: chunks of positions (partial pages, a spliced jump, a short context).
std::vector<std::vector<std::vector<std::int32_t>>> histories() {
  return {
      {iota_pos(0, 37), iota_pos(37, 200), iota_pos(200, 300)},
      {iota_pos(0, 50), iota_pos(120, 251)},  // position jump 50 -> 120 (a spliced chunk)
      {iota_pos(0, 5)},                       // shorter than sinks and windows
  };
}

template <class T>
struct World {
  ModelShape shape;
  HeadMap map;
  KVHeadStore<T> host;
  CudaKVHeadStore<T> dev;
  DenseOracle oracle;
  std::vector<SeqId> seqs;
  std::mt19937 rng{1234};
  std::unique_ptr<DevBuf<T>> k_dev, v_dev;
  std::unique_ptr<DevBuf<std::int32_t>> rows_dev;
  int appends = 0;

  World(const Params& p, int num_seqs)
      : shape{kLayers, kHk * p.group, kHk, p.head_dim, dtype_of<T>()},
        map(make_map()),
        host(shape, map, StoreConfig{p.page_size, 4096}),
        dev(shape, map, StoreConfig{p.page_size, 4096}),
        oracle(shape, map) {
    for (int i = 0; i < num_seqs; ++i) {
      const SeqId a = host.create_sequence(), b = dev.create_sequence();
      if (a != b) throw std::logic_error("sequence ids diverge");
      seqs.push_back(a);
    }
    k_dev = std::make_unique<DevBuf<T>>(512 * kHk * p.head_dim);
    v_dev = std::make_unique<DevBuf<T>>(512 * kHk * p.head_dim);
    rows_dev = std::make_unique<DevBuf<std::int32_t>>(512 * kHk);
  }

  std::vector<T> random(std::size_t n, float lo, float hi) {
    std::uniform_real_distribution<float> u(lo, hi);
    std::vector<T> v(n);
    for (auto& x : v) x = T(u(rng));
    return v;
  }

  // Appends to both layers (layer 0 only to keep the stores' contracts); alternates the device store between
  // append_from_host (host K/V, row copies) and append_device (the kernel path).
  void append(std::size_t si, const std::vector<std::int32_t>& pos) {
    const std::size_t n = pos.size() * kHk * static_cast<std::size_t>(shape.head_dim);
    for (int layer = 0; layer < kLayers; ++layer) {
      const auto k = random(n, -1.f, 1.f), v = random(n, -1.f, 1.f);
      host.append(seqs[si], layer, std::span<const T>(k), std::span<const T>(v), pos);
      oracle.append<T>(seqs[si], layer, k, v, pos);
      if (appends++ % 2 == 0) {
        append_from_host(dev, seqs[si], layer, std::span<const T>(k), std::span<const T>(v), pos);
      } else {
        k_dev->upload(k);
        v_dev->upload(v);
        append_device(dev, seqs[si], layer, k_dev->p, v_dev->p, pos, rows_dev->p, nullptr);
        if (cudaDeviceSynchronize() != cudaSuccess) throw std::runtime_error("append_device failed");
      }
    }
  }

  // Forks sequence si in all three (the device store's copy-on-write then copies pages on the device).
  void fork(std::size_t si) {
    const SeqId a = host.fork(seqs[si]), b = dev.fork(seqs[si]);
    if (a != b) throw std::logic_error("sequence ids diverge");
    oracle.fork(seqs[si], a);
    seqs.push_back(a);
  }

  std::vector<HeadPolicy> policies() const {
    std::vector<HeadPolicy> v;
    for (int h = 0; h < kHk; ++h) v.push_back(host.policy(kLayer, h));
    return v;
  }
};

double tol_out(DType dt) { return dt == DType::kBF16 ? 2.5e-2 : 4e-3; }

template <class T>
void compare(const std::vector<T>& out, const std::vector<float>& lse, const std::vector<double>& ref,
             const std::vector<double>& ref_lse, std::size_t row0, DType dt, const char* what) {
  const double atol = tol_out(dt);
  const std::size_t D = ref.size() / ref_lse.size();
  double worst = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double got = static_cast<double>(static_cast<float>(out[row0 * D + i]));
    worst = std::max(worst, std::abs(got - ref[i]) - atol * std::abs(ref[i]));
  }
  CHECK_MSG(worst <= atol, std::string(what) + " output error " + std::to_string(worst));
  double worst_lse = 0;
  for (std::size_t i = 0; i < ref_lse.size(); ++i) {
    const double r = ref_lse[i], g = lse[row0 + i];
    if (std::isinf(r)) {
      CHECK_MSG(std::isinf(g) && g < 0, std::string(what) + " lse should be -inf");
      continue;
    }
    worst_lse = std::max(worst_lse, std::abs(g - r) / (1.0 + std::abs(r)));
  }
  CHECK_MSG(worst_lse <= 2e-3, std::string(what) + " lse error " + std::to_string(worst_lse));
}

template <class T>
struct DecodeRunner {
  const Params& prm;
  World<T>& w;
  DevicePlan dplan;
  AttentionPlan plan;
  DecodePartitionConfig cfg;
  int max_units;
  std::size_t ws_bytes;
  std::unique_ptr<DevBuf<unsigned char>> ws;
  std::unique_ptr<DevBuf<T>> q, out;
  std::unique_ptr<DevBuf<float>> lse;
  int B, Hq, D;

  DecodeRunner(const Params& p, World<T>& world, DecodePartitionConfig c)
      : prm(p), w(world), dplan(8, kHk, 64), cfg(c) {
    B = static_cast<int>(w.seqs.size());
    Hq = w.shape.num_q_heads;
    D = w.shape.head_dim;
    max_units = 8 * kHk;
    ws_bytes = decode_workspace_bytes(max_units, cfg, p.group, D);
    ws = std::make_unique<DevBuf<unsigned char>>(ws_bytes);
    q = std::make_unique<DevBuf<T>>(static_cast<std::size_t>(B) * Hq * D);
    out = std::make_unique<DevBuf<T>>(static_cast<std::size_t>(B) * Hq * D);
    lse = std::make_unique<DevBuf<float>>(static_cast<std::size_t>(B) * Hq);
  }

  std::vector<std::int32_t> positions() const {
    std::vector<std::int32_t> v;
    for (SeqId s : w.seqs) v.push_back(w.dev.next_position(s, kLayer) - 1);
    return v;
  }

  DecodeParams params() const {
    DecodeParams p;
    p.kv = dplan.paged_kv(w.dev.pool().data(), w.dev.page_size(), D);
    p.dtype = kv_type_of<T>();
    p.batch = B;
    p.num_q_heads = Hq;
    p.q = q->p;
    p.q_pos = dplan.q_pos();
    p.out = out->p;
    p.lse = lse->p;
    return p;
  }

  // Host side of a step: plan update + incremental upload + new queries. Returns the queries.
  std::vector<T> prepare(cudaStream_t s) {
    const auto pos = positions();
    const std::vector<std::int32_t> ones(w.seqs.size(), 1);
    plan.update(w.dev, kLayer, w.seqs, ones, pos);
    const auto pol = w.policies();
    dplan.sync(plan, pol, s);
    auto qh = w.random(static_cast<std::size_t>(B) * Hq * D, -2.f, 2.f);
    q->upload(qh, s);
    return qh;
  }

  void check_against_oracle(const std::vector<T>& qh, const char* what) {
    const auto o = out->download(static_cast<std::size_t>(B) * Hq * D);
    const auto l = lse->download(static_cast<std::size_t>(B) * Hq);
    const auto pos = positions();
    for (int b = 0; b < B; ++b) {
      std::vector<double> ref, ref_lse;
      const std::span<const T> qs(qh.data() + static_cast<std::size_t>(b) * Hq * D,
                                  static_cast<std::size_t>(Hq) * D);
      const std::int32_t qp = pos[static_cast<std::size_t>(b)];
      w.oracle.template attention<T>(w.seqs[static_cast<std::size_t>(b)], kLayer, qs, std::span(&qp, 1), ref,
                                     ref_lse);
      compare(o, l, ref, ref_lse, static_cast<std::size_t>(b) * Hq, prm.dtype, what);
    }
  }

  // The device partition equals the host reference for the same entry counts.
  void check_partition() {
    const auto view = decode_workspace_view(ws->p, max_units, cfg, prm.group, D);
    const int U = B * kHk;
    std::vector<std::int32_t> entries;
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < kHk; ++h)
        entries.push_back(plan.slot(static_cast<std::size_t>(b), h).num_entries());
    const auto ref = make_decode_partition(entries, cfg);
    std::vector<std::int32_t> off(static_cast<std::size_t>(U) + 1);
    CUDA_REQUIRE(cudaMemcpy(off.data(), view.chunk_offset, off.size() * 4, cudaMemcpyDeviceToHost));
    CHECK(off == ref.chunk_offset);
    std::vector<DecodeChunk> ch(static_cast<std::size_t>(ref.num_chunks()));
    CUDA_REQUIRE(cudaMemcpy(ch.data(), view.chunks, ch.size() * sizeof(DecodeChunk), cudaMemcpyDeviceToHost));
    for (std::size_t i = 0; i < ch.size(); ++i) {
      CHECK(ch[i].unit == ref.chunks[i].unit);
      CHECK(ch[i].entry_begin == ref.chunks[i].entry_begin);
      CHECK(ch[i].entry_end == ref.chunks[i].entry_end);
    }
  }
};

template <class T>
void decode_case(const Params& p) {
  World<T> w(p, 3);
  const auto h = histories();
  for (std::size_t s = 0; s < h.size(); ++s)
    for (const auto& chunk : h[s]) w.append(s, chunk);
  w.fork(0);  // a fourth sequence sharing sequence 0's pages; the decode steps below diverge them
  // Two partition configs: one unit per chunk where possible, and a fine split that forces the LSE merge.
  for (DecodePartitionConfig cfg : {DecodePartitionConfig{1, 1 << 20}, DecodePartitionConfig{64, 1}}) {
    DecodeRunner<T> r(p, w, cfg);
    for (int step = 0; step < 3; ++step) {
      if (step > 0)
        for (std::size_t s = 0; s < w.seqs.size(); ++s) {
          const std::int32_t next = w.dev.next_position(w.seqs[s], kLayer) + (s == 1 && step == 2 ? 7 : 0);
          w.append(s, {next});  // decode token; one spliced jump of 7 on sequence 1
        }
      const auto qh = r.prepare(nullptr);
      decode_attention(r.params(), r.ws->p, r.ws_bytes, cfg, r.max_units, nullptr);
      CUDA_REQUIRE(cudaDeviceSynchronize());
      r.check_against_oracle(qh, "decode");
      r.check_partition();
      if (step > 0) CHECK(!r.dplan.last_sync().full_upload);  // incremental uploads after the first step
    }
  }
}

template <class T>
void prefill_case(const Params& p) {
  World<T> w(p, 3);
  const auto h = histories();
  std::vector<std::int32_t> q_lens, q_pos;
  for (std::size_t s = 0; s < h.size(); ++s) {
    for (const auto& chunk : h[s]) w.append(s, chunk);
    const auto& last = h[s].back();  // queries of the last chunk attend over cached pages + the chunk itself
    q_lens.push_back(static_cast<std::int32_t>(last.size()));
    q_pos.insert(q_pos.end(), last.begin(), last.end());
  }
  AttentionPlan plan;
  plan.update(w.dev, kLayer, w.seqs, q_lens, q_pos);
  DevicePlan dplan(8, kHk, 1024);
  const auto pol = w.policies();
  dplan.sync(plan, pol, nullptr);
  const int Hq = w.shape.num_q_heads, D = w.shape.head_dim;
  const std::size_t total_q = q_pos.size();
  auto qh = w.random(total_q * Hq * D, -2.f, 2.f);
  DevBuf<T> q(qh.size()), out(qh.size());
  DevBuf<float> lse(total_q * Hq);
  q.upload(qh);
  std::vector<bool> local;
  for (const auto& x : pol) local.push_back(x.is_local());
  const auto tiles = make_prefill_tiles(q_lens, local, p.group);
  DevBuf<PrefillTile> tiles_dev(tiles.size());
  tiles_dev.upload(tiles);
  PrefillParams pp;
  pp.kv = dplan.paged_kv(w.dev.pool().data(), w.dev.page_size(), D);
  pp.dtype = kv_type_of<T>();
  pp.num_q_heads = Hq;
  pp.q = q.p;
  pp.q_pos = dplan.q_pos();
  pp.q_begin = dplan.q_begin();
  pp.q_len = dplan.q_len();
  pp.out = out.p;
  pp.lse = lse.p;
  pp.tiles = tiles_dev.p;
  pp.num_tiles = static_cast<int>(tiles.size());
  prefill_attention(pp, nullptr);
  CUDA_REQUIRE(cudaDeviceSynchronize());
  const auto o = out.download(qh.size());
  const auto l = lse.download(total_q * Hq);
  std::size_t row = 0;
  for (std::size_t s = 0; s < w.seqs.size(); ++s) {
    const std::size_t n = static_cast<std::size_t>(q_lens[s]);
    std::vector<double> ref, ref_lse;
    w.oracle.template attention<T>(w.seqs[s], kLayer,
                                   std::span<const T>(qh.data() + row * Hq * D, n * Hq * D),
                                   std::span<const std::int32_t>(q_pos.data() + row, n), ref, ref_lse);
    compare(o, l, ref, ref_lse, row * Hq, p.dtype, "prefill");
    row += n;
  }
}

// After identical appends (host copies on one store, the append kernel on the other half of the time), every
// referenced row of the device pool equals the host store's.
template <class T>
void append_case(const Params& p) {
  World<T> w(p, 3);
  const auto h = histories();
  for (std::size_t s = 0; s < h.size(); ++s)
    for (const auto& chunk : h[s]) w.append(s, chunk);
  const auto& pool = w.host.pool();
  std::vector<T> dev_pool(pool.page_elems() * static_cast<std::size_t>(pool.num_pages()));
  CUDA_REQUIRE(
      cudaMemcpy(dev_pool.data(), w.dev.pool().data(), dev_pool.size() * sizeof(T), cudaMemcpyDeviceToHost));
  const std::size_t D = static_cast<std::size_t>(p.head_dim);
  long long rows = 0, bad = 0;
  for (SeqId s : w.seqs)
    for (int layer = 0; layer < kLayers; ++layer)
      for (int hh = 0; hh < kHk; ++hh) {
        const HeadTable& th = w.host.table(s, layer, hh);
        const HeadTable& td = w.dev.table(s, layer, hh);
        REQUIRE(th.size() == td.size());
        for (std::size_t e = 0; e < th.size(); ++e) {
          REQUIRE(th[e] == td[e]);
          for (int slot = th[e].first; slot < th[e].end_slot(); ++slot) {
            const std::size_t off = static_cast<std::size_t>(slot) * D;
            const T* hk = pool.k_ptr(th[e].page_id) + off;
            const T* hv = pool.v_ptr(th[e].page_id) + off;
            const T* dk = dev_pool.data() + static_cast<std::size_t>(th[e].page_id) * pool.page_elems() + off;
            const T* dv = dk + static_cast<std::size_t>(p.page_size) * D;
            bad += std::memcmp(hk, dk, D * sizeof(T)) != 0 || std::memcmp(hv, dv, D * sizeof(T)) != 0;
            ++rows;
          }
        }
      }
  CHECK(rows > 0);
  CHECK_MSG(bad == 0, std::to_string(bad) + " of " + std::to_string(rows) + " rows differ");
}

// Relocation of every entry of the local heads by a per-entry delta matches rope_relocate_reference.
template <class T>
void rope_case(const Params& p, RopeConfig cfg) {
  World<T> w(p, 3);
  const auto h = histories();
  for (std::size_t s = 0; s < h.size(); ++s)
    for (const auto& chunk : h[s]) w.append(s, chunk);
  std::vector<PageEntry> entries;
  std::vector<std::int32_t> deltas;
  const std::int32_t delta_choices[] = {0, 1, -3, 977, -50000, 131072};
  for (SeqId s : w.seqs)
    for (int hh = 1; hh < kHk; ++hh) {
      const HeadTable& t = w.dev.table(s, kLayer, hh);
      for (std::size_t e = 0; e < t.size(); ++e) {
        entries.push_back(t[e]);
        deltas.push_back(delta_choices[entries.size() % 6]);
      }
    }
  const auto& pool = w.host.pool();
  const std::size_t D = static_cast<std::size_t>(p.head_dim);
  const auto inv = rope_inv_freq(cfg);
  DevBuf<PageEntry> e_dev(entries.size());
  DevBuf<std::int32_t> d_dev(deltas.size());
  DevBuf<double> f_dev(inv.size());
  e_dev.upload(entries);
  d_dev.upload(deltas);
  f_dev.upload(inv);
  rope_relocate(w.dev.pool().data(), kv_type_of<T>(), p.page_size, e_dev.p, d_dev.p,
                static_cast<int>(entries.size()), cfg, f_dev.p, nullptr);
  CUDA_REQUIRE(cudaDeviceSynchronize());
  std::vector<T> dev_pool(pool.page_elems() * static_cast<std::size_t>(pool.num_pages()));
  CUDA_REQUIRE(
      cudaMemcpy(dev_pool.data(), w.dev.pool().data(), dev_pool.size() * sizeof(T), cudaMemcpyDeviceToHost));
  double worst = 0;
  bool v_untouched = true;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const auto& e = entries[i];
    for (int slot = e.first; slot < e.first + e.count; ++slot) {
      const std::size_t off = static_cast<std::size_t>(slot) * D;
      std::vector<float> row(D);
      for (std::size_t d = 0; d < D; ++d) row[d] = to_float(pool.k_ptr(e.page_id)[off + d]);
      rope_relocate_reference(cfg, inv, deltas[i], row.data());
      const T* got = dev_pool.data() + static_cast<std::size_t>(e.page_id) * pool.page_elems() + off;
      for (std::size_t d = 0; d < D; ++d)
        worst = std::max(worst, std::abs(double(to_float(got[d])) - row[d]));
      v_untouched =
          v_untouched && std::memcmp(pool.v_ptr(e.page_id) + off,
                                     got + static_cast<std::size_t>(p.page_size) * D, D * sizeof(T)) == 0;
    }
  }
  // One rounding of the stored dtype (|x| <= sqrt(2) after rotation).
  CHECK_MSG(worst <= (p.dtype == DType::kBF16 ? 1.2e-2 : 1.5e-3), "rope error " + std::to_string(worst));
  CHECK(v_untouched);
}

template <template <class> class F>
void for_params(const char* what) {
  for (const Params& p : all_params()) {
    gputest::context() = std::string(what) + " " + describe(p);
    if (p.dtype == DType::kBF16)
      F<BFloat16>::run(p);
    else
      F<Half>::run(p);
  }
}

template <class T>
struct Decode {
  static void run(const Params& p) { decode_case<T>(p); }
};
template <class T>
struct Prefill {
  static void run(const Params& p) { prefill_case<T>(p); }
};
template <class T>
struct Append {
  static void run(const Params& p) {
    if (p.group == 1) append_case<T>(p);  // the group size does not change the KV layout
  }
};
template <class T>
struct Rope {
  static void run(const Params& p) {
    if (p.group != 1) return;
    RopeConfig c;
    c.head_dim = p.head_dim;
    rope_case<T>(p, c);  // rotate-half, full rotary, default frequencies
    c.pairing = RopePairing::kInterleaved;
    c.rotary_dim = p.head_dim / 2;  // partial rotary
    c.scaling = RopeScaling::kLlama3;
    c.theta = 500000.0;
    c.factor = 8.0;
    rope_case<T>(p, c);
    c.pairing = RopePairing::kRotateHalf;
    c.scaling = RopeScaling::kYarn;
    c.factor = 4.0;
    c.original_max_position = 4096;
    rope_case<T>(p, c);
  }
};

}  // namespace

GPU_TEST_CASE("decode matches the oracle") { for_params<Decode>("decode"); }
GPU_TEST_CASE("prefill matches the oracle") { for_params<Prefill>("prefill"); }
GPU_TEST_CASE("append writes the same rows as the host store") { for_params<Append>("append"); }
GPU_TEST_CASE("rope relocation matches the CPU reference") { for_params<Rope>("rope"); }

GPU_TEST_CASE("graph: a captured decode step replays over changing contexts") {
  const Params p{DType::kBF16, 128, 4, 16};
  gputest::context() = "graph " + describe(p);
  World<BFloat16> w(p, 3);
  const auto h = histories();
  for (std::size_t s = 0; s < h.size(); ++s)
    for (const auto& chunk : h[s]) w.append(s, chunk);
  const DecodePartitionConfig cfg{32, 1};
  DecodeRunner<BFloat16> r(p, w, cfg);
  cudaStream_t stream;
  CUDA_REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  r.prepare(stream);  // first sync allocates and uploads: done before capture
  CUDA_REQUIRE(cudaStreamSynchronize(stream));
  const std::uint64_t gen = r.dplan.generation();

  cudaGraph_t graph;
  CUDA_REQUIRE(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  decode_attention(r.params(), r.ws->p, r.ws_bytes, cfg, r.max_units, stream);
  CUDA_REQUIRE(cudaStreamEndCapture(stream, &graph));
  cudaGraphExec_t exec;
  CUDA_REQUIRE(cudaGraphInstantiate(&exec, graph, 0));

  for (int step = 0; step < 4; ++step) {
    for (std::size_t s = 0; s < w.seqs.size(); ++s) w.append(s, {w.dev.next_position(w.seqs[s], kLayer)});
    const auto qh = r.prepare(stream);
    REQUIRE(r.dplan.generation() == gen);  // buffers kept their addresses: the graph is still valid
    CUDA_REQUIRE(cudaGraphLaunch(exec, stream));
    CUDA_REQUIRE(cudaStreamSynchronize(stream));
    r.check_against_oracle(qh, "graph decode");
    // The eager path gives bit-identical results.
    const auto graph_out = r.out->download(r.out->n);
    decode_attention(r.params(), r.ws->p, r.ws_bytes, cfg, r.max_units, stream);
    CUDA_REQUIRE(cudaStreamSynchronize(stream));
    CHECK(std::memcmp(graph_out.data(), r.out->download(r.out->n).data(), graph_out.size() * 2) == 0);
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

// The plan/run wrapper: a chunked prefill step, then decode steps, each checked against the oracle, with the
// plans of both layers made before either runs (as an engine planning a whole step would).
GPU_TEST_CASE("cuda attention: plan/run over prefill then decode steps") {
  for (const Params& p : {Params{DType::kBF16, 128, 4, 16}, Params{DType::kF16, 64, 8, 32}}) {
    gputest::context() = "CudaAttention " + describe(p);
    auto body = [&](auto tag) {
      using T = decltype(tag);
      World<T> w(p, 3);
      const auto h = histories();
      std::vector<std::int32_t> q_lens, q_pos;
      for (std::size_t s = 0; s < h.size(); ++s) {
        for (const auto& chunk : h[s]) w.append(s, chunk);
        q_lens.push_back(static_cast<std::int32_t>(h[s].back().size()));
        q_pos.insert(q_pos.end(), h[s].back().begin(), h[s].back().end());
      }
      CudaAttention<T> attn(w.dev, CudaAttentionConfig{8, 1024});
      const int Hq = w.shape.num_q_heads, D = w.shape.head_dim;
      DevBuf<T> q(1024 * static_cast<std::size_t>(Hq) * D), out(1024 * static_cast<std::size_t>(Hq) * D);
      DevBuf<float> lse(1024 * static_cast<std::size_t>(Hq));
      auto check_step = [&](const std::vector<std::int32_t>& lens, const std::vector<std::int32_t>& pos,
                            const char* what) {
        for (int layer = 0; layer < kLayers; ++layer) attn.plan(layer, w.seqs, lens, pos, nullptr);
        const auto qh = w.random(pos.size() * Hq * D, -2.f, 2.f);
        q.upload(qh);
        attn.run(kLayer, q.p, out.p, lse.p, nullptr);
        CUDA_REQUIRE(cudaDeviceSynchronize());
        const auto o = out.download(qh.size());
        const auto l = lse.download(pos.size() * Hq);
        std::size_t row = 0;
        for (std::size_t s = 0; s < w.seqs.size(); ++s) {
          const std::size_t n = static_cast<std::size_t>(lens[s]);
          std::vector<double> ref, ref_lse;
          w.oracle.template attention<T>(w.seqs[s], kLayer,
                                         std::span<const T>(qh.data() + row * Hq * D, n * Hq * D),
                                         std::span<const std::int32_t>(pos.data() + row, n), ref, ref_lse);
          compare(o, l, ref, ref_lse, row * Hq, p.dtype, what);
          row += n;
        }
      };
      check_step(q_lens, q_pos, "CudaAttention prefill");
      for (int step = 0; step < 3; ++step) {
        std::vector<std::int32_t> ones, pos;
        for (std::size_t s = 0; s < w.seqs.size(); ++s) {
          const std::int32_t next = w.dev.next_position(w.seqs[s], kLayer);
          w.append(s, {next});
          ones.push_back(1);
          pos.push_back(next);
        }
        check_step(ones, pos, "CudaAttention decode");
      }
    };
    if (p.dtype == DType::kBF16)
      body(BFloat16{});
    else
      body(Half{});
  }
}

GPU_TEST_CASE("bad input: decode and prefill reject inconsistent arguments") {
  DecodeParams p;
  p.kv.num_kv_heads = 4;
  p.num_q_heads = 6;  // not a multiple
  bool threw = false;
  try {
    decode_attention(p, nullptr, 0, DecodePartitionConfig{8, 4}, 16, nullptr);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw);
  PrefillParams pp;
  pp.kv.num_kv_heads = 2;
  pp.num_q_heads = 4;
  pp.kv.head_dim = 96;
  pp.num_tiles = 1;
  threw = false;
  try {
    prefill_attention(pp, nullptr);  // null pointers
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw);
}
