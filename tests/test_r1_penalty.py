"""fastgan.ops.r1_penalty and its fused gradient_penalty op against pure PyTorch: values and
discriminator (and generator) parameter gradients equal autograd.grad(create_graph=True)'s."""
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from fastgan import _reference
from fastgan.models import DCGANDiscriminator, DCGANGenerator, MLPDiscriminator
from fastgan.ops import r1_penalty
from conftest import DEVICES, assert_close, make_input, shape_layouts

ops = torch.ops.fastgan


def penalty_by_definition(outputs, inputs, gamma):
    """(gamma / 2) * the mean over samples of each sample's squared gradient norm, written out."""
    (grad,) = torch.autograd.grad(outputs.sum(), inputs, create_graph=True)
    return gamma / 2 * torch.stack([sample.square().sum() for sample in grad]).mean()


# --- the fused op -----------------------------------------------------------------------------

OP_SHAPES = [(5,), (7, 3), (4, 3, 5), (3, 2, 5, 7), (1, 3, 4, 4), (2, 3, 67, 129)]
OP_CASES = shape_layouts(OP_SHAPES)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape, layout", OP_CASES, ids=str)
def test_op_matches_its_definition(device, dtype, shape, layout):
    grad = make_input(shape, dtype, device, layout)
    scale = 3.5
    penalty = ops.gradient_penalty(grad, scale)
    exact = grad.double()
    expected = scale * torch.stack([sample.square().sum() for sample in exact]).mean()
    assert penalty.shape == () and penalty.dtype == dtype
    assert_close(penalty, expected, dtype)

    grad_out = torch.tensor(0.75, dtype=dtype, device=device)
    derivative = ops.gradient_penalty_backward(grad_out, grad, scale)
    assert derivative.dtype == dtype and derivative.stride() == (
        grad.stride() if layout != "non_contiguous" else grad.contiguous().stride())
    assert_close(derivative, 2 * scale / shape[0] * 0.75 * exact, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_op_empty_batch_is_nan_like_torchs_mean(device):
    grad = torch.zeros(0, 3, 4, 4, device=device)
    assert torch.isnan(ops.gradient_penalty(grad, 5.0))
    assert ops.gradient_penalty_backward(torch.tensor(1.0, device=device), grad, 5.0).shape == (
        0, 3, 4, 4)
    # Samples with no elements have zero norm.
    assert ops.gradient_penalty(torch.zeros(3, 0, device=device), 5.0).item() == 0.0


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_op_accumulates_half_in_float(device, dtype):
    grad = make_input((64, 3, 32, 32), torch.float32, device).to(dtype)
    penalty = ops.gradient_penalty(grad, 5.0)
    assert penalty.dtype == torch.float32
    expected = 5.0 * grad.double().square().sum() / 64
    torch.testing.assert_close(penalty.double(), expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape, layout", [((3, 2, 4, 5), "channels_last"), ((4, 3), "contiguous"),
                                           ((3, 4, 5), "non_contiguous"), ((5,), "contiguous")],
                         ids=str)
def test_op_gradcheck_to_third_order(device, shape, layout):
    grad = make_input(shape, torch.float64, device, layout).requires_grad_()
    grad_out = torch.tensor(1.3, dtype=torch.float64, device=device, requires_grad=True)
    assert gradcheck(lambda g: ops.gradient_penalty(g, 2.5), (grad,))
    assert gradgradcheck(lambda g: ops.gradient_penalty(g, 2.5), (grad,))
    # The backward op is differentiable twice in both its arguments: third order of the penalty.
    backward = lambda go, g: ops.gradient_penalty_backward(go, g, 2.5)  # noqa: E731
    assert gradcheck(backward, (grad_out, grad))
    assert gradgradcheck(backward, (grad_out, grad))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "non_contiguous"])
def test_opcheck(device, layout):
    grad = make_input((3, 4, 5, 5), torch.float64, device, layout)
    grad_out = torch.tensor(0.5, dtype=torch.float64, device=device)
    for requires_grad in (False, True):
        g = grad.clone().requires_grad_(requires_grad)
        torch.library.opcheck(ops.gradient_penalty, (g, 1.5))
        torch.library.opcheck(ops.gradient_penalty_backward,
                              (grad_out.clone().requires_grad_(requires_grad), g, 1.5))


