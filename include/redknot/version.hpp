// Library version. The C ABI has its own ABI version (c_api.h).
//
// REDKNOT_VERSION below is the one place the version is written: CMakeLists.txt reads it for project(VERSION)
// (and so the package version file and libredknot's SOVERSION), pyproject.toml reads it through
// scikit-build-core's regex provider, and rk_version() and Python's redknot.__version__ return
// version_string(). Keep the line's form: both readers match `#define REDKNOT_VERSION "X.Y.Z"`.
#pragma once

#include <string>
#include <string_view>

#define REDKNOT_VERSION "0.1.0"

namespace redknot {

namespace detail {
// Component `index` (0 major, 1 minor, 2 patch) of the "X.Y.Z" string above.
consteval int version_component(std::string_view v, int index) {
  int value = 0;
  for (const char c : v) {
    if (c == '.') {
      if (index-- == 0) return value;
      value = 0;
    } else {
      value = value * 10 + (c - '0');
    }
  }
  return value;
}
}  // namespace detail

inline constexpr int kVersionMajor = detail::version_component(REDKNOT_VERSION, 0);
inline constexpr int kVersionMinor = detail::version_component(REDKNOT_VERSION, 1);
inline constexpr int kVersionPatch = detail::version_component(REDKNOT_VERSION, 2);

inline std::string version_string() { return REDKNOT_VERSION; }

}  // namespace redknot
