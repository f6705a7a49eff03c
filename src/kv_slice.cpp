// Serialised KV slices: the header's byte layout, its checksum and the checks a reader makes, and the
// selective-fetch arithmetic (include/redknot/kv_slice.hpp).
#include "redknot/kv_slice.hpp"

#define XXH_INLINE_ALL  // header-only use: consumers of redknot::core need no libxxhash
#include <xxhash.h>

#include <limits>

#include "little_endian.hpp"
#include "redknot/visibility.hpp"

namespace redknot {

namespace {

// Byte offsets of the header fields (docs/design.md has the table). Every field is written and read byte by
// byte, little-endian, so the layout is the same on every host and compiler.
namespace off {
constexpr std::size_t kMagic = 0, kVersion = 4, kDType = 6, kReserved = 7, kModel = 8, kMap = 16,
                      kHeadDim = 24, kLayer = 28, kKvHead = 32, kPos0 = 36, kCount = 40, kRopePos0 = 44,
                      kKeyHi = 48, kKeyLo = 56, kPayload = 64, kChecksum = 72;
}  // namespace off
static_assert(off::kChecksum + 8 == kSliceHeaderBytes);

using le::get;
using le::put;

// XXH3-64 of the header with its checksum field zeroed, then the payload.
std::uint64_t checksum(const std::byte* header, std::span<const std::byte> payload) {
  std::byte h[kSliceHeaderBytes];
  std::memcpy(h, header, kSliceHeaderBytes);
  put<std::uint64_t>(h + off::kChecksum, 0);
  XXH3_state_t state;
  XXH3_INITSTATE(&state);
  XXH3_64bits_reset(&state);
  XXH3_64bits_update(&state, h, kSliceHeaderBytes);
  if (!payload.empty()) XXH3_64bits_update(&state, payload.data(), payload.size());
  return XXH3_64bits_digest(&state);
}

std::uint64_t hash64(std::string_view domain, std::string_view text) {
  XXH3_state_t state;
  XXH3_INITSTATE(&state);
  XXH3_64bits_reset(&state);
  XXH3_64bits_update(&state, domain.data(), domain.size());
  XXH3_64bits_update(&state, text.data(), text.size());
  return XXH3_64bits_digest(&state);
}

// A miss: the reason goes to *why, the caller gets nullopt.
template <class... Args>
std::nullopt_t miss(std::string* why, const Args&... args) {
  if (why != nullptr) *why = detail::concat("slice: ", args...);
  return std::nullopt;
}

std::string hex64(std::uint64_t v) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string s = "0x0000000000000000";
  for (int i = 0; i < 16; ++i) s[static_cast<std::size_t>(17 - i)] = kDigits[(v >> (4 * i)) & 0xf];
  return s;
}

constexpr std::int64_t kMaxPos = std::numeric_limits<std::int32_t>::max();

}  // namespace

std::uint64_t model_fingerprint(std::string_view model_id) {
  // The domain tag is length-free: model_id is the only other input.
  return hash64("redknot.model.v1:", model_id);
}

std::uint64_t head_map_fingerprint(const HeadMap& map) {
  return hash64("redknot.head_map.v1:", map.to_json(-1));
}

