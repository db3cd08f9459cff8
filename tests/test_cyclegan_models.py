"""CycleGAN's networks: the published sizes, shapes, and the same computation as the same
networks built from torch.nn layers (fastgan._reference.torch_modules), to second order."""
import pytest
import torch
from torch import nn

from conftest import make_input
from equivalence import assert_same_computation
from fastgan import _reference
from fastgan.models import PatchDiscriminator, ResnetGenerator


def _parameters(model):
    return sum(p.numel() for p in model.parameters())


def test_published_sizes():
    """The reference implementation prints 11.378 M parameters for the 9-block generator and
    2.765 M for the 70x70 PatchGAN."""
    assert _parameters(ResnetGenerator()) == 11_378_179
    assert _parameters(PatchDiscriminator()) == 2_764_737


@pytest.mark.parametrize("size, patches", [(64, 6), (256, 30)])
def test_shapes(size, patches):
    generator = ResnetGenerator(base_channels=8, blocks=2)
    discriminator = PatchDiscriminator(base_channels=8)
    x = torch.randn(2, 3, size, size)
    assert generator(x).shape == x.shape
    assert discriminator(x).shape == (2, 1, patches, patches)
    assert generator(x).abs().max() <= 1


def test_torch_layers_only():
    """What torch_modules makes of them: InstanceNorm2d without affine parameters or running
    statistics, followed by ReLU or LeakyReLU(0.2); nothing of fastgan's left."""
    torch_generator = _reference.torch_modules(ResnetGenerator(base_channels=4, blocks=1))
    norms = [m for m in torch_generator.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert norms and all(not m.affine and not m.track_running_stats for m in norms)
    assert not [m for m in torch_generator.modules() if type(m).__module__.startswith("fastgan.nn")]


@pytest.mark.parametrize("make, channels, size", [
    (lambda: ResnetGenerator(base_channels=4, blocks=2), 3, 16),
    (lambda: ResnetGenerator(in_channels=1, out_channels=2, base_channels=4, blocks=0), 1, 12),
    (lambda: PatchDiscriminator(base_channels=4), 3, 32),
    (lambda: PatchDiscriminator(in_channels=1, base_channels=4, layers=2), 1, 16)])
def test_same_computation_as_torch_layers(make, channels, size):
    torch.manual_seed(0)
    model = make().double()
    assert_same_computation(_reference.torch_modules(model), model,
                            lambda seed: make_input((2, channels, size, size), seed=seed))


def test_r1_through_the_patch_discriminator_matches_torch_layers():
    torch.manual_seed(0)
    model = PatchDiscriminator(base_channels=4).double()
    reference = _reference.torch_modules(model)
    results = []
    for network in (model, reference):
        x = make_input((2, 3, 32, 32), seed=1).requires_grad_()
        (grad,) = torch.autograd.grad(network(x).sum(), x, create_graph=True)
        # (the last bias does not reach the input's gradient: zeros)
        results.append(torch.autograd.grad(grad.square().sum(), list(network.parameters()),
                                           materialize_grads=True))
    for mine, theirs in zip(*results, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-10)


def test_bad_inputs_name_the_problem():
    generator, discriminator = ResnetGenerator(base_channels=4, blocks=1), PatchDiscriminator(4)
    with pytest.raises(ValueError, match="multiples of 4"):
        generator(torch.randn(1, 3, 18, 16))
    with pytest.raises(ValueError, match=r"images must have shape \(N, 3, H, W\)"):
        generator(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"images must have shape \(N, 4, H, W\)"):
        discriminator(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="blocks must be >= 0"):
        ResnetGenerator(blocks=-1)
    with pytest.raises(TypeError, match="layers must be an int"):
        PatchDiscriminator(layers=2.5)
