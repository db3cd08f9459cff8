"""Pure-PyTorch implementations of fastgan's ops: the test oracle and the fallback when the
compiled extension is unavailable. Each has the signature of its fastgan.ops counterpart."""
import torch.nn.functional as F


def batch_norm_leaky_relu(input, running_mean, running_var, weight=None, bias=None,
                          training=False, momentum=0.1, eps=1e-5, negative_slope=0.2):
    normalized = F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum,
                              eps)
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
