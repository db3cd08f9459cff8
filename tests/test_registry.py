"""fastgan.nn.registry: every fused module round-trips through fastgan._reference.torch_modules
(outputs, gradients, running statistics and state_dict, in train and eval mode), and convert()
turns the torch modules back into the fused ones."""
import pytest
import torch
from torch import nn

import fastgan
from equivalence import assert_same_computation
from fastgan import _reference
from fastgan.nn import (BatchNormLeakyReLU1d, BatchNormLeakyReLU2d, BatchNormLeakyReLU3d, Conv2d,
                        ConvTranspose2d, InstanceNormLeakyReLU1d, InstanceNormLeakyReLU2d,
                        InstanceNormLeakyReLU3d, SyncBatchNormLeakyReLU, convert, registry)

BATCH_NORM_OPTIONS = [{}, {"affine": False}, {"bias": False}, {"track_running_stats": False},
                      {"momentum": None, "eps": 1e-3}]
# nn.InstanceNorm's defaults are affine=False, track_running_stats=False.
INSTANCE_NORM_OPTIONS = [{}, {"affine": True}, {"affine": True, "bias": False},
                         {"track_running_stats": True},
                         {"affine": True, "track_running_stats": True, "momentum": None}]
SLOPES = [0.0, 0.2, 1.0, -0.5]


def _case(make, shape, id):
    return pytest.param(make, shape, id=id)


CASES = [
    *(_case(lambda cls=cls, slope=slope, options=options:
            cls(4, negative_slope=slope, **options), shape,
            f"{cls.__name__}-{slope}-{options}")
      for cls, shape in ((BatchNormLeakyReLU1d, (6, 4)), (BatchNormLeakyReLU1d, (3, 4, 5)),
                         (BatchNormLeakyReLU2d, (3, 4, 5, 5)),
                         (BatchNormLeakyReLU3d, (3, 4, 2, 3, 3)))
      for slope in SLOPES for options in BATCH_NORM_OPTIONS),
    *(_case(lambda options=options: SyncBatchNormLeakyReLU(4, negative_slope=0.1, **options),
            shape, f"SyncBatchNormLeakyReLU-{len(shape)}d-{options}")
      for shape in ((6, 4), (3, 4, 5, 5)) for options in BATCH_NORM_OPTIONS),
    *(_case(lambda cls=cls, slope=slope, options=options:
            cls(4, negative_slope=slope, **options), shape,
            f"{cls.__name__}-{slope}-{options}")
      for cls, shape in ((InstanceNormLeakyReLU1d, (3, 4, 5)),
                         (InstanceNormLeakyReLU2d, (3, 4, 5, 5)),
                         (InstanceNormLeakyReLU3d, (3, 4, 2, 3, 3)))
      for slope in SLOPES for options in INSTANCE_NORM_OPTIONS),
    _case(lambda: Conv2d(4, 6, 3), (3, 4, 7, 7), "Conv2d"),
    _case(lambda: Conv2d(4, 6, (3, 2), stride=2, padding=1, dilation=(2, 1), groups=2,
                         bias=False), (3, 4, 9, 8), "Conv2d-geometry"),
    *(_case(lambda activation=activation: ConvTranspose2d(4, 6, 3, stride=2, padding=1,
                                                          output_padding=1, groups=2,
                                                          activation=activation,
                                                          negative_slope=0.1),
            (3, 4, 5, 5), f"ConvTranspose2d-{activation}")
      for activation in (None, "relu", "leaky_relu", "tanh")),
    _case(lambda: ConvTranspose2d(4, 2, (4, 3), dilation=2, bias=False, activation="tanh"),
          (3, 4, 5, 6), "ConvTranspose2d-no-bias"),
]


def _inputs(shape):
    return lambda seed: torch.randn(shape, dtype=torch.float64,
                                    generator=torch.Generator().manual_seed(seed))


