// Every scenario of the shared list (support/scenarios.hpp) played on the CPU core and on the C ABI, each
// attention output against the fp64 oracle (support/runner.hpp); tests/gpu plays the same list on the CUDA
// kernels. Then mutation checks: the runner must fail a backend whose visibility rule is off by one, whose
// outputs or LSEs hold a NaN, or whose page statistics are off.
//
// REDKNOT_SCENARIO_SIZE=small (the sanitizer build) skips the large scenarios; REDKNOT_SCENARIO_VERBOSE=1
// prints each run's time and worst error relative to its tolerance.
#include <catch2/catch_test_macros.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "support/c_api_backend.hpp"
#include "support/cpu_backend.hpp"
#include "support/runner.hpp"

using namespace rktest;
using redknot::HeadClass;
using redknot::HeadPolicy;

namespace {

bool verbose() {
  const char* e = std::getenv("REDKNOT_SCENARIO_VERBOSE");
  return e != nullptr && *e != '\0' && *e != '0';
}

void play_all(const Backend& b, SizeClass size) {
  if (size == SizeClass::kLarge && small_scenarios_only()) SKIP("REDKNOT_SCENARIO_SIZE=small");
  const auto list = scenarios_for(b.kind, size);
  REQUIRE_FALSE(list.empty());
  for (const Scenario* sc : list) {
    DYNAMIC_SECTION(sc->name) {
      const RunReport r = run_scenario(*sc, b);
      if (verbose())
        std::printf("%-6s %-46s %5.2f s %3d attention calls %8lld values, worst out %.3f lse %.3f of tol\n",
                    b.name.c_str(), sc->name.c_str(), r.seconds, r.attention_calls,
                    static_cast<long long>(r.values_compared), r.worst_out, r.worst_lse);
      INFO(r.message);
      CHECK(r.ok());
      CHECK(r.attention_calls > 0);
    }
  }
}

// A store whose every local head runs with a changed policy, checked against the oracle of the true map.
Backend with_rule(const char* name, std::function<HeadPolicy(HeadPolicy)> mutate) {
  return Backend{name, BackendKind::kCpu, Precision::kHost, [mutate](const StoreSpec& spec) {
                   StoreSpec s = spec;
                   for (int l = 0; l < s.map.num_layers(); ++l)
                     for (int h = 0; h < s.map.num_kv_heads(); ++h)
                       if (s.map.raw(l, h).is_local()) s.map.set(l, h, mutate(s.map.raw(l, h)));
                   return make_cpu_store(s);
                 }};
}

// Whether an off-by-one window or sink changes what some query of the scenario sees: a local head (outside
// the dense prefix) whose window is shorter than the contexts the scripts build.
bool has_cutting_window(const Scenario& sc) {
  for (int l = 0; l < sc.map.num_layers(); ++l)
    for (int h = 0; h < sc.map.num_kv_heads(); ++h) {
      const HeadPolicy p = sc.map.policy(l, h);
      if (p.is_local() && p.window < 100) return true;
    }
  return false;
}

// The CPU store with one fault injected after the real work.
class Faulty final : public BackendStore {
 public:
  enum class Fault { kNanOutput, kNanLse, kStats };
  Faulty(std::unique_ptr<BackendStore> inner, Fault f) : inner_(std::move(inner)), fault_(f) {}
  redknot::SeqId create_sequence() override { return inner_->create_sequence(); }
  redknot::SeqId fork(redknot::SeqId parent) override { return inner_->fork(parent); }
  void free_sequence(redknot::SeqId id) override { inner_->free_sequence(id); }
  void retire_queries(redknot::SeqId id, std::int32_t p, int layer) override {
    inner_->retire_queries(id, p, layer);
  }
  void append(int layer, std::span<const redknot::SeqId> seqs, std::span<const std::int32_t> offsets,
              ConstTensor k, ConstTensor v, std::span<const std::int32_t> positions) override {
    inner_->append(layer, seqs, offsets, k, v, positions);
  }
  void begin_step(std::span<const redknot::SeqId> seqs, std::span<const std::int32_t> q_lens,
                  std::span<const std::int32_t> q_positions) override {
    inner_->begin_step(seqs, q_lens, q_positions);
  }
  void attend(int layer, ConstTensor q, MutTensor out, std::span<float> lse) override {
    inner_->attend(layer, q, out, lse);
    constexpr float kNan = std::numeric_limits<float>::quiet_NaN();
    if (fault_ == Fault::kNanOutput && out.size > 0)  // the last element: every one must be compared
      visit_dtype(out.dtype, [&](auto tag) {
        out.as<decltype(tag)>().back() = redknot::from_float<decltype(tag)>(kNan);
      });
    if (fault_ == Fault::kNanLse && !lse.empty()) lse.back() = kNan;
  }
  redknot::StoreStats stats() const override {
    redknot::StoreStats s = inner_->stats();
    if (fault_ == Fault::kStats && s.pages_in_use > 0) ++s.pages_local, ++s.pages_in_use;
    return s;
  }
  void register_chunk(redknot::SeqId id, int chunk) override { inner_->register_chunk(id, chunk); }
  void splice(redknot::SeqId dst, int chunk, std::int32_t at, std::int32_t first_query,
              bool relocate) override {
    inner_->splice(dst, chunk, at, first_query, relocate);
  }
  void drop_chunk(int chunk) override { inner_->drop_chunk(chunk); }

