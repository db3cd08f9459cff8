// Autograd for the fused BatchNorm + LeakyReLU ops, for every device: forward -> backward op ->
// double backward op, each a node of its own so that a gradient penalty differentiates through
// the backward.
#include <torch/library.h>

#include <array>
#include <tuple>

#include "function_support.h"

namespace fastgan {
namespace autograd {
namespace {

using Mask = std::array<bool, 3>;

// The ops as the dispatcher holds them; called under AutoDispatchBelowADInplaceOrView they run
// the device's kernel, and called from a backward that builds a graph, their own autograd.
const auto& forward_op() {
  static const auto op = find_op<Triple(const Tensor&, const OptionalTensor&,
                                        const OptionalTensor&, const OptionalTensor&,
                                        const OptionalTensor&, bool, double, double, double,
                                        bool)>(
      "fastgan::batch_norm_leaky_relu");
  return op;
}

const auto& backward_op() {
  static const auto op =
      find_op<Triple(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                     const OptionalTensor&, const OptionalTensor&, bool, double, double, Mask,
                     bool)>("fastgan::batch_norm_leaky_relu_backward");
  return op;
}

const auto& double_backward_op() {
  static const auto op =
      find_op<Triple(const OptionalTensor&, const OptionalTensor&, const OptionalTensor&,
                     const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                     const OptionalTensor&, const OptionalTensor&, bool, double, double, Mask,
                     bool)>("fastgan::batch_norm_leaky_relu_double_backward");
  return op;
}

// The configuration every op takes after its tensors.
struct Config {
  bool training;
  double eps, negative_slope;
  bool instance;

  void save(AutogradContext* ctx) const {
    ctx->saved_data["training"] = training;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["negative_slope"] = negative_slope;
    ctx->saved_data["instance"] = instance;
  }
  static Config load(AutogradContext* ctx) {
    return {ctx->saved_data["training"].toBool(), ctx->saved_data["eps"].toDouble(),
            ctx->saved_data["negative_slope"].toDouble(), ctx->saved_data["instance"].toBool()};
  }
};

class BatchNormLeakyReLU : public torch::autograd::Function<BatchNormLeakyReLU> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& input,
                               const OptionalTensor& running_mean,
                               const OptionalTensor& running_var, const OptionalTensor& weight,
                               const OptionalTensor& bias, bool training, double momentum,
                               double eps, double negative_slope, bool instance) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [output, batch_mean, batch_var] =
        forward_op().call(input, running_mean, running_var, weight, bias, training, momentum, eps,
                          negative_slope, instance);
    ctx->mark_non_differentiable({batch_mean, batch_var});
    ctx->set_materialize_grads(false);  // the statistics never have one
    // The backward needs the statistics that normalized the input, in the batch statistics'
    // dtype: the batch's when training, else the running ones.
    const auto as_stats = [&](const Tensor& running) {
      return running.scalar_type() == batch_mean.scalar_type()
                 ? running
                 : running.to(batch_mean.scalar_type());
    };
    ctx->save_for_backward({input, training ? batch_mean : as_stats(*running_mean),
                            training ? batch_var : as_stats(*running_var),
                            weight.value_or(Tensor()), bias.value_or(Tensor())});
    Config{training, eps, negative_slope, instance}.save(ctx);
    record_given(ctx, {true, given(running_mean), given(running_var), given(weight), given(bias)});
    return {output, batch_mean, batch_var};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return variable_list(10);
    const auto saved = ctx->get_saved_variables();
    const Tensor &input = saved[0], &mean = saved[1], &var = saved[2], &weight = saved[3],
                 &bias = saved[4];
    const Config config = Config::load(ctx);
    const auto needs = needs_grad(ctx);
    const Mask mask{needs[0], needs[3], needs[4]};
    auto [grad_input, grad_weight, grad_bias] =
        backward_op().call(grads[0], input, mean, var, or_none(weight), or_none(bias),
                           config.training, config.eps, config.negative_slope, mask,
                           config.instance);
    return {mask[0] ? grad_input : Tensor(), Tensor(), Tensor(),
            mask[1] ? grad_weight : Tensor(), mask[2] ? grad_bias : Tensor(),
            Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

class BatchNormLeakyReLUBackward : public torch::autograd::Function<BatchNormLeakyReLUBackward> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& grad_output,
                               const Tensor& input, const Tensor& mean, const Tensor& var,
                               const OptionalTensor& weight, const OptionalTensor& bias,
                               bool training, double eps, double negative_slope, Mask mask,
                               bool instance) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [grad_input, grad_weight, grad_bias] = backward_op().call(
        grad_output, input, mean, var, weight, bias, training, eps, negative_slope, mask, instance);
    ctx->save_for_backward({grad_output, input, mean, var, weight.value_or(Tensor()),
                            bias.value_or(Tensor())});
    Config{training, eps, negative_slope, instance}.save(ctx);
    ctx->saved_data["mask"] = std::vector<bool>(mask.begin(), mask.end());
    ctx->set_materialize_grads(false);  // an output without a gradient reads as None
    record_given(ctx, {true, true, true, true, given(weight), given(bias)});
    return {grad_input, grad_weight, grad_bias};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &grad_output = saved[0], &input = saved[1], &mean = saved[2], &var = saved[3],
                 &weight = saved[4], &bias = saved[5];
    const Config config = Config::load(ctx);
    const auto computed = ctx->saved_data["mask"].toBoolList();
    // Gradients of outputs the backward did not compute (empty) carry nothing.
    std::array<OptionalTensor, 3> upstream;
    for (size_t i = 0; i < 3; ++i) {
      if (computed.get(i)) upstream[i] = or_none(grads[i]);
    }
    const auto needs = needs_grad(ctx);
    const Mask mask{needs[0], needs[1], needs[4]};
    auto [grad_grad_output, grad_input, grad_weight] = double_backward_op().call(
        upstream[0], upstream[1], upstream[2], grad_output, input, mean, var, or_none(weight),
        or_none(bias), config.training, config.eps, config.negative_slope, mask, config.instance);
    // The bias only moves the activation's kink: its gradient is zero, given as torch does.
    const Tensor grad_bias = needs[5] ? at::zeros_like(bias) : Tensor();
    return {mask[0] ? grad_grad_output : Tensor(), mask[1] ? grad_input : Tensor(), Tensor(),
            Tensor(), mask[2] ? grad_weight : Tensor(), grad_bias, Tensor(), Tensor(), Tensor(),
            Tensor(), Tensor()};
  }
};

