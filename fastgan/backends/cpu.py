"""Switches of fastgan's CPU kernels, as torch.backends.cudnn's are of cuDNN:

    fastgan.backends.cpu.allow_winograd = False       # from now on
    with fastgan.backends.cpu.flags(benchmark=False):
        ...                                           # within the block

benchmark (default True): each part of a convolution (forward, input gradient, weight gradient of
conv_transpose2d and of fastgan.nn.Conv2d) runs by whichever engine, torch's kernels (oneDNN) or
fastgan's, was faster for its shape, dtype, layout and thread count, as
torch.backends.cudnn.benchmark picks cuDNN's algorithms. The first call of a shape times both (a
few seconds in all for DCGAN-64); the choice is kept in memory and in a file under `cache_dir`, so
a machine pays it once. False: a fixed rule per shape (fastgan's kernels only where they beat
oneDNN on every machine measured: a 1x1 input, a few output channels, small maps).
`fastgan.backends.cpu.choices()` lists what was chosen; the logger "fastgan.dispatch" says so at
INFO level as it happens. The engines agree up to float rounding; a run that must repeat bitwise
(a resumed run against an uninterrupted one) gets the same engines from the cache file, or from
`engine` or benchmark=False.

allow_winograd (default True): conv_transpose2d (and fastgan.nn.Conv2d, which runs some of its
parts as transposed convolutions) may take its Winograd path on stride-2 layers with a 4x4 kernel,
padding 1 and enough channels and tiles: faster, and in float32 further from the exact result
than torch's own convolution (as TF32 is on CUDA; benchmarks/README.md gives the measured error).
False: only the paths as exact as torch's.

gemm (default "fastgan"): the float32 matrix products inside fastgan's convolution kernels run
fastgan's own register-blocked kernel ("fastgan", in the AVX2 and AVX-512 builds) or ATen's
(MKL: "torch"). MKL takes its AVX2 code on AMD CPUs, at about half the rate of fastgan's on the
AMD EPYC of benchmarks/README.md; on a CPU where MKL is the faster, "torch" is the switch (the
`convt` benchmark's GEMM table compares them). Double always runs ATen's.

engine (default None): "torch" or "fastgan" runs every part of those convolutions by that engine,
whatever benchmark says (to compare them, or to test fastgan's kernels on every shape).

cache_dir: where the benchmark's choices are kept (default: $FASTGAN_CACHE_DIR, else
$XDG_CACHE_HOME/fastgan or ~/.cache/fastgan); None keeps them in memory only.

The settings are per process and apply to the next call.
"""
import contextlib
import os
import sys
import types

from fastgan import _backend

ENGINES = ("torch", "fastgan")
GEMMS = ("fastgan", "torch")


def _default_cache_dir():
    if "FASTGAN_CACHE_DIR" in os.environ:
        return os.environ["FASTGAN_CACHE_DIR"] or None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastgan")


class _CpuSwitches(types.ModuleType):
    """This module's class: its switches are properties, so that assigning one checks the value
    and, for allow_winograd, sets it in the compiled kernels (which read it on every call)."""

    _allow_winograd_without_extension = True
    _gemm_without_extension = "fastgan"
    _benchmark = True
    _engine = None
    _cache_dir = _default_cache_dir()

    @property
    def allow_winograd(self):
        if _backend.extension is None:
            return self._allow_winograd_without_extension
        return _backend.extension._get_cpu_allow_winograd()

    @allow_winograd.setter
    def allow_winograd(self, allowed):
        _check_bool("allow_winograd", allowed)
        if _backend.extension is None:
            type(self)._allow_winograd_without_extension = allowed
        else:
            _backend.extension._set_cpu_allow_winograd(allowed)

    @property
    def gemm(self):
        if _backend.extension is None:
            return self._gemm_without_extension
        return "fastgan" if _backend.extension._get_cpu_own_gemm() else "torch"

    @gemm.setter
    def gemm(self, name):
        if name not in GEMMS:
            raise ValueError(f"gemm must be one of {list(GEMMS)}, got {name!r}")
        if _backend.extension is None:
            type(self)._gemm_without_extension = name
        else:
            _backend.extension._set_cpu_own_gemm(name == "fastgan")

    @property
    def benchmark(self):
        return self._benchmark

    @benchmark.setter
    def benchmark(self, enabled):
        _check_bool("benchmark", enabled)
        type(self)._benchmark = enabled

    @property
    def engine(self):
        return self._engine

    @engine.setter
    def engine(self, name):
        if name is not None and name not in ENGINES:
            raise ValueError(f"engine must be None or one of {list(ENGINES)}, got {name!r}")
        type(self)._engine = name

    @property
    def cache_dir(self):
        return self._cache_dir

    @cache_dir.setter
    def cache_dir(self, path):
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"cache_dir must be a path or None, got {type(path).__name__}")
        type(self)._cache_dir = None if path is None else os.fspath(path)


def _check_bool(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


_UNSET = object()


@contextlib.contextmanager
def flags(allow_winograd=None, benchmark=None, engine=_UNSET, gemm=None):
    """Sets the switches given (None, or for engine no argument: left as they are) within a `with`
    block, and restores them after it, also when it raises."""
    module = sys.modules[__name__]
    wanted = {"allow_winograd": allow_winograd, "benchmark": benchmark, "gemm": gemm}
    wanted = {name: value for name, value in wanted.items() if value is not None}
    if engine is not _UNSET:
        wanted["engine"] = engine
    saved = {name: getattr(module, name) for name in wanted}
    try:
        for name, value in wanted.items():
            setattr(module, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def choices():
    """{(op, part, shape description): engine} of every choice the benchmark made or read from
    its cache in this process."""
    from fastgan.ops import _dispatch
    return _dispatch.choices()


sys.modules[__name__].__class__ = _CpuSwitches
