// What the C++ autograd Functions of fastgan's ops share. Their autograd is C++ (as torchvision
// registers its ops' autograd) rather than Python's torch.library.register_autograd: an op runs
// once per layer and direction, and a Python autograd layer costs more than the kernels at small
// sizes. The fake kernels stay in Python (fastgan/ops).
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/TypeTraits.h>
#include <torch/autograd.h>

#include <optional>
#include <tuple>
#include <vector>

namespace fastgan {
namespace autograd {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptionalTensor = std::optional<Tensor>;
using Triple = std::tuple<Tensor, Tensor, Tensor>;

// An undefined tensor reads as None.
inline OptionalTensor or_none(const Tensor& t) {
  return t.defined() ? OptionalTensor(t) : std::nullopt;
}

// A Function's three outputs as the ops return them.
inline Triple as_triple(const variable_list& outputs) {
  return {outputs[0], outputs[1], outputs[2]};
}

inline bool given(const OptionalTensor& t) { return t.has_value() && t->defined(); }

// A Function's needs_input_grad numbers only the tensors that were given (None has no edge), so
// each forward records, per tensor argument in order, whether it was given ...
inline void record_given(AutogradContext* ctx, std::vector<bool> was_given) {
  ctx->saved_data["given"] = std::move(was_given);
}

// ... and its backward reads which tensor arguments need a gradient, by position.
inline std::vector<bool> needs_grad(AutogradContext* ctx) {
  const auto was_given = ctx->saved_data["given"].toBoolList();
  std::vector<bool> needs(was_given.size(), false);
  size_t edge = 0;
  for (size_t i = 0; i < was_given.size(); ++i) {
    if (was_given.get(i)) needs[i] = ctx->needs_input_grad(edge++);
  }
  return needs;
}

// Whether an argument is a tensor that requires grad (non-tensors never do).
inline bool requires_grad(const Tensor& t) { return t.defined() && t.requires_grad(); }
inline bool requires_grad(const OptionalTensor& t) { return t.has_value() && requires_grad(*t); }
template <typename T>
bool requires_grad(const T&) {
  return false;
}

// A Function's outputs as its op returns them.
template <typename Result>
Result as_result(const variable_list& outputs) {
  if constexpr (std::is_same_v<Result, Triple>) {
    return as_triple(outputs);
  } else {
    return {outputs[0], outputs[1]};
  }
}
template <typename Result>
Result as_result(const Tensor& output) {
  return output;
}

// The Autograd kernel of `op`: Function::apply when the call records a graph; otherwise the op's
// device kernel directly, since a Function's node, saved tensors and wrapped outputs cost about as
// much as a small layer's kernel (inference, and a backward that builds no graph for a second).
template <typename Function, typename Signature, typename... Args>
auto autograd_call(const c10::TypedOperatorHandle<Signature>& op, const Args&... args) {
  using Result = typename c10::guts::infer_function_traits_t<Signature>::return_type;
  if (at::GradMode::is_enabled() && (requires_grad(args) || ...)) {
    return as_result<Result>(Function::apply(args...));
  }
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(args...);
}

// The typed handle of fastgan::`name` (looked up once per call site).
template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

}  // namespace autograd
}  // namespace fastgan
