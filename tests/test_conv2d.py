"""fastgan.ops.conv2d and fastgan.nn.Conv2d against torch: values, first and second order, with
each part computed by torch and by fastgan's transposed-convolution kernels, and no weight
gradient computed where a backward pass does not need one."""
import importlib

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck
from torch.utils._python_dispatch import TorchDispatchMode

import fastgan
from conftest import DEVICES, assert_close, make_input

conv2d_module = importlib.import_module("fastgan.ops.conv2d")

GEOMETRIES = [  # (input shape, weight shape, stride, padding, dilation, groups)
    ((3, 4, 9, 8), (6, 4, 4, 4), 2, 1, 1, 1),
    ((2, 4, 7, 7), (4, 2, 3, 3), 1, 2, 2, 2),
    ((1, 3, 6, 5), (5, 3, 2, 3), (2, 1), (0, 1), 1, 1),
    ((4, 6, 4, 4), (1, 6, 4, 4), 1, 0, 1, 1),
    ((0, 4, 6, 6), (3, 4, 3, 3), 2, 1, 1, 1),
    # 3x3, stride 1, no padding: fastgan's kernels run it as the transposed convolution of the
    # turned kernel, the bias in its epilogue.
    ((2, 4, 7, 6), (5, 4, 3, 3), 1, 0, 1, 1),
    # Fewer output than input channels, stride 1, no padding (a generator's 7x7 output layer):
    # turned too, whatever the kernel's size.
    ((2, 6, 9, 8), (3, 6, 5, 4), 1, 0, 1, 1),
    ((1, 8, 9, 9), (2, 8, 7, 7), 1, 0, 1, 1),
]


@pytest.fixture(params=["rule", "torch", "fastgan"])
def engine(request):
    """Which kernels compute the forward, input gradient and weight gradient on the CPU: as the
    fixed rule chooses by shape, all torch's, or all fastgan's."""
    if request.param == "fastgan" and fastgan._backend.extension is None:
        pytest.skip("fastgan's kernels are not built")
    forced = None if request.param == "rule" else request.param
    with fastgan.backends.cpu.flags(benchmark=False, engine=forced):
        yield request.param


def _leaves(device, input_shape, weight_shape, layout, bias=True):
    x = make_input(input_shape, torch.float64, device, layout).requires_grad_()
    w = make_input(weight_shape, torch.float64, device, seed=1).requires_grad_()
    b = make_input(weight_shape[:1], torch.float64, device, seed=2).requires_grad_() if bias \
        else None
    return x, w, b


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "non_contiguous"])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_matches_torch_to_second_order(device, layout, geometry, engine):
    input_shape, weight_shape, *args = geometry
    x, w, b = _leaves(device, input_shape, weight_shape, layout)

    def grads(conv):
        out = conv(x, w, b, *args)
        upstream = make_input(out.shape, torch.float64, device, seed=3)
        first = torch.autograd.grad((out * upstream).sum(), (x, w, b), create_graph=True)
        # An R1-like second order: the squared input gradient, differentiated w.r.t. everything.
        second = torch.autograd.grad(first[0].square().sum() + first[1].square().sum(),
                                     (x, w, b), allow_unused=True, materialize_grads=True)
        return out, *first, *second

    for actual, expected in zip(grads(fastgan.ops.conv2d), grads(F.conv2d)):
        assert_close(actual, expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck_and_gradgradcheck(device, layout, engine):
    x, w, b = _leaves(device, (2, 2, 5, 4), (2, 1, 3, 3), layout)
    conv = lambda x, w, b: fastgan.ops.conv2d(x, w, b, 2, 1, 1, 2)  # noqa: E731
    assert gradcheck(conv, (x, w, b))
    assert gradgradcheck(conv, (x, w, b))


def test_unbatched_input():
    x, w, b = _leaves("cpu", (4, 7, 6), (5, 4, 3, 3), "contiguous")
    assert_close(fastgan.ops.conv2d(x, w, b, 1, 1), F.conv2d(x, w, b, 1, 1))


class _WeightGradients(TorchDispatchMode):
    """Counts the weight gradients computed, by torch's or fastgan's kernels, and the calls to
    fastgan's."""

    def __init__(self):
        super().__init__()
        self.weight_gradients = self.fastgan_calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.convolution_backward.default,
                    torch.ops.fastgan.conv_transpose2d_backward.default):
            self.weight_gradients += args[-1][1]
        self.fastgan_calls += func.namespace == "fastgan"
        return func(*args, **(kwargs or {}))


