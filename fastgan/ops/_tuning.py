"""The fixed rules of fastgan's Python side, in one place: which engine, torch's kernels (oneDNN)
or fastgan's, computes each part of a CPU convolution when fastgan.backends.cpu.benchmark is off
(with it on, the dispatch times both: fastgan/ops/_dispatch.py). Each rule picks fastgan's kernels
only where they beat oneDNN on every machine measured, keeps the reason it holds, and is
re-derived from `python benchmarks/run.py --only convt r1`, whose tables time each part by both
engines (float32, 2 threads by default)."""

# conv_transpose2d: contiguous (NCHW) operands with this few output channels take the kernels'
# planar path (a DCGAN generator's last layer), 1.4-2x faster than oneDNN in every part.
CONV_TRANSPOSE2D_FEW_OUTPUT_CHANNELS = 16

# conv2d: oneDNN blocks its work over output pixels, and on maps of up to this many output
# pixels...
CONV2D_SMALL_MAP_PIXELS = 16
# ...with a reduction (C_in * kH * kW) this long runs at about 60% of fastgan's GEMM speed.
CONV2D_LONG_REDUCTION = 2048
# oneDNN computes the input gradient of images of up to this many channels at a fraction of
# its usual rate.
CONV2D_FEW_INPUT_CHANNELS = 4

# conv2d: 3x3 stride-1 convolutions (padding 0 or 1) with at least this many channels on each
# side take the kernels' Winograd path, F(4x4, 3x3), where fastgan.backends.cpu.allow_winograd
# is on, in every part from this many 4x4 output tiles in the batch: 1.0-1.7x oneDNN's speed
# per part at 64 tiles (a ResNet generator's 256-channel residual blocks at 32 x 32 pixels),
# 1.4-2.1x at 256 (`python benchmarks/run.py --only cyclegan`, its convolution table); slower
# than oneDNN at 16.
CONV2D_WINOGRAD_CHANNELS = 64
CONV2D_WINOGRAD_TILES = 64
