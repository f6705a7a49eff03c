// Error types and argument checks shared by every redknot entry point.
//
// Bad input always throws one of these, with a message that names the argument and the value at fault,
// before any state is mutated (the "validate, then commit" rule every mutating call follows).
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace redknot {

// A caller passed a value that is out of range, mis-shaped, or inconsistent with the store.
class InvalidArgument : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// A sequence id (or other handle) that does not exist, or no longer exists.
class NotFound : public std::out_of_range {
 public:
  using std::out_of_range::out_of_range;
};

// A fixed-capacity pool has no room. Callers can catch this, free work and retry: nothing was modified.
class PoolExhausted : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The requested backend (e.g. a CUDA device) is not available in this process.
class Unavailable : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {

template <class... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

}  // namespace detail

// Throws Exc with the streamed message when cond is false. Usage:
//   require<InvalidArgument>(layer >= 0 && layer < n, "layer=", layer, " out of range [0, ", n, ")");
template <class Exc = InvalidArgument, class... Args>
inline void require(bool cond, Args&&... args) {
  if (!cond) throw Exc(detail::concat(std::forward<Args>(args)...));
}

}  // namespace redknot
