// The description of a step's query batch — sequences, their query counts and the flattened query positions —
// and its one check, shared by every plan()-style entry point (AnyStore::plan for the C ABI and Python).
#pragma once

#include <cstdint>
#include <limits>
#include <span>
#include <unordered_set>

#include "redknot/error.hpp"

namespace redknot {

// Checks that seqs[i] has q_lens[i] >= 0 queries at q_positions[sum(q_lens[:i]) ...], that the positions are
// non-negative and add up to an int32 row count, and that every sequence is live in `store` (anything with
// contains(id)) and appears once. Returns sum(q_lens). Whether each position may attend now (its key
// appended, not retired) depends on the layer and is checked when the plan is brought up to date
// (AttentionPlan).
template <class Store>
std::int64_t check_query_batch(const Store& store, std::span<const std::int64_t> seqs,
                               std::span<const std::int32_t> q_lens,
                               std::span<const std::int32_t> q_positions, const char* op) {
  REDKNOT_CHECK(q_lens.size() == seqs.size(), InvalidArgument, op, ": q_lens has ", q_lens.size(),
                " entries, expected one per sequence (", seqs.size(), ")");
  std::int64_t total = 0;
  for (std::size_t i = 0; i < q_lens.size(); ++i) {
    REDKNOT_CHECK(q_lens[i] >= 0, InvalidArgument, op, ": q_lens[", i, "]=", q_lens[i], " must be >= 0");
    total += q_lens[i];
  }
  REDKNOT_CHECK(total <= std::numeric_limits<std::int32_t>::max(), InvalidArgument, op,
                ": sum(q_lens)=", total, " exceeds INT32_MAX");
  REDKNOT_CHECK(static_cast<std::int64_t>(q_positions.size()) == total, InvalidArgument, op,
                ": q_positions has ", q_positions.size(), " entries, expected sum(q_lens)=", total);
  for (std::size_t i = 0; i < q_positions.size(); ++i)
    REDKNOT_CHECK(q_positions[i] >= 0, InvalidArgument, op, ": q_positions[", i, "]=", q_positions[i],
                  " must be >= 0");
  std::unordered_set<std::int64_t> seen;
  seen.reserve(seqs.size());
  for (std::size_t i = 0; i < seqs.size(); ++i) {
    REDKNOT_CHECK(seen.insert(seqs[i]).second, InvalidArgument, op, ": sequence id=", seqs[i],
                  " appears twice in the batch (index ", i, ")");
    REDKNOT_CHECK(store.contains(seqs[i]), NotFound, op, ": seq_ids[", i, "]=", seqs[i],
                  " is not live (never created or already freed)");
  }
  return total;
}

}  // namespace redknot
