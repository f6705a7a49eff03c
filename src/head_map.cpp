// HeadMap construction, validation and the RedKnot JSON schema.
#include "redknot/head_map.hpp"
#include "redknot/limits.hpp"

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <unordered_map>
#include <utility>

namespace redknot {

using detail::concat;
using nlohmann::json;

namespace {

// Length of the well-formed UTF-8 sequence starting at s[i] (1 to 4), or 0 when the bytes there are not
// well-formed UTF-8 (stray continuation byte, overlong form, surrogate, beyond U+10FFFF, truncated).
std::size_t utf8_char_length(std::string_view s, std::size_t i) {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  if (c < 0x80) return 1;
  std::size_t n = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c == 0xE0) {
    n = 3, lo = 0xA0;
  } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
    n = 3;
  } else if (c == 0xED) {
    n = 3, hi = 0x9F;
  } else if (c == 0xF0) {
    n = 4, lo = 0x90;
  } else if (c >= 0xF1 && c <= 0xF3) {
    n = 4;
  } else if (c == 0xF4) {
    n = 4, hi = 0x8F;
  } else {
    return 0;
  }
  if (s.size() - i < n || b(i + 1) < lo || b(i + 1) > hi) return 0;
  for (std::size_t k = 2; k < n; ++k)
    if (b(i + k) < 0x80 || b(i + k) > 0xBF) return 0;
  return n;
}

// Text quoted in an error message: control characters and bytes that are not well-formed UTF-8 become \xNN
// (so messages stay valid UTF-8 for Python and C callers and are never cut by a NUL), cut after max_bytes.
std::string printable(std::string_view s, std::size_t max_bytes = std::numeric_limits<std::size_t>::max()) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < s.size();) {
    if (out.size() >= max_bytes) {
      out += "...";
      break;
    }
    const auto c = static_cast<unsigned char>(s[i]);
    const std::size_t n = utf8_char_length(s, i);
    if (n == 0 || c < 0x20 || c == 0x7F) {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
      ++i;
    } else {
      out.append(s.substr(i, n));
      i += n;
    }
  }
  return out;
}

}  // namespace

std::string_view head_class_name(HeadClass c) {
  switch (c) {
    case HeadClass::kLocal:
      return "local";
    case HeadClass::kGlobal:
      return "global";
    case HeadClass::kRetrieval:
      return "retrieval";
    case HeadClass::kDense:
      return "dense";
  }
  return "?";
}

HeadClass parse_head_class(std::string_view s) {
  if (s == "local" || s == "local_full" || s == "limited" || s == "streaming" || s == "sink_dominant")
    return HeadClass::kLocal;
  if (s == "global") return HeadClass::kGlobal;
  if (s == "retrieval") return HeadClass::kRetrieval;
  if (s == "dense") return HeadClass::kDense;
  throw InvalidArgument(concat("head class '", printable(s, 80),
                               "' is not one of local, global, retrieval, dense (or the local aliases "
                               "local_full, limited, streaming, sink_dominant)"));
}

HeadMap::HeadMap(int num_layers, int num_kv_heads) : num_layers_(num_layers), num_kv_heads_(num_kv_heads) {
  require(num_layers > 0, "num_layers=", num_layers, " must be > 0");
  require(num_kv_heads > 0, "num_kv_heads=", num_kv_heads, " must be > 0");
  const std::int64_t grid = std::int64_t{num_layers} * num_kv_heads;
  require(grid <= kMaxLayersTimesKvHeads, "num_layers * num_kv_heads = ", num_layers, " * ", num_kv_heads,
          " = ", grid, " exceeds the limit of ", kMaxLayersTimesKvHeads, " heads");
  heads_.assign(static_cast<std::size_t>(num_layers) * num_kv_heads, HeadPolicy{});
}

HeadMap HeadMap::all_global(int num_layers, int num_kv_heads) { return HeadMap(num_layers, num_kv_heads); }

