// Host execution mode build of cuda/decode_f16.cu (compiled as C++ with REDKNOT_CUDA_HOST_MODE).
#include "../decode_f16.cu"
