// Host execution mode build of cuda/decode.cu (compiled as C++ with REDKNOT_CUDA_HOST_MODE).
#include "../decode.cu"
