// Chunk registration and splicing (position-independent reuse) at the store level: zero-copy sharing, the
// entries' positions and RoPE positions, retention of spliced keys, the registry's refcounts and LRU eviction
// under pool pressure, and errors that leave store and registry unchanged.
#include <catch2/catch_test_macros.hpp>

#include "harness.hpp"
#include "redknot/flashinfer_csr.hpp"

using namespace rktest;

namespace {

constexpr int kPage = 4;

// Layer 0: kv head 0 global, kv head 1 local (window 3, sink 2). Layer 1: both global.
HeadMap test_map() {
  HeadMap m = HeadMap::all_global(2, 2);
  m.set(0, 1, HeadPolicy{HeadClass::kLocal, 3, 2});
  return m;
}

struct World {
  ModelShape shape{2, 4, 2, 8, DType::kF32};
  KVHeadStore<float> store;
  std::mt19937 rng{7};

  explicit World(std::int32_t pages = 256) : store(shape, test_map(), StoreConfig{kPage, pages}, rope()) {}

  static RopeConfig rope() {
    RopeConfig rc;
    rc.head_dim = 8;
    return rc;
  }

  // Appends positions [p0, p0 + n) to every layer in one call per layer.
  void append(SeqId s, std::int32_t p0, std::int32_t n) {
    const std::size_t row = 2 * 8;
    for (int l = 0; l < shape.num_layers; ++l) {
      const auto k = random_tensor<float>(rng, static_cast<std::size_t>(n) * row);
      const auto v = random_tensor<float>(rng, static_cast<std::size_t>(n) * row);
      const auto pos = iota_positions(p0, n);
      store.append(s, l, std::span<const float>(k), std::span<const float>(v),
                   std::span<const std::int32_t>(pos));
    }
  }
  // A chunk of n tokens computed alone, registered under a key made from `tag`.
  ChunkKey make_chunk(std::int32_t n, std::int32_t tag) {
    const SeqId s = store.create_sequence();
    append(s, 0, n);
    const std::vector<std::int32_t> tokens(static_cast<std::size_t>(n), tag);
    const ChunkKey key = store.chunk_key("test-model", tokens);
    store.register_chunk(key, s);
    return key;
  }
};

// held[p]: whether the table holds position p, for p in [0, n).
std::vector<bool> held_positions(const HeadTable& t, std::int32_t n) {
  std::vector<bool> held(static_cast<std::size_t>(n), false);
  for (std::size_t i = 0; i < t.size(); ++i)
    for (std::int32_t p = t[i].pos0; p <= t[i].last_pos() && p < n; ++p)
      held[static_cast<std::size_t>(p)] = true;
  return held;
}

}  // namespace

TEST_CASE("chunk keys depend on model, map, dtype and tokens, and round-trip as hex", "[splice]") {
  const ModelShape a{2, 4, 2, 8, DType::kF32};
  ModelShape b = a;
  b.dtype = DType::kF16;
  const std::vector<std::int32_t> t1 = {1, 2, 3}, t2 = {1, 2, 4};
  const ChunkKey k = make_chunk_key("m", a, test_map(), t1);
  CHECK(k == make_chunk_key("m", a, test_map(), t1));
  CHECK_FALSE(k == make_chunk_key("m2", a, test_map(), t1));
  CHECK_FALSE(k == make_chunk_key("m", b, test_map(), t1));
  CHECK_FALSE(k == make_chunk_key("m", a, HeadMap::all_global(2, 2), t1));
  CHECK_FALSE(k == make_chunk_key("m", a, test_map(), t2));
  CHECK(parse_chunk_key(to_hex(k)) == k);
  CHECK(to_hex(k).size() == 32);
  CHECK_THROWS_AS(parse_chunk_key("xyz"), InvalidArgument);
  CHECK_THROWS_AS(parse_chunk_key(std::string(31, 'a') + "g"), InvalidArgument);
}

