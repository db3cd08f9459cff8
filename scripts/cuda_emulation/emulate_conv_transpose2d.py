"""Runs csrc/cuda/conv_transpose2d_kernel.cu's kernels on the CPU and checks them against the
pure-PyTorch reference: a check of their index logic for machines without a GPU (not a
substitute for running them on one; see prelude.h for what the emulation models).

The .cu file is compiled (see emulation.py) as two CPU extensions: one for a pre-sm_80 device
(the FMA paths: float64, float32, float16) and one for sm_80 (the WMMA paths: float16, bfloat16,
TF32 with exact rounding). Slow (every block is 256 threads): about 10 minutes on 2 busy cores.

    python scripts/cuda_emulation/emulate_conv_transpose2d.py [--quick]
"""
import argparse
import os
import sys
import time

import emulation

sys.path[:0] = [emulation.ROOT, os.path.join(emulation.ROOT, "tests")]

import torch  # noqa: E402

from fastgan import _reference  # noqa: E402
from test_conv_transpose2d import CASES as TEST_CASES  # noqa: E402

# (C_in, C_out, kernel, stride, padding, output_padding, groups, dilation, (H, W)): the test
# suite's cases, plus geometries aimed at the GEMMs' edges.
CASES = {
    **TEST_CASES,
    "kernel1_stride2": (3, 4, 1, 2, 0, 1, 1, 1, (3, 3)),
    "large_padding": (3, 4, 5, 3, 4, 0, 1, 2, (4, 5)),
}
QUICK = ["dcgan", "non_square", "gemm_tiles", "phases_without_taps"]
LAYOUTS = ["contiguous", "channels_last", "non_contiguous"]
# Against a float64 reference from the same values. float16 / bfloat16: the result is rounded
# and the backward reads activation' from it.
TOLERANCES = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-4, 1e-4),
              torch.float16: (5e-2, 5e-2), torch.bfloat16: (2.5e-1, 2.5e-1)}


BINDINGS = """
  m.def("forward", &conv_transpose2d);
  m.def("backward", &conv_transpose2d_backward);
  m.def("activation_double_backward", &conv_transpose2d_activation_double_backward);
  m.def("set_multiprocessors", [](int count) { emulated_multiprocessors = count; });
"""


def build(arch):
    return emulation.build("conv_transpose2d_kernel", BINDINGS, arch)


def pair(v):
    return list(v) if isinstance(v, (tuple, list)) else [v, v]


def make(shape, dtype, layout, generator):
    if layout == "non_contiguous":
        wide = list(shape)
        wide[-1] *= 2
        return torch.randn(wide, generator=generator, dtype=torch.float64)[..., ::2].to(dtype)
    x = torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)
    return x.to(memory_format=torch.channels_last) if layout == "channels_last" else x


