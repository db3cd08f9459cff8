"""The `fastgan` command line: train, sample, cyclegan, translate, bench, info."""
import argparse
import json
import os
import subprocess
import sys

import torch

import fastgan
from fastgan import cli_cyclegan
from fastgan.train import outputs

# Defaults per dataset, tuned on a 2-core CPU with scripts/evaluate_recipes.py (lr is
# both G's and D's; lr_decay_start: the fraction of the steps after which both fall linearly to
# 0; 2D data uses fastgan's MLPs with the "mlp" arguments, images DCGAN with base_channels;
# conditional: class-conditional models unless --no-conditional).
RECIPES = {
    "ring": {"steps": 16000, "batch_size": 512, "loss": "non_saturating", "r1_gamma": 0.01,
             "r1_interval": 4, "ema": 0.999, "lr": 1e-3, "lr_decay_start": 0.25,
             "mlp": {"hidden": 256, "layers": 3, "batch_norm": False}},
    "grid": {"steps": 16000, "batch_size": 512, "loss": "non_saturating", "r1_gamma": 0.05,
             "r1_interval": 4, "ema": 0.999, "lr": 1e-3, "lr_decay_start": 0.25,
             "mlp": {"hidden": 256, "layers": 3, "batch_norm": False}},
    "digits": {"steps": 10000, "batch_size": 128, "loss": "non_saturating", "r1_gamma": 1.0,
               "r1_interval": 4, "ema": 0.999, "lr": 5e-4, "lr_decay_start": 0.5,
               "image_size": 16, "base_channels": 32, "conditional": True},
    "folder": {"steps": 20000, "batch_size": 64, "loss": "non_saturating", "r1_gamma": 0.0,
               "r1_interval": 16, "ema": 0.999, "lr": 2e-4, "image_size": 64,
               "base_channels": 64},
}
MIXTURE_SAMPLES = 100_000  # the fixed training set drawn from a 2D mixture
EVALUATION_SAMPLES = 2500  # as in PacGAN's mode-coverage tables


def _mixture(name, seed):
    """(training samples, true means, std) of PacGAN's ring or grid."""
    generator = torch.Generator().manual_seed(seed)
    if name == "ring":
        return (fastgan.data.gaussian_ring(MIXTURE_SAMPLES, generator=generator),
                fastgan.data.ring_means(), 0.01)
    return (fastgan.data.gaussian_grid(MIXTURE_SAMPLES, generator=generator),
            fastgan.data.grid_means(), 0.05)


def _build(args, recipe):
    """(data, generator, discriminator, evaluate, modes) for the requested dataset; every bad
    argument fails here, before training."""
    kind = args.data if args.data in ("ring", "grid", "digits") else "folder"
    conditional = (recipe.get("conditional", False) if args.conditional is None
                   else args.conditional)
    if kind in ("ring", "grid"):
        if args.image_size is not None or args.channels is not None:
            raise ValueError(f"--image-size and --channels apply to image data, not {kind}")
        if conditional:
            raise ValueError(f"--conditional needs labelled data; {kind} has no labels")
        data, means, std = _mixture(kind, args.seed)

        def evaluate(trainer):
            coverage = fastgan.metrics.mode_coverage(trainer.sample(EVALUATION_SAMPLES), means,
                                                     std)
            return {"modes": coverage["modes"], "high_quality": coverage["high_quality"],
                    "smallest_mode_share": min(coverage["counts"]) * len(means)
                    / EVALUATION_SAMPLES}

        models = (fastgan.models.MLPGenerator(**recipe["mlp"]),
                  fastgan.models.MLPDiscriminator())
        return (data, *models, evaluate, means)
    image_size = recipe["image_size"] if args.image_size is None else args.image_size
    if kind == "digits":
        if args.channels not in (None, 1):
            raise ValueError("--channels: the digits are grey (1 channel)")
        data, channels, num_classes = fastgan.data.digits(image_size), 1, 10

        def evaluate(trainer):
            return fastgan.metrics.digits_quality(trainer.sample(1000))
    else:
        channels = 3 if args.channels is None else args.channels
        if not os.path.exists(args.data):
            raise ValueError(f"--data {args.data!r}: no such file or directory (expected digits, "
                             "ring, grid or a folder of images)")
        data = fastgan.data.ImageFolder(args.data, image_size, channels)
        num_classes, evaluate = data.num_classes, None
        if conditional and not num_classes:
            raise ValueError(f"--conditional needs labelled data: {args.data} has no class "
                             "subfolders")
    num_classes = num_classes if conditional else 0
    generator = fastgan.models.DCGANGenerator(
        z_dim=100, out_channels=channels, image_size=image_size, num_classes=num_classes,
        base_channels=recipe["base_channels"])
    discriminator = fastgan.models.DCGANDiscriminator(
        in_channels=channels, image_size=image_size, num_classes=num_classes,
        base_channels=recipe["base_channels"])
    return data, generator, discriminator, evaluate, None


