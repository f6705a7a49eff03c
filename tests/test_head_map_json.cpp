// HeadMap JSON loader hardening: range checks before narrowing (values quoted as written), non-finite and
// overflowing numbers, wrong types, duplicate keys, nesting depth, invalid UTF-8 and file errors. Every
// failure must be a redknot::InvalidArgument whose message names the field (and layer, head) at fault.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>

#include "redknot/head_map.hpp"

using namespace redknot;
using Catch::Matchers::ContainsSubstring;

namespace {

// A 1 x 2 map (local head 0, global head 1); each argument is spliced in as written.
std::string doc(const std::string& window = "64", const std::string& sink = "4",
                const std::string& extra = "", const std::string& layers = "1",
                const std::string& heads = "2") {
  return R"({"num_layers":)" + layers + R"(,"num_kv_heads":)" + heads +
         R"(,"kv_head_classification":[["local","global"]],"kv_head_max_distance":[[)" + window +
         R"(,-1]],"kv_head_sink_size":[[)" + sink + ",0]]" + extra + "}";
}

// Messages must stay printable: no NUL and no byte that is not well-formed UTF-8 (Python decodes them).
bool printable_utf8(const std::string& s) {
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c == 0) return false;
    std::size_t n = c < 0x80                   ? 1
                    : (c >= 0xC2 && c <= 0xDF) ? 2
                    : (c >= 0xE0 && c <= 0xEF) ? 3
                    : (c >= 0xF0 && c <= 0xF4) ? 4
                                               : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (std::size_t k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    i += n;
  }
  return true;
}

std::string message_of(const std::string& text) {
  try {
    (void)HeadMap::from_json(text);
  } catch (const InvalidArgument& e) {
    return e.what();
  }
  return "<no InvalidArgument>";
}

// from_json(text) throws InvalidArgument whose message contains every needle.
void bad(const std::string& text, std::initializer_list<std::string> needles) {
  INFO("input: " << text.substr(0, 300));
  REQUIRE_THROWS_AS(HeadMap::from_json(text), InvalidArgument);
  const std::string msg = message_of(text);
  INFO("message: " << msg);
  for (const std::string& n : needles) CHECK_THAT(msg, ContainsSubstring(n));
  CHECK(printable_utf8(msg));
  CHECK(msg.size() < 1000);
}

}  // namespace

TEST_CASE("integers out of int32 range are rejected, quoted as written", "[head_map][json][bad_input]") {
  // The four narrowings found by the independent suite, and 2^40 (once quoted with the wrong value).
  bad(doc("4294967301"), {"kv_head_max_distance[0][0]=4294967301", "must be <= 2147483647", "local head"});
  bad(doc("64", "9223372036854775808"), {"kv_head_sink_size[0][0]=9223372036854775808", "<= 2147483647"});
  bad(doc("64", "4", R"(,"dense_prefix_layers":4294967297)"), {"dense_prefix_layers=4294967297", "<= 1"});
  bad(doc("64", "4", "", "4294967298"), {"num_layers=4294967298", "<= 2147483647"});
  bad(doc("1099511627776"), {"kv_head_max_distance[0][0]=1099511627776"});
  bad(doc("64", "4", "", "1", "4294967298"), {"num_kv_heads=4294967298"});
  bad(doc("2147483648"), {"kv_head_max_distance[0][0]=2147483648"});
  bad(doc("18446744073709551615"), {"kv_head_max_distance[0][0]=18446744073709551615"});  // uint64 max
  // Negative side, including int64 min and values that wrap to positive ints when narrowed.
  bad(doc("-4294967295"), {"kv_head_max_distance[0][0]=-4294967295", "must be >= 1 for a local head"});
  bad(doc("64", "-9223372036854775808"), {"kv_head_sink_size[0][0]=-9223372036854775808", ">= 0"});
  bad(doc("64", "-4294967296"), {"kv_head_sink_size[0][0]=-4294967296"});
  bad(doc("64", "4", R"(,"dense_prefix_layers":-4294967295)"), {"dense_prefix_layers=-4294967295", ">= 0"});
  bad(doc("64", "4", "", "-4294967295"), {"num_layers=-4294967295", ">= 1"});
  // The ignored distance of a non-local head must still fit an int32; so must its sink.
  bad(R"({"num_layers":1,"num_kv_heads":1,"kv_head_classification":[["global"]],)"
      R"("kv_head_max_distance":[[4294967295]]})",
      {"kv_head_max_distance[0][0]=4294967295"});
  bad(R"({"num_layers":1,"num_kv_heads":1,"kv_head_classification":[["global"]],)"
      R"("kv_head_max_distance":[[-2147483649]]})",
      {"kv_head_max_distance[0][0]=-2147483649"});
  bad(R"({"num_layers":1,"num_kv_heads":1,"kv_head_classification":[["retrieval"]],)"
      R"("kv_head_max_distance":[[-1]],"kv_head_sink_size":[[4294967296]]})",
      {"kv_head_sink_size[0][0]=4294967296"});
  // Layer and head are named in a bigger map.
  bad(R"({"num_layers":2,"num_kv_heads":2,"kv_head_classification":[["local","global"],["global","local"]],)"
      R"("kv_head_max_distance":[[8,-1],[-1,4294967301]]})",
      {"kv_head_max_distance[1][1]=4294967301"});
}

