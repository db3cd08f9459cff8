"""The R1 gradient penalty (fastgan.ops.r1_penalty, with its fused kernels) and the
lazy-regularization bookkeeping (StyleGAN2, Karras et al. 2020, appendix B)."""
from fastgan.ops import r1_penalty

__all__ = ["lazy_adam_settings", "r1_penalty"]


def lazy_adam_settings(lr, betas, interval):
    """Adam's lr and betas for an optimizer that also takes a regularization step every
    `interval` steps: StyleGAN2's lr * k/(k+1), beta ** (k/(k+1)) with k = interval, which keeps
    the optimizer's effective per-step settings unchanged."""
    ratio = interval / (interval + 1)
    return lr * ratio, tuple(beta ** ratio for beta in betas)