std::vector<std::byte> encode_slice(const SliceHeader& h, std::span<const std::byte> payload) {
  require(h.dtype == DType::kF32 || h.dtype == DType::kF16 || h.dtype == DType::kBF16,
          "encode_slice: dtype code ", static_cast<int>(h.dtype), " is not f32, f16 or bf16");
  require(h.head_dim > 0, "encode_slice: head_dim=", h.head_dim, " must be > 0");
  require(h.layer >= 0 && h.kv_head >= 0, "encode_slice: layer=", h.layer, " and kv_head=", h.kv_head,
          " must be >= 0");
  require(h.count > 0, "encode_slice: count=", h.count, " must be > 0");
  require(h.pos0 >= 0 && h.rope_pos0 >= 0 && std::int64_t{h.pos0} + h.count <= kMaxPos &&
              std::int64_t{h.rope_pos0} + h.count <= kMaxPos,
          "encode_slice: positions [", h.pos0, ", +", h.count, ") rotated for [", h.rope_pos0, ", +", h.count,
          ") must lie in [0, ", kMaxPos, ")");
  require(payload.size() == h.payload_bytes(), "encode_slice: payload has ", payload.size(),
          " bytes, expected 2*count*head_dim*", dtype_size(h.dtype), " = ", h.payload_bytes());
  std::vector<std::byte> out(kSliceHeaderBytes + payload.size());
  std::byte* p = out.data();
  put<std::uint32_t>(p + off::kMagic, kSliceMagic);
  put<std::uint16_t>(p + off::kVersion, kSliceVersion);
  put<std::uint8_t>(p + off::kDType, static_cast<std::uint8_t>(h.dtype));
  put<std::uint8_t>(p + off::kReserved, 0);
  put<std::uint64_t>(p + off::kModel, h.model_fp);
  put<std::uint64_t>(p + off::kMap, h.map_fp);
  put<std::uint32_t>(p + off::kHeadDim, static_cast<std::uint32_t>(h.head_dim));
  put<std::uint32_t>(p + off::kLayer, static_cast<std::uint32_t>(h.layer));
  put<std::uint32_t>(p + off::kKvHead, static_cast<std::uint32_t>(h.kv_head));
  put<std::uint32_t>(p + off::kPos0, static_cast<std::uint32_t>(h.pos0));
  put<std::uint32_t>(p + off::kCount, static_cast<std::uint32_t>(h.count));
  put<std::uint32_t>(p + off::kRopePos0, static_cast<std::uint32_t>(h.rope_pos0));
  put<std::uint64_t>(p + off::kKeyHi, h.key.hi);
  put<std::uint64_t>(p + off::kKeyLo, h.key.lo);
  put<std::uint64_t>(p + off::kPayload, payload.size());
  if (!payload.empty()) std::memcpy(p + kSliceHeaderBytes, payload.data(), payload.size());
  put<std::uint64_t>(p + off::kChecksum, checksum(p, payload));
  return out;
}

std::optional<DecodedSlice> decode_slice(std::span<const std::byte> bytes, const SliceExpect& expect,
                                         std::string* why) {
  // Structure first: nothing below reads beyond kSliceHeaderBytes + payload length, both checked here.
  if (bytes.size() < kSliceHeaderBytes)
    return miss(why, "truncated: ", bytes.size(), " bytes, a header alone is ", kSliceHeaderBytes);
  const std::byte* p = bytes.data();
  if (const auto m = get<std::uint32_t>(p + off::kMagic); m != kSliceMagic)
    return miss(why, "magic ", hex64(m), " is not ", hex64(kSliceMagic), " (not a redknot slice)");
  if (const auto v = get<std::uint16_t>(p + off::kVersion); v != kSliceVersion)
    return miss(why, "format version ", v, " is not ", kSliceVersion);
  if (const auto r = get<std::uint8_t>(p + off::kReserved); r != 0)
    return miss(why, "reserved byte is ", static_cast<int>(r), ", not 0");
  const auto payload_len = get<std::uint64_t>(p + off::kPayload);
  if (payload_len != bytes.size() - kSliceHeaderBytes)
    return miss(why, "payload length ", payload_len, " does not match the ", bytes.size() - kSliceHeaderBytes,
                " bytes after the header (truncated or trailing bytes)");
  const auto payload = bytes.subspan(kSliceHeaderBytes);
  if (const auto c = get<std::uint64_t>(p + off::kChecksum); c != checksum(p, payload))
    return miss(why, "checksum ", hex64(c), " does not match the bytes (corrupt)");

  // Intact: now whether it is the KV this reader asked for.
  SliceHeader h;
  h.model_fp = get<std::uint64_t>(p + off::kModel);
  h.map_fp = get<std::uint64_t>(p + off::kMap);
  if (h.model_fp != expect.model_fp)
    return miss(why, "model fingerprint ", hex64(h.model_fp), " is not the expected ",
                hex64(expect.model_fp));
  if (h.map_fp != expect.map_fp)
    return miss(why, "head map fingerprint ", hex64(h.map_fp), " is not the expected ", hex64(expect.map_fp));
  const auto dt = get<std::uint8_t>(p + off::kDType);
  if (dt != static_cast<std::uint8_t>(expect.dtype))
    return miss(why, "dtype code ", static_cast<int>(dt), " is not the expected ", dtype_name(expect.dtype),
                " (", static_cast<int>(expect.dtype), ")");
  h.dtype = expect.dtype;
  // Fields are read as int32 (two's complement) so a huge unsigned value is a negative, rejected number.
  h.head_dim = get<std::int32_t>(p + off::kHeadDim);
  h.layer = get<std::int32_t>(p + off::kLayer);
  h.kv_head = get<std::int32_t>(p + off::kKvHead);
  h.pos0 = get<std::int32_t>(p + off::kPos0);
  h.count = get<std::int32_t>(p + off::kCount);
  h.rope_pos0 = get<std::int32_t>(p + off::kRopePos0);
  h.key = ChunkKey{get<std::uint64_t>(p + off::kKeyHi), get<std::uint64_t>(p + off::kKeyLo)};
  if (h.head_dim != expect.head_dim)
    return miss(why, "head_dim ", h.head_dim, " is not the expected ", expect.head_dim);
  if (h.layer < 0 || h.layer >= expect.num_layers)
    return miss(why, "layer ", h.layer, " out of range [0, ", expect.num_layers, ")");
  if (h.kv_head < 0 || h.kv_head >= expect.num_kv_heads)
    return miss(why, "kv_head ", h.kv_head, " out of range [0, ", expect.num_kv_heads, ")");
  if (h.count < 1) return miss(why, "count ", h.count, " must be >= 1");
  if (h.pos0 < 0 || std::int64_t{h.pos0} + h.count > kMaxPos)
    return miss(why, "positions [", h.pos0, ", +", h.count, ") out of range [0, ", kMaxPos, ")");
  if (h.rope_pos0 < 0 || std::int64_t{h.rope_pos0} + h.count > kMaxPos)
    return miss(why, "rope positions [", h.rope_pos0, ", +", h.count, ") out of range [0, ", kMaxPos, ")");
  // head_dim is the expected (sane) one and count < 2^31, so this product cannot overflow 64 bits.
  if (payload_len != h.payload_bytes())
    return miss(why, "payload length ", payload_len, " is not 2*count*head_dim*", dtype_size(h.dtype), " = ",
                h.payload_bytes());
  if (expect.key && !(h.key == *expect.key))
    return miss(why, "chunk key ", to_hex(h.key), " is not the expected ", to_hex(*expect.key));
  const std::size_t half = payload.size() / 2;
  return DecodedSlice{h, payload.first(half), payload.subspan(half)};
}

