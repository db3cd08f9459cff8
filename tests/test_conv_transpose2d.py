"""fastgan.ops.conv_transpose2d and fastgan.nn.ConvTranspose2d against torch."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

import fastgan
from fastgan import _reference
from conftest import DEVICES, assert_close, first_and_second_order_grads, make_input

conv_t = fastgan.ops.conv_transpose2d
ACTIVATIONS = [None, "relu", "leaky_relu", "tanh"]

# (C_in, C_out, kernel, stride, padding, output_padding, groups, dilation, (H, W))
CASES = {
    "stride1": (3, 5, 3, 1, 0, 0, 1, 1, (5, 4)),
    "dcgan": (4, 6, 4, 2, 1, 0, 1, 1, (4, 5)),
    "dcgan_first": (5, 8, 4, 1, 0, 0, 1, 1, (1, 1)),
    "one_pixel_grouped": (6, 4, (3, 2), 2, 0, 0, 2, 1, (1, 1)),
    "one_pixel_padded": (5, 8, 4, 1, 1, 0, 1, 1, (1, 1)),
    "non_square": (4, 6, (3, 2), (2, 3), (1, 0), (1, 2), 2, 1, (4, 3)),
    "dilated": (6, 4, 3, 3, 2, (2, 0), 2, (2, 1), (3, 4)),
    "output_padding_below_dilation": (2, 3, (1, 3), 2, 0, 2, 1, 3, (3, 3)),
    "grouped": (8, 8, 2, 2, 0, 0, 4, 1, (3, 3)),
    "three_outputs": (5, 3, 4, 2, 1, 0, 1, 1, (6, 6)),
    # 16 or more output channels per group: NCHW operands take the row path, not the planar one.
    "wide": (4, 16, 4, 2, 1, 0, 1, 1, (5, 6)),
    "wide_grouped": (6, 32, 3, (2, 3), 1, 1, 2, (1, 2), (4, 3)),
    # More channels and pixels than one 64 x 64 tile of the CUDA GEMMs, 24 = 16 + 8 input
    # channels per group (a partial reduction step); dilation 2 with stride 2 leaves phases
    # without taps (bias only).
    "gemm_tiles": (48, 140, 3, 2, 1, 1, 2, 1, (9, 7)),
    "phases_without_taps": (3, 4, 3, 2, 1, 1, 1, 2, (4, 3)),
    # The DCGAN geometry with >= 64 channels and >= 64 4 x 4 tiles in the batch of 3: the CPU's
    # Winograd path (partial tiles: 17 x 18 is not a multiple of 4).
    "winograd": (64, 72, 4, 2, 1, 0, 1, 1, (17, 18)),
    # 3 x 3, stride 1, the same channels and tiles: the Winograd path's stride-1 scheme, with
    # padding 1 (the output of the input's size), 0 (larger) and 2 (smaller: the convolution of
    # a padded input, as fastgan.ops.conv2d runs it).
    "winograd_3x3": (64, 72, 3, 1, 1, 0, 1, 1, (17, 18)),
    "winograd_3x3_padding_0": (64, 72, 3, 1, 0, 0, 1, 1, (17, 18)),
    "winograd_3x3_padding_2": (72, 64, 3, 1, 2, 0, 1, 1, (19, 20)),
    # 3 x 3, stride 2, output padding 1 (a ResNet generator's upsampling): the stride-2 scheme's
    # 4 x 4 kernel with a zero last row and column.
    "winograd_3x3_stride_2": (64, 72, 3, 2, 1, 1, 1, 1, (17, 18)),
}

# Few channels: the numerical Jacobians cost one evaluation per input and parameter element.
GRAD_CASES = {
    "dcgan": (2, 2, 4, 2, 1, 0, 1, 1, (3, 2)),
    "dcgan_first": (3, 2, 4, 1, 0, 0, 1, 1, (1, 1)),
    "grouped_dilated": (4, 2, (3, 2), (2, 1), 1, (1, 0), 2, (2, 1), (2, 3)),
}


def make_operands(case, batch, dtype, device="cpu", layout="contiguous", bias=True, seed=0):
    c_in, c_out, kernel, *_, groups, _, (h, w) = case
    kernel = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    x = make_input((batch, c_in, h, w), dtype, device, layout, seed=seed)
    # Scaled by the fan-in as layers are initialized, so that outputs stay O(1) (float32's
    # rounding errors grow with the outputs' magnitude) whatever the channel count. Stored in
    # the input's layout (fastgan.nn.Conv2d keeps its weights channels-last) or contiguous.
    weight = make_input((c_in, c_out // groups, *kernel), dtype, device,
                        "channels_last" if layout == "channels_last" else "contiguous", seed=seed + 1)
    weight = weight / (c_in * kernel[0] * kernel[1]) ** 0.5
    b = make_input((c_out,), dtype, device, seed=seed + 2) if bias else None
    return x, weight, b


def hyper(case, activation, negative_slope=0.2):
    stride, padding, output_padding, groups, dilation = case[3:8]
    return dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups,
                dilation=dilation, activation=activation, negative_slope=negative_slope)


def output_and_grads(fn, x, weight, bias, kwargs, seed=5):
    """Output and the gradients of (input, weight, bias) for a random upstream gradient."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None
              for t in (x, weight, bias)]
    out = fn(*leaves, **kwargs)
    upstream = make_input(out.shape, torch.float64, out.device, seed=seed).to(out.dtype)
    present = [t for t in leaves if t is not None]
    return out, torch.autograd.grad(out, present, upstream)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "non_contiguous"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_matches_torch(device, dtype, layout, activation, bias, case):
    x, weight, b = make_operands(case, 3, dtype, device, layout, bias)
    out, grads = output_and_grads(conv_t, x, weight, b, hyper(case, activation))
    # The reference in float64 from the same values.
    expected, expected_grads = output_and_grads(
        _reference.conv_transpose2d, x.double(), weight.double(),
        b.double() if b is not None else None, hyper(case, activation))
    assert out.dtype == dtype
    # Rounding errors of sums scale with their magnitude: grad_weight sums over every pixel.
    for actual, reference in zip((out, *grads), (expected, *expected_grads)):
        assert_close(actual, reference, dtype, scale=10 * max(1.0, reference.abs().max().item()))


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["float16", "bfloat16", "tf32"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("activation", [None, "tanh"])
@pytest.mark.parametrize("case_name", ["dcgan", "non_square", "dilated", "gemm_tiles"])
def test_cuda_tensor_cores_match_torch(precision, layout, activation, case_name):
    """The WMMA paths: float16 / bfloat16, and float32 with TF32 allowed, against float64 from
    the same values."""
    case = CASES[case_name]
    dtype = torch.float32 if precision == "tf32" else getattr(torch, precision)
    x, weight, b = make_operands(case, 3, dtype, "cuda", layout)
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        out, grads = output_and_grads(conv_t, x, weight, b, hyper(case, activation))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    expected, expected_grads = output_and_grads(
        _reference.conv_transpose2d, x.double(), weight.double(), b.double(),
        hyper(case, activation))
    assert out.dtype == dtype
    # The backward reads activation' from the rounded result and gets a rounded upstream
    # gradient: on the CPU emulation of these kernels the worst errors reach 0.4x of this
    # tolerance for bfloat16 (gradients), 0.3x for float16.
    tolerance = "tf32" if precision == "tf32" else dtype
    assert_close(out, expected, tolerance, scale=5)
    for actual, reference in zip(grads, expected_grads):
        assert_close(actual, reference, tolerance, scale=5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", [0, 1, 17])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("activation", ["tanh", "leaky_relu"])
@pytest.mark.parametrize("case", [
    (3, 4, 4, 2, 1, 0, 1, 1, (16, 16)), (3, 4, 4, 1, 0, 0, 1, 1, (1, 1)),
    (64, 64, 4, 2, 1, 0, 1, 1, (31, 29))], ids=["16x16", "1x1", "winograd"])
def test_batch_sizes(device, batch, layout, activation, case):
    """Empty, single and odd batches; 17 images of 16x16 run as several blocks of images, 1x1
    images as one GEMM. On the CPU the 64-channel 31x29 images (8 x 8 tiles) take the Winograd
    path from batch 1 on, 17 of them in several blocks of images."""
    x, weight, b = make_operands(case, batch, torch.float64, device, layout)
    out, grads = output_and_grads(conv_t, x, weight, b, hyper(case, activation))
    expected, expected_grads = output_and_grads(_reference.conv_transpose2d, x, weight, b,
                                                hyper(case, activation))
    assert out.shape == expected.shape
    assert_close(out, expected)
    for actual, reference in zip(grads, expected_grads):
        assert_close(actual, reference)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("negative_slope", [0.0, 1.0, -0.5])
def test_leaky_relu_slopes(device, negative_slope):
    """slope 0 is relu; a negative slope (sign of the output ambiguous) runs the activation
    unfused."""
    case = GRAD_CASES["dcgan"]
    x, weight, b = make_operands(case, 2, torch.float64, device)
    kwargs = hyper(case, "leaky_relu", negative_slope)
    out, grads = output_and_grads(conv_t, x, weight, b, kwargs)
    expected, expected_grads = output_and_grads(_reference.conv_transpose2d, x, weight, b, kwargs)
    assert_close(out, expected)
    for actual, reference in zip(grads, expected_grads):
        assert_close(actual, reference)
    leaves = [t.requires_grad_() for t in (x, weight, b)]
    assert gradgradcheck(lambda *args: conv_t(*args, **kwargs), leaves)


@pytest.mark.parametrize("device", DEVICES)
def test_unbatched_input(device):
    case = CASES["non_square"]
    x, weight, b = make_operands(case, 1, torch.float64, device)
    out = conv_t(x[0], weight, b, **hyper(case, "tanh"))
    assert out.dim() == 3
    assert_close(out, _reference.conv_transpose2d(x, weight, b, **hyper(case, "tanh"))[0])


@pytest.mark.parametrize("device", DEVICES)
def test_layout_is_preserved(device):
    case = CASES["dcgan"]
    x, weight, b = make_operands(case, 2, torch.float32, device, "channels_last")
    x.requires_grad_()
    out = conv_t(x, weight, b, **hyper(case, "relu"))
    assert out.is_contiguous(memory_format=torch.channels_last)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert grad.is_contiguous(memory_format=torch.channels_last)
    assert conv_t(x.contiguous(), weight, b, **hyper(case, "relu")).is_contiguous()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("case_name, layout", [
    ("dcgan", "contiguous"), ("dcgan", "channels_last"), ("dcgan_first", "contiguous"),
    ("grouped_dilated", "non_contiguous")])
def test_gradcheck_and_gradgradcheck(device, activation, case_name, layout):
    case = GRAD_CASES[case_name]
    x, weight, b = make_operands(case, 2, torch.float64, device, layout)
    leaves = [t.requires_grad_() for t in (x, weight, b)]

    def fn(*args):
        return conv_t(*args, **hyper(case, activation))

    assert gradcheck(fn, leaves)
    assert gradgradcheck(fn, leaves)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("activation", [None, "tanh"])
@pytest.mark.parametrize("case_name", ["winograd", "winograd_3x3_padding_0",
                                       "winograd_3x3_stride_2"])
def test_winograd_gradcheck_and_gradgradcheck(layout, activation, case_name):
    """The CPU's Winograd path to second order (fast_mode: its Jacobians are too large to build
    entry by entry)."""
    case = CASES[case_name]
    x, weight, b = make_operands(case, 3, torch.float64, "cpu", layout)
    leaves = [t.requires_grad_() for t in (x, weight, b)]

    def fn(*args):
        return conv_t(*args, **hyper(case, activation))

    assert gradcheck(fn, leaves, fast_mode=True)
    assert gradgradcheck(fn, leaves, fast_mode=True)


# The Winograd geometry with 256 channels on each side: its transformed weight U (256 x 256 per
# product) outweighs the operands of 64 tiles (64 x 512).
WIDE_WINOGRAD = (256, 256, *CASES["winograd"][2:8], (16, 16))


# 3 x 3, stride 1, with 256 channels: U is 4 times the weight, not 6.25, and the path pays
# from 64 tiles on (a ResNet generator's residual blocks at 32 x 32 pixels).
WIDE_WINOGRAD_3X3 = (256, 256, *CASES["winograd_3x3"][2:8], (32, 32))


@pytest.mark.parametrize("case, batch, expected", [
    (CASES["winograd"], 3, True), (CASES["winograd"], 1, False), (WIDE_WINOGRAD, 4, False),
    (WIDE_WINOGRAD, 16, True), (CASES["winograd_3x3"], 3, True),
    (CASES["winograd_3x3"], 2, False), (CASES["winograd_3x3_padding_2"], 3, True),
    (WIDE_WINOGRAD_3X3, 1, True), (CASES["winograd_3x3_stride_2"], 3, True),
    (CASES["winograd_3x3_stride_2"], 1, False)],
    ids=["75-tiles", "25-tiles", "wide-64-tiles", "wide-256-tiles", "3x3-75-tiles",
         "3x3-50-tiles", "3x3-padding-2", "3x3-wide-64-tiles", "3x3-stride-2-75-tiles",
         "3x3-stride-2-25-tiles"])
def test_winograd_path_is_taken_where_it_pays(case, batch, expected):
    """The Winograd path is the only one that runs batched GEMMs (seen as ATen's with the gemm
    switch on "torch"): taken for enough tiles (3 images of 17 x 18: 75 tiles), not for fewer (1
    image: 25 tiles), nor, at stride 2, where U outweighs the tiles (256 channels: 64 tiles, not
    256)."""
    x, weight, b = make_operands(case, batch, torch.float32)
    kwargs = hyper(case, None)
    leaves = [t.requires_grad_() for t in (x, weight, b)]
    with fastgan.backends.cpu.flags(gemm="torch"), torch.profiler.profile() as profile:
        conv_t(*leaves, **kwargs).sum().backward()
    batched_gemms = [e.key for e in profile.key_averages()
                     if e.key in ("aten::bmm", "aten::baddbmm_")]
    assert bool(batched_gemms) == expected, batched_gemms


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("padding", [0, 1])
def test_winograd_blocks_of_tiles_within_an_image(layout, padding):
    """A large image's tiles run in several blocks (with 64 channels, 256 K entries of V or M:
    113 tiles), which split its rows of tiles, and its input gradient is overlap-added across
    them: outputs and gradients as torch's in float64."""
    case = (64, 64, 3, 1, padding, 0, 1, 1, (97, 101))
    x, weight, b = make_operands(case, 1, torch.float64, "cpu", layout)
    out, grads = output_and_grads(conv_t, x, weight, b, hyper(case, "relu"))
    expected, expected_grads = output_and_grads(_reference.conv_transpose2d, x, weight, b,
                                                hyper(case, "relu"))
    for actual, reference in zip((out, *grads), (expected, *expected_grads)):
        assert_close(actual, reference, torch.float64, scale=10 * reference.abs().max().item())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_gradient_penalty_pattern_matches_torch(device, activation):
    """Input gradient with create_graph=True, then backward through its squared norm (the R1
    pattern) and through a weight-gradient term: every first-order input of the backward gets
    a gradient."""
    case = CASES["dcgan"]

    def penalty_grads(fn):
        x, weight, b = (t.requires_grad_() for t in make_operands(case, 3, torch.float64, device))
        out = fn(x, weight, b, **hyper(case, activation))
        score = (out * make_input(out.shape, torch.float64, device, seed=9)).sum()
        grad_x, grad_w = torch.autograd.grad(score, (x, weight), create_graph=True)
        (grad_x.square().sum() + grad_w.square().sum()).backward()
        return x.grad, weight.grad, b.grad

    for actual, expected in zip(penalty_grads(conv_t),
                                penalty_grads(_reference.conv_transpose2d)):
        assert_close(actual, expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", [None, "leaky_relu", "tanh"])
@pytest.mark.parametrize("bias, wrt", [
    (bias, wrt) for bias in (True, False)
    for wrt in ["x", "w", "b", "xw", "xb", "wb", "xwb"] if bias or "b" not in wrt], ids=str)
def test_gradients_of_any_subset_of_the_leaves(device, activation, bias, wrt):
    """First- and second-order gradients with respect to each subset of (input, weight, bias),
    with and without a bias, equal the reference's: the autograd nodes compute what each call
    asks for and nothing is misattributed."""
    case = CASES["dcgan"]

    def grads(fn):
        x, weight, b = make_operands(case, 3, torch.float64, device, bias=bias)
        named = {"x": x.requires_grad_(), "w": weight.requires_grad_(),
                 "b": b.requires_grad_() if bias else None}
        leaves = [named[name] for name in wrt]
        out = fn(x, weight, b, **hyper(case, activation))
        return first_and_second_order_grads(out, leaves, seed=9)

    for actual, expected in zip(grads(conv_t), grads(_reference.conv_transpose2d), strict=True):
        assert_close(actual, expected)


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic(device):
    case = (3, 4, 4, 2, 1, 0, 1, 1, (16, 16))
    x, weight, b = make_operands(case, 17, torch.float32, device, "channels_last")
    first = output_and_grads(conv_t, x, weight, b, hyper(case, "tanh"))
    second = output_and_grads(conv_t, x, weight, b, hyper(case, "tanh"))
    assert torch.equal(first[0], second[0])
    assert all(torch.equal(a, b) for a, b in zip(first[1], second[1]))


def test_header_geometry_matches_torch():
    """Output sizes from csrc/conv_transpose2d.h agree with torch over odd combinations."""
    for case in CASES.values():
        x, weight, b = make_operands(case, 1, torch.float64)
        kwargs = hyper(case, None)
        kwargs.pop("activation"), kwargs.pop("negative_slope")
        assert (torch.ops.fastgan.conv_transpose2d(x, weight, b, *_op_geometry(case), "none", 0.0)
                .shape == F.conv_transpose2d(x, weight, b, **kwargs).shape)


def _op_geometry(case):
    """stride, padding, output_padding, groups, dilation as the op schema takes them."""
    def pair(v):
        return list(v) if isinstance(v, tuple) else [v, v]
    stride, padding, output_padding, groups, dilation = case[3:8]
    return pair(stride), pair(padding), pair(output_padding), groups, pair(dilation)


# --- module ---------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation, torch_activation", [
    (None, nn.Identity()), ("relu", nn.ReLU()), ("leaky_relu", nn.LeakyReLU(0.1)),
    ("tanh", nn.Tanh())], ids=str)
def test_module_matches_torch(device, activation, torch_activation):
    kwargs = dict(stride=2, padding=1, output_padding=1, groups=2, dilation=1)
    torch.manual_seed(0)
    reference = nn.ConvTranspose2d(4, 6, 3, **kwargs).double().to(device)
    torch.manual_seed(0)
    fused = fastgan.nn.ConvTranspose2d(4, 6, 3, **kwargs, activation=activation,
                                       negative_slope=0.1).double().to(device)
    # Same initialization from the same seed, and interchangeable state_dicts.
    assert fused.state_dict().keys() == reference.state_dict().keys()
    for name, tensor in reference.state_dict().items():
        assert torch.equal(fused.state_dict()[name], tensor), name
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64, device=device)
    x_ref, x_fused = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ref = torch_activation(reference(x_ref, output_size=(10, 10)))
    out = fused(x_fused, output_size=(10, 10))
    assert out.shape == (3, 6, 10, 10)
    torch.testing.assert_close(out, out_ref)
    out_ref.square().sum().backward()
    out.square().sum().backward()
    torch.testing.assert_close(x_fused.grad, x_ref.grad)
    torch.testing.assert_close(fused.weight.grad, reference.weight.grad)
    torch.testing.assert_close(fused.bias.grad, reference.bias.grad)
    torch.testing.assert_close(fused(x[0]), torch_activation(reference(x[0])))


