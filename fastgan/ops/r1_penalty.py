"""The R1 / R2 gradient penalty (Mescheder et al. 2018): the discriminator's input gradient, taken
with create_graph=True, reduced to (gamma / 2) * mean_i ||g_i||^2 by a fused kernel
(torch.ops.fastgan.gradient_penalty) whose derivative is a fused op of its own."""
import torch

from fastgan import _backend, _reference
from fastgan._checks import check_number, check_tensor

_ops = torch.ops.fastgan if _backend.extension is not None else None


def r1_penalty(outputs, inputs, gamma=10.0, *, grad_scale=None):
    """(gamma / 2) * mean over the batch of ||d outputs.sum() / d inputs_i||^2, differentiable
    w.r.t. the discriminator's parameters. `inputs` (N, *) must require grad and `outputs` be the
    discriminator's outputs on them: on real samples this is R1, on generated ones R2.

    With a torch.amp.GradScaler, pass the scaled outputs and the scale,
    `r1_penalty(scaler.scale(outputs), inputs, gamma, grad_scale=scaler.get_scale())`: the input
    gradient is then computed on scaled values (no float16 underflow) and unscaled inside the
    penalty's kernel. The penalty is float32 (float64 for float64 inputs)."""
    check_tensor("outputs", outputs)
    check_tensor("inputs", inputs, min_dim=1)
    check_number("gamma", gamma, minimum=0.0)
    if grad_scale is not None:
        check_number("grad_scale", grad_scale, positive=True)
    if not inputs.requires_grad:
        raise ValueError("inputs must require grad: call inputs.requires_grad_() before "
                         "computing outputs = D(inputs)")
    if not outputs.requires_grad:
        raise ValueError("outputs do not depend on inputs: they do not require grad (computed "
                         "under torch.no_grad() or detached?)")
    (gradient,) = torch.autograd.grad(outputs.sum(), inputs, create_graph=True,
                                      allow_unused=True)
    if gradient is None:
        raise ValueError("outputs do not depend on inputs: the gradient of outputs w.r.t. inputs "
                         "is not defined (were outputs computed from other tensors?)")
    # Unscaling g by s scales its squares by 1 / s^2: folded into the kernel's constant.
    scale = gamma / 2 / (1.0 if grad_scale is None else float(grad_scale)) ** 2
    if _backend.use_reference(gradient):
        return _reference.gradient_penalty(gradient, scale)
    return _ops.gradient_penalty(gradient, float(scale))


def _accumulation_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _register():
    lib = "fastgan::"

    @torch.library.register_fake(lib + "gradient_penalty")
    def _(grad, scale):
        return grad.new_empty((), dtype=_accumulation_dtype(grad.dtype))

    @torch.library.register_fake(lib + "gradient_penalty_backward")
    def _(grad_out, grad, scale):
        # The kernels keep a dense grad's strides and make anything else contiguous.
        if torch._prims_common.is_non_overlapping_and_dense_or_false(grad):
            return torch.empty_like(grad)
        return torch.empty_like(grad, memory_format=torch.contiguous_format)

    # Autograd (penalty -> backward op, whose backward reuses it) is registered in C++:
    # csrc/autograd/gradient_penalty_kernel.cpp.


if _ops is not None:
    _register()