class _FastganOps(TorchDispatchMode):
    """The names of fastgan's ops called, in order."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "fastgan":
            self.names.append(func._schema.name)
        return func(*args, **(kwargs or {}))


@pytest.mark.skipif(fastgan._backend.extension is None, reason="fastgan's kernels are not built")
@pytest.mark.parametrize("input_shape, weight_shape, turned", [
    ((2, 4, 7, 6), (5, 4, 3, 3), True),       # 3x3, stride 1, unpadded
    ((2, 6, 9, 8), (3, 6, 5, 4), True),       # fewer output than input channels
    ((1, 16, 14, 14), (3, 16, 7, 7), True),   # a generator's 7x7 output layer
    ((4, 6, 4, 4), (1, 6, 4, 4), False),      # one output pixel (a DCGAN discriminator's last)
    ((2, 4, 9, 8), (6, 4, 5, 5), False),      # more output channels, 5x5
])
def test_turned_form_runs_where_it_pays(input_shape, weight_shape, turned):
    """By fastgan's kernels, a convolution in the turned form runs forward as a transposed
    convolution and its input gradient as that one's input gradient; any other the other way
    round. Both give torch's values."""
    x = make_input(input_shape, torch.float64, "cpu")
    w = make_input(weight_shape, torch.float64, "cpu", seed=1)
    upstream = make_input((input_shape[0], weight_shape[0],
                           input_shape[2] - weight_shape[2] + 1,
                           input_shape[3] - weight_shape[3] + 1), torch.float64, "cpu", seed=2)
    x.requires_grad_()
    with fastgan.backends.cpu.flags(benchmark=False, engine="fastgan"), _FastganOps() as calls:
        out = fastgan.ops.conv2d(x, w)
        (grad_x,) = torch.autograd.grad(out, x, upstream)
    forward, backward = "fastgan::conv_transpose2d", "fastgan::conv_transpose2d_backward"
    assert calls.names == ([forward, backward] if turned else [backward, forward])
    expected = F.conv2d(x, w)
    assert_close(out, expected)
    assert_close(grad_x, torch.autograd.grad(expected, x, upstream)[0])