HeadMap HeadMap::uniform(int num_layers, int num_kv_heads, HeadClass cls, int window, int sink) {
  HeadMap m(num_layers, num_kv_heads);
  for (auto& h : m.heads_)
    h = cls == HeadClass::kLocal ? HeadPolicy{cls, window, sink} : HeadPolicy{cls, -1, sink};
  m.validate();
  return m;
}

HeadMap HeadMap::with_global_ratio(int num_layers, int num_kv_heads, double global_ratio, int window,
                                   int sink) {
  require(global_ratio >= 0.0 && global_ratio <= 1.0, "global_ratio=", global_ratio, " must be in [0, 1]");
  HeadMap m = uniform(num_layers, num_kv_heads, HeadClass::kLocal, window, sink);
  const std::size_t total = m.heads_.size();
  std::size_t n_global = static_cast<std::size_t>(std::llround(global_ratio * static_cast<double>(total)));
  if (global_ratio > 0.0 && n_global == 0) n_global = 1;
  // Evenly spaced indices i * total / n_global: deterministic, and spreads globals over layers and heads.
  for (std::size_t i = 0; i < n_global; ++i)
    m.heads_[i * total / n_global] = HeadPolicy{HeadClass::kGlobal, -1, sink};
  return m;
}

std::size_t HeadMap::index(int layer, int kv_head) const {
  return static_cast<std::size_t>(layer) * num_kv_heads_ + kv_head;
}

void HeadMap::check_index(int layer, int kv_head) const {
  require(layer >= 0 && layer < num_layers_, "layer=", layer, " out of range [0, ", num_layers_, ")");
  require(kv_head >= 0 && kv_head < num_kv_heads_, "kv_head=", kv_head, " out of range [0, ", num_kv_heads_,
          ")");
}

HeadPolicy HeadMap::raw(int layer, int kv_head) const {
  check_index(layer, kv_head);
  return heads_[index(layer, kv_head)];
}

HeadPolicy HeadMap::policy(int layer, int kv_head) const {
  check_index(layer, kv_head);
  if (layer < dense_prefix_layers_)
    return HeadPolicy{HeadClass::kDense, -1, heads_[index(layer, kv_head)].sink};
  return heads_[index(layer, kv_head)];
}

void HeadMap::set(int layer, int kv_head, HeadPolicy p) {
  check_index(layer, kv_head);
  if (p.is_local())
    require(p.window >= 1, "window=", p.window, " for local head (layer ", layer, ", kv_head ", kv_head,
            ") must be >= 1");
  require(p.sink >= 0, "sink=", p.sink, " for head (layer ", layer, ", kv_head ", kv_head, ") must be >= 0");
  heads_[index(layer, kv_head)] = p;
}

void HeadMap::set_dense_prefix_layers(int n) {
  require(n >= 0 && n <= num_layers_, "dense_prefix_layers=", n, " must be in [0, num_layers=", num_layers_,
          "]");
  dense_prefix_layers_ = n;
}

int HeadMap::count_local() const {
  int n = 0;
  for (int l = dense_prefix_layers_; l < num_layers_; ++l)
    for (int h = 0; h < num_kv_heads_; ++h) n += heads_[index(l, h)].is_local() ? 1 : 0;
  return n;
}

double HeadMap::global_ratio() const {
  const int total = num_layers_ * num_kv_heads_;
  return total == 0 ? 0.0 : static_cast<double>(count_global_like()) / total;
}

