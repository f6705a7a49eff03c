// Building blocks of the profiler and the evaluation, on the tiny model.
#include <catch2/catch_test_macros.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include "attention_probe.hpp"
#include "corpus.hpp"
#include "gguf.hpp"
#include "heatmap_png.hpp"
#include "llama_model.hpp"
#include "redknot/error.hpp"
#include "session.hpp"
#include "tiny_model.hpp"
#include "window_allocation.hpp"

using namespace redknot;
using namespace redknot::decoder;

namespace {

const LlamaModel& tiny() { return testing::tiny_llama(); }

std::vector<std::int32_t> tokens(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::int32_t> t(n);
  for (auto& x : t) x = static_cast<std::int32_t>(3 + rng() % 250);
  return t;
}

}  // namespace

TEST_CASE("attention probe: edge mass and output error vanish when the window covers everything",
          "[decoder]") {
  const LlamaModel& m = tiny();
  const auto& c = m.config();
  const auto ids = tokens(120, 1);
  SessionOptions so;
  so.max_context = 120;
  so.chunk = 32;
  const HeadMap dense = HeadMap::all_global(c.n_layers, c.n_kv_heads);
  {
    Session s(m, dense, so);
    AttentionProbe wide(c, ProbeConfig{1000, 4, {60, 90, 119}, 0, false});
    s.prefill(ids, {}, &wide);
    for (double e : wide.edge_mass()) CHECK(e == 0.0);
    for (double e : wide.output_error()) CHECK(e < 1e-6);
  }
  Session s(m, dense, so);
  AttentionProbe narrow(c, ProbeConfig{8, 2, {60, 90, 119}, 0, false});
  s.prefill(ids, {}, &narrow);
  for (double e : narrow.edge_mass()) {
    CHECK(e > 0.0);
    CHECK(e < 1.0);
  }
}

TEST_CASE("prefix shift is zero for identical runs and positive behind a prefix", "[decoder]") {
  const LlamaModel& m = tiny();
  const auto& c = m.config();
  const auto chunk = tokens(48, 2);
  auto behind = tokens(40, 3);
  const auto P = static_cast<std::int32_t>(behind.size());
  behind.insert(behind.end(), chunk.begin(), chunk.end());
  SessionOptions so;
  so.max_context = static_cast<int>(behind.size());
  so.chunk = 16;
  const HeadMap dense = HeadMap::all_global(c.n_layers, c.n_kv_heads);
  Session a(m, dense, so), a2(m, dense, so), b(m, dense, so);
  AttentionProbe pa(c, ProbeConfig{512, 4, {20, 47}, 4, true});
  AttentionProbe pa2(c, ProbeConfig{512, 4, {20, 47}, 4, true});
  AttentionProbe pb(c, ProbeConfig{512, 4, {20 + P, 47 + P}, P + 4, true});
  a.prefill(chunk, {}, &pa);
  a2.prefill(chunk, {}, &pa2);
  b.prefill(behind, {}, &pb);
  for (double x : prefix_shift(pa, pa2, c)) CHECK(x < 1e-6);
  double total = 0;
  for (double x : prefix_shift(pa, pb, c)) total += x;
  CHECK(total > 0.0);
}

TEST_CASE("heatmap PNG has a valid signature and header", "[decoder]") {
  const auto path = (std::filesystem::temp_directory_path() / "redknot_heatmap_test.png").string();
  write_heatmap_png(path, {0.f, 0.5f, 1.f, 0.25f, 0.75f, 0.1f}, 2, 3, 5, 4,
                    {true, false, false, false, true, false});
  std::ifstream in(path, std::ios::binary);
  std::vector<unsigned char> b((std::istreambuf_iterator<char>(in)), {});
  REQUIRE(b.size() > 33);
  CHECK(b[0] == 0x89);
  CHECK(std::string(b.begin() + 1, b.begin() + 4) == "PNG");
  CHECK(std::string(b.begin() + 12, b.begin() + 16) == "IHDR");
  CHECK(b[19] == 15);  // width = 3 cells * 5 px
  CHECK(b[23] == 8);   // height = 2 cells * 4 px
  std::filesystem::remove(path);
  CHECK_THROWS(write_heatmap_png(path, {0.f}, 2, 3, 5, 4));
}

