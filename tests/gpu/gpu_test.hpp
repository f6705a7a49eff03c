// A tiny self-contained test harness for the GPU tests, so they build where Catch2 is not installed (the GPU
// machines have CUDA, CMake and ninja only). Semantics follow Catch2's: CHECK records and continues, REQUIRE
// aborts the test case, SKIP_TEST skips it, and a process whose test cases were all skipped exits with 4 —
// Catch2's skip code — which CTest maps to "Skipped" through SKIP_RETURN_CODE. REDKNOT_GPU_REQUIRE=1 turns a
// missing device into failures instead of skips.
//
//   GPU_TEST_CASE("scenarios: ...") { ... CHECK(x == y); ... }
//   main: provided by gpu_test_main.cpp; `prog [prefix]` runs the cases whose name starts with the prefix.
#pragma once

#include <cmath>
#include <cstdio>
#include <functional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace gputest {

struct Case {
  std::string name;
  std::function<void()> fn;
};
inline std::vector<Case>& registry() {
  static std::vector<Case> r;
  return r;
}
struct Registrar {
  Registrar(const char* name, std::function<void()> fn) { registry().push_back({name, std::move(fn)}); }
};
struct Abort {};
struct Skip {
  std::string why;
};
inline long long& failures() {
  static long long n = 0;
  return n;
}
inline long long& checks() {
  static long long n = 0;
  return n;
}
// Context lines printed with a failure (the current parameter set).
inline std::string& context() {
  static std::string c;
  return c;
}

inline bool check(bool ok, const char* expr, const char* file, int line, const std::string& msg = {}) {
  ++checks();
  if (!ok) {
    ++failures();
    if (failures() <= 50)
      std::fprintf(stderr, "%s:%d: FAILED: %s %s\n  [%s]\n", file, line, expr, msg.c_str(),
                   context().c_str());
  }
  return ok;
}

int run_all(int argc, char** argv, bool device_present);

}  // namespace gputest

#define GPUTEST_CAT2(a, b) a##b
#define GPUTEST_CAT(a, b) GPUTEST_CAT2(a, b)
#define GPU_TEST_CASE(name)                                                                              \
  static void GPUTEST_CAT(gpu_test_fn_, __LINE__)();                                                     \
  static ::gputest::Registrar GPUTEST_CAT(gpu_test_reg_, __LINE__)(name,                                 \
                                                                   GPUTEST_CAT(gpu_test_fn_, __LINE__)); \
  static void GPUTEST_CAT(gpu_test_fn_, __LINE__)()
#define CHECK(cond) ::gputest::check(static_cast<bool>(cond), #cond, __FILE__, __LINE__)
#define CHECK_MSG(cond, msg) ::gputest::check(static_cast<bool>(cond), #cond, __FILE__, __LINE__, (msg))
#define REQUIRE(cond)                                                                                    \
  do {                                                                                                   \
    if (!::gputest::check(static_cast<bool>(cond), #cond, __FILE__, __LINE__)) throw ::gputest::Abort{}; \
  } while (0)
#define SKIP_TEST(why) \
  throw ::gputest::Skip { why }
#define CUDA_REQUIRE(expr)                                                     \
  do {                                                                         \
    const cudaError_t gputest_e = (expr);                                      \
    if (!::gputest::check(gputest_e == cudaSuccess, #expr, __FILE__, __LINE__, \
                          cudaGetErrorString(gputest_e)))                      \
      throw ::gputest::Abort{};                                                \
  } while (0)
