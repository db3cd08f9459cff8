"""A DCGAN-64 training iteration as pytorch/examples writes it (nn.Sequential generator and
discriminator, BCE loss, Adam), before and after `fastgan.nn.convert`.

    python benchmarks/bench_convert.py [--batch 64] [--threads 2] [--dtype bfloat16]

A dtype other than float32 runs the iteration under torch.autocast with that dtype."""
import argparse
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
from common import SuiteResult, compare, table  # noqa: E402
from pytorch_examples_dcgan import NC, NZ, Discriminator, Generator, weights_init  # noqa: E402


def training_iteration(netG, netD, batch, device, autocast_dtype):
    """One D step (real and fake batches) and one G step, as in pytorch/examples."""
    criterion = nn.BCELoss()
    optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    real = torch.rand(batch, NC, 64, 64, device=device) * 2 - 1
    noise = torch.randn(batch, NZ, 1, 1, device=device)
    real_label = torch.ones(batch, device=device)
    fake_label = torch.zeros(batch, device=device)

    def forward(model, input):
        """The models run under autocast, the loss (unsafe to autocast) in float32."""
        with (contextlib.nullcontext() if autocast_dtype == torch.float32
              else torch.autocast(device.type, dtype=autocast_dtype)):
            return model(input)

    def step():
        netD.zero_grad()
        errD_real = criterion(forward(netD, real).float(), real_label)
        errD_real.backward()
        fake = forward(netG, noise)
        errD_fake = criterion(forward(netD, fake.detach()).float(), fake_label)
        errD_fake.backward()
        optimizerD.step()
        netG.zero_grad()
        errG = criterion(forward(netD, fake).float(), real_label)
        errG.backward()
        optimizerG.step()
    return step


def run(device="cpu", dtype=torch.float32, min_run_time=1.0, batch=64):
    """SuiteResult; figures: "iteration" (the unconverted iteration's time / the converted's)."""
    device = torch.device(device)
    torch.manual_seed(0)
    netG, netD = Generator().to(device), Discriminator().to(device)
    netG.apply(weights_init)
    netD.apply(weights_init)
    models = {"torch": (netG, netD),
              "converted": (fastgan.nn.convert(netG, copy=True),
                            fastgan.nn.convert(netD, copy=True))}
    seconds = compare({name: training_iteration(g, d, batch, device, dtype)
                       for name, (g, d) in models.items()}, device, min_run_time)
    ratio = seconds["torch"] / seconds["converted"]
    rows = [["torch (unconverted)", f"{seconds['torch'] * 1e3:.1f}", "1.00x"],
            ["fastgan.nn.convert", f"{seconds['converted'] * 1e3:.1f}", f"**{ratio:.2f}x**"]]
    precision = "float32" if dtype == torch.float32 else f"autocast {dtype}"
    markdown = (f"### pytorch/examples DCGAN-64 training iteration (D step + G step), batch "
                f"{batch}, {precision}\n\n" + table(["model", "ms / iteration", "speedup"], rows))
    return SuiteResult(markdown, {"iteration": ratio})


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--min-run-time", type=float, default=2.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(run(args.device, getattr(torch, args.dtype), args.min_run_time, args.batch).markdown)


if __name__ == "__main__":
    main()
