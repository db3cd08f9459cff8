"""fastgan.nn.convert: which layers it replaces, what it leaves alone, and that the converted
model computes what the original did (outputs, gradients, running statistics, state_dict)."""
import copy
import logging

import pytest
import torch
from torch import nn

import fastgan
from fastgan.nn import BatchNormLeakyReLU1d, BatchNormLeakyReLU2d, BatchNormLeakyReLU3d, convert
from equivalence import assert_same_computation
from pytorch_examples_dcgan import Discriminator, Generator


# --- pytorch/examples' DCGAN (scaled down to 16x16 images), as a user would have written it ---

class ExamplesGenerator(Generator):
    """Layers of 16 and 8 channels; the forward cannot be traced (see _DataParallel)."""

    def __init__(self):
        super().__init__(nz=8, ngf=8, image_size=16)


class ExamplesDiscriminator(Discriminator):
    """Layers of 4 and 8 channels, and a forward that torch.fx can trace (no data-parallel
    branch)."""

    def __init__(self):
        super().__init__(ndf=4, image_size=16)

    def forward(self, input):
        return self.main(input).view(-1, 1).squeeze(1)


def latent(batch=6, seed=0, dtype=torch.float64):
    return torch.randn(batch, 8, 1, 1, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def images(batch=6, seed=0, dtype=torch.float64):
    return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed),
                       dtype=dtype)


# --- pytorch/examples' DCGAN ------------------------------------------------------------------

def test_examples_generator_is_converted_and_computes_the_same():
    torch.manual_seed(0)
    original = ExamplesGenerator().double()
    converted, report = convert(original, copy=True, report=True)
    layers = list(converted.main)
    assert [type(layer) for layer in layers] == [
        fastgan.nn.ConvTranspose2d, BatchNormLeakyReLU2d, nn.Identity,
        fastgan.nn.ConvTranspose2d, BatchNormLeakyReLU2d, nn.Identity,
        fastgan.nn.ConvTranspose2d, nn.Identity]
    assert layers[1].negative_slope == 0.0 and layers[4].negative_slope == 0.0
    assert [layers[i].activation for i in (0, 3, 6)] == [None, None, "tanh"]
    assert [c.names for c in report.conversions] == [
        ("main.0",), ("main.1", "main.2"), ("main.3",), ("main.4", "main.5"),
        ("main.6", "main.7")]
    # The forward is not traceable: the report says so, and the Sequential is still converted.
    assert len(report.notes) == 1 and "could not be traced" in report.notes[0]
    assert type(original.main[1]) is nn.BatchNorm2d  # the original is left untouched
    assert_same_computation(original, converted, latent)


def test_examples_discriminator_is_converted_and_computes_the_same():
    torch.manual_seed(0)
    original = ExamplesDiscriminator().double()
    converted, report = convert(original, copy=True, report=True)
    layers = list(converted.main)
    assert type(layers[3]) is BatchNormLeakyReLU2d and layers[3].negative_slope == 0.2
    assert type(layers[4]) is nn.Identity
    # Each convolution becomes fastgan.nn.Conv2d (its fast double backward, its dispatch); a
    # LeakyReLU after a convolution is not fused.
    assert [type(layers[i]) for i in (0, 1, 2, 5, 6)] == [
        fastgan.nn.Conv2d, nn.LeakyReLU, fastgan.nn.Conv2d, fastgan.nn.Conv2d, nn.Sigmoid]
    assert [c.names for c in report.conversions] == [("main.0",), ("main.2",),
                                                     ("main.3", "main.4"), ("main.5",)]
    assert report.notes == []
    assert_same_computation(original, converted, images)


def test_state_dicts_load_both_ways():
    original = ExamplesGenerator()
    converted = convert(original, copy=True)
    assert list(converted.state_dict()) == list(original.state_dict())
    trained = copy.deepcopy(original)
    trained(latent(dtype=torch.float32))  # moves its running statistics
    converted.load_state_dict(trained.state_dict())
    for value, expected in zip(converted.state_dict().values(), trained.state_dict().values()):
        assert torch.equal(value, expected)
    converted(latent(seed=1, dtype=torch.float32))
    original.load_state_dict(converted.state_dict())
    for value, expected in zip(original.state_dict().values(), converted.state_dict().values()):
        assert torch.equal(value, expected)


