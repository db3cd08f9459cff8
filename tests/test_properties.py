"""Property-based tests (hypothesis): each op against its float64 pure-PyTorch reference and
torch.nn.functional over random shapes (0- and 1-sized dimensions included), layouts and strides,
dtypes, slopes, convolution geometries and training/evaluation, gradients included.

The example budget is a settings profile (tests/conftest.py): "ci" by default (bounded,
derandomized), FASTGAN_HYPOTHESIS_PROFILE=thorough for a long search."""
import math

import pytest
import torch
import torch.nn.functional as F

import fastgan
from fastgan import _reference

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import assume, given, strategies as st  # noqa: E402

DTYPES = st.sampled_from([torch.float32, torch.float64])
SLOPES = st.one_of(st.sampled_from([0.0, 0.2, 1.0]), st.floats(-0.5, 1.5))


def _tolerance(dtype):
    return {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-9,
                                                                         "atol": 1e-9}


@st.composite
def tensors(draw, shape, dtype, layouts=("contiguous", "sliced", "transposed")):
    """A random tensor of `shape` stored in one of `layouts` (channels_last for 4D too): dense,
    every other element of a wider tensor, or a transposed view of a (C, N, ...) tensor."""
    seed = draw(st.integers(0, 2 ** 16))
    choices = list(layouts) + (["channels_last"] if len(shape) == 4 else [])
    layout = draw(st.sampled_from(choices))
    generator = torch.Generator().manual_seed(seed)
    scale = draw(st.sampled_from([1.0, 1e-2, 30.0]))
    if layout == "sliced":
        wide = torch.randn(*shape[:-1], 2 * shape[-1], generator=generator, dtype=dtype)
        return (wide * scale)[..., ::2]
    if layout == "transposed":
        swapped = (shape[1], shape[0], *shape[2:])
        return torch.randn(swapped, generator=generator, dtype=dtype).transpose(0, 1) * scale
    x = torch.randn(shape, generator=generator, dtype=dtype) * scale
    return x.to(memory_format=torch.channels_last) if layout == "channels_last" else x


def _grads(out, leaves, upstream):
    present = [t for t in leaves if t is not None]
    if out.numel() == 0:
        return [torch.zeros_like(t) for t in present]
    return torch.autograd.grad(out, present, upstream)


def _leaves(tensors, dtype=None):
    return [None if t is None else t.detach().to(dtype or t.dtype, copy=True).requires_grad_()
            for t in tensors]


def _near_kink(pre_activation):
    """Whether some pre-activation is so close to 0 that rounding may choose either side of
    (leaky_)relu's kink: the gradients may then differ by the slope change, legitimately."""
    if pre_activation.numel() == 0:
        return False
    return bool((pre_activation.abs() <= 1e-5 * (1 + pre_activation.abs().max())).any())


def _assert_all_close(actual, expected, dtype):
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a.double(), e.double(), **_tolerance(dtype))


# --- batch_norm_leaky_relu ----------------------------------------------------------------------

@st.composite
def batch_norm_cases(draw):
    dtype = draw(DTYPES)
    spatial = draw(st.lists(st.integers(0, 4), min_size=0, max_size=3))
    shape = (draw(st.integers(0, 4)), draw(st.integers(1, 4)), *spatial)
    training = draw(st.booleans())
    per_channel = shape[0] * math.prod(shape[2:])
    assume(not (training and per_channel == 1))  # an error, as in torch (tested below)
    x = draw(tensors(shape, dtype))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 16)))
    channels = shape[1]
    affine = draw(st.booleans())
    weight = torch.randn(channels, generator=generator, dtype=dtype) if affine else None
    bias = torch.randn(channels, generator=generator, dtype=dtype) if affine else None
    running = draw(st.sampled_from(["given", "none"] if training else ["given"]))
    stats = ((torch.randn(channels, generator=generator, dtype=dtype),
              torch.rand(channels, generator=generator, dtype=dtype) + 0.5)
             if running == "given" else (None, None))
    return {"x": x, "weight": weight, "bias": bias, "stats": stats, "training": training,
            "momentum": draw(st.sampled_from([0.0, 0.1, 1.0])),
            "eps": draw(st.sampled_from([1e-5, 1e-3, 0.1])), "slope": draw(SLOPES),
            "upstream": torch.randn(shape, generator=generator, dtype=dtype)}


def _run_batch_norm(fn, case, dtype, slope=None):
    """[output, running statistics..., gradients...]."""
    x, weight, bias = _leaves((case["x"], case["weight"], case["bias"]), dtype)
    stats = [None if s is None else s.to(dtype, copy=True) for s in case["stats"]]
    out = fn(x, stats[0], stats[1], weight, bias, case["training"], case["momentum"],
             case["eps"], case["slope"] if slope is None else slope)
    grads = _grads(out, (x, weight, bias), case["upstream"].to(dtype))
    return [out, *[s for s in stats if s is not None], *grads]