TEST_CASE("a chunk spliced at N offsets is one copy: entries shifted, rotation kept, pages shared",
          "[splice]") {
  World w;
  const ChunkKey key = w.make_chunk(10, 1);
  CHECK(w.store.sequences().empty());  // the chunk's sequence left the registry
  CHECK(w.store.chunk_tokens(key) == 10);
  const std::int32_t used = w.store.pool().used_pages();
  std::vector<SeqId> seqs;
  for (std::int32_t at : {0, 5, 100, 123456}) {
    const SeqId s = w.store.create_sequence();
    if (at > 0) w.append(s, 0, std::min(at, 3));  // some own tokens before the chunk
    const std::int32_t before = w.store.pool().used_pages();
    w.store.splice(s, key, at);
    CHECK(w.store.pool().used_pages() == before);  // zero-copy
    for (int l = 0; l < 2; ++l) CHECK(w.store.next_position(s, l) == at + 10);
    // Global head of layer 1: every chunk entry, shifted by `at`, still rotated for 0..9.
    const HeadTable& t = w.store.table(s, 1, 0);
    const HeadTable& c = w.store.chunk_table(key, 1, 0);
    const std::size_t own = t.size() - c.size();
    for (std::size_t i = 0; i < c.size(); ++i) {
      CHECK(t[own + i].page_id == c[i].page_id);
      CHECK(t[own + i].pos0 == c[i].pos0 + at);
      CHECK(t[own + i].rope_pos0 == c[i].rope_pos0);
      CHECK(t[own + i].rope_delta() == at);
    }
    seqs.push_back(s);
    check_accounting(w.store);
  }
  // The chunk's pages are held by the chunk and each sequence; the sequences' own tokens cost their own
  // pages.
  CHECK(w.store.chunk_stats().chunks_in_use == 1);
  CHECK(w.store.chunk_stats().splices == 4);
  for (SeqId s : seqs) w.store.free_sequence(s);
  CHECK(w.store.pool().used_pages() == used);
  CHECK(w.store.chunk_stats().chunks_in_use == 0);
  CHECK(w.store.drop_chunk(key));
  CHECK(w.store.pool().used_pages() == 0);
  check_accounting(w.store);
}

TEST_CASE("local heads keep only the spliced keys later queries can see", "[splice]") {
  World w;
  const ChunkKey key = w.make_chunk(20, 2);
  const SeqId s = w.store.create_sequence();
  w.append(s, 0, 6);
  w.store.splice(s, key, 6);  // positions 6..25, next query at 26
  const HeadPolicy pol = w.store.policy(0, 1);
  const HeadTable& t = w.store.table(s, 0, 1);
  // Every key a query at q >= 26 can see is still there.
  const std::vector<bool> held = held_positions(t, 26);
  for (std::int32_t k = 0; k < 26; ++k)
    if (is_visible(pol, std::int64_t{26}, k)) CHECK(held[static_cast<std::size_t>(k)]);
  // And little else: page-granular retention holds at most a page on each side of the window.
  CHECK(t.num_tokens() <= pol.sink + pol.window + 2 * kPage);
  // With first_query inside the chunk (a recomputed token at 10), keys from 10 - window on are kept.
  const SeqId s2 = w.store.create_sequence();
  w.store.splice(s2, key, 0, 10);
  CHECK(w.store.query_floor(s2, 0) == 10);
  const HeadTable& t2 = w.store.table(s2, 0, 1);
  const std::vector<bool> held2 = held_positions(t2, 20);
  for (std::int32_t q = 10; q < 20; ++q)
    for (std::int32_t k = 0; k <= q; ++k)
      if (is_visible(pol, std::int64_t{q}, k)) CHECK(held2[static_cast<std::size_t>(k)]);
  check_accounting(w.store);
}

TEST_CASE("appending after a splice starts a new entry and never writes into the chunk's pages", "[splice]") {
  World w;
  const ChunkKey key = w.make_chunk(6, 3);  // 6 tokens: the last page has 2 free slots
  const HeadTable& c = w.store.chunk_table(key, 1, 0);
  const PageId tail_page = c[c.size() - 1].page_id;
  std::vector<float> chunk_page(w.store.pool().k_ptr(tail_page),
                                w.store.pool().k_ptr(tail_page) + 2 * kPage * 8);
  const SeqId s = w.store.create_sequence();
  w.store.splice(s, key, 8);
  w.append(s, 14, 3);
  const HeadTable& t = w.store.table(s, 1, 0);
  // The appended tokens are in entries of their own, rotated for where they sit.
  const PageEntry& last = t[t.size() - 1];
  CHECK(last.rope_delta() == 0);
  CHECK(last.last_pos() == 16);
  for (std::size_t i = 0; i + 1 < t.size(); ++i) CHECK(t[i].page_id != tail_page);  // copied before the write
  CHECK(std::equal(chunk_page.begin(), chunk_page.end(), w.store.pool().k_ptr(tail_page)));
  check_accounting(w.store);
}

