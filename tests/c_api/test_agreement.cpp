// C++ and C agree with each other (and with Python: python/tests/test_agreement.py) on the cases of
// tests/agreement_cases.json: the same input gets the same verdict — error class and message fragment —
// because every value rule lives once, in the core.
#include <catch2/catch_test_macros.hpp>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "redknot/c_api.h"
#include "redknot/cpu_attention.hpp"
#include "redknot/head_map.hpp"
#include "redknot/kv_head_store.hpp"
#include "redknot/pool_sizing.hpp"

namespace {

using json = nlohmann::json;

struct Verdict {
  std::string error;  // "" (success), "InvalidArgument", "NotFound", or what else came out
  std::string message;
};

std::vector<json> load_cases() {
  std::ifstream in(REDKNOT_SOURCE_DIR "/tests/agreement_cases.json");
  REQUIRE(in.is_open());
  const json doc = json::parse(in);
  return doc.at("cases").get<std::vector<json>>();
}

double number(const json& c, const char* key, double dflt) {
  if (!c.contains(key)) return dflt;
  const json& v = c.at(key);
  return v.is_string() ? std::stod(v.get<std::string>()) : v.get<double>();
}
std::int64_t integer(const json& c, const char* key, std::int64_t dflt) {
  return c.contains(key) ? c.at(key).get<std::int64_t>() : dflt;
}

constexpr int kLayers = 2, kQHeads = 4, kKvHeads = 2, kHeadDim = 16, kTokens = 3;

// ---- C++: the core API a C++ engine calls
// ------------------------------------------------------------------

template <class F>
Verdict cpp_verdict(F&& f) {
  try {
    f();
    return {};
  } catch (const redknot::InvalidArgument& e) {
    return {"InvalidArgument", e.what()};
  } catch (const redknot::NotFound& e) {
    return {"NotFound", e.what()};
  } catch (const std::exception& e) {
    return {"other", e.what()};
  }
}

Verdict run_cpp(const json& c) {
  using namespace redknot;
  const std::string op = c.at("op");
  return cpp_verdict([&] {
    if (op == "run" || op == "plan" || op == "pages_per_sequence") {
      KVHeadStore<float> store(ModelShape{kLayers, kQHeads, kKvHeads, kHeadDim, DType::kF32},
                               HeadMap::all_global(kLayers, kKvHeads), StoreConfig{4, 16});
      const SeqId s = store.create_sequence();
      const std::vector<float> kv(kTokens * kKvHeads * kHeadDim, 0.5f);
      const std::vector<std::int32_t> pos{0, 1, 2};
      for (int l = 0; l < kLayers; ++l)
        store.append(s, l, std::span<const float>(kv), std::span<const float>(kv),
                     std::span<const std::int32_t>(pos));
      if (op == "pages_per_sequence") {
        store.pages_per_sequence(integer(c, "num_tokens", 0));
        return;
      }
      const std::vector<SeqId> seqs{op == "plan" ? integer(c, "seq", s) : s};
      const std::vector<std::int32_t> lens{kTokens};
      AttentionPlan plan;
      plan.update(store, static_cast<int>(integer(c, "layer", 0)), seqs, lens, pos);
      const std::vector<float> q(kTokens * kQHeads * kHeadDim, 1.f);
      std::vector<float> out(q.size());
      AttentionParams params;
      params.scale = static_cast<float>(number(c, "sm_scale", 0.0));
      params.num_threads = static_cast<int>(integer(c, "num_threads", 0));
      cpu_attention<float>(store, plan, std::span<const float>(q), std::span<float>(out), {}, params);
    } else if (op == "peak_sequence_pages") {
      peak_sequence_pages(HeadMap::all_global(kLayers, kKvHeads),
                          static_cast<int>(integer(c, "page_size", 4)), integer(c, "num_tokens", 0),
                          integer(c, "chunk", 1));
    } else if (op == "to_json") {
      HeadMap::all_global(kLayers, kKvHeads).to_json(static_cast<int>(integer(c, "indent", 2)));
    } else if (op == "with_global_ratio") {
      HeadMap::with_global_ratio(kLayers, kKvHeads, number(c, "global_ratio", 0.5), 4, 1);
    } else if (op == "uniform") {
      HeadMap::uniform(static_cast<int>(integer(c, "num_layers", 2)),
                       static_cast<int>(integer(c, "num_kv_heads", 2)), HeadClass::kGlobal);
    } else {
      FAIL("unknown op " << op);
    }
  });
}

// ---- C: the same through c_api.h
// ---------------------------------------------------------------------------

Verdict c_verdict(int status) {
  switch (status) {
    case RK_OK:
      return {};
    case RK_ERR_INVALID_ARGUMENT:
      return {"InvalidArgument", rk_last_error()};
    case RK_ERR_NOT_FOUND:
      return {"NotFound", rk_last_error()};
    default:
      return {rk_status_string(status), rk_last_error()};
  }
}

Verdict run_c(const json& c) {
  const std::string op = c.at("op");
  rk_head_map* map = nullptr;
  REQUIRE(rk_head_map_uniform(kLayers, kKvHeads, RK_HEAD_GLOBAL, -1, 0, &map) == RK_OK);
  int status = RK_OK;
  if (op == "run" || op == "plan" || op == "pages_per_sequence") {
    rk_store_config cfg{};
    REQUIRE(rk_store_config_init(&cfg) == RK_OK);
    cfg.num_layers = kLayers;
    cfg.num_q_heads = kQHeads;
    cfg.num_kv_heads = kKvHeads;
    cfg.head_dim = kHeadDim;
    cfg.dtype = RK_DTYPE_F32;
    cfg.page_size = 4;
    cfg.num_pages = 16;
    rk_store* store = nullptr;
    REQUIRE(rk_store_create(&cfg, map, &store) == RK_OK);
    std::int64_t s = 0;
    REQUIRE(rk_sequence_create(store, &s) == RK_OK);
    std::vector<float> kv(kTokens * kKvHeads * kHeadDim, 0.5f);
    std::vector<std::int32_t> pos{0, 1, 2};
    std::int64_t kv_shape[3] = {kTokens, kKvHeads, kHeadDim};
    DLTensor kt{kv.data(), {kDLCPU, 0}, 3, {kDLFloat, 32, 1}, kv_shape, nullptr, 0};
    for (int l = 0; l < kLayers; ++l)
      REQUIRE(rk_append(store, s, l, &kt, &kt, pos.data(), kTokens, nullptr) == RK_OK);
    if (op == "pages_per_sequence") {
      std::int64_t n = 0;
      status = rk_store_pages_per_sequence(store, integer(c, "num_tokens", 0), &n);
    } else {
      const std::int64_t id = op == "plan" ? integer(c, "seq", s) : s;
      const std::int32_t len = kTokens;
      status = rk_plan(store, &id, &len, 1, pos.data(), kTokens);
      if (status == RK_OK) {
        std::vector<float> q(kTokens * kQHeads * kHeadDim, 1.f), out(q.size());
        std::int64_t q_shape[3] = {kTokens, kQHeads, kHeadDim};
        DLTensor qt{q.data(), {kDLCPU, 0}, 3, {kDLFloat, 32, 1}, q_shape, nullptr, 0};
        DLTensor ot{out.data(), {kDLCPU, 0}, 3, {kDLFloat, 32, 1}, q_shape, nullptr, 0};
        rk_attention_params params{static_cast<float>(number(c, "sm_scale", 0.0)),
                                   static_cast<std::int32_t>(integer(c, "num_threads", 0))};
        status = rk_attention(store, static_cast<std::int32_t>(integer(c, "layer", 0)), &qt, &ot, nullptr,
                              &params, nullptr);
      }
    }
    REQUIRE(rk_store_destroy(store) == RK_OK);
  } else if (op == "peak_sequence_pages") {
    std::int64_t n = 0;
    status = rk_head_map_peak_sequence_pages(map, static_cast<std::int32_t>(integer(c, "page_size", 4)),
                                             integer(c, "num_tokens", 0), integer(c, "chunk", 1), &n);
  } else if (op == "to_json") {
    std::size_t len = 0;
    status = rk_head_map_to_json(map, static_cast<std::int32_t>(integer(c, "indent", 2)), nullptr, 0, &len);
  } else {
    rk_head_map* made = nullptr;
    if (op == "with_global_ratio")
      status = rk_head_map_with_global_ratio(kLayers, kKvHeads, number(c, "global_ratio", 0.5), 4, 1, &made);
    else if (op == "uniform")
      status = rk_head_map_uniform(static_cast<std::int32_t>(integer(c, "num_layers", 2)),
                                   static_cast<std::int32_t>(integer(c, "num_kv_heads", 2)), RK_HEAD_GLOBAL,
                                   -1, 0, &made);
    else
      FAIL("unknown op " << op);
    rk_head_map_destroy(made);
  }
  const Verdict v = c_verdict(status);
  REQUIRE(rk_head_map_destroy(map) == RK_OK);
  return v;
}

}  // namespace

TEST_CASE("C++ and the C ABI give every shared case the same verdict (tests/agreement_cases.json)") {
  const std::vector<json> cases = load_cases();
  REQUIRE(cases.size() >= 10);
  for (const json& c : cases) {
    const std::string name = c.at("name");
    const std::string want = c.at("error").is_null() ? "" : c.at("error").get<std::string>();
    const std::string fragment = c.value("fragment", "");
    const Verdict cpp = run_cpp(c), capi = run_c(c);
    INFO("case: " << name << "\n  C++: " << cpp.error << " " << cpp.message << "\n  C:   " << capi.error
                  << " " << capi.message);
    CHECK(cpp.error == want);
    CHECK(capi.error == want);
    CHECK(cpp.message.find(fragment) != std::string::npos);
    CHECK(capi.message.find(fragment) != std::string::npos);
  }
}
