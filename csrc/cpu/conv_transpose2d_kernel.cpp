// The CPU transposed convolution's ops: argument checks, the choice among four paths, and the
// activation's part of the double backward. The paths, tried in this order:
// - a 1x1 input with no padding or dilation: one GEMM (conv_transpose2d_single_pixel.cpp);
// - NCHW operands with few output channels: the planar orientation (conv_transpose2d_planar.cpp);
// - stride 2 with a 4x4 kernel and padding 1 (or a 3x3 one with output padding 1), or stride 1
//   with a 3x3 kernel and padding 0 - 2, with enough channels and tiles: Winograd's minimal
//   filtering (conv_transpose2d_winograd.cpp);
// - every other shape: sub-pixel GEMMs over the input's pixels (conv_transpose2d_gemm.cpp).
// Results take the input's layout.
#include <torch/library.h>

#include <optional>
#include <string_view>

#include "conv_transpose2d_common.h"

namespace fastgan {
namespace cpu {
namespace {

using namespace conv_transpose2d_detail;

void check_cpu(const char* op, const at::Tensor& input) {
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble, op,
              ": the CPU kernels support float32 and float64, got ", input.scalar_type());
}

Geometry describe(const char* op, const at::Tensor& input, const at::Tensor& weight,
                  const at::Tensor& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                  at::IntArrayRef output_padding, int64_t groups, at::IntArrayRef dilation) {
  const Geometry g = check_and_describe(op, input, weight, bias, stride, padding, output_padding,
                                        groups, dilation);
  check_cpu(op, input);
  return g;
}

// ------------------------------------------------------------------------------------------------
// Forward

at::Tensor conv_transpose2d(const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias_opt, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef output_padding,
                            int64_t groups, at::IntArrayRef dilation,
                            c10::string_view activation_name, double negative_slope) {
  constexpr const char* op = "fastgan::conv_transpose2d";
  const ScratchScope scratch_scope;
  const at::Tensor bias = bias_opt.value_or(at::Tensor());
  const Geometry g = describe(op, input, weight, bias, stride, padding, output_padding, groups,
                              dilation);
  const Activation activation = checked_activation(op, activation_name, negative_slope);

  if (single_pixel(g)) {
    return single_pixel_forward(g, input, weight, bias, activation, negative_slope);
  }
  const Dense x(input);
  const at::Tensor out =
      x.channels_last
          ? at::empty({g.batch, g.out_h, g.out_w, g.out_channels}, input.options())
                .permute({0, 3, 1, 2})
          : at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options());
  if (out.numel() == 0) return out;
  const at::Tensor bias_c = bias.defined() ? bias.contiguous() : bias;
  if (planar(g, input)) {
    const at::Tensor weight_rows = weight.contiguous().view({g.in_channels, g.out_per_group() * g.taps()});
    planar_forward(g, x.tensor, weight_rows, bias_c, activation, negative_slope, out);
    return out;
  }
  if (winograd(g)) {
    winograd_forward(g, x, weight, bias_c, activation, negative_slope, out, x.channels_last);
    return out;
  }
  gemm_forward(g, x, pack_weight(weight, g), bias_c, activation, negative_slope, out,
               x.channels_last);
  return out;
}

// ------------------------------------------------------------------------------------------------
// Backward

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_transpose2d_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& result_opt, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef output_padding, int64_t groups, at::IntArrayRef dilation,
    c10::string_view activation_name, double negative_slope, std::array<bool, 3> output_mask) {
  constexpr const char* op = "fastgan::conv_transpose2d_backward";
  const ScratchScope scratch_scope;
  const Geometry g = describe(op, input, weight, at::Tensor(), stride, padding, output_padding,
                              groups, dilation);
  const Activation activation = checked_activation(op, activation_name, negative_slope);
  const at::Tensor result = result_opt.value_or(at::Tensor());
  check_backward_tensors(op, grad_output, result, input, g, activation, activation_name);

  if (single_pixel(g)) {
    return single_pixel_backward(g, grad_output, input, weight, result, activation,
                                 negative_slope, output_mask);
  }
  const bool want_input = output_mask[0], want_weight = output_mask[1], want_bias = output_mask[2];
  const Dense x(input);
  // Outputs not asked for are distinct empty tensors (outputs must not alias).
  at::Tensor grad_input = input.new_empty({0}), grad_weight = input.new_empty({0}),
             grad_bias = input.new_empty({0});
  if (want_input) {
    grad_input = x.channels_last
                     ? at::empty({g.batch, g.in_h, g.in_w, g.in_channels}, input.options())
                           .permute({0, 3, 1, 2})
                     : at::empty_like(x.tensor);
  }
  // grad_weight's sum: in the weight's own layout (C_in, C_out/groups * taps) on the planar path,
  // packed per group on the others.
  const bool planar_path = planar(g, input);
  const bool winograd_path = !planar_path && winograd(g) && g.batch > 0;
  const at::Tensor grad_weight_sum =
      !want_weight || winograd_path ? at::Tensor()
      : planar_path ? at::zeros({g.in_channels, g.out_per_group() * g.taps()}, input.options())
                    : at::zeros({g.groups, g.in_per_group(), g.taps() * g.out_per_group()},
                                input.options());
  std::vector<double> bias_sums(g.out_channels, 0.0);
  if (g.batch > 0 && (want_input || want_weight || want_bias)) {
    if (planar_path) {
      const at::Tensor weight_rows =
          weight.contiguous().view({g.in_channels, g.out_per_group() * g.taps()});
      const at::Tensor res = activation != Activation::kNone ? result.contiguous() : at::Tensor();
      planar_backward(g, grad_output.contiguous(), res, x.tensor, weight_rows, activation,
                      negative_slope, want_input ? grad_input : at::Tensor(), grad_weight_sum,
                      want_bias ? &bias_sums : nullptr);
    } else {
      const Dense go(grad_output);
      const std::optional<Dense> res =
          activation != Activation::kNone ? std::optional<Dense>(Dense(result)) : std::nullopt;
      if (winograd_path) {
        winograd_backward(g, go, res ? &*res : nullptr, x, weight, activation, negative_slope,
                          want_input ? grad_input : at::Tensor(),
                          want_weight ? &grad_weight : nullptr, want_bias ? &bias_sums : nullptr);
      } else {
        gemm_backward(g, go, res ? &*res : nullptr, x,
                      want_input ? pack_weight(weight, g) : at::Tensor(), activation,
                      negative_slope, want_input ? grad_input : at::Tensor(), grad_weight_sum,
                      want_bias ? &bias_sums : nullptr);
      }
    }
  }
  if (want_weight && !winograd_path) {
    grad_weight = planar_path ? grad_weight_sum.view(weight.sizes())
                              : unpack_weight(grad_weight_sum, g);
  }
  if (want_bias) {
    grad_bias = at::tensor(bias_sums, input.options().dtype(at::kDouble)).to(input.scalar_type());
  }
  return {grad_input, grad_weight, grad_bias};
}

