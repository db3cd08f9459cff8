"""BatchNorm + LeakyReLU whose batch statistics span every process of a torch.distributed group
(data-parallel training with DDP), and `convert_sync_batchnorm` to switch a model over.

The synced layer is a composition of differentiable pieces: per-rank statistics, two
all-reduces that autograd differentiates (the backward of a sum over the ranks is again that
sum), and the normalization + activation with the global statistics
as inputs it differentiates through. So the backward all-reduces the per-channel sums it needs
(of dy and dy * xhat, reaching the statistics) and second-order gradients (R1 under DDP) come
from autograd, collectives included."""
import torch
import torch.distributed as dist
from torch.nn.modules.batchnorm import _BatchNorm

from fastgan import _backend
from fastgan.nn.batch_norm import _BatchNormLeakyReLU

_ops = torch.ops.fastgan if _backend.extension is not None else None


def _stats_dtype(input):
    return torch.float64 if input.dtype == torch.float64 else torch.float32


def _per_channel(vector, input):
    """A (C,) vector shaped to broadcast over an (N, C, ...) input."""
    return vector.view(1, -1, *([1] * (input.dim() - 2)))


class _AllReduceSum(torch.autograd.Function):
    """The sum over the group's ranks; its gradient is the same sum of the gradients, so it is
    differentiable to any order."""

    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        return _AllReduceSum.apply(grad_total, ctx.group), None


def global_statistics(input, group):
    """(mean, biased variance, count) per channel over the inputs of every rank in `group`
    (None: this process alone), differentiable w.r.t. `input`. Ranks may hold different counts,
    zero included. Each rank contributes its own (count, mean, sum of squared deviations),
    combined exactly (Chan et al.), so a large mean does not cancel the variance away."""
    reduce = (lambda tensor: tensor) if group is None else (
        lambda tensor: _AllReduceSum.apply(tensor, group))
    dims = [0, *range(2, input.dim())]
    count = input.numel() // input.shape[1] if input.shape[1] else 0
    values = input.to(_stats_dtype(input))
    if count:
        local_var, local_mean = torch.var_mean(values, dims, correction=0)
    else:  # zeros that still belong to the graph, so every rank's backward looks alike
        local_var = local_mean = values.sum(dims)
    totals = reduce(torch.cat([local_mean * count, local_mean.new_tensor([count])]))
    total_count = totals[-1]
    mean = totals[:-1] / total_count
    squared_deviations = reduce((local_var + (local_mean - mean) ** 2) * count)
    return mean, squared_deviations / total_count, total_count


def _normalize_reference(input, mean, var, weight, bias, eps, negative_slope):
    """leaky_relu(batch_norm(input) with the given statistics), in torch ops: differentiable
    w.r.t. every tensor argument, to any order."""
    scale = (var + eps).rsqrt()
    if weight is not None:
        scale = scale * weight
    output = (input - _per_channel(mean, input)) * _per_channel(scale, input)
    if bias is not None:
        output = output + _per_channel(bias, input)
    return torch.nn.functional.leaky_relu(output.to(input.dtype), negative_slope)


class _FusedNormalize(torch.autograd.Function):
    """_normalize_reference with fastgan's fused kernels: the eval-mode forward (one pass with
    the statistics given) and its backward, which yields grad_output * activation' * weight *
    invstd plus the per-channel sums of dy and dy * xhat (as the weight's and bias's gradients);
    the statistics' gradients follow from those sums. A backward that must itself be
    differentiable (create_graph=True) recomputes _normalize_reference and differentiates it."""

    @staticmethod
    def forward(ctx, input, mean, var, weight, bias, eps, negative_slope):
        stats_dtype = mean.dtype
        kernel_weight = (weight.to(stats_dtype) if weight is not None
                         else mean.new_ones(mean.shape))
        kernel_bias = bias.to(stats_dtype) if bias is not None else mean.new_zeros(mean.shape)
        output, _, _ = _ops.batch_norm_leaky_relu(input, mean, var, kernel_weight, kernel_bias,
                                                  False, 0.0, eps, negative_slope)
        ctx.save_for_backward(input, mean, var, weight, bias, kernel_weight, kernel_bias)
        ctx.config = (eps, negative_slope)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        input, mean, var, weight, bias, kernel_weight, kernel_bias = ctx.saved_tensors
        eps, negative_slope = ctx.config
        needs = ctx.needs_input_grad[:5]
        if torch.is_grad_enabled():
            return (*_differentiable_backward(grad_output, (input, mean, var, weight, bias),
                                              needs, eps, negative_slope), None, None)
        grad_input, sum_dy_xhat, sum_dy = _ops.batch_norm_leaky_relu_backward(
            grad_output, input, mean, var, kernel_weight, kernel_bias, False, eps,
            negative_slope, [needs[0], True, True])
        # output = act(weight * (input - mean) * (var + eps) ** -0.5 + bias)
        grad_mean = -kernel_weight * (var + eps).rsqrt() * sum_dy if needs[1] else None
        grad_var = -0.5 * kernel_weight / (var + eps) * sum_dy_xhat if needs[2] else None
        grad_weight = sum_dy_xhat.to(weight.dtype) if needs[3] else None
        grad_bias = sum_dy.to(bias.dtype) if needs[4] else None
        return (grad_input if needs[0] else None, grad_mean, grad_var, grad_weight, grad_bias,
                None, None)


