// Policy interfaces: the extension points of the store, with their defaults.
//
//  - RecomputeSelector: when a precomputed chunk is spliced at a new position, which heads take the relocated
//    KV and which must be recomputed (position-independent reuse; the splice path is a later feature).
//  - PlacementPolicy: which pages a head will read every step (hot, stay on the device) and which may be
//    offloaded (tiering; a later feature). The default keeps everything hot.
#pragma once

#include <concepts>
#include <cstdint>
#include <limits>

#include "redknot/head_map.hpp"
#include "redknot/head_table.hpp"

namespace redknot {

// What to do with one head of a spliced chunk.
enum class ReuseAction : std::uint8_t {
  kRelocate = 0,   // use the precomputed KV, RoPE-rotated by the position delta
  kRecompute = 1,  // run the chunk's tokens through the model again for this head
};

class RecomputeSelector {
 public:
  virtual ~RecomputeSelector() = default;
  virtual ReuseAction select(int layer, int kv_head, const HeadPolicy& policy) const = 0;
};

// Global heads read the whole context, so their KV depends on what precedes the chunk: recompute them.
// Local heads read only sink + window, which a relocated chunk reproduces: relocate.
class HeadClassRecomputeSelector final : public RecomputeSelector {
 public:
  ReuseAction select(int, int, const HeadPolicy& p) const override {
    return p.is_local() ? ReuseAction::kRelocate : ReuseAction::kRecompute;
  }
};

enum class Tier : std::uint8_t { kDevice = 0, kHost = 1, kDisk = 2 };

class PlacementPolicy {
 public:
  virtual ~PlacementPolicy() = default;
  // Where entry `index` of a head's table should live, given the head's policy and the table.
  virtual Tier place(const HeadPolicy& policy, const HeadTable& table, std::size_t index) const = 0;
};

// Everything a head can still see is read every step: keep it all on the device.
class AllHotPlacement final : public PlacementPolicy {
 public:
  Tier place(const HeadPolicy&, const HeadTable&, std::size_t) const override { return Tier::kDevice; }
};

}  // namespace redknot
