// Decode attention kernels for bf16 storage (see decode_kernel.cuh).
#include "decode_kernel.cuh"

namespace redknot::cuda::detail {

void launch_decode_bf16(const DecodeLaunch& l, int head_dim, int group) {
  launch_decode_dtype<DType::kBF16>(l, head_dim, group);
}

}  // namespace redknot::cuda::detail