def _differentiable_backward(grad_output, tensors, needs, eps, negative_slope):
    with torch.enable_grad():
        # Aliases: partial derivatives only (mean and var depend on input upstream, which the
        # caller's backward accounts for), still connected to the originals for the next order.
        tensors = [None if tensor is None else tensor.view_as(tensor) for tensor in tensors]
        wanted = [tensor for tensor, need in zip(tensors, needs) if need]
        output = _normalize_reference(*tensors, eps, negative_slope)
        grads = iter(torch.autograd.grad(output, wanted, grad_output, create_graph=True))
    return tuple(next(grads) if need else None for need in needs)


def _normalize(input, mean, var, weight, bias, eps, negative_slope):
    if _backend.use_reference(input):
        return _normalize_reference(input, mean, var, weight, bias, eps, negative_slope)
    return _FusedNormalize.apply(input, mean, var, weight, bias, eps, negative_slope)


def sync_batch_norm_leaky_relu(input, running_mean, running_var, weight, bias, momentum, eps,
                               negative_slope, group):
    """Training-mode batch_norm_leaky_relu with the batch statistics of every rank in `group`
    (None: this process only); the running statistics are updated with the global mean and
    the unbiased global variance, the same on every rank."""
    mean, var, count = global_statistics(input, group)
    if running_mean is not None:
        with torch.no_grad():
            unbiased = var * (count / (count - 1).clamp(min=1))
            running_mean.lerp_(mean.to(running_mean.dtype), momentum)
            running_var.lerp_(unbiased.to(running_var.dtype), momentum)
    return _normalize(input, mean, var, weight, bias, eps, negative_slope)


def _sync_group(process_group):
    """The group to synchronize over, or None when this process is alone."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    group = process_group if process_group is not None else dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


class SyncBatchNormLeakyReLU(_BatchNormLeakyReLU):
    """BatchNormLeakyReLU1d/2d/3d (any input (N, C, ...)) whose training-mode statistics span the
    processes of `process_group` (default: the whole world), as nn.SyncBatchNorm. In eval mode,
    outside a process group or in a group of one it is the unsynced fused layer. Works with the
    gloo (CPU) and NCCL (CUDA) backends; negative_slope=1 is plain synced BatchNorm."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, negative_slope=0.2, process_group=None, device=None,
                 dtype=None, *, bias=True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         negative_slope, device=device, dtype=dtype, bias=bias)
        self.process_group = process_group

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input):
        group = _sync_group(self.process_group) if self.training else None
        if group is None:
            return super().forward(input)
        self._check_input_dim(input)
        average_factor = self._count_batch()
        track = self.track_running_stats
        return sync_batch_norm_leaky_relu(
            input, self.running_mean if track else None, self.running_var if track else None,
            self.weight, self.bias, average_factor, self.eps, self.negative_slope, group)


def convert_sync_batchnorm(module, process_group=None):
    """Replaces every BatchNorm layer of `module` by a SyncBatchNormLeakyReLU sharing its
    parameters and buffers, as nn.SyncBatchNorm.convert_sync_batchnorm does: the fused
    BatchNormLeakyReLU layers keep their negative_slope; plain nn.BatchNorm*d (and
    nn.SyncBatchNorm) get negative_slope=1, plain BatchNorm, which unlike nn.SyncBatchNorm also
    runs on the CPU. Returns `module` converted in place, or the new layer if `module` is one."""
    from fastgan.nn import registry  # it imports this module

    converted = module
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNormLeakyReLU):
        fused = registry.fused_entry(module)
        activation = fused.torch_activation(module) if fused is not None else None
        converted = registry.SYNC_BATCH_NORM.fuse(module, activation,
                                                  process_group=process_group)
        if hasattr(module, "qconfig"):
            converted.qconfig = module.qconfig
    for name, child in module.named_children():
        converted.add_module(name, convert_sync_batchnorm(child, process_group))
    return converted
