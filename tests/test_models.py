"""The models' shapes, conditional paths, building blocks and initialization."""
import pytest
import torch

import fastgan
from fastgan.models import DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, MLPGenerator
from fastgan.nn import BatchNormLeakyReLU1d, BatchNormLeakyReLU2d


@pytest.mark.parametrize("image_size", [16, 32, 64, 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_dcgan_shapes(image_size, channels):
    generator = DCGANGenerator(z_dim=8, out_channels=channels, image_size=image_size,
                               base_channels=4)
    discriminator = DCGANDiscriminator(in_channels=channels, image_size=image_size,
                                       base_channels=4)
    images = generator(torch.randn(3, 8))
    assert images.shape == (3, channels, image_size, image_size)
    assert images.abs().max() <= 1  # tanh output
    assert discriminator(images).shape == (3,)


def test_dcgan_layers_are_fastgans_fused_modules():
    generator = DCGANGenerator(z_dim=8, out_channels=1, image_size=32, base_channels=4)
    discriminator = DCGANDiscriminator(in_channels=1, image_size=32, base_channels=4)
    g_norms = [m for m in generator.modules()
               if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    d_norms = [m for m in discriminator.modules()
               if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert g_norms and all(isinstance(m, BatchNormLeakyReLU2d) and m.negative_slope == 0
                           for m in g_norms)
    assert d_norms and all(isinstance(m, BatchNormLeakyReLU2d) and m.negative_slope == 0.2
                           for m in d_norms)
    # 32 -> 16 (no BN) -> 8 -> 4: BN on the two later layers only
    assert len(d_norms) == 2
    assert not isinstance(discriminator.features[1], BatchNormLeakyReLU2d)


def test_dcgan_initialization():
    torch.manual_seed(0)
    generator = DCGANGenerator(image_size=64)
    conv = torch.cat([m.weight.flatten() for m in generator.modules()
                      if isinstance(m, torch.nn.ConvTranspose2d)])
    norm = torch.cat([m.weight for m in generator.modules() if isinstance(m, BatchNormLeakyReLU2d)])
    assert abs(conv.mean()) < 1e-3 and abs(conv.std() - 0.02) < 1e-3
    assert abs(norm.mean() - 1) < 5e-3 and abs(norm.std() - 0.02) < 5e-3


def test_conditional_models_use_the_labels():
    torch.manual_seed(0)
    generator = DCGANGenerator(z_dim=8, out_channels=1, image_size=16, base_channels=4,
                               num_classes=10)
    discriminator = DCGANDiscriminator(in_channels=1, image_size=16, base_channels=4,
                                       num_classes=10)
    z = torch.randn(4, 8)
    images = generator(z, torch.tensor([0, 1, 2, 3]))
    assert images.shape == (4, 1, 16, 16)
    assert not torch.allclose(images, generator(z, torch.tensor([5, 6, 7, 8])))
    logits = discriminator(images, torch.tensor([0, 1, 2, 3]))
    assert logits.shape == (4,)
    assert not torch.allclose(logits, discriminator(images, torch.tensor([9, 9, 9, 9])))
    with pytest.raises(ValueError, match="labels are required"):
        generator(z)
    with pytest.raises(ValueError, match="labels are required"):
        discriminator(images)
    with pytest.raises(ValueError, match="labels"):
        DCGANGenerator(z_dim=8, image_size=16, base_channels=4)(z, torch.tensor([0, 1, 2, 3]))


@pytest.mark.parametrize("name, kwargs", [
    ("image_size", {"image_size": 48}), ("out_channels", {"out_channels": 2}),
    ("num_classes", {"num_classes": -1}), ("z_dim", {"z_dim": 0})])
def test_generator_rejects_bad_arguments(name, kwargs):
    with pytest.raises(ValueError, match=name):
        DCGANGenerator(**kwargs)


def test_discriminator_rejects_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="in_channels"):
        DCGANDiscriminator(in_channels=4)
    with pytest.raises(TypeError, match="image_size"):
        DCGANDiscriminator(image_size=32.0)
    discriminator = DCGANDiscriminator(in_channels=1, image_size=16, base_channels=4)
    with pytest.raises(ValueError, match="images must have shape"):
        discriminator(torch.randn(2, 3, 16, 16))


def test_mlp_shapes_and_layers():
    generator = MLPGenerator(z_dim=3, out_features=2, hidden=16, layers=2)
    discriminator = MLPDiscriminator(in_features=2, hidden=8, layers=3, batch_norm=True)
    samples = generator(torch.randn(5, 3))
    assert samples.shape == (5, 2)
    assert discriminator(samples).shape == (5,)
    assert sum(isinstance(m, BatchNormLeakyReLU1d) for m in generator.modules()) == 2
    assert sum(isinstance(m, BatchNormLeakyReLU1d) for m in discriminator.modules()) == 2
    plain = MLPDiscriminator(hidden=8, layers=3)
    assert not any(isinstance(m, BatchNormLeakyReLU1d) for m in plain.modules())
    plain_generator = MLPGenerator(hidden=8, layers=3, batch_norm=False)
    assert plain_generator(torch.randn(4, 2)).shape == (4, 2)
    assert not any(isinstance(m, BatchNormLeakyReLU1d) for m in plain_generator.modules())
    assert sum(isinstance(m, torch.nn.ReLU) for m in plain_generator.modules()) == 3
    with pytest.raises(ValueError, match="z must have shape"):
        generator(torch.randn(5, 2))


def test_models_are_exported():
    assert fastgan.models.DCGANGenerator is DCGANGenerator
    assert DCGANGenerator(image_size=16).config["image_size"] == 16
