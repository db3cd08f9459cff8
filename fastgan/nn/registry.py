"""The one table of fastgan's fused modules: for each, the torch layer it stands for, the torch
activations it absorbs, and how to build either from the other. fastgan.nn.convert,
fastgan.nn.convert_sync_batchnorm and fastgan._reference.torch_modules all read it, so a new
fused module is one more entry in FUSED_LAYERS."""
import dataclasses
from collections.abc import Callable, Mapping

import torch
from torch import nn

from fastgan.nn.batch_norm import (BatchNormLeakyReLU1d, BatchNormLeakyReLU2d,
                                   BatchNormLeakyReLU3d)
from fastgan.nn.conv import Conv2d, ConvTranspose2d
from fastgan.nn.instance_norm import (InstanceNormLeakyReLU1d, InstanceNormLeakyReLU2d,
                                      InstanceNormLeakyReLU3d)
from fastgan.nn.sync_batch_norm import SyncBatchNormLeakyReLU

# When convert() puts the fused module in place of its torch layer.
NEVER = "never"
WITH_ACTIVATION = "with an activation it absorbs"
ALWAYS = "always"  # also without an activation: the fused module alone is faster


@dataclasses.dataclass(frozen=True)
class FusedLayer:
    """`fused` computes activation(torch_layer(x)) for each torch activation class in
    `activations` (the key None: no activation)."""
    fused: type
    torch_layer: type
    # module of either class -> the constructor arguments both classes share.
    options: Callable
    # torch activation class (or None) -> function of the activation module (or None) giving
    # the fused module's activation arguments.
    activations: Mapping
    # fused module -> its activation as a new torch module, or None.
    torch_activation: Callable
    converted: str
    # fused module -> None: brings the tensors it took over into the layout it computes in
    # (in place, so that the Parameter objects stay the model's).
    adopt: Callable = lambda fused: None

    def activation_arguments(self, activation):
        return self.activations[None if activation is None else type(activation)](activation)

    def fuse(self, layer, activation=None, **overrides):
        """The fused module computing activation(layer(x)) in `layer`'s train/eval mode. It
        holds `layer`'s parameters and buffers themselves, so device, dtype, memory format,
        requires_grad and an optimizer's references carry over. `layer` has the torch layer's
        attributes and tensors (a fused module of another entry does too); `overrides` are
        further constructor arguments."""
        arguments = {**self.options(layer), **self.activation_arguments(activation),
                     **overrides}
        fused = self.fused(**arguments, device="meta")
        for key in fused._parameters:
            fused._parameters[key] = layer._parameters[key]
        for key in fused._buffers:
            fused._buffers[key] = layer._buffers[key]
        self.adopt(fused)
        return fused.train(layer.training)

    def unfuse(self, fused):
        """(torch layer, torch activation or None) computing what `fused` does, in its
        train/eval mode. The layer has copies of its parameters and buffers, in torch's default
        memory format, as a user of torch alone would have built it."""
        floating = [t for t in fused.state_dict().values() if t.is_floating_point()]
        factory = {"device": floating[0].device, "dtype": floating[0].dtype} if floating else {}
        layer = self.torch_layer(**self.options(fused), **factory)
        layer.load_state_dict(fused.state_dict())
        activation = self.torch_activation(fused)
        if activation is not None:
            activation.train(fused.training)
        return layer.train(fused.training), activation


def _norm_options(layer):
    options = {"num_features": layer.num_features, "eps": layer.eps, "momentum": layer.momentum,
               "affine": layer.affine, "track_running_stats": layer.track_running_stats}
    if layer.affine and layer.bias is None:
        # Only then: torch releases whose norm layers lack `bias` still build the others.
        options["bias"] = False
    return options


def _sync_batch_norm_options(layer):
    return {**_norm_options(layer),
            "process_group": getattr(layer, "process_group", None)}


# negative_slope 1 is the identity, 0 ReLU.
_LEAKY_RELU_ACTIVATIONS = {
    None: lambda activation: {"negative_slope": 1.0},
    nn.ReLU: lambda activation: {"negative_slope": 0.0},
    nn.LeakyReLU: lambda activation: {"negative_slope": activation.negative_slope},
}


