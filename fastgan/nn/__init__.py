"""Drop-in modules: same constructor arguments and state_dict keys as their torch.nn
counterparts; convert() puts them into an existing model."""
from fastgan.nn.batch_norm import (BatchNormLeakyReLU1d, BatchNormLeakyReLU2d,
                                   BatchNormLeakyReLU3d)
from fastgan.nn.conv import Conv2d, ConvTranspose2d
from fastgan.nn.convert import Conversion, ConversionReport, convert
from fastgan.nn.instance_norm import (InstanceNormLeakyReLU1d, InstanceNormLeakyReLU2d,
                                      InstanceNormLeakyReLU3d)
from fastgan.nn.sync_batch_norm import SyncBatchNormLeakyReLU, convert_sync_batchnorm

__all__ = ["BatchNormLeakyReLU1d", "BatchNormLeakyReLU2d", "BatchNormLeakyReLU3d", "Conv2d",
           "ConvTranspose2d", "convert", "Conversion", "ConversionReport",
           "InstanceNormLeakyReLU1d", "InstanceNormLeakyReLU2d", "InstanceNormLeakyReLU3d",
           "SyncBatchNormLeakyReLU", "convert_sync_batchnorm"]
