// Host execution mode build of cuda/decode_bf16.cu (compiled as C++ with REDKNOT_CUDA_HOST_MODE).
#include "../decode_bf16.cu"
