"""DCGAN (Radford et al. 2016) generator and discriminator for 16..128 pixel images, optionally
class-conditional: G concatenates a label embedding to z, D adds a projection term (Miyato &
Koyama 2018)."""
import math

import torch
from torch import nn

from fastgan._checks import check_int, check_tensor
from fastgan.models.layers import (batch_norm_leaky_relu2d, batch_norm_relu2d, conv2d,
                                   conv_transpose2d, init_dcgan_weights)

IMAGE_SIZES = (16, 32, 64, 128)
CHANNELS = (1, 3)


def check_labels(labels, num_classes, batch_size):
    """Labels are required by a conditional model (num_classes > 0) and refused otherwise."""
    if num_classes == 0:
        if labels is not None:
            raise ValueError("labels were given but the model is unconditional (num_classes=0)")
        return
    if labels is None:
        raise ValueError(f"labels are required: the model is conditional (num_classes="
                         f"{num_classes})")
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.long:
        raise TypeError("labels must be an int64 tensor")
    if labels.shape != (batch_size,):
        raise ValueError(f"labels must have shape ({batch_size},), got {tuple(labels.shape)}")


class DCGANGenerator(nn.Module):
    """z (N, z_dim) -> images (N, out_channels, image_size, image_size) in [-1, 1]."""

    def __init__(self, z_dim=100, out_channels=3, image_size=64, base_channels=64, num_classes=0):
        super().__init__()
        self.config = {"z_dim": check_int("z_dim", z_dim, minimum=1),
                       "out_channels": check_int("out_channels", out_channels, choices=CHANNELS),
                       "image_size": check_int("image_size", image_size, choices=IMAGE_SIZES),
                       "base_channels": check_int("base_channels", base_channels, minimum=1),
                       "num_classes": check_int("num_classes", num_classes, minimum=0)}
        self.z_dim, self.num_classes = z_dim, num_classes
        self.label_embedding = nn.Embedding(num_classes, z_dim) if num_classes else None
        # A 4x4 map from z, then stride-2 upsamplings that halve the channels up to image_size.
        upsamplings = int(math.log2(image_size)) - 2
        channels = base_channels * 2 ** (upsamplings - 1)
        layers = [conv_transpose2d(z_dim * (2 if num_classes else 1), channels, 4, 1, 0),
                  batch_norm_relu2d(channels)]
        for _ in range(upsamplings - 1):
            layers += [conv_transpose2d(channels, channels // 2, 4, 2, 1),
                       batch_norm_relu2d(channels // 2)]
            channels //= 2
        layers.append(conv_transpose2d(channels, out_channels, 4, 2, 1, activation="tanh"))
        self.net = nn.Sequential(*layers)
        init_dcgan_weights(self)

    def forward(self, z, labels=None):
        check_tensor("z", z)
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must have shape (N, {self.z_dim}), got {tuple(z.shape)}")
        check_labels(labels, self.num_classes, z.shape[0])
        if self.num_classes:
            z = torch.cat([z, self.label_embedding(labels)], dim=1)
        return self.net(z[:, :, None, None])


class DCGANDiscriminator(nn.Module):
    """images (N, in_channels, image_size, image_size) -> logits (N,)."""

    def __init__(self, in_channels=3, image_size=64, base_channels=64, num_classes=0):
        super().__init__()
        self.config = {"in_channels": check_int("in_channels", in_channels, choices=CHANNELS),
                       "image_size": check_int("image_size", image_size, choices=IMAGE_SIZES),
                       "base_channels": check_int("base_channels", base_channels, minimum=1),
                       "num_classes": check_int("num_classes", num_classes, minimum=0)}
        self.input_shape = (in_channels, image_size, image_size)
        self.num_classes = num_classes
        # Stride-2 downsamplings that double the channels down to a 4x4 map; no BN on the first.
        downsamplings = int(math.log2(image_size)) - 2
        channels = base_channels
        layers = [conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        for _ in range(downsamplings - 1):
            layers += [conv2d(channels, channels * 2, 4, 2, 1),
                       batch_norm_leaky_relu2d(channels * 2)]
            channels *= 2
        self.features = nn.Sequential(*layers)
        self.output = conv2d(channels, 1, 4, 1, 0)
        self.label_projection = nn.Embedding(num_classes, channels) if num_classes else None
        init_dcgan_weights(self)

    def forward(self, images, labels=None):
        check_tensor("images", images)
        if images.dim() != 4 or tuple(images.shape[1:]) != self.input_shape:
            raise ValueError(f"images must have shape (N, {', '.join(map(str, self.input_shape))})"
                             f", got {tuple(images.shape)}")
        check_labels(labels, self.num_classes, images.shape[0])
        features = self.features(images)
        logits = self.output(features).flatten()
        if self.num_classes:
            pooled = features.sum(dim=(2, 3))
            logits = logits + (self.label_projection(labels) * pooled).sum(dim=1)
        return logits
