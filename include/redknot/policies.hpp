// Policy interfaces: the extension points of the store, with their defaults. (Which tokens of a spliced chunk
// to recompute is recompute.hpp.)
//
//  - PlacementPolicy: which pages a head will read every step (hot, stay on the device) and which may be
//    offloaded (tiering; a later feature). The default keeps everything hot.
#pragma once

#include <concepts>
#include <cstdint>
#include <limits>

#include "redknot/head_map.hpp"
#include "redknot/head_table.hpp"

namespace redknot {

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
