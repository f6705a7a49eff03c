#include "window_allocation.hpp"

#include <algorithm>

#include "redknot/error.hpp"

namespace redknot::decoder {

WindowAllocation allocate_windows(const std::vector<std::vector<double>>& curves,
                                  const std::vector<int>& windows, const std::vector<bool>& fixed_global,
                                  std::int64_t budget_pages,
                                  const std::function<std::int64_t(std::size_t, int)>& cost) {
  require(!windows.empty(), "allocate_windows: windows must not be empty");
  require(std::is_sorted(windows.begin(), windows.end()) && windows.front() >= 1,
          "allocate_windows: windows must be ascending and >= 1, first is ", windows.front());
  require(curves.size() == fixed_global.size(), "allocate_windows: curves has ", curves.size(),
          " heads but fixed_global has ", fixed_global.size());
  const std::size_t n = curves.size(), nW = windows.size();
  for (std::size_t i = 0; i < n; ++i)
    require(fixed_global[i] || curves[i].size() == nW, "allocate_windows: curve of head ", i, " has ",
            curves[i].size(), " points, windows has ", nW);

  std::vector<std::size_t> at(n, 0);
  WindowAllocation a;
  a.window.assign(n, -1);
  for (std::size_t i = 0; i < n; ++i)
    if (!fixed_global[i]) a.pages += cost(i, windows[0]);
  require(a.pages <= budget_pages, "allocate_windows: budget_pages=", budget_pages, " is below the ", a.pages,
          " pages every local head needs at window ", windows[0]);

  // Greedy: repeatedly take the upgrade (head i from its window to any larger one) with the best error
  // removed per extra page that still fits. Considering every larger window, not only the next one, steps
  // over flat parts of a curve (a head whose error only drops once its window reaches a far-back feature).
  for (;;) {
    double best_gain = 0;
    std::size_t best_i = n, best_k = 0;
    std::int64_t best_dc = 0;
    for (std::size_t i = 0; i < n; ++i) {
      if (fixed_global[i]) continue;
      const std::int64_t c0 = cost(i, windows[at[i]]);
      for (std::size_t k = at[i] + 1; k < nW; ++k) {
        const std::int64_t dc = cost(i, windows[k]) - c0;
        const double de = curves[i][at[i]] - curves[i][k];
        if (de <= 0 || a.pages + dc > budget_pages) continue;
        const double gain = dc > 0 ? de / static_cast<double>(dc) : de * 1e30;  // free upgrades first
        if (gain > best_gain) {
          best_gain = gain;
          best_i = i;
          best_k = k;
          best_dc = dc;
        }
      }
    }
    if (best_i == n) break;
    at[best_i] = best_k;
    a.pages += best_dc;
  }
  for (std::size_t i = 0; i < n; ++i)
    if (!fixed_global[i]) {
      a.window[i] = windows[at[i]];
      a.error += curves[i][at[i]];
    }
  return a;
}

}  // namespace redknot::decoder
