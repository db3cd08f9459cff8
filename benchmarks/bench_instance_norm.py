"""Fused InstanceNorm+ReLU (CycleGAN's layer: affine=False, no running statistics) against PyTorch
eager (F.instance_norm + F.relu) and torch.compile of the same two calls, on CycleGAN's shapes:
forward+backward, and the R1 pattern (input gradient with create_graph=True, then backward
through it), with the time of four plain copies of the tensor as the floor: back to back, x into
the output and grad_output into grad_input twice over, the four tensors a forward+backward
touches (copied one at a time, a tensor that fits in cache beside its copy but not beside the
other three would make a floor no training step meets)."""
import torch
import torch.nn.functional as F

import fastgan
from common import SuiteResult, compare, geometric_mean, table

# (batch, channels, size): the ResNet generator's stem, downsampling and residual maps at 256x256.
SHAPES = [(1, 64, 256), (1, 128, 128), (1, 256, 64), (4, 64, 256), (4, 128, 128), (4, 256, 64)]


def eager(x):
    return F.relu(F.instance_norm(x))


def fused(x):
    return fastgan.ops.instance_norm_leaky_relu(x, negative_slope=0.0)


def forward_backward(fn, x, grad):
    def step():
        torch.autograd.grad(fn(x), x, grad)
    return step


def r1_pattern(fn, x, grad):
    def step():
        (grad_x,) = torch.autograd.grad(fn(x), x, grad, create_graph=True)
        torch.autograd.grad(grad_x.square().sum(), x)
    return step


def run(device="cpu", dtype=torch.float32, min_run_time=1.0, shapes=SHAPES):
    """SuiteResult; figures: per row "vs_eager", "vs_compile", "over_copies" and "r1_vs_eager"."""
    device = torch.device(device)
    rows, figures = [], {"vs_eager": [], "vs_compile": [], "over_copies": [], "r1_vs_eager": []}
    for batch, channels, size in shapes:
        for layout in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(batch, channels, size, size, device=device, dtype=dtype)
            x = x.contiguous(memory_format=layout).requires_grad_()
            grad = torch.randn_like(x)
            # Compiled anew for each row: past torch's recompile limit (8 shapes and layouts)
            # torch.compile would fall back to eager.
            torch._dynamo.reset()
            compiled = torch.compile(eager)
            # The copies take their turns with the others: the floor meets the same machine state.
            out, grad_input = torch.empty_like(x), torch.empty_like(grad)

            def four_copies():
                for _ in range(2):
                    out.copy_(x.detach())
                    grad_input.copy_(grad)
            t = compare({**{name: forward_backward(fn, x, grad)
                            for name, fn in (("eager", eager), ("compile", compiled),
                                             ("fastgan", fused))},
                         "copies": four_copies}, device, min_run_time)
            r1 = compare({name: r1_pattern(fn, x, grad)
                          for name, fn in (("eager", eager), ("fastgan", fused))},
                         device, min_run_time)
            copies = t["copies"]
            figures["vs_eager"].append(t["eager"] / t["fastgan"])
            figures["vs_compile"].append(t["compile"] / t["fastgan"])
            figures["over_copies"].append(t["fastgan"] / copies)
            figures["r1_vs_eager"].append(r1["eager"] / r1["fastgan"])
            rows.append([f"{batch}x{channels}x{size}x{size}",
                         "NHWC" if layout == torch.channels_last else "NCHW",
                         f"{t['eager'] * 1e3:.2f}", f"{t['compile'] * 1e3:.2f}",
                         f"{t['fastgan'] * 1e3:.2f}", f"**{figures['vs_eager'][-1]:.2f}x**",
                         f"**{figures['vs_compile'][-1]:.2f}x**", f"{copies * 1e3:.2f}",
                         f"{figures['over_copies'][-1]:.2f}", f"{r1['eager'] * 1e3:.2f}",
                         f"{r1['fastgan'] * 1e3:.2f}", f"**{figures['r1_vs_eager'][-1]:.2f}x**"])
    rows.append(["geometric mean", "", "", "", "",
                 f"**{geometric_mean(figures['vs_eager']):.2f}x**",
                 f"**{geometric_mean(figures['vs_compile']):.2f}x**", "", "", "", "",
                 f"**{geometric_mean(figures['r1_vs_eager']):.2f}x**"])
    header = ["shape", "layout", "eager ms", "compile ms", "fastgan ms", "vs eager",
              "vs compile", "4 copies ms", "fastgan / 4 copies", "R1 eager ms", "R1 fastgan ms",
              "R1 vs eager"]
    markdown = (f"### InstanceNorm+ReLU (affine=False), forward+backward and R1 pattern, "
                f"{device.type} {str(dtype).split('.')[-1]}\n\n" + table(header, rows))
    return SuiteResult(markdown, figures)


if __name__ == "__main__":
    torch.set_num_threads(2)
    fastgan.train.keep_freed_memory()
    print(run(min_run_time=0.5).markdown)
