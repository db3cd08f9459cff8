"""Layer factories shared by the models, so that swapping in a fused kernel is a one-line change."""
from torch import nn

from fastgan.nn import BatchNormLeakyReLU1d, BatchNormLeakyReLU2d, Conv2d, ConvTranspose2d

def conv2d(in_channels, out_channels, kernel_size, stride, padding):
    """A convolution without bias (as in DCGAN's discriminator), with the fast second-order
    backward that R1 differentiates."""
    return Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)


def conv_transpose2d(in_channels, out_channels, kernel_size, stride, padding, activation=None):
    """A transposed convolution with an optional fused activation (bias only when one is
    applied directly: before a BatchNorm a bias is redundant)."""
    return ConvTranspose2d(in_channels, out_channels, kernel_size, stride, padding,
                           bias=activation is not None, activation=activation)


def batch_norm_relu2d(channels):
    return BatchNormLeakyReLU2d(channels, negative_slope=0.0)


def batch_norm_leaky_relu2d(channels):
    return BatchNormLeakyReLU2d(channels, negative_slope=0.2)


def batch_norm_relu1d(features):
    return BatchNormLeakyReLU1d(features, negative_slope=0.0)


def batch_norm_leaky_relu1d(features):
    return BatchNormLeakyReLU1d(features, negative_slope=0.2)


def init_dcgan_weights(module):
    """DCGAN's initialization (Radford et al. 2016): convolution, linear and embedding weights
    N(0, 0.02); BatchNorm weights N(1, 0.02); biases zero."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
            nn.init.normal_(layer.weight, 0.0, 0.02)
        elif isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.affine:
            nn.init.normal_(layer.weight, 1.0, 0.02)
        else:
            continue
        if getattr(layer, "bias", None) is not None:
            nn.init.zeros_(layer.bias)
