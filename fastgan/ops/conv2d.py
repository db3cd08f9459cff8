"""2D convolution with a fast second-order backward, for discriminators under a gradient penalty.

The forward and first-order backward are torch's (oneDNN, cuDNN). What changes is the backward of
the input gradient, which an R1 / R2 penalty differentiates: torch computes its weight part as a
convolution of the transposed incoming gradient with the transposed output gradient, dilated by
the stride (plus four transposing copies), while it is simply the weight gradient of a convolution
whose input is the incoming gradient: one backward-weights call, several times faster on the CPU
(DCGAN-64 discriminator layers, oneDNN). And, as torch's own convolution does, gradients that a
backward pass does not need (the weights', during autograd.grad w.r.t. the inputs) are skipped.

A convolution's input gradient is a transposed convolution, and its forward and weight gradient
are the transposed convolution's input and weight gradients: on the CPU, fastgan's own
conv_transpose2d kernels compute whichever of the three they compute faster than oneDNN: the
dispatch (fastgan/ops/_dispatch.py) times both engines per shape (_own_kernels)."""
import contextlib
import itertools

import torch
import torch.nn.functional as F

from fastgan._checks import check_int, check_int_pair, check_tensor
from fastgan.backends import cpu as switches
from fastgan.ops import _dispatch, _tuning
from fastgan.ops.conv_transpose2d import _empty_in_layout_of, _ops

_convolution_backward = torch.ops.aten.convolution_backward


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """`F.conv2d(input, weight, bias, stride, padding, dilation, groups)` (integer padding), with
    the same first-order gradients and a faster second-order backward. `input` is
    (N, C_in, H, W) or unbatched (C_in, H, W)."""
    check_tensor("input", input, dims=(3, 4))
    check_tensor("weight", weight, dims=(4,))
    geometry = (check_int_pair("stride", stride, minimum=1),
                check_int_pair("padding", padding, minimum=0),
                check_int_pair("dilation", dilation, minimum=1),
                check_int("groups", groups, minimum=1))
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
            out = _Conv2d.apply(input, _with_own_node(weight), _with_own_node(bias), geometry,
                                _own_kernels(input, weight, bias, geometry))
    return out.squeeze(0) if unbatched else out


def _own_kernels(input, weight, bias, geometry):
    """Which of (forward, input gradient, weight gradient) fastgan's kernels compute: on the
    CPU, as the dispatch chooses (fastgan.backends.cpu); none off the CPU, where the CUDA kernels
    have not been verified yet, or without the extension."""
    if _ops is None or input.device.type != "cpu" or input.dtype not in (torch.float32,
                                                                          torch.float64):
        return (False, False, False)
    return _dispatch.select("conv2d", (input, weight, bias, *geometry),
                            lambda: _candidates(input, weight, geometry),
                            lambda: _rule(input, weight, geometry)).own()


def _rule(input, weight, geometry):
    """Without the benchmark: fastgan's kernels where they beat oneDNN on every machine measured
    (the thresholds of fastgan/ops/_tuning.py), torch's elsewhere."""
    out_h, out_w = _out_size(input, weight, geometry)
    # A single output pixel (a discriminator's last layer, a matrix product) counts as a small
    # map at any reduction length: oneDNN is slower on it from 3 input channels on.
    small_map = out_h * out_w <= _tuning.CONV2D_SMALL_MAP_PIXELS and (
        weight[0].numel() >= _tuning.CONV2D_LONG_REDUCTION or out_h * out_w == 1)
    few_channels = weight.shape[1] <= _tuning.CONV2D_FEW_INPUT_CHANNELS
    tiles = _winograd_tiles(input, weight, geometry)
    winograd = tiles >= _tuning.CONV2D_WINOGRAD_TILES
    engine = {True: "fastgan", False: "torch"}
    return _dispatch.Engines(engine[small_map or winograd],
                             engine[small_map or few_channels or winograd],
                             engine[small_map or winograd])


