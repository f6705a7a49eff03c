// A SwapTicket as bytes, so that the process that swapped a sequence out need not be the one that swaps it
// in (prefill/decode disaggregation: the prefill process publishes the ticket beside the objects, the decode
// process reads it back). The ticket is what makes the objects usable; the objects themselves carry their
// own checks (swap_in verifies every object against the ticket's digest and every slice against the store),
// so this codec only has to guarantee that what it returns is exactly what was encoded, or nothing.
//
// Layout (little-endian, byte by byte as in kv_slice.cpp and tiers.cpp):
//   header (24 bytes): magic "RKST" (u32), version (u32), body length (u64), XXH3-64 of the body (u64)
//   body: model_fp (u64)
//         n_layers (u32), next_pos (i32 x n_layers), query_floor (i32 x n_layers)
//         n_objects (u32), then per object:
//           name length (u16) and name bytes, layer (i32), flags (u8: bit 0 local, bit 1 cold),
//           bytes (i64), digest (u64), n_runs (u32), runs (kv_head, pos0, count, rope_pos0: i32 x 4 each)
// decode_swap_ticket checks the header and the hash before it parses, and every count against the bytes
// left before it allocates, so a truncated, corrupt or foreign buffer is a nullopt with a reason, never a
// crash or an allocation larger than the input.
#pragma once

#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "redknot/tiers.hpp"

namespace redknot {

inline constexpr std::uint32_t kSwapTicketCodecVersion = 1;

// The ticket's bytes. InvalidArgument for a ticket that cannot be encoded (an object name that is not a valid
// tier object name, more than 2^32 - 1 objects, runs or layers, next_pos and query_floor of different
// lengths, a negative object size).
std::vector<std::byte> encode_swap_ticket(const SwapTicket& ticket);

// The ticket `bytes` encode, or nullopt with the reason in *why (when not null).
std::optional<SwapTicket> decode_swap_ticket(std::span<const std::byte> bytes, std::string* why = nullptr);

}  // namespace redknot
