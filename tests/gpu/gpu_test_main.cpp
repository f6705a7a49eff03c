// main() of the GPU test binaries: runs the registered cases (optionally filtered by a name prefix). When no
// CUDA device is usable every case is skipped (exit code 4), unless REDKNOT_GPU_REQUIRE=1: then a missing
// device fails every case (a GPU runner must not pass by skipping).
#include "redknot/cuda/runtime_api.hpp"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>

#include "gpu_test.hpp"

namespace gputest {

int run_all(int argc, char** argv, bool device_present) {
  const char* filter = argc > 1 ? argv[1] : "";
  const char* require = std::getenv("REDKNOT_GPU_REQUIRE");
  const bool device_required = require != nullptr && std::strcmp(require, "1") == 0;
  int ran = 0, skipped = 0, failed_cases = 0;
  for (const Case& c : registry()) {
    if (c.name.rfind(filter, 0) != 0) continue;  // prefix match: "scenarios" must not pick "graph: ..."
    if (!device_present && device_required) {
      std::printf("FAILED  %s: no CUDA device and REDKNOT_GPU_REQUIRE=1\n", c.name.c_str());
      ++ran;
      ++failed_cases;
      continue;
    }
    if (!device_present) {
      std::printf("SKIPPED %s: no CUDA device\n", c.name.c_str());
      ++skipped;
      continue;
    }
    const long long before = failures();
    context().clear();
    try {
      c.fn();
    } catch (const Skip& s) {
      std::printf("SKIPPED %s: %s\n", c.name.c_str(), s.why.c_str());
      ++skipped;
      continue;
    } catch (const Abort&) {
    } catch (const std::exception& e) {
      ++failures();
      std::fprintf(stderr, "EXCEPTION in %s: %s\n  [%s]\n", c.name.c_str(), e.what(), context().c_str());
    }
    ++ran;
    const bool ok = failures() == before;
    failed_cases += ok ? 0 : 1;
    std::printf("%s %s\n", ok ? "PASSED " : "FAILED ", c.name.c_str());
  }
  std::printf("%d ran, %d failed, %d skipped, %lld checks, %lld failed checks\n", ran, failed_cases, skipped,
              checks(), failures());
  if (failed_cases > 0) return 1;
  if (ran == 0 && skipped > 0) return 4;  // Catch2's "all skipped" code; CTest reports the test as skipped
  if (ran == 0) {
    std::fprintf(stderr, "no test case matches '%s'\n", filter);
    return 2;
  }
  return 0;
}

}  // namespace gputest

int main(int argc, char** argv) {
  int devices = 0;
  const bool present = cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0;
  cudaGetLastError();  // no device / old driver: clear the sticky error
  return gputest::run_all(argc, argv, present);
}
