"""Shared benchmark plumbing: interleaved timing, machine limits, Markdown tables, and the
structured result every suite returns."""
import argparse
import dataclasses
import gc
import importlib
import math
import statistics
import time

import torch

# Each candidate is timed in at least this many blocks, so that its median means something even
# when one call takes longer than the time it is given.
MIN_BLOCKS = 5
# A block lasts about this fraction of the time given to a candidate: enough blocks for a stable
# median, each long enough for the clock's resolution not to matter.
BLOCK_FRACTION = 1 / 20


def suite_parser(description):
    """A suite's own command line: --device, --threads, --dtype (another than float32 runs under
    autocast) and --min-run-time; the suite adds its own options."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--min-run-time", type=float, default=2.0)
    return parser


@dataclasses.dataclass
class SuiteResult:
    """What a suite measured: its Markdown tables (what `run.py` prints) and the figures the
    README's summary is made of (`report.summary_rows` reads them)."""
    markdown: str
    figures: dict = dataclasses.field(default_factory=dict)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds_per_call(fn, device, calls):
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return (time.perf_counter() - start) / calls


def compare(candidates, device, min_run_time=1.0):
    """Median seconds of one call of each of `candidates` ({name: fn}), timed in blocks that take
    turns (a block of the first, one of the second, ..., and again), so that a change in the
    machine's state during the measurement (another process, the clock speed, the allocator's
    heap) falls on every candidate alike. Each candidate gets about `min_run_time` seconds, after
    warm-up calls (the first calls compile or allocate)."""
    calls = {}
    for name, fn in candidates.items():
        for _ in range(3):
            fn()
        sync(device)
        one_call = _seconds_per_call(fn, device, 1)
        calls[name] = max(1, math.ceil(min_run_time * BLOCK_FRACTION / max(one_call, 1e-9)))
    samples = {name: [] for name in candidates}
    deadline = time.perf_counter() + min_run_time * len(candidates)
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection would land in one candidate's block
    try:
        while time.perf_counter() < deadline or min(map(len, samples.values())) < MIN_BLOCKS:
            for name, fn in candidates.items():
                samples[name].append(_seconds_per_call(fn, device, calls[name]))
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: statistics.median(times) for name, times in samples.items()}


def median_seconds(fn, device, min_run_time=1.0):
    """Median seconds of one call of `fn` alone (see compare)."""
    return compare({"fn": fn}, device, min_run_time)["fn"]


def copy_bandwidth(numel, dtype, device):
    """GB/s of a plain tensor copy (read + write) of `numel` elements: the memory-bound limit."""
    src = torch.randn(numel, device=device).to(dtype)
    dst = torch.empty_like(src)
    seconds = median_seconds(lambda: dst.copy_(src), device)
    return 2 * src.element_size() * numel / seconds / 1e9


def matmul_rate(device, dtype=torch.float32, n=1024):
    """GFLOP/s of a square matmul: the compute-bound limit."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = median_seconds(lambda: a @ b, device)
    return 2 * n ** 3 / seconds / 1e9


def geometric_mean(values):
    return math.exp(sum(map(math.log, values)) / len(values))


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def relative_error(actual, exact):
    """The largest deviation from the float64 result, over the result's largest magnitude."""
    return ((actual.double() - exact).abs().max() / exact.abs().max()).item()


def conv2d_part_rows(label, x, w, geometry, device, min_run_time):
    """Rows [label, part, torch ms, fastgan ms, ratio, the dispatch's choice] for each part of
    fastgan.ops.conv2d(x, w, None, *geometry) on the CPU: torch's kernels (oneDNN) against
    fastgan's, interleaved (min_run_time / 4 each)."""
    conv2d_module = importlib.import_module("fastgan.ops.conv2d")
    parts = (("forward", lambda g, own: conv2d_module._forward(x, w, None, geometry, own)),
             ("input gradient", lambda g, own: conv2d_module._input_grad(g, x, w, geometry, own)),
             ("weight gradient",
              lambda g, own: conv2d_module._weight_grad(g, x, w, geometry, own)))
    g = torch.randn_like(conv2d_module._forward(x, w, None, geometry, False))
    chosen = conv2d_module._own_kernels(x, w, None, geometry)
    rows = []
    for (part, fn), own in zip(parts, chosen):
        t = compare({own_kernels: lambda own_kernels=own_kernels: fn(g, own_kernels)
                     for own_kernels in (False, True)}, device, min_run_time / 4)
        rows.append([label, part, f"{t[False] * 1e3:.2f}", f"{t[True] * 1e3:.2f}",
                     f"{t[False] / t[True]:.2f}x", "fastgan" if own else "torch"])
    return rows
