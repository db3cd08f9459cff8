"""fastgan.Trainer: the DCGAN training recipe (alternating Adam updates of D and G) with R1,
EMA, AMP and exactly resumable checkpoints; fastgan.train.outputs writes the run's files."""
import copy
import random

import numpy as np
import torch
from torch import nn

from fastgan import losses
from fastgan._checks import check_int, check_tensor
from fastgan.train import distributed
from fastgan.train.batches import make_batches
from fastgan.train.checkpoint import safe_load
from fastgan.train.config import TrainerConfig
from fastgan.train.loop import (TrainingLoop, check_fit_arguments, model_spec,
                                models_from_checkpoint, resolve_device, rng_state,
                                set_rng_state, trainable)
from fastgan.train.outputs import RunOutputs
from fastgan.train.regularization import lazy_adam_settings, r1_penalty

CHECKPOINT_FORMAT = 1
_GRID_SAMPLES = 64      # images in a sample grid
_SCATTER_SAMPLES = 2000  # points in a 2D scatter plot
_CALIBRATION_BATCHES, _CALIBRATION_BATCH = 4, 256  # for the EMA generator's BatchNorm statistics


def _num_classes(model):
    return getattr(model, "num_classes", 0)


class Trainer(TrainingLoop):
    """Trains `generator` and `discriminator` (both nn.Modules returning samples and logits;
    conditional when their `num_classes` > 0, taking labels as a second argument).

    loss: a fastgan.losses kind. r1_gamma > 0 adds the R1 penalty on real data every
    r1_interval steps (lazily, scaled by the interval, with StyleGAN2's Adam adjustment for D).
    ema_decay keeps an exponential moving average of G, which `sample` and the pictures use.
    n_critic: D updates per G update. lr_decay: None, or (start, end) steps between which both
    learning rates fall linearly to 0 (a final annealing that sharpens the samples). amp:
    bfloat16 autocast (CUDA only). out_dir: where metrics.jsonl, pictures and checkpoint.pt go
    (None: nowhere); keep_checkpoints > 1 also keeps that many of the newest in
    out_dir/checkpoints/step_NNNNNN.pt. seed seeds torch, numpy, Python's random and the data
    order.

    Under torchrun (or an initialized torch.distributed group) it trains data-parallel: G and D
    in DDP with synced BatchNorm, each process on its shard of every batch; rank 0 alone
    writes the outputs (fastgan.train.distributed)."""

    def __init__(self, generator, discriminator, *, loss="non_saturating", r1_gamma=0.0,
                 r1_interval=16, lr_g=2e-4, lr_d=2e-4, betas=(0.5, 0.999), ema_decay=None,
                 label_smoothing=0.0, n_critic=1, lr_decay=None, device="auto", amp=False,
                 out_dir=None, seed=0, keep_checkpoints=1):
        for name, model in (("generator", generator), ("discriminator", discriminator)):
            if not isinstance(model, nn.Module):
                raise TypeError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(getattr(generator, "z_dim", None), int):
            raise TypeError("generator must have an int attribute z_dim (its noise size)")
        if _num_classes(generator) != _num_classes(discriminator):
            raise ValueError(f"generator and discriminator disagree on num_classes "
                             f"({_num_classes(generator)} vs {_num_classes(discriminator)})")
        self.config = TrainerConfig(
            loss=loss, r1_gamma=r1_gamma, r1_interval=r1_interval, lr_g=lr_g, lr_d=lr_d,
            betas=betas, ema_decay=ema_decay, label_smoothing=label_smoothing, n_critic=n_critic,
            lr_decay=lr_decay, amp=amp, out_dir=out_dir, seed=seed,
            keep_checkpoints=keep_checkpoints)
        config = self.config
        self.device, self.rank, self.world_size = distributed.setup(resolve_device(device))
        if config.amp and self.device.type != "cuda":
            raise ValueError(f"amp=True needs a CUDA device, got device {str(self.device)!r}")
        self.outputs = RunOutputs(config.out_dir if self.rank == 0 else None,  # rank 0 writes
                                  config.keep_checkpoints)
        # Each rank its own noise (the data order comes from `seed` alone).
        random.seed(config.seed + self.rank)
        np.random.seed(config.seed + self.rank)
        torch.manual_seed(config.seed + self.rank)

        self.generator = generator.to(self.device)
        self.discriminator = discriminator.to(self.device)
        self.ema = (copy.deepcopy(generator).requires_grad_(False).eval()
                    if config.ema_decay is not None else None)
        # What trains with gradients shared across processes (the modules themselves when
        # alone); the EMA copy above stays unsynced, as rank 0 alone samples from it.
        self._ddp_generator = distributed.wrap(self.generator, self.device)
        self._ddp_discriminator = distributed.wrap(self.discriminator, self.device)
        self.lazy_r1 = config.r1_gamma > 0 and config.r1_interval > 1
        lr_d, betas_d = (lazy_adam_settings(config.lr_d, config.betas, config.r1_interval)
                         if self.lazy_r1 else (config.lr_d, config.betas))
        self.optimizer_g = torch.optim.Adam(generator.parameters(), lr=config.lr_g,
                                            betas=config.betas)
        self.optimizer_d = torch.optim.Adam(discriminator.parameters(), lr=lr_d, betas=betas_d)
        self._initial_lrs = {optimizer: [group["lr"] for group in optimizer.param_groups]
                             for optimizer in (self.optimizer_g, self.optimizer_d)}
        self.step = 0
        self.history = []  # the logged metrics, one dict per log line
        # Noise for sample() and the pictures: separate generators, so that looking at samples
        # never changes the training run.
        self._sample_generator = torch.Generator().manual_seed(config.seed + 1)
        self._fixed_noise = torch.randn(max(_GRID_SAMPLES, _SCATTER_SAMPLES), generator.z_dim,
                                        generator=torch.Generator().manual_seed(config.seed + 2))
        self._batches = None
        self._data_state = None
        self._ema_calibrated_step = None
        self.latest_samples_path = None  # the newest picture of samples, once fit wrote one
        self.last_evaluation = None  # what fit's `evaluate` returned last

    # --- training ---------------------------------------------------------------------------

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.config.amp)

    def _condition(self, labels):
        return (labels,) if _num_classes(self.generator) else ()

    def _discriminator_step(self, real, labels):
        gamma, interval = self.config.r1_gamma, self.config.r1_interval
        regularize = gamma > 0 and self.step % interval == 0
        combined = regularize and not self.lazy_r1
        noise = torch.randn(len(real), self.generator.z_dim, device=self.device)
        with self._autocast():
            with torch.no_grad():
                fake = self.generator(noise, *self._condition(labels))
            real = real.requires_grad_(combined)
            real_logits = self._ddp_discriminator(real, *self._condition(labels))
            fake_logits = self._ddp_discriminator(fake, *self._condition(labels))
            loss = losses.d_loss(real_logits.float(), fake_logits.float(), self.config.loss,
                                 self.config.label_smoothing)
            penalty = r1_penalty(real_logits, real, gamma) if combined else None
        total = loss if penalty is None else loss + penalty
        self._check_finite("the discriminator loss", total)
        self.optimizer_d.zero_grad(set_to_none=True)
        # Only D's parameters: not the reals' input gradient that R1 made them require.
        total.backward(inputs=trainable(self.discriminator))
        self.optimizer_d.step()
        if regularize and self.lazy_r1:
            # StyleGAN2's lazy regularization: its own optimizer step, scaled by the interval.
            real = real.detach().requires_grad_(True)
            with self._autocast():
                logits = self._ddp_discriminator(real, *self._condition(labels))
                penalty = r1_penalty(logits, real, gamma)
            self._check_finite("the R1 penalty", penalty)
            self.optimizer_d.zero_grad(set_to_none=True)
            (penalty * interval + distributed.every_parameter_term(logits)).backward(
                inputs=trainable(self.discriminator))
            self.optimizer_d.step()
        metrics = {"d_loss": loss.item(), "D(x)": real_logits.detach().sigmoid().mean().item(),
                   "D(G(z))": fake_logits.detach().sigmoid().mean().item()}
        if penalty is not None:
            metrics["r1"] = penalty.item()
        return metrics

    def _generator_step(self, batch_size, labels):
        noise = torch.randn(batch_size, self.generator.z_dim, device=self.device)
        with self._autocast():  # D's gradients here are dropped: no need to share them
            fake_logits = self.discriminator(self._ddp_generator(noise, *self._condition(labels)),
                                             *self._condition(labels))
            loss = losses.g_loss(fake_logits.float(), self.config.loss)
        self._check_finite("the generator loss", loss)
        self.optimizer_g.zero_grad(set_to_none=True)
        loss.backward(inputs=trainable(self.generator))  # not D's weight gradients
        self.optimizer_g.step()
        if self.ema is not None:
            self._update_ema()
        return {"g_loss": loss.item()}

    @torch.no_grad()
    def _update_ema(self):
        decay = self.config.ema_decay
        for average, current in zip(self.ema.parameters(), self.generator.parameters()):
            average.lerp_(current, 1 - decay)

    def _set_learning_rates(self):
        if self.config.lr_decay is None:
            return
        start, end = self.config.lr_decay
        scale = min(1.0, max(0.0, (end - self.step) / (end - start)))
        for optimizer, lrs in self._initial_lrs.items():
            for group, lr in zip(optimizer.param_groups, lrs):
                group["lr"] = lr * scale

    def _train_step(self):
        self._set_learning_rates()
        metrics = {}
        for _ in range(self.config.n_critic):
            real, labels = next(self._batches)
            real = real.to(self.device, non_blocking=True)
            labels = None if labels is None else labels.to(self.device, non_blocking=True)
            metrics.update(self._discriminator_step(real, labels))
        metrics.update(self._generator_step(len(real), labels))
        return metrics

    def _check_data(self, batches):
        """One batch, checked against the models before any training."""
        real, labels = next(batches)
        num_classes = _num_classes(self.generator)
        if num_classes and labels is None:
            raise ValueError("the models are conditional (num_classes="
                             f"{num_classes}) but the data has no labels")
        if num_classes and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
            raise ValueError(f"data labels must be in [0, {num_classes}), got "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        expected = self._generate(self._fixed_noise[:2], self._fixed_labels(2)).shape[1:]
        if tuple(real.shape[1:]) != tuple(expected):
            raise ValueError(f"data samples have shape {tuple(real.shape[1:])} but the generator "
                             f"makes {tuple(expected)}")

    def fit(self, data, steps, batch_size=64, *, log_every=50, sample_every=500,
            checkpoint_every=1000, evaluate=None, modes=None, progress=True):
        """Trains until `steps` steps (G updates) in all: a trainer from `Trainer.load`
        continues where it stopped.

        data: a Tensor of samples, a Dataset of samples or (sample, label) pairs, or a
        DataLoader (which then sets the batch size and order). progress: show progress on
        stderr, as a bar in a terminal or a notebook, as a plain line at every tenth of the steps
        and at least every 30 s where stderr goes to a file or a pipe. Every log_every steps the
        mean metrics go to that display, out_dir/metrics.jsonl and TensorBoard (if installed);
        every sample_every steps a picture of fixed-noise samples, out_dir/samples/step_N.png
        (images: a grid, small ones enlarged by an integer factor with nearest neighbour to at
        least 512 pixels; 2D data: a scatter plot, `modes` marked), with the newest one's raw
        tensor in out_dir/samples/latest.pt, and `evaluate(trainer)`'s metrics; every
        checkpoint_every steps and at the end out_dir/checkpoint.pt. Ctrl-C finishes the step,
        saves and raises KeyboardInterrupt; SIGTERM does the same, then raises SystemExit(143)
        as the signal would have ended the process."""
        # BatchNorm needs two samples or more per batch.
        check_fit_arguments(steps, batch_size, 2, log_every, sample_every, checkpoint_every,
                            evaluate)
        if modes is not None:
            check_tensor("modes", modes, dims=(2,))
        shard = (self.rank, self.world_size)
        check_batches = make_batches(data, batch_size, self.config.seed, *shard)
        self._check_data(check_batches)
        self._batches = make_batches(data, batch_size, self.config.seed, *shard)
        if self._data_state is not None:
            self._batches.load_state_dict(self._data_state)
        self._train_until(steps, log_every, sample_every, checkpoint_every, progress,
                          lambda: self._at_sample_step(evaluate, modes))
        return self

    def _end_of_fit(self):
        self._data_state = self._batches.state_dict()

    def _at_sample_step(self, evaluate, modes):
        self._write_pictures(modes)
        if evaluate is not None and self.rank == 0:
            self.last_evaluation = evaluate(self)
            self._log({"step": self.step, **self.last_evaluation}, history=False)

    def _write_pictures(self, modes):
        if not self.out_dir:
            return
        samples = self._generate(self._fixed_noise[:_GRID_SAMPLES],
                                 self._fixed_labels(_GRID_SAMPLES))
        if samples.shape[1:] == (2,):  # points: a scatter plot shows more of them
            samples = self._generate(self._fixed_noise, self._fixed_labels(_SCATTER_SAMPLES))
        path = self.outputs.write_samples(self.step, samples, modes)
        if path is not None:
            self.latest_samples_path = path

    # --- sampling ---------------------------------------------------------------------------

    def _fixed_labels(self, n):
        num_classes = _num_classes(self.generator)
        return torch.arange(n) % num_classes if num_classes else None

    @torch.no_grad()
    def _recalibrate_ema(self):
        """Averaged weights need BatchNorm statistics of their own (the live generator's do not
        fit them, as in SWA): re-estimated from fixed noise, once per step that samples."""
        norms = [m for m in self.ema.modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        if not norms or self._ema_calibrated_step == self.step:
            return
        momenta = [m.momentum for m in norms]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average over the calibration batches
        self.ema.train()
        noise = torch.randn(_CALIBRATION_BATCHES, _CALIBRATION_BATCH, self.generator.z_dim,
                            generator=torch.Generator().manual_seed(self.config.seed + 3))
        labels = self._fixed_labels(_CALIBRATION_BATCH)
        condition = () if labels is None else (labels.to(self.device),)
        with self._autocast():
            for batch in noise:
                self.ema(batch.to(self.device), *condition)
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        self.ema.eval()
        self._ema_calibrated_step = self.step

    @torch.no_grad()
    def _generate(self, noise, labels):
        if self.ema is not None:
            self._recalibrate_ema()
        model = self.ema if self.ema is not None else self.generator
        was_training = model.training
        model.eval()
        try:
            condition = () if labels is None else (labels.to(self.device),)
            with self._autocast():
                return model(noise.to(self.device), *condition).float().cpu()
        finally:
            model.train(was_training)

    def sample(self, n, labels=None):
        """n samples (on the CPU) from the EMA generator if there is one, else the generator,
        in eval mode. A conditional model needs no labels: by default they cycle 0, 1, ...;
        `labels` is a length-n int tensor."""
        check_int("n", n, minimum=1)
        num_classes = _num_classes(self.generator)
        if labels is None:
            labels = self._fixed_labels(n)
        elif not num_classes:
            raise ValueError("labels were given but the generator is unconditional")
        else:
            labels = torch.as_tensor(labels)
            if labels.shape != (n,) or labels.is_floating_point():
                raise ValueError(f"labels must be {n} ints, got shape {tuple(labels.shape)}")
            if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
                raise ValueError(f"labels must be in [0, {num_classes})")
        noise = torch.randn(n, self.generator.z_dim, generator=self._sample_generator)
        return self._generate(noise, labels)

    # --- checkpoints ------------------------------------------------------------------------

    def state_dict(self):
        """Everything `load` needs, as tensors and plain Python values (loadable with
        torch.load(weights_only=True))."""
        return {"format": CHECKPOINT_FORMAT, "step": self.step, "config": self.config.to_dict(),
                "models": {"generator": model_spec(self.generator),
                           "discriminator": model_spec(self.discriminator)},
                "generator": self.generator.state_dict(),
                "discriminator": self.discriminator.state_dict(),
                "ema": None if self.ema is None else self.ema.state_dict(),
                "optimizer_g": self.optimizer_g.state_dict(),
                "optimizer_d": self.optimizer_d.state_dict(),
                "rng": rng_state(), "sample_rng": self._sample_generator.get_state(),
                "data": (self._batches.state_dict() if self._batches is not None
                         else self._data_state),
                "history": list(self.history)}

    def load_state_dict(self, state):
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        if (self.ema is None) != (state["ema"] is None):
            raise ValueError("the checkpoint and this trainer disagree on ema_decay")
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer_g.load_state_dict(state["optimizer_g"])
        self.optimizer_d.load_state_dict(state["optimizer_d"])
        per_rank = state.get("rng_per_rank") or [state["rng"]]
        if len(per_rank) == self.world_size:
            set_rng_state(per_rank[self.rank])
        else:
            # Written by another number of processes: rank 0 continues its noise, the other
            # ranks start new streams.
            set_rng_state(state["rng"])
            if self.rank > 0:
                torch.manual_seed(self.config.seed + self.rank
                                  + state["step"] * self.world_size)
        self._sample_generator.set_state(state["sample_rng"])
        self.step = state["step"]
        self._ema_calibrated_step = None
        self.history = list(state["history"])
        self._data_state = state["data"]
        self._batches = None

    @classmethod
    def load(cls, path, generator=None, discriminator=None, *, device="auto", out_dir=None):
        """A trainer restored from a checkpoint, ready to `fit` on. fastgan's own models are
        rebuilt from the saved config; a user's models must be passed in (freshly built, same
        architecture). out_dir defaults to the saved one."""
        state = safe_load(path)
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"path {path!r} is not a fastgan checkpoint (format "
                             f"{CHECKPOINT_FORMAT})")
        models = models_from_checkpoint(
            state["models"], {"generator": generator, "discriminator": discriminator})
        config = dict(state["config"])
        if out_dir is not None:
            config["out_dir"] = out_dir
        trainer = cls(models["generator"], models["discriminator"], device=device, **config)
        trainer.load_state_dict(state)
        return trainer
