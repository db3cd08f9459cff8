// Matrix products of the CPU kernels. ATen's at::mm runs MKL, which on AMD CPUs takes its AVX2 code
// even where the CPU has AVX-512 (at about half of what oneDNN's convolutions reach there), so the
// float32 products run fastgan's own register-blocked kernel (gemm.cpp) in the AVX2 and AVX-512
// builds; double, the DEFAULT build and the switch below off run ATen's.
#pragma once

#include <ATen/ATen.h>

#include <atomic>

namespace fastgan {
namespace cpu {

// out = a @ b, or out += a @ b when `accumulate`: a (M, K), b (K, N) and out (M, N), or each with a
// leading batch dimension of the same size. Any strides, except that out's rows must not overlap.
void matrix_product(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                bool accumulate = false);

// Whether float32 products run fastgan's kernel (fastgan.backends.cpu.gemm == "fastgan") or ATen's.
std::atomic<bool>& own_gemm();

// Whether this build has the kernel (the AVX2 and AVX-512 builds).
bool own_gemm_built();

}  // namespace cpu
}  // namespace fastgan
