"""Transposed 2D convolution with bias and activation fused into the kernel's epilogue
(torch.ops.fastgan.conv_transpose2d*), differentiable twice."""
import itertools
from typing import NamedTuple

import torch
import torch.nn.functional as F

from fastgan import _backend, _reference
from fastgan._checks import (check_choice, check_device, check_int, check_int_pair,
                             check_number, check_tensor)
from fastgan.ops import _dispatch, _tuning

_ops = torch.ops.fastgan if _backend.extension is not None else None

ACTIVATIONS = (None, "relu", "leaky_relu", "tanh")


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, activation=None, negative_slope=0.2):
    """`F.conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups,
    dilation)` followed by `activation` (None, "relu", "leaky_relu" with `negative_slope`, or
    "tanh"), in one kernel. `input` is (N, C_in, H, W) or unbatched (C_in, H, W)."""
    check_tensor("input", input, dims=(3, 4))
    check_tensor("weight", weight, dims=(4,))
    stride = check_int_pair("stride", stride, minimum=1)
    padding = check_int_pair("padding", padding, minimum=0)
    output_padding = check_int_pair("output_padding", output_padding, minimum=0)
    dilation = check_int_pair("dilation", dilation, minimum=1)
    groups = check_int("groups", groups, minimum=1)
    if activation is not None and not isinstance(activation, str):
        raise TypeError(f"activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
    check_choice("activation", activation, ACTIVATIONS)
    check_number("negative_slope", negative_slope)
    for d in range(2):
        if output_padding[d] >= stride[d] and output_padding[d] >= dilation[d]:
            raise ValueError(f"output_padding must be smaller than either stride or dilation, got "
                             f"output_padding={output_padding}, stride={stride}, "
                             f"dilation={dilation}")
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    _check_operands(input, weight, bias, groups)
    out_h, out_w = (_output_size(input.shape[2 + d], weight.shape[2 + d], stride[d], padding[d],
                                 dilation[d], output_padding[d]) for d in range(2))
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"the output would have size {out_h}x{out_w}: input of shape "
                         f"{tuple(input.shape)} is too small for weight {tuple(weight.shape)} "
                         f"with padding={padding}, dilation={dilation}")

    if _backend.use_reference(input):
        out = _reference.conv_transpose2d(input, weight, bias, stride, padding, output_padding,
                                          groups, dilation, activation, negative_slope)
    else:
        geometry = Geometry(stride, padding, output_padding, groups, dilation)
        if activation == "leaky_relu" and negative_slope < 0:
            # The fused backward reads leaky_relu' from the output's sign, which a negative slope
            # makes ambiguous: apply that activation separately.
            out = F.leaky_relu(_dispatched(input, weight, bias, geometry, None, 0.0),
                               negative_slope)
        else:
            out = _dispatched(input, weight, bias, geometry, activation, float(negative_slope))
    return out.squeeze(0) if unbatched else out


class Geometry(NamedTuple):
    stride: list
    padding: list
    output_padding: list
    groups: int
    dilation: list


# --- the engines: each part by torch's kernels or by fastgan's ----------------------------------

def _dispatched(input, weight, bias, geometry, activation, negative_slope):
    """The transposed convolution with `activation`, each part (forward, input gradient, weight
    gradient) by the engine fastgan.backends.cpu chooses for the shape."""
    engines = _engines(input, weight, bias, geometry, activation, negative_slope)
    if engines == _ALL_FASTGAN:  # the op itself, with its autograd in C++
        return _ops.conv_transpose2d(input, weight, bias, *geometry, activation or "none",
                                     negative_slope)
    if engines == _ALL_TORCH:
        return _torch_forward(input, weight, bias, geometry, activation, negative_slope)
    return _ConvTranspose2dByParts.apply(input, weight, bias, geometry, activation,
                                         negative_slope, engines)


_ALL_FASTGAN = _dispatch.Engines.all("fastgan")
_ALL_TORCH = _dispatch.Engines.all("torch")


def _engines(input, weight, bias, geometry, activation, negative_slope):
    """Off the CPU, for dtypes torch's CPU kernels run slowly, and under autocast (the op's
    autocast kernel casts), fastgan's op runs whole; on the CPU the dispatch chooses."""
    if (input.device.type != "cpu" or input.dtype not in (torch.float32, torch.float64)
            or torch.is_autocast_enabled("cpu")):
        return _ALL_FASTGAN
    return _dispatch.select(
        "conv_transpose2d", (input, weight, bias, *geometry, activation, negative_slope),
        lambda: _candidates(input, weight, bias, geometry, activation, negative_slope),
        lambda: _rule(input, weight, geometry))


