"""What fastgan's trainers share: the loop that logs, draws pictures and writes checkpoints at
intervals, stops safely on Ctrl-C or SIGTERM, and the random state a resumed run restores."""
import random
import signal
import threading
import time

import numpy as np
import torch

from fastgan._checks import check_int
from fastgan.models import REGISTRY
from fastgan.train import distributed
from fastgan.train.checkpoint import atomic_save
from fastgan.train.progress import open_progress

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def resolve_device(device):
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be 'auto' or a torch device, got {device!r}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was requested but CUDA is not available")
    return device


def rng_state():
    """torch's (CPU and CUDA), numpy's and Python's random state, as tensors and plain values."""
    numpy_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)),
                      *numpy_state[2:]],
            "python": list(random.getstate())}


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def model_spec(model):
    """How a checkpoint rebuilds one of fastgan's models; None for a user's model."""
    if REGISTRY.get(type(model).__name__) is type(model):
        return {"name": type(model).__name__, "config": dict(model.config)}
    return None


def models_from_checkpoint(specs, given):
    """{name: model}: each `given` model (None: not given), else fastgan's model rebuilt from
    its spec in `specs` (a user's model must be given)."""
    models = {}
    for name, model in given.items():
        spec = specs[name]
        if model is None and spec is None:
            raise ValueError(f"the checkpoint holds a user-defined {name}: pass {name}=...")
        models[name] = model if model is not None else REGISTRY[spec["name"]](**spec["config"])
    return models


def trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def check_fit_arguments(steps, batch_size, min_batch_size, log_every, sample_every,
                        checkpoint_every, evaluate):
    check_int("steps", steps, minimum=0)
    check_int("batch_size", batch_size, minimum=min_batch_size)
    for name, value in (("log_every", log_every), ("sample_every", sample_every),
                        ("checkpoint_every", checkpoint_every)):
        check_int(name, value, minimum=0)
    if evaluate is not None and not callable(evaluate):
        raise TypeError("evaluate must be callable (trainer -> dict of numbers)")


class TrainingLoop:
    """Mixed into a trainer, which provides: `step`, `history` (the logged metrics), `outputs`
    (a RunOutputs), `rank` and `world_size`, `_train_step()` (one step; returns its metrics),
    `state_dict()` and `_end_of_fit()` (called however fit ends); it may override
    `_rank_state()` and `_checkpoint()`, what a checkpoint keeps of each rank and how."""

    _interrupted = None  # the stop signal received during fit, if any

    def _check_finite(self, name, value):
        if not distributed.all_ranks(torch.isfinite(value).all()):
            where = (f"the last good checkpoint is {self.checkpoint_path}" if self.out_dir
                     else "no checkpoint was written (out_dir=None)")
            raise FloatingPointError(f"{name} is {value.item()} at step {self.step + 1}; training "
                                     f"stopped before applying it ({where})")

    def _train_until(self, steps, log_every, sample_every, checkpoint_every, progress,
                     at_sample_step):
        """Trains up to `steps`, with the outputs open and stop signals caught; calls
        at_sample_step() every sample_every steps and at the last."""
        if self.step >= steps:
            return
        self.outputs.open(self.step)
        previous_handlers = self._catch_interrupts()
        try:
            self._run(steps, log_every, sample_every, checkpoint_every, progress, at_sample_step)
        finally:
            self._end_of_fit()
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            self.outputs.close()

    def _run(self, steps, log_every, sample_every, checkpoint_every, progress, at_sample_step):
        sums, count, start = {}, 0, time.perf_counter()
        with open_progress(steps, self.step, enabled=progress and self.rank == 0) as bar:
            while self.step < steps:
                metrics = self._train_step()
                self.step += 1
                count += 1
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + value
                last = self.step == steps
                if log_every and self.step % log_every == 0 or last:
                    sums = distributed.mean_over_ranks(sums)
                    entry = {"step": self.step, **{k: v / count for k, v in sums.items()},
                             "seconds": time.perf_counter() - start}
                    sums, count = {}, 0
                    bar.set_postfix({k: f"{v:.3f}" for k, v in entry.items()
                                     if k not in ("step", "seconds")})
                    self._log(entry)
                bar.update(1)  # after the step's losses, which a progress line shows
                if sample_every and self.step % sample_every == 0 or last:
                    at_sample_step()
                if checkpoint_every and self.step % checkpoint_every == 0 or last:
                    self._save_checkpoint()
                if distributed.any_rank(self._interrupted is not None):
                    self._save_checkpoint()
                    bar.close()
                    self._stop(f"training interrupted after step {self.step}"
                               + (f"; saved {self.checkpoint_path}" if self.out_dir else ""))

    def _stop(self, message):
        """Ends fit as the stop signal would have: SIGTERM exits with 128 + 15, as a shell
        reports a terminated process."""
        if self._interrupted == signal.SIGTERM:
            raise SystemExit(128 + signal.SIGTERM)
        raise KeyboardInterrupt(message)

    def _catch_interrupts(self):
        """The first Ctrl-C or SIGTERM lets the current step finish (then fit saves and stops);
        a second one stops at once. Returns the previous handlers (none off the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        self._interrupted = None

        def handler(signum, frame):
            if self._interrupted is not None:
                self._stop(f"training interrupted during step {self.step + 1}")
            self._interrupted = signum

        return {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}

    # --- outputs ----------------------------------------------------------------------------

    @property
    def out_dir(self):
        """Where this process writes (None: nowhere, as on every rank but 0)."""
        return self.outputs.out_dir

    @property
    def checkpoint_path(self):
        return self.outputs.checkpoint_path

    def _rank_state(self):
        """What each process has its own of, which a checkpoint written under torchrun keeps
        for every rank: by default the random state."""
        return rng_state()

    def _checkpoint(self, rank_states):
        """What _save_checkpoint writes on rank 0: state_dict(), with every rank's
        _rank_state() (`rank_states`, rank 0's first) under torchrun."""
        state = self.state_dict()
        if self.world_size > 1:
            state["rng_per_rank"] = rank_states
        return state

    def _save_checkpoint(self):
        rank_states = distributed.gather_on_rank_0(self._rank_state())  # every rank takes part
        if self.out_dir:
            self.outputs.save_checkpoint(self._checkpoint(rank_states), self.step, self.history)
        distributed.barrier()

    def _log(self, entry, history=True):
        if history:
            self.history.append(entry)
        self.outputs.log(entry)

    def save(self, path):
        """Writes the checkpoint to `path` atomically."""
        atomic_save(self.state_dict(), path)