TEST_CASE("the largest accepted values load and round-trip", "[head_map][json]") {
  const HeadMap m = HeadMap::from_json(doc("2147483647", "2147483647"));
  REQUIRE(m.raw(0, 0) == HeadPolicy{HeadClass::kLocal, 2147483647, 2147483647});
  REQUIRE(HeadMap::from_json(m.to_json()) == m);
  const HeadMap g =
      HeadMap::from_json(R"({"num_layers":1,"num_kv_heads":1,"kv_head_classification":[["global"]],)"
                         R"("kv_head_max_distance":[[-2147483648]],"retrieval_top_p":1})");
  REQUIRE(g.raw(0, 0) == HeadPolicy{HeadClass::kGlobal, -1, 4});  // the default sink
  REQUIRE(g.retrieval_top_p() == 1.0);
  REQUIRE(HeadMap::from_json(doc("1", "0", R"(,"dense_prefix_layers":1)")).dense_prefix_layers() == 1);
}

TEST_CASE("floats, booleans, strings, null and containers where integers are expected",
          "[head_map][json][bad_input]") {
  bad(doc("5.5"), {"kv_head_max_distance[0][0] must be an integer, got 5.5 (a float)"});
  bad(doc("5.0"), {"kv_head_max_distance[0][0] must be an integer, got 5.0 (a float)"});
  bad(doc("1e3"), {"got 1e3 (a float)"});
  bad(doc("64", "4E+2"), {"kv_head_sink_size[0][0] must be an integer, got 4E+2 (a float)"});
  // Beyond uint64 the number is a float to the parser: still quoted as written.
  bad(doc("18446744073709551616"), {"got 18446744073709551616 (a float)"});
  bad(doc("-9223372036854775809"), {"got -9223372036854775809 (a float)"});
  // A key that looks like a cell path must not lend its text to the cell.
  bad(doc("5.5", "4", R"(,"kv_head_max_distance[0][0]":7.25)"),
      {"[0][0] must be an integer, got 5.5 (a float)"});
  bad(doc("64", "4", "", "2.0"), {"field 'num_layers' must be an integer, got 2.0 (a float)"});
  bad(doc("64", "4", "", "1", "true"), {"field 'num_kv_heads' must be an integer, got true (a boolean)"});
  bad(doc("64", "4", "", "\"1\""), {"field 'num_layers' must be an integer, got \"1\" (a string)"});
  bad(doc("64", "4", "", "null"), {"field 'num_layers' must be an integer, got null"});
  bad(doc("64", "4", "", "[1]"), {"field 'num_layers' must be an integer, got [1] (an array)"});
  bad(doc("64", "4", "", R"({"n":1})"), {"field 'num_layers' must be an integer, got {\"n\":1} (an object)"});
  bad(doc("false"), {"kv_head_max_distance[0][0] must be an integer, got false (a boolean)"});
  bad(doc("null"), {"kv_head_max_distance[0][0] must be an integer, got null"});
  bad(doc("[64]"), {"kv_head_max_distance[0][0] must be an integer, got [64] (an array)"});
  bad(doc("64", "\"4\""), {"kv_head_sink_size[0][0] must be an integer, got \"4\" (a string)"});
  bad(doc("64", "4", R"(,"dense_prefix_layers":0.5)"),
      {"field 'dense_prefix_layers' must be an integer, got 0.5"});
  bad(doc("64", "4", R"(,"dense_prefix_layers":true)"), {"field 'dense_prefix_layers'", "true"});
  // Nested garbage where matrices are expected.
  bad(R"({"num_layers":1,"num_kv_heads":2,"kv_head_classification":{"0":["local","global"]},)"
      R"("kv_head_max_distance":[[64,-1]]})",
      {"field 'kv_head_classification' must be an array of num_layers=1 rows, got {", "(an object)"});
  bad(R"({"num_layers":1,"num_kv_heads":2,"kv_head_classification":[["local","global"]],)"
      R"("kv_head_max_distance":"64"})",
      {"field 'kv_head_max_distance' must be an array", "\"64\" (a string)"});
  bad(R"({"num_layers":1,"num_kv_heads":2,"kv_head_classification":[["local","global"]],)"
      R"("kv_head_max_distance":[[64,-1]],"kv_head_sink_size":[7]})",
      {"kv_head_sink_size[0] must be an array of num_kv_heads=2 entries, got 7"});
  bad(R"({"num_layers":1,"num_kv_heads":2,"kv_head_classification":[["local",["global"]]],)"
      R"("kv_head_max_distance":[[64,-1]]})",
      {"kv_head_classification[0][1] must be a string, got [\"global\"] (an array)"});
  bad(R"({"num_layers":1,"num_kv_heads":2,"kv_head_classification":[["local",null]],)"
      R"("kv_head_max_distance":[[64,-1]]})",
      {"kv_head_classification[0][1] must be a string, got null"});
}

