// Fused BatchNorm + LeakyReLU: the per-element and per-channel math shared by the CPU and CUDA
// kernels. Everything here is C10_HOST_DEVICE so that the CPU tests exercise the arithmetic the GPU
// runs.
//
// Notation, per channel: M elements, mean mu, invstd = 1/sqrt(var + eps), xc = x - mu,
// xh = xc * invstd, y = w * xh + b = x * scale + shift, out = leaky_relu(y),
// g = grad_out * leaky_relu'(y) (the gradient reaching y).
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>

namespace fastgan {
namespace bn_lrelu {

// Same convention as torch: the negative branch is taken for y <= 0, and the gradient at y == 0 is
// the slope.
template <typename T>
C10_HOST_DEVICE inline T leaky_relu(T y, T slope) {
  return y > T(0) ? y : y * slope;
}

template <typename T>
C10_HOST_DEVICE inline T leaky_relu_grad(T y, T slope) {
  return y > T(0) ? T(1) : slope;
}

template <typename T>
C10_HOST_DEVICE inline T inverse_std(T var, T eps) {
  return T(1) / ::sqrt(var + eps);
}

// Mean and biased variance from sums of (x - shift) and (x - shift)^2. Shifting by a sample of the
// channel keeps the one-pass formula from cancelling when |mean| >> std.
template <typename T>
struct Moments {
  T mean, var;
};

template <typename T>
C10_HOST_DEVICE inline Moments<T> moments_from_shifted_sums(T count, T shift, T sum, T sum_sq) {
  if (count <= T(0)) return {T(0), T(0)};
  const T shifted_mean = sum / count;
  const T var = sum_sq / count - shifted_mean * shifted_mean;
  return {shift + shifted_mean, var > T(0) ? var : T(0)};
}

// The shifted sums lose about (1 + offset^2 / var) units in the last place of the variance to
// cancellation, offset = mean - shift. A shift further than this (in squared standard deviations)
// from the mean (an outlier taken as the shift) asks for the sums again, shifted by the mean.
constexpr double kMaxShiftOffsetSquared = 16.0;

template <typename T>
C10_HOST_DEVICE inline bool shifted_sums_accurate(const Moments<T>& moments, T shift) {
  const T offset = moments.mean - shift;
  return offset * offset <= T(kMaxShiftOffsetSquared) * moments.var;  // false for NaN
}

// Normalization and the affine transform folded into one multiply-add: y = x * scale + shift. The
// forward and both backward passes compute y through this, so they agree on the activation mask.
// The kernels evaluate it centered, y = (x - center) * scale + (shift + center * scale) with center
// about the mean, so that float32 rounds the small x - center rather than a large x * scale.
template <typename T>
struct Affine {
  T scale, shift;
};

template <typename T>
C10_HOST_DEVICE inline Affine<T> affine(T mean, T invstd, T weight, T bias) {
  const T scale = weight * invstd;
  return {scale, bias - mean * scale};
}

// First-order backward, linear per channel: grad_input = g * grad + x * input + constant.
// In training the batch statistics depend on x:
//   grad_input = w * invstd * (g - mean(g) - xh * mean(g * xh));
// in evaluation they are constants: grad_input = g * w * invstd.
// sum_g = sum(g), sum_g_xc = sum(g * xc); grad_weight = invstd * sum_g_xc, grad_bias = sum_g.
template <typename T>
struct BackwardCoefficients {
  T grad, input, constant;
};

// Centered: grad_input = g * grad + xc * input + constant, so that no constant cancels against
// x * input when |mean| >> std.
template <typename T>
C10_HOST_DEVICE inline BackwardCoefficients<T> centered_backward_coefficients(
    bool training, T count, T invstd, T weight, T sum_g, T sum_g_xc) {
  const T grad = weight * invstd;
  if (!training || count <= T(0)) return {grad, T(0), T(0)};
  const T input = -grad * invstd * invstd * sum_g_xc / count;
  return {grad, input, -grad * sum_g / count};
}

template <typename T>
C10_HOST_DEVICE inline BackwardCoefficients<T> backward_coefficients(
    bool training, T count, T mean, T invstd, T weight, T sum_g, T sum_g_xc) {
  BackwardCoefficients<T> k =
      centered_backward_coefficients(training, count, invstd, weight, sum_g, sum_g_xc);
  k.constant -= mean * k.input;
  return k;
}

// Second-order backward. Upstream gradients: ggi (per element, for grad_input), ggw and ggb (per
// channel, for grad_weight and grad_bias). leaky_relu' is piecewise constant, so y's dependence on
// x, w and b adds nothing and grad_bias is zero. Per element, both results are linear:
//   grad_grad_output = leaky_relu'(y) * (ggi * go_ggi + x * go_x + go_const)
//   grad_input       = ggi * x_ggi + g * x_g + x * x_x + x_const
// and grad_weight is per channel. The sums are sum(g), sum(g * xc), sum(ggi), sum(ggi * xc),
// sum(ggi * g).
template <typename T>
struct DoubleBackwardSums {
  T g, g_xc, ggi, ggi_xc, ggi_g;
};

template <typename T>
struct DoubleBackwardCoefficients {
  T go_ggi, go_x, go_const;
  T x_ggi, x_g, x_x, x_const;
  T grad_weight;
};

// Centered, like centered_backward_coefficients: the constants go with xc rather than x.
template <typename T>
C10_HOST_DEVICE inline DoubleBackwardCoefficients<T> centered_double_backward_coefficients(
    bool training, T count, T invstd, T weight, T ggw, T ggb, const DoubleBackwardSums<T>& sum) {
  const T w_inv = weight * invstd;
  if (!training || count <= T(0)) {
    // grad_input = w * invstd * g: the only path back to x is grad_weight = sum(g * xc) * invstd.
    const T go_x = invstd * ggw;
    return {w_inv, go_x, ggb, T(0), go_x, T(0), T(0), invstd * sum.ggi_g};
  }
  const T mean_g = sum.g / count;
  const T mean_g_xh = invstd * sum.g_xc / count;      // c in the derivation
  const T mean_ggi = sum.ggi / count;
  const T mean_ggi_xh = invstd * sum.ggi_xc / count;  // m in the derivation
  // A = sum(ggi * (g - mean(g) - xh * c)); grad_weight = invstd * A.
  const T a = sum.ggi_g - mean_g * sum.ggi - mean_g_xh * invstd * sum.ggi_xc;
  // d/dg: w * invstd * (ggi - mean(ggi) - xh * m) + ggw * xh + ggb.
  const T go_x = invstd * (ggw - w_inv * mean_ggi_xh);
  const T go_const = ggb - w_inv * mean_ggi;
  // d/dx through xh and invstd. With e = ggi * (-w_inv * c) + g * (ggw - w_inv * m):
  //   invstd * (e - mean(e) - xh * mean(e * xh)) - w * invstd^2 * xh * A / M.
  const T e_ggi = -w_inv * mean_g_xh;
  const T e_g = ggw - w_inv * mean_ggi_xh;
  const T mean_e = e_ggi * mean_ggi + e_g * mean_g;
  const T mean_e_xh = e_ggi * mean_ggi_xh + e_g * mean_g_xh;
  const T q = invstd * mean_e_xh + w_inv * invstd * a / count;
  return {w_inv, go_x, go_const, invstd * e_ggi, invstd * e_g, -invstd * q, -invstd * mean_e,
          invstd * a};
}

template <typename T>
C10_HOST_DEVICE inline DoubleBackwardCoefficients<T> double_backward_coefficients(
    bool training, T count, T mean, T invstd, T weight, T ggw, T ggb,
    const DoubleBackwardSums<T>& sum) {
  DoubleBackwardCoefficients<T> k =
      centered_double_backward_coefficients(training, count, invstd, weight, ggw, ggb, sum);
  k.go_const -= mean * k.go_x;
  k.x_const -= mean * k.x_x;
  return k;
}

// Argument checks shared by every backend; `op` names the op in the message. A per-channel
// tensor has shape (C,), is on input's device and has `dtype` (nullopt: any floating dtype).
inline void check_channel_tensor(const char* op, const char* name, const at::Tensor& t,
                                 const at::Tensor& input, std::optional<at::ScalarType> dtype) {
  if (!t.defined()) return;
  TORCH_CHECK(t.dim() == 1 && t.size(0) == input.size(1), op, ": ", name,
              " must have shape (C,) = (", input.size(1), ",) for input of shape ",
              input.sizes(), ", got ", t.sizes());
  if (dtype) {
    TORCH_CHECK(t.scalar_type() == *dtype, op, ": ", name, " must have dtype ", *dtype, ", got ",
                t.scalar_type());
  } else {
    TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name,
                " must have a floating dtype, got ", t.scalar_type());
  }
  TORCH_CHECK(t.device() == input.device(), op, ": ", name, " is on ", t.device(),
              " but input is on ", input.device());
}

inline void check_like_input(const char* op, const char* name, const at::Tensor& t,
                             const at::Tensor& input) {
  TORCH_CHECK(t.sizes() == input.sizes(), op, ": ", name, " must have the shape of input ",
              input.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), op, ": ", name, " must have dtype ",
              input.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == input.device(), op, ": ", name, " is on ", t.device(),
              " but input is on ", input.device());
}

