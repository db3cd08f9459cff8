"""Runs fastgan's benchmarks and prints Markdown tables; with --markdown, also writes them into
benchmarks/README.md (this machine's section) and README.md (the summary of current speedups).
See benchmarks/README.md for the method (python benchmarks/run.py --help)."""
import argparse
import datetime
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# The benchmark modules, then the checkout they belong to (ahead of any installed fastgan).
sys.path[:0] = [HERE, ROOT]

import torch  # noqa: E402

import fastgan  # noqa: E402
import bench_batch_norm_leaky_relu  # noqa: E402
import bench_convert  # noqa: E402
import bench_cyclegan  # noqa: E402
import bench_conv_transpose2d  # noqa: E402
import bench_instance_norm  # noqa: E402
import bench_memory  # noqa: E402
import bench_r1  # noqa: E402
import report  # noqa: E402
from common import copy_bandwidth, matmul_rate  # noqa: E402

SUITES = {"bn": bench_batch_norm_leaky_relu, "in": bench_instance_norm,
          "convt": bench_conv_transpose2d, "r1": bench_r1, "convert": bench_convert,
          "cyclegan": bench_cyclegan, "memory": bench_memory}


def commit():
    """The checkout's short commit, marked when the working tree has changes; "" without git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.strip()
        changes = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                 cwd=ROOT, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""
    return head + (" with uncommitted changes" if changes.strip() else "")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--only", nargs="*", choices=sorted(SUITES))
    parser.add_argument("--min-run-time", type=float, default=1.0,
                        help="seconds of timing per candidate and measurement (default: 1)")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="run with glibc's malloc keeping freed memory, as `fastgan train` "
                             "does (fastgan.train.keep_freed_memory)")
    parser.add_argument("--markdown", action="store_true",
                        help="also write the results into benchmarks/README.md (this machine's "
                             "section) and, for the CPU with 2 threads in float32, README.md's "
                             "summary (every suite runs)")
    args = parser.parse_args()
    if args.markdown and args.only is not None and set(args.only) != set(SUITES):
        parser.error("--markdown runs every suite, so that a machine's section is one run: "
                     "leave out --only")
    if args.keep_freed_memory and not fastgan.train.keep_freed_memory():
        parser.error("--keep-freed-memory needs Linux with glibc")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    device_name = (f"cuda {torch.cuda.get_device_name(device)}" if device.type == "cuda"
                   else device.type)
    info = report.RunInfo(
        cpu=report.cpu_model(), device=device_name, threads=args.threads, dtype=args.dtype,
        date=str(datetime.date.today()), torch=torch.__version__, fastgan=fastgan.__version__,
        commit=commit(), copy_gbs=copy_bandwidth(1 << 24, torch.float32, device),
        matmul_gflops=matmul_rate(device), keeps_freed_memory=args.keep_freed_memory)
    print(f"## {info.date} — {info.key}")
    print(f"{info.versions()}, backend {fastgan.backend_info()}, malloc keeps freed memory: "
          f"{args.keep_freed_memory}")
    print(f"copy bandwidth {info.copy_gbs:.1f} GB/s, float32 matmul {info.matmul_gflops:.0f} "
          "GFLOP/s\n", flush=True)
    results = {}
    for suite in args.only or SUITES:
        results[suite] = SUITES[suite].run(device, dtype, args.min_run_time)
        print(results[suite].markdown, end="\n\n", flush=True)
    if args.markdown:
        written = report.write(info, results, os.path.join(HERE, "README.md"),
                               os.path.join(ROOT, "README.md"))
        print("wrote " + " and ".join(os.path.relpath(path, ROOT) for path in written))
        if not info.summary_applies:
            print("README.md's summary is for the CPU with 2 threads in float32: left as it is")


if __name__ == "__main__":
    main()
