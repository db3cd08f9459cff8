"""Drop-in modules: same constructor arguments and state_dict keys as their torch.nn
counterparts; convert() puts them into an existing model."""
from fastgan.nn.batch_norm import BatchNormLeakyReLU1d, BatchNormLeakyReLU2d
from fastgan.nn.conv import ConvTranspose2d
from fastgan.nn.convert import Conversion, ConversionReport, convert

__all__ = ["BatchNormLeakyReLU1d", "BatchNormLeakyReLU2d", "ConvTranspose2d", "convert",
           "Conversion", "ConversionReport"]
