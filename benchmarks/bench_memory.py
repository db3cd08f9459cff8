"""Peak memory of DCGAN-64 training steps (D step with R1, then G step) as pytorch/examples
writes the models (tests/pytorch_examples_dcgan.py), and of CycleGAN iterations at 128x128:
unconverted (PyTorch eager) against passed through `fastgan.nn.convert`.

Each runs in fresh processes, three by default (--repeats), eager and converted taking turns:
glibc's malloc returns large freed blocks to the system as they come, so one process's peak
moves by tens of MiB from run to run; the figure is the median. A process's number is its peak
resident memory (VmHWM: ru_maxrss would start from the peak of the process that started it,
which Linux carries across exec) minus its resident memory once the models, optimizers and data
exist, so it counts what the steps allocate: activations, gradients, optimizer state and
allocator slack. A first converted process
fills the dispatch's cache file beforehand, as a machine's first training run does once (its
timing allocates one layer's operands at a time).

    python benchmarks/bench_memory.py [--batch-size 64] [--steps 3] [--threads 2] [--repeats 3]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

import torch

from common import SuiteResult, table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A child process's script: _MODELS (one of the two below) builds the models, optimizers and data
# and defines step(); the rest measures. argv: batch size, steps, "1" to convert.
_CHILD = """
import json, os, sys
import torch
import fastgan

batch_size, steps, convert = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"

def resident():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

{models}
baseline = resident()
for _ in range(steps):
    step()
with open("/proc/self/status") as status:
    peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) * 1024
print(json.dumps({{"baseline": baseline, "peak": peak,
                  "extension": fastgan.backend_info()["extension"]}}))
"""

# pytorch/examples' DCGAN-64: a D step with R1, then a G step.
_DCGAN = """
sys.path.append("tests")
from pytorch_examples_dcgan import Discriminator, Generator, weights_init

torch.manual_seed(0)
generator, discriminator = Generator(), Discriminator()
generator.apply(weights_init)
discriminator.apply(weights_init)
if convert:
    generator, discriminator = fastgan.nn.convert(generator), fastgan.nn.convert(discriminator)
optimizer_g = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
optimizer_d = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
real = torch.rand(batch_size, 3, 64, 64) * 2 - 1

def step():
    with torch.no_grad():
        fake = generator(torch.randn(batch_size, 100, 1, 1))
    real.requires_grad_(True)
    real_logits = discriminator(real)
    (gradient,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    loss = (torch.nn.functional.softplus(-real_logits).mean()
            + torch.nn.functional.softplus(discriminator(fake)).mean()
            + 5.0 * gradient.square().sum((1, 2, 3)).mean())
    optimizer_d.zero_grad(set_to_none=True)
    loss.backward()
    optimizer_d.step()
    fake_logits = discriminator(generator(torch.randn(batch_size, 100, 1, 1)))
    optimizer_g.zero_grad(set_to_none=True)
    torch.nn.functional.softplus(-fake_logits).mean().backward()
    optimizer_g.step()
"""

# A CycleGAN iteration at 128x128 with 6 residual blocks (bench_cyclegan's step, batch 1: the
# batch size argument is ignored) with the torch.nn models.
_CYCLEGAN = """
sys.path.append("benchmarks")
from bench_cyclegan import _networks, training_step
from fastgan import _reference

networks = [_reference.torch_modules(n) for n in _networks(6, torch.device("cpu"))]
if convert:
    networks = [fastgan.nn.convert(n) for n in networks]
step = training_step(*networks, 128, torch.device("cpu"), torch.float32)
"""


def measure(backend, batch_size, steps, threads, models=_DCGAN):
    """A fresh process's numbers: resident memory before the steps and its peak, in bytes."""
    environment = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   "OMP_NUM_THREADS": str(threads)}
    environment.pop("FASTGAN_BACKEND", None)
    result = subprocess.run([sys.executable, "-c", _CHILD.format(models=models),
                             str(batch_size), str(steps), "1" if backend == "fastgan" else "0"],
                            env=environment, cwd=ROOT, check=True, capture_output=True, text=True)
    numbers = json.loads(result.stdout.strip().splitlines()[-1])
    if backend == "fastgan" and not numbers["extension"]:
        raise RuntimeError("the converted run did not use fastgan's kernels")
    return numbers


def run(device="cpu", dtype=torch.float32, min_run_time=None, batch_size=64, steps=3,
        threads=None, repeats=3):
    """SuiteResult; figures: "eager_mib" and "fastgan_mib" (peak - before, the median of
    `repeats` processes; "processes" says how many), and the same for the CycleGAN iteration ("cyclegan_eager_mib",
    "cyclegan_fastgan_mib"). The child processes measure the CPU's resident memory in float32,
    whatever `device` and `dtype` say; nothing is timed (`min_run_time` is unused)."""
    title = (f"### Peak memory of pytorch/examples DCGAN-64 training steps (D with R1, then G), "
             f"batch {batch_size}, {steps} steps, CPU float32\n\n")
    if torch.device(device).type != "cpu" or dtype != torch.float32:
        return SuiteResult(title + "Measured for the CPU in float32 only.")
    threads = threads or torch.get_num_threads()
    mib = 2 ** 20
    figures = {"processes": repeats}

    def rows(models, prefix):
        measure("fastgan", batch_size, 1, threads, models)  # fills the dispatch's cache file
        runs = {"eager": [], "fastgan": []}
        for _ in range(repeats):
            for backend, numbers in runs.items():
                numbers.append(measure(backend, batch_size, steps, threads, models))
        measured = []
        for backend, numbers in runs.items():
            baseline = statistics.median(n["baseline"] for n in numbers) / mib
            peak = statistics.median(n["peak"] for n in numbers) / mib
            grown = sorted((n["peak"] - n["baseline"]) / mib for n in numbers)
            median = figures[f"{prefix}{backend}_mib"] = statistics.median(grown)
            measured.append([backend, f"{baseline:.0f}", f"{peak:.0f}",
                             f"{median:.0f} ({grown[0]:.0f} - {grown[-1]:.0f})"])
        return measured
    header = ["backend", "resident before the steps (MiB)", "peak (MiB)",
              f"peak - before (MiB): median ({repeats} processes' range)"]
    markdown = (title + table(header, rows(_DCGAN, "")) + f"\n\n#### The same for {steps} "
                "CycleGAN iterations (128x128, 6 residual blocks, batch 1; torch.nn models "
                "against converted)\n\n" + table(header, rows(_CYCLEGAN, "cyclegan_")))
    return SuiteResult(markdown, figures)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(run(batch_size=args.batch_size, steps=args.steps,
              threads=args.threads, repeats=args.repeats).markdown)


if __name__ == "__main__":
    main()