def test_module_state_dict_repr_and_copy():
    torch_module = nn.ConvTranspose2d(8, 4, 4, 2, 1, bias=False)
    fused = fastgan.nn.ConvTranspose2d(8, 4, 4, 2, 1, bias=False, activation="tanh")
    fused.load_state_dict(torch_module.state_dict())
    nn.ConvTranspose2d(8, 4, 4, 2, 1, bias=False).load_state_dict(fused.state_dict())
    assert "activation='tanh'" in repr(fused) and "bias=False" in repr(fused)
    assert "negative_slope=0.3" in repr(fastgan.nn.ConvTranspose2d(2, 2, 1, activation="leaky_relu",
                                                                   negative_slope=0.3))
    assert repr(fastgan.nn.ConvTranspose2d(2, 2, 1)) == repr(nn.ConvTranspose2d(2, 2, 1))
    clone = copy.deepcopy(fused)
    assert torch.equal(clone.weight, fused.weight) and clone.activation == "tanh"


def test_module_errors():
    with pytest.raises(ValueError, match="activation"):
        fastgan.nn.ConvTranspose2d(2, 2, 1, activation="gelu")
    with pytest.raises(ValueError, match="padding mode"):
        fastgan.nn.ConvTranspose2d(2, 2, 3, padding_mode="reflect")(torch.randn(1, 2, 3, 3))
    # nn.ConvTranspose2d accepts these and fails in its forward: refused when built.
    for padding in ("same", "valid"):
        with pytest.raises(ValueError, match="integer padding only"):
            fastgan.nn.ConvTranspose2d(2, 2, 3, padding=padding)


