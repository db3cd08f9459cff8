"""fastgan.CycleGANTrainer: unpaired image-to-image translation (Zhu et al. 2017). Two generators,
G: A -> B and F: B -> A, each against a discriminator of its target domain, with the
cycle-consistency loss ||F(G(a)) - a||_1 + ||G(F(b)) - b||_1 and the identity loss, the
discriminators trained on a pool of past generated images, and a learning rate constant, then
falling linearly to 0. Checkpoints hold every state (models, optimizers, both pools, the random
state and the data order; under torchrun every rank's pools and random state), so a resumed run
continues exactly as one that never stopped."""
import dataclasses
import itertools
import random

import numpy as np
import torch

from fastgan import losses
from fastgan._checks import check_choice, check_int, check_number, check_tensor
from fastgan.train import distributed
from fastgan.train.batches import make_batches
from fastgan.train.checkpoint import safe_load
from fastgan.train.image_pool import ImagePool
from fastgan.train.loop import (TrainingLoop, check_fit_arguments, model_spec,
                                models_from_checkpoint, resolve_device, rng_state,
                                set_rng_state, trainable)
from fastgan.train.outputs import RunOutputs
from fastgan.train.regularization import r1_penalty

CHECKPOINT_FORMAT = "cyclegan-2"
DIRECTIONS = ("a2b", "b2a")
MODEL_NAMES = ("g_ab", "g_ba", "d_a", "d_b")
# Each picture shows this many images of each domain, with their translation and its way back:
# 2 * 6 triples make a grid of 6 x 6 (save_image_grid makes square-ish grids), a triple per half
# row.
_PICTURE_IMAGES = 6
# What the loss plot shows.
LOSSES = (("d_a", "D_A loss"), ("d_b", "D_B loss"), ("g_adversarial", "G adversarial"),
          ("cycle", "cycle (L1)"))
# translate() runs the generator on this many images at a time.
_TRANSLATE_BATCH = 16


@dataclasses.dataclass(frozen=True)
class CycleGANConfig:
    """CycleGANTrainer's settings, checked once; to_dict() is what a checkpoint keeps."""
    loss: str = "least_squares"
    cycle_weight: float = 10.0
    identity_weight: float = 0.5
    pool_size: int = 50
    lr: float = 2e-4
    betas: tuple = (0.5, 0.999)
    decay_start: int = None
    r1_gamma: float = 0.0
    amp: bool = False
    out_dir: str = None
    seed: int = 0
    keep_checkpoints: int = 1

    def __post_init__(self):
        check_choice("loss", self.loss, losses.KINDS)
        check_number("cycle_weight", self.cycle_weight, minimum=0.0)
        check_number("identity_weight", self.identity_weight, minimum=0.0)
        check_int("pool_size", self.pool_size, minimum=0)
        check_number("lr", self.lr, positive=True)
        if not (isinstance(self.betas, (tuple, list)) and len(self.betas) == 2):
            raise ValueError(f"betas must be a pair of numbers, got {self.betas!r}")
        for beta in self.betas:
            check_number("betas", beta, minimum=0.0, maximum=1.0)
        object.__setattr__(self, "betas", tuple(self.betas))
        if self.decay_start is not None:
            check_int("decay_start", self.decay_start, minimum=0)
        check_number("r1_gamma", self.r1_gamma, minimum=0.0)
        if not isinstance(self.amp, bool):
            raise TypeError(f"amp must be a bool, got {type(self.amp).__name__}")
        if self.out_dir is not None:
            object.__setattr__(self, "out_dir", str(self.out_dir))
        check_int("seed", self.seed)
        check_int("keep_checkpoints", self.keep_checkpoints, minimum=1)

    def to_dict(self):
        return {**dataclasses.asdict(self), "betas": list(self.betas)}


