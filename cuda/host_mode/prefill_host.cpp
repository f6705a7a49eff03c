// Host execution mode build of cuda/prefill.cu (compiled as C++ with REDKNOT_CUDA_HOST_MODE).
#include "../prefill.cu"