def _rule(input, weight, geometry):
    """Without the benchmark: fastgan's kernels where they beat oneDNN on every machine
    measured (fastgan/ops/_tuning.py), torch's elsewhere."""
    one_pixel = tuple(input.shape[2:]) == (1, 1) and geometry.padding == [0, 0] \
        and geometry.dilation == [1, 1]
    few_channels = (input.is_contiguous() and weight.shape[1]
                    <= _tuning.CONV_TRANSPOSE2D_FEW_OUTPUT_CHANNELS)
    return _ALL_FASTGAN if one_pixel or few_channels else _ALL_TORCH


def _candidates(input, weight, bias, geometry, activation, negative_slope):
    """{part: {engine: call}} on tensors shaped as this call's, for the dispatch to time."""
    result = _torch_forward(input, weight, bias, geometry, activation, negative_slope)
    grad_output = torch.randn_like(result)
    result = result if activation else None
    mask = [True, True, bias is not None]
    return {
        "forward": {engine: (lambda f=forward: f(input, weight, bias, geometry, activation,
                                                  negative_slope))
                    for engine, forward in _FORWARD.items()},
        "backward": {pair: (lambda pair=pair: _backward(
            grad_output, input, weight, result, (geometry, activation, negative_slope), pair,
            mask)) for pair in itertools.product(_BACKWARD, repeat=2)},
    }


def _torch_forward(input, weight, bias, geometry, activation, negative_slope):
    out = F.conv_transpose2d(input, weight, bias, geometry.stride, geometry.padding,
                             geometry.output_padding, geometry.groups, geometry.dilation)
    if activation == "relu":
        return F.relu(out, inplace=True)
    if activation == "leaky_relu":
        return F.leaky_relu(out, negative_slope, inplace=True)
    return out.tanh_() if activation == "tanh" else out


def _fastgan_forward(input, weight, bias, geometry, activation, negative_slope):
    return _ops.conv_transpose2d(input, weight, bias, *geometry, activation or "none",
                                 negative_slope)


def _torch_backward(grad_output, input, weight, result, geometry, activation, negative_slope,
                    mask):
    """(grad_input, grad_weight, grad_bias) where `mask` asks for them, by torch's ops (all
    differentiable, for a double backward)."""
    if activation == "relu":
        grad_output = torch.ops.aten.threshold_backward(grad_output, result, 0)
    elif activation == "leaky_relu":
        grad_output = torch.ops.aten.leaky_relu_backward(grad_output, result, negative_slope,
                                                         True)
    elif activation == "tanh":
        grad_output = torch.ops.aten.tanh_backward(grad_output, result)
    bias_sizes = [grad_output.shape[1]] if mask[2] else None
    return torch.ops.aten.convolution_backward(
        grad_output, input, weight, bias_sizes, geometry.stride, geometry.padding,
        geometry.dilation, True, geometry.output_padding, geometry.groups, mask)


def _fastgan_backward(grad_output, input, weight, result, geometry, activation, negative_slope,
                      mask):
    return _ops.conv_transpose2d_backward(grad_output, input, weight, result, *geometry,
                                          activation or "none", negative_slope, mask)


_FORWARD = {"torch": _torch_forward, "fastgan": _fastgan_forward}
_BACKWARD = {"torch": _torch_backward, "fastgan": _fastgan_backward}


class _ConvTranspose2dByParts(torch.autograd.Function):
    """The transposed convolution with its parts by different engines. The backward is made of
    differentiable ops (torch's, and fastgan's ops with their autograd), so a double backward
    goes through it."""

    @staticmethod
    def forward(ctx, input, weight, bias, geometry, activation, negative_slope, engines):
        out = _FORWARD[engines.forward](input, weight, bias, geometry, activation,
                                        negative_slope)
        ctx.save_for_backward(input, weight, out if activation else None)
        ctx.arguments = (geometry, activation, negative_slope)
        ctx.engines = engines
        return out

    @staticmethod
    def backward(ctx, grad_output):
        input, weight, result = ctx.saved_tensors
        grads = _backward(grad_output, input, weight, result, ctx.arguments,
                          (ctx.engines.input_grad, ctx.engines.weight_grad),
                          ctx.needs_input_grad[:3])
        return (*grads, None, None, None, None)


