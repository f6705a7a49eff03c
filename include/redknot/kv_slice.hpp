// The serialised KV slice: one verified byte format for a disk tier, a remote tier and prefill -> decode
// transfer.
//
// A slice is one run of consecutive positions of one (layer, kv_head), with one RoPE rotation offset, taken
// from a sequence or a registered chunk. It is a fixed 80-byte little-endian header followed by the K rows
// then the V rows (count * head_dim elements each, in the store dtype, little-endian), so its bytes do not
// depend on the page size of the store that wrote it. The header names everything the rows depend on (model,
// head map, dtype, head_dim, layer, kv_head, positions, rotation, chunk key) and ends in an XXH3-64 checksum
// of the header (checksum field zeroed) and the payload, so a reader can tell KV it may use from anything
// else.
//
// Bytes from outside are untrusted: decode_slice() never throws on them and never reads outside the span; a
// slice that is corrupt, truncated or written for another model, map, dtype or shape is a miss (nullopt and a
// reason), never KV. Bad arguments from the caller (a payload of the wrong size, a store of another dtype)
// throw InvalidArgument as everywhere else. The field table is in docs/design.md ("Serialised KV slices").
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "redknot/core_types.hpp"
#include "redknot/dtype.hpp"
#include "redknot/error.hpp"
#include "redknot/head_map.hpp"
#include "redknot/kv_head_store.hpp"
#include "redknot/store_types.hpp"

namespace redknot {

inline constexpr std::uint32_t kSliceMagic = 0x4C534B52u;  // "RKSL" as little-endian bytes
inline constexpr std::uint16_t kSliceVersion = 1;
inline constexpr std::size_t kSliceHeaderBytes = 80;

// What a slice's rows are. magic, version, payload length and checksum are the format's own and are written
// by encode_slice() and checked by decode_slice(); they are not caller fields.
struct SliceHeader {
  std::uint64_t model_fp = 0;  // model_fingerprint(model id)
  std::uint64_t map_fp = 0;    // head_map_fingerprint(map)
  DType dtype = DType::kF32;
  std::int32_t head_dim = 0;
  std::int32_t layer = 0;
  std::int32_t kv_head = 0;
  std::int32_t pos0 = 0;       // position of the first row; rows hold pos0, pos0 + 1, ...
  std::int32_t count = 0;      // rows (>= 1)
  std::int32_t rope_pos0 = 0;  // the position the first row's key is rotated for; row i is rotated for +i
  ChunkKey key;                // the chunk the rows belong to; zero for a sequence

