"""Drop-in modules: same constructor arguments and state_dict keys as their torch.nn
counterparts."""
from fastgan.nn.batch_norm import BatchNormLeakyReLU1d, BatchNormLeakyReLU2d
from fastgan.nn.conv import Conv2d, ConvTranspose2d

__all__ = ["BatchNormLeakyReLU1d", "BatchNormLeakyReLU2d", "Conv2d", "ConvTranspose2d"]
