// HeadMap: the published RedKnot JSON schema, aliases, overrides and validation messages.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <cstdio>
#include <fstream>

#include "redknot/head_map.hpp"

using namespace redknot;
using Catch::Matchers::ContainsSubstring;

namespace {
// The example from the reference's schema description (3 layers x 4 kv heads, dense prefix 1).
const char* kReferenceExample = R"({
  "num_layers": 3, "num_kv_heads": 4,
  "dense_prefix_layers": 1, "retrieval_top_p": 0.9,
  "kv_head_classification": [["local","local","local","global"],
                             ["local","local","retrieval","global"],
                             ["local_full","local","global","global"]],
  "kv_head_max_distance":   [[4096,4096,4096,-1],[4096,4096,-1,-1],[4096,4096,-1,-1]],
  "kv_head_sink_size":      [[4,4,4,4],[4,4,4,4],[4,4,4,4]],
  "profiling_meta": {"ignored": true}, "summary": "stale text is ignored"
})";
}  // namespace

TEST_CASE("loads the published schema with aliases and the dense prefix", "[head_map]") {
  const HeadMap m = HeadMap::from_json(kReferenceExample);
  REQUIRE(m.num_layers() == 3);
  REQUIRE(m.num_kv_heads() == 4);
  REQUIRE(m.dense_prefix_layers() == 1);
  REQUIRE(m.raw(0, 0) == HeadPolicy{HeadClass::kLocal, 4096, 4});
  REQUIRE(m.policy(0, 0).cls == HeadClass::kDense);  // layer 0 is inside the dense prefix
  REQUIRE(m.policy(1, 2).cls == HeadClass::kRetrieval);
  REQUIRE(m.policy(2, 0) == HeadPolicy{HeadClass::kLocal, 4096, 4});  // local_full is an alias of local
  REQUIRE(m.count_local() == 4);                                      // layers 1 and 2: two local heads each
  REQUIRE(m.count_global_like() == 8);
}

TEST_CASE("JSON round trip and file IO", "[head_map]") {
  HeadMap m = HeadMap::with_global_ratio(8, 4, 0.125, 512, 64);
  m.set_dense_prefix_layers(2);
  REQUIRE(HeadMap::from_json(m.to_json()) == m);
  const std::string path = "test_head_map_roundtrip.json";
  m.save(path);
  REQUIRE(HeadMap::load(path) == m);
  std::remove(path.c_str());
  REQUIRE_THROWS_WITH(HeadMap::load("/nonexistent/map.json"),
                      ContainsSubstring("'/nonexistent/map.json' cannot be opened"));
}

TEST_CASE("defaults: sink 4 when absent", "[head_map]") {
  const HeadMap m = HeadMap::from_json(
      R"({"num_layers":1,"num_kv_heads":2,"kv_head_classification":[["streaming","global"]],)"
      R"("kv_head_max_distance":[[128,-1]]})");
  REQUIRE(m.policy(0, 0) == HeadPolicy{HeadClass::kLocal, 128, 4});
  REQUIRE(m.dense_prefix_layers() == 0);
  REQUIRE(m.retrieval_top_p() == 0.9);
}

TEST_CASE("with_global_ratio spreads the requested share of global heads", "[head_map]") {
  const HeadMap m = HeadMap::with_global_ratio(32, 8, 0.125, 512, 64);
  REQUIRE(m.count_global_like() == 32);
  int layers_with_global = 0;
  for (int l = 0; l < 32; ++l) {
    int g = 0;
    for (int h = 0; h < 8; ++h) g += m.policy(l, h).is_local() ? 0 : 1;
    layers_with_global += g > 0;
  }
  REQUIRE(layers_with_global == 32);  // one per layer, not all in the first layers
  REQUIRE(HeadMap::with_global_ratio(2, 2, 0.01, 8, 0).count_global_like() == 1);
  REQUIRE(HeadMap::with_global_ratio(2, 2, 0.0, 8, 0).count_global_like() == 0);
}