def _torch_batch_norm(x, mean, var, weight, bias, training, momentum, eps, slope):
    return F.leaky_relu(F.batch_norm(x, mean, var, weight, bias, training, momentum, eps), slope)


@given(batch_norm_cases())
def test_batch_norm_leaky_relu_matches_the_reference(case):
    dtype = case["x"].dtype
    actual = _run_batch_norm(fastgan.ops.batch_norm_leaky_relu, case, dtype)
    assert actual[0].shape == case["x"].shape
    compared = len(actual)
    if case["slope"] != 1 and _near_kink(_run_batch_norm(_torch_batch_norm, case, torch.float64,
                                                         slope=1.0)[0]):
        compared -= 3 if case["weight"] is not None else 1  # outputs and statistics only
    for expected in (_run_batch_norm(_reference.batch_norm_leaky_relu, case, torch.float64),
                     _run_batch_norm(_torch_batch_norm, case, dtype)):
        _assert_all_close(actual[:compared], expected[:compared], dtype)


@given(st.integers(1, 4), st.integers(0, 2), DTYPES)
def test_batch_norm_one_value_per_channel_is_refused_like_torch(channels, spatial_dims, dtype):
    x = torch.randn(1, channels, *[1] * spatial_dims, dtype=dtype)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.batch_norm(x, None, None, training=True)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        fastgan.ops.batch_norm_leaky_relu(x, None, None, training=True)


# --- conv_transpose2d ---------------------------------------------------------------------------

def _pairs(draw, low, high):
    first = draw(st.integers(low, high))
    return first if draw(st.booleans()) else (first, draw(st.integers(low, high)))


def _as_pair(value):
    return value if isinstance(value, tuple) else (value, value)


@st.composite
def conv_cases(draw):
    dtype = draw(DTYPES)
    groups = draw(st.integers(1, 3))
    c_in, c_out = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride, padding, dilation = _pairs(draw, 1, 3), _pairs(draw, 0, 2), _pairs(draw, 1, 2)
    # output_padding must be smaller than the stride or the dilation, per dimension.
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1))
                           for s, d in zip(_as_pair(stride), _as_pair(dilation)))
    size = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    out_size = [(i - 1) * s - 2 * p + d * (k - 1) + o + 1 for i, s, p, d, k, o in
                zip(size, _as_pair(stride), _as_pair(padding), _as_pair(dilation), kernel,
                    output_padding)]
    assume(min(out_size) > 0)
    batched = draw(st.booleans())
    batch = draw(st.integers(0, 3))
    x = draw(tensors((batch, c_in, *size), dtype))
    if not batched:
        x = x[0] if batch else draw(tensors((1, c_in, *size), dtype))[0]
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 16)))
    weight = draw(tensors((c_in, c_out // groups, *kernel), dtype, layouts=("contiguous",
                                                                                "sliced")))
    bias = torch.randn(c_out, generator=generator, dtype=dtype) if draw(st.booleans()) else None
    activation = draw(st.sampled_from([None, "relu", "leaky_relu", "tanh"]))
    geometry = {"stride": stride, "padding": padding, "output_padding": output_padding,
                "groups": groups, "dilation": dilation}
    out_shape = ((batch,) if batched else ()) + (c_out, *out_size)
    return {"x": x, "weight": weight, "bias": bias, "geometry": geometry,
            "activation": activation, "slope": draw(SLOPES),
            "upstream": torch.randn(out_shape, generator=generator, dtype=dtype)}


def _run_conv(fn, case, dtype):
    leaves = _leaves((case["x"], case["weight"], case["bias"]), dtype)
    out = fn(*leaves, **case["geometry"], activation=case["activation"],
             negative_slope=case["slope"])
    return [out, *_grads(out, leaves, case["upstream"].to(dtype))]


_TORCH_ACTIVATIONS = {None: lambda y, slope: y, "relu": lambda y, slope: F.relu(y),
                      "leaky_relu": F.leaky_relu, "tanh": lambda y, slope: torch.tanh(y)}


def _torch_conv(x, weight, bias, activation, negative_slope, **geometry):
    return _TORCH_ACTIVATIONS[activation](F.conv_transpose2d(x, weight, bias, **geometry),
                                          negative_slope)


@given(conv_cases())
def test_conv_transpose2d_matches_the_reference(case):
    dtype = case["x"].dtype
    actual = _run_conv(fastgan.ops.conv_transpose2d, case, dtype)
    assert actual[0].shape == case["upstream"].shape
    compared = len(actual)
    if case["activation"] in ("relu", "leaky_relu") and _near_kink(
            _run_conv(_torch_conv, {**case, "activation": None}, torch.float64)[0]):
        compared = 1  # the output only
    for expected in (_run_conv(_reference.conv_transpose2d, case, torch.float64),
                     _run_conv(_torch_conv, case, dtype)):
        _assert_all_close(actual[:compared], expected[:compared], dtype)
