"""2D convolution with a fast second-order backward, for discriminators under a gradient penalty.

The forward and first-order backward are torch's (oneDNN, cuDNN). What changes is the backward of
the input gradient, which an R1 / R2 penalty differentiates: torch computes its weight part as a
convolution of the transposed incoming gradient with the transposed output gradient, dilated by
the stride (plus four transposing copies), while it is simply the weight gradient of a convolution
whose input is the incoming gradient: one backward-weights call, several times faster on the CPU
(DCGAN-64 discriminator layers, oneDNN). And, as torch's own convolution does, gradients that a
backward pass does not need (the weights', during autograd.grad w.r.t. the inputs) are skipped."""
import contextlib

import torch
import torch.nn.functional as F

from fastgan.ops._checks import check_tensor
from fastgan.ops.conv_transpose2d import _integer, _pair

_convolution_backward = torch.ops.aten.convolution_backward


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """`F.conv2d(input, weight, bias, stride, padding, dilation, groups)` (integer padding), with
    the same first-order gradients and a faster second-order backward. `input` is
    (N, C_in, H, W) or unbatched (C_in, H, W)."""
    check_tensor("input", input, dims=(3, 4))
    check_tensor("weight", weight, dims=(4,))
    geometry = (_pair("stride", stride, minimum=1), _pair("padding", padding, minimum=0),
                _pair("dilation", dilation, minimum=1), _integer("groups", groups, minimum=1))
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    needs_grad = input.requires_grad or weight.requires_grad or (
        bias is not None and bias.requires_grad)
    # torch.compile traces torch's convolution (its graphs have no double backward to speed up).
    if torch.compiler.is_compiling() or not torch.is_grad_enabled() or not needs_grad:
        out = F.conv2d(input, weight, bias, *geometry)
    else:
        device = input.device.type
        autocast = torch.is_autocast_enabled(device)
        if autocast:
            # As autocast runs F.conv2d: in its lower precision. The backward ops are not
            # autocast ops, so the casts happen here, recorded by autograd, once.
            dtype = torch.get_autocast_dtype(device)
            input, weight, bias = (t if t is None else t.to(dtype) for t in (input, weight, bias))
        with torch.autocast(device, enabled=False) if autocast else contextlib.nullcontext():
            out = _Conv2d.apply(input, _with_own_node(weight), _with_own_node(bias), geometry)
    return out.squeeze(0) if unbatched else out


def _with_own_node(tensor):
    """A leaf that requires grad, seen through a view: the backward can then ask the engine
    whether this pass needs its gradient (_needed), which it cannot for a leaf itself."""
    if tensor is not None and tensor.is_leaf and tensor.requires_grad:
        return tensor.view_as(tensor)
    return tensor


def _needed(ctx, index):
    """Whether the running backward pass needs the gradient of input `index`: it must require
    grad (ctx.needs_input_grad) and lead to a tensor the pass computes gradients for."""
    if not ctx.needs_input_grad[index]:
        return False
    node = ctx.next_functions[index][0]
    try:
        return node is not None and torch._C._will_engine_execute_node(node)
    except RuntimeError:  # a leaf during autograd.grad: the engine cannot tell, so compute it
        return True


class _Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, bias, geometry):
        ctx.save_for_backward(input, weight)
        ctx.geometry = geometry
        ctx.has_bias = bias is not None
        return F.conv2d(input, weight, bias, *geometry)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        mask = [_needed(ctx, 0), _needed(ctx, 1), ctx.has_bias and _needed(ctx, 2)]
        stride, padding, dilation, groups = ctx.geometry
        bias_sizes = [weight.shape[0]] if mask[2] else None
        if not torch.is_grad_enabled():  # a plain backward: one call for everything
            grads = _convolution_backward(grad_output, input, weight, bias_sizes, stride, padding,
                                          dilation, False, [0, 0], groups, mask)
            return (*(g if wanted else None for g, wanted in zip(grads, mask)), None)
        # create_graph: the input gradient is an op of its own with the fast double backward; the
        # others keep torch's (rarely differentiated: they do not depend on the input gradient).
        grad_input = _Conv2dInputGrad.apply(grad_output, input, weight, ctx.geometry) \
            if mask[0] else None
        grad_weight = grad_bias = None
        if mask[1] or mask[2]:
            _, grad_weight, grad_bias = _convolution_backward(
                grad_output, input, weight, bias_sizes, stride, padding, dilation, False, [0, 0],
                groups, [False, mask[1], mask[2]])
        return (grad_input, grad_weight if mask[1] else None, grad_bias if mask[2] else None,
                None)


class _Conv2dInputGrad(torch.autograd.Function):
    """grad_input = conv2d's input gradient, linear in grad_output and in weight (input only
    gives its shape)."""

    @staticmethod
    def forward(ctx, grad_output, input, weight, geometry):
        ctx.save_for_backward(grad_output, input, weight)
        ctx.geometry = geometry
        stride, padding, dilation, groups = geometry
        return _convolution_backward(grad_output, input, weight, None, stride, padding, dilation,
                                     False, [0, 0], groups, [True, False, False])[0]

    @staticmethod
    def backward(ctx, grad_grad_input):
        grad_output, input, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.geometry
        # <grad_grad_input, grad_input(grad_output, weight)> is conv2d(grad_grad_input, weight)
        # paired with grad_output: its gradients are that convolution and its weight gradient.
        grad_grad_output = grad_weight = None
        if _needed(ctx, 0):
            grad_grad_output = F.conv2d(grad_grad_input, weight, None, *ctx.geometry)
        if _needed(ctx, 2):
            if weight.dtype == torch.float64:
                # Only weight's shape matters here, and torch's float64 CPU kernel rejects some
                # channels-last weights (size-1 dimensions with unusual strides); oneDNN does not.
                weight = weight.contiguous()
            grad_weight = _convolution_backward(grad_output, grad_grad_input, weight, None,
                                                stride, padding, dilation, False, [0, 0], groups,
                                                [False, True, False])[1]
        return grad_grad_output, None, grad_weight, None
