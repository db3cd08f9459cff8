"""Fused BatchNorm + LeakyReLU: `leaky_relu(batch_norm(input), negative_slope)` in one kernel,
with fused first- and second-order backward ops (torch.ops.fastgan.batch_norm_leaky_relu*)."""
import math

import torch

from fastgan import _backend, _reference
from fastgan._checks import check_normalization_operands, check_number, check_tensor

_ops = torch.ops.fastgan if _backend.extension is not None else None


def batch_norm_leaky_relu(input, running_mean, running_var, weight=None, bias=None,
                          training=False, momentum=0.1, eps=1e-5, negative_slope=0.2):
    """`F.leaky_relu(F.batch_norm(input, running_mean, running_var, weight, bias, training,
    momentum, eps), negative_slope)`, fused: same arguments, same results, same running-statistics
    update. negative_slope=0 is BatchNorm+ReLU, negative_slope=1 plain BatchNorm. input may be
    float32, float64, bfloat16 or float16 (on the CPU too); low precision is computed in float32
    and the output has input's dtype, as in torch."""
    check_tensor("input", input, min_dim=2)
    check_normalization_operands(input, running_mean, running_var, weight, bias)
    if not training and running_mean is None:
        raise ValueError("running_mean and running_var are required when training=False")
    if not isinstance(training, bool):
        raise TypeError(f"training must be a bool, got {type(training).__name__}")
    check_number("momentum", momentum, minimum=0.0, maximum=1.0)
    check_number("eps", eps, positive=True)
    check_number("negative_slope", negative_slope)
    per_channel = input.shape[0] * math.prod(input.shape[2:])
    if training and per_channel == 1:
        raise ValueError("Expected more than 1 value per channel when training, got input size "
                         f"{input.size()}")

    if _backend.use_reference(input):
        return _reference.batch_norm_leaky_relu(input, running_mean, running_var, weight, bias,
                                                training, momentum, eps, negative_slope)

    # The kernels take weight and bias in the input's accumulation dtype, and update the running
    # statistics themselves (in their own dtype): in tensor ops here, that update cost more than
    # a small layer's kernels.
    params_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    output, _, _ = _ops.batch_norm_leaky_relu(
        input, running_mean, running_var, _as_dtype(weight, params_dtype),
        _as_dtype(bias, params_dtype), training, float(momentum), float(eps),
        float(negative_slope))
    return output


def _as_dtype(tensor, dtype):
    """`tensor` in `dtype` (None stays None), without a call when it already is."""
    return tensor if tensor is None or tensor.dtype == dtype else tensor.to(dtype)


# --- fake kernels: output metadata for torch.compile and meta tensors -------------------------

def _empty_like_kernel_output(input):
    """What the kernels allocate: input's own layout if dense channels-first or channels-last,
    else channels-first (csrc/cpu/per_channel.h, choose_layout)."""
    order = [0, *range(2, input.dim()), 1]
    if input.is_contiguous() or input.permute(order).is_contiguous():
        return torch.empty_like(input)
    return torch.empty_like(input, memory_format=torch.contiguous_format)


def _empty_or(present, make, input):
    """Outputs that were not asked for are empty tensors."""
    return make() if present else input.new_empty((0,))


def _register():
    lib = "fastgan::"

    @torch.library.register_fake(lib + "batch_norm_leaky_relu")
    def _(input, running_mean, running_var, weight, bias, training, momentum, eps,
          negative_slope, instance=False):
        statistics = input.shape[0] * input.shape[1] if instance else input.shape[1]
        stats_shape = (statistics,) if training else (0,)
        dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
        return (_empty_like_kernel_output(input), input.new_empty(stats_shape, dtype=dtype),
                input.new_empty(stats_shape, dtype=dtype))

    @torch.library.register_fake(lib + "batch_norm_leaky_relu_backward")
    def _(grad_output, input, mean, var, weight, bias, training, eps, negative_slope, output_mask,
          instance=False):
        return (_empty_or(output_mask[0], lambda: _empty_like_kernel_output(input), input),
                _empty_or(output_mask[1] and weight is not None,
                          lambda: torch.empty_like(weight), input),
                _empty_or(output_mask[2] and bias is not None, lambda: torch.empty_like(bias),
                          input))

    @torch.library.register_fake(lib + "batch_norm_leaky_relu_double_backward")
    def _(grad_grad_input, grad_grad_weight, grad_grad_bias, grad_output, input, mean, var, weight,
          bias, training, eps, negative_slope, output_mask, instance=False):
        return (_empty_or(output_mask[0], lambda: _empty_like_kernel_output(input), input),
                _empty_or(output_mask[1], lambda: _empty_like_kernel_output(input), input),
                _empty_or(output_mask[2] and weight is not None,
                          lambda: torch.empty_like(weight), input))

    # Autograd (forward -> backward op -> double backward op) is registered in C++:
    # csrc/autograd/batch_norm_leaky_relu_kernel.cpp.


if _ops is not None:
    _register()
