// Autograd for the gradient penalty's reduction, for every device: penalty -> backward op, whose
// own backward reuses it (the backward, 2 * scale / N * grad_out * grad, is linear in both).
#include <torch/library.h>

#include "function_support.h"

namespace fastgan {
namespace autograd {
namespace {

const auto& penalty_op() {
  static const auto op = find_op<Tensor(const Tensor&, double)>("fastgan::gradient_penalty");
  return op;
}

const auto& backward_op() {
  static const auto op = find_op<Tensor(const Tensor&, const Tensor&, double)>(
      "fastgan::gradient_penalty_backward");
  return op;
}

class GradientPenalty : public torch::autograd::Function<GradientPenalty> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& grad, double scale) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({grad});
    ctx->saved_data["scale"] = scale;
    return penalty_op().call(grad, scale);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!ctx->needs_input_grad(0)) return {Tensor(), Tensor()};
    return {backward_op().call(grads[0], ctx->get_saved_variables()[0],
                               ctx->saved_data["scale"].toDouble()),
            Tensor()};
  }
};

class GradientPenaltyBackward : public torch::autograd::Function<GradientPenaltyBackward> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& grad_out, const Tensor& grad,
                        double scale) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({grad_out, grad});
    ctx->saved_data["scale"] = scale;
    return backward_op().call(grad_out, grad, scale);
  }

  // The upstream gradient reaches grad through the same op, and grad_out as a dot product.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &grad_out = saved[0], &grad = saved[1], &upstream = grads[0];
    const double scale = ctx->saved_data["scale"].toDouble();
    Tensor grad_grad_out, grad_grad;
    if (ctx->needs_input_grad(0)) {
      const auto dtype = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
      const Tensor dot = upstream.to(dtype).mul(grad.to(dtype)).sum();
      grad_grad_out = dot.mul(2 * scale).div(grad.size(0)).to(grad_out.scalar_type())
                          .reshape(grad_out.sizes());
    }
    if (ctx->needs_input_grad(1)) grad_grad = backward_op().call(grad_out, upstream, scale);
    return {grad_grad_out, grad_grad, Tensor()};
  }
};

Tensor gradient_penalty(const Tensor& grad, double scale) {
  return autograd_call<GradientPenalty>(penalty_op(), grad, scale);
}

Tensor gradient_penalty_backward(const Tensor& grad_out, const Tensor& grad, double scale) {
  return autograd_call<GradientPenaltyBackward>(backward_op(), grad_out, grad, scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, Autograd, m) {
  m.impl("gradient_penalty", &gradient_penalty);
  m.impl("gradient_penalty_backward", &gradient_penalty_backward);
}

}  // namespace autograd
}  // namespace fastgan
