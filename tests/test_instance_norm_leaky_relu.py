"""fastgan.ops.instance_norm_leaky_relu and fastgan.nn.InstanceNormLeakyReLU1d/2d/3d against
F.instance_norm + F.leaky_relu and nn.InstanceNorm*d."""
import copy
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

import fastgan
from conftest import (DEVICES, assert_close, first_and_second_order_grads, make_input,
                      shape_layouts)
from equivalence import assert_same_computation
from fastgan import _reference
from fastgan.nn import InstanceNormLeakyReLU1d, InstanceNormLeakyReLU2d, InstanceNormLeakyReLU3d

in_lrelu = fastgan.ops.instance_norm_leaky_relu
# CycleGAN's shapes in small: batch 1 (its default) and several samples, 1d to 3d.
SHAPES = [(1, 8, 6, 5), (3, 8, 6, 5), (2, 5, 7), (2, 4, 3, 4, 5), (3, 16, 4, 4)]


def _operands(shape, dtype, device, layout, affine, track, seed=0):
    channels = shape[1]
    x = make_input(shape, dtype, device, layout, seed=seed).requires_grad_()
    weight = bias = running_mean = running_var = None
    if affine:
        weight = (make_input((channels,), dtype, device, seed=seed + 1) + 2).requires_grad_()
        bias = make_input((channels,), dtype, device, seed=seed + 2).requires_grad_()
    if track:
        running_mean = make_input((channels,), dtype, device, seed=seed + 3)
        running_var = make_input((channels,), dtype, device, seed=seed + 4).abs() + 0.5
    return x, weight, bias, running_mean, running_var


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape, layout", shape_layouts(SHAPES))
@pytest.mark.parametrize("affine, track", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("slope", [0.0, 0.2])
def test_matches_torch_to_second_order(device, dtype, shape, layout, affine, track, slope):
    """Outputs, first-order gradients, the R1-like second order and the running statistics, with
    the input's statistics (training, or no running statistics)."""
    results = []
    for fn in (in_lrelu, _reference.instance_norm_leaky_relu):
        x, weight, bias, running_mean, running_var = _operands(shape, dtype, device, layout,
                                                               affine, track)
        out = fn(x, running_mean, running_var, weight, bias, True, 0.1, 1e-5, slope)
        leaves = [t for t in (x, weight, bias) if t is not None]
        grads = first_and_second_order_grads(out, leaves, seed=7)
        stats = [t for t in (running_mean, running_var) if t is not None]
        results.append([out, *grads, *stats])
    for actual, expected in zip(*results, strict=True):
        assert_close(actual, expected, scale=10 if dtype == torch.float32 else 1)


@pytest.mark.skipif(fastgan._backend.extension is None,
                    reason="torch's instance_norm (the reference) returns NCHW")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape, layout", shape_layouts([(1, 8, 6, 5), (3, 8, 6, 5)]))
def test_layout_is_preserved(device, shape, layout):
    """Channels-last input gives channels-last output (torch's gives NCHW); others are dense
    NCHW."""
    out = in_lrelu(make_input(shape, torch.float32, device, layout))
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    else:
        assert out.is_contiguous()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("affine", [False, True])
def test_gradcheck_and_gradgradcheck(device, layout, affine):
    x, weight, bias, _, _ = _operands((2, 3, 3, 4), torch.float64, device, layout, affine, False)
    leaves = [t for t in (x, weight, bias) if t is not None]

    def fn(x, *affine_parameters):
        return in_lrelu(x, None, None, *affine_parameters, negative_slope=0.1)
    assert gradcheck(fn, leaves)
    assert gradgradcheck(fn, leaves)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_low_precision_matches_a_float64_reference(device, dtype, layout):
    """Half-precision storage, computed in float32: output in the input's dtype, within its
    rounding of the float64 result."""
    x = make_input((2, 8, 6, 6), torch.float64, device, layout)
    out = in_lrelu(x.to(dtype))
    assert out.dtype == dtype
    expected = _reference.instance_norm_leaky_relu(x.to(dtype).double())
    assert_close(out, expected, dtype=dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_running_statistics_normalize_without_input_statistics(device, layout):
    x, weight, bias, running_mean, running_var = _operands((3, 8, 6, 5), torch.float64, device,
                                                           layout, True, True)
    out = in_lrelu(x, running_mean, running_var, weight, bias, use_input_stats=False)
    expected = _reference.instance_norm_leaky_relu(x, running_mean, running_var, weight, bias,
                                                   use_input_stats=False)
    assert_close(out, expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 4, 5, 5), (0, 4, 5)])
def test_empty_batch(device, shape):
    x = make_input(shape, torch.float32, device).requires_grad_()
    out = in_lrelu(x)
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad.shape == x.shape


