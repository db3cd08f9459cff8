"""Runs csrc/cuda/batch_norm_leaky_relu_kernel.cu's kernels on the CPU (see emulation.py and
prelude.h) and checks the forward, backward and double backward against float64 autograd of the
pure-PyTorch reference on the same values: a check of the kernels' index logic, reductions and
coefficients for machines without a GPU, not a substitute for running them on one. Includes the
robustness cases (large offsets, constant channels, a first element far from the mean, which
takes the re-sum pass) and reductions split over several blocks, then the BN tests with the
emulated kernels in place of the CPU ones (not the gradcheck tests: hours when emulated). About 3
minutes on 2 busy cores, 2 with --quick.

    python scripts/cuda_emulation/emulate_batch_norm_leaky_relu.py [--quick]
"""
import argparse
import os
import sys
import time

import emulation

sys.path[:0] = [emulation.ROOT]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import fastgan  # noqa: E402,F401 (registers the ops whose CPU kernels run_tests replaces)

BINDINGS = """
  m.def("forward", &batch_norm_leaky_relu);
  m.def("backward", &batch_norm_leaky_relu_backward);
  m.def("double_backward", &batch_norm_leaky_relu_double_backward);
  m.def("set_multiprocessors", [](int count) { emulated_multiprocessors = count; });
"""
MOMENTUM, EPS, SLOPE = 0.1, 1e-5, 0.2
# (rtol, atol) against the float64 reference from the same values, atol relative to the largest
# expected value.
TOLERANCES = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-4, 1e-5),
              torch.float16: (1e-2, 1e-2), torch.bfloat16: (5e-2, 5e-2)}


def make(shape, dtype, layout, generator, offset=0.0, scale=1.0):
    x = torch.randn(shape, generator=generator, dtype=torch.float64) * scale + offset
    if layout == "non_contiguous":
        x = torch.cat([x, x], dim=-1)[..., ::2]
    elif layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x.to(dtype)


def reference(x, mean, var, weight, bias, training, go, ggi, ggw, ggb):
    """Float64 autograd: output, batch mean and var, the backward's three gradients and the double
    backward's grad_grad_output, grad_input, grad_weight."""
    leaves = [t.detach().double().requires_grad_() for t in (x, weight, bias, go)]
    x64, w64, b64, go64 = leaves
    stats = (None, None) if training else (mean.double(), var.double())
    out = F.leaky_relu(F.batch_norm(x64, *stats, w64, b64, training, 0.0, EPS), SLOPE)
    grads = torch.autograd.grad(out, (x64, w64, b64), go64, create_graph=True)
    second = torch.autograd.grad(grads, (go64, x64, w64), (ggi.double(), ggw.double(),
                                                           ggb.double()), allow_unused=True)
    second = [torch.zeros_like(t) if g is None else g for g, t in zip(second, (go64, x64, w64))]
    dims = [0] + list(range(2, x.dim()))
    batch_stats = (x64.detach().mean(dims), x64.detach().var(dims, unbiased=False))
    return out.detach(), batch_stats, [g.detach() for g in grads], second


class Checker:
    def __init__(self, ops):
        self.ops = ops
        self.failures = []
        self.runs = 0

    def close(self, what, actual, expected, tolerance):
        rtol, atol = tolerance
        scale = max(expected.abs().max().item(), 1e-3) if expected.numel() else 1.0
        try:
            torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=atol * scale)
        except AssertionError as error:
            self.failures.append(what)
            print("FAIL", what, " ".join(str(error).split("\n")[:4]))

    def run(self, what, shape, dtype, layout, training, affine=True, offset=0.0, scale=1.0,
            first=None, stats_tolerance=None):
        self.runs += 1
        g = torch.Generator().manual_seed(self.runs)
        x = make(shape, dtype, layout, g, offset, scale)
        if first is not None:
            x.view(-1)[0] = first  # contiguous: channel 0's first element
        opmath = torch.float64 if dtype == torch.float64 else torch.float32
        channels = shape[1]
        w = (torch.randn(channels, generator=g, dtype=torch.float64) + 2).to(opmath)
        b = torch.randn(channels, generator=g, dtype=torch.float64).to(opmath)
        running_mean = (torch.randn(channels, generator=g, dtype=torch.float64) + offset).to(opmath)
        running_var = (torch.rand(channels, generator=g, dtype=torch.float64) * scale**2 +
                       0.5).to(opmath)
        go, ggi = (make(shape, dtype, layout, g) for _ in range(2))
        ggw, ggb = (torch.randn(channels, generator=g, dtype=torch.float64).to(opmath)
                    for _ in range(2))
        weight, bias = (w, b) if affine else (None, None)
        tolerance = TOLERANCES[dtype]
        what = f"{what} {tuple(shape)} {dtype} {layout} {'train' if training else 'eval'}"

        # Training updates copies of the running statistics, evaluation reads them.
        updated_mean, updated_var = running_mean.clone(), running_var.clone()
        out, batch_mean, batch_var = self.ops.forward(
            x, updated_mean, updated_var, weight, bias, training, MOMENTUM, EPS, SLOPE, False)
        ref_out, ref_stats, ref_grads, ref_second = reference(
            x, running_mean, running_var, w if affine else torch.ones_like(w),
            b if affine else torch.zeros_like(b), training, go, ggi, ggw if affine else ggw * 0,
            ggb if affine else ggb * 0)
        self.close(what + " output", out, ref_out, tolerance)
        if training:
            magnitude = max(x.double().abs().max().item(), 1.0) if x.numel() else 1.0
            mean_tolerance, var_tolerance = stats_tolerance or (tolerance, tolerance)
            self.close(what + " batch mean", batch_mean, ref_stats[0],
                       (mean_tolerance[0], mean_tolerance[1] * magnitude))
            self.close(what + " batch var", batch_var, ref_stats[1], var_tolerance)
            count = x.numel() // channels
            for name, updated, old, batch, factor, stat_tolerance in (
                    ("running mean", updated_mean, running_mean, ref_stats[0], 1.0,
                     (mean_tolerance[0], mean_tolerance[1] * magnitude)),
                    ("running var", updated_var, running_var, ref_stats[1], count / (count - 1),
                     var_tolerance)):
                expected = old.double() + MOMENTUM * (batch * factor - old.double())
                self.close(f"{what} {name}", updated, expected, stat_tolerance)
            mean, var = batch_mean, batch_var
        else:
            mean, var = running_mean, running_var

        grads = self.ops.backward(go, x, mean, var, weight, bias, training, EPS, SLOPE,
                                  [True, True, True], False)
        names = ["grad_input", "grad_weight", "grad_bias"]
        for name, actual, expected in zip(names, grads, ref_grads):
            if affine or name == "grad_input":
                self.close(f"{what} {name}", actual, expected, tolerance)
        second = self.ops.double_backward(ggi, ggw if affine else None, ggb if affine else None,
                                          go, x, mean, var, weight, bias, training, EPS, SLOPE,
                                          [True, True, True], False)
        names = ["grad_grad_output", "double backward grad_input", "double backward grad_weight"]
        for name, actual, expected in zip(names, second, ref_second):
            if affine or name != names[2]:
                self.close(f"{what} {name}", actual, expected, tolerance)

    def empty_batch(self, layout):
        """Zero statistics and sums, empty element-wise outputs."""
        x = make((0, 3, 4, 4), torch.float32, layout, torch.Generator())
        w, b = torch.ones(3), torch.zeros(3)
        running_mean, running_var = torch.zeros(3), torch.ones(3)
        out, mean, var = self.ops.forward(x, running_mean, running_var, w, b, True, MOMENTUM, EPS,
                                          SLOPE, False)
        grads = self.ops.backward(x, x, mean, var, w, b, True, EPS, SLOPE, [True, True, True],
                                  False)
        second = self.ops.double_backward(x, w, b, x, x, mean, var, w, b, True, EPS, SLOPE,
                                          [True, True, True], False)
        ok = (out.shape == x.shape and grads[0].shape == x.shape and
              all(t.shape == x.shape for t in second[:2]) and
              all(torch.equal(t, torch.zeros(3)) for t in (mean, var, grads[1], grads[2],
                                                          second[2], running_mean)) and
              torch.equal(running_var, torch.ones(3)))
        if not ok:
            self.failures.append(f"empty batch {layout}")
            print("FAIL empty batch", layout)


