"""Pure-PyTorch implementations of fastgan's ops: the test oracle and the fallback when the
compiled extension is unavailable. Each has the signature of its fastgan.ops counterpart."""
import copy

import torch
import torch.nn.functional as F
from torch import nn


def batch_norm_leaky_relu(input, running_mean, running_var, weight=None, bias=None,
                          training=False, momentum=0.1, eps=1e-5, negative_slope=0.2):
    normalized = F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum,
                              eps)
    return F.leaky_relu(normalized, negative_slope)


def instance_norm_leaky_relu(input, running_mean=None, running_var=None, weight=None, bias=None,
                             use_input_stats=True, momentum=0.1, eps=1e-5, negative_slope=0.2):
    normalized = F.instance_norm(input, running_mean, running_var, weight, bias, use_input_stats,
                                 momentum, eps)
    return F.leaky_relu(normalized, negative_slope)


_ACTIVATIONS = {
    None: lambda y, negative_slope: y,
    "relu": lambda y, negative_slope: F.relu(y),
    "leaky_relu": F.leaky_relu,
    "tanh": lambda y, negative_slope: y.tanh(),
}


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, activation=None, negative_slope=0.2):
    out = F.conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups,
                             dilation)
    return _ACTIVATIONS[activation](out, negative_slope)


def gradient_penalty(grad, scale):
    """scale * mean over dim 0 of the squared norms of grad's samples (the kernels' reduction), in
    float32, or float64 for float64 grad."""
    dtype = torch.float64 if grad.dtype == torch.float64 else torch.float32
    return grad.to(dtype).square().sum() * scale / grad.shape[0]


def r1_penalty(outputs, inputs, gamma=10.0, *, grad_scale=None):
    (gradient,) = torch.autograd.grad(outputs.sum(), inputs, create_graph=True)
    if grad_scale is not None:
        gradient = gradient / grad_scale
    return gradient_penalty(gradient, gamma / 2)


def torch_modules(model):
    """A copy of `model` made of torch.nn modules only, with the same parameters, buffers and
    outputs: each of fastgan's fused modules becomes its torch layer followed by its activation
    (an nn.Sequential of the two; the layer alone where there is no activation), as
    fastgan.nn.registry builds them. The parameters keep their order. The oracle for whole
    models and the benchmarks' pure-PyTorch baseline."""
    from fastgan.nn import registry  # fastgan.nn imports this module through fastgan.ops

    model = copy.deepcopy(model)
    replacement = _torch_equivalent(model, registry)
    if replacement is not None:
        return replacement
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            replacement = _torch_equivalent(child, registry)
            if replacement is not None:
                setattr(module, name, replacement)
    return model


def _torch_equivalent(module, registry):
    """The torch.nn replacement of one fused module, or None for any other module."""
    entry = registry.fused_entry(module)
    if entry is None:
        return None
    layer, activation = entry.unfuse(module)
    return layer if activation is None else nn.Sequential(layer, activation).train(module.training)