@pytest.mark.parametrize("arguments", [{}, {"inplace": True}], ids=["default", "inplace"])
@pytest.mark.parametrize("model_class, make_input", [(ExamplesGenerator, latent),
                                                     (ExamplesDiscriminator, images)],
                         ids=["generator", "discriminator"])
def test_converts_in_place_so_an_optimizer_built_before_keeps_training(arguments, model_class,
                                                                       make_input):
    model = model_class()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    parameters = list(model.parameters())
    buffers = list(model.buffers())
    result = convert(model, **arguments)
    assert result is model
    assert all(p is q for p, q in zip(model.parameters(), parameters, strict=True))
    assert all(b is c for b, c in zip(model.buffers(), buffers, strict=True))
    before = [p.detach().clone() for p in parameters]
    model(make_input(dtype=torch.float32)).square().sum().backward()
    optimizer.step()
    assert all(not torch.equal(p, b) for p, b in zip(parameters, before))


@pytest.mark.parametrize("arguments", [{"copy": True}, {"inplace": False}],
                         ids=["copy", "not-inplace"])
def test_a_copy_leaves_the_original_alone(arguments):
    original = ExamplesGenerator()
    converted = convert(original, **arguments)
    assert converted is not original
    assert [type(m) for m in original.main] == [nn.ConvTranspose2d, nn.BatchNorm2d, nn.ReLU,
                                                nn.ConvTranspose2d, nn.BatchNorm2d, nn.ReLU,
                                                nn.ConvTranspose2d, nn.Tanh]
    assert all(p is not q for p, q in zip(converted.parameters(), original.parameters()))


# --- modules whose forward calls the layers as attributes -------------------------------------

class Attributes(nn.Module):
    """One fusible pair, and patterns that must stay as they are."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(5, 6)
        self.bn = nn.BatchNorm1d(6)
        self.act = nn.LeakyReLU(0.1)
        self.bn_reused = nn.BatchNorm1d(6)  # its output also feeds a residual sum
        self.relu = nn.ReLU()
        self.bn_functional = nn.BatchNorm1d(6)  # followed by a function, not a module
        self.bn_shared_act = nn.BatchNorm1d(6)
        self.shared_act = nn.ReLU()  # also applied to something that is not a BatchNorm output

    def forward(self, x):
        h = self.act(self.bn(self.linear(x)))
        y = self.bn_reused(h)
        h = self.relu(y) + y
        h = torch.relu(self.bn_functional(h))
        return self.shared_act(self.bn_shared_act(h)) + self.shared_act(x.sum(1, keepdim=True))


def test_attribute_pairs_found_by_tracing():
    torch.manual_seed(0)
    original = Attributes().double()
    converted, report = convert(original, copy=True, report=True)
    assert type(converted.bn) is BatchNormLeakyReLU1d and converted.bn.negative_slope == 0.1
    assert type(converted.act) is nn.Identity
    for name in ("bn_reused", "bn_functional", "bn_shared_act"):
        assert type(getattr(converted, name)) is nn.BatchNorm1d, name
    assert type(converted.relu) is nn.ReLU and type(converted.shared_act) is nn.ReLU
    assert [c.names for c in report.conversions] == [("bn", "act")]
    assert any("bn_reused -> relu" in note and "used elsewhere" in note for note in report.notes)
    assert any("bn_shared_act -> shared_act" in note and "also applied elsewhere" in note
               for note in report.notes)
    assert_same_computation(original, converted,
                            lambda seed: torch.randn(7, 5, dtype=torch.float64,
                                                     generator=torch.Generator().manual_seed(seed)))


class InPlaceReuse(nn.Module):
    """Relies on ReLU(inplace=True) rewriting the BatchNorm output it returns."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.bn(x)
        self.act(y)
        return y * 2


