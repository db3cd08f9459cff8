"""The `fastgan cyclegan` and `fastgan translate` commands: unpaired image-to-image translation
on the bundled digits task or on two folders of images, and translating images with a trained
checkpoint."""
import json
import math
import os

import torch

import fastgan
from fastgan import cli  # run_fit; cli adds this module's commands when it builds its parser
from fastgan.data.images import IMAGE_EXTENSIONS
from fastgan.train import outputs

# Defaults per data. "folders" is the published recipe (Zhu et al. 2017: 256x256 crops of
# 286x286 images, batch 1, 9 residual blocks, the 70x70 PatchGAN, identity loss 0.5; 200 epochs
# of about 1000 images). The digits task is small (16x16 grey images): smaller networks, a
# discriminator of fewer channels, and no identity loss, which asks g_ab to leave B's images as
# they are and so fights a change that inverts them (with it, the translations keep no digit).
# Re-measured with `python scripts/evaluate_recipes.py cyclegan-digits`.
RECIPES = {
    "digits": {"steps": 1500, "batch_size": 4, "image_size": 16, "base_channels": 32,
               "blocks": 3, "d_base_channels": 8, "layers": 2, "identity_weight": 0.0},
    "folders": {"steps": 200_000, "batch_size": 1, "image_size": 256, "load_size": 286,
                "base_channels": 64, "blocks": 9, "d_base_channels": 64, "layers": 3,
                "identity_weight": 0.5},
}


def _data(args, recipe):
    """(domain_a, domain_b, channels, evaluate) for --data digits or --data-a/--data-b."""
    if args.data is not None and (args.data_a or args.data_b):
        raise ValueError("give --data digits or --data-a and --data-b, not both")
    if args.data is not None:
        if args.data != "digits":
            raise ValueError(f"--data {args.data!r}: the bundled task is 'digits' (for your "
                             f"images, --data-a and --data-b)")
        domain_a, domain_b, test = fastgan.data.digits_translation(recipe["image_size"])

        def evaluate(trainer):
            return fastgan.metrics.translation_scores(trainer.translate(test.tensors[0]), test,
                                                      domain_b)
        return domain_a, domain_b, 1, evaluate
    if not (args.data_a and args.data_b):
        raise ValueError("give --data digits, or both --data-a and --data-b")
    channels = 3 if args.channels is None else args.channels
    folders = fastgan.data.UnpairedImageFolders(
        args.data_a, args.data_b, recipe["image_size"], recipe["load_size"], channels)
    return folders.domain_a, folders.domain_b, channels, None


