// AppendPlan: where an append's K/V bytes go, decided before any byte moves.
//
// KVHeadStore::reserve_append validates an append (one sequence, or a batch of sequences of one layer),
// updates the head tables and the pool's references atomically, and returns this plan. A byte mover then
// carries it out: the host mover (move_host_rows, below) with memcpy, the CUDA store with one D2D copy per
// page copy and one scatter kernel for the rows; tier migration and remote import are movers too. Movers must
// do every page copy before writing any row: a copy's source may be a page that another table of the same
// batch writes into once it became that table's alone.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "redknot/page_pool.hpp"

namespace redknot {

// Copy-on-write: slots [0, slots) of page src (K and V) go to page dst before any row is written.
struct PageCopy {
  PageId dst = -1;
  PageId src = -1;
  std::int32_t slots = 0;
  friend bool operator==(const PageCopy&, const PageCopy&) = default;
};

// One (token, kv_head) destination: slot `slot` of page `page`.
struct RowDest {
  PageId page = -1;
  std::int32_t slot = 0;
  friend bool operator==(const RowDest&, const RowDest&) = default;
};

struct AppendPlan {
  int layer = 0;
  int num_kv_heads = 0;
  int page_size = 0;
  std::int32_t num_tokens = 0;  // rows of the engine's K/V tensor [num_tokens, num_kv_heads, head_dim]
  std::vector<PageCopy> copies;
  std::vector<RowDest> rows;  // [num_tokens][num_kv_heads]: where token t of kv head h goes

  const RowDest& row(std::size_t token, int kv_head) const {
    return rows[token * static_cast<std::size_t>(num_kv_heads) + static_cast<std::size_t>(kv_head)];
  }
  // vLLM's slot mapping: page * page_size + slot for every (token, kv_head).
  std::int64_t flat_slot(std::size_t token, int kv_head) const {
    const RowDest& d = row(token, kv_head);
    return static_cast<std::int64_t>(d.page) * page_size + d.slot;
  }
};

// The host mover: page copies, then every row of k/v ([num_tokens, num_kv_heads, head_dim], contiguous) into
// a host-accessible pool.
template <StorageType T, Allocator Alloc>
void move_host_rows(PagePool<T, Alloc>& pool, const AppendPlan& plan, const T* k, const T* v) {
  static_assert(Alloc::kHostAccessible, "move_host_rows needs host-accessible pages");
  const std::size_t D = static_cast<std::size_t>(pool.head_dim());
  const std::size_t row_bytes = D * sizeof(T);
  for (const PageCopy& c : plan.copies) {
    std::memcpy(pool.k_ptr(c.dst), pool.k_ptr(c.src), row_bytes * static_cast<std::size_t>(c.slots));
    std::memcpy(pool.v_ptr(c.dst), pool.v_ptr(c.src), row_bytes * static_cast<std::size_t>(c.slots));
  }
  const auto H = static_cast<std::size_t>(plan.num_kv_heads);
  for (std::size_t t = 0; t < static_cast<std::size_t>(plan.num_tokens); ++t)
    for (std::size_t h = 0; h < H; ++h) {
      const RowDest& d = plan.rows[t * H + h];
      const std::size_t src = (t * H + h) * D;
      std::memcpy(pool.k_ptr(d.page) + static_cast<std::size_t>(d.slot) * D, k + src, row_bytes);
      std::memcpy(pool.v_ptr(d.page) + static_cast<std::size_t>(d.slot) * D, v + src, row_bytes);
    }
}

}  // namespace redknot