  std::size_t payload_bytes() const {
    return 2 * static_cast<std::size_t>(count) * static_cast<std::size_t>(head_dim) * dtype_size(dtype);
  }
  friend bool operator==(const SliceHeader&, const SliceHeader&) = default;
};

// What a reader accepts: a slice for another model, map, dtype or shape is a miss.
struct SliceExpect {
  std::uint64_t model_fp = 0;
  std::uint64_t map_fp = 0;
  DType dtype = DType::kF32;
  std::int32_t head_dim = 0;
  std::int32_t num_layers = 0;
  std::int32_t num_kv_heads = 0;
  std::optional<ChunkKey> key;  // when set, the slice must carry this chunk key
};

// A verified slice. k and v view the bytes handed to decode_slice() (count * head_dim little-endian elements
// of header.dtype each) and live as long as those bytes do.
struct DecodedSlice {
  SliceHeader header;
  std::span<const std::byte> k;
  std::span<const std::byte> v;
};

// XXH3-64 of a domain tag and the engine's model id (weights path and revision): two models never share it.
std::uint64_t model_fingerprint(std::string_view model_id);
// XXH3-64 of the map's compact JSON (the same text chunk keys hash): a slice of a local head of one map is
// not the KV a head of another map keeps.
std::uint64_t head_map_fingerprint(const HeadMap& map);

// Header + payload (K rows then V rows). Throws InvalidArgument when the header is not a valid slice
// (count < 1, negative indices or positions, positions beyond int32) or payload is not payload_bytes() long.
std::vector<std::byte> encode_slice(const SliceHeader& header, std::span<const std::byte> payload);

// The slice in `bytes` (exactly one slice: trailing bytes are a miss), or nullopt with the reason in *why.
// Checks size, magic, version, reserved byte and payload length, then the checksum, then the fields against
// `expect` (model, head map, dtype, head_dim, layer and kv_head ranges, positions, payload size, chunk key).
std::optional<DecodedSlice> decode_slice(std::span<const std::byte> bytes, const SliceExpect& expect,
                                         std::string* why = nullptr);

// ---- selective fetch
// --------------------------------------------------------------------------------------------

// Positions [begin, end).
struct PositionRange {
  std::int32_t begin = 0;
  std::int32_t end = 0;
  std::int32_t size() const { return end - begin; }
  friend bool operator==(const PositionRange&, const PositionRange&) = default;
};

// The positions of a chunk of n tokens a head with policy p reads when the chunk is spliced so that queries
// start at chunk-relative position first_query (in [0, n]; n when no query inside the chunk runs): exactly
// the positions the retention rule of visibility.hpp keeps (the store, which drops whole entries, may keep
// more). Global-like heads: all of [0, n); local heads: the sink and the first query's window, one or two
// ranges.
std::vector<PositionRange> needed_positions(const HeadPolicy& p, std::int32_t n, std::int32_t first_query);

// What a reader fetches for a chunk of n tokens exported with slices of at most slice_rows rows (0: one slice
// per head), against a dense payload (every head, every position, no headers).
struct FetchEstimate {
  std::int64_t dense_bytes = 0;     // payload of all rows of all heads
  std::int64_t needed_rows = 0;     // (layer, kv_head, position) rows the heads read
  std::int64_t fetched_slices = 0;  // slices overlapping a needed range
  std::int64_t fetched_bytes = 0;   // their encoded size, headers included
  double ratio() const {
    return dense_bytes == 0 ? 0.0 : static_cast<double>(fetched_bytes) / static_cast<double>(dense_bytes);
  }
};
FetchEstimate estimate_fetch(const HeadMap& map, std::int32_t head_dim, DType dtype, std::int32_t n,
                             std::int32_t first_query, std::int32_t slice_rows);

// ---- export and import (host stores)
// ----------------------------------------------------------------------------

namespace slice_detail {

template <StorageType T>
using Bits = std::conditional_t<std::is_same_v<T, float>, std::uint32_t, std::uint16_t>;

template <StorageType T>
Bits<T> bits_of(const T& x) {
  if constexpr (std::is_same_v<T, float>)
    return std::bit_cast<std::uint32_t>(x);
  else
    return x.bits;
}

// Elements as little-endian bytes, byte by byte, so the format does not depend on the host's byte order.
template <StorageType T>
void store_rows(const T* src, std::size_t n, std::byte* dst) {
  for (std::size_t i = 0; i < n; ++i) {
    const Bits<T> b = bits_of(src[i]);
    for (std::size_t j = 0; j < sizeof(T); ++j) dst[i * sizeof(T) + j] = static_cast<std::byte>(b >> (8 * j));
  }
}

template <StorageType T>
void load_rows(const std::byte* src, std::size_t n, T* dst) {
  for (std::size_t i = 0; i < n; ++i) {
    Bits<T> b = 0;
    for (std::size_t j = 0; j < sizeof(T); ++j)
      b = static_cast<Bits<T>>(b | (static_cast<Bits<T>>(src[i * sizeof(T) + j]) << (8 * j)));
    if constexpr (std::is_same_v<T, float>)
      dst[i] = std::bit_cast<float>(b);
    else
      dst[i].bits = b;
  }
}

// The slices of one head table: a run ends where positions stop being consecutive, where the rotation offset
// changes, or after max_rows rows (0: no limit), and takes its rows from however many pages hold them.
template <StorageType T>
void export_table(const KVHeadStore<T, HostAllocator>& store, const HeadTable& t, SliceHeader h,
                  std::int32_t max_rows, std::vector<std::vector<std::byte>>& out,
                  std::vector<SliceHeader>* headers = nullptr) {
  const auto& pool = store.pool();
  const std::size_t D = static_cast<std::size_t>(store.shape().head_dim);
  std::vector<const T*> k_rows, v_rows;  // the rows of the run being built
  std::int32_t pos0 = 0, rope0 = 0;
  std::vector<std::byte> payload;
  const auto flush = [&] {
    if (k_rows.empty()) return;
    h.pos0 = pos0;
    h.rope_pos0 = rope0;
    h.count = static_cast<std::int32_t>(k_rows.size());
    payload.assign(h.payload_bytes(), std::byte{0});
    const std::size_t row_bytes = D * sizeof(T);
    for (std::size_t i = 0; i < k_rows.size(); ++i) {
      store_rows(k_rows[i], D, payload.data() + i * row_bytes);
      store_rows(v_rows[i], D, payload.data() + (k_rows.size() + i) * row_bytes);
    }
    out.push_back(encode_slice(h, payload));
    if (headers != nullptr) headers->push_back(h);
    k_rows.clear();
    v_rows.clear();
  };
  for (std::size_t e = 0; e < t.size(); ++e) {
    const PageEntry& pe = t[e];
    for (std::int32_t i = 0; i < pe.count; ++i) {
      const std::int32_t n = static_cast<std::int32_t>(k_rows.size());
      const bool continues = n > 0 && pe.pos0 + i == pos0 + n && pe.rope_pos0 + i == rope0 + n &&
                             (max_rows == 0 || n < max_rows);
      if (!continues) {
        flush();
        pos0 = pe.pos0 + i;
        rope0 = pe.rope_pos0 + i;
      }
      const std::size_t slot = static_cast<std::size_t>(pe.first + i) * D;
      k_rows.push_back(pool.k_ptr(pe.page_id) + slot);
      v_rows.push_back(pool.v_ptr(pe.page_id) + slot);
    }
  }
  flush();
}

template <StorageType T, class TableOf>
std::vector<std::vector<std::byte>> export_all(const KVHeadStore<T, HostAllocator>& store,
                                               const ChunkKey& key, std::uint64_t model_fp,
                                               std::int32_t max_rows, TableOf&& table_of) {
  require(max_rows >= 0, "export_slices: max_rows=", max_rows, " must be >= 0 (0: one slice per run)");
  SliceHeader h;
  h.model_fp = model_fp;
  h.map_fp = head_map_fingerprint(store.head_map());
  h.dtype = dtype_of<T>();
  h.head_dim = store.shape().head_dim;
  h.key = key;
  std::vector<std::vector<std::byte>> out;
  for (int l = 0; l < store.shape().num_layers; ++l)
    for (int kh = 0; kh < store.shape().num_kv_heads; ++kh) {
      h.layer = l;
      h.kv_head = kh;
      export_table(store, table_of(l, kh), h, max_rows, out);
    }
  return out;
}

}  // namespace slice_detail

// What a reader of slices for `store` accepts (model_fp: model_fingerprint of the engine's model id).
template <StorageType T, Allocator Alloc>
SliceExpect slice_expect(const KVHeadStore<T, Alloc>& store, std::uint64_t model_fp,
                         std::optional<ChunkKey> key = std::nullopt) {
  return SliceExpect{model_fp,
                     head_map_fingerprint(store.head_map()),
                     dtype_of<T>(),
                     store.shape().head_dim,
                     store.shape().num_layers,
                     store.shape().num_kv_heads,
                     key};
}

// The encoded slices of every run every head of sequence `seq` holds, in (layer, kv_head, position) order.
// A local head whose table has gaps (sink + window) gives one slice per run; max_rows > 0 also cuts runs into
// slices of at most max_rows rows, so a reader can fetch part of a head (estimate_fetch()).
template <StorageType T>
std::vector<std::vector<std::byte>> export_slices(const KVHeadStore<T, HostAllocator>& store, SeqId seq,
                                                  std::uint64_t model_fp, std::int32_t max_rows = 0) {
  require<NotFound>(store.contains(seq), "export_slices: sequence id=", seq, " is not live");
  return slice_detail::export_all(store, ChunkKey{}, model_fp, max_rows,
                                  [&](int l, int h) -> const HeadTable& { return store.table(seq, l, h); });
}

// The same for registered chunk `key` (every head holds 0..n-1); the slices carry the key.
template <StorageType T>
std::vector<std::vector<std::byte>> export_slices(const KVHeadStore<T, HostAllocator>& store,
                                                  const ChunkKey& key, std::uint64_t model_fp,
                                                  std::int32_t max_rows = 0) {
  require<NotFound>(store.has_chunk(key), "export_slices: chunk ", to_hex(key), " is not registered");
  return slice_detail::export_all(store, key, model_fp, max_rows, [&](int l, int h) -> const HeadTable& {
    return store.chunk_table(key, l, h);
  });
}

// A new sequence of `store` holding the rows of `slices`, appended layer by layer at their positions. The
// slices must cover every head of every layer with the same positions [p0, p0 + n), each position once, keys
// rotated for where they sit (rope_pos0 == pos0): what export_slices gives for a chunk or for a sequence no
// local head has dropped a key of. Anything else is InvalidArgument, checked before the sequence is created;
// if an append fails (PoolExhausted) the new sequence is freed again.
template <StorageType T>
SeqId import_sequence(KVHeadStore<T, HostAllocator>& store, std::span<const DecodedSlice> slices) {
  const ModelShape& sh = store.shape();
  const std::size_t H = static_cast<std::size_t>(sh.num_kv_heads), D = static_cast<std::size_t>(sh.head_dim);
  require(!slices.empty(), "import_sequence: no slices");
  // Slices of each (layer, kv_head), in position order.
  std::vector<std::vector<const DecodedSlice*>> per_head(static_cast<std::size_t>(sh.num_layers) * H);
  for (std::size_t i = 0; i < slices.size(); ++i) {
    const SliceHeader& h = slices[i].header;
    require(h.dtype == dtype_of<T>() && h.head_dim == sh.head_dim, "import_sequence: slice ", i, " holds ",
            dtype_name(h.dtype), " rows of head_dim ", h.head_dim, ", the store ", dtype_name(dtype_of<T>()),
            " rows of head_dim ", sh.head_dim);
    sh.check_layer(h.layer, "import_sequence");
    sh.check_kv_head(h.kv_head, "import_sequence");
    require(h.rope_pos0 == h.pos0, "import_sequence: slice ", i, " (layer ", h.layer, ", kv_head ", h.kv_head,
            ") holds keys rotated for position ", h.rope_pos0, " at position ", h.pos0,
            " (only rows at their own positions can be appended)");
    require(slices[i].k.size() == h.payload_bytes() / 2 && slices[i].v.size() == h.payload_bytes() / 2,
            "import_sequence: slice ", i, " has K/V views of ", slices[i].k.size(), " and ",
            slices[i].v.size(), " bytes, expected ", h.payload_bytes() / 2);
    per_head[static_cast<std::size_t>(h.layer) * H + static_cast<std::size_t>(h.kv_head)].push_back(
        &slices[i]);
  }
  std::int32_t p0 = 0, n = 0;
  for (std::size_t i = 0; i < per_head.size(); ++i) {
    auto& v = per_head[i];
    std::sort(v.begin(), v.end(), [](auto* a, auto* b) { return a->header.pos0 < b->header.pos0; });
    require(!v.empty(), "import_sequence: no slice for layer ", i / H, " kv_head ", i % H);
    std::int32_t end = v.front()->header.pos0;
    for (const DecodedSlice* s : v) {
      require(s->header.pos0 == end, "import_sequence: layer ", i / H, " kv_head ", i % H,
              " has no row for position ", end, " or holds it twice (next slice starts at ", s->header.pos0,
              ")");
      end += s->header.count;
    }
    if (i == 0) {
      p0 = v.front()->header.pos0;
      n = end - p0;
    }
    require(v.front()->header.pos0 == p0 && end - p0 == n, "import_sequence: layer ", i / H, " kv_head ",
            i % H, " holds positions [", v.front()->header.pos0, ", ", end, "), layer 0 kv_head 0 [", p0,
            ", ", p0 + n, ") (every head must hold the same positions)");
  }

  std::vector<T> k(static_cast<std::size_t>(n) * H * D), v(k.size());
  std::vector<std::int32_t> positions(static_cast<std::size_t>(n));
  for (std::int32_t i = 0; i < n; ++i) positions[static_cast<std::size_t>(i)] = p0 + i;
  const SeqId seq = store.create_sequence();
  try {
    for (int l = 0; l < sh.num_layers; ++l) {
      for (std::size_t h = 0; h < H; ++h)
        for (const DecodedSlice* s : per_head[static_cast<std::size_t>(l) * H + h])
          for (std::int32_t r = 0; r < s->header.count; ++r) {
            const std::size_t tok = static_cast<std::size_t>(s->header.pos0 - p0 + r);
            const std::size_t src = static_cast<std::size_t>(r) * D * sizeof(T);
            slice_detail::load_rows(s->k.data() + src, D, k.data() + (tok * H + h) * D);
            slice_detail::load_rows(s->v.data() + src, D, v.data() + (tok * H + h) * D);
          }
      store.append(seq, l, std::span<const T>(k), std::span<const T>(v),
                   std::span<const std::int32_t>(positions));
    }
  } catch (...) {
    store.free_sequence(seq);
    throw;
  }
  return seq;
}

// Imports the slices of one chunk (every head holds 0..n-1, all slices carry the same nonzero key) and
// registers them under that key. Returns the key.
template <StorageType T>
ChunkKey import_chunk(KVHeadStore<T, HostAllocator>& store, std::span<const DecodedSlice> slices) {
  require(!slices.empty(), "import_chunk: no slices");
  const ChunkKey key = slices.front().header.key;
  require(!(key == ChunkKey{}), "import_chunk: the slices carry no chunk key (a sequence's slices)");
  for (std::size_t i = 0; i < slices.size(); ++i)
    require(slices[i].header.key == key, "import_chunk: slice ", i, " carries chunk key ",
            to_hex(slices[i].header.key), ", slice 0 ", to_hex(key));
  require(!store.has_chunk(key), "import_chunk: chunk ", to_hex(key), " is already registered");
  const SeqId seq = import_sequence(store, slices);
  try {
    store.register_chunk(key, seq);  // checks that every head holds 0..n-1
  } catch (...) {
    store.free_sequence(seq);
    throw;
  }
  return key;
}

}  // namespace redknot
