"""DCGAN-64 training as pytorch/examples writes it (nn.Sequential generator and discriminator,
BCE loss, Adam), before and after `fastgan.nn.convert`: the iteration, the iteration with an R1
penalty every D step, and the D step with R1; the R1 iteration also at batch 16 and 128 and in
channels_last.

    python benchmarks/bench_convert.py [--batch 64] [--threads 2] [--dtype bfloat16]

A dtype other than float32 runs the iteration under torch.autocast with that dtype."""
import contextlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == "__main__":  # run as a script: the checkout this file lives in comes first
    sys.path.insert(0, ROOT)
sys.path.append(os.path.join(ROOT, "tests"))  # the user's model, shared with test_convert.py

import torch  # noqa: E402
from torch import nn  # noqa: E402

import fastgan  # noqa: E402
from common import SuiteResult, compare, suite_parser, table  # noqa: E402
from pytorch_examples_dcgan import NC, NZ, Discriminator, Generator, weights_init  # noqa: E402


# The gradient penalty's weight (StyleGAN2's R1 gamma for small images).
R1_GAMMA = 10.0
# (batch, channels_last) of the R1 iteration's rows after the first ones, which are at batch 64 in
# NCHW for every kind of work; channels-last rows come last.
EXTRA_ROWS = ((16, False), (128, False), (64, True))


def training_step(netG, netD, batch, device, autocast_dtype, work, channels_last=False):
    """One step of `work` as pytorch/examples trains: "iteration" (a D step on a real and a fake
    batch, then a G step), "iteration_r1" (the same with an R1 penalty on the real batch) or
    "d_step_r1" (the D step alone, with R1)."""
    criterion = nn.BCELoss()
    optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    layout = torch.channels_last if channels_last else torch.contiguous_format
    real = (torch.rand(batch, NC, 64, 64, device=device) * 2 - 1).contiguous(memory_format=layout)
    noise = torch.randn(batch, NZ, 1, 1, device=device)
    real_label = torch.ones(batch, device=device)
    fake_label = torch.zeros(batch, device=device)
    with_r1 = work != "iteration"

    def forward(model, input):
        """The models run under autocast, the loss (unsafe to autocast) in float32."""
        with (contextlib.nullcontext() if autocast_dtype == torch.float32
              else torch.autocast(device.type, dtype=autocast_dtype)):
            return model(input)

    def step():
        netD.zero_grad()
        real_input = real.detach().requires_grad_(with_r1)
        output = forward(netD, real_input).float()
        errD_real = criterion(output, real_label)
        if with_r1:
            (gradient,) = torch.autograd.grad(output.sum(), real_input, create_graph=True)
            errD_real = errD_real + R1_GAMMA / 2 * gradient.square().sum((1, 2, 3)).mean()
        errD_real.backward()
        with torch.no_grad() if work == "d_step_r1" else contextlib.nullcontext():
            fake = forward(netG, noise)
        errD_fake = criterion(forward(netD, fake.detach()).float(), fake_label)
        errD_fake.backward()
        optimizerD.step()
        if work == "d_step_r1":
            return
        netG.zero_grad()
        errG = criterion(forward(netD, fake).float(), real_label)
        errG.backward()
        optimizerG.step()
    return step


WORK = {"iteration": "iteration (D step + G step)",
        "iteration_r1": "iteration, R1 every D step",
        "d_step_r1": "D step with R1"}


def first_use_seconds(models, batch, device, dtype):
    """Seconds the dispatch spends timing the converted models' shapes on their first step, when
    no cache file has them (once per machine otherwise), and the number of shapes."""
    from fastgan.ops import _dispatch
    saved = fastgan.backends.cpu.cache_dir
    fastgan.backends.cpu.cache_dir = None
    _dispatch.forget()
    try:
        training_step(*models, batch, device, dtype, "iteration_r1")()
        info = _dispatch.info()
    finally:
        fastgan.backends.cpu.cache_dir = saved
        _dispatch.forget()
    return info["seconds_timing"], info["shapes_chosen"]


def run(device="cpu", dtype=torch.float32, min_run_time=1.0, batch=64, rows=EXTRA_ROWS):
    """SuiteResult; figures: the unconverted step's time / the converted's, per work ("iteration",
    "iteration_r1", "d_step_r1") at `batch` in NCHW, and "rows" for every measured row."""
    device = torch.device(device)
    torch.manual_seed(0)
    netG, netD = Generator().to(device), Discriminator().to(device)
    netG.apply(weights_init)
    netD.apply(weights_init)
    models = {"torch": (netG, netD),
              "converted": (fastgan.nn.convert(netG, copy=True),
                            fastgan.nn.convert(netD, copy=True))}
    first_use = first_use_seconds(models["converted"], batch, device, dtype) \
        if device.type == "cpu" else None
    cases = [(batch, False, work) for work in WORK]
    cases += [(b, channels_last, "iteration_r1") for b, channels_last in rows]
    table_rows, figures = [], {"rows": []}
    for case_batch, channels_last, work in cases:
        steps = {}
        for name, (g, d) in models.items():
            if channels_last:  # the last rows: the models stay so
                g, d = g.to(memory_format=torch.channels_last), d.to(
                    memory_format=torch.channels_last)
            steps[name] = training_step(g, d, case_batch, device, dtype, work, channels_last)
        seconds = compare(steps, device, min_run_time)
        ratio = seconds["torch"] / seconds["converted"]
        layout_name = "NHWC" if channels_last else "NCHW"
        table_rows.append([WORK[work], str(case_batch), layout_name,
                           f"{seconds['torch'] * 1e3:.1f}", f"{seconds['converted'] * 1e3:.1f}",
                           f"**{ratio:.2f}x**"])
        figures["rows"].append({"work": work, "batch": case_batch, "layout": layout_name,
                                "speedup": ratio})
        if case_batch == batch and not channels_last:
            figures[work] = ratio
    precision = "float32" if dtype == torch.float32 else f"autocast {dtype}"
    markdown = (f"### pytorch/examples DCGAN-64 training, unconverted against "
                f"`fastgan.nn.convert`, {precision}\n\n"
                + table(["work", "batch", "layout", "torch ms", "converted ms", "speedup"],
                        table_rows))
    if first_use is not None:
        markdown += (f"\n\nFirst use: the dispatch timed the converted models' {first_use[1]} "
                     f"convolution shapes (batch {batch}) in {first_use[0]:.1f} s, once per "
                     f"machine (kept in fastgan.backends.cpu.cache_dir).")
        figures["first_use_seconds"] = first_use[0]
    return SuiteResult(markdown, figures)


def main():
    parser = suite_parser(__doc__)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(run(args.device, getattr(torch, args.dtype), args.min_run_time, args.batch).markdown)


if __name__ == "__main__":
    main()
