"""fastgan: fast GAN training for PyTorch.

Hand-written CPU and CUDA kernels (fused BatchNorm+LeakyReLU, ...) behind drop-in `nn` modules and
a functional API. If the compiled extension cannot be loaded, fastgan warns once and runs its
pure-PyTorch reference implementations; `backend_info()` says which path is active and why.
"""
from fastgan._version import __version__
from fastgan._backend import backend_info
from fastgan import backends, ops, nn, models, losses, data, metrics
from fastgan.train import CycleGANTrainer, Trainer

__all__ = ["__version__", "backend_info", "backends", "ops", "nn", "models", "losses", "data", "metrics",
           "Trainer", "CycleGANTrainer"]
