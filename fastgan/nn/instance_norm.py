"""InstanceNorm followed by LeakyReLU (or ReLU, negative_slope=0), fused: CycleGAN's and
pix2pix's normalization layers."""
from torch.nn.modules.instancenorm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d

from fastgan._checks import check_number
from fastgan.ops import instance_norm_leaky_relu


class _InstanceNormLeakyReLU:
    """Mixed into nn.InstanceNorm1d/2d/3d: their arguments, defaults (affine=False,
    track_running_stats=False), parameters, buffers, state_dict keys, input checks and
    unbatched input, followed by leaky_relu(negative_slope). As torch's, affine=True with
    bias=False learns a weight and no bias."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False,
                 track_running_stats=False, negative_slope=0.2, device=None, dtype=None, *,
                 bias=True):
        check_number("negative_slope", negative_slope)
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device,
                         dtype=dtype)
        if affine and not bias:
            # What torch's own bias=False does, here also for the torch releases without it.
            self.register_parameter("bias", None)
        self.negative_slope = float(negative_slope)

    def _apply_instance_norm(self, input):
        return instance_norm_leaky_relu(
            input, self.running_mean, self.running_var, self.weight, self.bias,
            self.training or not self.track_running_stats,
            self.momentum if self.momentum is not None else 0.0, self.eps, self.negative_slope)

    def extra_repr(self):
        return f"{super().extra_repr()}, negative_slope={self.negative_slope}"


class InstanceNormLeakyReLU1d(_InstanceNormLeakyReLU, InstanceNorm1d):
    """nn.InstanceNorm1d + nn.LeakyReLU(negative_slope) on (N, C, L) or (C, L) input."""


class InstanceNormLeakyReLU2d(_InstanceNormLeakyReLU, InstanceNorm2d):
    """nn.InstanceNorm2d + nn.LeakyReLU(negative_slope) on (N, C, H, W) or (C, H, W) input."""


class InstanceNormLeakyReLU3d(_InstanceNormLeakyReLU, InstanceNorm3d):
    """nn.InstanceNorm3d + nn.LeakyReLU(negative_slope) on (N, C, D, H, W) or (C, D, H, W)
    input."""
