"""Fused InstanceNorm + LeakyReLU: `leaky_relu(instance_norm(input), negative_slope)`, on
fastgan's BatchNorm+LeakyReLU kernels (torch.ops.fastgan.batch_norm_leaky_relu*, with their fake
kernels and first- and second-order autograd).

Instance normalization of (N, C, *) is batch normalization of each sample's C channels alone,
which is how torch computes it too (batch_norm over N * C channels). Each kernel call reads its
input twice (statistics; normalize and activate) and writes its output once:
- on the CPU, the kernels' `instance` mode keeps statistics per sample and channel, for
  channels-first and channels-last input alike;
- on CUDA, channels-first input is viewed, without a copy, as one sample of N * C channels, and
  channels-last input (2d and 3d) runs one call per sample, each sample's (H * W, C) rows being
  one channels-last sample already, the outputs then concatenated (batch 1, CycleGAN's default,
  needs no concatenation);
- without the input's statistics (use_input_stats=False) it is batch normalization with the
  running statistics, in one call.
The running statistics are updated as torch does: by `momentum` towards the samples' average of
their means and unbiased variances."""
import math

import torch

from fastgan import _backend, _reference
from fastgan._checks import check_normalization_operands, check_number, check_tensor
from fastgan.ops.batch_norm_leaky_relu import _as_dtype, _ops, batch_norm_leaky_relu


def instance_norm_leaky_relu(input, running_mean=None, running_var=None, weight=None, bias=None,
                             use_input_stats=True, momentum=0.1, eps=1e-5, negative_slope=0.2):
    """`F.leaky_relu(F.instance_norm(input, running_mean, running_var, weight, bias,
    use_input_stats, momentum, eps), negative_slope)`, fused: same arguments, results and
    running-statistics update; differentiable twice. negative_slope=0 is InstanceNorm+ReLU.
    input is (N, C, L), (N, C, H, W) or (N, C, D, H, W), in float32, float64, bfloat16 or
    float16."""
    check_tensor("input", input, dims=(3, 4, 5))
    check_normalization_operands(input, running_mean, running_var, weight, bias)
    if not isinstance(use_input_stats, bool):
        raise TypeError(f"use_input_stats must be a bool, got {type(use_input_stats).__name__}")
    if not use_input_stats and running_mean is None:
        raise ValueError("running_mean and running_var are required when "
                         "use_input_stats=False")
    check_number("momentum", momentum, minimum=0.0, maximum=1.0)
    check_number("eps", eps, positive=True)
    check_number("negative_slope", negative_slope)
    spatial = math.prod(input.shape[2:])
    if use_input_stats and spatial == 1:
        raise ValueError("Expected more than 1 spatial element when training, got input size "
                         f"{input.size()}")

    if not use_input_stats:  # normalized by the running statistics: batch norm in eval mode
        return batch_norm_leaky_relu(input, running_mean, running_var, weight, bias, False,
                                     momentum, eps, negative_slope)
    if _backend.use_reference(input) or input.numel() == 0:
        return _reference.instance_norm_leaky_relu(input, running_mean, running_var, weight,
                                                   bias, True, momentum, eps, negative_slope)

    params_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    weight, bias = _as_dtype(weight, params_dtype), _as_dtype(bias, params_dtype)
    batch, channels = input.shape[:2]
    if input.device.type == "cpu":
        # The CPU kernels keep statistics per sample and channel themselves, in either layout.
        output, means, variances = _ops.batch_norm_leaky_relu(
            input, None, None, weight, bias, True, 0.0, float(eps), float(negative_slope),
            instance=True)
    elif _stored_channels_last(input):
        # split, not indexing: its backward concatenates the samples' gradients once (an
        # index's would write each into a zero tensor of the whole batch, in NCHW).
        samples = input.split(1) if batch > 1 else (input,)
        per_sample = [_ops.batch_norm_leaky_relu(sample, None, None, weight, bias, True, 0.0,
                                                 float(eps), float(negative_slope))
                      for sample in samples]
        output = per_sample[0][0] if batch == 1 else torch.cat([p[0] for p in per_sample])
        means = torch.cat([p[1] for p in per_sample])
        variances = torch.cat([p[2] for p in per_sample])
    else:
        # One sample of N * C channels: a view of contiguous input (torch copies otherwise).
        samples = input.reshape(1, batch * channels, *input.shape[2:])
        output, means, variances = _ops.batch_norm_leaky_relu(
            samples, None, None, None if weight is None else weight.repeat(batch),
            None if bias is None else bias.repeat(batch), True, 0.0, float(eps),
            float(negative_slope))
        output = output.view(input.shape)
    if running_mean is not None:
        with torch.no_grad():
            unbiased = variances * (spatial / (spatial - 1))
            running_mean.lerp_(means.view(batch, channels).mean(0).to(running_mean.dtype),
                               momentum)
            running_var.lerp_(unbiased.view(batch, channels).mean(0).to(running_var.dtype),
                              momentum)
    return output


def _stored_channels_last(input):
    """Dense channels-last 2d or 3d input (not also channels-first: one channel, or 1x1 maps)."""
    if input.is_contiguous() or input.dim() == 3:
        return False
    layout = torch.channels_last if input.dim() == 4 else torch.channels_last_3d
    return input.is_contiguous(memory_format=layout)
