// Scratch memory of the CPU transposed-convolution kernels (conv_transpose2d_*.cpp).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/accumulate.h>

#include <array>
#include <cstdint>

namespace fastgan {
namespace cpu {

// Scratch memory reused within one op call, per calling thread and use: one set of buffers
// serves every path and every step of a call (an inline function's thread_local is one object in
// the whole program). The op entry points hold a ScratchScope, which frees the buffers when the
// call returns: kept from call to call, they would add the largest of each (tens of MiB) to
// every training step's peak memory, above what PyTorch's own convolutions use.
// Uses: the weight as a GEMM operand; the GEMMs' big operands (G_col or Z; Winograd's V and M);
// image rows of the input, the output (or grad_output), the result and grad_input; a weight
// gradient; the weight's taps as rows.
enum class Scratch : int { kWeight, kTiles, kProducts, kInputRows, kOutputRows, kResultRows,
                           kInputGradientRows, kWeightGradient, kWeightTaps, kCount };

inline std::array<at::Tensor, static_cast<int>(Scratch::kCount)>& scratch_buffers() {
  thread_local std::array<at::Tensor, static_cast<int>(Scratch::kCount)> buffers;
  return buffers;
}

inline at::Tensor scratch(Scratch use, at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor& buffer = scratch_buffers()[static_cast<int>(use)];
  const int64_t bytes = c10::multiply_integers(sizes) * options.dtype().itemsize();
  if (!buffer.defined() || buffer.numel() < bytes) {
    buffer = at::empty({bytes}, options.dtype(at::kByte));
  }
  return at::from_blob(buffer.data_ptr(), sizes, options);
}

// Frees this thread's scratch buffers when the outermost scope of the thread ends.
class ScratchScope {
 public:
  ScratchScope() { ++depth(); }
  ~ScratchScope() {
    if (--depth() == 0) {
      for (at::Tensor& buffer : scratch_buffers()) buffer.reset();
    }
  }
  ScratchScope(const ScratchScope&) = delete;
  ScratchScope& operator=(const ScratchScope&) = delete;

 private:
  static int& depth() {
    thread_local int open = 0;
    return open;
  }
};

// Bytes of scratch this thread holds: none between op calls (for the tests).
inline int64_t scratch_bytes_held() {
  int64_t bytes = 0;
  for (const at::Tensor& buffer : scratch_buffers()) bytes += buffer.defined() ? buffer.numel() : 0;
  return bytes;
}

}  // namespace cpu
}  // namespace fastgan
