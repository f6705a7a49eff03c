#include "attention_probe.hpp"

#include <algorithm>
#include <cmath>

#include "redknot/error.hpp"
#include "redknot/visibility.hpp"

namespace redknot::decoder {

AttentionProbe::AttentionProbe(const LlamaConfig& c, ProbeConfig cfg) : c_(c), cfg_(std::move(cfg)) {
  keys_.resize(static_cast<std::size_t>(c.n_layers));
  values_.resize(static_cast<std::size_t>(c.n_layers));
  edge_sum_.assign(static_cast<std::size_t>(c.n_layers) * c.n_kv_heads, 0.0);
  out_err_sum_.assign(edge_sum_.size(), 0.0);
  edge_count_.assign(edge_sum_.size(), 0);
  require(std::is_sorted(cfg_.curve_windows.begin(), cfg_.curve_windows.end()) &&
              (cfg_.curve_windows.empty() || cfg_.curve_windows.front() >= 1),
          "probe: curve_windows must be ascending and >= 1");
  curve_sum_.assign(edge_sum_.size() * cfg_.curve_windows.size(), 0.0);
  span_sum_.assign(edge_sum_.size(), 0.0);
  if (cfg_.keep_rows) kept_.assign(static_cast<std::size_t>(c.n_layers) * c.n_heads, {});
}

void AttentionProbe::on_qkv(int layer, std::span<const std::int32_t> positions, std::span<const float> q,
                            std::span<const float> k, std::span<const float> v) {
  const int Hq = c_.n_heads, Hk = c_.n_kv_heads, D = c_.head_dim, g = Hq / Hk;
  auto& K = keys_[static_cast<std::size_t>(layer)];
  require(K.size() == static_cast<std::size_t>(positions[0]) * Hk * D,
          "probe: forward calls must start at position 0 and be contiguous");
  K.insert(K.end(), k.begin(), k.end());
  auto& Vs = values_[static_cast<std::size_t>(layer)];
  Vs.insert(Vs.end(), v.begin(), v.end());
  std::vector<double> o_full(static_cast<std::size_t>(D)), o_loc(static_cast<std::size_t>(D));
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  std::vector<float> s;
  for (std::size_t i = 0; i < positions.size(); ++i) {
    const std::int32_t p = positions[i];
    if (!std::binary_search(cfg_.rows.begin(), cfg_.rows.end(), p)) continue;
    const auto r =
        static_cast<std::size_t>(std::lower_bound(cfg_.rows.begin(), cfg_.rows.end(), p) - cfg_.rows.begin());
    const std::size_t nW = cfg_.curve_windows.size();
    std::vector<double> group_edge(static_cast<std::size_t>(Hk), 0.0),
        group_err(static_cast<std::size_t>(Hk), 0.0), group_span(static_cast<std::size_t>(Hk), 0.0),
        group_curve(static_cast<std::size_t>(Hk) * nW, 0.0);
    for (int h = 0; h < Hq; ++h) {
      const int kh = h / g;
      const float* qr = q.data() + (i * static_cast<std::size_t>(Hq) + static_cast<std::size_t>(h)) * D;
      s.resize(static_cast<std::size_t>(p) + 1);
      float mx = -INFINITY;
      for (std::int32_t j = 0; j <= p; ++j) {
        const float* kr = K.data() + (static_cast<std::size_t>(j) * Hk + static_cast<std::size_t>(kh)) * D;
        float dot = 0.f;
        for (int d = 0; d < D; ++d) dot += qr[d] * kr[d];
        s[static_cast<std::size_t>(j)] = dot * scale;
        mx = std::max(mx, s[static_cast<std::size_t>(j)]);
      }
      double total = 0;
      for (auto& x : s) {
        x = std::exp(x - mx);
        total += x;
      }
      // Mass the local policy hides: positions between its sink and its window.
      const HeadPolicy local{HeadClass::kLocal, cfg_.window, cfg_.sink};
      double edge = 0;
      for (std::int32_t j = 0; j <= p; ++j)
        if (!is_visible(local, p, j)) edge += s[static_cast<std::size_t>(j)];
      group_edge[static_cast<std::size_t>(kh)] =
          std::max(group_edge[static_cast<std::size_t>(kh)], edge / total);
      std::fill(o_full.begin(), o_full.end(), 0.0);
      std::fill(o_loc.begin(), o_loc.end(), 0.0);
      double kept = 0;
      for (std::int32_t j = 0; j <= p; ++j) {
        const double pj = s[static_cast<std::size_t>(j)];
        const bool visible = is_visible(local, p, j);
        const float* vr = Vs.data() + (static_cast<std::size_t>(j) * Hk + static_cast<std::size_t>(kh)) * D;
        for (int d = 0; d < D; ++d) o_full[static_cast<std::size_t>(d)] += pj * vr[d];
        if (!visible) continue;
        kept += pj;
        for (int d = 0; d < D; ++d) o_loc[static_cast<std::size_t>(d)] += pj * vr[d];
      }
      double diff = 0, norm = 0;
      for (int d = 0; d < D; ++d) {
        const double a = o_full[static_cast<std::size_t>(d)] / total,
                     b = o_loc[static_cast<std::size_t>(d)] / kept;
        diff += (a - b) * (a - b);
        norm += a * a;
      }
      const double err = norm > 0 ? std::sqrt(diff / norm) : 0.0;
      group_err[static_cast<std::size_t>(kh)] = std::max(group_err[static_cast<std::size_t>(kh)], err);
      if (nW > 0 && norm > 0) {
        // Grow the recent part from the query backwards; the sink part is always visible. When window w
        // covers everything past the sink the head is exact (error 0).
        std::vector<double> o_part(static_cast<std::size_t>(D), 0.0);
        double kept_part = 0;
        for (std::int32_t j = 0; j < std::min(cfg_.sink, p + 1); ++j) {
          const double pj = s[static_cast<std::size_t>(j)];
          const float* vr = Vs.data() + (static_cast<std::size_t>(j) * Hk + static_cast<std::size_t>(kh)) * D;
          kept_part += pj;
          for (int d = 0; d < D; ++d) o_part[static_cast<std::size_t>(d)] += pj * vr[d];
        }
        std::size_t w = 0;
        std::int32_t j = p;
        for (std::int32_t count = 1; w < nW && j >= cfg_.sink; ++count, --j) {
          const double pj = s[static_cast<std::size_t>(j)];
          const float* vr = Vs.data() + (static_cast<std::size_t>(j) * Hk + static_cast<std::size_t>(kh)) * D;
          kept_part += pj;
          for (int d = 0; d < D; ++d) o_part[static_cast<std::size_t>(d)] += pj * vr[d];
          for (; w < nW && cfg_.curve_windows[w] == count; ++w) {
            double dd = 0;
            for (int d = 0; d < D; ++d) {
              const double a = o_full[static_cast<std::size_t>(d)] / total,
                           b = o_part[static_cast<std::size_t>(d)] / kept_part;
              dd += (a - b) * (a - b);
            }
            auto& g = group_curve[static_cast<std::size_t>(kh) * nW + w];
            g = std::max(g, std::sqrt(dd / norm));
          }
        }
        // Windows left over see every key: error 0 (already).
      }
      if (cfg_.span_begin >= 0) {
        double m = 0;
        for (std::int32_t j = std::max(0, cfg_.span_begin); j < std::min(cfg_.span_end, p + 1); ++j)
          m += s[static_cast<std::size_t>(j)];
        group_span[static_cast<std::size_t>(kh)] =
            std::max(group_span[static_cast<std::size_t>(kh)], m / total);
      }
      if (cfg_.keep_rows) {
        auto& rows = kept_[static_cast<std::size_t>(layer) * Hq + static_cast<std::size_t>(h)];
        rows.resize(cfg_.rows.size());
        rows[r].assign(s.begin() + cfg_.key_begin, s.end());
        for (auto& x : rows[r]) x = static_cast<float>(x / total);
      }
    }
    for (int kh = 0; kh < Hk; ++kh) {
      edge_sum_[static_cast<std::size_t>(layer) * Hk + static_cast<std::size_t>(kh)] +=
          group_edge[static_cast<std::size_t>(kh)];
      out_err_sum_[static_cast<std::size_t>(layer) * Hk + static_cast<std::size_t>(kh)] +=
          group_err[static_cast<std::size_t>(kh)];
      ++edge_count_[static_cast<std::size_t>(layer) * Hk + static_cast<std::size_t>(kh)];
      span_sum_[static_cast<std::size_t>(layer) * Hk + static_cast<std::size_t>(kh)] +=
          group_span[static_cast<std::size_t>(kh)];
      for (std::size_t w = 0; w < nW; ++w)
        curve_sum_[(static_cast<std::size_t>(layer) * Hk + static_cast<std::size_t>(kh)) * nW + w] +=
            group_curve[static_cast<std::size_t>(kh) * nW + w];
    }
  }
}

std::vector<double> AttentionProbe::edge_mass() const {
  std::vector<double> m(edge_sum_.size(), 0.0);
  for (std::size_t i = 0; i < m.size(); ++i) m[i] = edge_count_[i] ? edge_sum_[i] / edge_count_[i] : 0.0;
  return m;
}

std::vector<double> AttentionProbe::output_error() const {
  std::vector<double> m(out_err_sum_.size(), 0.0);
  for (std::size_t i = 0; i < m.size(); ++i) m[i] = edge_count_[i] ? out_err_sum_[i] / edge_count_[i] : 0.0;
  return m;
}

std::vector<std::vector<double>> AttentionProbe::error_curve() const {
  const std::size_t nW = cfg_.curve_windows.size();
  std::vector<std::vector<double>> m(edge_sum_.size(), std::vector<double>(nW, 0.0));
  for (std::size_t i = 0; i < m.size(); ++i)
    for (std::size_t w = 0; w < nW; ++w)
      m[i][w] = edge_count_[i] ? curve_sum_[i * nW + w] / edge_count_[i] : 0.0;
  return m;
}

std::vector<double> AttentionProbe::span_mass() const {
  std::vector<double> m(span_sum_.size(), 0.0);
  for (std::size_t i = 0; i < m.size(); ++i) m[i] = edge_count_[i] ? span_sum_[i] / edge_count_[i] : 0.0;
  return m;
}

const std::vector<float>& AttentionProbe::row(int layer, int q_head, std::size_t r) const {
  return kept_.at(static_cast<std::size_t>(layer) * c_.n_heads + static_cast<std::size_t>(q_head)).at(r);
}

std::vector<double> prefix_shift(const AttentionProbe& alone, const AttentionProbe& behind,
                                 const LlamaConfig& c) {
  require(alone.num_rows() == behind.num_rows(), "prefix_shift: probes kept different row counts");
  const int g = c.n_heads / c.n_kv_heads;
  std::vector<double> out(static_cast<std::size_t>(c.n_layers) * c.n_kv_heads, 0.0);
  for (int l = 0; l < c.n_layers; ++l)
    for (int kh = 0; kh < c.n_kv_heads; ++kh) {
      double sum = 0;
      for (std::size_t r = 0; r < alone.num_rows(); ++r) {
        double worst = 0;
        for (int j = 0; j < g; ++j) {
          const auto& a = alone.row(l, kh * g + j, r);
          const auto& b = behind.row(l, kh * g + j, r);
          require(a.size() == b.size(), "prefix_shift: row ", r, " covers ", a.size(), " vs ", b.size(),
                  " keys");
          double ab = 0, aa = 0, bb = 0;
          for (std::size_t t = 0; t < a.size(); ++t) {
            ab += static_cast<double>(a[t]) * b[t];
            aa += static_cast<double>(a[t]) * a[t];
            bb += static_cast<double>(b[t]) * b[t];
          }
          const double cosv = (aa > 0 && bb > 0) ? ab / std::sqrt(aa * bb) : 1.0;
          worst = std::max(worst, std::clamp(1.0 - cosv, 0.0, 1.0));
        }
        sum += worst;
      }
      out[static_cast<std::size_t>(l) * c.n_kv_heads + static_cast<std::size_t>(kh)] =
          alone.num_rows() ? sum / static_cast<double>(alone.num_rows()) : 0.0;
    }
  return out;
}

}  // namespace redknot::decoder