void HeadMap::validate() const {
  require(num_layers_ > 0 && num_kv_heads_ > 0, "head map is empty (num_layers=", num_layers_,
          ", num_kv_heads=", num_kv_heads_, ")");
  require(heads_.size() == static_cast<std::size_t>(num_layers_) * num_kv_heads_, "head map has ",
          heads_.size(), " entries, expected num_layers*num_kv_heads=", num_layers_ * num_kv_heads_);
  for (int l = 0; l < num_layers_; ++l)
    for (int h = 0; h < num_kv_heads_; ++h) {
      const HeadPolicy& p = heads_[index(l, h)];
      if (p.is_local())
        require(p.window >= 1, "kv_head_max_distance[", l, "][", h, "]=", p.window,
                " must be >= 1 for a local head");
      require(p.sink >= 0, "kv_head_sink_size[", l, "][", h, "]=", p.sink, " must be >= 0");
    }
  require(dense_prefix_layers_ >= 0 && dense_prefix_layers_ <= num_layers_,
          "dense_prefix_layers=", dense_prefix_layers_, " must be in [0, ", num_layers_, "]");
  require(retrieval_top_p_ > 0.0 && retrieval_top_p_ <= 1.0, "retrieval_top_p=", retrieval_top_p_,
          " must be in (0, 1]");
}

void HeadMap::validate_shape(int num_layers, int num_kv_heads) const {
  require(num_layers_ == num_layers, "head map num_layers=", num_layers_, " does not match the model's ",
          num_layers);
  require(num_kv_heads_ == num_kv_heads, "head map num_kv_heads=", num_kv_heads_,
          " does not match the model's ", num_kv_heads);
}

namespace {

// Limits of the JSON loader (documented in head_map.hpp).
constexpr std::int64_t kInt32Max = std::numeric_limits<std::int32_t>::max();
constexpr std::int64_t kInt32Min = std::numeric_limits<std::int32_t>::min();
constexpr int kDefaultSink = 4;                   // sink of every head when kv_head_sink_size is absent
constexpr std::size_t kMaxDepth = 64;             // nesting of arrays and objects
constexpr std::size_t kMaxFileBytes = 64u << 20;  // HeadMap::load reads at most 64 MiB
constexpr std::size_t kMaxQuotedBytes = 80;       // values quoted in messages are cut after this

// The value of a JSON node for an error message, as written where it can be known: integers print exactly as
// written, floats are quoted from the source text (kept by the parser), anything else is dumped as ASCII.
std::string quoted_dump(const json& v) {
  return printable(v.dump(-1, ' ', /*ensure_ascii=*/true, json::error_handler_t::replace), kMaxQuotedBytes);
}

// Builds the DOM through nlohmann's SAX interface so that the loader, not the library, decides what is
// acceptable: duplicate keys and nesting deeper than kMaxDepth are errors, a number that overflows a double
// is an InvalidArgument naming the number, and the source text of every float of the schema's fields (depth
// <= 3: top level, matrix row, cell) is kept for error messages.
class StrictDomBuilder final : public json::json_sax_t {
 public:
  json root;
  std::string error;  // set when the parse was stopped
  // JSON pointer (e.g. "/retrieval_top_p", "/x/1/2") -> the float as written.
  std::unordered_map<std::string, std::string> raw_floats;