class Checker:
    def __init__(self, ops):
        self.ops = ops
        self.failures = []

    def close(self, what, actual, expected, dtype):
        rtol, atol = TOLERANCES[dtype]
        try:
            torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=atol)
        except AssertionError as error:
            self.failures.append(what)
            print("FAIL", what, " ".join(str(error).split("\n")[:4]))

    def run(self, name, case, batch, dtype, layout, activation, bias, seed=0):
        c_in, c_out, kernel, stride, padding, output_padding, groups, dilation, (h, w) = case
        geometry = [pair(stride), pair(padding), pair(output_padding), groups, pair(dilation)]
        generator = torch.Generator().manual_seed(seed)
        x = make((batch, c_in, h, w), dtype, layout, generator)
        weight = make((c_in, c_out // groups, *pair(kernel)), dtype, "contiguous", generator)
        b = make((c_out,), dtype, "contiguous", generator) if bias else None
        act = activation or "none"
        what = f"{name} batch={batch} {dtype} {layout} {act} bias={bias}"

        out = self.ops.forward(x, weight, b, *geometry, act, 0.2)
        leaves = [t.double().requires_grad_() for t in (x, weight, b) if t is not None]
        expected = _reference.conv_transpose2d(*leaves, *([] if bias else [None]), *geometry,
                                               activation, 0.2)
        if out.shape != expected.shape:
            self.failures.append(what)
            print("FAIL", what, "shape", tuple(out.shape), tuple(expected.shape))
            return
        self.close(what + " output", out, expected, dtype)
        if layout == "channels_last" and not x.is_contiguous():
            assert out.is_contiguous(memory_format=torch.channels_last), what

        grad_output = make(out.shape, dtype, layout, generator)
        expected_grads = torch.autograd.grad(expected, leaves, grad_output.double())
        result = out if activation else None
        grads = self.ops.backward(grad_output, x, weight, result, *geometry, act, 0.2,
                                  [True, True, bias])
        for label, actual, reference in zip(["grad_input", "grad_weight", "grad_bias"], grads,
                                            expected_grads):
            self.close(f"{what} {label}", actual, reference, dtype)
        only_weight = self.ops.backward(grad_output, x, weight, result, *geometry, act, 0.2,
                                        [False, True, False])
        assert only_weight[0].numel() == 0 and only_weight[2].numel() == 0, what
        assert torch.equal(only_weight[1], grads[1]), what + ": grad_weight not deterministic"

    def activation_double_backward(self):
        generator = torch.Generator().manual_seed(1)
        shape = (2, 3, 4, 5)
        result = torch.randn(shape, generator=generator, dtype=torch.float64).tanh()
        result = result.to(memory_format=torch.channels_last)
        grad_pre = torch.randn(shape, generator=generator, dtype=torch.float64)
        grad_output = torch.randn(shape, generator=generator, dtype=torch.float64)
        derivatives = {
            "relu": ((result > 0).double(), torch.zeros_like(result)),
            "leaky_relu": (torch.where(result > 0, torch.ones_like(result),
                                       torch.full_like(result, 0.2)), torch.zeros_like(result)),
            "tanh": (1 - result * result, -2 * result),
        }
        for activation, (first, second) in derivatives.items():
            a, b = self.ops.activation_double_backward(grad_pre, grad_output, result, activation,
                                                       0.2, [True, True])
            self.close(f"double backward {activation} (grad_output)", a, grad_pre * first,
                       torch.float64)
            self.close(f"double backward {activation} (result)", b,
                       grad_pre * grad_output * second, torch.float64)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few cases only")
    args = parser.parse_args()
    cases = {name: CASES[name] for name in QUICK} if args.quick else CASES
    start = time.time()
    failures = []

    fma = Checker(build(700))
    for name, case in cases.items():
        for dtype in (torch.float64, torch.float32):
            for layout in LAYOUTS:
                for activation in (None, "tanh", "leaky_relu"):
                    fma.run(name, case, 2, dtype, layout, activation, True)
            fma.run(name, case, 3, dtype, "contiguous", "relu", False)
        fma.run(name, case, 2, torch.float16, "channels_last", "tanh", True)
        print(f"FMA paths: {name} ({time.time() - start:.0f} s)", flush=True)
    fma.run("empty batch", CASES["dcgan"], 0, torch.float64, "contiguous", "tanh", True)
    fma.run("several row tiles", (3, 4, 4, 2, 1, 0, 1, 1, (16, 16)), 5, torch.float64,
            "channels_last", "tanh", True)
    for multiprocessors in (1, 7, 132):  # grad_weight's split count follows the device size
        fma.ops.set_multiprocessors(multiprocessors)
        fma.run(f"gemm_tiles on {multiprocessors} SMs", CASES["gemm_tiles"], 3, torch.float64,
                "contiguous", None, True)
    fma.activation_double_backward()
    failures += fma.failures

    wmma = Checker(build(800))
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        for name, case in cases.items():
            for dtype in (torch.float32, torch.float16, torch.bfloat16):
                for layout in ("contiguous", "channels_last"):
                    wmma.run(name, case, 2, dtype, layout, "tanh", True)
            print(f"WMMA paths: {name} ({time.time() - start:.0f} s)", flush=True)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    failures += wmma.failures

    print(f"{len(failures)} failures ({time.time() - start:.0f} s)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