# --- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(stride=0), ValueError, "stride"),
    (dict(stride=(1, 0)), ValueError, "stride"),
    (dict(stride=1.5), TypeError, "stride"),
    (dict(padding=-1), ValueError, "padding"),
    (dict(dilation=0), ValueError, "dilation"),
    (dict(output_padding=-1), ValueError, "output_padding"),
    (dict(stride=2, output_padding=2), ValueError, "output_padding"),
    (dict(stride=2, dilation=2, output_padding=(0, 2)), ValueError, "output_padding"),
    (dict(groups=0), ValueError, "groups"),
    (dict(groups=3), ValueError, "groups"),
    (dict(activation="gelu"), ValueError, "activation"),
    (dict(activation=F.relu), TypeError, "activation"),
    (dict(negative_slope="0.2"), TypeError, "negative_slope"),
    (dict(padding=3), ValueError, "output would have size"),
], ids=str)
def test_errors_name_the_argument(kwargs, error, match):
    x, weight = torch.randn(2, 4, 3, 3), torch.randn(4, 2, 3, 3)
    with pytest.raises(error, match=match):
        conv_t(x, weight, **kwargs)


def test_operand_errors_name_the_argument():
    x, weight = torch.randn(2, 4, 3, 3), torch.randn(4, 2, 3, 3)
    with pytest.raises(ValueError, match="input"):
        conv_t(torch.randn(2, 4, 3), weight)
    with pytest.raises(TypeError, match="input"):
        conv_t(x.long(), weight)
    with pytest.raises(ValueError, match="weight"):
        conv_t(x, torch.randn(4, 2, 3))
    with pytest.raises(ValueError, match="weight"):
        conv_t(x, torch.randn(3, 2, 3, 3))
    with pytest.raises(TypeError, match="weight"):
        conv_t(x, weight.double())
    with pytest.raises(ValueError, match="bias"):
        conv_t(x, weight, torch.randn(3))
    with pytest.raises(ValueError, match="bias"):
        conv_t(x, weight, torch.randn(2, 1))
    with pytest.raises(TypeError, match="bias"):
        conv_t(x, weight, torch.randn(2).double())


