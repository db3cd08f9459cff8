"""The machine-tuned thresholds of fastgan's Python side, in one place. Each was chosen from
timings of the candidates it decides between, and keeps the reason it holds and the command
that measures those candidates again; retune it only from that command's output.

fastgan.ops.conv2d computes each part of a convolution (forward, input gradient, weight
gradient) by torch's kernels (oneDNN) or by fastgan's transposed-convolution kernels, whichever
is faster for the shape (conv2d._own_kernels). Re-derive every CONV2D_ threshold with
`python benchmarks/run.py --only r1`: its table of the discriminator's convolutions times each
part by both engines, next to the engine conv2d chooses (float32, 2 threads by default)."""

# oneDNN blocks its work over output pixels, and on maps of up to this many output pixels...
CONV2D_SMALL_MAP_PIXELS = 16
# ...with a reduction (C_in * kH * kW) this long runs at about 60% of fastgan's GEMM speed.
CONV2D_LONG_REDUCTION = 2048
# oneDNN computes the input gradient of images of up to this many channels at a fraction of
# its usual rate.
CONV2D_FEW_INPUT_CHANNELS = 4
# Stride-2 4x4 layers that take the kernels' Winograd path (25/64 of the multiply-adds) are
# faster by fastgan's kernels in all three parts from this many channels each way on.
CONV2D_WINOGRAD_CHANNELS = 128