TEST_CASE("bad splices and registrations are errors that change nothing", "[splice]") {
  World w;
  const ChunkKey key = w.make_chunk(8, 4);
  const SeqId s = w.store.create_sequence();
  w.append(s, 0, 5);
  const Snapshot<KVHeadStore<float>> before(w.store);
  const ChunkStats st0 = w.store.chunk_stats();
  CHECK_THROWS_AS(w.store.splice(s, key, 4), InvalidArgument);  // overlaps position 4
  CHECK_THROWS_AS(w.store.splice(s, key, -1), InvalidArgument);
  CHECK_THROWS_AS(w.store.splice(s, key, std::numeric_limits<std::int32_t>::max() - 3), InvalidArgument);
  CHECK_THROWS_AS(w.store.splice(s, key, 10, 9), InvalidArgument);   // first_query before the chunk
  CHECK_THROWS_AS(w.store.splice(s, key, 10, 19), InvalidArgument);  // after it
  CHECK_THROWS_AS(w.store.splice(s, ChunkKey{1, 2}, 10), NotFound);
  CHECK_THROWS_AS(w.store.splice(999, key, 10), NotFound);
  CHECK_THROWS_AS(w.store.register_chunk(key, s), InvalidArgument);  // key taken
  CHECK_THROWS_AS(w.store.register_chunk(ChunkKey{5, 5}, 999), NotFound);
  CHECK(before == Snapshot<KVHeadStore<float>>(w.store));
  CHECK(w.store.chunk_stats().splices == st0.splices);

  // A sequence that lost keys to retention, does not start at 0, or differs across layers is no chunk.
  const SeqId lossy = w.store.create_sequence();
  w.append(lossy, 0, 8);
  w.append(lossy, 8, 8);  // the second append retires queries < 8: the local head drops keys
  CHECK_THROWS_AS(w.store.register_chunk(ChunkKey{6, 6}, lossy), InvalidArgument);
  const SeqId late = w.store.create_sequence();
  w.append(late, 3, 4);
  CHECK_THROWS_AS(w.store.register_chunk(ChunkKey{7, 7}, late), InvalidArgument);
  const SeqId empty = w.store.create_sequence();
  CHECK_THROWS_AS(w.store.register_chunk(ChunkKey{8, 8}, empty), InvalidArgument);
  CHECK(w.store.contains(lossy));
  CHECK(w.store.contains(late));

  // A chunk in use cannot be dropped.
  w.store.splice(s, key, 10);
  CHECK_THROWS_AS(w.store.drop_chunk(key), InvalidArgument);
  CHECK_FALSE(w.store.drop_chunk(ChunkKey{9, 9}));
  check_accounting(w.store);
}

TEST_CASE("pool pressure evicts unused chunks least recently used first, never one in use", "[splice]") {
  World w(40);
  const ChunkKey a = w.make_chunk(8, 10);  // 2 pages per head: 8 pages per chunk
  const ChunkKey b = w.make_chunk(8, 11);
  const ChunkKey c = w.make_chunk(8, 12);
  REQUIRE(w.store.pool().free_pages() == 16);
  const SeqId user = w.store.create_sequence();
  w.store.splice(user, a, 0);                  // a in use (also most recently used... but in use wins)
  CHECK(w.store.lookup_chunk(b).has_value());  // b is now more recent than c
  CHECK_FALSE(w.store.lookup_chunk(ChunkKey{1, 1}).has_value());
  // Needs 20 pages (5 per head, 4 heads): 16 free, so one unused chunk (the LRU one, c) goes.
  const SeqId s = w.store.create_sequence();
  w.append(s, 0, 20);
  CHECK(w.store.has_chunk(a));
  CHECK(w.store.has_chunk(b));
  CHECK_FALSE(w.store.has_chunk(c));
  CHECK(w.store.chunk_stats().evictions == 1);
  CHECK(w.store.chunk_stats().hits >= 2);
  CHECK(w.store.chunk_stats().misses == 1);
  check_accounting(w.store);
  // A request that even dropping every unused chunk cannot satisfy fails and drops nothing.
  const Snapshot<KVHeadStore<float>> before(w.store);
  const SeqId big = w.store.create_sequence();
  const Snapshot<KVHeadStore<float>> with_big(w.store);
  std::vector<float> k(100 * 16), v(100 * 16);
  const auto pos = iota_positions(0, 100);
  CHECK_THROWS_AS(w.store.append(big, 0, std::span<const float>(k), std::span<const float>(v),
                                 std::span<const std::int32_t>(pos)),
                  PoolExhausted);
  CHECK(with_big == Snapshot<KVHeadStore<float>>(w.store));
  CHECK(w.store.has_chunk(b));
  check_accounting(w.store);
}

