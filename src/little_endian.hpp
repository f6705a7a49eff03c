// Little-endian integers written and read byte by byte (never a struct memcpy), so the byte formats of
// src/kv_slice.cpp and src/tiers.cpp are the same on every host and compiler. Internal to redknot::core.
#pragma once

#include <cstddef>
#include <cstdint>

namespace redknot::le {

template <class U>
void put(std::byte* p, U v) {
  for (std::size_t i = 0; i < sizeof(U); ++i)
    p[i] = static_cast<std::byte>(static_cast<std::uint64_t>(v) >> (8 * i));
}

template <class U>
U get(const std::byte* p) {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < sizeof(U); ++i) v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
  return static_cast<U>(v);
}

}  // namespace redknot::le