// input is (N, C, *); weight and bias are per-channel in input's op-math dtype (float32 for
// bfloat16 and float16 input).
inline void check_input_and_params(const char* op, const at::Tensor& input,
                                   const at::Tensor& weight, const at::Tensor& bias, double eps) {
  TORCH_CHECK(input.dim() >= 2, op, ": input must have shape (N, C, *), got ", input.sizes());
  TORCH_CHECK(eps > 0, op, ": eps must be positive, got ", eps);
  const auto param_dtype = at::toOpMathType(input.scalar_type());
  check_channel_tensor(op, "weight", weight, input, param_dtype);
  check_channel_tensor(op, "bias", bias, input, param_dtype);
}

// The statistics that normalized the input, in the parameters' dtype: (C,), or (N * C,) when
// `instance` (per sample and channel).
inline void check_statistics_tensor(const char* op, const char* name, const at::Tensor& t,
                                    const at::Tensor& input, bool instance) {
  if (!instance) {
    check_channel_tensor(op, name, t, input, at::toOpMathType(input.scalar_type()));
    return;
  }
  const int64_t count = input.size(0) * input.size(1);
  TORCH_CHECK(t.dim() == 1 && t.size(0) == count, op, ": ", name,
              " must have shape (N * C,) = (", count, ",) with instance statistics for input of "
              "shape ", input.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::toOpMathType(input.scalar_type()), op, ": ", name,
              " must have dtype ", at::toOpMathType(input.scalar_type()), ", got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == input.device(), op, ": ", name, " is on ", t.device(),
              " but input is on ", input.device());
}

