"""Peak memory of a DCGAN training step (D step with R1, then G step): fastgan's kernels against
pure PyTorch eager (the same models with FASTGAN_BACKEND=reference, whose ops are
F.batch_norm + F.leaky_relu and F.conv_transpose2d + activation).

Each backend runs in a fresh process; the number is its peak resident memory (ru_maxrss) minus
its resident memory once the models, optimizers and data exist, so it counts what the steps
allocate: activations, gradients, optimizer state and allocator slack.

    python benchmarks/bench_memory.py [--image-size 64] [--batch-size 64] [--steps 3] [--threads 2]
"""
import argparse
import json
import os
import subprocess
import sys

import torch

from common import SuiteResult, table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = """
import json, os, resource, sys
import torch
import fastgan
from fastgan.models import DCGANDiscriminator, DCGANGenerator
from fastgan.train import r1_penalty

image_size, batch_size, steps = map(int, sys.argv[1:4])

def resident():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

torch.manual_seed(0)
generator = DCGANGenerator(z_dim=100, out_channels=3, image_size=image_size)
discriminator = DCGANDiscriminator(in_channels=3, image_size=image_size)
optimizer_g = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
optimizer_d = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
real = torch.randn(batch_size, 3, image_size, image_size).clamp(-1, 1)
baseline = resident()
for _ in range(steps):
    with torch.no_grad():
        fake = generator(torch.randn(batch_size, 100))
    real.requires_grad_(True)
    real_logits = discriminator(real)
    loss = (torch.nn.functional.softplus(-real_logits).mean()
            + torch.nn.functional.softplus(discriminator(fake)).mean()
            + r1_penalty(real_logits, real, 1.0))
    optimizer_d.zero_grad(set_to_none=True)
    loss.backward()
    optimizer_d.step()
    fake_logits = discriminator(generator(torch.randn(batch_size, 100)))
    optimizer_g.zero_grad(set_to_none=True)
    torch.nn.functional.softplus(-fake_logits).mean().backward()
    optimizer_g.step()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
print(json.dumps({"baseline": baseline, "peak": peak,
                  "extension": fastgan.backend_info()["extension"]}))
"""


def measure(backend, image_size, batch_size, steps, threads):
    environment = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   "OMP_NUM_THREADS": str(threads)}
    if backend == "eager":
        environment["FASTGAN_BACKEND"] = "reference"
    else:
        environment.pop("FASTGAN_BACKEND", None)
    result = subprocess.run([sys.executable, "-c", _CHILD, str(image_size), str(batch_size),
                             str(steps)], env=environment, cwd=ROOT, check=True,
                            capture_output=True, text=True)
    numbers = json.loads(result.stdout.strip().splitlines()[-1])
    if numbers["extension"] != (backend == "fastgan"):
        raise RuntimeError(f"the {backend} run did not use the expected backend")
    return numbers


def run(device="cpu", dtype=torch.float32, min_run_time=None, image_size=64, batch_size=64,
        steps=3, threads=None):
    """SuiteResult; figures: "eager_mib" and "fastgan_mib" (peak - before). The child processes
    measure the CPU's resident memory in float32, whatever `device` and `dtype` say; nothing is
    timed (`min_run_time` is unused)."""
    title = (f"### Peak memory of DCGAN-{image_size} training steps (D with R1, then G), batch "
             f"{batch_size}, {steps} steps, CPU float32\n\n")
    if torch.device(device).type != "cpu" or dtype != torch.float32:
        return SuiteResult(title + "Measured for the CPU in float32 only.")
    threads = threads or torch.get_num_threads()
    mib = 2 ** 20
    rows, figures = [], {}
    for backend in ("eager", "fastgan"):
        numbers = measure(backend, image_size, batch_size, steps, threads)
        grown = (numbers["peak"] - numbers["baseline"]) / mib
        figures[f"{backend}_mib"] = grown
        rows.append([backend, f"{numbers['baseline'] / mib:.0f}", f"{numbers['peak'] / mib:.0f}",
                     f"{grown:.0f}"])
    header = ["backend", "resident before the steps (MiB)", "peak (MiB)", "peak - before (MiB)"]
    return SuiteResult(title + table(header, rows), figures)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(run(image_size=args.image_size, batch_size=args.batch_size, steps=args.steps,
              threads=args.threads).markdown)


if __name__ == "__main__":
    main()