def _leaky_relu_of(fused):
    return nn.LeakyReLU(fused.negative_slope)


def _conv_options(layer):
    return {"in_channels": layer.in_channels, "out_channels": layer.out_channels,
            "kernel_size": layer.kernel_size, "stride": layer.stride, "padding": layer.padding,
            "dilation": layer.dilation, "groups": layer.groups,
            "bias": layer.bias is not None, "padding_mode": layer.padding_mode}


def _conv_transpose_options(layer):
    return {**_conv_options(layer), "output_padding": layer.output_padding}


_CONV_TRANSPOSE_ACTIVATIONS = {
    None: lambda activation: {"activation": None},
    nn.Tanh: lambda activation: {"activation": "tanh"},
    nn.ReLU: lambda activation: {"activation": "relu"},
    nn.LeakyReLU: lambda activation: {"activation": "leaky_relu",
                                      "negative_slope": activation.negative_slope},
}


def _conv_transpose_activation_of(fused):
    if fused.activation == "leaky_relu":
        return nn.LeakyReLU(fused.negative_slope)
    return {None: None, "relu": nn.ReLU(), "tanh": nn.Tanh()}[fused.activation]


SYNC_BATCH_NORM = FusedLayer(SyncBatchNormLeakyReLU, nn.SyncBatchNorm, _sync_batch_norm_options,
                             _LEAKY_RELU_ACTIVATIONS, _leaky_relu_of, NEVER)

FUSED_LAYERS = (
    *(FusedLayer(fused, torch_layer, _norm_options, _LEAKY_RELU_ACTIVATIONS,
                 _leaky_relu_of, WITH_ACTIVATION)
      for fused, torch_layer in ((BatchNormLeakyReLU1d, nn.BatchNorm1d),
                                 (BatchNormLeakyReLU2d, nn.BatchNorm2d),
                                 (BatchNormLeakyReLU3d, nn.BatchNorm3d))),
    SYNC_BATCH_NORM,
    *(FusedLayer(fused, torch_layer, _norm_options, _LEAKY_RELU_ACTIVATIONS,
                 _leaky_relu_of, WITH_ACTIVATION)
      for fused, torch_layer in ((InstanceNormLeakyReLU1d, nn.InstanceNorm1d),
                                 (InstanceNormLeakyReLU2d, nn.InstanceNorm2d),
                                 (InstanceNormLeakyReLU3d, nn.InstanceNorm3d))),
    FusedLayer(ConvTranspose2d, nn.ConvTranspose2d, _conv_transpose_options,
               _CONV_TRANSPOSE_ACTIVATIONS, _conv_transpose_activation_of, ALWAYS),
    # Its weight is stored channels-last, as the module computes: Module.to changes the
    # Parameters' data in place.
    FusedLayer(Conv2d, nn.Conv2d, _conv_options, {None: lambda activation: {}},
               lambda fused: None, ALWAYS,
               adopt=lambda fused: fused.to(memory_format=torch.channels_last)),
)

FUSED_CLASSES = tuple(entry.fused for entry in FUSED_LAYERS)
_BY_TORCH_LAYER = {entry.torch_layer: entry for entry in FUSED_LAYERS}
_BY_FUSED = {entry.fused: entry for entry in FUSED_LAYERS}


def converted_entry(layer):
    """The entry whose fused module convert() may put in place of `layer` (a torch layer of
    exactly that class, not a subclass), or None."""
    entry = _BY_TORCH_LAYER.get(type(layer))
    return entry if entry is not None and entry.converted != NEVER else None


def converted_torch_layers():
    return tuple(entry.torch_layer for entry in FUSED_LAYERS if entry.converted != NEVER)


def fused_entry(module):
    """The entry of `module`'s fused class (or of its nearest fused base class), or None."""
    return next((_BY_FUSED[cls] for cls in type(module).__mro__ if cls in _BY_FUSED), None)
