"""A whole CycleGAN training iteration (both generators' step, then both discriminators' step,
as fastgan.CycleGANTrainer runs it: least-squares losses, cycle weight 10, identity weight 0.5,
Adam), with three builds of the same networks: the ResNet generator and the 70x70 PatchGAN made
of torch.nn layers (fastgan._reference.torch_modules of fastgan's models), those torch.nn models
passed through `fastgan.nn.convert`, and fastgan.models' own; on the CPU, also the residual
blocks' convolutions part by part and their float32 accuracy.

    python benchmarks/bench_cyclegan.py [--threads 2] [--dtype bfloat16] [--min-run-time 2]
"""
import contextlib
import importlib

import torch

import fastgan
from fastgan import _reference, losses
from common import (SuiteResult, compare, conv2d_part_rows, relative_error, suite_parser,
                    table)

# (image size, residual blocks): the published 256x256 generator and a smaller 128x128 one.
CASES = [(128, 6), (256, 9)]
CYCLE_WEIGHT, IDENTITY_WEIGHT = 10.0, 0.5
# The residual blocks' channels: the generator's 64 after its two stride-2 downsamplings.
RESIDUAL_CHANNELS = 256


def training_step(g_ab, g_ba, d_a, d_b, size, device, autocast_dtype):
    """One iteration on a batch of 1 from each domain, with its optimizers; the networks run
    under autocast for a dtype other than float32, the losses in float32."""
    generators = list(g_ab.parameters()) + list(g_ba.parameters())
    discriminators = list(d_a.parameters()) + list(d_b.parameters())
    optimizer_g = torch.optim.Adam(generators, lr=2e-4, betas=(0.5, 0.999))
    optimizer_d = torch.optim.Adam(discriminators, lr=2e-4, betas=(0.5, 0.999))
    real_a = torch.rand(1, 3, size, size, device=device) * 2 - 1
    real_b = torch.rand(1, 3, size, size, device=device) * 2 - 1

    def run(network, images):
        with (contextlib.nullcontext() if autocast_dtype == torch.float32
              else torch.autocast(device.type, dtype=autocast_dtype)):
            return network(images).float()

    def step():
        fake_b, fake_a = run(g_ab, real_a), run(g_ba, real_b)
        adversarial = (losses.g_loss(run(d_b, fake_b), "least_squares")
                       + losses.g_loss(run(d_a, fake_a), "least_squares"))
        cycle = ((run(g_ba, fake_b) - real_a).abs().mean()
                 + (run(g_ab, fake_a) - real_b).abs().mean())
        identity = ((run(g_ab, real_b) - real_b).abs().mean()
                    + (run(g_ba, real_a) - real_a).abs().mean())
        total = adversarial + CYCLE_WEIGHT * (cycle + IDENTITY_WEIGHT * identity)
        optimizer_g.zero_grad(set_to_none=True)
        total.backward(inputs=generators)
        optimizer_g.step()
        total = 0.5 * (losses.d_loss(run(d_a, real_a), run(d_a, fake_a.detach()),
                                     "least_squares")
                       + losses.d_loss(run(d_b, real_b), run(d_b, fake_b.detach()),
                                       "least_squares"))
        optimizer_d.zero_grad(set_to_none=True)
        total.backward(inputs=discriminators)
        optimizer_d.step()
    return step


def _networks(blocks, device):
    torch.manual_seed(0)
    networks = [fastgan.models.ResnetGenerator(blocks=blocks),
                fastgan.models.ResnetGenerator(blocks=blocks),
                fastgan.models.PatchDiscriminator(), fastgan.models.PatchDiscriminator()]
    return [network.to(device) for network in networks]


