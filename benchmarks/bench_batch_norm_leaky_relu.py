"""Fused BatchNorm+LeakyReLU against PyTorch eager (F.batch_norm + F.leaky_relu) and
torch.compile of the same two calls: forward+backward, and the R1 pattern (input gradient with
create_graph=True, then backward through it; torch.compile cannot compile a double backward)."""
import torch
import torch.nn.functional as F

import fastgan
from common import SuiteResult, compare, copy_bandwidth, median_seconds, table

SHAPES = [(64, 128, 16, 16), (64, 64, 32, 32), (64, 256, 8, 8)]


def eager(x, running_mean, running_var, weight, bias):
    return F.leaky_relu(F.batch_norm(x, running_mean, running_var, weight, bias, True), 0.2)


def fused(x, running_mean, running_var, weight, bias):
    return fastgan.ops.batch_norm_leaky_relu(x, running_mean, running_var, weight, bias, True)


def make_inputs(shape, memory_format, device, dtype):
    x = torch.randn(shape, device=device, dtype=dtype).to(memory_format=memory_format)
    x.requires_grad_()
    channels = shape[1]
    weight = torch.rand(channels, device=device, requires_grad=True)
    bias = torch.randn(channels, device=device, requires_grad=True)
    stats = torch.zeros(channels, device=device), torch.ones(channels, device=device)
    grad = torch.randn_like(x)
    return x, stats, weight, bias, grad


def forward_backward(fn, x, stats, weight, bias, grad):
    def step():
        out = fn(x, *stats, weight, bias)
        torch.autograd.grad(out, (x, weight, bias), grad)
    return step


def r1_pattern(fn, x, stats, weight, bias, grad):
    def step():
        out = fn(x, *stats, weight, bias)
        (grad_x,) = torch.autograd.grad(out, x, grad, create_graph=True)
        torch.autograd.grad(grad_x.square().sum(), (x, weight, bias))
    return step


def pass_floor(x, grad, device, min_run_time):
    """Seconds of the four passes that any two-pass forward+backward makes, as PyTorch's plainest
    kernels over the same bytes: reduce x (statistics), map x to the output, reduce x with
    grad_output (the backward's sums), map both to grad_input. They run back to back in one timed
    step, the output alive until grad_input is written, as in a training step: the same working
    set as the fused op's, so that a tensor that fits in cache on its own but not beside the
    others is timed alike on both sides. Fusion can undercut it only where a second read comes
    from cache. Low-precision tensors are read as float32 words (torch's bfloat16 dot on the CPU
    is not bandwidth-bound, so it would be no floor)."""
    def words(t):  # dense: any layout
        flat = t.detach().as_strided((t.numel(),), (1,))
        return flat if flat.element_size() >= 4 else flat.view(torch.float32)
    flat_x, flat_grad = words(x), words(grad)

    def four_passes():
        flat_x.sum()
        out = F.leaky_relu(flat_x, 0.2)
        torch.dot(flat_x, flat_grad)
        torch.add(flat_x, flat_grad)
        return out
    return median_seconds(four_passes, device, min_run_time)


def run(device="cpu", dtype=torch.float32, min_run_time=1.0):
    """SuiteResult; figures, per shape and layout: "vs_eager" and "vs_compile" (forward+backward:
    their time / fastgan's), "over_floor" (fastgan's time / the pass floor), "r1_vs_eager" (the
    R1 pattern)."""
    device = torch.device(device)
    compiled = torch.compile(eager)
    rows = []
    figures = {"vs_eager": [], "vs_compile": [], "over_floor": [], "r1_vs_eager": []}
    for shape in SHAPES:
        numel = torch.Size(shape).numel()
        copy_gbs = copy_bandwidth(numel, dtype, device)
        for memory_format, layout in ((torch.contiguous_format, "NCHW"),
                                      (torch.channels_last, "NHWC")):
            inputs = make_inputs(shape, memory_format, device, dtype)
            t = compare({name: forward_backward(fn, *inputs)
                         for name, fn in (("eager", eager), ("compile", compiled),
                                          ("fastgan", fused))}, device, min_run_time)
            r1 = compare({name: r1_pattern(fn, *inputs)
                          for name, fn in (("eager", eager), ("fastgan", fused))},
                         device, min_run_time)
            floor = pass_floor(inputs[0], inputs[-1], device, min_run_time)
            # Least traffic of any forward+backward: read x, write out, read x and grad_out,
            # write grad_input.
            gbs = 5 * numel * inputs[0].element_size() / t["fastgan"] / 1e9
            figures["vs_eager"].append(t["eager"] / t["fastgan"])
            figures["vs_compile"].append(t["compile"] / t["fastgan"])
            figures["over_floor"].append(t["fastgan"] / floor)
            figures["r1_vs_eager"].append(r1["eager"] / r1["fastgan"])
            rows.append([
                "x".join(map(str, shape)), layout,
                f"{t['eager'] * 1e3:.2f}", f"{t['compile'] * 1e3:.2f}",
                f"{t['fastgan'] * 1e3:.2f}",
                f"**{figures['vs_eager'][-1]:.2f}x**", f"**{figures['vs_compile'][-1]:.2f}x**",
                f"{gbs:.0f} ({100 * gbs / copy_gbs:.0f}% of {copy_gbs:.0f})",
                f"{floor * 1e3:.2f}", f"{figures['over_floor'][-1]:.2f}",
                f"{r1['eager'] * 1e3:.2f}", f"{r1['fastgan'] * 1e3:.2f}",
                f"**{figures['r1_vs_eager'][-1]:.2f}x**",
            ])
    header = ["shape", "layout", "eager ms", "compile ms", "fastgan ms", "vs eager",
              "vs compile", "fastgan GB/s (% of copy)", "pass floor ms", "fastgan / floor",
              "R1 eager ms", "R1 fastgan ms", "R1 vs eager"]
    markdown = ("### BatchNorm+LeakyReLU(0.2), training, forward+backward and R1 pattern\n\n"
                + table(header, rows)
                + "\n\npass floor = the four passes of a two-pass forward+backward as PyTorch's "
                "plainest kernels over the same bytes, back to back in one step (sum; leaky_relu; "
                "dot with grad_output; add; low precision read as float32 words)")
    return SuiteResult(markdown, figures)