def test_ops_check_their_arguments():
    """The C++ checks, the second line behind the Python validation."""
    ops = torch.ops.fastgan
    x, weight = torch.randn(2, 4, 3, 3), torch.randn(4, 2, 3, 3)
    geometry = ([1, 1], [0, 0], [0, 0], 1, [1, 1])
    with pytest.raises(RuntimeError, match="stride must be >= 1"):
        ops.conv_transpose2d(x, weight, None, [0, 1], [0, 0], [0, 0], 1, [1, 1], "none", 0.0)
    with pytest.raises(RuntimeError, match="output_padding must be smaller"):
        ops.conv_transpose2d(x, weight, None, [1, 1], [0, 0], [1, 0], 1, [1, 1], "none", 0.0)
    with pytest.raises(RuntimeError, match="activation must be one of"):
        ops.conv_transpose2d(x, weight, None, *geometry, "gelu", 0.0)
    with pytest.raises(RuntimeError, match="negative_slope >= 0"):
        ops.conv_transpose2d(x, weight, None, *geometry, "leaky_relu", -0.1)
    with pytest.raises(RuntimeError, match="groups=3 must divide"):
        ops.conv_transpose2d(x, torch.randn(4, 1, 3, 3), None, [1, 1], [0, 0], [0, 0], 3,
                             [1, 1], "none", 0.0)
    with pytest.raises(RuntimeError, match="float32 and float64"):
        ops.conv_transpose2d(x.half(), weight.half(), None, *geometry, "none", 0.0)
    with pytest.raises(RuntimeError, match="grad_output must have the output's shape"):
        ops.conv_transpose2d_backward(torch.randn(2, 2, 4, 4), x, weight, None, *geometry,
                                      "none", 0.0, [True, True, False])
    with pytest.raises(RuntimeError, match="result .* is required"):
        ops.conv_transpose2d_backward(torch.randn(2, 2, 5, 5), x, weight, None, *geometry,
                                      "tanh", 0.0, [True, True, False])


