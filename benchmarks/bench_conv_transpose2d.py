"""ConvTranspose2d forward+backward on the DCGAN-64 generator's layers: fastgan against PyTorch
eager (oneDNN / MKL) and torch.compile of the same call. The last layer carries the generator's
tanh, fused into fastgan's epilogue and a separate op for the others."""
import dataclasses
import importlib

import torch
import torch.nn.functional as F

import fastgan
from fastgan import _backend
from common import SuiteResult, compare, geometric_mean, matmul_rate, relative_error, table

conv_transpose2d_module = importlib.import_module("fastgan.ops.conv_transpose2d")

BATCH = 64
# (C_in, C_out, input size, stride, padding, activation); kernel 4, no bias, as in DCGAN.
LAYERS = [
    (100, 512, 1, 1, 0, None),
    (512, 256, 4, 2, 1, None),
    (256, 128, 8, 2, 1, None),
    (128, 64, 16, 2, 1, None),
    (64, 3, 32, 2, 1, "tanh"),
]
KERNEL = 4


def eager(x, weight, stride, padding, activation):
    out = F.conv_transpose2d(x, weight, None, stride, padding)
    return out.tanh() if activation == "tanh" else out


def fused(x, weight, stride, padding, activation):
    return fastgan.ops.conv_transpose2d(x, weight, None, stride, padding, activation=activation)


def kernels_only(x, weight, stride, padding, activation):
    """fastgan's kernels in every part, whatever the dispatch chose."""
    with fastgan.backends.cpu.flags(engine="fastgan"):
        return fused(x, weight, stride, padding, activation)


def chosen_engines(x, weight, stride, padding, activation):
    """The dispatch's engine per part for this layer, as "forward / input grad / weight grad"."""
    geometry = conv_transpose2d_module.Geometry([stride] * 2, [padding] * 2, [0, 0], 1, [1, 1])
    engines = conv_transpose2d_module._engines(x, weight, None, geometry, activation, 0.2)
    return " / ".join(dataclasses.astuple(engines))


def forward_backward(fn, x, weight, stride, padding, activation, grad):
    def step():
        out = fn(x, weight, stride, padding, activation)
        torch.autograd.grad(out, (x, weight), grad)
    return step


def run(device="cpu", dtype=torch.float32, min_run_time=1.0):
    """SuiteResult; figures: per layer, "vs_eager" and "vs_compile" (their time / fastgan's)."""
    device = torch.device(device)
    # cuDNN runs float32 convolutions in TF32 unless torch.backends.cudnn.allow_tf32 is off;
    # fastgan's kernels (and matmul) follow torch.backends.cuda.matmul.allow_tf32, set to match.
    tf32 = device.type == "cuda" and dtype == torch.float32 and torch.backends.cudnn.allow_tf32
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        return _run(device, dtype, min_run_time, "TF32" if tf32 else str(dtype).split(".")[-1])
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32


def _run(device, dtype, min_run_time, precision):
    compiled = torch.compile(eager)
    peak = matmul_rate(device, dtype)
    rows, vs_eager, vs_compile = [], [], []
    for c_in, c_out, size, stride, padding, activation in LAYERS:
        x = torch.randn(BATCH, c_in, size, size, device=device, dtype=dtype, requires_grad=True)
        weight = torch.randn(c_in, c_out, KERNEL, KERNEL, device=device, dtype=dtype) * 0.02
        weight.requires_grad_()
        out = eager(x, weight, stride, padding, activation)
        grad = torch.randn_like(out)
        t = compare({name: forward_backward(fn, x, weight, stride, padding, activation, grad)
                     for name, fn in (("eager", eager), ("compile", compiled), ("fastgan", fused),
                                      ("kernels", kernels_only))},
                    device, min_run_time)
        # Forward, grad_input and grad_weight: each one multiply-add per input pixel, tap and
        # pair of channels.
        flops = 3 * 2 * BATCH * size * size * c_in * c_out * KERNEL * KERNEL
        gflops = {name: flops / seconds / 1e9 for name, seconds in t.items()}
        vs_eager.append(t["eager"] / t["fastgan"])
        vs_compile.append(t["compile"] / t["fastgan"])
        rows.append([
            f"{c_in}->{c_out} ({size}->{out.shape[-1]})", activation or "-",
            f"{t['eager'] * 1e3:.2f}", f"{t['compile'] * 1e3:.2f}", f"{t['fastgan'] * 1e3:.2f}",
            f"**{vs_eager[-1]:.2f}x**", f"{vs_compile[-1]:.2f}x",
            f"{gflops['eager']:.0f} ({100 * gflops['eager'] / peak:.0f}%)",
            f"{gflops['fastgan']:.0f} ({100 * gflops['fastgan'] / peak:.0f}%)",
            f"{t['kernels'] * 1e3:.2f}", chosen_engines(x, weight, stride, padding, activation),
        ])
    rows.append(["geometric mean", "", "", "", "", f"**{geometric_mean(vs_eager):.2f}x**",
                 f"{geometric_mean(vs_compile):.2f}x", "", "", "", ""])
    header = ["layer", "activation", "eager ms", "compile ms", "fastgan ms", "vs eager",
              "vs compile", "eager GFLOP/s (% of matmul)", "fastgan GFLOP/s (% of matmul)",
              "fastgan's kernels alone ms", "dispatch: forward / input grad / weight grad"]
    markdown = (f"### ConvTranspose2d forward+backward, DCGAN-64 generator, batch {BATCH}, "
                f"NCHW, {device.type} {precision} (matmul: {peak:.0f} GFLOP/s)\n\n"
                + table(header, rows)
                + "\n\nfastgan runs each part by the engine the dispatch chose (last column; "
                "fastgan.backends.cpu.benchmark); \"fastgan's kernels alone\" forces its own "
                "kernels in every part. GFLOP/s count the direct method's multiply-adds: on the "
                "CPU's Winograd path (stride 2, >= 64 channels, >= 64 4x4 tiles in the batch) "
                "fastgan's kernels do 25/64 of them, so they can pass 100% of the matmul rate.")
    if device.type == "cpu" and dtype == torch.float32:
        markdown += "\n\n" + accuracy_table() + "\n\n" + gemm_table(min_run_time)
    return SuiteResult(markdown, {"vs_eager": vs_eager, "vs_compile": vs_compile})