// The backward op: grad_output like input; mean and var, the statistics that normalized the input.
inline void check_backward_inputs(const char* op, const at::Tensor& grad_output,
                                  const at::Tensor& input, const at::Tensor& mean,
                                  const at::Tensor& var, const at::Tensor& weight,
                                  const at::Tensor& bias, double eps, bool instance) {
  check_input_and_params(op, input, weight, bias, eps);
  check_statistics_tensor(op, "mean", mean, input, instance);
  check_statistics_tensor(op, "var", var, input, instance);
  check_like_input(op, "grad_output", grad_output, input);
}

// The double backward op: the backward's arguments, and the upstream gradients of its outputs
// (each may be undefined).
inline void check_double_backward_inputs(const char* op, const at::Tensor& grad_grad_input,
                                         const at::Tensor& grad_grad_weight,
                                         const at::Tensor& grad_grad_bias,
                                         const at::Tensor& grad_output, const at::Tensor& input,
                                         const at::Tensor& mean, const at::Tensor& var,
                                         const at::Tensor& weight, const at::Tensor& bias,
                                         double eps, bool instance) {
  check_backward_inputs(op, grad_output, input, mean, var, weight, bias, eps, instance);
  if (grad_grad_input.defined()) check_like_input(op, "grad_grad_input", grad_grad_input, input);
  const auto param_dtype = at::toOpMathType(input.scalar_type());
  check_channel_tensor(op, "grad_grad_weight", grad_grad_weight, input, param_dtype);
  check_channel_tensor(op, "grad_grad_bias", grad_grad_bias, input, param_dtype);
}

// The forward's running statistics come together, in any floating dtype; evaluation needs them,
// training updates them when given and needs more than one value per channel.
inline void check_forward_inputs(const char* op, const at::Tensor& input,
                                 const at::Tensor& running_mean, const at::Tensor& running_var,
                                 const at::Tensor& weight, const at::Tensor& bias, bool training,
                                 double momentum, double eps, bool instance) {
  check_input_and_params(op, input, weight, bias, eps);
  // Instance statistics are always the input's own; their running averages are the caller's.
  TORCH_CHECK(!instance || (training && !running_mean.defined()), op,
              ": instance statistics need training=True and no running statistics");
  check_channel_tensor(op, "running_mean", running_mean, input, std::nullopt);
  check_channel_tensor(op, "running_var", running_var, input, std::nullopt);
  TORCH_CHECK(running_mean.defined() == running_var.defined(), op,
              ": running_mean and running_var must be given together");
  TORCH_CHECK(training || running_mean.defined(), op,
              ": running_mean and running_var are required when not training");
  TORCH_CHECK(momentum >= 0 && momentum <= 1, op, ": momentum must be in [0, 1], got ", momentum);
  int64_t per_statistic = instance ? 1 : input.size(0);
  for (int64_t d = 2; d < input.dim(); ++d) per_statistic *= input.size(d);
  TORCH_CHECK_VALUE(!training || per_statistic != 1, op,
                    ": expected more than 1 value per channel when training, got input size ",
                    input.sizes());
}

}  // namespace bn_lrelu
}  // namespace fastgan