# --- torch.library ----------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "non_contiguous"])
@pytest.mark.parametrize("activation", ["none", "tanh"])
def test_opcheck(device, layout, activation):
    case = CASES["non_square"]
    x, weight, b = make_operands(case, 2, torch.float64, device, layout)
    geometry = _op_geometry(case)
    ops = torch.ops.fastgan
    out = ops.conv_transpose2d(x, weight, b, *geometry, activation, 0.2)
    go = make_input(out.shape, torch.float64, device, layout, seed=7)
    result = out if activation != "none" else None
    grad = [t.clone().requires_grad_() for t in (x, weight, b, go)]
    cases = [
        (ops.conv_transpose2d, (grad[0], grad[1], grad[2], *geometry, activation, 0.2)),
        (ops.conv_transpose2d_backward, (grad[3], grad[0], grad[1], result, *geometry, activation,
                                         0.2, [True, True, True])),
        (ops.conv_transpose2d_backward, (go, x, weight, result, *geometry, activation, 0.2,
                                         [False, True, False])),
    ]
    if activation != "none":
        cases.append((ops.conv_transpose2d_activation_double_backward,
                      (go * 0.5, go, out, activation, 0.2, [True, True])))
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_third_order_raises():
    case = CASES["dcgan"]
    x, weight, b = (t.requires_grad_() for t in make_operands(case, 2, torch.float64))
    out = conv_t(x, weight, b, **hyper(case, "tanh"))
    (g,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.square().sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="third-order"):
        torch.autograd.grad(gg.sum(), x)


