// The tier layer (tiers.hpp) for bindings: swap tickets and tiered chunk caches over a type-erased AnyStore.
//
// swap_out / swap_in and TieredChunkCache are templates on the storage type; AnyStore instantiates them
// (swap_out, swap_in, make_chunk_tiers) and this header adds what the C ABI and the Python module share on
// top:
//   * the two outcomes of a tier call that are neither bad input nor a full pool, as exceptions each binding
//     maps to its own status / exception class: TierRefused (a tier did not take an object: nothing moved,
//     the sequence stays live) and TierMiss (an object is missing or failed verification: what it held
//     cannot come back);
//   * AnySwapTicket: the core's SwapTicket plus what a swap_in checks before it touches anything (the ticket
//     not used yet, the store of the same layout, the tiers it was written to), so that a wrong call is
//     InvalidArgument and leaves the objects in place instead of being a miss that removes them.
// The core's SwapTicket is plain data that any caller could forge; a binding's ticket is only ever made by
// any_swap_out.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string_view>

#include "redknot/any_store.hpp"
#include "redknot/chunk_key.hpp"
#include "redknot/tiers.hpp"

namespace redknot {

// A tier refused an object (larger than the tier, a full device, a read-only directory): nothing moved.
class TierRefused : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// An object is missing from its tier (evicted, removed) or failed verification (corrupt, truncated, of
// another model): what it held cannot come back from there.
class TierMiss : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class AnySwapTicket {
 public:
  const SwapTicket& ticket() const { return ticket_; }
  // Swapped in or discarded: the objects are gone and the ticket can no longer be used.
  bool used() const { return used_; }
  std::int64_t bytes() const { return ticket_.bytes(); }
  std::int64_t num_objects() const { return static_cast<std::int64_t>(ticket_.objects.size()); }
  std::int64_t num_cold_objects() const;
  int num_layers() const { return static_cast<int>(ticket_.next_pos.size()); }

 private:
  friend std::unique_ptr<AnySwapTicket> any_swap_out(AnyStore&, SeqId, KvTier&, KvTier*, std::string_view,
                                                     std::string_view);
  friend SeqId any_swap_in(AnyStore&, AnySwapTicket&, KvTier&, KvTier*, TierPrefetcher*);
  friend void any_discard_swap(AnySwapTicket&, KvTier&, KvTier*);
  void check_usable(const char* fn, const KvTier& hot, const KvTier& cold) const;

  SwapTicket ticket_;
  // The layout of the store it left (a store it can come back to has the same) and the tiers it went to.
  ModelShape shape_;
  std::uint64_t map_fp_ = 0;
  const KvTier* hot_ = nullptr;
  const KvTier* cold_ = nullptr;
  bool used_ = false;
};

// Swaps sequence `seq` out to `hot` / `cold` (nullptr: `hot`) under the name prefix `name`, for the model
// `model_id` (model_fingerprint). TierRefused when a tier refuses an object: the sequence stays live.
std::unique_ptr<AnySwapTicket> any_swap_out(AnyStore& store, SeqId seq, KvTier& hot, KvTier* cold,
                                            std::string_view model_id, std::string_view name);

// Restores a ticket's sequence into `store` (the one it left or another of the same layout), reading with
// `prefetcher` when not nullptr. InvalidArgument (nothing changed) for a used ticket, a store of another
// layout, or other tiers than the ticket's; TierMiss when an object is missing or fails a check (the ticket
// is used up, its objects removed, the store unchanged); PoolExhausted leaves store, ticket and objects as
// they were (make room and retry).
SeqId any_swap_in(AnyStore& store, AnySwapTicket& ticket, KvTier& hot, KvTier* cold,
                  TierPrefetcher* prefetcher);

// Removes a ticket's objects from its tiers (a sequence the engine gives up on); the ticket is used up.
void any_discard_swap(AnySwapTicket& ticket, KvTier& hot, KvTier* cold);

// TieredChunkCache<T> behind one interface (AnyStore::make_chunk_tiers); every call takes the store's lock.
class AnyChunkTiers {
 public:
  virtual ~AnyChunkTiers() = default;
  virtual std::int64_t make_room(std::int64_t pages) = 0;
  virtual bool demote(const ChunkKey& key) = 0;
  virtual std::int32_t lookup(const ChunkKey& key) = 0;  // tokens, or -1: a miss
  virtual bool prefetch(const ChunkKey& key) = 0;
  virtual bool in_tiers(const ChunkKey& key) const = 0;
  virtual ChunkTierStats stats() const = 0;
};

}  // namespace redknot
