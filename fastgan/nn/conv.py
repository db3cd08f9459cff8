"""ConvTranspose2d with an optional activation fused into the kernel's epilogue."""
import torch

from fastgan.ops import conv_transpose2d
from fastgan.ops._checks import check_number
from fastgan.ops.conv_transpose2d import ACTIVATIONS


class ConvTranspose2d(torch.nn.ConvTranspose2d):
    """nn.ConvTranspose2d (same arguments, parameters, initialization and state_dict) followed by
    `activation`: None, "relu", "leaky_relu" (with `negative_slope`) or "tanh"."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, padding_mode="zeros",
                 device=None, dtype=None, activation=None, negative_slope=0.2):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        check_number("negative_slope", negative_slope)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, output_padding,
                         groups, bias, dilation, padding_mode, device=device, dtype=dtype)
        self.activation = activation
        self.negative_slope = float(negative_slope)

    def forward(self, input, output_size=None):
        if self.padding_mode != "zeros":
            raise ValueError("Only `zeros` padding mode is supported for ConvTranspose2d")
        output_padding = self._output_padding(input, output_size, self.stride, self.padding,
                                              self.kernel_size, 2, self.dilation)
        return conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding,
                                output_padding, self.groups, self.dilation, self.activation,
                                self.negative_slope)

    def extra_repr(self):
        if self.activation is None:
            return super().extra_repr()
        slope = f", negative_slope={self.negative_slope}" if self.activation == "leaky_relu" else ""
        return f"{super().extra_repr()}, activation={self.activation!r}{slope}"
