"""BatchNorm followed by LeakyReLU (or ReLU, negative_slope=0), fused into one kernel."""
from torch.nn.modules.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, _BatchNorm

from fastgan.ops import batch_norm_leaky_relu
from fastgan._checks import check_number


class _BatchNormLeakyReLU(_BatchNorm):
    """nn.BatchNorm's parameters, buffers, state_dict keys and running-statistics semantics
    (momentum=None is a cumulative average), followed by leaky_relu(negative_slope). As torch's,
    affine=True with bias=False learns a weight and no bias."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, negative_slope=0.2, device=None, dtype=None, *,
                 bias=True):
        check_number("negative_slope", negative_slope)
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device,
                         dtype=dtype)
        if affine and not bias:
            # What torch's own bias=False does, here also for the torch releases without it.
            self.register_parameter("bias", None)
        self.negative_slope = float(negative_slope)

    def _count_batch(self):
        """Counts a training batch; returns the running statistics' averaging factor."""
        average_factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                average_factor = 1.0 / float(self.num_batches_tracked)
        return average_factor

    def forward(self, input):
        self._check_input_dim(input)
        average_factor = self._count_batch()
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        update_or_use_running = not self.training or self.track_running_stats
        return batch_norm_leaky_relu(
            input,
            self.running_mean if update_or_use_running else None,
            self.running_var if update_or_use_running else None,
            self.weight, self.bias, use_batch_stats, average_factor, self.eps,
            self.negative_slope)

    def extra_repr(self):
        return f"{super().extra_repr()}, negative_slope={self.negative_slope}"


class BatchNormLeakyReLU1d(_BatchNormLeakyReLU):
    """nn.BatchNorm1d + nn.LeakyReLU(negative_slope) on (N, C) or (N, C, L) input."""

    _check_input_dim = BatchNorm1d._check_input_dim


class BatchNormLeakyReLU2d(_BatchNormLeakyReLU):
    """nn.BatchNorm2d + nn.LeakyReLU(negative_slope) on (N, C, H, W) input."""

    _check_input_dim = BatchNorm2d._check_input_dim


class BatchNormLeakyReLU3d(_BatchNormLeakyReLU):
    """nn.BatchNorm3d + nn.LeakyReLU(negative_slope) on (N, C, D, H, W) input."""

    _check_input_dim = BatchNorm3d._check_input_dim
