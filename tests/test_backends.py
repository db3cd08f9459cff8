"""fastgan.backends.cpu: the switches, and that allow_winograd=False keeps the CPU transposed
convolution as close to the exact result as torch's own."""
import copy

import pytest
import torch
import torch.nn.functional as F

import fastgan
from fastgan import _backend
from pytorch_examples_dcgan import Generator, weights_init

cpu = fastgan.backends.cpu
needs_kernels = pytest.mark.skipif(_backend.extension is None,
                                   reason="fastgan's kernels are not built")


def test_allow_winograd_is_on_by_default_and_can_be_switched():
    assert cpu.allow_winograd is True
    try:
        cpu.allow_winograd = False
        assert cpu.allow_winograd is False
    finally:
        cpu.allow_winograd = True
    assert cpu.allow_winograd is True


def test_allow_winograd_takes_only_a_bool():
    with pytest.raises(TypeError, match="allow_winograd must be a bool"):
        cpu.allow_winograd = 0
    assert cpu.allow_winograd is True


def test_flags_sets_within_the_block_and_restores_after_an_error():
    with pytest.raises(RuntimeError, match="inside"):
        with cpu.flags(allow_winograd=False):
            assert cpu.allow_winograd is False
            raise RuntimeError("inside")
    assert cpu.allow_winograd is True
    with cpu.flags():  # None: left as it is
        assert cpu.allow_winograd is True


def test_the_switch_works_without_the_extension(monkeypatch):
    monkeypatch.setattr(_backend, "extension", None)
    with cpu.flags(allow_winograd=False):
        assert cpu.allow_winograd is False
    assert cpu.allow_winograd is True


def _relative_error(actual, exact):
    return ((actual.double() - exact).abs().max() / exact.abs().max()).item()


@needs_kernels
def test_exact_paths_keep_a_winograd_layer_as_close_as_torch():
    """A stride-2 4x4 layer with 64 channels and 64 tiles takes the Winograd path by default,
    within 8x torch's float32 error against float64; without it, fastgan's float32 result is as
    close to the float64 one as torch's (2x)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 64, 16, 16, generator=generator)
    weight = torch.randn(64, 64, 4, 4, generator=generator) / 32
    exact = F.conv_transpose2d(x.double(), weight.double(), stride=2, padding=1)
    torch_error = _relative_error(F.conv_transpose2d(x, weight, stride=2, padding=1), exact)
    winograd = fastgan.ops.conv_transpose2d(x, weight, stride=2, padding=1)
    with cpu.flags(allow_winograd=False):
        exact_path = fastgan.ops.conv_transpose2d(x, weight, stride=2, padding=1)
    assert not torch.equal(winograd, exact_path)  # the switch chose another path
    assert _relative_error(exact_path, exact) <= 2 * torch_error
    # Winograd's own error, with the interpolation points 0, -1, 1/2, 2: about 5x torch's here
    # (the usual 0, 1, -1, 2 give 10x or more).
    assert _relative_error(winograd, exact) <= 8 * torch_error


@needs_kernels
def test_a_converted_dcgan_generator_without_winograd_is_as_close_as_torch():
    """pytorch/examples' DCGAN-64 generator at batch 64 (every stride-2 layer but the last is a
    Winograd layer), converted, in float32 against the same model in float64."""
    torch.manual_seed(0)
    model = Generator()
    model.apply(weights_init)
    exact_model = copy.deepcopy(model).double()
    converted = fastgan.nn.convert(model, copy=True)
    z = torch.randn(64, 100, 1, 1, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        exact = exact_model(z.double())
        torch_error = _relative_error(model(z), exact)
        with cpu.flags(allow_winograd=False):
            error = _relative_error(converted(z), exact)
    assert error <= 2 * torch_error