def accuracy_table():
    """Each layer's float32 forward against the float64 result from the same inputs: torch's,
    fastgan's kernels with their default paths, and with fastgan.backends.cpu.allow_winograd
    off (only the paths as exact as torch's). The dispatch runs either these or torch's."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for c_in, c_out, size, stride, padding, activation in LAYERS:
        x = torch.randn(BATCH, c_in, size, size, generator=generator)
        weight = torch.randn(c_in, c_out, KERNEL, KERNEL, generator=generator) * 0.02
        exact = eager(x.double(), weight.double(), stride, padding, activation)
        torch_error = relative_error(eager(x, weight, stride, padding, activation), exact)
        default_error = relative_error(kernels_only(x, weight, stride, padding, activation),
                                        exact)
        with fastgan.backends.cpu.flags(allow_winograd=False):
            exact_error = relative_error(kernels_only(x, weight, stride, padding, activation),
                                          exact)
        rows.append([f"{c_in}->{c_out} ({size}->{exact.shape[-1]})", f"{torch_error:.1e}",
                     f"{default_error:.1e} ({default_error / torch_error:.1f}x)",
                     f"{exact_error:.1e} ({exact_error / torch_error:.1f}x)"])
    header = ["layer", "torch", "fastgan's kernels (default)",
              "fastgan's kernels, allow_winograd=False"]
    return ("#### Forward accuracy in float32: largest error against float64 over the largest "
            "value (x: against torch's)\n\n" + table(header, rows)
            + "\n\nThe default takes the Winograd path on the stride-2 layers with >= 64 "
            "channels; `fastgan.backends.cpu.allow_winograd = False` keeps only the paths as "
            "exact as torch's.")


# The products of fastgan's kernels on the generator's stride-2 layers (batch 64), as (count, rows,
# depth, columns): the Winograd path's 100 of (4x4 tiles, C_in) by (C_in, C_out) per call (4
# phases x 25 transform entries), and the sub-pixel GEMM path's one of (pixels, C_in) by (C_in, 16
# taps x C_out).
KERNEL_PRODUCTS = [(100, 64, 512, 256), (100, 256, 256, 128), (100, 1024, 128, 64),
                   (1, 1024, 512, 4096), (1, 4096, 256, 2048), (1, 16384, 128, 1024)]


def gemm_table(min_run_time):
    """GFLOP/s of the kernels' products by fastgan's own kernel (csrc/cpu/gemm.cpp, what the
    kernels call by default), by MKL (torch.bmm: fastgan.backends.cpu.gemm = "torch") and by
    oneDNN (the same products as a grouped 1x1 convolution, channels-last), against the
    1024x1024 matmul rate."""
    device = torch.device("cpu")
    peak = matmul_rate(device)
    rows = []
    for count, m, k, n in KERNEL_PRODUCTS:
        v = torch.randn(count, m, k)
        u = torch.randn(count, k, n)
        out = torch.empty(count, m, n)
        x = torch.randn(1, count * k, m, 1).contiguous(memory_format=torch.channels_last)
        w = torch.randn(count * n, k, 1, 1).contiguous(memory_format=torch.channels_last)
        candidates = {"mkl": lambda: torch.bmm(v, u, out=out),
                      "onednn": lambda: F.conv2d(x, w, groups=count)}
        if _backend.extension is not None:
            candidates["fastgan"] = lambda: _backend.extension._cpu_matmul(out, v, u)
        t = compare(candidates, device, min_run_time / 2)
        flops = 2 * count * m * k * n
        rates = {name: flops / seconds / 1e9 for name, seconds in t.items()}
        rows.append([f"{count} x ({m}x{k} by {k}x{n})"] + [
            f"{rates[name]:.0f} ({100 * rates[name] / peak:.0f}%)" if name in rates else "-"
            for name in ("fastgan", "mkl", "onednn")])
    header = ["products", "fastgan (gemm.cpp) GFLOP/s (% of matmul)",
              "MKL (torch.bmm) GFLOP/s (% of matmul)",
              "oneDNN (grouped 1x1 convolution) GFLOP/s (% of matmul)"]
    return (f"#### The kernels' matrix products, float32 (matmul: {peak:.0f} GFLOP/s)\n\n"
            + table(header, rows)
            + "\n\nThe first three are the Winograd path's batched products, the last three the "
            "sub-pixel GEMM path's forward products, on the generator's middle layers.")