TEST_CASE("retrieval_top_p: non-numbers, out of range, written forms", "[head_map][json][bad_input]") {
  const auto top_p = [](const std::string& v) { return doc("64", "4", R"(,"retrieval_top_p":)" + v); };
  bad(top_p("-0.5"), {"retrieval_top_p=-0.5 must be in (0, 1]"});
  bad(top_p("0"), {"retrieval_top_p=0 must be in (0, 1]"});
  bad(top_p("-0.0"), {"retrieval_top_p=-0.0"});
  bad(top_p("1e-999"), {"retrieval_top_p=1e-999"});  // underflows to 0
  bad(top_p("1.0000001"), {"retrieval_top_p=1.0000001"});
  bad(top_p("2"), {"retrieval_top_p=2 must be in (0, 1]"});
  bad(top_p("18446744073709551615"), {"retrieval_top_p=18446744073709551615"});
  bad(top_p("\"0.9\""), {"retrieval_top_p must be a number, got \"0.9\" (a string)"});
  bad(top_p("true"), {"retrieval_top_p must be a number, got true"});
  bad(top_p("null"), {"retrieval_top_p must be a number, got null"});
  bad(top_p("[0.9]"), {"retrieval_top_p must be a number"});
  REQUIRE(HeadMap::from_json(top_p("0.5")).retrieval_top_p() == 0.5);
  REQUIRE(HeadMap::from_json(top_p("5e-324")).retrieval_top_p() > 0.0);  // smallest subnormal is > 0
}

TEST_CASE("numbers that overflow a double, NaN and Infinity", "[head_map][json][bad_input]") {
  bad(doc("64", "4", R"(,"retrieval_top_p":1e999)"), {"number '1e999'", "out of the range of a double"});
  bad(doc("1e999"), {"'1e999'", "out of the range of a double"});
  bad(doc("-1e400"), {"'-1e400'", "out of the range of a double"});
  bad(doc("64", "4", R"(,"profiling_meta":{"score":[1,2,1E+999]})"), {"'1E+999'", "double"});
  bad(doc("64", "4", R"(,"retrieval_top_p":NaN)"), {"does not parse", "NaN and Infinity"});
  bad(doc("64", "4", R"(,"retrieval_top_p":Infinity)"), {"does not parse", "NaN and Infinity"});
  bad(doc("-Infinity"), {"does not parse", "NaN and Infinity"});
}

