// Fuzzes the KV slice decoder (decode_slice, kv_slice.hpp) on untrusted bytes.
//
// Input: one mode byte, then the slice. Mode bit 0 makes the harness write a correct checksum into the slice
// first (when it is long enough to hold a header), so the fuzzer reaches the field checks behind the checksum
// instead of stopping there; the remaining bits pick the dtype the reader expects.
//
// Contract checked: decode_slice never throws, never reads outside the span (ASan), and either misses with a
// non-empty reason or returns a slice that satisfies every check it claims: the expected model, map, dtype,
// head_dim, layer and kv_head ranges, positions inside int32, K and V views that split the payload inside the
// input, and a header that encode_slice turns back into exactly the input bytes.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "redknot/kv_slice.hpp"

namespace {

[[noreturn]] void fail() { __builtin_trap(); }

void check(bool cond) {
  if (!cond) fail();
}

// The checksum as the format defines it: XXH3-64 of the header with its checksum field (bytes 72..79) zeroed,
// then the payload. Written little-endian at offset 72.
void fix_checksum(std::vector<std::byte>& s) {
  std::vector<std::byte> h(s.begin(), s.begin() + redknot::kSliceHeaderBytes);
  std::memset(h.data() + 72, 0, 8);
  XXH3_state_t st;
  XXH3_INITSTATE(&st);
  XXH3_64bits_reset(&st);
  XXH3_64bits_update(&st, h.data(), h.size());
  XXH3_64bits_update(&st, s.data() + redknot::kSliceHeaderBytes, s.size() - redknot::kSliceHeaderBytes);
  const std::uint64_t c = XXH3_64bits_digest(&st);
  for (int i = 0; i < 8; ++i) s[72 + static_cast<std::size_t>(i)] = static_cast<std::byte>(c >> (8 * i));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace redknot;
  if (size == 0) return 0;
  const std::uint8_t mode = data[0];
  // An exact-size copy, so ASan sees a read one byte past the slice.
  std::vector<std::byte> s(size - 1);
  if (!s.empty()) std::memcpy(s.data(), data + 1, s.size());
  if ((mode & 1) && s.size() >= kSliceHeaderBytes) fix_checksum(s);

  SliceExpect e;
  e.model_fp = 0x1111111111111111ull;
  e.map_fp = 0x2222222222222222ull;
  e.dtype = static_cast<DType>((mode >> 1) % 3);
  e.head_dim = 8;
  e.num_layers = 4;
  e.num_kv_heads = 2;
  if (mode & 8) e.key = ChunkKey{0x3333333333333333ull, 0x4444444444444444ull};

  std::string why;
  std::optional<DecodedSlice> d;
  try {
    d = decode_slice(std::span<const std::byte>(s.data(), s.size()), e, &why);
  } catch (...) {
    fail();  // untrusted bytes are a miss, never an exception
  }
  if (!d) {
    check(!why.empty());
    return 0;
  }
  const SliceHeader& h = d->header;
  check(h.model_fp == e.model_fp && h.map_fp == e.map_fp && h.dtype == e.dtype && h.head_dim == e.head_dim);
  check(h.layer >= 0 && h.layer < e.num_layers && h.kv_head >= 0 && h.kv_head < e.num_kv_heads);
  check(h.count >= 1 && h.pos0 >= 0 && h.rope_pos0 >= 0);
  check(std::int64_t{h.pos0} + h.count <= std::numeric_limits<std::int32_t>::max());
  check(std::int64_t{h.rope_pos0} + h.count <= std::numeric_limits<std::int32_t>::max());
  check(!e.key || h.key == *e.key);
  check(s.size() == kSliceHeaderBytes + h.payload_bytes());
  check(d->k.size() == h.payload_bytes() / 2 && d->v.size() == d->k.size());
  check(d->k.data() == s.data() + kSliceHeaderBytes && d->v.data() == d->k.data() + d->k.size());
  // The header is everything: encoding it with the payload gives back the input, byte for byte.
  std::vector<std::byte> payload(d->k.begin(), d->k.end());
  payload.insert(payload.end(), d->v.begin(), d->v.end());
  check(encode_slice(h, payload) == s);
  return 0;
}
