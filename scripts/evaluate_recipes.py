"""Runs `fastgan train` (and `fastgan cyclegan`) with its default recipe for several seeds and
prints the quality and the time of each run, so that the README's numbers can be re-measured on
any machine:

    python scripts/evaluate_recipes.py ring grid digits cyclegan-digits --seeds 0 1 2
    python scripts/evaluate_recipes.py cyclegan-digits --cycle-weight 0   # without the cycle loss

Extra `fastgan train` arguments pass through (e.g. --steps 2000 for a quick look). Set
OMP_NUM_THREADS to choose the number of threads. The 2D mixtures report the modes captured
(each with >= 20% of its fair share of samples) and the fraction of high-quality samples
(within 3 std of the nearest mode); the digits the classifier score next to the real data's;
cyclegan-digits the translation's class preservation and pixel error
(fastgan.metrics.translation_scores)."""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(data, seed, extra, out):
    command = ([sys.executable, "-m", "fastgan", "cyclegan", "--data", "digits"]
               if data == "cyclegan-digits" else
               [sys.executable, "-m", "fastgan", "train", "--data", data])
    command += ["--seed", str(seed), "--out", out, "--quiet", *extra]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": ROOT})
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr}")
    output = result.stdout
    summary = json.loads(output[output.index("{"):output.rindex("}") + 1])
    return {"data": data, "seed": seed, "steps": summary["step"], "seconds": round(seconds, 1),
            **summary["evaluation"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+",
                        choices=("ring", "grid", "digits", "cyclegan-digits"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args, extra = parser.parse_known_args()
    threads = os.environ.get("OMP_NUM_THREADS", "all")
    for data in args.datasets:
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as out:
                result = run(data, seed, extra, out)
            print(json.dumps({**result, "threads": threads}), flush=True)


if __name__ == "__main__":
    main()
