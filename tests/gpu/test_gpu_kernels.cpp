// GPU tests over the shared scenario list (tests/support/scenarios.hpp), played by the shared runner
// (tests/support/runner.hpp) on the CUDA kernels through cuda_backend.hpp: every attention output and LSE
// against the fp64 oracle, and after every operation the device store's tables and K/V rows against a host
// mirror (append_from_host and the append_device kernel alternate) — with one decode chunk per (item,
// kv_head), with a fine split-KV partition merged by log-sum-exp, and with decode steps replayed from
// captured CUDA graphs. Also RoPE relocation of the scenarios' stored keys against the CPU reference, and bad
// arguments.
//
// Without a usable device every case is skipped (exit 4), or fails when REDKNOT_GPU_REQUIRE=1.
// REDKNOT_SCENARIO_SIZE=small (compute-sanitizer runs) plays only the small scenarios.
#include "redknot/cuda/runtime_api.hpp"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "../support/runner.hpp"
#include "../support/scenarios.hpp"
#include "cuda_backend.hpp"
#include "gpu_test.hpp"
#include "redknot/cuda/decode.hpp"
#include "redknot/cuda/prefill.hpp"
#include "redknot/cuda/rope.hpp"
#include "redknot/rope.hpp"

using namespace redknot;
using namespace redknot::cuda;
using rktest::Backend;
using rktest::BackendKind;
using rktest::CudaBackendOptions;
using rktest::CudaCounters;
using rktest::CudaStore;
using rktest::DevBuf;
using rktest::RunReport;
using rktest::Scenario;
using rktest::SizeClass;

namespace {

std::vector<const Scenario*> cuda_scenarios() {
  auto v = rktest::scenarios_for(BackendKind::kCuda, SizeClass::kSmall);
  if (!rktest::small_scenarios_only()) {
    const auto large = rktest::scenarios_for(BackendKind::kCuda, SizeClass::kLarge);
    v.insert(v.end(), large.begin(), large.end());
  }
  return v;
}

void play_all(const Backend& b, const char* what) {
  const auto list = cuda_scenarios();
  REQUIRE(!list.empty());
  for (const Scenario* sc : list) {
    gputest::context() = std::string(what) + " " + sc->name;
    const RunReport r = rktest::run_scenario(*sc, b);
    CHECK_MSG(r.ok(), r.message);
    CHECK(r.attention_calls > 0);
    std::printf("  %-48s %6.2f s  worst out %.3f, lse %.3f of tolerance\n", sc->name.c_str(), r.seconds,
                r.worst_out, r.worst_lse);
  }
}

// Relocates every stored key row of the live sequences (each (page, slot) once: forks share pages) by a
// per-entry delta on the device and compares with rope_relocate_reference applied to the host mirror's rows;
// V rows must stay untouched.
template <class T>
void rope_check(CudaStore<T>& cs, const RopeConfig& cfg, long long& rows) {
  auto& dev = cs.device_store();
  const auto& host = cs.host_mirror();
  const auto& sh = host.shape();
  const int ps = host.page_size();
  std::vector<PageEntry> entries;
  std::vector<std::int32_t> deltas;
  std::set<std::pair<PageId, int>> taken;
  const std::int32_t delta_choices[] = {0, 1, -3, 977, -50000, 131072};
  for (SeqId s : host.sequences())
    for (int l = 0; l < sh.num_layers; ++l)
      for (int h = 0; h < sh.num_kv_heads; ++h) {
        const HeadTable& t = host.table(s, l, h);
        for (std::size_t i = 0; i < t.size(); ++i) {
          bool fresh = true;
          for (int slot = t[i].first; slot < t[i].end_slot(); ++slot)
            fresh = fresh && taken.count({t[i].page_id, slot}) == 0;
          if (!fresh) continue;
          for (int slot = t[i].first; slot < t[i].end_slot(); ++slot) taken.insert({t[i].page_id, slot});
          entries.push_back(t[i]);
          deltas.push_back(delta_choices[entries.size() % 6]);
        }
      }
  if (entries.empty()) return;
  const auto inv = rope_inv_freq(cfg);
  DevBuf<PageEntry> e_dev(entries.size());
  DevBuf<std::int32_t> d_dev(deltas.size());
  DevBuf<double> f_dev(inv.size());
  e_dev.upload(entries.data(), entries.size(), nullptr);
  d_dev.upload(deltas.data(), deltas.size(), nullptr);
  f_dev.upload(inv.data(), inv.size(), nullptr);
  rope_relocate(dev.pool().data(), kv_type_of<T>(), ps, e_dev.p, d_dev.p, static_cast<int>(entries.size()),
                cfg, f_dev.p, nullptr);
  CUDA_REQUIRE(cudaDeviceSynchronize());
  const auto& pool = host.pool();
  std::vector<T> dev_pool(pool.page_elems() * static_cast<std::size_t>(pool.num_pages()));
  CUDA_REQUIRE(
      cudaMemcpy(dev_pool.data(), dev.pool().data(), dev_pool.size() * sizeof(T), cudaMemcpyDeviceToHost));
  const std::size_t D = static_cast<std::size_t>(sh.head_dim);
  // One rounding of the stored dtype (|x| <= sqrt(2) after rotation).
  const double tol = dev.shape().dtype == DType::kBF16 ? 1.2e-2 : 1.5e-3;
  long long bad = 0, v_changed = 0;
  double worst = 0;
  std::vector<float> row(D);
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const PageEntry& e = entries[i];
    for (int slot = e.first; slot < e.end_slot(); ++slot, ++rows) {
      const std::size_t off = static_cast<std::size_t>(slot) * D;
      for (std::size_t d = 0; d < D; ++d) row[d] = to_float(pool.k_ptr(e.page_id)[off + d]);
      rope_relocate_reference(cfg, inv, deltas[i], row.data());
      const T* got = dev_pool.data() + static_cast<std::size_t>(e.page_id) * pool.page_elems() + off;
      for (std::size_t d = 0; d < D; ++d) {
        const double err = std::abs(static_cast<double>(to_float(got[d])) - row[d]);
        if (!(err <= tol)) ++bad;  // NaN fails
        if (err > worst) worst = err;
      }
      v_changed += std::memcmp(pool.v_ptr(e.page_id) + off, got + static_cast<std::size_t>(ps) * D,
                               D * sizeof(T)) != 0;
    }
  }
  CHECK_MSG(bad == 0, std::to_string(bad) + " rotated values off by more than " + std::to_string(tol) +
                          " (worst " + std::to_string(worst) + ")");
  CHECK_MSG(v_changed == 0, std::to_string(v_changed) + " V rows changed");
}

}  // namespace

