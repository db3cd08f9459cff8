"""CycleGAN's networks (Zhu et al. 2017): the ResNet generator and the 70x70 PatchGAN
discriminator, with InstanceNorm (no affine parameters, no running statistics) and the layer
sizes published with the paper, built from fastgan's fused modules."""
from torch import nn

from fastgan._checks import check_int, check_tensor
from fastgan.models.layers import init_dcgan_weights
from fastgan.nn import Conv2d, ConvTranspose2d, InstanceNormLeakyReLU2d

# negative_slope of the fused InstanceNorm: ReLU, LeakyReLU(0.2), or none (the identity).
RELU, LEAKY_RELU, NO_ACTIVATION = 0.0, 0.2, 1.0


def _instance_norm(channels, negative_slope):
    return InstanceNormLeakyReLU2d(channels, negative_slope=negative_slope)


def _check_images(images, channels):
    check_tensor("images", images)
    if images.dim() != 4 or images.shape[1] != channels:
        raise ValueError(f"images must have shape (N, {channels}, H, W), got "
                         f"{tuple(images.shape)}")


class ResidualBlock(nn.Module):
    """x + (reflection pad, 3x3 convolution, InstanceNorm, ReLU, reflection pad, 3x3
    convolution, InstanceNorm)(x)."""

    def __init__(self, channels):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), Conv2d(channels, channels, 3), _instance_norm(channels, RELU),
            nn.ReflectionPad2d(1), Conv2d(channels, channels, 3),
            _instance_norm(channels, NO_ACTIVATION))

    def forward(self, x):
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """images (N, in_channels, H, W) in [-1, 1] -> images (N, out_channels, H, W) in [-1, 1]; H
    and W multiples of 4. A 7x7 stem, two stride-2 downsamplings, `blocks` residual blocks at a
    quarter of the size with 4 * base_channels channels, two stride-2 transposed-convolution
    upsamplings and a 7x7 convolution to tanh (11.378 M parameters with the defaults)."""

    def __init__(self, in_channels=3, out_channels=3, base_channels=64, blocks=9):
        super().__init__()
        self.config = {"in_channels": check_int("in_channels", in_channels, minimum=1),
                       "out_channels": check_int("out_channels", out_channels, minimum=1),
                       "base_channels": check_int("base_channels", base_channels, minimum=1),
                       "blocks": check_int("blocks", blocks, minimum=0)}
        self.in_channels = in_channels
        channels = base_channels
        layers = [nn.ReflectionPad2d(3), Conv2d(in_channels, channels, 7),
                  _instance_norm(channels, RELU)]
        for _ in range(2):
            layers += [Conv2d(channels, channels * 2, 3, stride=2, padding=1),
                       _instance_norm(channels * 2, RELU)]
            channels *= 2
        layers += [ResidualBlock(channels) for _ in range(blocks)]
        for _ in range(2):
            layers += [ConvTranspose2d(channels, channels // 2, 3, stride=2, padding=1,
                                       output_padding=1),
                       _instance_norm(channels // 2, RELU)]
            channels //= 2
        layers += [nn.ReflectionPad2d(3), Conv2d(channels, out_channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        init_dcgan_weights(self)

    def forward(self, images):
        _check_images(images, self.in_channels)
        if images.shape[2] % 4 or images.shape[3] % 4:
            raise ValueError(f"images' height and width must be multiples of 4, got "
                             f"{tuple(images.shape[2:])}")
        return self.net(images)


class PatchDiscriminator(nn.Module):
    """images (N, in_channels, H, W) -> logits (N, 1, H', W'), one per overlapping patch (70x70
    pixels with layers=3): `layers` stride-2 4x4 convolutions doubling the channels (at most 8
    * base_channels), a stride-1 one, and a stride-1 one to one channel (2.765 M parameters with
    the defaults). InstanceNorm and LeakyReLU(0.2) after each convolution but the first (no
    normalization) and the last."""

    def __init__(self, in_channels=3, base_channels=64, layers=3):
        super().__init__()
        self.config = {"in_channels": check_int("in_channels", in_channels, minimum=1),
                       "base_channels": check_int("base_channels", base_channels, minimum=1),
                       "layers": check_int("layers", layers, minimum=1)}
        self.in_channels = in_channels
        modules = [Conv2d(in_channels, base_channels, 4, stride=2, padding=1),
                   nn.LeakyReLU(LEAKY_RELU)]
        channels = base_channels
        for layer in range(1, layers + 1):
            wider = base_channels * min(2 ** layer, 8)
            stride = 2 if layer < layers else 1
            modules += [Conv2d(channels, wider, 4, stride=stride, padding=1),
                        _instance_norm(wider, LEAKY_RELU)]
            channels = wider
        modules.append(Conv2d(channels, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*modules)
        init_dcgan_weights(self)

    def forward(self, images):
        _check_images(images, self.in_channels)
        return self.net(images)