def test_errors_name_the_argument():
    x = torch.randn(2, 4, 5, 5)
    with pytest.raises(ValueError, match="input"):
        in_lrelu(torch.randn(2, 4))
    with pytest.raises(ValueError, match="weight must have shape \\(4,\\)"):
        in_lrelu(x, weight=torch.ones(3))
    with pytest.raises(ValueError, match="running_mean and running_var must be given together"):
        in_lrelu(x, running_mean=torch.zeros(4))
    with pytest.raises(TypeError, match="use_input_stats must be a bool"):
        in_lrelu(x, use_input_stats=1)
    with pytest.raises(ValueError, match="required when use_input_stats=False"):
        in_lrelu(x, use_input_stats=False)
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        in_lrelu(torch.randn(2, 4, 1, 1))
    with pytest.raises(ValueError, match="momentum"):
        in_lrelu(x, momentum=2.0)
    with pytest.raises(TypeError, match="negative_slope"):
        in_lrelu(x, negative_slope="0.2")


@pytest.mark.parametrize("shape, layout", shape_layouts([(2, 64, 32, 32), (3, 40, 17, 19)]))
def test_matches_torch_on_larger_maps(shape, layout):
    """Maps large enough for the CPU kernels' blocked, multi-threaded walks (64 channels: whole
    vectors per row; 40: a partial last vector), each sample with its own statistics."""
    results = []
    for fn in (in_lrelu, _reference.instance_norm_leaky_relu):
        x, weight, bias, _, _ = _operands(shape, torch.float64, "cpu", layout, True, False)
        # Samples and channels far apart in mean and scale: mixing any two would show.
        offsets = torch.arange(shape[0] * shape[1], dtype=torch.float64).view(*shape[:2], 1, 1)
        with torch.no_grad():
            x.mul_(1 + offsets / 7).add_(offsets)
        out = fn(x, None, None, weight, bias, True, 0.1, 1e-5, 0.2)
        results.append([out, *first_and_second_order_grads(out, [x, weight, bias], seed=7)])
    for actual, expected in zip(*results, strict=True):
        assert_close(actual, expected)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_results_do_not_depend_on_the_thread_count(layout):
    """Channels-last samples are walked one per thread when the threads divide the batch, or
    each by all threads otherwise: the same sums in the same order, so the same bits."""
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            x, weight, bias, _, _ = _operands((6, 40, 9, 11), torch.float32, "cpu", layout, True,
                                              False)
            out = in_lrelu(x, None, None, weight, bias)
            results.append([out, *first_and_second_order_grads(out, [x, weight, bias], seed=3)])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for actual, expected in zip(other, results[0], strict=True):
            assert torch.equal(actual, expected)


# The CPU kernels' instance mode, on the registered ops (CUDA input runs per sample instead).
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "non_contiguous"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 4, 5, 5), (2, 4, 3, 2, 3)], ids=str)
def test_instance_mode_opcheck(layout, dtype, shape):
    x = make_input(shape, dtype, layout=layout)
    go = make_input(shape, dtype, layout=layout, seed=4)
    param_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    weight = make_input((4,), param_dtype, seed=5)
    bias = make_input((4,), param_dtype, seed=6)
    ops = torch.ops.fastgan
    grad_x, grad_weight = x.clone().requires_grad_(), weight.clone().requires_grad_()
    _, mean, var = ops.batch_norm_leaky_relu(x, None, None, weight, bias, True, 0.1, 1e-5, 0.2,
                                             instance=True)
    assert mean.shape == var.shape == (shape[0] * 4,)
    cases = [
        (ops.batch_norm_leaky_relu, (grad_x, None, None, grad_weight, bias, True, 0.1, 1e-5,
                                     0.2), {"instance": True}),
        (ops.batch_norm_leaky_relu_backward, (go.clone().requires_grad_(), grad_x, mean, var,
                                              grad_weight, bias, True, 1e-5, 0.2,
                                              [True, True, True]), {"instance": True}),
        (ops.batch_norm_leaky_relu_double_backward, (go, None, torch.ones_like(weight), go, x,
                                                     mean, var, weight, bias, True, 1e-5, 0.2,
                                                     [True, True, True]), {"instance": True}),
    ]
    for op, args, kwargs in cases:
        torch.library.opcheck(op, args, kwargs)


