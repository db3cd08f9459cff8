"""fastgan's ops under torch.autocast (against torch under the same autocast), models of fastgan
modules under torch.compile, and the usual module plumbing: copies, pickling, saving, devices,
dtypes, memory formats."""
import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan
from conftest import DEVICES, assert_close, make_input
from test_convert import ExamplesDiscriminator, ExamplesGenerator, latent

# (device, autocast dtype): CPU autocast defaults to bfloat16; CUDA runs both half types.
AUTOCAST = [("cpu", torch.bfloat16), ("cpu", torch.float16),
            pytest.param("cuda", torch.float16, marks=pytest.mark.cuda),
            pytest.param("cuda", torch.bfloat16, marks=pytest.mark.cuda)]

ACTIVATIONS = {None: lambda y: y, "relu": F.relu, "tanh": torch.tanh,
               "leaky_relu": lambda y: F.leaky_relu(y, 0.2)}


def leaf(t):
    return t.detach().clone().requires_grad_()


def grads(out, inputs):
    return torch.autograd.grad(out.float().square().sum(), inputs)


# --- autocast ---------------------------------------------------------------------------------

@pytest.mark.parametrize("device, dtype", AUTOCAST)
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_conv_transpose2d_runs_in_the_autocast_dtype_like_torch(device, dtype, activation):
    x = leaf(make_input((3, 6, 5, 5), torch.float32, device))
    weight = leaf(make_input((6, 4, 4, 4), torch.float32, device, seed=1) * 0.1)
    bias = leaf(make_input((4,), torch.float32, device, seed=2))
    with torch.autocast(device, dtype=dtype):
        out = fastgan.ops.conv_transpose2d(x, weight, bias, 2, 1, activation=activation)
        expected = ACTIVATIONS[activation](F.conv_transpose2d(x, weight, bias, 2, 1))
    assert out.dtype == expected.dtype == dtype
    assert_close(out, expected.float(), dtype=dtype)
    for grad, expected_grad in zip(grads(out, (x, weight, bias)),
                                   grads(expected, (x, weight, bias)), strict=True):
        assert grad.dtype == torch.float32
        assert_close(grad, expected_grad, dtype=dtype)


@pytest.mark.parametrize("device, dtype", AUTOCAST)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_batch_norm_runs_in_the_input_dtype_with_float32_statistics_like_torch(
        device, dtype, training, layout):
    """Under autocast torch's batch norm keeps its input's dtype (low precision after an
    autocast convolution) and float32 statistics, weight and bias."""
    x = leaf(make_input((6, 4, 5, 5), torch.float32, device, layout).to(dtype))
    weight = leaf(make_input((4,), torch.float32, device, seed=1))
    bias = leaf(make_input((4,), torch.float32, device, seed=2))
    stats = [torch.zeros(4, device=device), torch.ones(4, device=device)]
    torch_stats = [s.clone() for s in stats]
    with torch.autocast(device, dtype=dtype):
        out = fastgan.ops.batch_norm_leaky_relu(x, *stats, weight, bias, training, 0.1, 1e-5, 0.2)
        expected = F.leaky_relu(F.batch_norm(x, *torch_stats, weight, bias, training, 0.1, 1e-5),
                                0.2)
    assert out.dtype == expected.dtype == dtype
    assert out.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    assert_close(out, expected.float(), dtype=dtype)
    for s, t in zip(stats, torch_stats):
        assert s.dtype == torch.float32
        assert_close(s, t, dtype=torch.float32)
    for grad, expected_grad in zip(grads(out, (x, weight, bias)),
                                   grads(expected, (x, weight, bias)), strict=True):
        assert grad.dtype == expected_grad.dtype
        # Gradients summed over 150 low-precision values: a few units of their rounding.
        assert_close(grad.float(), expected_grad.float(), dtype=dtype, scale=4)


@pytest.mark.parametrize("device, dtype", AUTOCAST)
def test_batch_norm_of_a_float32_input_stays_float32(device, dtype):
    x = make_input((6, 4, 5, 5), torch.float32, device)
    with torch.autocast(device, dtype=dtype):
        out = fastgan.ops.batch_norm_leaky_relu(x, None, None, training=True)
        expected = F.leaky_relu(F.batch_norm(x, None, None, training=True), 0.2)
    assert out.dtype == expected.dtype == torch.float32
    assert_close(out, expected)


@pytest.mark.parametrize("device, dtype", AUTOCAST)
def test_converted_dcgan_under_autocast_matches_the_original(device, dtype):
    torch.manual_seed(0)
    generator = ExamplesGenerator().to(device)
    discriminator = ExamplesDiscriminator().to(device)
    original = nn.Sequential(generator, discriminator)
    converted = nn.Sequential(fastgan.nn.convert(generator, copy=True),
                              fastgan.nn.convert(discriminator, copy=True))
    z = latent(dtype=torch.float32).to(device)
    results = []
    for model in (original, converted):
        with torch.autocast(device, dtype=dtype):
            images = model[0](z)
            scores = model[1](images)
        results.append((images, scores, grads(scores.log(), list(model.parameters()))))
    (images, scores, parameter_grads), (expected_images, expected_scores, expected_grads) = \
        results[1], results[0]
    assert images.dtype == expected_images.dtype == dtype
    assert scores.dtype == expected_scores.dtype
    assert_close(images, expected_images.float(), dtype=dtype, scale=2)
    assert_close(scores, expected_scores, dtype=dtype)
    for grad, expected in zip(parameter_grads, expected_grads, strict=True):
        assert grad.dtype == torch.float32
        torch.testing.assert_close(grad, expected, rtol=0.1, atol=0.1 * expected.abs().max())
    for value, expected in zip(converted.state_dict().values(), original.state_dict().values()):
        assert_close(value.double(), expected.double(), dtype=dtype)


