// Switches of the CPU kernels that Python sets (fastgan.backends.cpu), as torch.backends.cudnn's
// are for cuDNN. The kernels read them on every call, so a change applies to the next call.
#pragma once

#include <atomic>

namespace fastgan {
namespace cpu {

// Whether the transposed convolution may take its Winograd path (conv_transpose2d_winograd.cpp):
// faster than the other paths, and less exact than torch's float32 convolutions (its transforms
// add and subtract scaled partial sums), as TF32 is on CUDA. False: only the exact paths.
std::atomic<bool>& allow_winograd();

}  // namespace cpu
}  // namespace fastgan