std::vector<PositionRange> needed_positions(const HeadPolicy& p, std::int32_t n, std::int32_t first_query) {
  require(n >= 0, "needed_positions: n=", n, " must be >= 0");
  require(first_query >= 0 && first_query <= n, "needed_positions: first_query=", first_query,
          " must be in [0, ", n, "]");
  // What the store keeps after splice(..., first_query): k < retained_sink_end or k >= retained_window_begin.
  const std::int64_t sink_end = std::min<std::int64_t>(retained_sink_end(p), n);
  const std::int64_t win_begin = std::max<std::int64_t>(retained_window_begin(p, first_query), sink_end);
  std::vector<PositionRange> out;
  if (win_begin <= sink_end) {  // one range: the window reaches the sink (or the head is global-like)
    if (n > 0) out.push_back({0, n});
    return out;
  }
  if (sink_end > 0) out.push_back({0, static_cast<std::int32_t>(sink_end)});
  if (win_begin < n) out.push_back({static_cast<std::int32_t>(win_begin), n});
  return out;
}

FetchEstimate estimate_fetch(const HeadMap& map, std::int32_t head_dim, DType dtype, std::int32_t n,
                             std::int32_t first_query, std::int32_t slice_rows) {
  map.validate();
  require(head_dim > 0, "estimate_fetch: head_dim=", head_dim, " must be > 0");
  require(slice_rows >= 0, "estimate_fetch: slice_rows=", slice_rows,
          " must be >= 0 (0: one slice per head)");
  const std::int64_t row_bytes = 2 * std::int64_t{head_dim} * static_cast<std::int64_t>(dtype_size(dtype));
  const std::int64_t g = slice_rows == 0 ? std::max<std::int32_t>(n, 1) : slice_rows;
  FetchEstimate f;
  for (int l = 0; l < map.num_layers(); ++l)
    for (int h = 0; h < map.num_kv_heads(); ++h) {
      const auto ranges = needed_positions(map.policy(l, h), n, first_query);
      f.dense_bytes += n * row_bytes;
      for (const PositionRange& r : ranges) f.needed_rows += r.size();
      // Slice j holds [j*g, min((j+1)*g, n)): fetched when it overlaps a needed range.
      for (std::int64_t b = 0; b < n; b += g) {
        const std::int64_t e = std::min<std::int64_t>(b + g, n);
        const bool needed = std::any_of(ranges.begin(), ranges.end(),
                                        [&](const PositionRange& r) { return r.begin < e && b < r.end; });
        if (!needed) continue;
        ++f.fetched_slices;
        f.fetched_bytes += static_cast<std::int64_t>(kSliceHeaderBytes) + (e - b) * row_bytes;
      }
    }
  return f;
}

}  // namespace redknot
