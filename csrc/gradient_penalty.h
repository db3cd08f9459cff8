// The R1 / R2 gradient penalty's reduction: given g = d D(x).sum() / dx of shape (N, *),
//   penalty = scale * mean_i ||g_i||^2 = scale / N * sum of all g^2,
// and its derivative d penalty / d g = 2 * scale / N * g. The per-sample norms never need to be
// formed: the penalty is one sum of squares over the whole tensor, so any layout of g works.
// Shared by the CPU and CUDA kernels (C10_HOST_DEVICE), so the CPU tests exercise the GPU's math.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace fastgan {
namespace gradient_penalty {

// One element's contribution to the sum, in the accumulation type (float for float, half and
// bfloat16; double for double).
template <typename acc_t>
C10_HOST_DEVICE inline acc_t square(acc_t g) {
  return g * g;
}

// The penalty from the sum of squares. An empty batch gives NaN, as torch's mean of nothing.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t penalty(acc_t sum_of_squares, acc_t scale, int64_t batch) {
  return scale * sum_of_squares / static_cast<acc_t>(batch);
}

// d penalty / d g = factor * g, times the upstream gradient of the penalty.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t derivative_factor(acc_t scale, int64_t batch, acc_t grad_penalty) {
  return acc_t(2) * scale / static_cast<acc_t>(batch) * grad_penalty;
}

inline at::ScalarType accumulation_type(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_grad(const char* op, const at::Tensor& grad) {
  TORCH_CHECK(grad.dim() >= 1, op, ": grad must have a batch dimension (shape (N, *)), got a "
              "0-dimensional tensor");
  TORCH_CHECK(at::isFloatingType(grad.scalar_type()), op,
              ": grad must be a floating-point tensor, got ", grad.scalar_type());
}

inline void check_grad_penalty(const char* op, const at::Tensor& grad_penalty,
                               const at::Tensor& grad) {
  TORCH_CHECK(grad_penalty.numel() == 1, op,
              ": grad_out must hold one value (the penalty's gradient), got shape ",
              grad_penalty.sizes());
  TORCH_CHECK(at::isFloatingType(grad_penalty.scalar_type()), op,
              ": grad_out must be a floating-point tensor, got ", grad_penalty.scalar_type());
  TORCH_CHECK(grad_penalty.device() == grad.device(), op, ": grad_out is on ",
              grad_penalty.device(), " but grad is on ", grad.device());
}

}  // namespace gradient_penalty
}  // namespace fastgan