def test_op_errors():
    with pytest.raises(RuntimeError, match="grad must have a batch dimension"):
        ops.gradient_penalty(torch.tensor(1.0), 1.0)
    with pytest.raises(RuntimeError, match="float32 and float64"):
        ops.gradient_penalty(torch.ones(2, 3, dtype=torch.float16), 1.0)
    with pytest.raises(RuntimeError, match="grad must be a floating-point"):
        ops.gradient_penalty(torch.ones(2, 3, dtype=torch.int64), 1.0)
    with pytest.raises(RuntimeError, match="grad_out must hold one value"):
        ops.gradient_penalty_backward(torch.ones(2), torch.ones(2, 3), 1.0)


# --- r1_penalty on discriminators: fastgan's kernels vs the same model in pure PyTorch ----------

def _dcgan_discriminator(num_classes=0, seed=0):
    torch.manual_seed(seed)
    return DCGANDiscriminator(in_channels=3, image_size=16, base_channels=4,
                              num_classes=num_classes).double()


def _mlp_discriminator(batch_norm, seed=0):
    torch.manual_seed(seed)
    return MLPDiscriminator(in_features=2, hidden=8, layers=3, batch_norm=batch_norm).double()


def _penalty_and_grads(discriminator, inputs, penalty_fn, labels=(), gamma=10.0, leaves=()):
    """The penalty of `discriminator` at `inputs` and its gradients w.r.t. the discriminator's
    parameters and `leaves` (tensors `inputs` was computed from)."""
    if inputs.is_leaf:
        inputs = inputs.detach().requires_grad_()
    penalty = penalty_fn(discriminator(inputs, *labels), inputs, gamma)
    wrt = [*discriminator.parameters(), *leaves]
    return penalty, torch.autograd.grad(penalty, wrt, allow_unused=True)


def _assert_same(fastgan_result, torch_result):
    penalty, grads = fastgan_result
    expected_penalty, expected_grads = torch_result
    assert_close(penalty, expected_penalty)
    assert len(grads) == len(expected_grads)
    for grad, expected in zip(grads, expected_grads):
        if expected is None:  # a parameter the penalty does not reach (D's last bias)
            assert grad is None or not grad.any()
        else:
            assert_close(grad, expected)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_dcgan_discriminator_r1_matches_pure_pytorch(layout, training):
    model = _dcgan_discriminator().train(training)
    pure = _reference.torch_modules(model)
    if layout == "channels_last":
        model, pure = (m.to(memory_format=torch.channels_last) for m in (model, pure))
    real = make_input((5, 3, 16, 16), torch.float64, layout=layout)
    _assert_same(_penalty_and_grads(model, real, r1_penalty),
                 _penalty_and_grads(pure, real, penalty_by_definition))


def test_conditional_discriminator_r1_matches_pure_pytorch():
    model = _dcgan_discriminator(num_classes=4)
    pure = _reference.torch_modules(model)
    real = make_input((6, 3, 16, 16), torch.float64)
    labels = (torch.tensor([0, 3, 1, 1, 2, 0]),)
    _assert_same(_penalty_and_grads(model, real, r1_penalty, labels),
                 _penalty_and_grads(pure, real, penalty_by_definition, labels))


@pytest.mark.parametrize("batch_norm", [True, False], ids=["bn", "no_bn"])
def test_points_discriminator_r1_matches_pure_pytorch(batch_norm):
    model = _mlp_discriminator(batch_norm)
    pure = _reference.torch_modules(model)
    points = make_input((9, 2), torch.float64)
    _assert_same(_penalty_and_grads(model, points, r1_penalty, gamma=0.3),
                 _penalty_and_grads(pure, points, penalty_by_definition, gamma=0.3))


def test_r2_on_generated_images_reaches_the_generator():
    """R2: the penalty on D's gradient at fakes G(z), here not detached, so that its gradient
    flows through D's second order into G's parameters too."""
    torch.manual_seed(1)
    generator = DCGANGenerator(z_dim=6, out_channels=3, image_size=16, base_channels=4).double()
    discriminator = _dcgan_discriminator()
    noise = torch.randn(4, 6, dtype=torch.float64)

    def run(g, d, penalty_fn):
        fake = g(noise)
        return _penalty_and_grads(d, fake, penalty_fn, gamma=1.0, leaves=list(g.parameters()))

    _assert_same(run(generator, discriminator, r1_penalty),
                 run(_reference.torch_modules(generator), _reference.torch_modules(discriminator),
                     penalty_by_definition))


def test_the_gradient_is_unscaled_with_a_grad_scaler():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 14)
    model = _dcgan_discriminator()
    real = make_input((4, 3, 16, 16), torch.float64).requires_grad_()
    logits = model(real)
    scaled = r1_penalty(scaler.scale(logits), real, 2.0, grad_scale=scaler.get_scale())
    plain = r1_penalty(logits, real, 2.0)
    assert_close(scaled, plain)
    params = list(model.parameters())
    for grad, expected in zip(torch.autograd.grad(scaled, params, retain_graph=True),
                              torch.autograd.grad(plain, params)):
        assert_close(grad, expected)


