// flashinfer_csr(): one layer's head tables as FlashInfer's paged-KV CSR (the core of rk_export_page_table
// and Store.export_page_table), on real stores and on hand-built tables for every row FlashInfer cannot
// express.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <map>

#include "harness.hpp"
#include "redknot/flashinfer_csr.hpp"

using namespace rktest;
using Catch::Matchers::ContainsSubstring;

namespace {

void append_n(KVHeadStore<float>& store, SeqId s, int layer, std::int32_t p0, std::int32_t n) {
  const std::size_t row = static_cast<std::size_t>(store.shape().num_kv_heads) * store.shape().head_dim;
  const std::vector<float> kv(static_cast<std::size_t>(n) * row, 1.f);
  const auto pos = iota_positions(p0, n);
  store.append(s, layer, std::span<const float>(kv), std::span<const float>(kv),
               std::span<const std::int32_t>(pos));
}

// Row r of the CSR lists exactly the page ids and positions of the table it was built from.
void check_rows_match(const KVHeadStore<float>& store, const PageTableCsr& csr, int layer,
                      const std::vector<SeqId>& seqs) {
  const int H = store.shape().num_kv_heads;
  REQUIRE(csr.indptr.size() == seqs.size() * H + 1);
  REQUIRE(csr.last_page_len.size() == seqs.size() * H);
  REQUIRE(csr.indices.size() == static_cast<std::size_t>(csr.indptr.back()));
  REQUIRE(csr.page_pos0.size() == csr.indices.size());
  for (std::size_t i = 0; i < seqs.size(); ++i)
    for (int h = 0; h < H; ++h) {
      const std::size_t r = i * H + h;
      const HeadTable& t = store.table(seqs[i], layer, h);
      REQUIRE(static_cast<std::size_t>(csr.indptr[r + 1] - csr.indptr[r]) == t.size());
      for (std::size_t e = 0; e < t.size(); ++e) {
        CHECK(csr.indices[csr.indptr[r] + e] == t[e].page_id);
        CHECK(csr.page_pos0[csr.indptr[r] + e] == t[e].pos0);
      }
      CHECK(csr.last_page_len[r] == (t.empty() ? 0 : t[t.size() - 1].count));
    }
}

// A store of hand-built tables: one layer, one kv head, page_size 4.
struct TableStore {
  ModelShape shape_{1, 1, 1, 8, DType::kF32};
  std::map<std::int64_t, HeadTable> tables;
  const ModelShape& shape() const { return shape_; }
  int page_size() const { return 4; }
  bool contains(std::int64_t id) const { return tables.count(id) != 0; }
  const HeadTable& table(std::int64_t id, int layer, int kv_head) const {
    shape_.check_layer(layer);
    shape_.check_kv_head(kv_head);
    return tables.at(id);
  }
};

}  // namespace

TEST_CASE("flashinfer_csr lists each row's pages, last page length and page positions", "[csr]") {
  // Layer 0: head 0 global, head 1 local (window 5, sink 4 = page_size, so its rows stay expressible).
  HeadMap map = HeadMap::all_global(1, 2);
  map.set(0, 1, HeadPolicy{HeadClass::kLocal, 5, 4});
  KVHeadStore<float> store(ModelShape{1, 2, 2, 8, DType::kF32}, map, StoreConfig{4, 64});
  const SeqId a = store.create_sequence(), b = store.create_sequence(), empty = store.create_sequence();
  append_n(store, a, 0, 0, 10);
  append_n(store, b, 0, 0, 3);
  const std::vector<SeqId> seqs{a, b, empty};

  PageTableCsr csr = flashinfer_csr(store, 0, seqs);
  CHECK(csr.indptr == std::vector<std::int32_t>{0, 3, 6, 7, 8, 8, 8});
  CHECK(csr.last_page_len == std::vector<std::int32_t>{2, 2, 3, 3, 0, 0});
  CHECK(csr.page_pos0 == std::vector<std::int32_t>{0, 4, 8, 0, 4, 8, 0, 0});
  check_rows_match(store, csr, 0, seqs);

  // Decoding evicts the local head's middle pages: its row keeps the full sink page and the window pages,
  // a position jump that page_pos0 shows.
  for (int p = 10; p < 24; ++p) append_n(store, a, 0, p, 1);
  csr = flashinfer_csr(store, 0, std::vector<SeqId>{a});
  CHECK(csr.indptr == std::vector<std::int32_t>{0, 6, 9});
  CHECK(std::vector<std::int32_t>(csr.page_pos0.begin() + 6, csr.page_pos0.end()) ==
        std::vector<std::int32_t>{0, 16, 20});
  check_rows_match(store, csr, 0, {a});

  // No sequence: one indptr entry, nothing else.
  csr = flashinfer_csr(store, 0, std::span<const SeqId>());
  CHECK(csr.indptr == std::vector<std::int32_t>{0});
  CHECK(csr.indices.empty());
  CHECK(csr.last_page_len.empty());
}

