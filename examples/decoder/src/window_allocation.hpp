// Per-head window sizes under a KV budget, for the head profiler.
//
// A uniform window spends the same KV on every local head although heads differ widely in how far back they
// read: a previous-token head loses nothing at 64 positions, a diffuse head still loses output at 1024. Given
// each head's measured output error as a function of its window, allocate_windows() spends a page budget
// where it removes the most error per page (greedy on marginal gain, looking past flat stretches of a curve).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

namespace redknot::decoder {

struct WindowAllocation {
  std::vector<int> window;  // per head; -1 for heads that were not local (fixed_global)
  std::int64_t pages = 0;   // pages the local heads hold in total, by `cost`
  double error = 0;         // sum over local heads of the curve value at the chosen window
};

// curves[i][k]: error of head i with window windows[k] (windows ascending, curves non-increasing in
// practice but not required). Heads with fixed_global[i] are skipped. cost(i, w): pages head i holds at the
// budget's context length with window w. Every local head starts at windows[0]; throws InvalidArgument when
// even that exceeds budget_pages.
WindowAllocation allocate_windows(const std::vector<std::vector<double>>& curves,
                                  const std::vector<int>& windows, const std::vector<bool>& fixed_global,
                                  std::int64_t budget_pages,
                                  const std::function<std::int64_t(std::size_t, int)>& cost);

}  // namespace redknot::decoder
