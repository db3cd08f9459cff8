"""Runs csrc/cuda/gradient_penalty_kernel.cu's kernels on the CPU (see emulation.py and
prelude.h) and checks the penalty and its derivative against float64 from the same values, in
every dtype the CUDA kernels take (float16 and bfloat16 too, which the CPU kernels reject), then
runs the R1 tests with the emulated kernels in place of the CPU ones: a check of the kernels'
reductions and index logic for machines without a GPU, not a substitute for running them on one.
A few minutes on 2 cores (a thread per emulated CUDA thread).

    python scripts/cuda_emulation/emulate_gradient_penalty.py [-- pytest arguments]
"""
import argparse
import os
import sys

import emulation

sys.path[:0] = [emulation.ROOT, os.path.join(emulation.ROOT, "tests")]

import torch  # noqa: E402

import fastgan  # noqa: E402,F401 (registers the ops whose CPU kernels run_tests replaces)
from conftest import make_input  # noqa: E402

BINDINGS = """
  m.def("forward", &gradient_penalty_forward);
  m.def("backward", &gradient_penalty_backward);
"""
SCALE = 3.5
# Sums accumulate in float (double for double); the derivative rounds once to the input's dtype.
SUM_RTOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5}
# One block, several blocks, exactly the 1024 partial sums, and more elements than 1024 blocks
# of 256 threads take in one stride (the grid-stride loop).
SHAPES = [(1, 1), (3, 2, 4, 5), (5, 7), (2, 300), (4, 3, 64, 33), (4, 16, 16, 16),
          (2, 3, 210, 211)]

# The R1 tests that go through the penalty op, without those about the CPU kernels' dtypes and
# argument errors, or torch.compile.
TESTS = [os.path.join(emulation.ROOT, "tests", "test_r1_penalty.py"),
         "-k", "not opcheck and not errors and not cuda"]


class Checker:
    def __init__(self, ops):
        self.ops = ops
        self.failures = []

    def check(self, what, ok, detail=""):
        if not ok:
            self.failures.append(what)
            print("FAIL", what, detail)

    def run(self, shape, dtype, layout):
        what = f"{tuple(shape)} {dtype} {layout}"
        grad = make_input(shape, dtype, layout=layout)
        exact = grad.double()
        penalty = self.ops.forward(grad, SCALE)
        expected = SCALE * exact.square().sum() / shape[0]
        accumulation = torch.float64 if dtype == torch.float64 else torch.float32
        self.check(f"penalty {what}", penalty.dtype == accumulation and torch.allclose(
            penalty.double(), expected, rtol=SUM_RTOL[dtype], atol=0),
                   f"{penalty.item()} against {expected.item()}")
        grad_out = torch.tensor(0.75, dtype=penalty.dtype)
        result = self.ops.backward(grad_out, grad, SCALE)
        expected = 2 * SCALE / shape[0] * 0.75 * exact
        # Within one rounding to dtype, relative to the element (absolute below the smallest
        # normal number, where the spacing is fixed); float32 and float64 also round the factor.
        finfo = torch.finfo(dtype)
        rtol = (2 if dtype.itemsize < 4 else 4) * finfo.eps
        dense = grad if layout != "non_contiguous" else grad.contiguous()
        self.check(f"derivative {what}", result.dtype == dtype and
                   result.stride() == dense.stride() and
                   torch.allclose(result.double(), expected, rtol=rtol, atol=finfo.tiny))

    def empty(self):
        for shape in ((0, 3), (2, 0)):
            grad = torch.zeros(shape)
            penalty = self.ops.forward(grad, SCALE)
            # No samples: NaN, as torch's mean of nothing; samples of no elements: 0.
            value_ok = penalty.isnan().item() if shape[0] == 0 else penalty.item() == 0.0
            self.check(f"empty {shape}", value_ok and
                       self.ops.backward(torch.tensor(1.0), grad, SCALE).shape == shape)


def run_tests(ops, pytest_args):
    """The R1 tests on `pytest_args` with the CPU kernels of the two penalty ops replaced by `ops`.
    The CPU kernels reject float16: a float16 penalty shows that the emulation took their place."""
    kernels = {"gradient_penalty": ops.forward, "gradient_penalty_backward": ops.backward}
    return emulation.run_tests(kernels, lambda: torch.ops.fastgan.gradient_penalty(
        torch.ones(2, 3, dtype=torch.half), 1.0), pytest_args)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("pytest_args", nargs="*", help="more arguments for pytest (after --)")
    args = parser.parse_args()
    checker = Checker(emulation.build("gradient_penalty_kernel", BINDINGS, 800))
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        for layout in ("contiguous", "channels_last", "non_contiguous"):
            for shape in SHAPES:
                if layout == "channels_last" and len(shape) != 4:
                    continue
                if shape == SHAPES[-1] and (dtype != torch.float32 or layout != "contiguous"):
                    continue  # 262144 emulated threads: once is enough
                checker.run(shape, dtype, layout)
    checker.empty()
    failures = list(checker.failures)
    if run_tests(checker.ops, TESTS + args.pytest_args):
        failures.append("tests")
    print(f"{len(failures)} failures", *failures, sep="\n")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