# The BN tests that the emulated kernels can take: not those about the CPU kernels' dtypes, their
# registration, or torch.compile (too slow here).
TESTS = [os.path.join(emulation.ROOT, "tests", name)
         for name in ("test_robustness.py", "test_batch_norm_leaky_relu.py")]
TESTS += ["-k", "not conv_transpose2d and not half and not opcheck and not compile and "
          "not cpu_kernel and not gradcheck"]


def run_tests(ops, pytest_args):
    """The BN tests on `pytest_args` with the CPU kernels of fastgan's three BN ops replaced by
    `ops`. The CPU kernels reject float16: a float16 forward shows that the emulation took their
    place."""
    # The dispatcher calls a Python kernel without the arguments left at their schema defaults
    # (`instance`, the last).
    def with_defaults(kernel):
        return lambda *args, instance=False: kernel(*args, instance)
    kernels = {"batch_norm_leaky_relu": with_defaults(ops.forward),
               "batch_norm_leaky_relu_backward": with_defaults(ops.backward),
               "batch_norm_leaky_relu_double_backward": with_defaults(ops.double_backward)}
    return emulation.run_tests(kernels, lambda: torch.ops.fastgan.batch_norm_leaky_relu(
        torch.ones(2, 3, 4, dtype=torch.half), None, None, None, None, True, MOMENTUM, EPS,
        SLOPE), pytest_args)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer dtypes and layouts")
    parser.add_argument("pytest_args", nargs="*", help="more arguments for pytest (after --)")
    args = parser.parse_args()
    start = time.time()
    checker = Checker(emulation.build("batch_norm_leaky_relu_kernel", BINDINGS, 800))
    dtypes = [torch.float64, torch.float32]
    if not args.quick:
        dtypes += [torch.float16, torch.bfloat16]
    layouts = ["contiguous", "channels_last"] + ([] if args.quick else ["non_contiguous"])
    # Odd sizes (scalar paths), sizes the packs divide (vectorized paths), batch 1, 3-d input.
    shapes = [(2, 3, 5, 7), (3, 8, 4, 4), (1, 4, 6, 6), (5, 6, 9)]
    for dtype in dtypes:
        for layout in layouts:
            for shape in shapes:
                if layout != "contiguous" and len(shape) != 4:
                    continue
                for training in (True, False):
                    checker.run("basic", shape, dtype, layout, training)
        print(f"{dtype} ({time.time() - start:.0f} s)", flush=True)
    checker.run("no affine", (2, 3, 5, 7), torch.float32, "contiguous", True, affine=False)
    for layout in ("contiguous", "channels_last"):
        checker.empty_batch(layout)

    failures = list(checker.failures)
    # The test suite, with the CPU kernels of the ops replaced by the emulated CUDA ones.
    for multiprocessors in (132, 7):  # the reductions' split counts follow the device size
        checker.ops.set_multiprocessors(multiprocessors)
        if run_tests(checker.ops, TESTS + args.pytest_args):
            failures.append(f"tests on {multiprocessors} SMs")
    print(f"{len(failures)} failures ({time.time() - start:.0f} s)", *failures, sep="\n")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
