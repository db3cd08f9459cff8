// The one place where fastgan's op schemas are defined. Backends register their kernels with
// TORCH_LIBRARY_IMPL(fastgan, CPU|CUDA, m) in csrc/cpu and csrc/cuda, and the ops' autograd with
// TORCH_LIBRARY_IMPL(fastgan, Autograd, m) in csrc/autograd; fake kernels are registered from
// Python (fastgan/ops).
#include <torch/extension.h>

#include "cpu/gemm.h"
#include "cpu/scratch.h"
#include "cpu/switches.h"

#ifndef FASTGAN_VERSION
#error "FASTGAN_VERSION must be defined by the build"
#endif

#define FASTGAN_STRINGIFY_(x) #x
#define FASTGAN_STRINGIFY(x) FASTGAN_STRINGIFY_(x)

TORCH_LIBRARY(fastgan, m) {
  // Fused BatchNorm + LeakyReLU. When `training`, the op normalizes with the batch statistics,
  // returns them (mean, biased var), and updates running_mean and running_var in place when they
  // are given, as torch's batch norm does (lerp by `momentum`, the variance unbiased; any floating
  // dtype). Otherwise it normalizes with running_mean and running_var and returns two empty
  // tensors. The backward ops take the statistics that were used, and when `training`
  // differentiate through them. With `instance`, the statistics are per sample and channel
  // (instance normalization: N * C of them, sample-major; training only, without running
  // statistics), while weight and bias stay per channel.
  m.def(
      "batch_norm_leaky_relu(Tensor input, Tensor(a!)? running_mean, Tensor(b!)? running_var, "
      "Tensor? weight, Tensor? bias, bool training, float momentum, float eps, "
      "float negative_slope, bool instance=False) -> (Tensor output, Tensor batch_mean, "
      "Tensor batch_var)");
  m.def(
      "batch_norm_leaky_relu_backward(Tensor grad_output, Tensor input, Tensor mean, "
      "Tensor var, Tensor? weight, Tensor? bias, bool training, float eps, "
      "float negative_slope, bool[3] output_mask, bool instance=False) -> (Tensor grad_input, "
      "Tensor grad_weight, Tensor grad_bias)");
  m.def(
      "batch_norm_leaky_relu_double_backward(Tensor? grad_grad_input, "
      "Tensor? grad_grad_weight, Tensor? grad_grad_bias, Tensor grad_output, Tensor input, "
      "Tensor mean, Tensor var, Tensor? weight, Tensor? bias, bool training, float eps, "
      "float negative_slope, bool[3] output_mask, bool instance=False) -> "
      "(Tensor grad_grad_output, Tensor grad_input, Tensor grad_weight)");

  // Transposed convolution with bias and activation ("none", "relu", "leaky_relu", "tanh") fused
  // into the epilogue. The backward receives the forward's `result` (needed unless the
  // activation is "none"): activation' is read from it. grad_output is linear in both input and
  // weight, so the double backward reuses these two ops plus the activation's second-order term.
  m.def(
      "conv_transpose2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, "
      "int[2] padding, int[2] output_padding, int groups, int[2] dilation, str activation, "
      "float negative_slope) -> Tensor");
  m.def(
      "conv_transpose2d_backward(Tensor grad_output, Tensor input, Tensor weight, "
      "Tensor? result, int[2] stride, int[2] padding, int[2] output_padding, int groups, "
      "int[2] dilation, str activation, float negative_slope, bool[3] output_mask) -> "
      "(Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");
  // Given grad_preactivation (the gradient reaching the pre-activation y through the backward's
  // linear part), returns grad_preactivation * activation'(result) (for grad_output) and
  // grad_preactivation * grad_output * d activation'(result) / d result (for result).
  m.def(
      "conv_transpose2d_activation_double_backward(Tensor grad_preactivation, "
      "Tensor grad_output, Tensor result, str activation, float negative_slope, "
      "bool[2] output_mask) -> (Tensor grad_grad_output, Tensor grad_result)");

  // The R1 / R2 gradient penalty's reduction: scale * mean over dim 0 of the squared norms of
  // grad's samples, as a 0-dim tensor in the accumulation dtype (float64 for float64 grad, else
  // float32). The backward returns 2 * scale / N * grad * grad_out in grad's dtype; it is linear
  // in grad and grad_out, so higher orders reuse it.
  m.def("gradient_penalty(Tensor grad, float scale) -> Tensor");
  m.def("gradient_penalty_backward(Tensor grad_out, Tensor grad, float scale) -> Tensor");
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "fastgan's compiled kernels; the ops are torch.ops.fastgan.*";
  module.attr("__version__") = FASTGAN_STRINGIFY(FASTGAN_VERSION);
#ifdef FASTGAN_WITH_CUDA
  module.attr("cuda") = true;
#else
  module.attr("cuda") = false;
#endif
  // Whether at::parallel_for (inline OpenMP) runs in parallel in the CPU kernels.
#ifdef _OPENMP
  module.attr("openmp") = true;
#else
  module.attr("openmp") = false;
#endif
  // The at::vec instruction set the CPU kernels were compiled for (see setup.py).
  module.attr("cpu_capability") = FASTGAN_STRINGIFY(CPU_CAPABILITY);
  module.attr("torch_version") = FASTGAN_STRINGIFY(FASTGAN_TORCH_VERSION);
  // fastgan.backends.cpu's switches.
  module.def("_get_cpu_allow_winograd", [] { return fastgan::cpu::allow_winograd().load(); });
  module.def("_set_cpu_allow_winograd",
             [](bool allowed) { fastgan::cpu::allow_winograd().store(allowed); });
  module.def("_get_cpu_own_gemm", [] { return fastgan::cpu::own_gemm().load(); });
  module.def("_set_cpu_own_gemm", [](bool enabled) { fastgan::cpu::own_gemm().store(enabled); });
  // Whether this build has fastgan's float32 matrix product (its AVX2 and AVX-512 builds).
  module.attr("own_gemm_built") = fastgan::cpu::own_gemm_built();
  // Bytes of scratch the calling thread holds (none between op calls), for the tests.
  module.def("_cpu_scratch_bytes_held", &fastgan::cpu::scratch_bytes_held);
  // The CPU kernels' matrix product, for its tests and the benchmarks' GEMM table.
  module.def("_cpu_matmul", &fastgan::cpu::matrix_product, pybind11::arg("out"), pybind11::arg("a"),
             pybind11::arg("b"), pybind11::arg("accumulate") = false);
}
