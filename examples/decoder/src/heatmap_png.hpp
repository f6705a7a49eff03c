// A heatmap written as an RGB PNG (zlib deflate), for per-(layer, head) profiler scores.
#pragma once

#include <string>
#include <vector>

namespace redknot::decoder {

// values[rows][cols] in [0, 1] (clamped); each value becomes a cell of cell_w x cell_h pixels, coloured on a
// dark-blue -> yellow ramp. Cells flagged in `marked` (same shape, optional) get a white border.
void write_heatmap_png(const std::string& path, const std::vector<float>& values, int rows, int cols,
                       int cell_w, int cell_h, const std::vector<bool>& marked = {});

}  // namespace redknot::decoder
