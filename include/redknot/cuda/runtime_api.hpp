// The CUDA runtime API the cuda/ kernels' host code and the public CUDA headers use: the real one, or, when
// REDKNOT_CUDA_HOST_MODE is defined, the host execution mode's emulation of the subset redknot calls
// (host_mode/runtime.hpp), so that the same code runs on a machine without a GPU.
#pragma once

#if defined(REDKNOT_CUDA_HOST_MODE)
#include "redknot/cuda/host_mode/runtime.hpp"
#else
#include <cuda_runtime_api.h>
#endif