def run(device="cpu", dtype=torch.float32, min_run_time=1.0, cases=CASES):
    """SuiteResult; figures: "rows", per case the torch.nn build's time over the converted
    one's ("converted") and over fastgan's models' ("fastgan")."""
    device = torch.device(device)
    rows, figures = [], {"rows": []}
    for size, blocks in cases:
        networks = _networks(blocks, device)
        builds = {"torch": [_reference.torch_modules(n) for n in networks]}
        builds["converted"] = [fastgan.nn.convert(n, copy=True) for n in builds["torch"]]
        builds["fastgan"] = networks
        steps = {name: training_step(*models, size, device, dtype)
                 for name, models in builds.items()}
        seconds = compare(steps, device, min_run_time)
        ratios = {name: seconds["torch"] / seconds[name] for name in ("converted", "fastgan")}
        rows.append([f"{size}x{size}, {blocks} blocks"]
                    + [f"{seconds[name] * 1e3:.0f}" for name in ("torch", "converted", "fastgan")]
                    + [f"**{ratios['converted']:.2f}x**", f"{ratios['fastgan']:.2f}x"])
        figures["rows"].append({"size": size, "blocks": blocks, **ratios})
    precision = "float32" if dtype == torch.float32 else f"autocast {dtype}"
    markdown = ("### CycleGAN training iteration (batch 1, both generators then both "
                f"discriminators), {device.type} {precision}\n\n"
                + table(["images, generator", "torch.nn ms", "converted ms", "fastgan.models ms",
                         "converted speedup", "fastgan.models speedup"], rows))
    if device.type == "cpu" and dtype == torch.float32 and fastgan._backend.extension:
        markdown += "\n\n" + residual_convolutions(device, min_run_time, cases)
    return SuiteResult(markdown, figures)


def _residual_convolution(size, generator):
    """A residual block's convolution at `size` x `size` images: its input (after the
    reflection padding, channels-last) and weight, as the ResNet generator initializes it."""
    channels, pixels = RESIDUAL_CHANNELS, size // 4 + 2
    x = torch.randn(1, channels, pixels, pixels, generator=generator)
    weight = torch.randn(channels, channels, 3, 3, generator=generator) * 0.02
    return (x.contiguous(memory_format=torch.channels_last),
            weight.contiguous(memory_format=torch.channels_last))


def residual_convolutions(device, min_run_time, cases):
    """The residual blocks' 3x3 convolutions, which take most of the iteration: each part by
    torch's kernels (oneDNN) and fastgan's (Winograd F(4x4, 3x3)), and the forward's float32
    error against float64 from the same values: torch's, fastgan's default, and with
    allow_winograd off."""
    conv2d_module = importlib.import_module("fastgan.ops.conv2d")
    generator = torch.Generator().manual_seed(0)
    geometry = ([1, 1], [0, 0], [1, 1], 1)
    part_rows, accuracy_rows = [], []
    for size, _ in cases:
        x, weight = _residual_convolution(size, generator)
        label = f"{RESIDUAL_CHANNELS} -> {RESIDUAL_CHANNELS}, {x.shape[-1]}x{x.shape[-1]}"
        part_rows += conv2d_part_rows(label, x, weight, geometry, device, min_run_time)
        exact = torch.nn.functional.conv2d(x.double(), weight.double())
        errors = [relative_error(torch.nn.functional.conv2d(x, weight), exact),
                  relative_error(conv2d_module._forward(x, weight, None, geometry, True), exact)]
        with fastgan.backends.cpu.flags(allow_winograd=False):
            errors.append(relative_error(conv2d_module._forward(x, weight, None, geometry, True),
                                          exact))
        accuracy_rows.append([label, f"{errors[0]:.1e}"] + [
            f"{error:.1e} ({error / errors[0]:.1f}x)" for error in errors[1:]])
    return ("#### The residual blocks' 3x3 convolutions (after the reflection padding, "
            "channels-last)\n\n"
            + table(["layer (input)", "part", "torch ms", "fastgan ms", "torch / fastgan",
                     "fastgan.ops.conv2d uses"], part_rows)
            + "\n\nForward accuracy in float32: largest error against float64 over the largest "
            "value (x: against torch's)\n\n"
            + table(["layer (input)", "torch", "fastgan's kernels (default: Winograd)",
                     "fastgan's kernels, allow_winograd=False"], accuracy_rows))


def main():
    args = suite_parser(__doc__).parse_args()
    torch.set_num_threads(args.threads)
    print(run(args.device, getattr(torch, args.dtype), args.min_run_time).markdown)


if __name__ == "__main__":
    main()
