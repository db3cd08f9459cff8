"""The 2D Gaussian mixtures of VEEGAN (Srivastava et al. 2017) and PacGAN (Lin et al. 2018):
a ring of 8 modes (radius 1, std 0.01) and a 5x5 grid (spacing 2, std 0.05)."""
import math

import torch

from fastgan._checks import check_int, check_number, check_tensor


def _check_generator(generator):
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got "
                        f"{type(generator).__name__}")


def ring_means(modes=8, radius=1.0):
    """(modes, 2) centres evenly spaced on a circle."""
    check_int("modes", modes, minimum=1)
    check_number("radius", radius, positive=True)
    angles = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
    return (radius * torch.stack([angles.cos(), angles.sin()], dim=1)).float()


def grid_means(side=5, spacing=2.0):
    """(side**2, 2) centres of a square grid centred on the origin ({-4, -2, 0, 2, 4}^2 by
    default)."""
    check_int("side", side, minimum=1)
    check_number("spacing", spacing, positive=True)
    coordinates = (torch.arange(side, dtype=torch.float32) - (side - 1) / 2) * spacing
    return torch.cartesian_prod(coordinates, coordinates)


def sample_mixture(n, means, std, generator=None):
    """n samples from the equal-weight mixture of isotropic Gaussians N(mean, std^2 I)."""
    check_int("n", n, minimum=1)
    check_tensor("means", means, dims=(2,))
    if len(means) == 0:
        raise ValueError("means must hold at least one mode, got shape (0, ...)")
    check_number("std", std, positive=True)
    _check_generator(generator)
    modes = torch.randint(len(means), (n,), generator=generator)
    return means[modes] + std * torch.randn(n, means.shape[1], generator=generator)


def gaussian_ring(n, modes=8, radius=1.0, std=0.01, generator=None):
    """(n, 2) samples from PacGAN's ring: `modes` Gaussians on a circle of `radius`."""
    return sample_mixture(n, ring_means(modes, radius), std, generator)


def gaussian_grid(n, side=5, spacing=2.0, std=0.05, generator=None):
    """(n, 2) samples from PacGAN's grid: side x side Gaussians `spacing` apart."""
    return sample_mixture(n, grid_means(side, spacing), std, generator)
