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

// B operands stored ahead of the products as the kernel reads them ("packed"): ceil(N / width)
// panels one after another, each the K rows of `width` of B's columns (zeros past column N). A
// B used often, or built by the caller anyway, is so packed once rather than per product.

// The panels' width of fastgan's kernel for products of `dtype` operands; 0 where they run ATen's
// (float64, the DEFAULT build, the switch below off), which reads B unpacked.
int64_t panel_width(at::ScalarType dtype);
// The floats of a packed (K, N) B.
int64_t packed_size(int64_t depth, int64_t cols, int64_t width);
// Packs b (K, N, any strides, float32) into `panels` (packed_size(K, N, panel_width) floats).
void pack_b(const at::Tensor& b, float* panels);
// out = a @ B for packed B: a (M, K), out (M, N), panels packed_size(K, N) floats; or each with a
// leading batch dimension, the panels then B after B. Only where panel_width(kFloat) > 0.
void matrix_product_packed(const at::Tensor& out, const at::Tensor& a, const at::Tensor& panels);

// Whether float32 products run fastgan's kernel (fastgan.backends.cpu.gemm == "fastgan") or ATen's.
std::atomic<bool>& own_gemm();

// Whether this build has the kernel (the AVX2 and AVX-512 builds).
bool own_gemm_built();

}  // namespace cpu
}  // namespace fastgan
