// Decode attention kernels for f16 storage (see decode_kernel.cuh).
#include "decode_kernel.cuh"

namespace redknot::cuda::detail {

void launch_decode_f16(const DecodeLaunch& l, int head_dim, int group) {
  launch_decode_dtype<DType::kF16>(l, head_dim, group);
}

}  // namespace redknot::cuda::detail
