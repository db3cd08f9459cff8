// Transposed 2D convolution with a fused bias + activation epilogue: the geometry, the activation
// math and the argument checks shared by the CPU and CUDA kernels. Everything a kernel evaluates per
// element is C10_HOST_DEVICE so that the CPU tests exercise the arithmetic the GPU runs.
//
// Notation: input x (N, C_in, H, W), weight w (C_in, C_out / groups, kH, kW), output
// (N, C_out, H_out, W_out). Along each spatial axis input position i and tap k reach output position
//   o = i * stride - padding + k * dilation,
// so the output is a sum of kH * kW shifted, strided copies of x @ w[:, :, kh, kw]. Grouping the taps
// by o mod stride gives the sub-pixel decomposition: each of the stride^2 output phases is an
// ordinary convolution of x with that phase's taps, with no products of inserted zeros.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <string_view>
#include <utility>

namespace fastgan {
namespace conv_t {

// ------------------------------------------------------------------------------------------------
// Geometry along one spatial axis

// torch's formula: (in - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1.
C10_HOST_DEVICE inline int64_t output_size(int64_t in, int64_t kernel, int64_t stride,
                                           int64_t padding, int64_t dilation,
                                           int64_t output_padding) {
  return (in - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1;
}

// The output position that input position `in` reaches through tap `tap`, or -1 when that falls
// outside [0, out_size).
C10_HOST_DEVICE inline int64_t output_index(int64_t in, int64_t tap, int64_t stride,
                                            int64_t padding, int64_t dilation, int64_t out_size) {
  const int64_t out = in * stride - padding + tap * dilation;
  return out >= 0 && out < out_size ? out : -1;
}

// The inverse: the input position that reaches output position `out` through tap `tap`, or -1 when
// none does (out is in another sub-pixel phase of this tap, or the position is outside the input).
C10_HOST_DEVICE inline int64_t input_index(int64_t out, int64_t tap, int64_t stride,
                                           int64_t padding, int64_t dilation, int64_t in_size) {
  const int64_t shifted = out + padding - tap * dilation;
  if (shifted < 0 || shifted % stride != 0) return -1;
  const int64_t in = shifted / stride;
  return in < in_size ? in : -1;
}

// ------------------------------------------------------------------------------------------------
// Implicit GEMMs along one spatial axis. A GEMM row j writes destination position
// dst_first + j * dst_step and, through tap t (kernel index tap_first + t * tap_step), reads source
// position src_first + j * src_step + offset_first + t * offset_step (no contribution when that
// falls outside [0, src_size)).

struct AxisPlan {
  int64_t dst_first, dst_step, count;
  int64_t src_first, src_step, src_size;
  int64_t tap_first, tap_step, taps;
  int64_t offset_first, offset_step;
};

C10_HOST_DEVICE inline int64_t floor_div(int64_t a, int64_t b) {  // b > 0
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

C10_HOST_DEVICE inline int64_t greatest_common_divisor(int64_t a, int64_t b) {
  while (b != 0) {
    const int64_t r = a % b;
    a = b;
    b = r;
  }
  return a;
}

// The forward's sub-pixel phase `phase` (in [0, stride)): the outputs o with
// (o + padding) mod stride == phase, and the taps k with k * dilation mod stride == phase, the only
// ones that reach them. With o + padding = q * stride + phase and k * dilation = p * stride + phase
// the input position is q - p: row j reads q = (dst_first + padding) / stride + j, and the taps
// come every stride / gcd(stride, dilation) kernel positions, p growing by dilation / gcd each.
// A phase may have no taps (its outputs are bias only) or no outputs.
C10_HOST_DEVICE inline AxisPlan transposed_phase_plan(int64_t phase, int64_t in_size,
                                                      int64_t out_size, int64_t kernel,
                                                      int64_t stride, int64_t padding,
                                                      int64_t dilation) {
  AxisPlan plan{};
  plan.dst_first = ((phase - padding) % stride + stride) % stride;
  plan.dst_step = stride;
  plan.count = plan.dst_first < out_size ? (out_size - plan.dst_first + stride - 1) / stride : 0;
  plan.src_first = (plan.dst_first + padding) / stride;
  plan.src_step = 1;
  plan.src_size = in_size;
  const int64_t divisor = greatest_common_divisor(stride, dilation);
  plan.tap_step = stride / divisor;
  // The first tap of the phase, if any: k * dilation mod stride repeats with period tap_step.
  int64_t first = -1;
  for (int64_t k = 0; k < plan.tap_step && first < 0; ++k) {
    if ((k * dilation) % stride == phase) first = k;
  }
  if (first < 0 || first >= kernel) {
    plan.tap_first = 0;
    plan.taps = 0;
  } else {
    plan.tap_first = first;
    plan.taps = (kernel - first + plan.tap_step - 1) / plan.tap_step;
  }
  plan.offset_first = -((plan.tap_first * dilation - phase) / stride);
  plan.offset_step = -(dilation / divisor);
  return plan;
}

// The backward's grad_input, an ordinary strided convolution of grad_output: row j is input
// position j, and tap k reads output position j * stride - padding + k * dilation.
C10_HOST_DEVICE inline AxisPlan strided_convolution_plan(int64_t in_size, int64_t out_size,
                                                         int64_t kernel, int64_t stride,
                                                         int64_t padding, int64_t dilation) {
  return {0, 1, in_size, -padding, stride, out_size, 0, 1, kernel, 0, dilation};
}

// The input positions [first, first + count) whose output position through tap `tap` exists:
// the rows of grad_weight's reduction for that tap.
struct Range {
  int64_t first, count;
};

C10_HOST_DEVICE inline Range inputs_reaching_output(int64_t tap, int64_t in_size, int64_t out_size,
                                                    int64_t stride, int64_t padding,
                                                    int64_t dilation) {
  const int64_t shift = padding - tap * dilation;  // out = in * stride - shift
  int64_t first = -floor_div(-shift, stride);      // ceil(shift / stride)
  int64_t last = floor_div(out_size - 1 + shift, stride) + 1;
  first = first > 0 ? first : 0;
  last = last < in_size ? last : in_size;
  return {first, last > first ? last - first : 0};
}

// ------------------------------------------------------------------------------------------------
// Epilogue: out = activation(y), y = the convolution plus bias. The backward needs activation'(y),
// which every supported activation lets us recover from `out` alone, so the forward saves no
// pre-activation tensor.

enum class Activation : int { kNone = 0, kRelu = 1, kLeakyRelu = 2, kTanh = 3 };

inline std::string_view as_std(c10::string_view s) { return {s.data(), s.size()}; }

// Names as the Python API spells them; "none" stands for activation=None.
inline Activation parse_activation(const char* op, std::string_view name) {
  if (name == "none") return Activation::kNone;
  if (name == "relu") return Activation::kRelu;
  if (name == "leaky_relu") return Activation::kLeakyRelu;
  if (name == "tanh") return Activation::kTanh;
  TORCH_CHECK(false, op, ": activation must be one of \"none\", \"relu\", \"leaky_relu\", \"tanh\", got \"",
              name, "\"");
}

// Same conventions as torch: relu and leaky_relu take the negative branch for y <= 0.
template <typename T>
C10_HOST_DEVICE inline T activate(Activation activation, T y, T negative_slope) {
  switch (activation) {
    case Activation::kRelu: return y > T(0) ? y : T(0);
    case Activation::kLeakyRelu: return y > T(0) ? y : y * negative_slope;
    case Activation::kTanh: return ::tanh(y);
    default: return y;
  }
}

// activation'(y) from out = activation(y). Exact for leaky_relu only when negative_slope >= 0 (then
// out > 0 exactly when y > 0); check_negative_slope enforces that. tanh' = 1 - out^2 is the formula
// torch's tanh backward uses.
template <typename T>
C10_HOST_DEVICE inline T activation_grad(Activation activation, T out, T negative_slope) {
  switch (activation) {
    case Activation::kRelu: return out > T(0) ? T(1) : T(0);
    case Activation::kLeakyRelu: return out > T(0) ? T(1) : negative_slope;
    case Activation::kTanh: return T(1) - out * out;
    default: return T(1);
  }
}

// d activation_grad(out) / d out, for the second-order backward: the piecewise-linear activations
// have a piecewise-constant derivative, tanh's 1 - out^2 gives -2 out.
template <typename T>
C10_HOST_DEVICE inline T activation_grad_derivative(Activation activation, T out) {
  return activation == Activation::kTanh ? T(-2) * out : T(0);
}

inline void check_negative_slope(const char* op, Activation activation, double negative_slope) {
  TORCH_CHECK(activation != Activation::kLeakyRelu || negative_slope >= 0, op,
              ": the fused leaky_relu needs negative_slope >= 0 (its derivative is read from the "
              "output's sign), got ", negative_slope);
}

// The activation an op's arguments name, checked.
inline Activation checked_activation(const char* op, c10::string_view name, double negative_slope) {
  const Activation activation = parse_activation(op, as_std(name));
  check_negative_slope(op, activation, negative_slope);
  return activation;
}

// ------------------------------------------------------------------------------------------------
// The whole problem's sizes, validated once on the host and passed to kernels by value.

struct Geometry {
  int64_t batch, in_channels, out_channels, groups;
  int64_t in_h, in_w, out_h, out_w, kernel_h, kernel_w;
  int64_t stride_h, stride_w, padding_h, padding_w, dilation_h, dilation_w;
  int64_t in_per_group() const { return in_channels / groups; }
  int64_t out_per_group() const { return out_channels / groups; }
  int64_t taps() const { return kernel_h * kernel_w; }
};

using Pair = c10::ArrayRef<int64_t>;

inline void check_pair(const char* op, const char* name, Pair value, int64_t minimum) {
  TORCH_CHECK(value.size() == 2, op, ": ", name, " must have 2 values, got ", value.size());
  for (const int64_t v : value) {
    TORCH_CHECK(v >= minimum, op, ": ", name, " must be >= ", minimum, ", got ", value);
  }
}

// Validates input (N, C_in, H, W), weight (C_in, C_out / groups, kH, kW), bias (C_out,) and the
// hyper-parameters the way torch does, and returns the geometry.
inline Geometry check_and_describe(const char* op, const at::Tensor& input,
                                   const at::Tensor& weight, const at::Tensor& bias, Pair stride,
                                   Pair padding, Pair output_padding, int64_t groups,
                                   Pair dilation) {
  TORCH_CHECK(input.dim() == 4, op, ": input must have shape (N, C_in, H, W), got ",
              input.sizes());
  TORCH_CHECK(weight.dim() == 4, op,
              ": weight must have shape (C_in, C_out / groups, kH, kW), got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == input.scalar_type(), op, ": weight must have dtype ",
              input.scalar_type(), ", got ", weight.scalar_type());
  TORCH_CHECK(weight.device() == input.device(), op, ": weight is on ", weight.device(),
              " but input is on ", input.device());
  check_pair(op, "stride", stride, 1);
  check_pair(op, "padding", padding, 0);
  check_pair(op, "output_padding", output_padding, 0);
  check_pair(op, "dilation", dilation, 1);
  TORCH_CHECK(groups >= 1, op, ": groups must be >= 1, got ", groups);
  for (int d = 0; d < 2; ++d) {
    TORCH_CHECK(output_padding[d] < stride[d] || output_padding[d] < dilation[d], op,
                ": output_padding must be smaller than either stride or dilation, got "
                "output_padding=", output_padding, ", stride=", stride, ", dilation=", dilation);
  }
  const int64_t in_channels = input.size(1);
  TORCH_CHECK(weight.size(0) == in_channels, op, ": weight must have C_in = ", in_channels,
              " rows (the input's channels), got weight of shape ", weight.sizes());
  TORCH_CHECK(in_channels % groups == 0, op, ": groups=", groups,
              " must divide the input's channels ", in_channels);
  const int64_t out_channels = weight.size(1) * groups;
  if (bias.defined()) {
    TORCH_CHECK(bias.dim() == 1 && bias.size(0) == out_channels, op, ": bias must have shape (",
                out_channels, ",), got ", bias.sizes());
    TORCH_CHECK(bias.scalar_type() == input.scalar_type(), op, ": bias must have dtype ",
                input.scalar_type(), ", got ", bias.scalar_type());
    TORCH_CHECK(bias.device() == input.device(), op, ": bias is on ", bias.device(),
                " but input is on ", input.device());
  }
  Geometry g{input.size(0), in_channels, out_channels, groups, input.size(2), input.size(3),
             0, 0, weight.size(2), weight.size(3), stride[0], stride[1], padding[0], padding[1],
             dilation[0], dilation[1]};
  g.out_h = output_size(g.in_h, g.kernel_h, g.stride_h, g.padding_h, g.dilation_h,
                        output_padding[0]);
  g.out_w = output_size(g.in_w, g.kernel_w, g.stride_w, g.padding_w, g.dilation_w,
                        output_padding[1]);
  TORCH_CHECK(g.out_h > 0 && g.out_w > 0, op, ": the output would have size ", g.out_h, "x",
              g.out_w, " for input ", input.sizes(), ", weight ", weight.sizes(),
              ", stride=", stride, ", padding=", padding, ", dilation=", dilation,
              ", output_padding=", output_padding);
  return g;
}

// A tensor the backward receives in the output's shape (grad_output, the saved result).
inline void check_output_like(const char* op, const char* name, const at::Tensor& t,
                              const at::Tensor& input, const Geometry& g) {
  const std::array<int64_t, 4> expected{g.batch, g.out_channels, g.out_h, g.out_w};
  TORCH_CHECK(t.sizes() == c10::IntArrayRef(expected), op, ": ", name,
              " must have the output's shape ", c10::IntArrayRef(expected), ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), op, ": ", name, " must have dtype ",
              input.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == input.device(), op, ": ", name, " is on ", t.device(),
              " but input is on ", input.device());
}

// The backward's tensors in the output's shape: grad_output, and the saved result (the forward's
// output), which an activation's derivative is read from.
inline void check_backward_tensors(const char* op, const at::Tensor& grad_output,
                                   const at::Tensor& result, const at::Tensor& input,
                                   const Geometry& g, Activation activation,
                                   c10::string_view activation_name) {
  check_output_like(op, "grad_output", grad_output, input, g);
  if (activation == Activation::kNone) return;
  TORCH_CHECK(result.defined(), op, ": result (the forward's output) is required for activation \"",
              as_std(activation_name), "\"");
  check_output_like(op, "result", result, input, g);
}

// Channels-last storage that is not also plain contiguous (mirrored by fastgan/ops for the fake
// kernels): such tensors are read in place, and the op's results take that layout too.
inline bool stored_channels_last(const at::Tensor& t) {
  return !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// conv_transpose2d_activation_double_backward after its argument checks: every tensor dense in
// result's storage order, so that one flat pass covers all of them, and the outputs allocated
// (distinct empty tensors where not asked for).
struct ActivationDoubleBackward {
  Activation activation;
  at::Tensor grad_preactivation, grad_output, result;
  at::Tensor grad_grad_output, grad_result;
};

inline ActivationDoubleBackward prepare_activation_double_backward(
    const char* op, const at::Tensor& grad_preactivation, const at::Tensor& grad_output,
    const at::Tensor& result, c10::string_view activation_name, double negative_slope,
    std::array<bool, 2> output_mask) {
  const Activation activation = checked_activation(op, activation_name, negative_slope);
  TORCH_CHECK(result.dim() == 4, op, ": result must have shape (N, C, H, W), got ",
              result.sizes());
  for (const auto& [name, t] : {std::pair{"grad_preactivation", &grad_preactivation},
                                std::pair{"grad_output", &grad_output}}) {
    TORCH_CHECK(t->sizes() == result.sizes(), op, ": ", name, " must have the shape of result ",
                result.sizes(), ", got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == result.scalar_type(), op, ": ", name, " must have dtype ",
                result.scalar_type(), ", got ", t->scalar_type());
    TORCH_CHECK(t->device() == result.device(), op, ": ", name, " is on ", t->device(),
                " but result is on ", result.device());
  }
  const auto format = stored_channels_last(result) ? at::MemoryFormat::ChannelsLast
                                                   : at::MemoryFormat::Contiguous;
  const at::Tensor res = result.contiguous(format);
  auto output = [&](bool wanted) { return wanted ? at::empty_like(res) : result.new_empty({0}); };
  return {activation,
          grad_preactivation.contiguous(format),
          grad_output.contiguous(format),
          res,
          output(output_mask[0]),
          output(output_mask[1])};
}

// Every backend registers its kernels through this.
template <typename Forward, typename Backward, typename DoubleBackward>
void register_kernels(torch::Library& m, Forward forward, Backward backward,
                      DoubleBackward activation_double_backward) {
  m.impl("conv_transpose2d", forward);
  m.impl("conv_transpose2d_backward", backward);
  m.impl("conv_transpose2d_activation_double_backward", activation_double_backward);
}

}  // namespace conv_t
}  // namespace fastgan
