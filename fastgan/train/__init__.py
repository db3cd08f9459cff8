"""Training: fastgan.Trainer, fastgan.CycleGANTrainer and their pieces (R1, atomic checkpoints,
pictures, the image pool)."""
from fastgan.train.config import TrainerConfig
from fastgan.train.cyclegan import CycleGANTrainer
from fastgan.train.image_pool import ImagePool
from fastgan.train.memory import keep_freed_memory
from fastgan.train.regularization import lazy_adam_settings, r1_penalty
from fastgan.train.trainer import Trainer

__all__ = ["Trainer", "TrainerConfig", "CycleGANTrainer", "ImagePool", "r1_penalty", "lazy_adam_settings",
           "keep_freed_memory"]
