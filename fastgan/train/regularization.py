"""The R1 gradient penalty and the lazy-regularization bookkeeping (StyleGAN2, Karras et al.
2020, appendix B)."""
import torch


def r1_penalty(logits, inputs, gamma):
    """(gamma / 2) * mean over the batch of ||d logits.sum() / d inputs_i||^2 (Mescheder et al.
    2018), differentiable w.r.t. the discriminator's parameters. `inputs` must require grad.

    Pure autograd; fastgan.ops.r1_penalty, with its fused double backward, is the drop-in
    replacement once it exists."""
    (gradient,) = torch.autograd.grad(logits.sum(), inputs, create_graph=True)
    return gamma / 2 * gradient.float().pow(2).flatten(1).sum(dim=1).mean()


def lazy_adam_settings(lr, betas, interval):
    """Adam's lr and betas for an optimizer that also takes a regularization step every
    `interval` steps: StyleGAN2's lr * k/(k+1), beta ** (k/(k+1)) with k = interval, which keeps
    the optimizer's effective per-step settings unchanged."""
    ratio = interval / (interval + 1)
    return lr * ratio, tuple(beta ** ratio for beta in betas)
