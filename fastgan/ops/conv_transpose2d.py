"""Transposed 2D convolution with bias and activation fused into the kernel's epilogue
(torch.ops.fastgan.conv_transpose2d*), differentiable twice."""
import torch
import torch.nn.functional as F

from fastgan import _backend, _reference
from fastgan._checks import (check_choice, check_device, check_int, check_int_pair,
                             check_number, check_tensor)

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
    elif activation == "leaky_relu" and negative_slope < 0:
        # The fused backward reads leaky_relu' from the output's sign, which a negative slope
        # makes ambiguous: apply that activation separately.
        out = F.leaky_relu(_ops.conv_transpose2d(input, weight, bias, stride, padding,
                                                 output_padding, groups, dilation, "none", 0.0),
                           negative_slope)
    else:
        out = _ops.conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups,
                                    dilation, activation or "none", float(negative_slope))
    return out.squeeze(0) if unbatched else out


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