 private:
  std::unique_ptr<BackendStore> inner_;
  Fault fault_;
};

Backend faulty(Faulty::Fault f) {
  return Backend{"faulty", BackendKind::kCpu, Precision::kHost, [f](const StoreSpec& spec) {
                   return std::unique_ptr<BackendStore>(std::make_unique<Faulty>(make_cpu_store(spec), f));
                 }};
}

// A lower bound on the entries a global head of the scenario's longest sequence holds: every run of
// consecutive positions takes at least ceil(length / page_size) entries.
std::int64_t max_global_entries(const Scenario& sc) {
  std::map<int, std::vector<std::int32_t>> pos;  // script handle -> appended positions
  std::int64_t most = 0;
  for (const Op& op : sc.ops) {
    if (op.kind == Op::Kind::kFork) pos[op.child] = pos[op.seq];
    if (op.kind != Op::Kind::kStep) continue;
    for (const StepItem& it : op.items) {
      auto& p = pos[it.seq];
      p.insert(p.end(), it.append.begin(), it.append.end());
      std::int64_t entries = 0;
      for (std::size_t i = 0, run = 1; i < p.size(); ++i, ++run)
        if (i + 1 == p.size() || p[i + 1] != p[i] + 1) {
          entries += (static_cast<std::int64_t>(run) + sc.page_size - 1) / sc.page_size;
          run = 0;
        }
      most = std::max(most, entries);
    }
  }
  return most;
}

}  // namespace

TEST_CASE("cpu backend: small scenarios match the oracle", "[scenarios]") {
  play_all(cpu_backend(), SizeClass::kSmall);
}
TEST_CASE("cpu backend: large scenarios match the oracle", "[scenarios]") {
  play_all(cpu_backend(), SizeClass::kLarge);
}
TEST_CASE("c_api backend: small scenarios match the oracle", "[scenarios]") {
  play_all(c_api_backend(), SizeClass::kSmall);
  std::int64_t stores = -1, maps = -1;
  REQUIRE(rk_live_handles(&stores, &maps) == RK_OK);
  CHECK(stores == 0);
  CHECK(maps == 0);
}
TEST_CASE("c_api backend: large scenarios match the oracle", "[scenarios]") {
  play_all(c_api_backend(), SizeClass::kLarge);
}

TEST_CASE("the scenario list covers what it promises", "[scenarios]") {
  const auto& all = all_scenarios();
  int cuda = 0, long_ones = 0;
  std::set<int> groups, head_dims, pages;
  for (const Scenario& sc : all) {
    INFO(sc.name);
    REQUIRE(sc.num_pages > 0);
    if (sc.applies_to(BackendKind::kCuda)) {
      ++cuda;
      groups.insert(sc.shape.group_size());
      head_dims.insert(sc.shape.head_dim);
    }
    pages.insert(sc.page_size);
    // Several staging rounds of the CUDA decode (128 entries a round).
    if (sc.applies_to(BackendKind::kCuda) && max_global_entries(sc) > 128) ++long_ones;
  }
  CHECK(cuda >= 8);
  CHECK(groups == std::set<int>{1, 2, 4, 8});
  CHECK(head_dims == std::set<int>{64, 128});
  CHECK(pages.count(1) == 1);
  CHECK(long_ones >= 2);
}

TEST_CASE("the runner fails a backend whose visibility rule is off by one", "[scenarios][mutation]") {
  // Every local head sees one key more at the window's edge (window + 1), or one more sink position: the
  // comparison with the oracle (not the page accounting) must catch it in every scenario where it matters.
  const Backend wide_window = with_rule("window+1", [](HeadPolicy p) {
    return HeadPolicy{HeadClass::kLocal, p.window + 1, p.sink};
  });
  const Backend wide_sink = with_rule("sink+1", [](HeadPolicy p) {
    return HeadPolicy{HeadClass::kLocal, p.window, p.sink + 1};
  });
  int checked = 0;
  for (const Scenario* sc : scenarios_for(BackendKind::kCpu, SizeClass::kSmall)) {
    if (!has_cutting_window(*sc)) continue;
    for (const Backend* b : {&wide_window, &wide_sink}) {
      INFO(b->name << " on " << sc->name);
      const RunReport r = run_scenario(*sc, *b);
      INFO(r.message);
      CHECK(r.failure == RunReport::Failure::kAttention);
    }
    ++checked;
  }
  CHECK(checked >= 10);
}

TEST_CASE("the runner fails NaN outputs, NaN LSEs and wrong page statistics", "[scenarios][mutation]") {
  const Scenario& sc = *scenarios_for(BackendKind::kCpu, SizeClass::kSmall).front();
  REQUIRE(run_scenario(sc, cpu_backend()).ok());
  const RunReport out = run_scenario(sc, faulty(Faulty::Fault::kNanOutput));
  CHECK(out.failure == RunReport::Failure::kAttention);
  CHECK(out.message.find("output") != std::string::npos);
  const RunReport lse = run_scenario(sc, faulty(Faulty::Fault::kNanLse));
  CHECK(lse.failure == RunReport::Failure::kAttention);
  CHECK(lse.message.find("lse") != std::string::npos);
  const RunReport stats = run_scenario(sc, faulty(Faulty::Fault::kStats));
  CHECK(stats.failure == RunReport::Failure::kAccounting);
}