def test_autocast_under_torch_compile():
    torch.manual_seed(0)
    model = fastgan.nn.convert(ExamplesGenerator())
    reference = copy.deepcopy(model)

    def sample(generator, z):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return generator(z)

    z = latent(dtype=torch.float32)
    out = torch.compile(sample, fullgraph=True, backend="aot_eager")(model, z)
    expected = sample(reference, z)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected)


# --- torch.compile ----------------------------------------------------------------------------

def test_fastgan_dcgan_compiles_without_graph_breaks():
    """aot_eager: the fake kernels and autograd registrations as inductor traces them."""
    torch.manual_seed(0)
    model = nn.Sequential(fastgan.models.DCGANGenerator(z_dim=8, image_size=16, base_channels=4),
                          fastgan.models.DCGANDiscriminator(image_size=16, base_channels=4))
    reference = copy.deepcopy(model)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    z = torch.randn(6, 8)
    out, expected = compiled(z), reference(z)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    F.softplus(-out).sum().backward()
    F.softplus(-expected).sum().backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)
    for (name, b), c in zip(model.named_buffers(), reference.buffers()):
        torch.testing.assert_close(b, c, msg=name)


# --- copies, pickling, saving -----------------------------------------------------------------

def converted_generator():
    torch.manual_seed(0)
    return fastgan.nn.convert(ExamplesGenerator())


def pickled(model):
    return pickle.loads(pickle.dumps(model))


def saved_and_loaded(model):
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("clone", [copy.deepcopy, pickled, saved_and_loaded])
def test_copies_compute_the_same(clone):
    model = converted_generator()
    model(latent(dtype=torch.float32))  # running statistics away from their initial values
    copied = clone(model)
    assert repr(copied) == repr(model)
    for (name, value), expected in zip(copied.state_dict().items(), model.state_dict().values(),
                                       strict=True):
        assert torch.equal(value, expected), name
    z = latent(seed=1, dtype=torch.float32)
    torch.testing.assert_close(copied(z), model(z), rtol=0, atol=0)
    model.eval(), copied.eval()
    torch.testing.assert_close(copied(z), model(z), rtol=0, atol=0)


def test_state_dict_saved_with_weights_only_loads_into_torch_and_fastgan_models():
    model = converted_generator()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    ExamplesGenerator().load_state_dict(state)
    converted_generator().load_state_dict(state)


# --- devices, dtypes, memory formats, repr ----------------------------------------------------

def test_channels_last_model_matches_contiguous():
    model = converted_generator().double()
    last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    assert last.main[3].weight.is_contiguous(memory_format=torch.channels_last)
    z = latent()
    torch.testing.assert_close(last(z.to(memory_format=torch.channels_last)), model(z))


def test_half_model_on_cpu_runs_its_batch_norm_and_stops_at_conv_transpose2d_clearly():
    model = converted_generator().half()
    assert all(t.dtype == torch.float16 for t in model.parameters())
    layer = model.main[1]
    assert layer.running_mean.dtype == torch.float16
    with pytest.raises(RuntimeError, match="CPU kernels support float32 and float64"):
        model(latent(dtype=torch.float16))
    # The fused BatchNorm takes float16 on the CPU, as torch's does.
    x = torch.randn(4, 16, 4, 4, dtype=torch.float16)
    stats = [t.double() for t in (layer.running_mean, layer.running_var)]
    expected = F.leaky_relu(F.batch_norm(x.double(), *stats, layer.weight.double(),
                                         layer.bias.double(), True, layer.momentum, layer.eps),
                            layer.negative_slope)
    out = layer(x)
    assert out.dtype == layer.running_mean.dtype == torch.float16
    assert_close(out, expected, dtype=torch.float16)
    assert_close(layer.running_var, stats[1], dtype=torch.float16)


def test_meta_device_gives_shapes(recwarn):
    model = converted_generator().to("meta")
    assert all(t.device.type == "meta" for t in model.state_dict().values())
    out = model(latent(dtype=torch.float32).to("meta"))
    assert not [w for w in recwarn if "reference" in str(w.message)]
    assert out.shape == (6, 3, 16, 16) and out.device.type == "meta"


@pytest.mark.parametrize("device", DEVICES)
def test_to_device_and_back(device):
    model = converted_generator()
    moved = copy.deepcopy(model).to(device)
    assert all(t.device.type == device for t in moved.state_dict().values())
    z = latent(dtype=torch.float32)
    torch.testing.assert_close(moved(z.to(device)).cpu(), model(z), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(moved.cpu().main[1].running_mean, model.main[1].running_mean)


def test_repr_shows_the_fused_configuration():
    text = repr(fastgan.nn.convert(ExamplesDiscriminator()))
    assert "BatchNormLeakyReLU2d(8, eps=1e-05, momentum=0.1" in text
    assert "negative_slope=0.2" in text
    text = repr(converted_generator())
    assert "negative_slope=0.0" in text and "activation='tanh'" in text