def _winograd_tiles(input, weight, geometry):
    """The 4x4 output tiles in the batch of a convolution that fastgan's kernels run by their
    3x3 Winograd path (stride 1, padding 0 or 1, enough channels, allow_winograd); else 0."""
    if not (_stride_1_3x3(weight, geometry) and list(geometry[1]) in ([0, 0], [1, 1])
            and min(weight.shape[:2]) >= _tuning.CONV2D_WINOGRAD_CHANNELS
            and switches.allow_winograd):
        return 0
    out_h, out_w = _out_size(input, weight, geometry)
    return input.shape[0] * -(-out_h // 4) * -(-out_w // 4)


def _candidates(input, weight, geometry):
    """{part: {engine: call}} on tensors shaped as this call's, for the dispatch to time."""
    grad_output = _empty_in_layout_of(input, (input.shape[0], weight.shape[0],
                                              *_out_size(input, weight, geometry))).normal_()
    def backward(own_input, own_weight):
        if not (own_input or own_weight):  # as _Conv2d.backward: one call for both
            stride, padding, dilation, groups = geometry
            return _convolution_backward(grad_output, input, weight, None, stride, padding,
                                         dilation, False, [0, 0], groups, [True, True, False])
        return (_input_grad(grad_output, input, weight, geometry, own_input),
                _weight_grad(grad_output, input, weight, geometry, own_weight))
    return {
        "forward": {engine: (lambda own=own: _forward(input, weight, None, geometry, own))
                    for engine, own in _ENGINE_IS_OWN.items()},
        "backward": {(input_engine, weight_engine): (
            lambda own_input=own_input, own_weight=own_weight: backward(own_input, own_weight))
            for (input_engine, own_input), (weight_engine, own_weight)
            in itertools.product(_ENGINE_IS_OWN.items(), repeat=2)},
    }


_ENGINE_IS_OWN = {"torch": False, "fastgan": True}


def _stride_1_3x3(weight, geometry):
    """Whether the convolution is 3x3 with stride 1, no dilation and no groups."""
    stride, _, dilation, groups = geometry
    return (tuple(weight.shape[2:]) == (3, 3) and list(stride) == [1, 1]
            and list(dilation) == [1, 1] and groups == 1)


def _as_turned(input, weight, geometry):
    """Whether fastgan's kernels run the convolution as the transposed convolution of the turned
    kernel (_turned), with _turned_padding, which maps input's size to the output's. Only for
    stride 1 without padding (the input padded beforehand, as by a ResNet generator's
    nn.ReflectionPad2d), no dilation and no groups; there it pays
    - for 3x3 kernels: the Winograd path's tiles then cover the output rather than the larger
      input (64 rather than 81 of them at 32 x 32 pixels);
    - for fewer output than input channels (a generator's 7x7 output layer, 64 -> 3): every part
      then works on operands of C_out values per tap, rather than C_in, an operand 20x smaller
      for RGB images. Not where the output is one pixel (a DCGAN discriminator's last layer),
      whose input gradient is then the transposed convolution of a single pixel, one GEMM."""
    stride, padding, dilation, groups = geometry
    if not (list(stride) == [1, 1] and list(padding) == [0, 0] and list(dilation) == [1, 1]
            and groups == 1):
        return False
    one_pixel = tuple(input.shape[2:]) == tuple(weight.shape[2:])
    return tuple(weight.shape[2:]) == (3, 3) or (weight.shape[0] < weight.shape[1]
                                                 and not one_pixel)


def _turned_padding(weight):
    """The padding of the transposed convolution that computes an _as_turned one."""
    return [weight.shape[2] - 1, weight.shape[3] - 1]


def _turned(weight):
    """The weight (C_in, C_out, kH, kW) of the transposed convolution that computes the
    convolution by `weight` (C_out, C_in, kH, kW): its kernel turned by half a turn. A transposed
    view of the turned copy, which the kernels read as it is stored (a transposing copy would cost
    more)."""
    return weight.flip((2, 3)).transpose(0, 1)


def _forward(input, weight, bias, geometry, own):
    """F.conv2d(input, weight, bias, *geometry), by fastgan's kernels when `own`: as the input
    gradient of the transposed convolution whose output has input's shape (or, _as_turned, as a
    transposed convolution of input)."""
    if not own:
        return F.conv2d(input, weight, bias, *geometry)
    stride, padding, dilation, groups = geometry
    if _as_turned(input, weight, geometry):
        # The bias goes into the kernel's epilogue rather than a pass of its own.
        out = _ops.conv_transpose2d(input, _turned(weight), bias, stride, _turned_padding(weight),
                                    [0, 0], groups, dilation, "none", 0.0)
        bias = None
    else:
        shape_of_out = _empty_in_layout_of(input, (input.shape[0], weight.shape[0],
                                                   *_out_size(input, weight, geometry)))
        out = _ops.conv_transpose2d_backward(
            input, shape_of_out, weight, None, stride, padding,
            _output_padding(input, shape_of_out, weight, geometry), groups, dilation, "none",
            0.0, [True, False, False])[0]
    if (_suggests_channels_last(input) or _suggests_channels_last(weight)) and \
            not out.is_contiguous(memory_format=torch.channels_last):
        # torch's layout for the result: with one channel, channels-last strides are also NCHW
        # ones, which the kernels read as NCHW.
        out = out.contiguous(memory_format=torch.channels_last)
    return out if bias is None else out.add_(bias.view(1, -1, 1, 1))


def _suggests_channels_last(tensor):
    """Whether torch's convolution reads `tensor` as channels-last (suggest_memory_format in
    C++): stored so, its channels the innermost dimension even where a size of 1 leaves both
    layouts valid."""
    return tensor.is_contiguous(memory_format=torch.channels_last) and (
        not tensor.is_contiguous() or tensor.stride(1) < tensor.stride(2))


def _input_grad(grad_output, input, weight, geometry, own):
    """conv2d's input gradient (input gives its shape), by fastgan's kernels when `own`: a
    transposed convolution of grad_output."""
    stride, padding, dilation, groups = geometry
    if not own:
        return _convolution_backward(grad_output, input, weight, None, stride, padding, dilation,
                                     False, [0, 0], groups, [True, False, False])[0]
    if _as_turned(input, weight, geometry):
        return _ops.conv_transpose2d_backward(
            grad_output, input, _turned(weight), None, stride, _turned_padding(weight), [0, 0],
            groups, dilation, "none", 0.0, [True, False, False])[0]
    return _ops.conv_transpose2d(grad_output, weight, None, stride, padding,
                                 _output_padding(input, grad_output, weight, geometry), groups,
                                 dilation, "none", 0.0)


def _weight_grad(grad_output, input, weight, geometry, own):
    """conv2d's weight gradient (weight gives its shape), by fastgan's kernels when `own`: the
    weight gradient of the transposed convolution from grad_output's shape to input's."""
    stride, padding, dilation, groups = geometry
    if not own:
        if weight.dtype == torch.float64:
            # Only weight's shape matters here, and torch's float64 CPU kernel rejects some
            # channels-last weights (size-1 dimensions with unusual strides); oneDNN does not.
            weight = weight.contiguous()
        return _convolution_backward(grad_output, input, weight, None, stride, padding, dilation,
                                     False, [0, 0], groups, [False, True, False])[1]
    if _as_turned(input, weight, geometry):  # the turned kernel's gradient, turned back
        return _ops.conv_transpose2d_backward(
            grad_output, input, weight.transpose(0, 1), None, stride, _turned_padding(weight),
            [0, 0], groups, dilation, "none", 0.0,
            [False, True, False])[1].transpose(0, 1).flip((2, 3))
    return _ops.conv_transpose2d_backward(
        input, grad_output, weight, None, stride, padding,
        _output_padding(input, grad_output, weight, geometry), groups, dilation, "none", 0.0,
        [False, True, False])[1]


def _out_size(input, weight, geometry):
    stride, padding, dilation, _ = geometry
    return [(input.shape[2 + d] + 2 * padding[d] - dilation[d] * (weight.shape[2 + d] - 1) - 1)
            // stride[d] + 1 for d in range(2)]


def _output_padding(input, output, weight, geometry):
    """The output_padding that makes the transposed convolution from output's size return
    input's: the rows and columns that the convolution's stride skipped."""
    stride, padding, dilation, _ = geometry
    return [input.shape[2 + d] - ((output.shape[2 + d] - 1) * stride[d] - 2 * padding[d]
                                  + dilation[d] * (weight.shape[2 + d] - 1) + 1)
            for d in range(2)]


def _with_own_node(tensor):
    """A leaf that requires grad, seen through a view: the backward can then ask the engine
    whether this pass needs its gradient (_needed), which it cannot for a leaf itself. An alias
    keeps every stride (view_as recomputes those of size-1 dimensions: a channels-last
    (C_out, 1, kh, kw) weight would turn NCHW, and so would the convolution's output)."""
    if tensor is not None and tensor.is_leaf and tensor.requires_grad:
        return torch.ops.aten.alias(tensor)
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
    def forward(ctx, input, weight, bias, geometry, own):
        ctx.save_for_backward(input, weight)
        ctx.geometry, ctx.own = geometry, own
        ctx.has_bias = bias is not None
        return _forward(input, weight, bias, geometry, own[0])

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        mask = [_needed(ctx, 0), _needed(ctx, 1), ctx.has_bias and _needed(ctx, 2)]
        stride, padding, dilation, groups = ctx.geometry
        own_input, own_weight = ctx.own[1:]
        if not torch.is_grad_enabled() and not (own_input or own_weight):
            # A plain backward by torch: one call for everything.
            bias_sizes = [weight.shape[0]] if mask[2] else None
            grads = _convolution_backward(grad_output, input, weight, bias_sizes, stride, padding,
                                          dilation, False, [0, 0], groups, mask)
            return (*(g if wanted else None for g, wanted in zip(grads, mask)), None, None)
        # With create_graph, the input gradient is an op of its own with the fast double
        # backward; the others keep their usual autograd (rarely differentiated: they do not
        # depend on the input gradient).
        grad_input = grad_weight = grad_bias = None
        if mask[0]:
            grad_input = (_Conv2dInputGrad.apply(grad_output, input, weight, ctx.geometry,
                                                 ctx.own) if torch.is_grad_enabled()
                          else _input_grad(grad_output, input, weight, ctx.geometry, own_input))
        if mask[1]:
            grad_weight = _weight_grad(grad_output, input, weight, ctx.geometry, own_weight)
        if mask[2]:
            grad_bias = grad_output.sum((0, 2, 3))
        return grad_input, grad_weight, grad_bias, None, None


class _Conv2dInputGrad(torch.autograd.Function):
    """grad_input = conv2d's input gradient, linear in grad_output and in weight (input only
    gives its shape)."""

    @staticmethod
    def forward(ctx, grad_output, input, weight, geometry, own):
        ctx.save_for_backward(grad_output, input, weight)
        ctx.geometry, ctx.own = geometry, own
        return _input_grad(grad_output, input, weight, geometry, own[1])

    @staticmethod
    def backward(ctx, grad_grad_input):
        grad_output, input, weight = ctx.saved_tensors
        # <grad_grad_input, grad_input(grad_output, weight)> is conv2d(grad_grad_input, weight)
        # paired with grad_output: its gradients are that convolution and its weight gradient.
        grad_grad_output = grad_weight = None
        if _needed(ctx, 0):
            grad_grad_output = _forward(grad_grad_input, weight, None, ctx.geometry, ctx.own[0])
        if _needed(ctx, 2):
            grad_weight = _weight_grad(grad_output, grad_grad_input, weight, ctx.geometry,
                                       ctx.own[2])
        return grad_grad_output, None, grad_weight, None, None
