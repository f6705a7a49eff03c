// The oracle: naive dense attention over a shadow copy of everything ever appended, masked by the canonical
// rule (visibility.hpp) and accumulated in fp64. It shares nothing with the store but HeadMap and
// is_visible(), so eviction, paging, forks and the fast paths are all checked against it. It keeps every
// token: test sizes only.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <span>
#include <vector>

#include "redknot/dtype.hpp"
#include "redknot/error.hpp"
#include "redknot/head_map.hpp"
#include "redknot/model_shape.hpp"
#include "redknot/visibility.hpp"

namespace redknot {

class DenseOracle {
 public:
  DenseOracle(const ModelShape& shape, HeadMap map) : shape_(shape), map_(std::move(map)) {
    map_.validate_shape(shape.num_layers, shape.num_kv_heads);
  }

  // Same layout as KVHeadStore::append; values are stored as the storage type T would hold them.
  template <StorageType T>
  void append(std::int64_t seq, int layer, std::span<const T> k, std::span<const T> v,
              std::span<const std::int32_t> positions) {
    auto& layers = seqs_[seq];
    if (layers.empty()) layers.resize(static_cast<std::size_t>(shape_.num_layers));
    Layer& L = layers[static_cast<std::size_t>(layer)];
    const std::size_t H = shape_.num_kv_heads, D = shape_.head_dim;
    for (std::size_t i = 0; i < positions.size(); ++i) {
      L.pos.push_back(positions[i]);
      for (std::size_t h = 0; h < H; ++h)
        for (std::size_t d = 0; d < D; ++d) {
          L.k.push_back(to_float(k[(i * H + h) * D + d]));
          L.v.push_back(to_float(v[(i * H + h) * D + d]));
        }
    }
  }

  void fork(std::int64_t parent, std::int64_t child) { seqs_[child] = seqs_.at(parent); }
  void free(std::int64_t seq) { seqs_.erase(seq); }

  // out[nq, Hq, D] and lse[nq, Hq] (natural log) for queries q[nq, Hq, D] at q_positions in (seq, layer).
  template <StorageType QT>
  void attention(std::int64_t seq, int layer, std::span<const QT> q,
                 std::span<const std::int32_t> q_positions, std::vector<double>& out,
                 std::vector<double>& lse, double scale = 0.0) const {
    const Layer& L = seqs_.at(seq).at(static_cast<std::size_t>(layer));
    const std::size_t Hq = shape_.num_q_heads, H = shape_.num_kv_heads, D = shape_.head_dim;
    const std::size_t g = Hq / H, nq = q_positions.size();
    if (scale == 0.0) scale = 1.0 / std::sqrt(static_cast<double>(D));
    out.assign(nq * Hq * D, 0.0);
    lse.assign(nq * Hq, -std::numeric_limits<double>::infinity());
    std::vector<double> s(L.pos.size());
    for (std::size_t i = 0; i < nq; ++i)
      for (std::size_t qh = 0; qh < Hq; ++qh) {
        const std::size_t h = qh / g;
        const HeadPolicy pol = map_.policy(layer, static_cast<int>(h));
        const std::size_t qrow = (i * Hq + qh) * D;
        double mx = -std::numeric_limits<double>::infinity();
        for (std::size_t t = 0; t < L.pos.size(); ++t) {
          if (!is_visible(pol, q_positions[i], L.pos[t])) {
            s[t] = -std::numeric_limits<double>::infinity();
            continue;
          }
          double dot = 0.0;
          for (std::size_t d = 0; d < D; ++d)
            dot += static_cast<double>(to_float(q[qrow + d])) * L.k[(t * H + h) * D + d];
          s[t] = dot * scale;
          mx = std::max(mx, s[t]);
        }
        if (mx == -std::numeric_limits<double>::infinity()) continue;
        double sum = 0.0;
        for (std::size_t t = 0; t < L.pos.size(); ++t) {
          if (s[t] == -std::numeric_limits<double>::infinity()) continue;
          const double w = std::exp(s[t] - mx);
          sum += w;
          for (std::size_t d = 0; d < D; ++d) out[qrow + d] += w * L.v[(t * H + h) * D + d];
        }
        for (std::size_t d = 0; d < D; ++d) out[qrow + d] /= sum;
        lse[i * Hq + qh] = mx + std::log(sum);
      }
  }

 private:
  struct Layer {
    std::vector<std::int32_t> pos;
    std::vector<double> k, v;  // [token][kv_head][dim]
  };
  ModelShape shape_;
  HeadMap map_;
  std::map<std::int64_t, std::vector<Layer>> seqs_;
};

}  // namespace redknot
