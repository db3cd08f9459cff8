// Autograd for the transposed convolution with a fused activation, for every device: forward ->
// backward op, whose own backward reuses the forward and backward ops plus the activation's
// second-order term (conv_transpose2d_activation_double_backward).
#include <torch/library.h>

#include <array>
#include <string>
#include <tuple>
#include <vector>

#include "function_support.h"

namespace fastgan {
namespace autograd {
namespace {

using at::IntArrayRef;

const auto& forward_op() {
  static const auto op =
      find_op<Tensor(const Tensor&, const Tensor&, const OptionalTensor&, IntArrayRef,
                     IntArrayRef, IntArrayRef, int64_t, IntArrayRef, c10::string_view, double)>(
          "fastgan::conv_transpose2d");
  return op;
}

const auto& backward_op() {
  static const auto op =
      find_op<Triple(const Tensor&, const Tensor&, const Tensor&, const OptionalTensor&,
                     IntArrayRef, IntArrayRef, IntArrayRef, int64_t, IntArrayRef,
                     c10::string_view, double, std::array<bool, 3>)>(
          "fastgan::conv_transpose2d_backward");
  return op;
}

const auto& activation_double_backward_op() {
  static const auto op =
      find_op<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                         c10::string_view, double, std::array<bool, 2>)>(
          "fastgan::conv_transpose2d_activation_double_backward");
  return op;
}

// stride, padding, output_padding, groups, dilation, and the activation.
struct Geometry {
  std::vector<int64_t> stride, padding, output_padding;
  int64_t groups;
  std::vector<int64_t> dilation;
  std::string activation;
  double negative_slope;

  void save(AutogradContext* ctx) const {
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["output_padding"] = output_padding;
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["activation"] = activation;
    ctx->saved_data["negative_slope"] = negative_slope;
  }
  static Geometry load(AutogradContext* ctx) {
    auto& d = ctx->saved_data;
    return {d["stride"].toIntVector(),   d["padding"].toIntVector(),
            d["output_padding"].toIntVector(), d["groups"].toInt(),
            d["dilation"].toIntVector(), d["activation"].toStringRef(),
            d["negative_slope"].toDouble()};
  }

  Tensor forward(const Tensor& input, const Tensor& weight, const OptionalTensor& bias,
                 bool with_activation) const {
    return forward_op().call(input, weight, bias, stride, padding, output_padding, groups,
                             dilation, with_activation ? activation : "none",
                             with_activation ? negative_slope : 0.0);
  }
  Triple backward(const Tensor& grad_output, const Tensor& input, const Tensor& weight,
                  const Tensor& result, std::array<bool, 3> mask) const {
    return backward_op().call(grad_output, input, weight, or_none(result), stride, padding,
                              output_padding, groups, dilation, activation, negative_slope, mask);
  }
};

Geometry geometry(IntArrayRef stride, IntArrayRef padding, IntArrayRef output_padding,
                  int64_t groups, IntArrayRef dilation, c10::string_view activation,
                  double negative_slope) {
  return {stride.vec(),   padding.vec(), output_padding.vec(), groups, dilation.vec(),
          std::string(activation), negative_slope};
}

class ConvTranspose2d : public torch::autograd::Function<ConvTranspose2d> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& weight,
                        const OptionalTensor& bias, IntArrayRef stride, IntArrayRef padding,
                        IntArrayRef output_padding, int64_t groups, IntArrayRef dilation,
                        c10::string_view activation, double negative_slope) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    const Geometry g =
        geometry(stride, padding, output_padding, groups, dilation, activation, negative_slope);
    Tensor output = g.forward(input, weight, bias, true);
    // activation' is read from the result; without an activation the backward needs no result.
    ctx->save_for_backward({input, weight, g.activation != "none" ? output : Tensor()});
    g.save(ctx);
    record_given(ctx, {true, true, given(bias)});
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto needs = needs_grad(ctx);
    const std::array<bool, 3> mask{needs[0], needs[1], needs[2]};
    auto [grad_input, grad_weight, grad_bias] =
        Geometry::load(ctx).backward(grads[0], saved[0], saved[1], saved[2], mask);
    return {mask[0] ? grad_input : Tensor(), mask[1] ? grad_weight : Tensor(),
            mask[2] ? grad_bias : Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(),
            Tensor(), Tensor()};
  }
};

