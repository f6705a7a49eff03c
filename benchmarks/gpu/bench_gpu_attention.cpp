// GPU benchmarks of the head-aware kernels vs the same problem with every head global (dense), in one
// process. Plain main + CUDA events (no Google Benchmark: the GPU hosts have only CUDA, CMake and ninja).
// Prints one JSON object per measurement on stdout (JSON lines); benchmarks/gpu/peers.py measures torch SDPA
// (and FlashInfer where importable) on the dense problem, and scripts/gpu.sh runs both.
//
//   bench_gpu_attention copy                       device-to-device copy bandwidth (the roofline)
//   bench_gpu_attention decode  [--batch 64] [--contexts 4096,...] [--ratio 0.125] [--window 512] [--sink 64]
//   bench_gpu_attention prefill [--contexts 8192,...] [...]
//
// Timing: warm-up, then `iters` timed runs, each preceded by an L2 flush (a memset of 2x the L2 size) outside
// the timed region; the median is reported. Bytes are the K/V bytes the kernel must read (visible keys only);
// FLOPs count QK^T and PV over the visible (causal/sink/window) pairs, 4 * D per pair per q head.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "redknot/attention_plan.hpp"
#include "redknot/cuda/decode.hpp"
#include "redknot/cuda/device_plan.hpp"
#include "redknot/cuda/prefill.hpp"
#include "redknot/cuda/store.hpp"
#include "redknot/kv_head_store.hpp"
#include "redknot/visibility.hpp"

using namespace redknot;
using namespace redknot::cuda;

namespace {

void ck(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "CUDA error in %s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

template <class X>
X* dmalloc(std::size_t count) {
  void* p = nullptr;
  ck(cudaMalloc(&p, std::max<std::size_t>(count, 1) * sizeof(X)), "cudaMalloc");
  return static_cast<X*>(p);
}

struct Args {
  std::string mode = "decode";
  int batch = 64;
  std::vector<int> contexts;
  double ratio = 0.125;
  int window = 512;
  int sink = 64;
  int page_size = 16;
  int head_dim = 128;
  int q_heads = 32;
  int kv_heads = 8;
  int iters = 20;
  bool dense_only = false;
};

std::vector<int> parse_list(const char* s) {
  std::vector<int> v;
  std::string t(s);
  std::size_t a = 0;
  while (a < t.size()) {
    std::size_t b = t.find(',', a);
    if (b == std::string::npos) b = t.size();
    v.push_back(std::atoi(t.substr(a, b - a).c_str()));
    a = b + 1;
  }
  return v;
}

Args parse(int argc, char** argv) {
  Args a;
  if (argc > 1) a.mode = argv[1];
  for (int i = 2; i < argc; ++i) {
    const std::string k = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : "";
    if (k == "--batch")
      a.batch = std::atoi(v), ++i;
    else if (k == "--contexts")
      a.contexts = parse_list(v), ++i;
    else if (k == "--ratio")
      a.ratio = std::atof(v), ++i;
    else if (k == "--window")
      a.window = std::atoi(v), ++i;
    else if (k == "--sink")
      a.sink = std::atoi(v), ++i;
    else if (k == "--page-size")
      a.page_size = std::atoi(v), ++i;
    else if (k == "--head-dim")
      a.head_dim = std::atoi(v), ++i;
    else if (k == "--q-heads")
      a.q_heads = std::atoi(v), ++i;
    else if (k == "--kv-heads")
      a.kv_heads = std::atoi(v), ++i;
    else if (k == "--iters")
      a.iters = std::atoi(v), ++i;
    else if (k == "--dense-only")
      a.dense_only = true;
    else {
      std::fprintf(stderr, "unknown argument %s\n", k.c_str());
      std::exit(2);
    }
  }
  if (a.contexts.empty())
    a.contexts = a.mode == "prefill" ? std::vector<int>{8192, 16384, 32768} : std::vector<int>{32768};
  return a;
}

class Timer {
 public:
  Timer() {
    ck(cudaEventCreate(&a_), "event");
    ck(cudaEventCreate(&b_), "event");
    int dev = 0, l2 = 0;
    ck(cudaGetDevice(&dev), "cudaGetDevice");
    ck(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev), "L2 size");
    flush_bytes_ = static_cast<std::size_t>(std::max(l2, 1 << 20)) * 2;
    ck(cudaMalloc(&flush_, flush_bytes_), "cudaMalloc(flush)");
  }
  ~Timer() {
    cudaFree(flush_);
    cudaEventDestroy(a_);
    cudaEventDestroy(b_);
  }
  // Median milliseconds of f() over iters runs after 3 warm-ups, L2 flushed before each run.
  template <class F>
  double median_ms(int iters, F&& f) {
    for (int i = 0; i < 3; ++i) f();
    std::vector<float> t;
    for (int i = 0; i < iters; ++i) {
      ck(cudaMemsetAsync(flush_, i & 0xff, flush_bytes_, nullptr), "flush");
      ck(cudaEventRecord(a_, nullptr), "record");
      f();
      ck(cudaEventRecord(b_, nullptr), "record");
      ck(cudaEventSynchronize(b_), "sync");
      float ms = 0;
      ck(cudaEventElapsedTime(&ms, a_, b_), "elapsed");
      t.push_back(ms);
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
  }

 private:
  cudaEvent_t a_, b_;
  void* flush_ = nullptr;
  std::size_t flush_bytes_ = 0;
};

std::string device_name() {
  cudaDeviceProp p{};
  int dev = 0;
  ck(cudaGetDevice(&dev), "cudaGetDevice");
  ck(cudaGetDeviceProperties(&p, dev), "props");
  return p.name;
}

double copy_bandwidth(Timer& timer) {
  const std::size_t bytes = std::size_t(2) << 30;
  void *a, *b;
  ck(cudaMalloc(&a, bytes), "cudaMalloc");
  ck(cudaMalloc(&b, bytes), "cudaMalloc");
  ck(cudaMemset(a, 1, bytes), "memset");
  const double ms =
      timer.median_ms(10, [&] { ck(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice), "copy"); });
  cudaFree(a);
  cudaFree(b);
  return 2.0 * bytes / (ms * 1e-3) / 1e9;  // read + write
}

using T = BFloat16;

// A one-layer store holding `batch` sequences of `ctx` tokens, appended through the append kernel in chunks
// so that local heads evict as they go (as they would while prefilling chunk by chunk).
struct Fixture {
  ModelShape shape;
  HeadMap map;
  std::unique_ptr<CudaKVHeadStore<T>> store;
  std::vector<SeqId> seqs;

