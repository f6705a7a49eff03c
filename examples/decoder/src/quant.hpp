// Block formats of ggml tensors: dequantisation for the loader, quantisation for tests that write models.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "gguf.hpp"

namespace redknot::decoder {

// Decodes n elements (a multiple of the type's block size) of raw tensor bytes into out[n].
void dequantize(GgmlType type, const std::uint8_t* src, std::int64_t n, float* out);

// Encodes x (size a multiple of the block size) the way ggml's reference quantisers do (round to nearest).
std::vector<std::uint8_t> quantize(GgmlType type, std::span<const float> x);

}  // namespace redknot::decoder
