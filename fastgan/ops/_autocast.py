"""torch.autocast for fastgan's ops: kernels registered for the dispatcher's AutocastCPU and
AutocastCUDA keys, so that each op follows the policy torch applies to its counterpart:
- conv_transpose2d, like F.conv_transpose2d, runs in the autocast dtype: its floating-point
  operands are cast to it (float64 ones are left alone, as torch does);
- batch_norm_leaky_relu, like F.batch_norm, runs in its input's dtype with float32 statistics,
  weight and bias: nothing is cast.
Where the device's kernels lack the dtype (the CPU kernels are float32/float64 only):
- conv_transpose2d runs torch's own transposed convolution in that dtype, with the activation as
  a separate op (fastgan's reference), so its results are torch's;
- batch_norm_leaky_relu computes in float32 with the fused kernel and rounds its output to the
  input's dtype (torch's low-precision batch norm also computes in float32).
The casts are ordinary differentiable ops, so autograd, double backward and the fake kernels
(torch.compile) work unchanged under autocast.
"""
import torch

from fastgan import _reference

KERNEL_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}


def _autocast_key(device_type):
    return "Autocast" + device_type.upper()


def _autocast_off(device_type):
    """Calls made inside an autocast kernel skip autocast (as torch.library.register_autocast
    does), while autocast's state and dtype stay readable."""
    key = getattr(torch._C.DispatchKey, _autocast_key(device_type))
    return torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key))


def _cast(tensor, dtype, device_type):
    """torch's autocast cast: floating-point tensors on the device, except float64."""
    if (tensor is None or not tensor.is_floating_point() or tensor.dtype == torch.float64
            or tensor.device.type != device_type):
        return tensor
    return tensor.to(dtype)


def _conv_transpose2d(device_type):
    def kernel(input, weight, bias, stride, padding, output_padding, groups, dilation,
               activation, negative_slope):
        dtype = torch.get_autocast_dtype(device_type)
        input, weight, bias = (_cast(t, dtype, device_type) for t in (input, weight, bias))
        with _autocast_off(device_type):
            if input.dtype in KERNEL_DTYPES[device_type]:
                return torch.ops.fastgan.conv_transpose2d(
                    input, weight, bias, stride, padding, output_padding, groups, dilation,
                    activation, negative_slope)
            return _reference.conv_transpose2d(
                input, weight, bias, stride, padding, output_padding, groups, dilation,
                None if activation == "none" else activation, negative_slope)
    return kernel


def _batch_norm_leaky_relu(device_type):
    def kernel(input, mean, var, weight, bias, training, eps, negative_slope):
        with _autocast_off(device_type):
            if input.dtype in KERNEL_DTYPES[device_type]:
                return torch.ops.fastgan.batch_norm_leaky_relu(
                    input, mean, var, weight, bias, training, eps, negative_slope)
            output, batch_mean, batch_var = torch.ops.fastgan.batch_norm_leaky_relu(
                input.float(), mean, var, weight, bias, training, eps, negative_slope)
            return output.to(input.dtype), batch_mean, batch_var
    return kernel


def register():
    for device_type in KERNEL_DTYPES:
        key = _autocast_key(device_type)
        torch.library.impl("fastgan::conv_transpose2d", key, _conv_transpose2d(device_type))
        torch.library.impl("fastgan::batch_norm_leaky_relu", key,
                           _batch_norm_leaky_relu(device_type))