def _layer_of(torch_module):
    """The torch layer of torch_modules' replacement: alone or first in its nn.Sequential."""
    return torch_module[0] if isinstance(torch_module, nn.Sequential) else torch_module


def _fastgan_modules(model):
    return [m for m in model.modules() if type(m).__module__.startswith("fastgan")]


def test_every_fused_module_has_one_entry():
    """A new fused module in fastgan.nn must be registered for convert and torch_modules."""
    exported = {getattr(fastgan.nn, name) for name in fastgan.nn.__all__}
    fused = {cls for cls in exported if isinstance(cls, type) and issubclass(cls, nn.Module)}
    assert set(registry.FUSED_CLASSES) == fused
    assert len(set(registry.FUSED_CLASSES)) == len(registry.FUSED_CLASSES)


@pytest.mark.parametrize("make, shape", CASES)
def test_round_trip_through_torch_modules(make, shape):
    torch.manual_seed(0)
    fused = make().double()
    if fused.training and hasattr(fused, "running_mean") and fused.running_mean is not None:
        fused(_inputs(shape)(seed=99))  # running statistics and num_batches_tracked move
    torch_model = _reference.torch_modules(fused)
    entry = registry.fused_entry(fused)
    assert _fastgan_modules(torch_model) == []
    layer = _layer_of(torch_model)
    assert type(layer) is entry.torch_layer
    # The torch layer's state_dict is the fused module's: same keys, same values.
    assert list(layer.state_dict()) == list(fused.state_dict())
    for (name, value), expected in zip(layer.state_dict().items(), fused.state_dict().values()):
        assert torch.equal(value, expected), name
    assert_same_computation(fused, torch_model, _inputs(shape))

    back = convert(torch_model)
    if entry.converted == registry.NEVER:
        assert _fastgan_modules(back) == []
        return
    # convert gives the fused module back, its activation's place taken by nn.Identity.
    if isinstance(torch_model, nn.Sequential):
        assert [type(m) for m in back] == [type(fused), nn.Identity]
    back_layer = _layer_of(back)
    assert type(back_layer) is type(fused) and repr(back_layer) == repr(fused)
    assert list(back_layer.state_dict()) == list(fused.state_dict())
    for (name, value), expected in zip(back_layer.state_dict().items(),
                                       fused.state_dict().values()):
        torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-10, msg=name)


def test_models_keep_their_parameters_in_order():
    torch.manual_seed(0)
    model = nn.Sequential(ConvTranspose2d(3, 4, 4, 2, 1, bias=False),
                          BatchNormLeakyReLU2d(4, negative_slope=0.0),
                          nn.Sequential(Conv2d(4, 2, 3), BatchNormLeakyReLU2d(2)),
                          ConvTranspose2d(2, 1, 3, activation="tanh")).double()
    pure = _reference.torch_modules(model)
    assert _fastgan_modules(pure) == []
    assert [p.shape for p in pure.parameters()] == [p.shape for p in model.parameters()]
    assert_same_computation(model, pure, _inputs((2, 3, 4, 4)))


def test_convert_sync_batchnorm_reads_the_registry():
    """Each BatchNorm becomes the synced fused layer: a fused one keeps its negative_slope, a
    torch one gets 1 (plain BatchNorm), and both keep their tensors."""
    model = nn.Sequential(nn.BatchNorm2d(3, momentum=None), BatchNormLeakyReLU2d(3, eps=1e-3,
                                                                                negative_slope=0.1))
    tensors = [list(layer.state_dict(keep_vars=True).values()) for layer in model]
    synced = fastgan.nn.convert_sync_batchnorm(model)
    assert [type(layer) for layer in synced] == [SyncBatchNormLeakyReLU] * 2
    assert [layer.negative_slope for layer in synced] == [1.0, 0.1]
    assert (synced[0].momentum, synced[1].eps) == (None, 1e-3)
    for layer, originals in zip(synced, tensors):
        assert all(a is b for a, b in zip(layer.state_dict(keep_vars=True).values(), originals,
                                          strict=True))