class BranchesOnTraining(nn.Module):
    """Fusible in train mode only: eval mode reuses the BatchNorm output."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.act = nn.ReLU()

    def forward(self, x):
        y = self.bn(x)
        return self.act(y) if self.training else self.act(y) + y


@pytest.mark.parametrize("model_class", [InPlaceReuse, BranchesOnTraining])
def test_patterns_it_cannot_prove_equivalent_are_left_alone(model_class):
    converted, report = convert(model_class(), report=True)
    assert type(converted.bn) is nn.BatchNorm2d and type(converted.act) is nn.ReLU
    assert report.conversions == []


class Residual(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU(inplace=True))

    def forward(self, x):
        return x + self.body(x)


def test_nested_modules_and_sequentials():
    torch.manual_seed(0)
    original = nn.Sequential(
        nn.Sequential(nn.Linear(4, 3 * 4 * 4), nn.Unflatten(1, (3, 4, 4))),
        Residual(3),
        nn.Sequential(nn.Sequential(nn.ConvTranspose2d(3, 2, 4, 2, 1), nn.LeakyReLU(0.3)),
                      nn.BatchNorm2d(2, momentum=None), nn.ReLU()),
    ).double()
    converted, report = convert(original, copy=True, report=True)
    assert type(converted[1].body[1]) is BatchNormLeakyReLU2d
    assert converted[2][0][0].activation == "leaky_relu"
    assert converted[2][0][0].negative_slope == 0.3
    assert type(converted[2][1]) is BatchNormLeakyReLU2d and converted[2][1].momentum is None
    assert [c.names for c in report.conversions] == [
        ("1.body.0",), ("1.body.1", "1.body.2"), ("2.0.0", "2.0.1"), ("2.1", "2.2")]
    assert_same_computation(original, converted,
                            lambda seed: torch.randn(5, 4, dtype=torch.float64,
                                                     generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("kwargs", [dict(affine=False), dict(bias=False),
                                    dict(track_running_stats=False), dict(momentum=None, eps=1e-3)])
@pytest.mark.parametrize("torch_cls, fused_cls, shape", [
    (nn.BatchNorm1d, BatchNormLeakyReLU1d, (6, 4)),
    (nn.BatchNorm1d, BatchNormLeakyReLU1d, (6, 4, 5)),
    (nn.BatchNorm3d, BatchNormLeakyReLU3d, (6, 4, 2, 3, 3))], ids=str)
def test_batch_norm_options_are_kept(kwargs, torch_cls, fused_cls, shape):
    torch.manual_seed(0)
    original = nn.Sequential(torch_cls(4, **kwargs), nn.ReLU()).double()
    original(torch.randn(shape, dtype=torch.float64))  # num_batches_tracked = 1
    converted = convert(original, copy=True)
    fused = converted[0]
    assert type(fused) is fused_cls
    for option in ("eps", "momentum", "affine", "track_running_stats", "num_features"):
        assert getattr(fused, option) == getattr(original[0], option), option
    assert (fused.bias is None) == (original[0].bias is None)
    if original[0].track_running_stats:
        assert fused.num_batches_tracked.item() == 1
    assert_same_computation(original, converted,
                            lambda seed: torch.randn(shape, dtype=torch.float64,
                                                     generator=torch.Generator().manual_seed(seed)))


def test_conv_transpose2d_activations_and_geometry():
    torch.manual_seed(0)
    original = nn.Sequential(
        nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, dilation=2),
        nn.ReLU(), nn.ConvTranspose2d(6, 2, 3), nn.Tanh()).double()
    converted = convert(original, copy=True)
    assert [converted[0].activation, converted[2].activation] == ["relu", "tanh"]
    assert (converted[0].groups, converted[0].dilation, converted[0].output_padding) == \
        (2, (2, 2), (1, 1))
    assert_same_computation(original, converted,
                            lambda seed: torch.randn(3, 4, 5, 5, dtype=torch.float64,
                                                     generator=torch.Generator().manual_seed(seed)))


def test_a_bare_layer_is_converted_too():
    layer = nn.ConvTranspose2d(3, 2, 4, 2, 1).double()
    converted, report = convert(layer, report=True)
    assert type(converted) is fastgan.nn.ConvTranspose2d and converted.activation is None
    assert [c.names for c in report.conversions] == [("",)]
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(converted(x), layer(x))
    # Replaced, not modified: the new layer holds the old one's Parameter objects.
    assert converted.weight is layer.weight and converted.bias is layer.bias
    bn = nn.BatchNorm2d(3)
    assert type(convert(bn)) is nn.BatchNorm2d  # no activation to fuse it with


def test_device_dtype_memory_format_and_mode_are_kept():
    original = nn.Sequential(nn.ConvTranspose2d(3, 4, 2), nn.BatchNorm2d(4), nn.ReLU())
    original = original.to(torch.float64).to(memory_format=torch.channels_last).eval()
    converted = convert(original, copy=True)
    assert converted[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert all(t.dtype == torch.float64 for t in converted.parameters())
    assert converted[1].num_batches_tracked.dtype == torch.long
    assert not any(m.training for m in converted.modules())
    assert all(t.device == torch.device("cpu") for t in converted.state_dict().values())


# --- nothing to convert, and what is left alone on purpose -------------------------------------

def test_a_model_with_nothing_to_convert_is_unchanged():
    original = nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU(0.2), nn.BatchNorm1d(4),
                             nn.Linear(4, 1))
    converted, report = convert(original, copy=True, report=True)
    assert repr(converted) == repr(original)
    assert report.conversions == [] and report.notes == []
    assert convert(original, inplace=True) is original
    assert repr(original) == repr(converted)


def test_fastgan_models_are_left_as_they_are():
    model = fastgan.models.DCGANGenerator(z_dim=8, image_size=16, base_channels=4)
    converted, report = convert(model, copy=True, report=True)
    assert repr(converted) == repr(model) and report.conversions == []


def test_fastgan_modules_are_opaque_to_the_trace():
    """Every fused module is one call in the trace (its forward is not traced through), so a
    model that already holds some is traced and converted as a whole."""
    model = nn.Sequential(fastgan.nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                          BatchNormLeakyReLU2d(4))
    converted, report = convert(model, report=True)
    assert [c.names for c in report.conversions] == [("1", "2")] and report.notes == []
    assert type(converted[0]) is fastgan.nn.Conv2d and type(converted[1]) is BatchNormLeakyReLU2d


def test_shared_modules_hooks_and_subclasses_are_left_alone():
    class MyBatchNorm(nn.BatchNorm2d):
        pass

    shared = nn.BatchNorm2d(3)
    hooked = nn.ConvTranspose2d(3, 3, 1)
    hooked.register_forward_hook(lambda module, args, output: None)
    model = nn.Sequential(nn.Sequential(shared, nn.ReLU()), nn.Sequential(shared, nn.ReLU()),
                          hooked, MyBatchNorm(3), nn.ReLU())
    converted, report = convert(model, report=True)
    assert converted[0][0] is converted[1][0] and type(converted[0][0]) is nn.BatchNorm2d
    assert type(converted[2]) is nn.ConvTranspose2d
    assert type(converted[3]) is MyBatchNorm
    assert report.conversions == []
    assert any("registered under several names" in note for note in report.notes)
    assert any("hooks" in note for note in report.notes)
    assert any("subclass" in note for note in report.notes)


def test_report_is_logged_and_printable(caplog):
    with caplog.at_level(logging.INFO, logger="fastgan.nn.convert"):
        _, report = convert(ExamplesGenerator(), report=True)
    assert "main.1 + main.2: BatchNorm2d + ReLU(inplace=True) -> " \
           "BatchNormLeakyReLU2d(negative_slope=0.0)" in caplog.text
    assert str(report).startswith("converted 5 layer(s)")


def test_rejects_what_is_not_a_module():
    with pytest.raises(TypeError, match="module must be a torch.nn.Module"):
        convert(lambda x: x)


def test_rejects_contradicting_or_mistyped_copy_arguments():
    model = ExamplesGenerator()
    with pytest.raises(ValueError, match="inplace=True and copy=True"):
        convert(model, inplace=True, copy=True)
    with pytest.raises(TypeError, match="copy must be a bool"):
        convert(model, copy="yes")
    with pytest.raises(TypeError, match="inplace must be a bool or None"):
        convert(model, inplace=1)
    assert type(model.main[1]) is nn.BatchNorm2d  # nothing was converted


# --- torch.compile ----------------------------------------------------------------------------

def test_converted_model_compiles_without_graph_breaks():
    """aot_eager traces through the fake kernels and autograd registrations as inductor does,
    without inductor's slow code generation (test_batch_norm_leaky_relu.py runs inductor)."""
    torch.manual_seed(0)
    generator, discriminator = ExamplesGenerator(), ExamplesDiscriminator()
    converted = nn.Sequential(convert(generator), convert(discriminator))
    reference = copy.deepcopy(converted)
    compiled = torch.compile(converted, fullgraph=True, backend="aot_eager")
    z = latent(dtype=torch.float32)
    out, expected = compiled(z), reference(z)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    out.log().sum().backward()
    expected.log().sum().backward()
    for (name, p), q in zip(converted.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)
    for (name, b), c in zip(converted.named_buffers(), reference.buffers()):
        torch.testing.assert_close(b, c, msg=name)