def _train(args):
    fastgan.train.keep_freed_memory()
    recipe = dict(RECIPES["digits" if args.data else "folders"])
    for key in ("image_size", "load_size"):
        if getattr(args, key) is not None:
            recipe[key] = getattr(args, key)
    steps = recipe["steps"] if args.steps is None else args.steps
    domain_a, domain_b, channels, evaluate = _data(args, recipe)
    out = args.out or os.path.join("runs", "cyclegan-digits" if args.data else "cyclegan")
    if args.resume is not None:
        checkpoint = args.resume or os.path.join(out, outputs.CHECKPOINT_NAME)
        trainer = fastgan.CycleGANTrainer.load(checkpoint, device=args.device, out_dir=out)
    else:
        torch.manual_seed(args.seed)  # the models' initialization
        models = fastgan.models
        generators = [models.ResnetGenerator(channels, channels, recipe["base_channels"],
                                             recipe["blocks"]) for _ in range(2)]
        discriminators = [models.PatchDiscriminator(channels, recipe["d_base_channels"],
                                                    recipe["layers"]) for _ in range(2)]
        identity_weight = (recipe["identity_weight"] if args.identity_weight is None
                           else args.identity_weight)
        trainer = fastgan.CycleGANTrainer(
            *generators, *discriminators, loss=args.loss,
            cycle_weight=args.cycle_weight, identity_weight=identity_weight,
            r1_gamma=args.r1_gamma, device=args.device, amp=args.amp, out_dir=out,
            seed=args.seed, keep_checkpoints=args.keep_checkpoints)
    processes = trainer.world_size
    # The batch is split between torchrun's processes: the recipe's is rounded up to a multiple
    # of their number (the published batch of 1 becomes one image per process).
    batch_size = (math.ceil(recipe["batch_size"] / processes) * processes
                  if args.batch_size is None else args.batch_size)
    report = print if trainer.rank == 0 else lambda *args, **kwargs: None  # torchrun: once
    report(f"training CycleGAN on {args.data or f'{args.data_a} <-> {args.data_b}'} for {steps} "
           f"steps (batch {batch_size}{f' over {processes} processes' if processes > 1 else ''}"
           f") on {trainer.device}; writing to {out}", flush=True)
    stopped = cli.run_fit(trainer, lambda: trainer.fit(
        domain_a, domain_b, steps, batch_size, sample_every=max(1, steps // 10),
        evaluate=evaluate, progress=not args.quiet), report)
    if stopped is not None:
        return stopped
    summary = {"step": trainer.step, "checkpoint": trainer.checkpoint_path,
               "samples": trainer.latest_samples_path,
               "losses": os.path.join(out, outputs.LOSS_PLOT_NAME),
               "metrics": os.path.join(out, outputs.METRICS_NAME)}
    if trainer.last_evaluation is not None:
        summary["evaluation"] = trainer.last_evaluation
    report(json.dumps(summary, indent=2))
    return 0


def _input_paths(path):
    if os.path.isdir(path):
        paths = sorted(os.path.join(path, name) for name in os.listdir(path)
                       if name.lower().endswith(IMAGE_EXTENSIONS))
        if not paths:
            raise ValueError(f"--input {path!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        return paths
    if not os.path.isfile(path):
        raise ValueError(f"--input {path!r}: no such file or directory")
    return [path]


def _translate(args):
    from PIL import Image

    from fastgan.data.images import _to_tensor
    from fastgan.train.plots import save_image_grid

    trainer = fastgan.CycleGANTrainer.load(args.checkpoint, device=args.device)
    generator = trainer.g_ab if args.direction == "a2b" else trainer.g_ba
    channels = generator.config["in_channels"] if hasattr(generator, "config") else 3
    os.makedirs(args.output, exist_ok=True)
    written = []
    for path in _input_paths(args.input):
        try:
            with Image.open(path) as image:
                image = image.convert("L" if channels == 1 else "RGB")
                # The generator halves the size twice: sides go to the nearest multiple of 4.
                size = tuple(max(4, int((args.image_size or side) / 4 + 0.5) * 4)
                             for side in image.size)
                pixels = _to_tensor(image.resize(size, Image.Resampling.BICUBIC), channels)
        except OSError as error:
            raise ValueError(f"--input: cannot read image {path!r}: {error}") from error
        translated = trainer.translate(pixels, args.direction)
        target = os.path.join(args.output,
                              os.path.splitext(os.path.basename(path))[0] + ".png")
        save_image_grid(translated.unsqueeze(0), target, padding=0, min_side=0)
        written.append(target)
    print(f"wrote {len(written)} image(s) to {args.output}")
    return 0


def add_commands(commands):
    cyclegan = commands.add_parser(
        "cyclegan", help="train CycleGAN (unpaired image-to-image translation) on the bundled "
        "digits task or on two folders of images, data-parallel under torchrun; writes "
        "OUT/checkpoint.pt, metrics.jsonl, losses.png and samples/")
    cyclegan.add_argument("--data", help="digits: the bundled task (prints its scores)")
    cyclegan.add_argument("--data-a", help="a folder of domain A's images")
    cyclegan.add_argument("--data-b", help="a folder of domain B's images")
    cyclegan.add_argument("--steps", type=int, help="total steps (default: the recipe's)")
    cyclegan.add_argument("--batch-size", type=int,
                          help="images of each domain per step, split between torchrun's "
                               "processes (default: the recipe's, 4 for digits, 1 for folders, "
                               "rounded up to a multiple of the number of processes)")
    cyclegan.add_argument("--image-size", type=int,
                          help="the training crop (folders; default 256)")
    cyclegan.add_argument("--load-size", type=int,
                          help="images are resized to this, then cropped (folders; default 286)")
    cyclegan.add_argument("--channels", type=int, help="1 or 3 (folders; default 3)")
    cyclegan.add_argument("--loss", choices=fastgan.losses.KINDS, default="least_squares")
    cyclegan.add_argument("--cycle-weight", type=float, default=10.0)
    cyclegan.add_argument("--identity-weight", type=float,
                          help="relative to --cycle-weight (default: the recipe's, 0.5 for "
                               "folders, 0 for digits)")
    cyclegan.add_argument("--r1-gamma", type=float, default=0.0)
    cyclegan.add_argument("--out", help="output folder (default: runs/cyclegan-digits or "
                                        "runs/cyclegan)")
    cyclegan.add_argument("--seed", type=int, default=0)
    cyclegan.add_argument("--device", default="auto")
    cyclegan.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA)")
    cyclegan.add_argument("--resume", nargs="?", const="", metavar="CHECKPOINT",
                          help="continue from CHECKPOINT (default: OUT/checkpoint.pt)")
    cyclegan.add_argument("--keep-checkpoints", type=int, default=1, metavar="K")
    cyclegan.add_argument("--quiet", action="store_true", help="no progress")
    cyclegan.set_defaults(run=_train)

    translate = commands.add_parser("translate",
                                    help="translate images with a `fastgan cyclegan` checkpoint")
    translate.add_argument("--checkpoint", required=True)
    translate.add_argument("--input", required=True, help="an image or a folder of images")
    translate.add_argument("--output", required=True, help="the folder for the translations "
                                                           "(PNG, named as the inputs)")
    translate.add_argument("--direction", choices=("a2b", "b2a"), default="a2b")
    translate.add_argument("--image-size", type=int,
                           help="resize to this square first (default: the input's size, "
                                "rounded to a multiple of 4)")
    translate.add_argument("--device", default="auto")
    translate.set_defaults(run=_translate)