def test_instance_mode_errors_name_the_argument():
    x = torch.randn(2, 4, 5, 5)
    ops = torch.ops.fastgan
    with pytest.raises(RuntimeError, match="instance statistics need training=True"):
        ops.batch_norm_leaky_relu(x, torch.zeros(4), torch.ones(4), None, None, True, 0.1, 1e-5,
                                  0.2, instance=True)
    with pytest.raises(RuntimeError, match="instance statistics need training=True"):
        ops.batch_norm_leaky_relu(x, torch.zeros(4), torch.ones(4), None, None, False, 0.1,
                                  1e-5, 0.2, instance=True)
    with pytest.raises(RuntimeError, match="mean must have shape \\(N \\* C,\\) = \\(8,\\)"):
        ops.batch_norm_leaky_relu_backward(x, x, torch.zeros(4), torch.ones(8), None, None, True,
                                           1e-5, 0.2, [True, True, True], instance=True)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        ops.batch_norm_leaky_relu(torch.randn(2, 4, 1, 1), None, None, None, None, True, 0.1,
                                  1e-5, 0.2, instance=True)


# --- modules --------------------------------------------------------------------------------------

MODULES = [(InstanceNormLeakyReLU1d, nn.InstanceNorm1d, (3, 4, 9)),
           (InstanceNormLeakyReLU2d, nn.InstanceNorm2d, (3, 4, 6, 5)),
           (InstanceNormLeakyReLU3d, nn.InstanceNorm3d, (2, 4, 3, 4, 5))]


@pytest.mark.parametrize("fused_cls, torch_cls, shape", MODULES, ids=str)
@pytest.mark.parametrize("kwargs", [{}, {"affine": True}, {"track_running_stats": True},
                                    {"affine": True, "track_running_stats": True,
                                     "momentum": 0.3, "eps": 1e-3}], ids=str)
@pytest.mark.parametrize("slope", [0.0, 0.2])
def test_module_is_instance_norm_then_leaky_relu(fused_cls, torch_cls, shape, kwargs, slope):
    """Over steps in train and eval mode: outputs, gradients, running statistics, state_dict."""
    torch.manual_seed(0)
    torch_layer = torch_cls(4, **kwargs).double()
    with torch.no_grad():
        for parameter in torch_layer.parameters():
            parameter.normal_()
    original = nn.Sequential(torch_layer, nn.LeakyReLU(slope))
    fused = fused_cls(4, negative_slope=slope, **kwargs).double()
    fused.load_state_dict(torch_layer.state_dict())
    assert list(fused.state_dict()) == list(torch_layer.state_dict())
    converted = nn.Sequential(fused, nn.Identity())
    assert_same_computation(original, converted,
                            lambda seed: make_input(shape, torch.float64, seed=seed))


def test_module_defaults_and_repr_are_instance_norms():
    layer = InstanceNormLeakyReLU2d(8)
    assert (layer.affine, layer.track_running_stats, layer.negative_slope) == (False, False, 0.2)
    assert not list(layer.parameters()) and not list(layer.buffers())
    torch_repr = repr(nn.InstanceNorm2d(8))
    assert repr(layer) == "InstanceNormLeakyReLU" + torch_repr[len("InstanceNorm"):-1] + \
        ", negative_slope=0.2)"


def test_module_takes_unbatched_input_and_warns_as_torch_on_a_channel_mismatch():
    layer, reference = InstanceNormLeakyReLU2d(4), nn.InstanceNorm2d(4)
    x = torch.randn(4, 6, 5)
    assert_close(layer(x), F.leaky_relu(reference(x), 0.2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer(torch.randn(2, 3, 6, 5))
    assert any("does not match num_features" in str(w.message) for w in caught)
    with pytest.raises(ValueError, match="num_features"):
        InstanceNormLeakyReLU2d(4, affine=True)(torch.randn(2, 3, 6, 5))


def test_convert_fuses_instance_norm_pairs_of_a_cyclegan_block():
    """Reflection pad, convolution, InstanceNorm, ReLU as in CycleGAN's ResNet generator; and
    InstanceNorm, LeakyReLU(0.2) as in its PatchGAN."""
    torch.manual_seed(0)
    original = nn.Sequential(
        nn.ReflectionPad2d(1), nn.Conv2d(3, 8, 3), nn.InstanceNorm2d(8), nn.ReLU(True),
        nn.Conv2d(8, 16, 4, 2, 1), nn.InstanceNorm2d(16, affine=True), nn.LeakyReLU(0.2, True),
    ).double()
    converted, report = fastgan.nn.convert(copy.deepcopy(original), report=True)
    assert type(converted[2]) is InstanceNormLeakyReLU2d and converted[2].negative_slope == 0.0
    assert type(converted[5]) is InstanceNormLeakyReLU2d and converted[5].negative_slope == 0.2
    assert ("2", "3") in [c.names for c in report.conversions]
    assert_same_computation(original, converted,
                            lambda seed: make_input((2, 3, 8, 8), torch.float64, seed=seed))


def test_torch_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), InstanceNormLeakyReLU2d(8, affine=True))
    reference = copy.deepcopy(model)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 3, 10, 10)
    torch.testing.assert_close(compiled(x), reference(x), rtol=1e-4, atol=1e-5)