TEST_CASE("forks of a sequence with a spliced chunk keep it in use until both are freed", "[splice]") {
  World w;
  const ChunkKey key = w.make_chunk(5, 20);
  const SeqId s = w.store.create_sequence();
  w.store.splice(s, key, 2);
  const SeqId f = w.store.fork(s);
  w.store.free_sequence(s);
  CHECK(w.store.chunk_stats().chunks_in_use == 1);
  CHECK_THROWS_AS(w.store.drop_chunk(key), InvalidArgument);
  w.store.free_sequence(f);
  CHECK(w.store.drop_chunk(key));
  CHECK(w.store.pool().used_pages() == 0);
  check_accounting(w.store);
}

TEST_CASE("one chunk spliced twice into one sequence holds a reference per run", "[splice]") {
  World w;
  const ChunkKey key = w.make_chunk(3, 30);  // one page per head
  const SeqId s = w.store.create_sequence();
  w.store.splice(s, key, 0);
  w.store.splice(s, key, 3);
  w.store.splice(s, key, 10);
  check_accounting(w.store);
  w.store.free_sequence(s);
  CHECK(w.store.drop_chunk(key));
  CHECK(w.store.pool().used_pages() == 0);
}

// Relocate used to check only the sum over layers of the pages its appends need against what is free plus
// what their evictions free. Here layer 1's append needs pages that only layer 2's eviction (a local head,
// window 1) gives back: the appends run layer by layer, so layer 1 made room by evicting unused chunks, the
// relocated chunk included, and layer 2 then read the freed chunk (heap-use-after-free under ASan). Now the
// check runs layer by layer: PoolExhausted, nothing changed.
TEST_CASE("relocate checks capacity layer by layer, never evicting the chunk it copies", "[splice]") {
  const ModelShape shape{3, 1, 1, 8, DType::kF32};
  HeadMap m = HeadMap::all_global(3, 1);
  m.set(2, 0, HeadPolicy{HeadClass::kLocal, 1, 0});
  RopeConfig rc;
  rc.head_dim = 8;
  KVHeadStore<float> store(shape, m, StoreConfig{1, 14}, rc);
  std::mt19937 rng{3};
  const auto append = [&](SeqId s, int l, std::int32_t n) {
    const auto k = random_tensor<float>(rng, static_cast<std::size_t>(n) * 8);
    const auto v = random_tensor<float>(rng, static_cast<std::size_t>(n) * 8);
    const auto pos = iota_positions(0, n);
    store.append(s, l, std::span<const float>(k), std::span<const float>(v),
                 std::span<const std::int32_t>(pos));
  };
  const SeqId c = store.create_sequence();
  for (int l = 0; l < 3; ++l) append(c, l, 2);  // 6 pages
  const ChunkKey key{1, 2};
  store.register_chunk(key, c);
  const SeqId d = store.create_sequence();
  append(d, 0, 1);
  append(d, 1, 1);
  append(d, 2, 4);  // 12 pages in use, 2 free; layer 2 would evict 4 when appending at 4
  const Snapshot<KVHeadStore<float>> before(store);
  CHECK_THROWS_AS(store.relocate(d, key, 4), PoolExhausted);
  CHECK(before == Snapshot<KVHeadStore<float>>(store));
  CHECK(store.has_chunk(key));
  CHECK(store.chunk_stats().evictions == 0);
  check_accounting(store);
}

// FlashInfer's kernels score stored keys as they are: a sequence with a chunk spliced at another offset must
// be refused by the CSR export (it would attend with the wrong rotation), one spliced at its own positions or
// relocated is exported.
TEST_CASE("the FlashInfer export refuses keys spliced away from their rotation", "[splice][flashinfer]") {
  World w;
  const ChunkKey key = w.make_chunk(2 * kPage, 1);
  const SeqId at_home = w.store.create_sequence(), moved = w.store.create_sequence(),
              copied = w.store.create_sequence();
  w.store.splice(at_home, key, 0);
  w.append(moved, 0, kPage);
  w.store.splice(moved, key, kPage);
  w.append(copied, 0, kPage);
  w.store.relocate(copied, key, kPage);
  const std::int64_t home[] = {at_home}, away[] = {moved}, copy[] = {copied};
  CHECK(flashinfer_csr(w.store, 1, std::span<const std::int64_t>(home)).indices.size() > 0);
  CHECK(flashinfer_csr(w.store, 1, std::span<const std::int64_t>(copy)).indices.size() > 0);
  try {
    (void)flashinfer_csr(w.store, 1, std::span<const std::int64_t>(away));
    FAIL("a spliced chunk at another offset was exported");
  } catch (const InvalidArgument& e) {
    CHECK(std::string(e.what()).find("counter-rotate") != std::string::npos);
  }
}