class BatchNormLeakyReLUDoubleBackward
    : public torch::autograd::Function<BatchNormLeakyReLUDoubleBackward> {
 public:
  static variable_list forward(AutogradContext*, const OptionalTensor& grad_grad_input,
                               const OptionalTensor& grad_grad_weight,
                               const OptionalTensor& grad_grad_bias, const Tensor& grad_output,
                               const Tensor& input, const Tensor& mean, const Tensor& var,
                               const OptionalTensor& weight, const OptionalTensor& bias,
                               bool training, double eps, double negative_slope, Mask mask,
                               bool instance) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [grad_grad_output, grad_input, grad_weight] = double_backward_op().call(
        grad_grad_input, grad_grad_weight, grad_grad_bias, grad_output, input, mean, var, weight,
        bias, training, eps, negative_slope, mask, instance);
    return {grad_grad_output, grad_input, grad_weight};
  }

  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK_NOT_IMPLEMENTED(false,
                                "third-order gradients of batch_norm_leaky_relu are not "
                                "implemented");
  }
};

Triple batch_norm_leaky_relu(const Tensor& input, const OptionalTensor& running_mean,
                             const OptionalTensor& running_var, const OptionalTensor& weight,
                             const OptionalTensor& bias, bool training, double momentum,
                             double eps, double negative_slope, bool instance) {
  return autograd_call<BatchNormLeakyReLU>(forward_op(), input, running_mean, running_var, weight,
                                           bias, training, momentum, eps, negative_slope,
                                           instance);
}

Triple batch_norm_leaky_relu_backward(const Tensor& grad_output, const Tensor& input,
                                      const Tensor& mean, const Tensor& var,
                                      const OptionalTensor& weight, const OptionalTensor& bias,
                                      bool training, double eps, double negative_slope,
                                      Mask output_mask, bool instance) {
  return autograd_call<BatchNormLeakyReLUBackward>(backward_op(), grad_output, input, mean, var,
                                                   weight, bias, training, eps, negative_slope,
                                                   output_mask, instance);
}

Triple batch_norm_leaky_relu_double_backward(
    const OptionalTensor& grad_grad_input, const OptionalTensor& grad_grad_weight,
    const OptionalTensor& grad_grad_bias, const Tensor& grad_output, const Tensor& input,
    const Tensor& mean, const Tensor& var, const OptionalTensor& weight,
    const OptionalTensor& bias, bool training, double eps, double negative_slope,
    Mask output_mask, bool instance) {
  return autograd_call<BatchNormLeakyReLUDoubleBackward>(
      double_backward_op(), grad_grad_input, grad_grad_weight, grad_grad_bias, grad_output, input,
      mean, var, weight, bias, training, eps, negative_slope, output_mask, instance);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, Autograd, m) {
  m.impl("batch_norm_leaky_relu", &batch_norm_leaky_relu);
  m.impl("batch_norm_leaky_relu_backward", &batch_norm_leaky_relu_backward);
  m.impl("batch_norm_leaky_relu_double_backward", &batch_norm_leaky_relu_double_backward);
}

}  // namespace autograd
}  // namespace fastgan
