"""GAN losses on discriminator logits (no sigmoid in the models).

kinds: "minimax" (Goodfellow et al. 2014, the saturating original), "non_saturating" (its usual
G loss), "hinge" (Lim & Ye 2017; Miyato et al. 2018), "wasserstein" (Arjovsky et al. 2017; pair
it with R1 or another Lipschitz constraint), "least_squares" (LSGAN, Mao et al. 2017: squared
distances to the targets 1 and 0, CycleGAN's default). Each returns a scalar: batch means (over
every logit: a PatchGAN's too), summed over the real and fake terms.
"""
import torch.nn.functional as F

from fastgan._checks import check_number, check_tensor

KINDS = ("minimax", "non_saturating", "hinge", "wasserstein", "least_squares")
_BINARY_KINDS = ("minimax", "non_saturating")


def _check_kind(kind):
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")


def d_loss(real_logits, fake_logits, kind="non_saturating", label_smoothing=0.0):
    """The discriminator's loss. label_smoothing (one-sided, Salimans et al. 2016) sets the real
    target to 1 - label_smoothing; it only applies to the binary cross-entropy kinds."""
    _check_kind(kind)
    check_tensor("real_logits", real_logits)
    check_tensor("fake_logits", fake_logits)
    check_number("label_smoothing", label_smoothing, minimum=0.0, maximum=0.5)
    if kind in _BINARY_KINDS:
        real_target = 1.0 - label_smoothing
        # BCE(logit, t) = t * softplus(-logit) + (1 - t) * softplus(logit)
        real = real_target * F.softplus(-real_logits) + (1 - real_target) * F.softplus(real_logits)
        return real.mean() + F.softplus(fake_logits).mean()
    if label_smoothing:
        raise ValueError(f"label_smoothing applies to {list(_BINARY_KINDS)} losses, not {kind!r}")
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    if kind == "least_squares":
        return (real_logits - 1).square().mean() + fake_logits.square().mean()
    return fake_logits.mean() - real_logits.mean()


def g_loss(fake_logits, kind="non_saturating"):
    """The generator's loss on D's logits for generated samples."""
    _check_kind(kind)
    check_tensor("fake_logits", fake_logits)
    if kind == "minimax":
        return -F.softplus(fake_logits).mean()  # mean log(1 - D(G(z))), minimized
    if kind == "non_saturating":
        return F.softplus(-fake_logits).mean()  # mean -log D(G(z))
    if kind == "least_squares":
        return (fake_logits - 1).square().mean()
    return -fake_logits.mean()

