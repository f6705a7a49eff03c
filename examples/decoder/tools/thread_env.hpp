// On small machines OpenMP threads spinning after the attention loop steal the cores OpenBLAS needs next (and
// the other way round): measured 15.4 s -> 11.0 s for an 871-token prefill on 2 cores with passive waiting.
// The OpenMP runtime reads its environment once at start-up, so the tool re-executes itself once with
// OMP_WAIT_POLICY=PASSIVE unless the user set it.
#pragma once

#include <unistd.h>
#include <cstdlib>

namespace redknot::decoder {

inline void settle_thread_env(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") || std::getenv("REDKNOT_NO_REEXEC")) return;
  setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  setenv("REDKNOT_NO_REEXEC", "1", 1);
  execv("/proc/self/exe", argv);  // returns only on failure: carry on with the defaults
}

}  // namespace redknot::decoder
