"""Numerical robustness: zero-variance channels, large magnitudes, huge per-channel reductions
where a naive sum / sum-of-squares variance cancels, and float16 sums that would overflow. Each
case is compared with the float64 reference computed from the very same (float32) inputs."""
import pytest
import torch
import torch.nn.functional as F

import fastgan
from fastgan import _reference
from conftest import DEVICES

EPS32 = torch.finfo(torch.float32).eps


def _bn_case(x, slope, training=True, momentum=0.1, eps=1e-5, seed=0):
    """fastgan in x's dtype and the float64 reference on the same values (on x's device): (output,
    grads of x, weight and bias, running mean and var) for both."""
    g = torch.Generator().manual_seed(seed)
    channels = x.shape[1]
    weight, bias = torch.randn(channels, generator=g) + 2, torch.randn(channels, generator=g)
    stats = torch.randn(channels, generator=g), torch.rand(channels, generator=g) + 0.5
    upstream = torch.randn(x.shape, generator=g).to(x.dtype)
    weight, bias, upstream = (t.to(x.device) for t in (weight, bias, upstream))
    stats = tuple(t.to(x.device) for t in stats)
    results = []
    for fn, dtype in ((fastgan.ops.batch_norm_leaky_relu, x.dtype),
                      (_reference.batch_norm_leaky_relu, torch.float64)):
        leaves = [t.detach().to(dtype).requires_grad_() for t in (x, weight, bias)]
        running = [t.to(dtype, copy=True) for t in stats]
        out = fn(leaves[0], *running, leaves[1], leaves[2], training, momentum, eps, slope)
        grads = torch.autograd.grad(out, leaves, upstream.to(dtype))
        results.append((out.detach(), *grads, *running))
    return results


def _close(actual, expected, rtol=1e-4):
    """Within float32 tolerance, relative to the largest expected value."""
    torch.testing.assert_close(actual.double(), expected, rtol=rtol,
                               atol=rtol * max(expected.abs().max().item(), 1e-3))


def _check_bn(x, slope=0.2, training=True):
    actual, expected = _bn_case(x, slope, training)
    out, grad_x, grad_w, grad_b, running_mean, running_var = actual
    ref_out, ref_grad_x, ref_grad_w, ref_grad_b, ref_mean, ref_var = expected
    # The statistics: where a naive float32 variance fails.
    magnitude = x.abs().max().item()
    torch.testing.assert_close(running_mean.double(), ref_mean, rtol=1e-6,
                               atol=1e-6 * magnitude)
    torch.testing.assert_close(running_var.double(), ref_var, rtol=1e-5, atol=1e-6)
    _close(out, ref_out)
    # Right at leaky_relu's kink rounding may pick the other branch: compare the input gradient
    # away from it.
    pre_activation = torch.where(ref_out > 0, ref_out, ref_out / slope) if slope else ref_out
    away = pre_activation.abs() > 1e-3
    _close(grad_x[away], ref_grad_x[away])
    for actual_grad, expected_grad in ((grad_w, ref_grad_w), (grad_b, ref_grad_b)):
        _close(actual_grad, expected_grad, rtol=1e-3)  # sums over N * H * W products
    return actual, expected


LAYOUTS = ["contiguous", "channels_last"]