TEST_CASE("duplicate keys are rejected at every level", "[head_map][json][bad_input]") {
  bad(doc("64", "4", R"(,"num_layers":1)"), {"duplicate key 'num_layers' in the top-level object"});
  bad(doc("64", "4", R"(,"kv_head_sink_size":[[4,0]])"), {"duplicate key 'kv_head_sink_size'"});
  bad(doc("64", "4", R"(,"profiling_meta":{"a":{"b":1,"b":2}})"),
      {"duplicate key 'b' in object profiling_meta.a"});
  bad(doc("64", "4", R"(,"profiling_meta":[{"x":1},{"y":1,"y":1}])"),
      {"duplicate key 'y' in object profiling_meta[1]"});
}

TEST_CASE("deeply nested input is rejected without exhausting the stack", "[head_map][json][bad_input]") {
  const std::string deep = std::string(200000, '[') + std::string(200000, ']');
  bad(deep, {"deeper than 64 levels"});
  bad(std::string(200000, '['), {"deeper than 64 levels"});
  bad(std::string(100000, '{'), {"does not parse"});  // '{' needs a key: a syntax error first
  std::string objects;
  for (int i = 0; i < 100000; ++i) objects += R"({"a":)";
  bad(objects, {"deeper than 64 levels"});
  // Inside an ignored field too; 60 levels there are fine.
  bad(doc("64", "4", R"(,"profiling_meta":)" + std::string(70, '[') + std::string(70, ']')),
      {"deeper than 64 levels", "profiling_meta"});
  REQUIRE_NOTHROW(HeadMap::from_json(
      doc("64", "4", R"(,"profiling_meta":)" + std::string(60, '[') + std::string(60, ']'))));
}

TEST_CASE("huge or mis-shaped arrays fail before anything is allocated", "[head_map][json][bad_input]") {
  bad(doc("64", "4", "", "2000000000"),
      {"'kv_head_classification' must be an array of num_layers=2000000000 rows, got 1 rows"});
  bad(doc("64", "4", "", "1", "2147483647"),
      {"kv_head_classification[0] must be an array of num_kv_heads=2147483647 entries, got 2"});
  std::string rows = "[";
  for (int i = 0; i < 100000; ++i) rows += std::string(i ? "," : "") + R"(["local","global"])";
  rows += "]";
  bad(R"({"num_layers":1,"num_kv_heads":2,"kv_head_classification":)" + rows +
          R"(,"kv_head_max_distance":[[64,-1]]})",
      {"num_layers=1 rows, got 100000 rows"});
  bad(R"({"num_layers":1,"num_kv_heads":2,"kv_head_classification":[["local","global"]],)"
      R"("kv_head_max_distance":[[64,-1]],"kv_head_sink_size":[[4,0,0]]})",
      {"kv_head_sink_size[0] must be an array of num_kv_heads=2 entries, got 3"});
}

TEST_CASE("invalid UTF-8 and control characters", "[head_map][json][bad_input]") {
  bad(doc("64", "4", ",\"x\":\"\xff\""), {"not valid UTF-8", "\\xff", "offset"});
  bad("\xfe{}", {"not valid UTF-8", "\\xfe", "offset 0"});
  bad(doc("64", "4", ",\"x\":\"\xc0\xaf\""), {"not valid UTF-8", "\\xc0"});          // overlong '/'
  bad(doc("64", "4", ",\"x\":\"\xed\xa0\x80\""), {"not valid UTF-8", "\\xed"});      // UTF-16 surrogate
  bad(doc("64", "4", ",\"x\":\"\xf4\x90\x80\x80\""), {"not valid UTF-8", "\\xf4"});  // beyond U+10FFFF
  bad(doc("64", "4") + "\xe2\x82", {"not valid UTF-8"});                             // truncated at the end
  bad("{\"num_layers\":1,\"num_kv_heads\":1,\"kv_head_classification\":[[\"loc\xe9l\"]]}",
      {"not valid UTF-8", "\\xe9", "line 1"});
  // Well-formed UTF-8 and escaped control characters reach the class check and are quoted printably.
  bad(R"({"num_layers":1,"num_kv_heads":1,"kv_head_classification":[["lokal\u00e9\u0000x"]],)"
      R"("kv_head_max_distance":[[1]]})",
      {"kv_head_classification[0][0]: head class 'lokal\xc3\xa9\\x00x'"});
  bad(std::string("{\"a\":1,\0}", 9), {"does not parse"});
  REQUIRE_NOTHROW(HeadMap::from_json("\xef\xbb\xbf" + doc()));  // a UTF-8 byte-order mark is allowed
  REQUIRE_NOTHROW(HeadMap::from_json(doc("64", "4", ",\"note\":\"caf\xc3\xa9 \xf0\x9f\x99\x82\"")));
}

