// Content addresses of precomputed chunks (position-independent KV reuse).
//
// A chunk's K/V depend on the model (weights, RoPE), the head map, the storage dtype and the token ids, and
// on nothing else when the chunk is computed alone at positions 0..n-1. Its key is the 128-bit XXH3 hash of
// all of them, so the same document tokenised the same way finds its KV whatever request it comes back in,
// and a store never serves KV computed for another model, map or dtype under the same key.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>

#include "redknot/head_map.hpp"
#include "redknot/model_shape.hpp"
#include "redknot/store_types.hpp"

namespace redknot {

// XXH3-128 of (model_id, shape incl. dtype, head map, tokens). model_id is the engine's name for the weights
// (e.g. path and revision): two models of one shape must not share keys. src/chunk_key.cpp.
ChunkKey make_chunk_key(std::string_view model_id, const ModelShape& shape, const HeadMap& map,
                        std::span<const std::int32_t> tokens);

// 32 lowercase hex digits (hi then lo), and back; parse_chunk_key throws InvalidArgument on anything else.
std::string to_hex(const ChunkKey& key);
ChunkKey parse_chunk_key(std::string_view hex);

}  // namespace redknot
