// Error types and argument checks shared by every redknot entry point.
//
// Bad input always throws one of these, with a message that names the argument and the value at fault,
// before any state is mutated (the "validate, then commit" rule every mutating call follows).
#pragma once

#include <charconv>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>

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

// Streams one message part; floating-point values in their shortest round-trip form (1.0000001, not the
// stream's default 6 digits, so a message never shows a rejected value as an accepted one).
template <class T>
void put(std::ostringstream& os, const T& v) {
  if constexpr (std::is_floating_point_v<T>) {
    char buf[64];
    const auto r = std::to_chars(buf, buf + sizeof buf, v);
    os.write(buf, r.ptr - buf);
  } else {
    os << v;
  }
}

// The name of the operation in front of a message ("run: "), or nothing for an empty name.
struct Op {
  const char* name;
  friend std::ostream& operator<<(std::ostream& os, Op o) {
    if (o.name != nullptr && *o.name != '\0') os << o.name << ": ";
    return os;
  }
};

template <class... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (put(os, args), ...);
  return os.str();
}

// The failure path of every check: out of line and marked cold, so that a check costs its comparison only.
template <class Exc, class... Args>
[[noreturn, gnu::cold, gnu::noinline]] void throw_error(const Args&... args) {
  throw Exc(concat(args...));
}

}  // namespace detail

// Throws Exc with the streamed message when cond is false. Usage:
//   require<InvalidArgument>(layer >= 0 && layer < n, "layer=", layer, " out of range [0, ", n, ")");
// A function: its arguments are evaluated before the call even when cond holds (only the formatting waits for
// a failure). Fine off the hot paths; on them (append, plan, attention) use REDKNOT_CHECK.
template <class Exc = InvalidArgument, class... Args>
inline void require(bool cond, const Args&... args) {
  if (!cond) [[unlikely]]
    detail::throw_error<Exc>(args...);
}

}  // namespace redknot

// REDKNOT_CHECK(cond, Exc, parts...): throws Exc (InvalidArgument, NotFound, ...) with the parts
// streamed into its message when cond is false. The parts are not evaluated at all when cond holds, so a
// part may build a string (a shape, a dtype name) at no cost to the success path. The check of the hot paths.
#define REDKNOT_CHECK(cond, Exc, ...)                   \
  do {                                                  \
    if (!(cond)) [[unlikely]]                           \
      ::redknot::detail::throw_error<Exc>(__VA_ARGS__); \
  } while (false)
