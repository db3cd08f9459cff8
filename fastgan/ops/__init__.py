"""fastgan's functional API: each op matches its torch.nn.functional counterpart and is
differentiable twice."""
from fastgan.ops.batch_norm_leaky_relu import batch_norm_leaky_relu
from fastgan.ops.conv2d import conv2d
from fastgan.ops.conv_transpose2d import conv_transpose2d
from fastgan.ops.instance_norm_leaky_relu import instance_norm_leaky_relu
from fastgan.ops.r1_penalty import r1_penalty
from fastgan import _backend
from fastgan.ops import _autocast

if _backend.extension is not None:
    _autocast.register()

__all__ = ["batch_norm_leaky_relu", "conv2d", "conv_transpose2d", "instance_norm_leaky_relu",
           "r1_penalty"]
