"""DCGAN-64 training steps with the R1 penalty: fastgan's models (fused BatchNorm+LeakyReLU,
fastgan.nn.Conv2d computing channels-last with its fast double backward, fused penalty) against
the same models, same weights, in pure PyTorch eager (nn.Conv2d + nn.BatchNorm2d + nn.LeakyReLU,
autograd.grad penalty) in NCHW, its default and here its faster layout, with the floor of each
step (its convolution FLOPs over the measured matmul rate), profiles of the R1 step's top
operators, and each discriminator convolution's three parts (forward, input gradient, weight
gradient) by torch's and by fastgan's kernels, with the one fastgan.ops.conv2d chooses."""
import importlib

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

import fastgan
from fastgan import _reference, losses
from common import SuiteResult, compare, conv2d_part_rows, matmul_rate, table

BATCH, IMAGE_SIZE, Z_DIM, GAMMA = 64, 64, 100, 10.0
PROFILE_ROWS = 12
conv2d_module = importlib.import_module("fastgan.ops.conv2d")


class Setup:
    """A generator and discriminator in fastgan's or pure PyTorch form, with the same weights,
    their optimizers and fixed inputs."""

    def __init__(self, kind, device, dtype):
        torch.manual_seed(0)
        generator = fastgan.models.DCGANGenerator(Z_DIM, 3, IMAGE_SIZE)
        discriminator = fastgan.models.DCGANDiscriminator(3, IMAGE_SIZE)
        if kind == "pure":
            generator, discriminator = map(_reference.torch_modules, (generator, discriminator))
        self.generator = generator.to(device, dtype)
        self.discriminator = discriminator.to(device, dtype)
        self.penalty = fastgan.ops.r1_penalty if kind == "fastgan" else _reference.r1_penalty
        self.optimizer_d = torch.optim.Adam(self.discriminator.parameters(), 2e-4, (0.5, 0.999))
        self.optimizer_g = torch.optim.Adam(self.generator.parameters(), 2e-4, (0.5, 0.999))
        generator_rng = torch.Generator().manual_seed(1)
        self.real = torch.rand(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator_rng)
        self.real = (self.real * 2 - 1).to(device, dtype)
        self.fake = self.real.flip(0).contiguous()
        self.noise = torch.randn(BATCH, Z_DIM, generator=generator_rng).to(device, dtype)

    def discriminator_step(self, r1=True, fake=None):
        """One update of D on the non-saturating loss, plus R1 on the reals when `r1`."""
        real = self.real.detach().requires_grad_(r1)
        fake = self.fake if fake is None else fake
        real_logits = self.discriminator(real)
        loss = losses.d_loss(real_logits, self.discriminator(fake))
        if r1:
            loss = loss + self.penalty(real_logits, real, GAMMA)
        self.optimizer_d.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer_d.step()

    def iteration(self):
        """A whole DCGAN iteration: fakes from G, D's step with R1, then G's step."""
        with torch.no_grad():
            fake = self.generator(self.noise)
        self.discriminator_step(fake=fake)
        loss = losses.g_loss(self.discriminator(self.generator(self.noise)))
        self.optimizer_g.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer_g.step()