GPU_TEST_CASE("scenarios: every CUDA scenario, one decode chunk per (item, kv_head)") {
  CudaCounters c;
  play_all(
      rktest::cuda_backend(CudaBackendOptions{{1, 1 << 20}, false, cudaStreamCaptureModeThreadLocal, &c}),
      "scenarios");
  CHECK(c.decode_steps > 0);
  CHECK(c.prefill_steps > 0);
}

GPU_TEST_CASE("split-kv: every CUDA scenario, decode cut into fine chunks merged by log-sum-exp") {
  play_all(
      rktest::cuda_backend(CudaBackendOptions{{64, 1}, false, cudaStreamCaptureModeThreadLocal, nullptr}),
      "split-kv");
}

GPU_TEST_CASE("graph: every CUDA scenario, decode steps replayed from captured graphs") {
  CudaCounters c;
  play_all(rktest::cuda_backend(CudaBackendOptions{{32, 1}, true, cudaStreamCaptureModeThreadLocal, &c}),
           "graph");
  CHECK(c.graph_replays > 0);
  CHECK(c.graph_captures < c.graph_replays);  // a graph serves several steps
}

GPU_TEST_CASE("graph-global: decode graphs captured in global mode (PyTorch's default)") {
  CudaCounters c;
  CudaBackendOptions o{{32, 1}, true, cudaStreamCaptureModeGlobal, &c};
  play_all(rktest::cuda_backend(o), "graph-global");
  CHECK(c.graph_replays > 0);
}

GPU_TEST_CASE("rope: relocating the scenarios' stored keys matches the CPU reference") {
  const Backend b = rktest::cuda_backend();
  long long rows = 0;
  for (const Scenario* sc : cuda_scenarios())
    for (int variant = 0; variant < 3; ++variant) {
      gputest::context() = "rope " + sc->name + " variant " + std::to_string(variant);
      RopeConfig c;
      c.head_dim = sc->shape.head_dim;  // 0: rotate-half, full rotary, default frequencies
      if (variant == 1) {
        c.pairing = RopePairing::kInterleaved;
        c.rotary_dim = c.head_dim / 2;  // partial rotary
        c.scaling = RopeScaling::kLlama3;
        c.theta = 500000.0;
        c.factor = 8.0;
      } else if (variant == 2) {
        c.rotary_dim = c.head_dim / 2;
        c.scaling = RopeScaling::kYarn;
        c.factor = 4.0;
        c.original_max_position = 4096;
      }
      // A fresh play per variant (store operations only): relocation rewrites the keys in place.
      rktest::ScenarioRun run(*sc, b, rktest::RunOptions{false});
      const bool played = run.play();
      CHECK_MSG(played, run.report().message);
      if (!played) continue;
      if (sc->shape.dtype == DType::kBF16)
        rope_check(dynamic_cast<CudaStore<BFloat16>&>(run.store()), c, rows);
      else
        rope_check(dynamic_cast<CudaStore<Half>&>(run.store()), c, rows);
      CHECK_MSG(run.finish(), run.report().message);
    }
  CHECK(rows > 0);
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
  // A q at an odd element offset (a torch view) is refused with a clear error before anything runs.
  DecodeParams a;
  a.kv.num_kv_heads = 1;
  a.num_q_heads = 1;
  a.kv.head_dim = 64;
  a.kv.page_size = 16;
  a.dtype = DType::kBF16;
  a.batch = 1;
  alignas(16) static unsigned char dummy[64];
  a.kv.pool = dummy;
  a.kv.arena = reinterpret_cast<const PageEntry*>(dummy);
  a.kv.slots = reinterpret_cast<const PlanSlot*>(dummy);
  a.kv.policies = reinterpret_cast<const HeadPolicy*>(dummy);
  a.q_pos = reinterpret_cast<const std::int32_t*>(dummy);
  a.q = dummy + 2;
  a.out = dummy;
  std::string msg;
  try {
    decode_attention(a, nullptr, 0, DecodePartitionConfig{8, 4}, 16, nullptr);
  } catch (const std::invalid_argument& e) {
    msg = e.what();
  }
  CHECK_MSG(msg.find("q=") != std::string::npos && msg.find("16-byte aligned") != std::string::npos, msg);
}