  bool null() override { return put(nullptr); }
  bool boolean(bool v) override { return put(v); }
  bool number_integer(number_integer_t v) override { return put(v); }
  bool number_unsigned(number_unsigned_t v) override { return put(v); }
  bool number_float(number_float_t v, const string_t& text) override {
    put(v);
    if (stack_.size() <= 3) raw_floats.emplace(pointer(), text);
    return true;
  }
  bool string(string_t& v) override { return put(std::move(v)); }
  bool binary(binary_t&) override { return fail("head map JSON: binary values are not supported"); }
  bool start_object(std::size_t) override { return open(json::value_t::object); }
  bool key(string_t& k) override {
    json& obj = *stack_.back();
    if (obj.contains(k))
      return fail(concat("head map JSON: duplicate key '", printable(k, kMaxQuotedBytes), "' in ",
                         stack_.size() == 1 ? std::string("the top-level object")
                                            : concat("object ", printable(path(stack_.size() - 1), 120))));
    keys_.back() = k;
    slot_ = &obj[k];
    return true;
  }
  bool end_object() override { return close(); }
  bool start_array(std::size_t) override { return open(json::value_t::array); }
  bool end_array() override { return close(); }
  bool parse_error(std::size_t position, const std::string& last_token, const json::exception& ex) override {
    if (ex.id == 406)  // out_of_range.406: the number does not fit a double (1e999, -1e400)
      return fail(concat("head map JSON: number '", printable(last_token, kMaxQuotedBytes), "' near byte ",
                         position, " is out of the range of a double"));
    std::string what = ex.what();
    if (const auto close_bracket = what.find("] ");
        what.rfind("[json.exception.", 0) == 0 && close_bracket != std::string::npos)
      what.erase(0, close_bracket + 2);
    std::string hint;
    // The parser stops at the first letter of NaN / Infinity / -Infinity (Python's json.dump writes them).
    const std::size_t n = last_token.size();
    if (n > 0 && (last_token[n - 1] == 'N' || last_token[n - 1] == 'I') &&
        (n == 1 || (last_token[n - 2] != '\0' && std::strchr(":[,- \t\r\n", last_token[n - 2]) != nullptr)))
      hint = " (NaN and Infinity are not valid JSON numbers)";
    return fail(concat("head map JSON does not parse: ", printable(what, 300), hint));
  }

 private:
  std::vector<json*> stack_;       // open containers, outermost first
  std::vector<std::string> keys_;  // for each open container: its current key (objects only)
  json* slot_ = nullptr;           // the member created by the last key()

  bool fail(std::string msg) {
    if (error.empty()) error = std::move(msg);
    return false;
  }

  // JSON pointer (RFC 6901) of the value just placed, e.g. /kv_head_max_distance/1/2: unique in a document
  // without duplicate keys, unlike the readable path (a key may contain "[1]").
  std::string pointer() const {
    std::string p;
    for (std::size_t i = 0; i < stack_.size(); ++i) {
      const json& c = *stack_[i];
      p += '/';
      if (c.is_array()) {
        p += std::to_string(c.empty() ? 0 : c.size() - 1);
      } else {
        for (const char ch : keys_[i]) {
          if (ch == '~')
            p += "~0";
          else if (ch == '/')
            p += "~1";
          else
            p += ch;
        }
      }
    }
    return p;
  }

  // Path of the current child of the first n open containers, e.g. kv_head_max_distance[1][2].
  std::string path(std::size_t n) const {
    std::string p;
    for (std::size_t i = 0; i < n; ++i) {
      const json& c = *stack_[i];
      if (c.is_array())
        p += concat("[", c.empty() ? 0 : c.size() - 1, "]");
      else
        p += (i == 0 ? "" : ".") + keys_[i];
    }
    return p;
  }