// ------------------------------------------------------------------------------------------------
// The activation's part of the double backward

std::tuple<at::Tensor, at::Tensor> conv_transpose2d_activation_double_backward(
    const at::Tensor& grad_preactivation, const at::Tensor& grad_output, const at::Tensor& result,
    c10::string_view activation_name, double negative_slope, std::array<bool, 2> output_mask) {
  constexpr const char* op = "fastgan::conv_transpose2d_activation_double_backward";
  const ActivationDoubleBackward a = prepare_activation_double_backward(
      op, grad_preactivation, grad_output, result, activation_name, negative_slope, output_mask);
  check_cpu(op, result);
  const Activation activation = a.activation;
  const int64_t count = a.result.numel();
  AT_DISPATCH_FLOATING_TYPES(result.scalar_type(), "conv_transpose2d_activation_double_backward",
                             [&] {
    using V = Vec<scalar_t>;
    const V slope(static_cast<scalar_t>(negative_slope));
    const scalar_t* gp_data = a.grad_preactivation.const_data_ptr<scalar_t>();
    const scalar_t* go_data = a.grad_output.const_data_ptr<scalar_t>();
    const scalar_t* res_data = a.result.const_data_ptr<scalar_t>();
    at::parallel_for(0, count, at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
      if (output_mask[0]) {
        map_contiguous<scalar_t, 2>(
            end - begin, {gp_data + begin, res_data + begin},
            a.grad_grad_output.mutable_data_ptr<scalar_t>() + begin,
            [&](const V* v) { return v[0] * activation_grad(activation, v[1], slope); });
      }
      if (output_mask[1]) {
        map_contiguous<scalar_t, 3>(
            end - begin, {gp_data + begin, go_data + begin, res_data + begin},
            a.grad_result.mutable_data_ptr<scalar_t>() + begin, [&](const V* v) {
              return v[0] * v[1] * activation_grad_derivative<V>(activation, v[2]);
            });
      }
    });
  });
  return {a.grad_grad_output, a.grad_result};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  register_kernels(m, &conv_transpose2d, &conv_transpose2d_backward,
                   &conv_transpose2d_activation_double_backward);
}

}  // namespace cpu
}  // namespace fastgan