TEST_CASE("retrieval cases hide their answer in the text they generate", "[decoder]") {
  const std::string filler(4000, 'x');
  const auto n = needle_case(filler, 0.5, 9);
  CHECK(n.answer.size() == 5);
  CHECK(n.facts.find(n.answer) != std::string::npos);
  CHECK(n.haystack_before.size() + n.haystack_after.size() == filler.size());
  const auto mk = multikey_case(filler, 0.3, 4, 9);
  CHECK(mk.facts.find(mk.answer) != std::string::npos);
  CHECK(mk.question.find("passkey of") != std::string::npos);
  CHECK(synthetic_records_document(1, 10).find("Record 10:") != std::string::npos);
}

TEST_CASE("attention probe: error curve matches the single-window error; span mass", "[decoder]") {
  const LlamaModel& m = tiny();
  const auto& c = m.config();
  const auto ids = tokens(120, 4);
  SessionOptions so;
  so.max_context = 120;
  so.chunk = 32;
  const HeadMap dense = HeadMap::all_global(c.n_layers, c.n_kv_heads);
  Session s(m, dense, so);
  ProbeConfig cfg{16, 4, {60, 90, 119}, 0, false};
  cfg.curve_windows = {1, 8, 16, 40, 116, 200};
  cfg.span_begin = 0;
  cfg.span_end = 1000;  // every key
  AttentionProbe probe(c, cfg);
  s.prefill(ids, {}, &probe);
  const auto err = probe.output_error();
  const auto curve = probe.error_curve();
  const auto span = probe.span_mass();
  REQUIRE(curve.size() == err.size());
  for (std::size_t i = 0; i < err.size(); ++i) {
    REQUIRE(curve[i].size() == 6);
    // The curve is computed by a different loop (growing the window backwards): it must agree at 16.
    CHECK(std::abs(curve[i][2] - err[i]) < 1e-9 * std::max(1.0, err[i]));
    CHECK(curve[i][0] > 0.0);
    CHECK(curve[i][5] == 0.0);  // window past every key: exact
    CHECK(std::abs(span[i] - 1.0) < 1e-9);
  }
  // A span no key falls in has no mass.
  ProbeConfig none{16, 4, {60}, 0, false};
  none.span_begin = 100;
  none.span_end = 110;
  Session s2(m, dense, so);
  AttentionProbe p2(c, none);
  s2.prefill(ids, {}, &p2);
  for (double x : p2.span_mass()) CHECK(x == 0.0);
  ProbeConfig bad{16, 4, {60}, 0, false};
  bad.curve_windows = {16, 8};
  CHECK_THROWS_AS(AttentionProbe(c, bad), InvalidArgument);
}

TEST_CASE("window allocation spends the budget where error drops most per page", "[decoder]") {
  const std::vector<int> windows = {16, 32, 64};
  // Head 0 gains a lot from 32, head 1 only from 64, head 2 never; head 3 is global and ignored.
  const std::vector<std::vector<double>> curves = {{1.0, 0.1, 0.1}, {0.5, 0.5, 0.0}, {0.2, 0.2, 0.2}, {}};
  const std::vector<bool> global = {false, false, false, true};
  const auto cost = [](std::size_t, int w) { return static_cast<std::int64_t>(w / 16); };
  // Base: 1 + 1 + 1 = 3 pages. +1 page buys head 0's 0.9; +3 more head 1's 0.5 (looking past its flat step).
  auto a = allocate_windows(curves, windows, global, 3, cost);
  CHECK(a.window == std::vector<int>{16, 16, 16, -1});
  a = allocate_windows(curves, windows, global, 4, cost);
  CHECK(a.window == std::vector<int>{32, 16, 16, -1});
  CHECK(a.pages == 4);
  a = allocate_windows(curves, windows, global, 6, cost);  // head 1's jump to 64 costs 3 pages: no room
  CHECK(a.window == std::vector<int>{32, 16, 16, -1});
  a = allocate_windows(curves, windows, global, 7, cost);
  CHECK(a.window == std::vector<int>{32, 64, 16, -1});
  CHECK(a.pages == 7);
  CHECK(std::abs(a.error - 0.3) < 1e-12);
  a = allocate_windows(curves, windows, global, 100, cost);
  CHECK(a.window == std::vector<int>{32, 64, 16, -1});  // no gain from growing head 2 or head 0 further
  CHECK_THROWS_AS(allocate_windows(curves, windows, global, 2, cost), InvalidArgument);
  CHECK_THROWS_AS(allocate_windows(curves, {32, 16}, global, 10, cost), InvalidArgument);
}