def run_fit(trainer, fit, report=print):
    """Calls fit(); returns None once it finished, else the exit code: Ctrl-C's or SIGTERM's
    (fit saved first, and `report` says how to continue), or 1 for a loss that is not finite."""
    try:
        fit()
    except (KeyboardInterrupt, SystemExit) as stop:
        report(f"interrupted at step {trainer.step}; saved {trainer.checkpoint_path} (continue "
               f"with --resume)", file=sys.stderr)
        return stop.code if isinstance(stop, SystemExit) else 130
    except FloatingPointError as error:
        print(f"fastgan: {error}", file=sys.stderr)
        return 1
    return None


def _train(args):
    # Each step's large tensors then reuse the previous step's memory instead of being
    # page-faulted in again (`benchmarks/run.py --keep-freed-memory` measures the difference).
    fastgan.train.keep_freed_memory()
    recipe = RECIPES.get(args.data, RECIPES["folder"])
    steps = recipe["steps"] if args.steps is None else args.steps
    batch_size = recipe["batch_size"] if args.batch_size is None else args.batch_size
    torch.manual_seed(args.seed)  # the models' initialization
    data, generator, discriminator, evaluate, modes = _build(args, recipe)
    out = args.out or os.path.join("runs", os.path.basename(os.path.normpath(args.data)))
    if args.resume is not None:
        checkpoint = args.resume or os.path.join(out, outputs.CHECKPOINT_NAME)
        trainer = fastgan.Trainer.load(checkpoint, device=args.device, out_dir=out)
    else:
        ema = recipe["ema"] if args.ema is None else args.ema
        trainer = fastgan.Trainer(
            generator, discriminator, loss=args.loss or recipe["loss"],
            r1_gamma=recipe["r1_gamma"] if args.r1_gamma is None else args.r1_gamma,
            r1_interval=recipe["r1_interval"],
            lr_g=recipe["lr"], lr_d=recipe["lr"], ema_decay=ema or None,
            lr_decay=(None if recipe.get("lr_decay_start") is None
                      else (int(recipe["lr_decay_start"] * steps), max(steps, 1))),
            device=args.device, amp=args.amp, out_dir=out, seed=args.seed,
            keep_checkpoints=args.keep_checkpoints)
    report = print if trainer.rank == 0 else lambda *args, **kwargs: None  # torchrun: once
    report(f"training on {args.data} for {steps} steps (batch {batch_size}"
           f"{f' over {trainer.world_size} processes' if trainer.world_size > 1 else ''}) on "
           f"{trainer.device}; writing to {out}", flush=True)
    stopped = run_fit(trainer, lambda: trainer.fit(data, steps, batch_size, evaluate=evaluate,
                                                   modes=modes, progress=not args.quiet),
                      report)
    if stopped is not None:
        return stopped
    summary = {"step": trainer.step, "checkpoint": trainer.checkpoint_path,
               "samples": trainer.latest_samples_path,
               "raw_samples": (trainer.outputs.raw_samples_path
                               if trainer.latest_samples_path else None),
               "losses": os.path.join(out, outputs.LOSS_PLOT_NAME),
               "metrics": os.path.join(out, outputs.METRICS_NAME)}
    if trainer.last_evaluation is not None:
        summary["evaluation"] = trainer.last_evaluation
    report(json.dumps(summary, indent=2))
    report(f"sample images: {trainer.latest_samples_path}")
    return 0