  Fixture(const Args& a, int batch, int ctx, bool dense, int chunk, bool keep_all)
      : shape{1, a.q_heads, a.kv_heads, a.head_dim, DType::kBF16},
        map(dense ? HeadMap::all_global(1, a.kv_heads)
                  : HeadMap::with_global_ratio(1, a.kv_heads, a.ratio, a.window, a.sink)) {
    // Pages: all heads full (dense) or what the retention rule keeps, plus one chunk per head in flight.
    std::int64_t pages = 0;
    const std::int64_t ps = a.page_size;
    for (int h = 0; h < a.kv_heads; ++h) {
      const bool local = map.policy(0, h).is_local() && !keep_all;
      const std::int64_t keep = local ? (a.sink + a.window + 2 * chunk) : ctx;
      pages += (std::min<std::int64_t>(keep, ctx) + ps - 1) / ps + 2;
    }
    pages *= batch;
    store = std::make_unique<CudaKVHeadStore<T>>(
        shape, map, StoreConfig{a.page_size, static_cast<std::int32_t>(pages + 16)});
    const std::size_t n = static_cast<std::size_t>(chunk) * a.kv_heads * a.head_dim;
    std::vector<T> host(n);
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    for (auto& x : host) x = T(u(rng));
    T* k = dmalloc<T>(n);
    T* v = dmalloc<T>(n);
    std::int32_t* rows = dmalloc<std::int32_t>(static_cast<std::size_t>(chunk) * a.kv_heads);
    ck(cudaMemcpy(k, host.data(), n * sizeof(T), cudaMemcpyHostToDevice), "upload");
    ck(cudaMemcpy(v, host.data(), n * sizeof(T), cudaMemcpyHostToDevice), "upload");
    std::vector<std::int32_t> pos(static_cast<std::size_t>(chunk));
    for (int b = 0; b < batch; ++b) {
      const SeqId s = store->create_sequence();
      seqs.push_back(s);
      for (int p0 = 0; p0 < ctx; p0 += chunk) {
        const int m = std::min(chunk, ctx - p0);
        pos.resize(static_cast<std::size_t>(m));
        for (int i = 0; i < m; ++i) pos[static_cast<std::size_t>(i)] = p0 + i;
        append_device(*store, s, 0, k, v, pos, rows, nullptr);
        ck(cudaStreamSynchronize(nullptr), "append");
      }
      // Steady state of decoding: only the last query remains, local heads drop what it cannot see.
      if (!keep_all) store->retire_queries(s, ctx - 1);
    }
    cudaFree(k);
    cudaFree(v);
    cudaFree(rows);
  }