def layer_flops(model, example):
    """2 x the multiply-adds of each convolution's forward, in the order they run."""
    flops = []

    def record(module, inputs, output):
        taps = module.weight[0, 0].numel()
        if isinstance(module, nn.ConvTranspose2d):  # every input element reaches every tap
            flops.append(2 * inputs[0].numel() * module.out_channels // module.groups * taps)
        else:
            flops.append(2 * output.numel() * module.in_channels // module.groups * taps)

    hooks = [m.register_forward_hook(record) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.no_grad():
        model(example)
    for hook in hooks:
        hook.remove()
    return flops


def convolution_flops():
    """Each step's convolution FLOPs, counting a layer's forward as F and its input gradient and
    weight gradient as F each:
      D step: D forward on reals and fakes (2F), backward of both (weight gradients 2F, input
        gradients 2F but for the first layer, whose input is data);
      R1 adds: the input gradient on the reals (F) and its backward (w.r.t. the gradient flowing
        in: F; w.r.t. the weight: F);
      G step: G forward twice (once for D's step), D forward and backward (input and, as the
        usual recipe does, weight gradients), G backward (but the first layer's input
        gradient: the noise's)."""
    d = layer_flops(fastgan.models.DCGANDiscriminator(3, IMAGE_SIZE),
                    torch.zeros(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE))
    g = layer_flops(fastgan.models.DCGANGenerator(Z_DIM, 3, IMAGE_SIZE), torch.zeros(BATCH, Z_DIM))
    plain = 4 * sum(d) + 2 * (sum(d) - d[0])
    with_r1 = plain + 3 * sum(d)
    g_step = 2 * sum(g) + 3 * sum(d) + 2 * sum(g) - g[0]
    return {"plain": plain, "r1": with_r1, "iteration": with_r1 + g_step}


def top_operators(step, rows=PROFILE_ROWS):
    """The operators with the most self CPU time in one step (after warm-up)."""
    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [[e.key, e.count, f"{e.self_cpu_time_total / 1e3:.1f}",
             f"{100 * e.self_cpu_time_total / total:.0f}%"] for e in events[:rows]]


def conv2d_parts(device, dtype, min_run_time):
    """Rows per discriminator convolution and part: torch's and fastgan's time, and the choice."""
    if conv2d_module._ops is None or device.type != "cpu":
        return []
    discriminator = fastgan.models.DCGANDiscriminator(3, IMAGE_SIZE).to(device, dtype)
    shapes = []
    hooks = [m.register_forward_hook(lambda m, args, out: shapes.append((m, args[0].shape)))
             for m in discriminator.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        discriminator(torch.zeros(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, device=device, dtype=dtype))
    for hook in hooks:
        hook.remove()
    rows = []
    for module, shape in shapes:
        layout = torch.channels_last
        x = torch.randn(shape, device=device, dtype=dtype).to(memory_format=layout)
        w = module.weight.detach().to(memory_format=layout)
        geometry = (module.stride, module.padding, module.dilation, module.groups)
        rows += conv2d_part_rows(f"{module.in_channels} -> {module.out_channels}, "
                                 f"{shape[2]}x{shape[3]}", x, w, geometry, device, min_run_time)
    return rows


def run(device="cpu", dtype=torch.float32, min_run_time=1.0):
    """SuiteResult; figures per step ("d_step_r1", "d_step", "iteration"): "speedup" (pure
    eager's time / fastgan's) and "over_floor" (fastgan's time / the step's floor)."""
    device = torch.device(device)
    setups = {kind: Setup(kind, device, dtype) for kind in ("pure", "fastgan")}
    flops = convolution_flops()
    rate = matmul_rate(device) * 1e9
    steps = {"d_step_r1": ("D step, R1 every step", "r1", lambda s: s.discriminator_step),
             "d_step": ("D step, no R1", "plain",
                        lambda s: lambda: s.discriminator_step(r1=False)),
             "iteration": ("DCGAN iteration (D with R1 + G)", "iteration",
                           lambda s: s.iteration)}
    rows, figures = [], {}
    for key, (name, flop_key, make_step) in steps.items():
        t = compare({kind: make_step(setup) for kind, setup in setups.items()}, device,
                    min_run_time)
        floor = flops[flop_key] / rate
        figures[key] = {"speedup": t["pure"] / t["fastgan"], "over_floor": t["fastgan"] / floor}
        rows.append([name, f"{flops[flop_key] / 1e9:.1f}", f"{t['pure'] * 1e3:.1f}",
                     f"{t['fastgan'] * 1e3:.1f}", f"**{t['pure'] / t['fastgan']:.2f}x**",
                     f"{floor * 1e3:.1f}", f"{t['fastgan'] / floor:.2f}x"])
    header = ["step", "conv GFLOP", "pure eager ms", "fastgan ms", "speedup", "floor ms",
              "fastgan / floor"]
    out = [f"### DCGAN-{IMAGE_SIZE} steps with R1 (batch {BATCH}, gamma {GAMMA})\n",
           table(header, rows),
           f"\nfloor = convolution FLOPs / matmul rate ({rate / 1e9:.0f} GFLOP/s)"]
    parts = conv2d_parts(device, dtype, min_run_time)
    if parts:
        out += [f"\n#### The discriminator's convolutions (batch {BATCH}, channels-last): torch's "
                "kernels (oneDNN) or fastgan's transposed-convolution kernels\n",
                table(["layer (input)", "part", "torch ms", "fastgan ms", "torch / fastgan",
                       "fastgan.ops.conv2d uses"], parts)]
    for kind, setup in setups.items():
        out += [f"\n#### Top operators (self CPU time) of one D step with R1: {kind}\n",
                table(["operator", "calls", "self ms", "share"],
                      top_operators(setup.discriminator_step))]
    return SuiteResult("\n".join(out), figures)
