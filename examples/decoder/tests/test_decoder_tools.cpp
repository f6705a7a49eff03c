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
#include "session.hpp"
#include "tiny_model.hpp"

using namespace redknot;
using namespace redknot::decoder;

namespace {

const LlamaModel& tiny() {
  static const GgufFile f = GgufFile::parse(testing::tiny_model_gguf(), "tiny");
  static const LlamaModel m = LlamaModel::load(f);
  return m;
}

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
