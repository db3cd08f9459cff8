"""Fully connected generator and discriminator for low-dimensional data (the 2D Gaussian
mixtures of PacGAN / VEEGAN), with fused BatchNorm1d+(Leaky)ReLU hidden layers.

They keep PyTorch's default initialization: with DCGAN's N(0, 0.02) the 2D recipes needed about
twice the steps to cover the modes (measured on the ring and the grid)."""
from torch import nn

from fastgan._checks import check_bool, check_int, check_tensor
from fastgan.models.layers import batch_norm_leaky_relu1d, batch_norm_relu1d


def _check_vectors(name, value, features):
    check_tensor(name, value)
    if value.dim() != 2 or value.shape[1] != features:
        raise ValueError(f"{name} must have shape (N, {features}), got {tuple(value.shape)}")


class MLPGenerator(nn.Module):
    """z (N, z_dim) -> samples (N, out_features): `layers` hidden Linear+BN+ReLU layers, or
    Linear+ReLU without batch_norm."""

    def __init__(self, z_dim=2, out_features=2, hidden=400, layers=4, batch_norm=True):
        super().__init__()
        self.config = {"z_dim": check_int("z_dim", z_dim, minimum=1),
                       "out_features": check_int("out_features", out_features, minimum=1),
                       "hidden": check_int("hidden", hidden, minimum=1),
                       "layers": check_int("layers", layers, minimum=1),
                       "batch_norm": bool(batch_norm)}
        self.z_dim = z_dim
        blocks, width = [], z_dim
        for _ in range(layers):
            blocks += ([nn.Linear(width, hidden, bias=False), batch_norm_relu1d(hidden)]
                       if batch_norm else [nn.Linear(width, hidden), nn.ReLU()])
            width = hidden
        blocks.append(nn.Linear(hidden, out_features))
        self.net = nn.Sequential(*blocks)

    def forward(self, z):
        _check_vectors("z", z, self.z_dim)
        return self.net(z)


class MLPDiscriminator(nn.Module):
    """samples (N, in_features) -> logits (N,): `layers` hidden Linear+LeakyReLU(0.2) layers;
    with batch_norm, all but the first have BatchNorm (as in DCGAN's discriminator). Off by
    default: on the 2D mixtures a BatchNorm discriminator can tell real from fake batches by
    their statistics, and the 2D recipes converged without it, not with it."""

    def __init__(self, in_features=2, hidden=200, layers=3, batch_norm=False):
        super().__init__()
        self.config = {"in_features": check_int("in_features", in_features, minimum=1),
                       "hidden": check_int("hidden", hidden, minimum=1),
                       "layers": check_int("layers", layers, minimum=1),
                       "batch_norm": check_bool("batch_norm", batch_norm)}
        self.in_features = in_features
        blocks = [nn.Linear(in_features, hidden), nn.LeakyReLU(0.2)]
        for _ in range(layers - 1):
            blocks += ([nn.Linear(hidden, hidden, bias=False), batch_norm_leaky_relu1d(hidden)]
                       if batch_norm else [nn.Linear(hidden, hidden), nn.LeakyReLU(0.2)])
        blocks.append(nn.Linear(hidden, 1))
        self.net = nn.Sequential(*blocks)

    def forward(self, samples):
        _check_vectors("samples", samples, self.in_features)
        return self.net(samples).flatten()
