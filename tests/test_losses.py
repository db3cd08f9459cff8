"""Each GAN loss against its textbook formula, written with sigmoid and log."""
import pytest
import torch

from fastgan import losses


@pytest.fixture
def logits():
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(16, generator=generator, dtype=torch.float64) * 3
    fake = torch.randn(16, generator=generator, dtype=torch.float64) * 3
    return real, fake


def _assert_equal(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["minimax", "non_saturating"])
def test_binary_d_loss_is_cross_entropy(logits, kind):
    real, fake = logits
    expected = -torch.log(torch.sigmoid(real)).mean() - torch.log(1 - torch.sigmoid(fake)).mean()
    _assert_equal(losses.d_loss(real, fake, kind), expected)


def test_label_smoothing_sets_the_real_target(logits):
    real, fake = logits
    target = 0.9
    p_real = torch.sigmoid(real)
    expected = (-(target * torch.log(p_real) + (1 - target) * torch.log(1 - p_real)).mean()
                - torch.log(1 - torch.sigmoid(fake)).mean())
    _assert_equal(losses.d_loss(real, fake, "non_saturating", label_smoothing=0.1), expected)


def test_generator_losses(logits):
    _, fake = logits
    p_fake = torch.sigmoid(fake)
    _assert_equal(losses.g_loss(fake, "minimax"), torch.log(1 - p_fake).mean())
    _assert_equal(losses.g_loss(fake, "non_saturating"), -torch.log(p_fake).mean())
    _assert_equal(losses.g_loss(fake, "hinge"), -fake.mean())
    _assert_equal(losses.g_loss(fake, "wasserstein"), -fake.mean())


def test_hinge_and_wasserstein_d_losses(logits):
    real, fake = logits
    expected_hinge = torch.clamp(1 - real, min=0).mean() + torch.clamp(1 + fake, min=0).mean()
    _assert_equal(losses.d_loss(real, fake, "hinge"), expected_hinge)
    _assert_equal(losses.d_loss(real, fake, "wasserstein"), fake.mean() - real.mean())


def test_least_squares_losses(logits):
    """LSGAN: squared distances to 1 for reals (and for fakes, G's aim), to 0 for fakes; over
    every logit of a patch map too."""
    real, fake = logits
    _assert_equal(losses.d_loss(real, fake, "least_squares"),
                  ((real - 1) ** 2).mean() + (fake ** 2).mean())
    _assert_equal(losses.g_loss(fake, "least_squares"), ((fake - 1) ** 2).mean())
    patches = fake.view(2, 1, 2, 4)
    _assert_equal(losses.g_loss(patches, "least_squares"), ((fake - 1) ** 2).mean())


def test_minimax_saturates_where_non_saturating_does_not():
    """When D confidently rejects the fakes, the original loss gives G almost no gradient."""
    fake = torch.full((4,), -10.0, dtype=torch.float64, requires_grad=True)
    (minimax_grad,) = torch.autograd.grad(losses.g_loss(fake, "minimax"), fake)
    (non_saturating_grad,) = torch.autograd.grad(losses.g_loss(fake, "non_saturating"), fake)
    assert minimax_grad.abs().max() < 1e-4
    assert non_saturating_grad.abs().min() > 0.2


def test_bad_arguments_are_named(logits):
    real, fake = logits
    with pytest.raises(ValueError, match="kind"):
        losses.d_loss(real, fake, "least-squares")
    with pytest.raises(ValueError, match="kind"):
        losses.g_loss(fake, "nonsaturating")
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.d_loss(real, fake, "hinge", label_smoothing=0.1)
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.d_loss(real, fake, label_smoothing=0.7)
    with pytest.raises(TypeError, match="real_logits"):
        losses.d_loss([1.0], fake)
