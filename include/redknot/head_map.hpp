// Head classes, per-head retention parameters and the RedKnot JSON head map.
//
// The canonical visibility rule lives in visibility.hpp; this header only describes which class,
// window and sink each (layer, kv_head) has.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "redknot/core_types.hpp"
#include "redknot/error.hpp"

namespace redknot {

std::string_view head_class_name(HeadClass c);
// Accepts the canonical names and the published aliases (local_full, limited, streaming, sink_dominant ->
// local).
HeadClass parse_head_class(std::string_view s);

class HeadMap {
 public:
  HeadMap() = default;

  // Every head global: the dense baseline.
  static HeadMap all_global(int num_layers, int num_kv_heads);
  // Every head gets the same class (and, for local, the same window and sink).
  static HeadMap uniform(int num_layers, int num_kv_heads, HeadClass cls, int window = -1, int sink = 0);
  // round(ratio * L * H) heads global (at least one if ratio > 0), spread evenly over the (layer, head) grid
  // by a deterministic stride, the rest local with the given window and sink. Used by benchmarks and tests.
  static HeadMap with_global_ratio(int num_layers, int num_kv_heads, double global_ratio, int window,
                                   int sink);

  // The published RedKnot schema. Errors name the field, layer and head at fault.
  //
  // Defaults and limits of the loader:
  //  - When kv_head_sink_size is absent, every head's sink is 4 (only local heads use it); when
  //    dense_prefix_layers is absent it is 0, when retrieval_top_p is absent it is 0.9.
  //  - num_layers and num_kv_heads are integers in [1, 2147483647] (INT32_MAX), and the document must hold
  //    that many rows and entries; num_layers * num_kv_heads is at most kMaxLayersTimesKvHeads (2^20, as for
  //    every head map and model: limits.hpp).
  //  - A local head's window (kv_head_max_distance) is an integer in [1, 2147483647]; other classes ignore
  //    theirs (-1 by convention), which must still be an integer in [-2147483648, 2147483647].
  //  - A sink (kv_head_sink_size) is an integer in [0, 2147483647]; dense_prefix_layers is in [0,
  //  num_layers];
  //    retrieval_top_p is a finite number in (0, 1].
  //  - Integer fields take JSON integers only: 5.0, 1e3, true, "5" and null are rejected, and no value is
  //    narrowed before its range is checked. Messages quote the value as written (e.g. 4294967301).
  //  - The text must be valid UTF-8; duplicate keys (at any level), nesting deeper than 64 arrays/objects,
  //    numbers beyond the range of a double (1e999) and NaN/Infinity are rejected. Unknown fields are
  //    ignored.
  //  - Every error is a redknot::InvalidArgument (Python ValueError). load() also names the path when the
  //    file does not exist, is a directory, cannot be opened or read, or exceeds 64 MiB.
  static HeadMap from_json(std::string_view json_text);
  static HeadMap load(const std::string& path);
  // indent: -1 (compact) to kMaxJsonIndent.
  std::string to_json(int indent = 2) const;
  void save(const std::string& path) const;

  int num_layers() const { return num_layers_; }
  int num_kv_heads() const { return num_kv_heads_; }
  int dense_prefix_layers() const { return dense_prefix_layers_; }
  double retrieval_top_p() const { return retrieval_top_p_; }

  // Raw class as written in the map (before the dense-prefix override).
  HeadPolicy raw(int layer, int kv_head) const;
  // Effective policy: layers below dense_prefix_layers are kDense whatever their row says.
  HeadPolicy policy(int layer, int kv_head) const;

  void set(int layer, int kv_head, HeadPolicy p);
  void set_dense_prefix_layers(int n);

  // Counts of effective classes.
  int count_local() const;
  int count_global_like() const { return num_layers_ * num_kv_heads_ - count_local(); }
  double global_ratio() const;

  // Checks internal consistency (sizes, windows of local heads); throws InvalidArgument naming the entry.
  void validate() const;
  // Checks that the map matches a model's layer and kv-head counts.
  void validate_shape(int num_layers, int num_kv_heads) const;

  friend bool operator==(const HeadMap&, const HeadMap&) = default;

 private:
  HeadMap(int num_layers, int num_kv_heads);
  static HeadMap parse_head_map(std::string_view json_text);  // from_json without its exception translation
  std::size_t index(int layer, int kv_head) const;
  void check_index(int layer, int kv_head) const;

  int num_layers_ = 0;
  int num_kv_heads_ = 0;
  int dense_prefix_layers_ = 0;
  double retrieval_top_p_ = 0.9;
  std::vector<HeadPolicy> heads_;  // [layer][kv_head]
};

}  // namespace redknot