@pytest.mark.skipif(fastgan._backend.extension is None, reason="fastgan's kernels are not built")
@pytest.mark.parametrize("batch, size, channels_last", [
    (96, 8, True),    # shares out among 2 and 3 threads: each thread runs whole images
    (8, 8, False),    # NCHW, by image on 2 threads (buffered per thread), steps shared on 3
    (7, 32, True),    # shares out among neither: forward in whole blocks of tiles per thread
    (1, 32, False),   # one NCHW image: forward in whole blocks of its tiles per thread
])
def test_winograd_per_thread_work_equals_one_thread(batch, size, channels_last):
    """Where the work allows, each thread runs whole images (forward and backward) or whole
    blocks of tiles (forward) through all of Winograd's steps; on one thread the steps run in
    turn. The tiles' arithmetic is the same:
    bitwise equal outputs and input gradients. The weight gradient sums each thread's images
    apart, then adds the sums: close to float64 in every case."""
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(batch, 64, size, size, generator=generator)
    grad_output = torch.randn(batch, 64, 2 * size, 2 * size, generator=generator)
    if channels_last:
        x, grad_output = (t.to(memory_format=torch.channels_last) for t in (x, grad_output))
    weight = torch.randn(64, 64, 4, 4, generator=generator) * 0.05
    geometry = ([2, 2], [1, 1], [0, 0], 1, [1, 1], "none", 0.0)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            out = torch.ops.fastgan.conv_transpose2d(x, weight, None, *geometry)
            grad_input, grad_weight, _ = torch.ops.fastgan.conv_transpose2d_backward(
                grad_output, x, weight, None, *geometry, [True, True, False])
            results.append((out, grad_input, grad_weight))
    finally:
        torch.set_num_threads(threads)
    for out, grad_input, _ in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(grad_input, results[0][1])
    x64, weight64 = (t.double().requires_grad_() for t in (x, weight))
    exact = F.conv_transpose2d(x64, weight64, stride=2, padding=1)
    exact_grads = torch.autograd.grad(exact, (x64, weight64), grad_output.double())
    for out, grad_input, grad_weight in results:
        for value, reference in zip((out, grad_input, grad_weight), (exact, *exact_grads)):
            assert (value.double() - reference).abs().max() <= 1e-5 * reference.abs().max()