@pytest.mark.parametrize("weight_shape", [(4, 3, 4, 4), (8, 128, 4, 4)])
def test_input_gradient_alone_skips_the_weight_gradient(weight_shape, engine):
    """autograd.grad w.r.t. the input (R1's first step) computes no weight gradient, though the
    weight requires grad; a later backward w.r.t. the weight does compute it."""
    x, w, b = _leaves("cpu", (2, weight_shape[1], 8, 8), weight_shape, "contiguous")
    out = fastgan.ops.conv2d(x, w, b, 2, 1)
    with _WeightGradients() as recorder:
        (grad_x,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    assert recorder.weight_gradients == 0
    with _WeightGradients() as recorder:
        grad_x.square().sum().backward()
    assert recorder.weight_gradients == 1
    assert w.grad is not None and x.grad is None


@pytest.mark.skipif(fastgan._backend.extension is None, reason="fastgan's kernels are not built")
def test_rule_chooses_the_engine():
    """Without the benchmark, fastgan's kernels serve the input gradient of few-channel images
    and all three parts of a convolution to a map of at most 4x4 pixels with a long reduction
    (the DCGAN discriminator's 256 -> 512 layer) or to a single pixel (its last layer, here with
    a short reduction); torch's serve the rest, the 128 -> 256 layer at any batch size too."""
    down, head = (2, 1), (1, 0)  # (stride, padding)
    cases = [((2, 3, 16, 16), (8, 3, 4, 4), down, 1), ((2, 256, 8, 8), (16, 256, 4, 4), down, 3),
             ((2, 128, 16, 16), (16, 128, 4, 4), down, 0),
             ((2, 64, 4, 4), (1, 64, 4, 4), head, 3), ((2, 64, 8, 8), (1, 64, 4, 4), head, 0),
             ((64, 128, 16, 16), (256, 128, 4, 4), down, 0),
             ((8, 128, 16, 16), (256, 128, 4, 4), down, 0)]
    for input_shape, weight_shape, (stride, padding), fastgan_calls in cases:
        x, w, b = _leaves("cpu", input_shape, weight_shape, "channels_last", bias=False)
        with fastgan.backends.cpu.flags(benchmark=False, engine=None), \
                _WeightGradients() as recorder:
            out = fastgan.ops.conv2d(x, w, None, stride, padding)
            (grad_x,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
            grad_x.square().sum().backward()
        assert recorder.fastgan_calls >= fastgan_calls, (input_shape, weight_shape)
        assert (recorder.fastgan_calls == 0) == (fastgan_calls == 0), (input_shape, weight_shape)


@pytest.mark.parametrize("input_shape, padding, allow_winograd, expected", [
    ((1, 64, 66, 66), 0, True, ("fastgan", "fastgan", "fastgan")),
    ((1, 64, 64, 64), 1, True, ("fastgan", "fastgan", "fastgan")),
    ((1, 64, 32, 32), 1, True, ("fastgan", "fastgan", "fastgan")),
    ((1, 64, 16, 16), 1, True, ("torch", "torch", "torch")),
    ((1, 64, 66, 66), 0, False, ("torch", "torch", "torch"))],
    ids=["256-tiles-unpadded", "256-tiles", "64-tiles", "16-tiles", "winograd-off"])
def test_rule_takes_winograd_3x3_where_it_pays(input_shape, padding, allow_winograd, expected):
    """Without the benchmark, 3x3 stride-1 convolutions of 64 channels run by fastgan's Winograd
    path in every part from 64 output tiles (32 x 32 pixels), and by torch's below or with
    allow_winograd off."""
    geometry = ([1, 1], [padding, padding], [1, 1], 1)
    with fastgan.backends.cpu.flags(allow_winograd=allow_winograd):
        engines = conv2d_module._rule(torch.empty(input_shape), torch.empty(64, 64, 3, 3),
                                      geometry)
    assert (engines.forward, engines.input_grad, engines.weight_grad) == expected


@pytest.mark.skipif(fastgan._backend.extension is None, reason="fastgan's kernels are not built")
@pytest.mark.parametrize("input_shape, weight_shape, stride, padding", [
    ((64, 128, 16, 16), (256, 128, 4, 4), 2, 1), ((1, 64, 34, 34), (72, 64, 3, 3), 1, 0),
    ((1, 64, 32, 32), (72, 64, 3, 3), 1, 1), ((3, 64, 34, 36), (72, 64, 3, 3), 2, 1)],
    ids=["4x4-stride-2", "3x3-unpadded", "3x3-padded", "3x3-stride-2"])
def test_winograd_path_in_every_part(input_shape, weight_shape, stride, padding):
    """On a stride-2 4x4 layer, a 3x3 stride-1 one without padding (a ResNet generator's,
    after its reflection padding) or with, or a 3x3 stride-2 one (its downsampling), with enough
    channels and tiles, fastgan's kernels take their Winograd path (the only path with batched
    GEMMs) in each of the three parts, with torch's results."""
    x, w, _ = _leaves("cpu", input_shape, weight_shape, "channels_last", bias=False)
    geometry = ([stride, stride], [padding, padding], [1, 1], 1)
    g = torch.randn(input_shape[0], weight_shape[0],
                    *conv2d_module._out_size(x, w, geometry), dtype=x.dtype).to(
        memory_format=torch.channels_last)
    parts = {"forward": lambda own: conv2d_module._forward(x, w, None, geometry, own),
             "input gradient": lambda own: conv2d_module._input_grad(g, x, w, geometry, own),
             "weight gradient": lambda own: conv2d_module._weight_grad(g, x, w, geometry, own)}
    for part, run in parts.items():
        with torch.no_grad(), torch.profiler.profile() as profile:
            result = run(True)
        keys = {e.key for e in profile.key_averages()}
        assert keys & {"aten::bmm", "aten::baddbmm_"}, (part, keys)
        with torch.no_grad():
            assert_close(result, run(False))


@pytest.mark.parametrize("in_channels", [3, 1])
def test_module_is_nn_conv2d_computing_channels_last(in_channels):
    """Also from one input channel, where the weight's size-1 dimension makes NCHW and NHWC
    strides both valid: its output must still be channels-last, or the activation's backward
    after it meets mixed layouts (20x slower in torch)."""
    torch.manual_seed(0)
    module = fastgan.nn.Conv2d(in_channels, 8, 4, 2, 1, bias=True)
    reference = torch.nn.Conv2d(in_channels, 8, 4, 2, 1, bias=True)
    reference.load_state_dict(module.state_dict())
    assert module.state_dict().keys() == reference.state_dict().keys()
    x = make_input((2, in_channels, 10, 10), torch.float32)
    out = module(x)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    assert_close(out, reference(x))


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("kernel_size, options, even", [
    (3, dict(padding="same"), True), ((3, 4), dict(padding="same"), False),
    ((2, 3), dict(padding="same", dilation=2), True), (3, dict(padding="valid"), True),
    (3, dict(padding=(1, 2), padding_mode="reflect"), False),
    (3, dict(padding=1, stride=2, padding_mode="circular"), False),
    ((2, 3), dict(padding="same", padding_mode="replicate"), False)], ids=str)
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_module_pads_as_nn_conv2d_does(kernel_size, options, even, batched):
    """String padding and the other padding modes: the values of nn.Conv2d, to second order,
    through fastgan's conv2d (with integer padding where zeros pad both sides evenly)."""
    torch.manual_seed(0)
    module = fastgan.nn.Conv2d(3, 4, kernel_size, **options).double()
    reference = torch.nn.Conv2d(3, 4, kernel_size, **options).double()
    reference.load_state_dict(module.state_dict())
    x = make_input((2, 3, 7, 6) if batched else (3, 7, 6))
    padded, _ = module._padded(x)
    assert (padded is x) == even and padded.dim() == x.dim()
    results = []
    for conv in (module, reference):
        leaf = x.clone().requires_grad_()
        out = conv(leaf)
        (grad,) = torch.autograd.grad(out.square().sum(), leaf, create_graph=True)
        results.append((out, grad, *torch.autograd.grad(grad.square().sum(),
                                                       [leaf, *conv.parameters()])))
    for actual, expected in zip(*results, strict=True):
        assert_close(actual, expected)


def test_errors_name_the_argument():
    x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        fastgan.ops.conv2d(x, w, stride=0)
    with pytest.raises(ValueError, match="input must have 3 or 4 dimensions"):
        fastgan.ops.conv2d(x[0, 0], w)
    with pytest.raises(TypeError, match="weight must be a floating-point tensor"):
        fastgan.ops.conv2d(x, w.long())


def test_autocast_computes_like_torch():
    """Under autocast the convolution and both backward orders run in its lower precision, as
    torch's conv2d does."""
    def run(conv):
        x, w, b = _leaves("cpu", (2, 4, 8, 8), (6, 4, 4, 4), "contiguous")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = conv(x.float(), w.float(), b.float(), 2, 1)
            (grad_x,) = torch.autograd.grad(out.float().square().sum(), x, create_graph=True)
        grad_x.square().sum().backward()
        return out, grad_x, w.grad, b.grad

    for actual, expected in zip(run(fastgan.ops.conv2d), run(F.conv2d)):
        assert actual.dtype == expected.dtype
        torch.testing.assert_close(actual, expected, rtol=2e-2, atol=2e-2)
