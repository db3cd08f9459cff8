"""fastgan's models: DCGAN for images, CycleGAN's ResNet generator and PatchGAN for image-to-image
translation, MLPs for low-dimensional data. Discriminators output logits; all record their
constructor arguments in `.config`, so a checkpoint can rebuild them."""
from fastgan.models.cyclegan import PatchDiscriminator, ResnetGenerator
from fastgan.models.dcgan import DCGANDiscriminator, DCGANGenerator
from fastgan.models.layers import init_dcgan_weights
from fastgan.models.mlp import MLPDiscriminator, MLPGenerator

__all__ = ["DCGANGenerator", "DCGANDiscriminator", "MLPGenerator", "MLPDiscriminator",
           "PatchDiscriminator", "ResnetGenerator", "init_dcgan_weights"]

# Models a checkpoint can rebuild by name.
REGISTRY = {cls.__name__: cls for cls in
            (DCGANGenerator, DCGANDiscriminator, MLPGenerator, MLPDiscriminator,
             ResnetGenerator, PatchDiscriminator)}
