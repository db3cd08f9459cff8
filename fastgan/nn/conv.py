"""ConvTranspose2d with an optional activation fused into the kernel's epilogue, and Conv2d with a
fast second-order backward."""
import torch
import torch.nn.functional as F

from fastgan._checks import check_choice, check_number
from fastgan.ops import conv2d, conv_transpose2d
from fastgan.ops.conv_transpose2d import ACTIVATIONS


class ConvTranspose2d(torch.nn.ConvTranspose2d):
    """nn.ConvTranspose2d (same arguments, parameters, initialization and state_dict) followed by
    `activation`: None, "relu", "leaky_relu" (with `negative_slope`) or "tanh"."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, padding_mode="zeros",
                 device=None, dtype=None, activation=None, negative_slope=0.2):
        check_choice("activation", activation, ACTIVATIONS)
        check_number("negative_slope", negative_slope)
        if isinstance(padding, str):
            # nn.ConvTranspose2d stores such a string and fails only in its forward.
            raise ValueError(f"padding={padding!r}: a transposed convolution takes integer "
                             f"padding only")
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


class Conv2d(torch.nn.Conv2d):
    """nn.Conv2d (same arguments, parameters, initialization and state_dict) whose second-order
    backward, the one a gradient penalty differentiates, is fastgan.ops.conv2d's fast one.

    It computes channels-last: its weight is stored so and batched input is converted (a no-op
    after the first such layer), because oneDNN convolves NHWC without the layout reorders that
    NCHW costs it in every forward, backward and double backward (NHWC is also the native layout
    of cuDNN's tensor-core convolutions). The values are nn.Conv2d's, for every padding and
    padding_mode nn.Conv2d takes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.to(memory_format=torch.channels_last)

    def forward(self, input):
        input, padding = self._padded(input)
        if input.dim() == 4:
            input = input.contiguous(memory_format=torch.channels_last)
        return conv2d(input, self.weight, self.bias, self.stride, padding, self.dilation,
                      self.groups)

    def _padded(self, input):
        """(input, integer padding for conv2d), padded as nn.Conv2d pads. String padding and
        padding modes other than "zeros" become integer padding where that is the same zeros
        on both sides, and an F.pad of the input otherwise ("same" may pad one side more)."""
        if self.padding_mode == "zeros" and not isinstance(self.padding, str):
            return input, self.padding
        left, right, top, bottom = self._reversed_padding_repeated_twice
        if self.padding_mode == "zeros" and left == right and top == bottom:
            return input, (top, left)
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        return F.pad(input, self._reversed_padding_repeated_twice, mode=mode), 0