def _sample(args):
    from fastgan.train.plots import save_image_grid, save_scatter

    trainer = fastgan.Trainer.load(args.checkpoint, device=args.device)
    samples = trainer.sample(args.n)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if args.out.endswith(".pt"):
        torch.save(samples, args.out)
    elif samples.dim() == 4:
        save_image_grid(samples, args.out)
    elif samples.shape[1:] == (2,):
        save_scatter(samples, args.out)
    else:
        raise ValueError(f"--out: samples of shape {tuple(samples.shape[1:])} can only be saved "
                         "as a .pt file")
    print(f"wrote {args.n} samples to {args.out}")
    return 0


def _bench(args):
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(fastgan.__file__))),
                          "benchmarks", "run.py")
    if not os.path.exists(script):
        raise ValueError("the benchmarks are not installed: run bench from a source checkout")
    return subprocess.call([sys.executable, script, *args.bench_args])


def _info(args):
    print(json.dumps({"fastgan": fastgan.__version__, **fastgan.backend_info()}, indent=2))
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="fastgan", description=fastgan.__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=fastgan.__version__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a GAN; writes OUT/checkpoint.pt, "
                                "metrics.jsonl, losses.png and samples/ (pictures, and the "
                                "newest one's raw tensor in samples/latest.pt)")
    train.add_argument("--data", required=True,
                       help="digits, ring, grid, or a folder of images (class subfolders are "
                            "labels)")
    train.add_argument("--steps", type=int, help="total generator steps (default: the recipe's)")
    train.add_argument("--batch-size", type=int)
    train.add_argument("--loss", choices=fastgan.losses.KINDS)
    train.add_argument("--r1-gamma", type=float)
    train.add_argument("--ema", type=float, help="EMA decay of the generator (0: no EMA)")
    train.add_argument("--conditional", action=argparse.BooleanOptionalAction,
                       help="class-conditional models (needs labelled data; default: the "
                            "recipe's, conditional for digits)")
    train.add_argument("--image-size", type=int, help="16, 32, 64 or 128 (image data)")
    train.add_argument("--channels", type=int, help="1 or 3 (image folders; default 3)")
    train.add_argument("--out", help="output folder (default: runs/<data>)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="auto")
    train.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA)")
    train.add_argument("--resume", nargs="?", const="", metavar="CHECKPOINT",
                       help="continue from CHECKPOINT (default: OUT/checkpoint.pt)")
    train.add_argument("--keep-checkpoints", type=int, default=1, metavar="K",
                       help="also keep the K newest checkpoints in OUT/checkpoints/ (default 1: "
                            "only OUT/checkpoint.pt)")
    train.add_argument("--quiet", action="store_true",
                       help="no progress (otherwise a bar in a terminal, and a plain line at "
                            "every tenth of the steps and at least every 30 s when the output "
                            "goes to a file or a pipe)")
    train.set_defaults(run=_train)

    sample = commands.add_parser("sample", help="draw samples from a checkpoint")
    sample.add_argument("--checkpoint", required=True)
    sample.add_argument("--n", type=int, default=64)
    sample.add_argument("--out", default="samples.png",
                        help="a .png picture (images: a grid, small ones enlarged with nearest "
                             "neighbour to at least 512 pixels) or a .pt tensor (the raw "
                             "samples)")
    sample.add_argument("--device", default="auto")
    sample.set_defaults(run=_sample)

    cli_cyclegan.add_commands(commands)

    bench = commands.add_parser("bench", add_help=False,
                                help="run benchmarks/run.py (arguments pass through)")
    bench.set_defaults(run=_bench)

    commands.add_parser("info", help="show the version and which kernels are active").set_defaults(
        run=_info)
    return parser


def main(argv=None):
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":
        args.bench_args = extra  # everything after `bench` belongs to benchmarks/run.py
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.run(args)
    except ValueError as error:
        parser.error(str(error))