TEST_CASE("flashinfer_csr rejects a bad layer and dead sequences, and names them", "[csr][bad_input]") {
  KVHeadStore<float> store(ModelShape{2, 2, 2, 8, DType::kF32}, HeadMap::all_global(2, 2),
                           StoreConfig{4, 16});
  const SeqId a = store.create_sequence();
  append_n(store, a, 0, 0, 5);
  const std::vector<SeqId> ghost{a, 4242};
  REQUIRE_THROWS_AS(flashinfer_csr(store, 0, ghost), NotFound);
  REQUIRE_THROWS_WITH(flashinfer_csr(store, 0, ghost),
                      ContainsSubstring("export_page_table: seq_ids[1]=4242 is not live"));
  REQUIRE_THROWS_AS(flashinfer_csr(store, 2, std::vector<SeqId>{a}), InvalidArgument);
  REQUIRE_THROWS_WITH(flashinfer_csr(store, -1, std::vector<SeqId>{a}),
                      ContainsSubstring("export_page_table: layer=-1 out of range [0, 2)"));
  // The layer is checked whatever the batch holds (also an empty one).
  REQUIRE_THROWS_AS(flashinfer_csr(store, 7, std::span<const SeqId>()), InvalidArgument);
}

TEST_CASE("flashinfer_csr rejects every row FlashInfer cannot express", "[csr][bad_input]") {
  TableStore ts;
  const auto row = [&](std::vector<PageEntry> entries) {
    HeadTable t;
    for (const PageEntry& e : entries) t.body.push_back(e);
    ts.tables[1] = t;
    return flashinfer_csr(ts, 0, std::vector<std::int64_t>{1});
  };
  // Expressible: full pages, then a partial last one; positions may jump between pages.
  const PageTableCsr ok = row({PageEntry{.page_id = 3, .first = 0, .count = 4, .pos0 = 0, .rope_pos0 = 0},
                               PageEntry{.page_id = 7, .first = 0, .count = 4, .pos0 = 40, .rope_pos0 = 40},
                               PageEntry{.page_id = 2, .first = 0, .count = 1, .pos0 = 44, .rope_pos0 = 44}});
  CHECK(ok.indptr == std::vector<std::int32_t>{0, 3});
  CHECK(ok.indices == std::vector<std::int32_t>{3, 7, 2});
  CHECK(ok.page_pos0 == std::vector<std::int32_t>{0, 40, 44});
  CHECK(ok.last_page_len == std::vector<std::int32_t>{1});

  // Two entries on one page (a position jump inside it). The first entry, partial and not last, is what a
  // real store shows first; the page check itself needs a page listed twice.
  REQUIRE_THROWS_WITH(
      row({PageEntry{.page_id = 3, .first = 0, .count = 2, .pos0 = 0, .rope_pos0 = 0},
           PageEntry{.page_id = 3, .first = 2, .count = 2, .pos0 = 9, .rope_pos0 = 9}}),
      ContainsSubstring("entry 0 (page 3, slots [0, 2), positions [0, 2)) is a partial page"));
  REQUIRE_THROWS_WITH(row({PageEntry{.page_id = 3, .first = 0, .count = 4, .pos0 = 0, .rope_pos0 = 0},
                           PageEntry{.page_id = 3, .first = 0, .count = 2, .pos0 = 9, .rope_pos0 = 9}}),
                      ContainsSubstring("sequence 1 layer 0 kv_head 0: entry 1 (page 3, slots [0, 2), "
                                        "positions [9, 11)) shares its page with the previous entry"));
  // A page not used from slot 0.
  REQUIRE_THROWS_WITH(row({PageEntry{.page_id = 5, .first = 1, .count = 3, .pos0 = 1, .rope_pos0 = 1}}),
                      ContainsSubstring("entry 0 (page 5, slots [1, 4), positions [1, 4)) does not start at "
                                        "slot 0"));
  // A partial page before the row's last (a sink that is not a multiple of page_size, after eviction).
  REQUIRE_THROWS_WITH(row({PageEntry{.page_id = 5, .first = 0, .count = 2, .pos0 = 0, .rope_pos0 = 0},
                           PageEntry{.page_id = 6, .first = 0, .count = 4, .pos0 = 16, .rope_pos0 = 16}}),
                      ContainsSubstring("entry 0 (page 5, slots [0, 2), positions [0, 2)) is a partial page "
                                        "before the end of the row"));
  REQUIRE_THROWS_AS(row({PageEntry{.page_id = 5, .first = 0, .count = 2, .pos0 = 0, .rope_pos0 = 0},
                         PageEntry{.page_id = 6, .first = 0, .count = 4, .pos0 = 16, .rope_pos0 = 16}}),
                    InvalidArgument);
  // Keys rotated for other positions than they sit at (a chunk spliced elsewhere): FlashInfer would score
  // them with the wrong rotation.
  REQUIRE_THROWS_WITH(
      row({PageEntry{.page_id = 3, .first = 0, .count = 4, .pos0 = 0, .rope_pos0 = 0},
           PageEntry{.page_id = 7, .first = 0, .count = 4, .pos0 = 40, .rope_pos0 = 0}}),
      ContainsSubstring("entry 1 (page 7, slots [0, 4), positions [40, 44)) holds keys rotated "
                        "for positions 0..") &&
          ContainsSubstring("do not counter-rotate"));
}

TEST_CASE("flashinfer_csr on a real store with a partial sink page names the head", "[csr][bad_input]") {
  // Local head with sink 2 < page_size 4: after eviction its partial sink page precedes the window pages.
  KVHeadStore<float> store(ModelShape{1, 1, 1, 8, DType::kF32},
                           HeadMap::uniform(1, 1, HeadClass::kLocal, 3, 2), StoreConfig{4, 16});
  const SeqId a = store.create_sequence();
  append_n(store, a, 0, 0, 10);
  for (int p = 10; p < 20; ++p) append_n(store, a, 0, p, 1);
  REQUIRE_THROWS_WITH(flashinfer_csr(store, 0, std::vector<SeqId>{a}),
                      ContainsSubstring("kv_head 0") && ContainsSubstring("partial page"));
}
