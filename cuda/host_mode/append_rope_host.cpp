// Host execution mode build of cuda/append_rope.cu (compiled as C++ with REDKNOT_CUDA_HOST_MODE).
#include "../append_rope.cu"
