// The oracle: naive dense attention over a shadow copy of everything ever appended, masked by the canonical
// rule (visibility.hpp) and accumulated in fp64. It shares nothing with the store but HeadMap and
// is_visible() (and, for spliced chunks, the RoPE frequencies), so eviction, paging, forks, splices and the
// fast paths are all checked against it. It keeps every
// token: test sizes only.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <span>
#include <stdexcept>
#include <vector>

#include "redknot/dtype.hpp"
#include "redknot/error.hpp"
#include "redknot/head_map.hpp"
#include "redknot/model_shape.hpp"
#include "redknot/rope.hpp"
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

  // Chunk reuse: `seq` (positions 0..n-1) becomes chunk `chunk`; splice() adds the chunk's rows to `dst` at
  // positions at + j with each key as it is at its true position: rotated by `at` from the position it was
  // computed for (fp64, cos/sin of at * inv_freq[i] on the RoPE pairs of `rope`). Splice and relocate are the
  // same keys to the oracle.
  void take_chunk(std::int64_t seq, std::int64_t chunk) {
    chunks_[chunk] = seqs_.at(seq);
    seqs_.erase(seq);
  }
  void splice(std::int64_t dst, std::int64_t chunk, std::int32_t at, const RopeConfig* rope) {
    auto& layers = seqs_[dst];
    if (layers.empty()) layers.resize(static_cast<std::size_t>(shape_.num_layers));
    const std::size_t H = shape_.num_kv_heads, D = shape_.head_dim;
    const std::vector<Layer>& c = chunks_.at(chunk);
    std::vector<double> cs, sn;
    if (at != 0) {
      if (!rope) throw std::logic_error("oracle: a splice at another offset needs a RoPE spec");
      for (double f : rope_inv_freq(*rope)) {
        cs.push_back(std::cos(static_cast<double>(at) * f));
        sn.push_back(std::sin(static_cast<double>(at) * f));
      }
    }
    const int half = static_cast<int>(cs.size());
    for (std::size_t l = 0; l < c.size(); ++l) {
      Layer& L = layers[l];
      for (std::size_t t = 0; t < c[l].pos.size(); ++t) {
        L.pos.push_back(c[l].pos[t] + at);
        for (std::size_t h = 0; h < H; ++h) {
          const std::size_t row = (t * H + h) * D;
          std::vector<double> k(c[l].k.begin() + static_cast<std::ptrdiff_t>(row),
                                c[l].k.begin() + static_cast<std::ptrdiff_t>(row + D));
          for (int i = 0; i < half; ++i) {  // pair i: (i, i + half) or (2i, 2i + 1)
            const bool interleaved = rope->pairing == RopePairing::kInterleaved;
            const std::size_t a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
            const double x = k[a], y = k[b];
            k[a] = x * cs[static_cast<std::size_t>(i)] - y * sn[static_cast<std::size_t>(i)];
            k[b] = x * sn[static_cast<std::size_t>(i)] + y * cs[static_cast<std::size_t>(i)];
          }
          L.k.insert(L.k.end(), k.begin(), k.end());
          L.v.insert(L.v.end(), c[l].v.begin() + static_cast<std::ptrdiff_t>(row),
                     c[l].v.begin() + static_cast<std::ptrdiff_t>(row + D));
        }
      }
    }
  }

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
  std::map<std::int64_t, std::vector<Layer>> chunks_;
};

}  // namespace redknot
