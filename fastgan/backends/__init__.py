"""Switches of fastgan's kernels per backend, as torch.backends' are of torch's."""
from fastgan.backends import cpu

__all__ = ["cpu"]
