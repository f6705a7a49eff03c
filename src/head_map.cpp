// HeadMap construction, validation and the RedKnot JSON schema (DESIGN §2).
#include "redknot/head_map.hpp"

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace redknot {

using detail::concat;
using nlohmann::json;

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
  throw InvalidArgument(concat("head class '", s,
                               "' is not one of local, global, retrieval, dense (or the local aliases "
                               "local_full, limited, streaming, sink_dominant)"));
}

HeadMap::HeadMap(int num_layers, int num_kv_heads) : num_layers_(num_layers), num_kv_heads_(num_kv_heads) {
  require(num_layers > 0, "num_layers=", num_layers, " must be > 0");
  require(num_kv_heads > 0, "num_kv_heads=", num_kv_heads, " must be > 0");
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
  if (p.is_local()) {
    require(p.window >= 1, "window=", p.window, " for local head (layer ", layer, ", kv_head ", kv_head,
            ") must be >= 1");
    require(p.sink >= 0, "sink=", p.sink, " for head (layer ", layer, ", kv_head ", kv_head,
            ") must be >= 0");
  }
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

const json& field(const json& j, const char* name) {
  auto it = j.find(name);
  require(it != j.end(), "head map JSON: missing required field '", name, "'");
  return *it;
}

int int_field(const json& j, const char* name) {
  const json& v = field(j, name);
  require(v.is_number_integer(), "head map JSON: field '", name, "' must be an integer, got ", v.dump());
  return v.get<int>();
}

// Checks that j[name] is an L x H matrix and returns it.
const json& matrix_field(const json& j, const char* name, int L, int H) {
  const json& m = field(j, name);
  require(m.is_array() && m.size() == static_cast<std::size_t>(L), "head map JSON: field '", name,
          "' must be an array of num_layers=", L, " rows, got ", m.is_array() ? m.size() : 0, " rows");
  for (int l = 0; l < L; ++l)
    require(m[l].is_array() && m[l].size() == static_cast<std::size_t>(H), "head map JSON: ", name, "[", l,
            "] must be an array of num_kv_heads=", H, " entries, got ", m[l].is_array() ? m[l].size() : 0);
  return m;
}

}  // namespace

HeadMap HeadMap::from_json(std::string_view text) {
  json j;
  try {
    j = json::parse(text.begin(), text.end());
  } catch (const json::parse_error& e) {
    throw InvalidArgument(concat("head map JSON does not parse: ", e.what()));
  }
  require(j.is_object(), "head map JSON: top level must be an object");
  const int L = int_field(j, "num_layers");
  const int H = int_field(j, "num_kv_heads");
  require(L > 0, "head map JSON: num_layers=", L, " must be > 0");
  require(H > 0, "head map JSON: num_kv_heads=", H, " must be > 0");
  HeadMap m(L, H);
  const json& cls = matrix_field(j, "kv_head_classification", L, H);
  const json& dist = matrix_field(j, "kv_head_max_distance", L, H);
  const json* sink = j.contains("kv_head_sink_size") ? &matrix_field(j, "kv_head_sink_size", L, H) : nullptr;
  for (int l = 0; l < L; ++l)
    for (int h = 0; h < H; ++h) {
      const json& c = cls[l][h];
      require(c.is_string(), "head map JSON: kv_head_classification[", l, "][", h, "] must be a string, got ",
              c.dump());
      HeadClass hc;
      try {
        hc = parse_head_class(c.get<std::string>());
      } catch (const InvalidArgument& e) {
        throw InvalidArgument(concat("head map JSON: kv_head_classification[", l, "][", h, "]: ", e.what()));
      }
      const json& d = dist[l][h];
      require(d.is_number_integer(), "head map JSON: kv_head_max_distance[", l, "][", h,
              "] must be an integer, got ", d.dump());
      int s = 4;  // the schema's default sink
      if (sink) {
        const json& sv = (*sink)[l][h];
        require(sv.is_number_integer(), "head map JSON: kv_head_sink_size[", l, "][", h,
                "] must be an integer, got ", sv.dump());
        s = sv.get<int>();
      }
      HeadPolicy p{hc, hc == HeadClass::kLocal ? d.get<int>() : -1, s};
      if (hc == HeadClass::kLocal)
        require(p.window >= 1, "head map JSON: kv_head_max_distance[", l, "][", h, "]=", d.get<int>(),
                " must be >= 1 for a local head");
      require(s >= 0, "head map JSON: kv_head_sink_size[", l, "][", h, "]=", s, " must be >= 0");
      m.heads_[m.index(l, h)] = p;
    }
  if (j.contains("dense_prefix_layers")) {
    const int n = int_field(j, "dense_prefix_layers");
    require(n >= 0 && n <= L, "head map JSON: dense_prefix_layers=", n, " must be in [0, num_layers=", L,
            "]");
    m.dense_prefix_layers_ = n;
  }
  if (j.contains("retrieval_top_p")) {
    const json& p = j["retrieval_top_p"];
    require(p.is_number(), "head map JSON: retrieval_top_p must be a number, got ", p.dump());
    m.retrieval_top_p_ = p.get<double>();
    require(m.retrieval_top_p_ > 0.0 && m.retrieval_top_p_ <= 1.0,
            "head map JSON: retrieval_top_p=", m.retrieval_top_p_, " must be in (0, 1]");
  }
  m.validate();
  return m;
}

HeadMap HeadMap::load(const std::string& path) {
  std::ifstream in(path);
  require(in.good(), "head map file '", path, "' cannot be opened");
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return from_json(ss.str());
  } catch (const InvalidArgument& e) {
    throw InvalidArgument(concat(path, ": ", e.what()));
  }
}

std::string HeadMap::to_json(int indent) const {
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
