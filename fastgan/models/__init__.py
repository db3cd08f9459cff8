"""fastgan's models: DCGAN for images, MLPs for low-dimensional data. All output logits and
record their constructor arguments in `.config`, so a checkpoint can rebuild them."""
from fastgan.models.dcgan import DCGANDiscriminator, DCGANGenerator
from fastgan.models.layers import init_dcgan_weights
from fastgan.models.mlp import MLPDiscriminator, MLPGenerator

__all__ = ["DCGANGenerator", "DCGANDiscriminator", "MLPGenerator", "MLPDiscriminator",
           "init_dcgan_weights"]

# Models a checkpoint can rebuild by name.
REGISTRY = {cls.__name__: cls for cls in
            (DCGANGenerator, DCGANDiscriminator, MLPGenerator, MLPDiscriminator)}