  template <class V>
  json* place(V&& v) {
    if (stack_.empty()) {
      root = json(std::forward<V>(v));
      return &root;
    }
    json& top = *stack_.back();
    if (top.is_array()) {
      top.push_back(json(std::forward<V>(v)));
      return &top.back();
    }
    *slot_ = json(std::forward<V>(v));
    return slot_;
  }
  template <class V>
  bool put(V&& v) {
    place(std::forward<V>(v));
    return true;
  }
  bool open(json::value_t t) {
    if (stack_.size() >= kMaxDepth)
      return fail(concat("head map JSON nests arrays and objects deeper than ", kMaxDepth, " levels (at ",
                         printable(path(stack_.size()), 120), ")"));
    stack_.push_back(place(t));
    keys_.emplace_back();
    return true;
  }
  bool close() {
    stack_.pop_back();
    keys_.pop_back();
    return true;
  }
};

// Parses `text` strictly; every failure is an InvalidArgument.
json parse_strict(std::string_view text, std::unordered_map<std::string, std::string>& raw_floats) {
  // Invalid UTF-8 anywhere (nlohmann checks it only inside strings) is reported with its offset.
  std::size_t line = 1, column = 1;
  for (std::size_t i = 0; i < text.size();) {
    const std::size_t n = utf8_char_length(text, i);
    if (n == 0)
      throw InvalidArgument(concat("head map JSON is not valid UTF-8: byte ", printable(text.substr(i, 1)),
                                   " at offset ", i, " (line ", line, ", column ", column, ")"));
    if (text[i] == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
    i += n;
  }
  StrictDomBuilder sax;
  bool ok = false;
  try {
    ok = json::sax_parse(text.begin(), text.end(), &sax);
  } catch (const json::exception& e) {  // not expected: every error goes through parse_error()
    throw InvalidArgument(concat("head map JSON does not parse: ", printable(e.what(), 300)));
  }
  if (!ok || !sax.error.empty())
    throw InvalidArgument(sax.error.empty() ? std::string("head map JSON does not parse") : sax.error);
  raw_floats = std::move(sax.raw_floats);
  return std::move(sax.root);
}

// Reads the schema's fields out of a parsed document; every message names the field (and layer, head) and
// quotes the value as written.
class Reader {
 public:
  Reader(const json& root, std::unordered_map<std::string, std::string> raw_floats)
      : root_(root), raw_floats_(std::move(raw_floats)) {}

  const json* find(const char* name) const {
    auto it = root_.find(name);
    return it == root_.end() ? nullptr : &*it;
  }

  const json& field(const char* name) const {
    const json* v = find(name);
    require(v != nullptr, "head map JSON: missing required field '", name, "'");
    return *v;
  }

  // The value as written in the document at `path`.
  std::string written(const json& v, const std::string& path) const {
    if (v.is_number_float()) {
      auto it = raw_floats_.find(pointer_of(path));
      if (it != raw_floats_.end()) return printable(it->second, kMaxQuotedBytes);
    }
    return quoted_dump(v);
  }

  // An integer in [lo, hi]; `what` is how messages name the entry (e.g. "kv_head_sink_size[1][2]") and
  // `type_what` how type errors name it ("field 'num_layers'"); `suffix` ends range messages.
  int integer(const json& v, const std::string& what, const std::string& type_what, std::int64_t lo,
              std::int64_t hi, const char* suffix = "") const {
    require(v.is_number_integer(), "head map JSON: ", type_what, " must be an integer, got ",
            describe(v, what));
    bool below = false, above = false;
    std::int64_t x = 0;
    if (v.is_number_unsigned()) {
      const std::uint64_t u = v.get<std::uint64_t>();
      above = u > static_cast<std::uint64_t>(hi);
      if (!above) x = static_cast<std::int64_t>(u);
    } else {
      x = v.get<std::int64_t>();
    }
    below = !above && x < lo;
    above = above || x > hi;
    require(!below, "head map JSON: ", what, "=", written(v, what), " must be >= ", lo, suffix);
    require(!above, "head map JSON: ", what, "=", written(v, what), " must be <= ", hi, suffix);
    return static_cast<int>(x);
  }

  int integer_field(const char* name, std::int64_t lo, std::int64_t hi, const char* suffix = "") const {
    return integer(field(name), name, concat("field '", name, "'"), lo, hi, suffix);
  }

  // Checks that j[name] is an L x H matrix and returns it.
  const json& matrix(const char* name, int L, int H) const {
    const json& m = field(name);
    require(m.is_array(), "head map JSON: field '", name, "' must be an array of num_layers=", L,
            " rows, got ", describe(m, name));
    require(m.size() == static_cast<std::size_t>(L), "head map JSON: field '", name,
            "' must be an array of num_layers=", L, " rows, got ", m.size(), " rows");
    for (int l = 0; l < L; ++l) {
      const json& row = m[static_cast<std::size_t>(l)];
      const std::string what = concat(name, "[", l, "]");
      require(row.is_array(), "head map JSON: ", what, " must be an array of num_kv_heads=", H,
              " entries, got ", describe(row, what));
      require(row.size() == static_cast<std::size_t>(H), "head map JSON: ", what,
              " must be an array of num_kv_heads=", H, " entries, got ", row.size());
    }
    return m;
  }

  // "5.5 (a float)", "true (a boolean)", "\"x\" (a string)", ...
  std::string describe(const json& v, const std::string& path) const {
    const char* type = "";
    switch (v.type()) {
      case json::value_t::null:
        return "null";
      case json::value_t::boolean:
        type = "a boolean";
        break;
      case json::value_t::string:
        type = "a string";
        break;
      case json::value_t::number_float:
        type = "a float";
        break;
      case json::value_t::array:
        type = "an array";
        break;
      case json::value_t::object:
        type = "an object";
        break;
      default:
        return written(v, path);
    }
    return concat(written(v, path), " (", type, ")");
  }

 private:
  // "kv_head_sink_size[1][2]" -> "/kv_head_sink_size/1/2" (schema field names hold no '~', '/' or '[').
  static std::string pointer_of(const std::string& path) {
    std::string p = "/";
    for (const char ch : path) {
      if (ch == '[')
        p += '/';
      else if (ch != ']')
        p += ch;
    }
    return p;
  }

  const json& root_;
  std::unordered_map<std::string, std::string> raw_floats_;
};

}  // namespace

HeadMap HeadMap::from_json(std::string_view text) {
  // Every failure is an InvalidArgument, whatever the JSON library throws (bindings rely on it).
  try {
    return parse_head_map(text);
  } catch (const json::exception& e) {
    throw InvalidArgument(concat("head map JSON: ", printable(e.what(), 300)));
  }
}

HeadMap HeadMap::parse_head_map(std::string_view text) {
  std::unordered_map<std::string, std::string> raw_floats;
  const json j = parse_strict(text, raw_floats);
  require(j.is_object(), "head map JSON: top level must be an object, got ",
          j.is_array() ? std::string("an array") : quoted_dump(j));
  const Reader r(j, std::move(raw_floats));
  const int L = r.integer_field("num_layers", 1, kInt32Max);
  const int H = r.integer_field("num_kv_heads", 1, kInt32Max);
  // Shapes are checked before anything is allocated: the rows must be in the document.
  const json& cls = r.matrix("kv_head_classification", L, H);
  const json& dist = r.matrix("kv_head_max_distance", L, H);
  const json* sink = r.find("kv_head_sink_size") ? &r.matrix("kv_head_sink_size", L, H) : nullptr;
  HeadMap m(L, H);
  for (int l = 0; l < L; ++l)
    for (int h = 0; h < H; ++h) {
      const auto li = static_cast<std::size_t>(l), hi = static_cast<std::size_t>(h);
      const std::string cell = concat("[", l, "][", h, "]");
      const json& c = cls[li][hi];
      const std::string cname = "kv_head_classification" + cell;
      require(c.is_string(), "head map JSON: ", cname, " must be a string, got ", r.describe(c, cname));
      HeadClass hc;
      try {
        hc = parse_head_class(c.get_ref<const std::string&>());
      } catch (const InvalidArgument& e) {
        throw InvalidArgument(concat("head map JSON: ", cname, ": ", e.what()));
      }
      const std::string dname = "kv_head_max_distance" + cell;
      // A local head's window; other classes ignore the value (-1 by convention) but it must fit an int32.
      const int d = hc == HeadClass::kLocal
                        ? r.integer(dist[li][hi], dname, dname, 1, kInt32Max, " for a local head")
                        : r.integer(dist[li][hi], dname, dname, kInt32Min, kInt32Max);
      int s = kDefaultSink;
      if (sink) {
        const std::string sname = "kv_head_sink_size" + cell;
        s = r.integer((*sink)[li][hi], sname, sname, 0, kInt32Max);
      }
      m.heads_[m.index(l, h)] = HeadPolicy{hc, hc == HeadClass::kLocal ? d : -1, s};
    }
  if (r.find("dense_prefix_layers")) {
    const std::string suffix = concat(" (num_layers=", L, ")");
    m.dense_prefix_layers_ = r.integer_field("dense_prefix_layers", 0, L, suffix.c_str());
  }
  if (const json* p = r.find("retrieval_top_p")) {
    require(p->is_number(), "head map JSON: retrieval_top_p must be a number, got ",
            r.describe(*p, "retrieval_top_p"));
    const double v = p->get<double>();
    require(std::isfinite(v) && v > 0.0 && v <= 1.0,
            "head map JSON: retrieval_top_p=", r.written(*p, "retrieval_top_p"), " must be in (0, 1]");
    m.retrieval_top_p_ = v;
  }
  m.validate();
  return m;
}

HeadMap HeadMap::load(const std::string& path) {
  const std::string shown = printable(path, 4096);
  require(!path.empty(), "head map file path is empty");
  require(path.find('\0') == std::string::npos, "head map file path '", shown, "' contains a NUL byte");
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  require(st.type() != fs::file_type::not_found, "head map file '", shown,
          "' cannot be opened: it does not exist");
  require(!ec, "head map file '", shown, "' cannot be opened: ", ec.message());
  require(st.type() != fs::file_type::directory, "head map file '", shown,
          "' cannot be opened: it is a directory");
  errno = 0;
  std::ifstream in(path, std::ios::binary);
  if (!in.is_open()) {
    const int err = errno;
    throw InvalidArgument(concat("head map file '", shown, "' cannot be opened",
                                 err ? concat(": ", std::strerror(err)) : std::string()));
  }
  std::string text;
  char buf[1 << 16];
  while (in) {
    in.read(buf, sizeof buf);
    text.append(buf, static_cast<std::size_t>(in.gcount()));
    require(text.size() <= kMaxFileBytes, "head map file '", shown, "' is larger than ", kMaxFileBytes >> 20,
            " MiB; a head map is a few KB to a few MB");
  }
  if (in.bad()) {
    const int err = errno;
    throw InvalidArgument(concat("head map file '", shown, "' cannot be read",
                                 err ? concat(": ", std::strerror(err)) : std::string()));
  }
  try {
    return from_json(text);
  } catch (const InvalidArgument& e) {
    throw InvalidArgument(concat(shown, ": ", e.what()));
  }
}

std::string HeadMap::to_json(int indent) const {
  require(indent >= -1 && indent <= kMaxJsonIndent, "to_json: indent=", indent, " must be in [-1, ",
          kMaxJsonIndent, "] (-1: compact)");
  json j;
  j["num_layers"] = num_layers_;
  j["num_kv_heads"] = num_kv_heads_;
  j["dense_prefix_layers"] = dense_prefix_layers_;
  j["retrieval_top_p"] = retrieval_top_p_;
  json cls = json::array(), dist = json::array(), sink = json::array();
  for (int l = 0; l < num_layers_; ++l) {
    json c = json::array(), d = json::array(), s = json::array();
    for (int h = 0; h < num_kv_heads_; ++h) {
      const HeadPolicy& p = heads_[index(l, h)];
      c.push_back(std::string(head_class_name(p.cls)));
      d.push_back(p.is_local() ? p.window : -1);
      s.push_back(p.sink);
    }
    cls.push_back(c);
    dist.push_back(d);
    sink.push_back(s);
  }
  j["kv_head_classification"] = cls;
  j["kv_head_max_distance"] = dist;
  j["kv_head_sink_size"] = sink;
  return j.dump(indent);
}

void HeadMap::save(const std::string& path) const {
  std::ofstream out(path);
  require(out.good(), "head map file '", path, "' cannot be written");
  out << to_json() << "\n";
}

}  // namespace redknot