def test_reference_matches_the_kernels():
    model = _dcgan_discriminator()
    real = make_input((3, 3, 16, 16), torch.float64)
    for grad_scale in (None, 8.0):
        scale = grad_scale or 1.0
        _assert_same(
            _penalty_and_grads(model, real, lambda o, i, g: r1_penalty(o * scale, i, g,
                                                                       grad_scale=grad_scale)),
            _penalty_and_grads(model, real, lambda o, i, g: _reference.r1_penalty(
                o * scale, i, g, grad_scale=grad_scale)))


def test_torch_modules_is_the_same_model():
    model = _dcgan_discriminator(num_classes=3)
    pure = _reference.torch_modules(model)
    assert not any(type(m).__module__.startswith("fastgan.nn") for m in pure.modules())
    images, labels = make_input((4, 3, 16, 16), torch.float64), torch.tensor([0, 1, 2, 0])
    assert_close(model(images, labels), pure(images, labels))
    assert [p.shape for p in model.parameters()] == [p.shape for p in pure.parameters()]


# --- errors -----------------------------------------------------------------------------------

def test_errors_name_the_problem():
    weight = torch.randn(3, requires_grad=True)
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="inputs must require grad"):
        r1_penalty(x @ weight, x)
    x.requires_grad_()
    with pytest.raises(ValueError, match="outputs do not depend on inputs"):
        r1_penalty(torch.randn(4, 3) @ weight, x)
    with pytest.raises(ValueError, match="outputs do not depend on inputs"):
        r1_penalty((x @ weight).detach(), x)
    with pytest.raises(TypeError, match="outputs must be a torch.Tensor"):
        r1_penalty([1.0], x)
    with pytest.raises(TypeError, match="inputs must be a floating-point tensor"):
        r1_penalty(x @ weight, torch.ones(4, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="inputs must have at least 1 dimensions"):
        r1_penalty(x @ weight, torch.tensor(1.0, requires_grad=True))
    with pytest.raises(ValueError, match="gamma must be in"):
        r1_penalty(x @ weight, x, -1.0)
    with pytest.raises(TypeError, match="gamma must be a number"):
        r1_penalty(x @ weight, x, "10")
    with pytest.raises(ValueError, match="grad_scale must be positive"):
        r1_penalty(x @ weight, x, grad_scale=0.0)


# --- lazy regularization in the trainer ---------------------------------------------------------

def test_trainer_takes_lazy_r1_steps_scaled_by_the_interval():
    """Every r1_interval steps D takes an extra optimizer step on interval * R1 (StyleGAN2's lazy
    regularization), computed at D's parameters after its loss step."""
    from fastgan import Trainer
    from fastgan.models import MLPGenerator

    gamma, interval = 0.5, 3
    torch.manual_seed(0)
    discriminator = _mlp_discriminator(batch_norm=False).float()
    trainer = Trainer(MLPGenerator(z_dim=2, hidden=8, layers=1), discriminator, r1_gamma=gamma,
                      r1_interval=interval, device="cpu")
    recorded = []  # (parameters, gradients) at each of D's optimizer steps
    optimizer_step = trainer.optimizer_d.step

    def recording_step(*args, **kwargs):
        recorded.append(([p.detach().clone() for p in discriminator.parameters()],
                         [None if p.grad is None else p.grad.clone()
                          for p in discriminator.parameters()]))
        return optimizer_step(*args, **kwargs)

    trainer.optimizer_d.step = recording_step
    real = torch.randn(8, 2)
    steps_taken = []
    for step in range(2 * interval):
        trainer.step = step
        metrics = trainer._discriminator_step(real.clone(), None)
        steps_taken.append(len(recorded))
        assert ("r1" in metrics) == (step % interval == 0)
    assert steps_taken == [2, 3, 4, 6, 7, 8]

    for regularization_step in (1, 5):
        parameters, grads = recorded[regularization_step]
        model = _reference.torch_modules(discriminator)
        with torch.no_grad():
            for p, value in zip(model.parameters(), parameters):
                p.copy_(value)
        x = real.clone().requires_grad_()
        expected = torch.autograd.grad(interval * penalty_by_definition(model(x), x, gamma),
                                       list(model.parameters()), allow_unused=True)
        for grad, want in zip(grads, expected):
            if want is None:  # D's last bias: the penalty does not depend on it
                assert grad is None or not grad.any()
            else:
                assert_close(grad, want)
