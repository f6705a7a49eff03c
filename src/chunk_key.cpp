// make_chunk_key: XXH3-128 over a canonical byte string of everything a chunk's K/V depend on.
#include "redknot/chunk_key.hpp"

#define XXH_INLINE_ALL  // header-only use: consumers of redknot::core need no libxxhash
#include <xxhash.h>

#include <cstring>
#include <string>

#include "redknot/error.hpp"

namespace redknot {

namespace {

// Each field is length-prefixed, so no two different inputs share a byte string.
class Hasher {
 public:
  Hasher() {
    state_ = XXH3_createState();
    require<PoolExhausted>(state_ != nullptr,
                           "out of memory: make_chunk_key could not allocate its hash state");
    XXH3_128bits_reset(state_);
  }
  ~Hasher() { XXH3_freeState(state_); }
  Hasher(const Hasher&) = delete;
  Hasher& operator=(const Hasher&) = delete;

  void bytes(const void* p, std::size_t n) {
    const std::uint64_t len = n;
    XXH3_128bits_update(state_, &len, sizeof len);
    if (n > 0) XXH3_128bits_update(state_, p, n);
  }
  void i64(std::int64_t v) { bytes(&v, sizeof v); }
  ChunkKey digest() const {
    const XXH128_hash_t h = XXH3_128bits_digest(state_);
    return ChunkKey{h.high64, h.low64};
  }

 private:
  XXH3_state_t* state_ = nullptr;
};

}  // namespace

ChunkKey make_chunk_key(std::string_view model_id, const ModelShape& shape, const HeadMap& map,
                        std::span<const std::int32_t> tokens) {
  Hasher h;
  static constexpr char kDomain[] = "redknot.chunk.v1";
  h.bytes(kDomain, sizeof kDomain - 1);
  h.bytes(model_id.data(), model_id.size());
  h.i64(shape.num_layers);
  h.i64(shape.num_q_heads);
  h.i64(shape.num_kv_heads);
  h.i64(shape.head_dim);
  h.i64(static_cast<std::int64_t>(shape.dtype));
  const std::string map_json = map.to_json(-1);
  h.bytes(map_json.data(), map_json.size());
  h.bytes(tokens.data(), tokens.size_bytes());
  return h.digest();
}

std::string to_hex(const ChunkKey& key) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string s(32, '0');
  for (int i = 0; i < 16; ++i) {
    s[static_cast<std::size_t>(15 - i)] = kDigits[(key.hi >> (4 * i)) & 0xf];
    s[static_cast<std::size_t>(31 - i)] = kDigits[(key.lo >> (4 * i)) & 0xf];
  }
  return s;
}

ChunkKey parse_chunk_key(std::string_view hex) {
  require(hex.size() == 32, "chunk key '", hex.substr(0, 64), "' must be 32 hex digits (got ", hex.size(),
          ")");
  ChunkKey k;
  for (std::size_t i = 0; i < 32; ++i) {
    const char c = hex[i];
    int d = -1;
    if (c >= '0' && c <= '9') d = c - '0';
    if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
    require(d >= 0, "chunk key '", hex, "': character ", i, " ('", c, "') is not a hex digit");
    std::uint64_t& part = i < 16 ? k.hi : k.lo;
    part = (part << 4) | static_cast<std::uint64_t>(d);
  }
  return k;
}

}  // namespace redknot
