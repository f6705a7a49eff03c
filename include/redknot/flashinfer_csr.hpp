// FlashInfer interop: one layer's head tables as FlashInfer's paged-KV CSR.
//
// FlashInfer's paged kernels read a batch as rows of pages: row r's pages are indices[indptr[r],
// indptr[r + 1]), every page but the last full, the last one holding last_page_len[r] tokens. redknot keeps
// one table per (sequence, layer, kv_head), so a row here is a (sequence, kv_head) pair of one layer,
// sequence-major (row i * num_kv_heads + h), and the pool seen as [num_pages, 2, page_size, head_dim] is the
// matching paged K/V (num_kv_heads = 1 per row). rk_export_page_table in c_api.h is the contract every
// binding exposes; this is its one implementation.
#pragma once

#include <cstdint>
#include <limits>
#include <ostream>
#include <span>
#include <vector>

#include "redknot/error.hpp"

namespace redknot {

namespace detail {
// One page entry of one row, for messages: "export_page_table: sequence 3 layer 0 kv_head 1: entry 2 (page
// 17, slots [0, 5), positions [64, 69))".
struct CsrEntry {
  const char* op;
  std::int64_t seq;
  int layer, kv_head;
  std::size_t entry;
  std::int64_t page_id, first, count, pos0;
  friend std::ostream& operator<<(std::ostream& os, const CsrEntry& w) {
    return os << w.op << ": sequence " << w.seq << " layer " << w.layer << " kv_head " << w.kv_head
              << ": entry " << w.entry << " (page " << w.page_id << ", slots [" << w.first << ", "
              << w.first + w.count << "), positions [" << w.pos0 << ", " << w.pos0 + w.count << "))";
  }
};
}  // namespace detail

struct PageTableCsr {
  std::vector<std::int32_t> indptr;         // [rows + 1]
  std::vector<std::int32_t> indices;        // [indptr.back()] page ids
  std::vector<std::int32_t> last_page_len;  // [rows]: used slots of the row's last page; 0 for an empty row
  std::vector<std::int32_t> page_pos0;      // [indptr.back()] position held by slot 0 of each page
};

// The CSR of `layer` for the sequences `seqs` (in that order) of `store` — a KVHeadStore, or anything with
// shape(), page_size(), contains(id) and table(id, layer, kv_head). Lists exactly the stored tokens (for a
// local head a page-granular superset of what a query may see: masks are the consumer's job).
// Throws InvalidArgument for a layer out of range or a row FlashInfer cannot express (a page not used from
// slot 0, a position jump inside a page, a partial page before the row's last), naming the sequence, head,
// entry and page, and for keys rotated for other positions than they sit at (a spliced chunk: FlashInfer
// would score them with the wrong rotation); NotFound for a sequence that is not live. Builds the whole CSR
// before returning.
template <class Store>
PageTableCsr flashinfer_csr(const Store& store, int layer, std::span<const std::int64_t> seqs) {
  constexpr const char* op = "export_page_table";
  store.shape().check_layer(layer, op);
  const int H = store.shape().num_kv_heads;
  const int ps = store.page_size();
  PageTableCsr csr;
  csr.indptr.reserve(seqs.size() * static_cast<std::size_t>(H) + 1);
  csr.last_page_len.reserve(seqs.size() * static_cast<std::size_t>(H));
  csr.indptr.push_back(0);
  for (std::size_t i = 0; i < seqs.size(); ++i) {
    REDKNOT_CHECK(store.contains(seqs[i]), NotFound, op, ": seq_ids[", i, "]=", seqs[i],
                  " is not live (never created or already freed)");
    for (int h = 0; h < H; ++h) {
      const auto& t = store.table(seqs[i], layer, h);
      for (std::size_t e = 0; e < t.size(); ++e) {
        const auto& pe = t[e];
        const bool last = e + 1 == t.size();
        const detail::CsrEntry where{op, seqs[i], layer, h, e, pe.page_id, pe.first, pe.count, pe.pos0};
        REDKNOT_CHECK(e == 0 || t[e - 1].page_id != pe.page_id, InvalidArgument, where,
                      " shares its page with the previous entry (a position jump inside a page), which "
                      "FlashInfer's CSR cannot express");
        REDKNOT_CHECK(pe.first == 0, InvalidArgument, where,
                      " does not start at slot 0, which FlashInfer's CSR cannot express");
        // FlashInfer scores the stored keys as they are: keys of a chunk spliced at another offset than it
        // was computed at would be attended with the wrong rotation (a silent error), so such rows are
        // refused.
        REDKNOT_CHECK(
            pe.rope_delta() == 0, InvalidArgument, where, " holds keys rotated for positions ", pe.rope_pos0,
            ".. (a chunk spliced at another offset), which FlashInfer's CSR cannot "
            "express: its kernels do not counter-rotate queries (relocate the chunk for this path)");
        REDKNOT_CHECK(last || pe.count == ps, InvalidArgument, where,
                      " is a partial page before the end of the row; FlashInfer's CSR needs every page but "
                      "the last full (page_size=",
                      ps,
                      "; a local head whose sink is not a multiple of page_size keeps such a page after "
                      "eviction)");
        csr.indices.push_back(pe.page_id);
        csr.page_pos0.push_back(pe.pos0);
      }
      REDKNOT_CHECK(csr.indices.size() <= static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()),
                    InvalidArgument, op, ": more than INT32_MAX pages");
      csr.indptr.push_back(static_cast<std::int32_t>(csr.indices.size()));
      csr.last_page_len.push_back(t.empty() ? 0 : static_cast<std::int32_t>(t[t.size() - 1].count));
    }
  }
  return csr;
}

}  // namespace redknot