  std::vector<HeadPolicy> policies() const {
    std::vector<HeadPolicy> v;
    for (int h = 0; h < shape.num_kv_heads; ++h) v.push_back(store->policy(0, h));
    return v;
  }
};

// Visible (query, key) pairs per kv head for queries at q_positions (the canonical rule, counted exactly).
double visible_pairs(const HeadPolicy& p, std::int64_t q_lo, std::int64_t q_hi) {
  double n = 0;
  for (std::int64_t q = q_lo; q <= q_hi; ++q)
    n += static_cast<double>(visible_ranges(p, q).count_in(0, q + 1));
  return n;
}

void bench_decode(const Args& a, Timer& timer, double copy_gbs) {
  const std::string dev = device_name();
  for (int ctx : a.contexts) {
    double dense_ms = 0;
    for (int dense = 1; dense >= (a.dense_only ? 1 : 0); --dense) {
      Fixture f(a, a.batch, ctx, dense != 0, 2048, false);
      AttentionPlan plan;
      const std::vector<std::int32_t> ones(f.seqs.size(), 1), qpos(f.seqs.size(), ctx - 1);
      plan.update(*f.store, 0, f.seqs, ones, qpos);
      DevicePlan dplan(a.batch, a.kv_heads, a.batch);
      const auto pol = f.policies();
      dplan.sync(plan, pol, nullptr);
      const int U = a.batch * a.kv_heads, g = a.q_heads / a.kv_heads;
      const DecodePartitionConfig cfg = default_decode_partition_config();
      const std::size_t ws_bytes = decode_workspace_bytes(U, cfg, g, a.head_dim);
      void* ws;
      void *q, *out;
      const std::size_t qn = static_cast<std::size_t>(a.batch) * a.q_heads * a.head_dim;
      ck(cudaMalloc(&ws, ws_bytes), "ws");
      ck(cudaMalloc(&q, qn * 2), "q");
      ck(cudaMalloc(&out, qn * 2), "out");
      ck(cudaMemset(q, 0x3c, qn * 2), "q fill");  // small positive values
      DecodeParams p;
      p.kv = dplan.paged_kv(f.store->pool().data(), a.page_size, a.head_dim);
      p.dtype = DType::kBF16;
      p.batch = a.batch;
      p.num_q_heads = a.q_heads;
      p.q = q;
      p.q_pos = dplan.q_pos();
      p.out = out;
      const double ms = timer.median_ms(a.iters, [&] { decode_attention(p, ws, ws_bytes, cfg, U, nullptr); });
      double bytes = 0;
      for (const auto& hp : pol) bytes += visible_pairs(hp, ctx - 1, ctx - 1);
      bytes *= static_cast<double>(a.batch) * 2.0 * a.head_dim * sizeof(T);
      const double gbs = bytes / (ms * 1e-3) / 1e9;
      if (dense) dense_ms = ms;
      std::printf(
          "{\"bench\":\"decode\",\"impl\":\"redknot\",\"problem\":\"%s\",\"device\":\"%s\",\"batch\":%d,"
          "\"context\":%d,\"q_heads\":%d,\"kv_heads\":%d,\"head_dim\":%d,\"page_size\":%d,\"global_ratio\":%"
          "g,"
          "\"window\":%d,\"sink\":%d,\"ms\":%.4f,\"bytes\":%.0f,\"gbs\":%.1f,\"copy_gbs\":%.1f,\"frac_copy_"
          "bw\":%.3f,"
          "\"speedup_vs_dense\":%.3f}\n",
          dense ? "dense" : "head_aware", dev.c_str(), a.batch, ctx, a.q_heads, a.kv_heads, a.head_dim,
          a.page_size, dense ? 1.0 : a.ratio, a.window, a.sink, ms, bytes, gbs, copy_gbs, gbs / copy_gbs,
          dense ? 1.0 : dense_ms / ms);
      std::fflush(stdout);
      cudaFree(ws);
      cudaFree(q);
      cudaFree(out);
    }
  }
}

void bench_prefill(const Args& a, Timer& timer) {
  const std::string dev = device_name();
  for (int ctx : a.contexts) {
    double dense_ms = 0;
    for (int dense = 1; dense >= (a.dense_only ? 1 : 0); --dense) {
      // One sequence, the whole context prefilled at once (all keys stay: queries start at position 0).
      Fixture f(a, 1, ctx, dense != 0, ctx, true);
      AttentionPlan plan;
      std::vector<std::int32_t> qpos(static_cast<std::size_t>(ctx));
      for (int i = 0; i < ctx; ++i) qpos[static_cast<std::size_t>(i)] = i;
      const std::vector<std::int32_t> qlen{ctx};
      plan.update(*f.store, 0, f.seqs, qlen, qpos);
      DevicePlan dplan(1, a.kv_heads, ctx);
      const auto pol = f.policies();
      dplan.sync(plan, pol, nullptr);
      std::vector<bool> local;
      for (const auto& hp : pol) local.push_back(hp.is_local());
      const int g = a.q_heads / a.kv_heads;
      const auto tiles = make_prefill_tiles(qlen, local, g);
      PrefillTile* tiles_dev = dmalloc<PrefillTile>(tiles.size());
      ck(cudaMemcpy(tiles_dev, tiles.data(), tiles.size() * sizeof(PrefillTile), cudaMemcpyHostToDevice),
         "tiles");
      const std::size_t qn = static_cast<std::size_t>(ctx) * a.q_heads * a.head_dim;
      void *q, *out;
      ck(cudaMalloc(&q, qn * 2), "q");
      ck(cudaMalloc(&out, qn * 2), "out");
      ck(cudaMemset(q, 0x3c, qn * 2), "q fill");
      PrefillParams p;
      p.kv = dplan.paged_kv(f.store->pool().data(), a.page_size, a.head_dim);
      p.dtype = DType::kBF16;
      p.num_q_heads = a.q_heads;
      p.q = q;
      p.q_pos = dplan.q_pos();
      p.q_begin = dplan.q_begin();
      p.q_len = dplan.q_len();
      p.out = out;
      p.tiles = tiles_dev;
      p.num_tiles = static_cast<int>(tiles.size());
      const double ms = timer.median_ms(std::max(3, a.iters / 4), [&] { prefill_attention(p, nullptr); });
      double pairs = 0;
      for (const auto& hp : pol) pairs += visible_pairs(hp, 0, ctx - 1);
      const double flops = pairs * g * 4.0 * a.head_dim;
      const double dense_flops = visible_pairs(HeadPolicy{}, 0, ctx - 1) * a.q_heads * 4.0 * a.head_dim;
      if (dense) dense_ms = ms;
      std::printf(
          "{\"bench\":\"prefill\",\"impl\":\"redknot\",\"problem\":\"%s\",\"device\":\"%s\",\"batch\":1,"
          "\"context\":%d,\"q_heads\":%d,\"kv_heads\":%d,\"head_dim\":%d,\"page_size\":%d,\"global_ratio\":%"
          "g,"
          "\"window\":%d,\"sink\":%d,\"ms\":%.4f,\"flops\":%.4g,\"tflops\":%.1f,\"dense_equiv_tflops\":%.1f,"
          "\"speedup_vs_dense\":%.3f}\n",
          dense ? "dense" : "head_aware", dev.c_str(), ctx, a.q_heads, a.kv_heads, a.head_dim, a.page_size,
          dense ? 1.0 : a.ratio, a.window, a.sink, ms, flops, flops / (ms * 1e-3) / 1e12,
          dense_flops / (ms * 1e-3) / 1e12, dense ? 1.0 : dense_ms / ms);
      std::fflush(stdout);
      cudaFree(tiles_dev);
      cudaFree(q);
      cudaFree(out);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    std::fprintf(stderr, "bench_gpu_attention: no CUDA device\n");
    return 4;
  }
  const Args a = parse(argc, argv);
  Timer timer;
  if (a.mode == "copy" || a.mode == "decode") {
    const double bw = copy_bandwidth(timer);
    if (a.mode == "copy") {
      std::printf("{\"bench\":\"copy\",\"device\":\"%s\",\"copy_gbs\":%.1f}\n", device_name().c_str(), bw);
      return 0;
    }
    bench_decode(a, timer, bw);
  } else if (a.mode == "prefill") {
    bench_prefill(a, timer);
  } else {
    std::fprintf(stderr, "mode must be copy, decode or prefill\n");
    return 2;
  }
  return 0;
}