def _backward(grad_output, input, weight, result, arguments, engines, mask):
    """[grad_input, grad_weight, grad_bias] where `mask` asks for them (None elsewhere), the
    first by engines[0] and the others by engines[1]; each engine is called once, for all the
    gradients it computes."""
    masks = {}
    for index, (wanted, engine) in enumerate(zip(mask, (engines[0], engines[1], engines[1]))):
        if wanted:
            masks.setdefault(engine, [False, False, False])[index] = True
    grads = [None, None, None]
    for engine, engine_mask in masks.items():
        computed = _BACKWARD[engine](grad_output, input, weight, result, *arguments, engine_mask)
        for index in range(3):
            if engine_mask[index]:
                grads[index] = computed[index]
    return grads


def _check_operands(input, weight, bias, groups):
    in_channels = input.shape[1]
    _check_like_input("weight", weight, input)
    if weight.shape[0] != in_channels:
        raise ValueError(f"weight must have shape (C_in, C_out / groups, kH, kW) with C_in = "
                         f"{in_channels} (the input's channels), got {tuple(weight.shape)}")
    if in_channels % groups != 0:
        raise ValueError(f"groups={groups} must divide the input's {in_channels} channels")
    if bias is None:
        return
    check_tensor("bias", bias, dims=(1,))
    out_channels = weight.shape[1] * groups
    if bias.shape[0] != out_channels:
        raise ValueError(f"bias must have shape ({out_channels},) (the output's channels), got "
                         f"{tuple(bias.shape)}")
    _check_like_input("bias", bias, input)


def _check_like_input(name, operand, input):
    """The input's device, and its dtype unless autocast casts the operands to one dtype
    (fastgan/ops/_autocast.py)."""
    device_type = input.device.type
    autocast = torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(
        device_type)
    if operand.dtype != input.dtype and not autocast:
        raise TypeError(f"{name} must have the input's dtype {input.dtype}, got {operand.dtype}")
    check_device(name, operand, input)


def _output_size(size, kernel, stride, padding, dilation, output_padding):
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


# --- fake kernels: output metadata for torch.compile and meta tensors -------------------------

def _stored_channels_last(t):
    """Mirrors stored_channels_last in csrc/conv_transpose2d.h: results take the
    layout of the tensor they are shaped after."""
    return not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _empty_in_layout_of(like, shape):
    if _stored_channels_last(like):
        n, c, h, w = shape
        return like.new_empty((n, h, w, c)).permute(0, 3, 1, 2)
    return like.new_empty(shape)


def _register():
    lib = "fastgan::"

    @torch.library.register_fake(lib + "conv_transpose2d")
    def _(input, weight, bias, stride, padding, output_padding, groups, dilation, activation,
          negative_slope):
        out_h, out_w = (_output_size(input.shape[2 + d], weight.shape[2 + d], stride[d],
                                     padding[d], dilation[d], output_padding[d])
                        for d in range(2))
        shape = (input.shape[0], weight.shape[1] * groups, out_h, out_w)
        return _empty_in_layout_of(input, shape)

    @torch.library.register_fake(lib + "conv_transpose2d_backward")
    def _(grad_output, input, weight, result, stride, padding, output_padding, groups, dilation,
          activation, negative_slope, output_mask):
        return (_empty_in_layout_of(input, input.shape) if output_mask[0]
                else input.new_empty((0,)),
                weight.new_empty(weight.shape) if output_mask[1] else input.new_empty((0,)),
                input.new_empty((grad_output.shape[1],)) if output_mask[2]
                else input.new_empty((0,)))

    @torch.library.register_fake(lib + "conv_transpose2d_activation_double_backward")
    def _(grad_preactivation, grad_output, result, activation, negative_slope, output_mask):
        return tuple(_empty_in_layout_of(result, result.shape) if wanted
                     else result.new_empty((0,)) for wanted in output_mask)

    # Autograd (forward -> backward op, whose backward reuses both ops and the activation's
    # double backward) is registered in C++: csrc/autograd/conv_transpose2d_kernel.cpp.


if _ops is not None:
    _register()
