"""Runs fastgan's benchmarks and prints Markdown tables (python benchmarks/run.py --help)."""
import argparse
import datetime
import os
import platform
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# The benchmark modules, then the checkout they belong to (ahead of any installed fastgan).
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import torch  # noqa: E402

import fastgan  # noqa: E402
import bench_batch_norm_leaky_relu  # noqa: E402
import bench_convert  # noqa: E402
import bench_conv_transpose2d  # noqa: E402
import bench_r1  # noqa: E402
from common import copy_bandwidth, matmul_rate  # noqa: E402

SUITES = {"bn": bench_batch_norm_leaky_relu, "convt": bench_conv_transpose2d, "r1": bench_r1,
          "convert": bench_convert}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--only", nargs="*", choices=sorted(SUITES), default=sorted(SUITES))
    parser.add_argument("--min-run-time", type=float, default=1.0,
                        help="seconds of timing per measurement")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="run with glibc's malloc keeping freed memory, as `fastgan train` "
                             "does (fastgan.train.keep_freed_memory)")
    args = parser.parse_args()
    if args.keep_freed_memory and not fastgan.train.keep_freed_memory():
        parser.error("--keep-freed-memory needs Linux with glibc")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(f"## {datetime.date.today()} — {name or platform.machine()}, {args.device}, "
          f"{args.threads} threads, {args.dtype}")
    print(f"torch {torch.__version__}, fastgan {fastgan.__version__}, "
          f"backend {fastgan.backend_info()}, malloc keeps freed memory: "
          f"{args.keep_freed_memory}")
    print(f"copy bandwidth {copy_bandwidth(1 << 24, torch.float32, device):.1f} GB/s, "
          f"float32 matmul {matmul_rate(device):.0f} GFLOP/s\n")
    for suite in args.only:
        print(SUITES[suite].run(device, dtype, args.min_run_time))
        print()


if __name__ == "__main__":
    main()
