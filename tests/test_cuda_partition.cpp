// CPU tests of the decode split-KV partition rule (include/redknot/cuda/partition.hpp), which the device plan
// in cuda/decode.cu reproduces with CUB scans (checked against this reference by tests/gpu).
#include <catch2/catch_test_macros.hpp>

#include <numeric>
#include <vector>

#include "redknot/cuda/partition.hpp"

using redknot::cuda::DecodePartitionConfig;
using redknot::cuda::make_decode_partition;
using redknot::cuda::max_decode_chunks;

namespace {

// Every unit's entries are covered exactly once, in order, by chunks of at most chunk_len entries.
void check_cover(const std::vector<std::int32_t>& entries, const redknot::cuda::DecodePartition& p) {
  REQUIRE(p.chunk_offset.size() == entries.size() + 1);
  REQUIRE(static_cast<std::int32_t>(p.chunks.size()) == p.num_chunks());
  for (std::size_t u = 0; u < entries.size(); ++u) {
    const std::int32_t b = p.chunk_offset[u], e = p.chunk_offset[u + 1];
    REQUIRE(e > b);  // every unit gets at least one chunk (an empty one writes the empty-softmax output)
    std::int32_t next = 0;
    for (std::int32_t c = b; c < e; ++c) {
      const auto& ck = p.chunks[static_cast<std::size_t>(c)];
      CHECK(ck.unit == static_cast<std::int32_t>(u));
      CHECK(ck.chunk_in_unit == c - b);
      CHECK(ck.entry_begin == next);
      CHECK(ck.entry_end - ck.entry_begin <= p.chunk_len);
      next = ck.entry_end;
    }
    CHECK(next == entries[u]);
  }
}

}  // namespace

TEST_CASE("decode partition covers every unit exactly", "[cuda][partition]") {
  const std::vector<std::int32_t> entries = {0, 1, 5, 37, 2048, 3, 0, 129};
  for (int target : {1, 3, 16, 132, 1000}) {
    for (int min_chunk : {1, 4, 16}) {
      const DecodePartitionConfig cfg{target, min_chunk};
      const auto p = make_decode_partition(entries, cfg);
      check_cover(entries, p);
      CHECK(p.chunk_len >= min_chunk);
      CHECK(p.num_chunks() <= max_decode_chunks(static_cast<std::int64_t>(entries.size()), cfg));
    }
  }
}

TEST_CASE("decode partition balances long global heads against short local heads", "[cuda][partition]") {
  // 64 sequences x 8 kv heads at 32K tokens, page 16: one head in 8 global (2048 entries), the rest local
  // with window 512 + sink 64 (~37 entries).
  std::vector<std::int32_t> entries;
  for (int b = 0; b < 64; ++b)
    for (int h = 0; h < 8; ++h) entries.push_back(h == 0 ? 2048 : 37);
  const DecodePartitionConfig cfg{132 * 8, 4};
  const auto p = make_decode_partition(entries, cfg);
  check_cover(entries, p);
  const std::int64_t total = std::accumulate(entries.begin(), entries.end(), std::int64_t{0});
  CHECK(p.chunk_len == (total + cfg.target_chunks - 1) / cfg.target_chunks);
  // A global head is cut into several chunks, a local one stays whole, and no chunk exceeds chunk_len.
  CHECK(p.chunk_offset[1] - p.chunk_offset[0] == (2048 + p.chunk_len - 1) / p.chunk_len);
  CHECK(p.chunk_offset[2] - p.chunk_offset[1] == 1);
  CHECK(p.num_chunks() <= max_decode_chunks(static_cast<std::int64_t>(entries.size()), cfg));
  CHECK(p.num_chunks() >= cfg.target_chunks / 2);
}

TEST_CASE("decode partition edge cases", "[cuda][partition]") {
  SECTION("no units") {
    const auto p = make_decode_partition({}, DecodePartitionConfig{8, 4});
    CHECK(p.num_chunks() == 0);
    CHECK(p.chunks.empty());
  }
  SECTION("all units empty") {
    const std::vector<std::int32_t> e(5, 0);
    const auto p = make_decode_partition(e, DecodePartitionConfig{8, 4});
    check_cover(e, p);
    CHECK(p.num_chunks() == 5);
  }
  SECTION("bad configs throw") {
    CHECK_THROWS_AS(make_decode_partition({1}, DecodePartitionConfig{0, 4}), std::invalid_argument);
    CHECK_THROWS_AS(make_decode_partition({1}, DecodePartitionConfig{4, 0}), std::invalid_argument);
    CHECK_THROWS_AS(make_decode_partition({-1}, DecodePartitionConfig{4, 4}), std::invalid_argument);
  }
}