TEST_CASE("other malformed documents", "[head_map][json][bad_input]") {
  bad("", {"does not parse"});
  bad("   \n", {"does not parse"});
  bad(doc() + " x", {"does not parse"});
  bad(doc() + doc(), {"does not parse"});
  bad("42", {"top level must be an object, got 42"});
  bad("\"head map\"", {"top level must be an object"});
  bad("null", {"top level must be an object"});
  bad(R"({"num_layers":1})", {"missing required field 'num_kv_heads'"});
}

TEST_CASE("load(): missing, directory, unreadable and bad files name the path",
          "[head_map][json][bad_input]") {
  namespace fs = std::filesystem;
  REQUIRE_THROWS_AS(HeadMap::load("/nonexistent/map.json"), InvalidArgument);
  REQUIRE_THROWS_WITH(HeadMap::load("/nonexistent/map.json"),
                      ContainsSubstring("'/nonexistent/map.json' cannot be opened: it does not exist"));
  const fs::path dir = fs::temp_directory_path() / "redknot_test_head_map_json_dir";
  fs::create_directories(dir);
  REQUIRE_THROWS_AS(HeadMap::load(dir.string()), InvalidArgument);
  REQUIRE_THROWS_WITH(HeadMap::load(dir.string()),
                      ContainsSubstring("'" + dir.string() + "' cannot be opened: it is a directory"));
  const fs::path file = dir / "map.json";
  {
    std::ofstream out(file, std::ios::binary);
    out << doc("4294967301");
  }
  REQUIRE_THROWS_AS(HeadMap::load(file.string()), InvalidArgument);
  REQUIRE_THROWS_WITH(
      HeadMap::load(file.string()),
      ContainsSubstring(file.string() + ": head map JSON: kv_head_max_distance[0][0]=4294967301"));
  // A path through a regular file: not a directory.
  REQUIRE_THROWS_AS(HeadMap::load((file / "x.json").string()), InvalidArgument);
  REQUIRE_THROWS_WITH(HeadMap::load((file / "x.json").string()),
                      ContainsSubstring("x.json' cannot be opened"));
  {
    std::ofstream out(file, std::ios::binary);
    out << "{\"a\":\"\xff\"}";
  }
  REQUIRE_THROWS_AS(HeadMap::load(file.string()), InvalidArgument);
  REQUIRE_THROWS_WITH(HeadMap::load(file.string()), ContainsSubstring("not valid UTF-8"));
  {
    std::ofstream out(file, std::ios::binary);  // empty file
  }
  REQUIRE_THROWS_WITH(HeadMap::load(file.string()),
                      ContainsSubstring("map.json: head map JSON does not parse"));
  // Unreadable (root reads anything, so only checked when not root).
  fs::permissions(file, fs::perms::none);
  if (!std::ifstream(file).is_open()) {
    REQUIRE_THROWS_AS(HeadMap::load(file.string()), InvalidArgument);
    REQUIRE_THROWS_WITH(HeadMap::load(file.string()), ContainsSubstring("map.json' cannot be opened"));
  }
  fs::permissions(file, fs::perms::owner_read | fs::perms::owner_write);
  REQUIRE_THROWS_WITH(HeadMap::load(""), ContainsSubstring("path is empty"));
  REQUIRE_THROWS_WITH(HeadMap::load(std::string("a\0b", 3)),
                      ContainsSubstring("'a\\x00b' contains a NUL byte"));
  REQUIRE_THROWS_WITH(HeadMap::load("/nonexistent/\xff.json"),
                      ContainsSubstring("'/nonexistent/\\xff.json'"));
  fs::remove_all(dir);
}

TEST_CASE("compact and indented output both round-trip", "[head_map][json]") {
  const HeadMap m = HeadMap::from_json(doc());
  REQUIRE(HeadMap::from_json(m.to_json()) == m);
  REQUIRE(HeadMap::from_json(m.to_json(-1)) == m);
}
