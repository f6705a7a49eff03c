// Fuzzes the RedKnot JSON head-map loader (HeadMap::from_json).
//
// Contract checked: any input either loads or throws redknot::InvalidArgument / redknot::NotFound with a
// non-empty, printable message; nothing else may escape (nlohmann or std exceptions trap). A map that loads
// validates, round-trips through to_json() (indented and compact), and every policy is in range.
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "redknot/error.hpp"
#include "redknot/head_map.hpp"

namespace {

[[noreturn]] void fail() { __builtin_trap(); }

void check(bool cond) {
  if (!cond) fail();
}

// Messages must be non-empty, without NUL, and valid UTF-8 (Python decodes them).
void check_message(const char* what) {
  const std::string_view s(what);
  check(!s.empty());
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const std::size_t n = c < 0x80                   ? 1
                          : (c >= 0xC2 && c <= 0xDF) ? 2
                          : (c >= 0xE0 && c <= 0xEF) ? 3
                          : (c >= 0xF0 && c <= 0xF4) ? 4
                                                     : 0;
    check(n != 0 && i + n <= s.size());
    for (std::size_t k = 1; k < n; ++k) check((static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80);
    i += n;
  }
}

void check_map(const redknot::HeadMap& m) {
  using redknot::HeadClass;
  m.validate();
  check(m.num_layers() > 0 && m.num_kv_heads() > 0);
  check(m.dense_prefix_layers() >= 0 && m.dense_prefix_layers() <= m.num_layers());
  check(m.retrieval_top_p() > 0.0 && m.retrieval_top_p() <= 1.0);
  for (int l = 0; l < m.num_layers(); ++l)
    for (int h = 0; h < m.num_kv_heads(); ++h) {
      const redknot::HeadPolicy raw = m.raw(l, h);
      const redknot::HeadPolicy eff = m.policy(l, h);
      check(raw.sink >= 0 && eff.sink >= 0);
      if (raw.is_local())
        check(raw.window >= 1);
      else
        check(raw.window == -1);
      if (l < m.dense_prefix_layers())
        check(eff.cls == HeadClass::kDense);
      else
        check(eff == raw);
    }
  const redknot::HeadMap again = redknot::HeadMap::from_json(m.to_json());
  check(again == m);
  check(redknot::HeadMap::from_json(m.to_json(-1)) == m);
  check(again.to_json() == m.to_json());
  check(m.count_local() + m.count_global_like() == m.num_layers() * m.num_kv_heads());
}

// Oracle against silent narrowing: every value the map holds equals the one in the document, as read by a
// plain nlohmann parse (the loader is stricter, so whatever it accepts parses the same way).
void check_values(const redknot::HeadMap& m, std::string_view text) {
  using nlohmann::json;
  json j;
  try {
    j = json::parse(text.begin(), text.end());
  } catch (...) {
    fail();
  }
  check(j.at("num_layers") == json(m.num_layers()));
  check(j.at("num_kv_heads") == json(m.num_kv_heads()));
  check(j.value("dense_prefix_layers", json(0)) == json(m.dense_prefix_layers()));
  if (j.contains("retrieval_top_p"))
    check(j["retrieval_top_p"].get<double>() == m.retrieval_top_p());
  else
    check(m.retrieval_top_p() == 0.9);
  const bool has_sink = j.contains("kv_head_sink_size");
  for (int l = 0; l < m.num_layers(); ++l)
    for (int h = 0; h < m.num_kv_heads(); ++h) {
      const redknot::HeadPolicy p = m.raw(l, h);
      const auto li = static_cast<std::size_t>(l), hi = static_cast<std::size_t>(h);
      check(redknot::parse_head_class(j["kv_head_classification"][li][hi].get<std::string>()) == p.cls);
      const json& d = j["kv_head_max_distance"][li][hi];
      check(d.is_number_integer());
      if (p.is_local())
        check(d == json(p.window));
      else
        check(d >= json(std::numeric_limits<std::int32_t>::min()) &&
              d <= json(std::numeric_limits<std::int32_t>::max()));
      check(has_sink ? j["kv_head_sink_size"][li][hi] == json(p.sink) : p.sink == 4);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const redknot::HeadMap m = redknot::HeadMap::from_json(text);
    try {
      check_map(m);
      check_values(m, text);
    } catch (...) {
      fail();  // a map that loaded must validate and reload without any error
    }
  } catch (const redknot::InvalidArgument& e) {
    check_message(e.what());
  } catch (const redknot::NotFound& e) {
    check_message(e.what());
  } catch (...) {
    fail();
  }
  return 0;
}
