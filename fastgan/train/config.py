"""TrainerConfig: the settings of a fastgan.Trainer, checked once when built and read as typed
attributes by the training loop."""
import dataclasses
from typing import Optional

from fastgan import losses
from fastgan._checks import check_choice, check_int, check_number
from fastgan.train.checkpoint import check_path

# Adam's betas and the EMA decay stay below 1: at 1 the averages they weigh would never move.
_BELOW_ONE = 0.9999999


def _check_pair(name, value, what):
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return tuple(value)


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """The keyword arguments of fastgan.Trainer (its docstring says what each does), less the
    device, which a checkpoint does not keep. Building one checks every value (errors name the
    argument) and normalizes it: numbers to float or int, pairs to tuples, out_dir to a str.
    Every field is required: fastgan.Trainer's signature holds the defaults."""

    loss: str
    r1_gamma: float
    r1_interval: int
    lr_g: float
    lr_d: float
    betas: tuple
    ema_decay: Optional[float]
    label_smoothing: float
    n_critic: int
    lr_decay: Optional[tuple]
    amp: bool
    out_dir: Optional[str]
    seed: int
    keep_checkpoints: int

    def __post_init__(self):
        check_choice("loss", self.loss, losses.KINDS)
        check_number("r1_gamma", self.r1_gamma, minimum=0.0)
        check_int("r1_interval", self.r1_interval, minimum=1)
        check_number("lr_g", self.lr_g, positive=True)
        check_number("lr_d", self.lr_d, positive=True)
        betas = _check_pair("betas", self.betas, "a pair of numbers")
        for beta in betas:
            check_number("betas", beta, minimum=0.0, maximum=_BELOW_ONE)
        if self.ema_decay is not None:
            check_number("ema_decay", self.ema_decay, minimum=0.0, maximum=_BELOW_ONE)
        check_number("label_smoothing", self.label_smoothing, minimum=0.0, maximum=0.5)
        if self.label_smoothing and self.loss not in ("minimax", "non_saturating"):
            raise ValueError(f"label_smoothing applies to the minimax and non_saturating "
                             f"losses, not {self.loss!r}")
        check_int("n_critic", self.n_critic, minimum=1)
        lr_decay = self.lr_decay
        if lr_decay is not None:
            lr_decay = _check_pair("lr_decay", lr_decay, "None or a (start, end) pair of steps")
            check_int("lr_decay start", lr_decay[0], minimum=0)
            check_int("lr_decay end", lr_decay[1], minimum=lr_decay[0] + 1)
        check_int("seed", self.seed)
        check_int("keep_checkpoints", self.keep_checkpoints, minimum=1)
        out_dir = None if self.out_dir is None else check_path("out_dir", self.out_dir)
        if not isinstance(self.amp, bool):
            raise TypeError(f"amp must be a bool, got {type(self.amp).__name__}")
        normalized = {
            "r1_gamma": float(self.r1_gamma), "r1_interval": int(self.r1_interval),
            "lr_g": float(self.lr_g), "lr_d": float(self.lr_d),
            "betas": tuple(float(beta) for beta in betas),
            "ema_decay": None if self.ema_decay is None else float(self.ema_decay),
            "label_smoothing": float(self.label_smoothing), "n_critic": int(self.n_critic),
            "lr_decay": None if lr_decay is None else tuple(int(step) for step in lr_decay),
            "out_dir": out_dir,
            "seed": int(self.seed), "keep_checkpoints": int(self.keep_checkpoints)}
        for name, value in normalized.items():
            object.__setattr__(self, name, value)  # frozen: set once, here

    def to_dict(self):
        """The settings as a checkpoint stores them: plain values, pairs as lists (what
        torch.load(weights_only=True) reads back, and what Trainer.load passes as keywords)."""
        settings = dataclasses.asdict(self)
        for name in ("betas", "lr_decay"):
            if settings[name] is not None:
                settings[name] = list(settings[name])
        return settings
