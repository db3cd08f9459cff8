"""The files of a training run in its out_dir: checkpoint.pt (and the newest keep_checkpoints in
checkpoints/), metrics.jsonl (and TensorBoard's event files when it is installed), losses.png and
the sample pictures in samples/. Under torchrun rank 0 alone writes them."""
import json
import os

from fastgan.train.checkpoint import atomic_save
from fastgan.train.plots import DCGAN_LOSSES, save_image_grid, save_loss_plot, save_scatter

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_HISTORY = "checkpoints"  # the folder of the newest keep_checkpoints checkpoints
METRICS_NAME = "metrics.jsonl"
LOSS_PLOT_NAME = "losses.png"
SAMPLES_FOLDER = "samples"
RAW_SAMPLES_NAME = "latest.pt"  # in SAMPLES_FOLDER: the raw tensor of the newest picture


class RunOutputs:
    """Writes a run's files into `out_dir`. With out_dir None (no outputs were asked for, or a
    process other than rank 0) every method does nothing."""

    def __init__(self, out_dir, keep_checkpoints, losses=DCGAN_LOSSES):
        self.out_dir = out_dir
        self.keep_checkpoints = keep_checkpoints
        self.losses = losses  # what the loss plot shows: (metric key, label) pairs
        self._tensorboard = None

    def _path(self, *names):
        return os.path.join(self.out_dir, *names) if self.out_dir else None

    @property
    def checkpoint_path(self):
        return self._path(CHECKPOINT_NAME)

    @property
    def raw_samples_path(self):
        return self._path(SAMPLES_FOLDER, RAW_SAMPLES_NAME)

    # --- a run's start and end --------------------------------------------------------------

    def open(self, step):
        """Before training from `step`: creates out_dir, drops what a run resumed from an older
        checkpoint had written after it, and opens TensorBoard's writer."""
        if not self.out_dir:
            return
        os.makedirs(self.out_dir, exist_ok=True)
        self._drop_after(step)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # TensorBoard is optional
            return
        self._tensorboard = SummaryWriter(self._path("tensorboard"))

    def close(self):
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    def _drop_after(self, step):
        """Drops lines logged, and kept checkpoints saved, after `step`."""
        for kept_step, kept in self._kept_checkpoints().items():
            if kept_step > step:
                os.unlink(kept)
        path = self._path(METRICS_NAME)
        if not os.path.exists(path):
            return
        with open(path) as log:
            lines = [line for line in log if line.strip() and json.loads(line)["step"] <= step]
        with open(path, "w") as log:
            log.writelines(lines)

    # --- metrics ----------------------------------------------------------------------------

    def log(self, entry):
        """Appends `entry` (a dict with a "step") to metrics.jsonl and its numbers to
        TensorBoard."""
        if not self.out_dir:
            return
        with open(self._path(METRICS_NAME), "a") as log:
            log.write(json.dumps(entry) + "\n")
        if self._tensorboard is not None:
            for key, value in entry.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tensorboard.add_scalar(key, value, entry["step"])

    # --- checkpoints ------------------------------------------------------------------------

    def save_checkpoint(self, state, step, history):
        """Writes `state` to checkpoint.pt atomically, keeps it in checkpoints/ when
        keep_checkpoints > 1, and redraws losses.png from the logged `history`."""
        if not self.out_dir:
            return
        atomic_save(state, self.checkpoint_path)
        if self.keep_checkpoints > 1:
            self._keep_checkpoint(state, step)
        if history:
            save_loss_plot(history, self._path(LOSS_PLOT_NAME), self.losses)

    def _kept_checkpoints(self):
        """{step: path} of the checkpoints in out_dir/checkpoints."""
        folder = self._path(CHECKPOINT_HISTORY)
        if not os.path.isdir(folder):
            return {}
        steps = (name[len("step_"):-len(".pt")] for name in os.listdir(folder)
                 if name.startswith("step_") and name.endswith(".pt"))
        return {int(step): os.path.join(folder, f"step_{step}.pt") for step in steps
                if step.isdigit()}

    def _keep_checkpoint(self, state, step):
        """Links the new checkpoint.pt into out_dir/checkpoints (writes `state` again where the
        filesystem has no hard links) and deletes all but the newest keep_checkpoints there."""
        kept = self._path(CHECKPOINT_HISTORY, f"step_{step:06d}.pt")
        os.makedirs(os.path.dirname(kept), exist_ok=True)
        if os.path.exists(kept):
            os.unlink(kept)  # saved at this step before, by the run this one resumes
        try:
            os.link(self.checkpoint_path, kept)
        except OSError:
            atomic_save(state, kept)
        history = self._kept_checkpoints()
        for old_step in sorted(history)[:-self.keep_checkpoints]:
            os.unlink(history[old_step])

    # --- pictures ---------------------------------------------------------------------------

    def write_samples(self, step, samples, modes=None):
        """samples/step_NNNNNN.png of generated `samples`: images (N, C, H, W) in [-1, 1] as a
        grid (small images enlarged with nearest neighbour, see save_image_grid), 2D points
        (N, 2) as a scatter plot with the true `modes` marked. The raw tensor, as generated, goes
        to samples/latest.pt (replaced by every picture). Returns the picture's path, or None
        for other samples or no out_dir."""
        if not self.out_dir or not (samples.dim() == 4 or samples.shape[1:] == (2,)):
            return None
        os.makedirs(self._path(SAMPLES_FOLDER), exist_ok=True)
        path = self._path(SAMPLES_FOLDER, f"step_{step:06d}.png")
        if samples.dim() == 4:
            save_image_grid(samples, path)
        else:
            save_scatter(samples, path, modes)
        atomic_save(samples, self.raw_samples_path)
        return path
