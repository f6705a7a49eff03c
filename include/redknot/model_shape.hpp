// The attention shape of a model, as the KV cache sees it.
#pragma once

#include <cstdint>

#include "redknot/dtype.hpp"
#include "redknot/error.hpp"
#include "redknot/limits.hpp"

namespace redknot {

struct ModelShape {
  int num_layers = 0;
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  DType dtype = DType::kBF16;

  // Query heads per kv head (GQA group size); query head q belongs to kv head q / group_size().
  int group_size() const { return num_q_heads / num_kv_heads; }

  void validate() const {
    require(num_layers > 0, "ModelShape.num_layers=", num_layers, " must be > 0");
    require(num_kv_heads > 0, "ModelShape.num_kv_heads=", num_kv_heads, " must be > 0");
    const std::int64_t grid = std::int64_t{num_layers} * num_kv_heads;
    require(grid <= kMaxLayersTimesKvHeads, "ModelShape.num_layers * num_kv_heads = ", num_layers, " * ",
            num_kv_heads, " = ", grid, " exceeds the limit of ", kMaxLayersTimesKvHeads, " heads");
    require(num_q_heads > 0 && num_q_heads % num_kv_heads == 0, "ModelShape.num_q_heads=", num_q_heads,
            " must be a positive multiple of num_kv_heads=", num_kv_heads);
    require(num_q_heads <= kMaxNumQHeads, "ModelShape.num_q_heads=", num_q_heads, " exceeds the limit of ",
            kMaxNumQHeads);
    require(head_dim > 0 && head_dim <= 1024 && head_dim % 8 == 0, "ModelShape.head_dim=", head_dim,
            " must be a multiple of 8 in [8, 1024]");
  }

  // The one range check of a layer / kv head index against this shape; `op` (may be empty) prefixes the
  // message.
  void check_layer(int layer, const char* op = "") const {
    REDKNOT_CHECK(layer >= 0 && layer < num_layers, InvalidArgument, detail::Op{op}, "layer=", layer,
                  " out of range [0, ", num_layers, ")");
  }
  void check_kv_head(int kv_head, const char* op = "") const {
    REDKNOT_CHECK(kv_head >= 0 && kv_head < num_kv_heads, InvalidArgument, detail::Op{op},
                  "kv_head=", kv_head, " out of range [0, ", num_kv_heads, ")");
  }

  // Bytes of K plus V for one token of one kv head.
  std::size_t token_bytes_per_head() const {
    return 2 * static_cast<std::size_t>(head_dim) * dtype_size(dtype);
  }
};

}  // namespace redknot