def _layout(x, layout):
    return x.to(memory_format=torch.channels_last) if layout == "channels_last" else x


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("value", [0.0, 3.0, -1e4])
def test_constant_channels(device, layout, value):
    x = torch.randn(8, 4, 5, 5)
    x[:, 1] = value  # zero variance: normalized to 0, the output is leaky_relu(bias)
    actual, expected = _check_bn(_layout(x, layout).to(device))
    # Exactly the bias's activation (up to rounding of the bias itself), like the reference.
    torch.testing.assert_close(actual[0][:, 1].double(), expected[0][:, 1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("offset, scale", [(1e4, 1.0), (0.0, 1e3), (-3e3, 1e2)], ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_large_magnitudes(device, layout, offset, scale, training):
    x = torch.randn(16, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * scale + offset
    _check_bn(_layout(x, layout).to(device), training=training)


def _huge_channel(first=None):
    """One channel of 4M values with mean 1e3 and std 1e-2 (first element optionally set)."""
    x = torch.randn(64, 1, 256, 256, generator=torch.Generator().manual_seed(2)) * 1e-2 + 1e3
    if first is not None:
        x.view(-1)[0] = first
    return x


def test_a_naive_float32_variance_fails_on_the_huge_channel():
    """Shows that the next test can fail: E[x^2] - E[x]^2 in float32 loses every digit."""
    x = _huge_channel()
    naive = (x * x).mean() - x.mean() ** 2
    exact = x.double().var(unbiased=False)
    assert abs(naive.item() - exact.item()) > 0.5 * exact.item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout, first, slope", [
    ("contiguous", None, 0.2), ("channels_last", None, 1.0), ("contiguous", 0.0, 1.0),
    ("channels_last", 0.0, 0.2)], ids=str)
def test_huge_channel(device, layout, first, slope):
    """A kernel that shifts its sums by one element must not trust an outlier as the shift."""
    _check_bn(_layout(_huge_channel(first), layout).to(device), slope=slope)


def _absolute_products(x, weight, upstream, geometry):
    """The output, grad_input and grad_weight of the convolution of |x| and |weight| (upstream
    |upstream|) in float64: the sums of |products| that bound float32 rounding errors."""
    x, weight = (t.detach().double().abs().requires_grad_() for t in (x, weight))
    out = F.conv_transpose2d(x, weight, **geometry)
    return (out.detach(),
            *torch.autograd.grad(out, (x, weight), upstream.double().abs()))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("offset, scale", [(1e4, 1.0), (0.0, 1e3), (1e3, 1e-2)], ids=str)
def test_conv_transpose2d_large_magnitudes(layout, offset, scale):
    g = torch.Generator().manual_seed(3)
    x = _layout(torch.randn(8, 6, 9, 9, generator=g) * scale + offset, layout)
    weight = torch.randn(6, 4, 4, 4, generator=g) * 0.05
    geometry = {"stride": 2, "padding": 1}
    leaves = [t.detach().clone().requires_grad_() for t in (x, weight)]
    out = fastgan.ops.conv_transpose2d(*leaves, **geometry)
    upstream = torch.randn(out.shape, generator=g)
    actual = (out, *torch.autograd.grad(out, leaves, upstream))
    ref_leaves = [t.detach().double().requires_grad_() for t in (x, weight)]
    ref = F.conv_transpose2d(*ref_leaves, **geometry)
    expected = (ref, *torch.autograd.grad(ref, ref_leaves, upstream.double()))
    # A float32 sum of n products errs by at most about n * eps * sum |products|; n is the
    # number of terms each result sums: C_in * kH * kW, C_out * kH * kW, N * H * W * (kernel
    # positions per stride) for the output, grad_input and grad_weight.
    terms = (6 * 4 * 4, 4 * 4 * 4, 8 * 9 * 9)
    for name, a, e, bound, n in zip(("output", "grad_input", "grad_weight"), actual, expected,
                                    _absolute_products(x, weight, upstream, geometry), terms):
        error = (a.double() - e).abs()
        assert (error <= n * EPS32 * bound + 1e-30).all(), name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_float16_sums_that_overflow_half(device, layout):
    """1M values near 300: their sum (3e8) and sum of squares overflow float16 (max 65504)."""
    x = torch.randn(16, 4, 128, 128, generator=torch.Generator().manual_seed(4)) + 300
    x = _layout(x.half(), layout).to(device)
    weight, bias = torch.ones(4, device=device), torch.zeros(4, device=device)
    running_mean, running_var = torch.zeros(4, device=device), torch.ones(4, device=device)
    out = fastgan.ops.batch_norm_leaky_relu(x.requires_grad_(), running_mean, running_var,
                                            weight, bias, True, 0.1, 1e-5, 0.2)
    (grad,) = torch.autograd.grad(out.float().sum(), x)
    ref = _reference.batch_norm_leaky_relu(x.double(), torch.zeros(4, device=device).double(),
                                           torch.ones(4, device=device).double(), None, None,
                                           True, 0.1, 1e-5, 0.2)
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    torch.testing.assert_close(out.double(), ref, rtol=1e-2, atol=2e-2)
    torch.testing.assert_close(running_var.double(), 0.9 + 0.1 * x.double().var(dim=(0, 2, 3)),
                               rtol=1e-3, atol=1e-3)
