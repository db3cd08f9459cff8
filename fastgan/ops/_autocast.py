"""torch.autocast for fastgan's ops, so that each op follows the policy torch applies to its
counterpart:
- conv_transpose2d, like F.conv_transpose2d, runs in the autocast dtype: kernels registered for
  the dispatcher's AutocastCPU and AutocastCUDA keys cast its floating-point operands to it
  (float64 ones are left alone, as torch does). Where the device's kernels lack the dtype (its
  CPU kernels are float32/float64 only) it runs torch's own transposed convolution in that
  dtype, with the activation as a separate op (fastgan's reference), so its results are torch's.
  The casts are ordinary differentiable ops, so autograd, double backward and the fake kernels
  (torch.compile) work unchanged under autocast.
- batch_norm_leaky_relu, like F.batch_norm, runs in its input's dtype with float32 statistics,
  weight and bias: nothing is cast. Its kernels take float32, float64, bfloat16 and float16 on
  both devices, so it has no autocast kernel: the dispatcher's autocast fallthrough runs it as is.
"""
import torch

from fastgan import _reference

CONV_TRANSPOSE2D_DTYPES = {
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
            if input.dtype in CONV_TRANSPOSE2D_DTYPES[device_type]:
                return torch.ops.fastgan.conv_transpose2d(
                    input, weight, bias, stride, padding, output_padding, groups, dilation,
                    activation, negative_slope)
            return _reference.conv_transpose2d(
                input, weight, bias, stride, padding, output_padding, groups, dilation,
                None if activation == "none" else activation, negative_slope)
    return kernel


def register():
    for device_type in CONV_TRANSPOSE2D_DTYPES:
        torch.library.impl("fastgan::conv_transpose2d", _autocast_key(device_type),
                           _conv_transpose2d(device_type))
