"""Switches of fastgan's CPU kernels, as torch.backends.cudnn's are of cuDNN:

    fastgan.backends.cpu.allow_winograd = False       # from now on
    with fastgan.backends.cpu.flags(allow_winograd=False):
        ...                                           # within the block

allow_winograd (default True): conv_transpose2d (and fastgan.nn.Conv2d, which runs some of its
parts as transposed convolutions) may take its Winograd path on stride-2 layers with a 4x4 kernel,
padding 1 and enough channels and tiles: faster, and in float32 further from the exact result
than torch's own convolution (as TF32 is on CUDA; benchmarks/README.md gives the measured error).
False: only the paths as exact as torch's. The setting is per process and applies to the next
call.
"""
import contextlib
import sys
import types

from fastgan import _backend


class _CpuSwitches(types.ModuleType):
    """This module's class: its switches are properties, so that assigning one sets it in the
    compiled kernels (or, without them, here: the reference implementations are exact anyway)."""

    _allow_winograd_without_extension = True

    @property
    def allow_winograd(self):
        if _backend.extension is None:
            return self._allow_winograd_without_extension
        return _backend.extension._get_cpu_allow_winograd()

    @allow_winograd.setter
    def allow_winograd(self, allowed):
        if not isinstance(allowed, bool):
            raise TypeError(f"allow_winograd must be a bool, got {type(allowed).__name__}")
        if _backend.extension is None:
            self._allow_winograd_without_extension = allowed
        else:
            _backend.extension._set_cpu_allow_winograd(allowed)


@contextlib.contextmanager
def flags(allow_winograd=None):
    """Sets the switches given (None: left as they are) within a `with` block, and restores them
    after it, also when it raises."""
    module = sys.modules[__name__]
    saved = module.allow_winograd
    if allow_winograd is not None:
        module.allow_winograd = allow_winograd
    try:
        yield
    finally:
        module.allow_winograd = saved


sys.modules[__name__].__class__ = _CpuSwitches