class CycleGANTrainer(TrainingLoop):
    """Trains g_ab (A -> B), g_ba (B -> A), d_a (real A against g_ba's images) and d_b (real B
    against g_ab's) as CycleGAN does.

    loss: a fastgan.losses kind (least squares by default), summed over both discriminators (each
    half-weighted, as published). cycle_weight: the weight of the L1 cycle loss. identity_weight:
    of the identity loss ||g_ab(b) - b||_1 + ||g_ba(a) - a||_1, relative to cycle_weight (0
    turns it off; it needs as many channels in A as in B). pool_size: the past generated images
    each discriminator sees (ImagePool; 0: only the newest). lr, betas: Adam's, for both
    generators together and both discriminators together. decay_start: the step from which the
    learning rate falls linearly to 0 at the last step of fit (default: half of fit's steps).
    r1_gamma > 0 adds an R1 penalty on real images to both discriminators. amp: the networks run
    under bfloat16 autocast (CUDA only), the losses in float32. device, out_dir, seed,
    keep_checkpoints: as fastgan.Trainer's.

    Under torchrun (or an initialized torch.distributed group) it trains data-parallel as
    fastgan.Trainer does: the four networks in DDP (BatchNorm layers, if a user's models have
    any, synced), each process on its shard of every batch of both domains (fit's batch_size is
    the total over the processes), rank 0 alone writing the outputs. Each process keeps its own
    pools (its discriminators see its own history) and random state; fit's checkpoints hold
    every rank's, so a run resumes with as many processes as wrote them (fit raises ValueError
    otherwise; `load` and `translate` work with any number)."""

    def __init__(self, g_ab, g_ba, d_a, d_b, *, loss="least_squares", cycle_weight=10.0,
                 identity_weight=0.5, pool_size=50, lr=2e-4, betas=(0.5, 0.999),
                 decay_start=None, r1_gamma=0.0, device="auto", amp=False, out_dir=None, seed=0,
                 keep_checkpoints=1):
        models = dict(zip(MODEL_NAMES, (g_ab, g_ba, d_a, d_b)))
        for name, model in models.items():
            if not isinstance(model, torch.nn.Module):
                raise TypeError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")
        self.config = CycleGANConfig(
            loss=loss, cycle_weight=cycle_weight, identity_weight=identity_weight,
            pool_size=pool_size, lr=lr, betas=betas, decay_start=decay_start,
            r1_gamma=r1_gamma, amp=amp, out_dir=out_dir, seed=seed,
            keep_checkpoints=keep_checkpoints)
        self.device, self.rank, self.world_size = distributed.setup(resolve_device(device))
        if self.config.amp and self.device.type != "cuda":
            raise ValueError(f"amp=True needs a CUDA device, got device {str(self.device)!r}")
        self.outputs = RunOutputs(self.config.out_dir if self.rank == 0 else None,  # rank 0 writes
                                  self.config.keep_checkpoints, LOSSES)
        random.seed(seed + self.rank)
        np.random.seed(seed + self.rank)
        torch.manual_seed(seed + self.rank)
        self.g_ab, self.g_ba, self.d_a, self.d_b = (m.to(self.device) for m in models.values())
        # What trains with gradients shared across processes (the modules themselves when alone).
        self._ddp = {name: distributed.wrap(getattr(self, name), self.device)
                     for name in MODEL_NAMES}
        config = self.config
        self.optimizer_g = torch.optim.Adam(
            itertools.chain(self.g_ab.parameters(), self.g_ba.parameters()), lr=config.lr,
            betas=config.betas)
        self.optimizer_d = torch.optim.Adam(
            itertools.chain(self.d_a.parameters(), self.d_b.parameters()), lr=config.lr,
            betas=config.betas)
        # Their own random streams (each rank's own): the pools' draws never change the models'
        # noise.
        self.pool_a = ImagePool(config.pool_size, seed=seed + 1 + 2 * self.rank)
        self.pool_b = ImagePool(config.pool_size, seed=seed + 2 + 2 * self.rank)
        self.step = 0
        self.history = []
        self._batches = None  # (domain A's, domain B's) while fitting
        self._data_state = None
        self._saved_world_size = None  # of the checkpoint loaded, if any
        self._steps = None  # fit's steps: where the learning rate reaches 0
        self._picture_images = None
        self.latest_samples_path = None
        self.last_evaluation = None

    # --- training ---------------------------------------------------------------------------

    def _learning_rate(self):
        start = self.config.decay_start
        if start is None:
            start = self._steps // 2
        if self.step < start:
            return self.config.lr
        return self.config.lr * max(0.0, (self._steps - self.step) / max(1, self._steps - start))

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.config.amp)

    def _discriminator_loss(self, discriminator, real, fake):
        """Half the loss on a real and a generated batch (as published: D learns at half G's
        rate), plus R1 on the real one."""
        gamma = self.config.r1_gamma
        real = real.requires_grad_(gamma > 0)
        with self._autocast():
            real_logits = discriminator(real)
            fake_logits = discriminator(fake)
        loss = 0.5 * losses.d_loss(real_logits.float(), fake_logits.float(), self.config.loss)
        penalty = r1_penalty(real_logits, real, gamma) if gamma > 0 else None
        return loss, penalty

    def _train_step(self):
        for optimizer in (self.optimizer_g, self.optimizer_d):
            for group in optimizer.param_groups:
                group["lr"] = self._learning_rate()
        (real_a, _), (real_b, _) = (next(batches) for batches in self._batches)
        real_a, real_b = real_a.to(self.device), real_b.to(self.device)
        config = self.config
        g_ab, g_ba = self._ddp["g_ab"], self._ddp["g_ba"]

        def run(network, images):  # the losses in float32 under autocast
            with self._autocast():
                return network(images).float()

        fake_b = run(g_ab, real_a)
        fake_a = run(g_ba, real_b)
        # The discriminators' gradients here are dropped: no need to share them.
        adversarial = (losses.g_loss(run(self.d_b, fake_b), config.loss)
                       + losses.g_loss(run(self.d_a, fake_a), config.loss))
        cycle = ((run(g_ba, fake_b) - real_a).abs().mean()
                 + (run(g_ab, fake_a) - real_b).abs().mean())
        total = adversarial + config.cycle_weight * cycle
        metrics = {"g_adversarial": adversarial.item(), "cycle": cycle.item()}
        if config.identity_weight > 0:
            identity = ((run(g_ab, real_b) - real_b).abs().mean()
                        + (run(g_ba, real_a) - real_a).abs().mean())
            total = total + config.cycle_weight * config.identity_weight * identity
            metrics["identity"] = identity.item()
        self._check_finite("the generators' loss", total)
        self.optimizer_g.zero_grad(set_to_none=True)
        # Only the generators' parameters: the discriminators' gradients here are not used.
        total.backward(inputs=trainable(self.g_ab) + trainable(self.g_ba))
        self.optimizer_g.step()

        loss_a, penalty_a = self._discriminator_loss(self._ddp["d_a"], real_a,
                                                     self.pool_a.query(fake_a.detach()))
        loss_b, penalty_b = self._discriminator_loss(self._ddp["d_b"], real_b,
                                                     self.pool_b.query(fake_b.detach()))
        total = loss_a + loss_b
        metrics.update(d_a=loss_a.item(), d_b=loss_b.item())
        if penalty_a is not None:
            total = total + penalty_a + penalty_b
            metrics["r1"] = (penalty_a + penalty_b).item()
        self._check_finite("the discriminators' loss", total)
        self.optimizer_d.zero_grad(set_to_none=True)
        total.backward(inputs=trainable(self.d_a) + trainable(self.d_b))
        self.optimizer_d.step()
        metrics["lr"] = self.optimizer_g.param_groups[0]["lr"]
        return metrics

    def _check_data(self, real_a, real_b):
        """A batch of each domain, checked against the generators before any training."""
        with torch.no_grad():
            for name, generator, source, target in (("g_ab", self.g_ab, real_a, real_b),
                                                    ("g_ba", self.g_ba, real_b, real_a)):
                try:
                    made = self._run_generator(generator, source[:1])
                except (ValueError, RuntimeError) as error:
                    raise ValueError(f"{name} cannot take images of shape "
                                     f"{tuple(source.shape[1:])}: {error}") from error
                if made.shape[1:] != target.shape[1:]:
                    raise ValueError(f"{name} turns images of shape {tuple(source.shape[1:])} "
                                     f"into {tuple(made.shape[1:])}, but the other domain's "
                                     f"images have shape {tuple(target.shape[1:])}")
        if self.config.identity_weight > 0 and real_a.shape[1] != real_b.shape[1]:
            raise ValueError(f"the identity loss needs as many channels in A as in B (got "
                             f"{real_a.shape[1]} and {real_b.shape[1]}): pass identity_weight=0")

    def fit(self, domain_a, domain_b, steps, batch_size=1, *, log_every=100, sample_every=1000,
            checkpoint_every=1000, evaluate=None, progress=True):
        """Trains until `steps` steps in all (a trainer from `load` continues where it
        stopped). domain_a, domain_b: Tensors of images, Datasets of images or of (image,
        label) pairs (labels are ignored), or DataLoaders. batch_size: images of each domain per
        step, in all: under torchrun each of the processes trains on batch_size / their number
        of them (so batch_size must be a multiple of it), as with fastgan.Trainer. The outputs
        are Trainer.fit's: metrics every log_every steps, every sample_every steps a picture
        (out_dir/samples/step_N.png: rows of a, g_ab(a), g_ba(g_ab(a)) and of b, g_ba(b),
        g_ab(g_ba(b)) for fixed images) and evaluate(trainer)'s metrics (on rank 0 alone),
        checkpoints every checkpoint_every steps and at the end; Ctrl-C and SIGTERM save and
        stop."""
        check_fit_arguments(steps, batch_size, 1, log_every, sample_every, checkpoint_every,
                            evaluate)
        saved = self._saved_world_size
        if saved not in (None, self.world_size):
            raise ValueError(f"the checkpoint was written with world size {saved} and holds "
                             f"each rank's image pools and random state: resume it with world "
                             f"size {saved} (torchrun's processes in all), not "
                             f"{self.world_size}")
        seed, shard = self.config.seed, (self.rank, self.world_size)
        first_a, _ = next(make_batches(domain_a, batch_size, seed, *shard))
        first_b, _ = next(make_batches(domain_b, batch_size, seed + 1, *shard))
        self._check_data(first_a.to(self.device), first_b.to(self.device))
        self._picture_images = (_first_images(domain_a), _first_images(domain_b))
        self._batches = (make_batches(domain_a, batch_size, seed, *shard),
                         make_batches(domain_b, batch_size, seed + 1, *shard))
        if self._data_state is not None:
            for batches, state in zip(self._batches, self._data_state):
                batches.load_state_dict(state)
        self._steps = steps
        self._train_until(steps, log_every, sample_every, checkpoint_every, progress,
                          lambda: self._at_sample_step(evaluate))
        return self

    def _end_of_fit(self):
        self._data_state = [batches.state_dict() for batches in self._batches]

    def _at_sample_step(self, evaluate):
        self._write_pictures()
        if evaluate is not None and self.rank == 0:
            self.last_evaluation = evaluate(self)
            self._log({"step": self.step, **self.last_evaluation}, history=False)

    def _write_pictures(self):
        if not self.out_dir:
            return
        images_a, images_b = self._picture_images
        rows = []
        for images, direction in ((images_a, "a2b"), (images_b, "b2a")):
            translated = self.translate(images, direction)
            back = self.translate(translated, "b2a" if direction == "a2b" else "a2b")
            rows += [torch.stack(triple) for triple in zip(images, translated, back)]
        channels = max(triple.shape[1] for triple in rows)
        # Grey and colour domains side by side: grey repeated into three channels.
        tiles = torch.cat([triple.expand(-1, channels, -1, -1) for triple in rows])
        path = self.outputs.write_samples(self.step, tiles)
        if path is not None:
            self.latest_samples_path = path

    # --- translating ------------------------------------------------------------------------

    def _run_generator(self, generator, images):
        was_training = generator.training
        generator.eval()
        try:
            with self._autocast():
                return generator(images.to(self.device)).float().cpu()
        finally:
            generator.train(was_training)

    @torch.no_grad()
    def translate(self, images, direction="a2b"):
        """g_ab(images) ("a2b") or g_ba(images) ("b2a"), on the CPU, in eval mode; images
        (N, C, H, W) in [-1, 1], or one image (C, H, W)."""
        check_choice("direction", direction, DIRECTIONS)
        check_tensor("images", images, dims=(3, 4))
        single = images.dim() == 3
        batch = images.unsqueeze(0) if single else images
        generator = self.g_ab if direction == "a2b" else self.g_ba
        out = torch.cat([self._run_generator(generator, chunk)
                         for chunk in batch.split(_TRANSLATE_BATCH)]) if len(batch) else \
            batch.new_empty((0,) + tuple(batch.shape[1:])).float()
        return out[0] if single else out

    # --- checkpoints ------------------------------------------------------------------------

    def state_dict(self):
        """Everything `load` needs, as tensors and plain Python values. Its "ranks" list holds
        what each process has its own of (random state and both pools): here this process's
        alone; in a checkpoint that fit writes under torchrun, every rank's, rank 0's first."""
        return self._checkpoint([self._rank_state()])

    def _rank_state(self):
        return {"rng": rng_state(), "pool_a": self.pool_a.state_dict(),
                "pool_b": self.pool_b.state_dict()}

    def _checkpoint(self, rank_states):
        models = dict(zip(MODEL_NAMES, (self.g_ab, self.g_ba, self.d_a, self.d_b)))
        data = ([batches.state_dict() for batches in self._batches] if self._batches is not None
                else self._data_state)
        return {"format": CHECKPOINT_FORMAT, "step": self.step, "steps": self._steps,
                "config": self.config.to_dict(),
                "models": {name: model_spec(model) for name, model in models.items()},
                **{name: model.state_dict() for name, model in models.items()},
                "optimizer_g": self.optimizer_g.state_dict(),
                "optimizer_d": self.optimizer_d.state_dict(),
                "ranks": rank_states, "data": data, "history": list(self.history)}

    def load_state_dict(self, state):
        """Restores a state_dict() or checkpoint. With another number of processes than wrote
        it, the models, optimizers and schedule are restored, but not the ranks' pools and
        random state, which do not map onto another number of processes: fit then refuses to
        continue (translate works)."""
        for name in MODEL_NAMES:
            getattr(self, name).load_state_dict(state[name])
        self.optimizer_g.load_state_dict(state["optimizer_g"])
        self.optimizer_d.load_state_dict(state["optimizer_d"])
        rank_states = state["ranks"]
        self._saved_world_size = len(rank_states)
        if self._saved_world_size == self.world_size:
            own = rank_states[self.rank]
            self.pool_a.load_state_dict(own["pool_a"], self.device)
            self.pool_b.load_state_dict(own["pool_b"], self.device)
            set_rng_state(own["rng"])
        self.step, self._steps = state["step"], state["steps"]
        self.history = list(state["history"])
        self._data_state = state["data"]
        self._batches = None

    @classmethod
    def load(cls, path, g_ab=None, g_ba=None, d_a=None, d_b=None, *, device="auto",
             out_dir=None):
        """A trainer restored from a checkpoint written by fit, ready to fit on or translate.
        fastgan's own models are rebuilt from the saved config; a user's models must be passed
        in (freshly built, same architecture). out_dir defaults to the saved one."""
        state = safe_load(path)
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"path {path!r} is not a CycleGAN checkpoint of fastgan (format "
                             f"{CHECKPOINT_FORMAT})")
        models = models_from_checkpoint(state["models"],
                                        dict(zip(MODEL_NAMES, (g_ab, g_ba, d_a, d_b))))
        config = dict(state["config"])
        if out_dir is not None:
            config["out_dir"] = out_dir
        trainer = cls(*models.values(), device=device, **config)
        trainer.load_state_dict(state)
        return trainer


def _first_images(data):
    """The first _PICTURE_IMAGES images of a Tensor, a Dataset or a DataLoader's dataset."""
    dataset = getattr(data, "dataset", data)
    items = [dataset[index] for index in range(min(_PICTURE_IMAGES, len(dataset)))]
    images = [item[0] if isinstance(item, (tuple, list)) else item for item in items]
    return torch.stack([torch.as_tensor(image) for image in images]).float()

