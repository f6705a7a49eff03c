#include "heatmap_png.hpp"

#include <zlib.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <fstream>

#include "redknot/error.hpp"

namespace redknot::decoder {

namespace {

void put_u32be(std::vector<std::uint8_t>& out, std::uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<std::uint8_t>(v >> s));
}

void chunk(std::vector<std::uint8_t>& out, const char* type, const std::vector<std::uint8_t>& data) {
  put_u32be(out, static_cast<std::uint32_t>(data.size()));
  const std::size_t start = out.size();
  out.insert(out.end(), type, type + 4);
  out.insert(out.end(), data.begin(), data.end());
  const uLong crc = crc32(0, out.data() + start, static_cast<uInt>(out.size() - start));
  put_u32be(out, static_cast<std::uint32_t>(crc));
}

// A perceptually ordered ramp (close to viridis at its control points).
std::array<std::uint8_t, 3> colour(float v) {
  static constexpr float kStops[5][3] = {
      {68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}};
  v = std::clamp(v, 0.f, 1.f) * 4.f;
  const int i = std::min(3, static_cast<int>(v));
  const float t = v - static_cast<float>(i);
  std::array<std::uint8_t, 3> c{};
  for (int k = 0; k < 3; ++k)
    c[static_cast<std::size_t>(k)] =
        static_cast<std::uint8_t>(kStops[i][k] + t * (kStops[i + 1][k] - kStops[i][k]));
  return c;
}

}  // namespace

void write_heatmap_png(const std::string& path, const std::vector<float>& values, int rows, int cols,
                       int cell_w, int cell_h, const std::vector<bool>& marked) {
  require(rows > 0 && cols > 0 && values.size() == static_cast<std::size_t>(rows) * cols,
          "heatmap: values has ", values.size(), " entries, expected rows*cols = ", rows, "*", cols);
  const int w = cols * cell_w, h = rows * cell_h;
  std::vector<std::uint8_t> raw;
  raw.reserve(static_cast<std::size_t>(h) * (1 + 3 * static_cast<std::size_t>(w)));
  for (int y = 0; y < h; ++y) {
    raw.push_back(0);  // filter: none
    const int r = y / cell_h, cy = y % cell_h;
    for (int x = 0; x < w; ++x) {
      const int c = x / cell_w, cx = x % cell_w;
      const std::size_t i = static_cast<std::size_t>(r) * cols + c;
      std::array<std::uint8_t, 3> px = colour(values[i]);
      const bool edge = cx == 0 || cy == 0 || cx == cell_w - 1 || cy == cell_h - 1;
      if (!marked.empty() && marked[i] && edge)
        px = {255, 255, 255};
      else if (edge && cell_w > 4 && cell_h > 4 && (cx == 0 || cy == 0))
        px = {20, 20, 20};  // grid lines
      raw.insert(raw.end(), px.begin(), px.end());
    }
  }
  uLongf zlen = compressBound(static_cast<uLong>(raw.size()));
  std::vector<std::uint8_t> z(zlen);
  require(compress2(z.data(), &zlen, raw.data(), static_cast<uLong>(raw.size()), 9) == Z_OK,
          "heatmap: zlib compression failed");
  z.resize(zlen);

  std::vector<std::uint8_t> png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  std::vector<std::uint8_t> ihdr;
  put_u32be(ihdr, static_cast<std::uint32_t>(w));
  put_u32be(ihdr, static_cast<std::uint32_t>(h));
  ihdr.insert(ihdr.end(), {8, 2, 0, 0, 0});  // 8-bit RGB, deflate, no filter, no interlace
  chunk(png, "IHDR", ihdr);
  chunk(png, "IDAT", z);
  chunk(png, "IEND", {});
  std::ofstream f(path, std::ios::binary);
  require(static_cast<bool>(f), "heatmap: cannot create '", path, "'");
  f.write(reinterpret_cast<const char*>(png.data()), static_cast<std::streamsize>(png.size()));
}

}  // namespace redknot::decoder
