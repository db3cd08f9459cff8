"""Shared benchmark plumbing: timing (torch.utils.benchmark), machine limits, Markdown tables."""
import torch
import torch.utils.benchmark as benchmark


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device, min_run_time=1.0):
    """Median time of one call, after warm-up (the first calls compile or allocate)."""
    for _ in range(3):
        fn()
    sync(device)
    timer = benchmark.Timer(stmt="fn(); sync(device)", num_threads=torch.get_num_threads(),
                            globals={"fn": fn, "sync": sync, "device": device})
    return timer.blocked_autorange(min_run_time=min_run_time).median


def copy_bandwidth(numel, dtype, device):
    """GB/s of a plain tensor copy (read + write) of `numel` elements: the memory-bound limit."""
    src = torch.randn(numel, device=device).to(dtype)
    dst = torch.empty_like(src)
    seconds = median_seconds(lambda: dst.copy_(src), device)
    return 2 * src.element_size() * numel / seconds / 1e9


def matmul_rate(device, dtype=torch.float32, n=1024):
    """GFLOP/s of a square float32 matmul: the compute-bound limit."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = median_seconds(lambda: a @ b, device)
    return 2 * n ** 3 / seconds / 1e9


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