TEST_CASE("malformed or inconsistent JSON names the field, layer and head", "[head_map][bad_input]") {
  auto bad = [](const std::string& json, const std::string& needle) {
    REQUIRE_THROWS_AS(HeadMap::from_json(json), InvalidArgument);
    REQUIRE_THROWS_WITH(HeadMap::from_json(json), ContainsSubstring(needle));
  };
  const std::string cls = R"("kv_head_classification":[["local","global"],["local","local"]])";
  const std::string dist = R"("kv_head_max_distance":[[64,-1],[64,64]])";
  const std::string head = R"("num_layers":2,"num_kv_heads":2,)";
  bad("{not json", "does not parse");
  bad("[]", "top level must be an object");
  bad("{" + cls + "," + dist + "}", "missing required field 'num_layers'");
  bad(R"({"num_layers":"2","num_kv_heads":2,)" + cls + "," + dist + "}", "'num_layers' must be an integer");
  bad(R"({"num_layers":0,"num_kv_heads":2,)" + cls + "," + dist + "}", "num_layers=0");
  bad("{" + head + dist + "}", "missing required field 'kv_head_classification'");
  bad("{" + head + R"("kv_head_classification":[["local","global"]],)" + dist + "}",
      "'kv_head_classification' must be an array of num_layers=2 rows, got 1");
  bad("{" + head + R"("kv_head_classification":[["local","global"],["local"]],)" + dist + "}",
      "kv_head_classification[1] must be an array of num_kv_heads=2 entries, got 1");
  bad("{" + head + R"("kv_head_classification":[["local","global"],["local","bogus"]],)" + dist + "}",
      "kv_head_classification[1][1]: head class 'bogus'");
  bad("{" + head + R"("kv_head_classification":[["local","global"],["local",3]],)" + dist + "}",
      "kv_head_classification[1][1] must be a string");
  bad("{" + head + cls + R"(,"kv_head_max_distance":[[64,-1],[64,-1]]})",
      "kv_head_max_distance[1][1]=-1 must be >= 1 for a local head");
  bad("{" + head + cls + R"(,"kv_head_max_distance":[[64,-1],[64,"x"]]})",
      "kv_head_max_distance[1][1] must be an integer");
  bad("{" + head + cls + "," + dist + R"(,"kv_head_sink_size":[[4,4],[4,-2]]})",
      "kv_head_sink_size[1][1]=-2");
  bad("{" + head + cls + "," + dist + R"(,"dense_prefix_layers":3})", "dense_prefix_layers=3");
  bad("{" + head + cls + "," + dist + R"(,"retrieval_top_p":1.5})", "retrieval_top_p=1.5");
}

TEST_CASE("programmatic edits are validated", "[head_map][bad_input]") {
  HeadMap m = HeadMap::all_global(2, 2);
  REQUIRE_THROWS_WITH(m.set(2, 0, {}), ContainsSubstring("layer=2 out of range [0, 2)"));
  REQUIRE_THROWS_WITH(m.set(0, -1, {}), ContainsSubstring("kv_head=-1"));
  REQUIRE_THROWS_WITH(m.set(0, 0, HeadPolicy{HeadClass::kLocal, 0, 0}),
                      ContainsSubstring("window=0 for local head (layer 0, kv_head 0)"));
  // A sink is >= 0 for every class (validate() says so too), not only for local heads.
  REQUIRE_THROWS_WITH(m.set(0, 1, HeadPolicy{HeadClass::kGlobal, -1, -3}),
                      ContainsSubstring("sink=-3 for head (layer 0, kv_head 1) must be >= 0"));
  REQUIRE_THROWS_WITH(m.set_dense_prefix_layers(-1), ContainsSubstring("dense_prefix_layers=-1"));
  REQUIRE_THROWS_WITH(m.to_json(17), ContainsSubstring("indent=17 must be in [-1, 16]"));
  REQUIRE(m == HeadMap::all_global(2, 2));
  REQUIRE_THROWS_WITH(HeadMap::all_global(1 << 11, 1 << 10),
                      ContainsSubstring("2048 * 1024 = 2097152 exceeds the limit of 1048576 heads"));
  REQUIRE_THROWS_WITH(HeadMap::with_global_ratio(2, 2, 1.5, 8, 0), ContainsSubstring("global_ratio=1.5"));
  REQUIRE_THROWS_WITH(m.validate_shape(2, 3),
                      ContainsSubstring("num_kv_heads=2 does not match the model's 3"));
}
