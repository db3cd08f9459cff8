"""Peak memory of a DCGAN training step (D step with R1, then G step): fastgan's kernels against
pure PyTorch eager (the same models with FASTGAN_BACKEND=reference, whose ops are
F.batch_norm + F.leaky_relu and F.conv_transpose2d + activation).

Each backend runs in a fresh process; the number is its peak resident memory (ru_maxrss) minus
its resident memory once the models, optimizers and data exist, so it counts what the steps
allocate: activations, gradients, optimizer state and allocator slack.

    python benchmarks/bench_memory.py [--image-size 64] [--batch-size 64] [--steps 3]
"""
import argparse
import json
import os
import subprocess
import sys

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


def measure(backend, image_size, batch_size, steps):
    environment = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    mib = 2 ** 20
    print(f"DCGAN-{args.image_size}, batch {args.batch_size}, {args.steps} steps (D with R1, "
          f"then G), CPU, {os.cpu_count()} cores")
    print("| backend | resident before the steps (MiB) | peak (MiB) | peak - before (MiB) |")
    print("|---|---|---|---|")
    for backend in ("eager", "fastgan"):
        numbers = measure(backend, args.image_size, args.batch_size, args.steps)
        print(f"| {backend} | {numbers['baseline'] / mib:.0f} | {numbers['peak'] / mib:.0f} | "
              f"{(numbers['peak'] - numbers['baseline']) / mib:.0f} |")


if __name__ == "__main__":
    main()