class ConvTranspose2dBackward : public torch::autograd::Function<ConvTranspose2dBackward> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& grad_output,
                               const Tensor& input, const Tensor& weight,
                               const OptionalTensor& result, IntArrayRef stride,
                               IntArrayRef padding, IntArrayRef output_padding, int64_t groups,
                               IntArrayRef dilation, c10::string_view activation,
                               double negative_slope, std::array<bool, 3> mask) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    const Geometry g =
        geometry(stride, padding, output_padding, groups, dilation, activation, negative_slope);
    auto [grad_input, grad_weight, grad_bias] =
        g.backward(grad_output, input, weight, result.value_or(Tensor()), mask);
    ctx->save_for_backward({grad_output, input, weight, result.value_or(Tensor())});
    g.save(ctx);
    ctx->saved_data["mask"] = std::vector<bool>(mask.begin(), mask.end());
    record_given(ctx, {true, true, true, given(result)});
    return {grad_input, grad_weight, grad_bias};
  }

  // The backward is linear in g = grad_output * activation'(result) and, given g, in weight
  // (grad_input) and input (grad_weight). So the upstream gradients reach g as the forward's
  // tangent G = conv_transpose2d(ggi, weight) + conv_transpose2d(input, ggw) + ggb, reach input
  // and weight through the backward op with the roles swapped, and reach grad_output and result
  // through activation'.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &grad_output = saved[0], &input = saved[1], &weight = saved[2],
                 &result = saved[3];
    const Geometry g = Geometry::load(ctx);
    const auto computed = ctx->saved_data["mask"].toBoolList();
    // Gradients of outputs the backward did not compute (empty) carry nothing.
    std::array<Tensor, 3> upstream;
    for (size_t i = 0; i < 3; ++i) {
      if (computed.get(i)) upstream[i] = grads[i];
    }
    const Tensor &ggi = upstream[0], &ggw = upstream[1], &ggb = upstream[2];
    const auto needs = needs_grad(ctx);
    const bool want_result = needs[3] && g.activation == "tanh";

    Tensor grad_grad_output, grad_result, grad_input, grad_weight;
    if ((needs[0] || want_result) && (ggi.defined() || ggw.defined() || ggb.defined())) {
      Tensor tangent;
      if (ggi.defined()) tangent = g.forward(ggi, weight, or_none(ggb), false);
      if (ggw.defined()) {
        const Tensor term = g.forward(input, ggw, tangent.defined() ? std::nullopt
                                                                    : or_none(ggb), false);
        tangent = tangent.defined() ? tangent.add(term) : term;
      }
      if (!tangent.defined()) tangent = ggb.view({1, -1, 1, 1}).expand(grad_output.sizes());
      if (g.activation == "none") {
        grad_grad_output = tangent;
      } else {
        std::tie(grad_grad_output, grad_result) = activation_double_backward_op().call(
            tangent, grad_output, result, g.activation, g.negative_slope,
            {needs[0], want_result});
      }
    }
    if (needs[1] && ggw.defined()) {
      grad_input = std::get<0>(g.backward(grad_output, input, ggw, result, {true, false, false}));
    }
    if (needs[2] && ggi.defined()) {
      grad_weight =
          std::get<1>(g.backward(grad_output, ggi, weight, result, {false, true, false}));
    }
    variable_list gradients{needs[0] ? grad_grad_output : Tensor(), grad_input, grad_weight,
                            want_result ? grad_result : Tensor()};
    gradients.resize(12);  // none for the geometry, the activation and the mask
    return gradients;
  }
};

class ActivationDoubleBackward : public torch::autograd::Function<ActivationDoubleBackward> {
 public:
  static variable_list forward(AutogradContext*, const Tensor& grad_preactivation,
                               const Tensor& grad_output, const Tensor& result,
                               c10::string_view activation, double negative_slope,
                               std::array<bool, 2> mask) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [grad_grad_output, grad_result] = activation_double_backward_op().call(
        grad_preactivation, grad_output, result, activation, negative_slope, mask);
    return {grad_grad_output, grad_result};
  }

  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK_NOT_IMPLEMENTED(false,
                                "third-order gradients of conv_transpose2d with a fused "
                                "activation are not implemented");
  }
};

Tensor conv_transpose2d(const Tensor& input, const Tensor& weight, const OptionalTensor& bias,
                        IntArrayRef stride, IntArrayRef padding, IntArrayRef output_padding,
                        int64_t groups, IntArrayRef dilation, c10::string_view activation,
                        double negative_slope) {
  return autograd_call<ConvTranspose2d>(forward_op(), input, weight, bias, stride, padding,
                                        output_padding, groups, dilation, activation,
                                        negative_slope);
}

Triple conv_transpose2d_backward(const Tensor& grad_output, const Tensor& input,
                                 const Tensor& weight, const OptionalTensor& result,
                                 IntArrayRef stride, IntArrayRef padding,
                                 IntArrayRef output_padding, int64_t groups, IntArrayRef dilation,
                                 c10::string_view activation, double negative_slope,
                                 std::array<bool, 3> output_mask) {
  return autograd_call<ConvTranspose2dBackward>(backward_op(), grad_output, input, weight, result,
                                                stride, padding, output_padding, groups, dilation,
                                                activation, negative_slope, output_mask);
}

std::tuple<Tensor, Tensor> conv_transpose2d_activation_double_backward(
    const Tensor& grad_preactivation, const Tensor& grad_output, const Tensor& result,
    c10::string_view activation, double negative_slope, std::array<bool, 2> output_mask) {
  return autograd_call<ActivationDoubleBackward>(activation_double_backward_op(),
                                                 grad_preactivation, grad_output, result,
                                                 activation, negative_slope, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, Autograd, m) {
  m.impl("conv_transpose2d", &conv_transpose2d);
  m.impl("conv_transpose2d_backward", &conv_transpose2d_backward);
  m.impl("conv_transpose2d_activation_double_backward",
         &conv_transpose2d_activation_double_backward);
}

}  // namespace autograd
}  // namespace fastgan
