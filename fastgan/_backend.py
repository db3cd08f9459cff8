"""Loads the compiled extension, or explains why the pure-PyTorch reference runs instead."""
import importlib
import importlib.util
import os
import warnings

import torch

# The extension modules setup.py builds, best first: one compiled for a given -march
# (FASTGAN_CPU_ARCH), then one per at::vec capability.
_NATIVE = "_C_native"
_CAPABILITIES = ("AVX512", "AVX2", "DEFAULT")


def _cpu_supports(capability):
    """Whether this CPU can run kernels compiled for `capability` (an at::vec level)."""
    checks = {
        "AVX2": getattr(torch.cpu, "_is_avx2_supported", None),
        "AVX512": getattr(torch.cpu, "_is_avx512_supported", None),
    }
    check = checks.get(capability)
    return True if check is None else bool(check())


def _capability_cap():
    """The highest capability ATEN_CPU_CAPABILITY allows (as torch reads it), or None."""
    requested = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().upper()
    return requested if requested in _CAPABILITIES else None


def _candidates():
    """The module names to try, best first: those built, that this CPU runs and that
    ATEN_CPU_CAPABILITY allows (a native build only without it: its instructions are unknown
    until it is loaded)."""
    cap = _capability_cap()
    allowed = _CAPABILITIES[_CAPABILITIES.index(cap):] if cap else _CAPABILITIES
    names = [] if cap else [_NATIVE]
    names += [f"_C_{capability.lower()}" for capability in allowed if _cpu_supports(capability)]
    return [name for name in names if importlib.util.find_spec(f"fastgan.{name}") is not None]


def _load():
    """Returns (module or None, reason or None). Only one module is imported: each registers
    the same ops."""
    if os.environ.get("FASTGAN_BACKEND", "").strip().lower() == "reference":
        return None, "FASTGAN_BACKEND=reference"
    try:
        candidates = _candidates()
        if not candidates:
            raise ImportError("no fastgan._C_* module for this CPU was built")
        module = importlib.import_module(f"fastgan.{candidates[0]}")
    except Exception as error:  # any failure to load means: run the reference
        return None, f"fastgan's kernels could not be loaded: {type(error).__name__}: {error}"
    if module.torch_version != torch.__version__:
        return None, (f"fastgan's kernels were built against torch {module.torch_version} but "
                      f"torch {torch.__version__} is installed; rebuild them")
    if not _cpu_supports(module.cpu_capability):
        return None, (f"fastgan's kernels were compiled for {module.cpu_capability}, which this "
                      f"CPU does not support; rebuild them (FASTGAN_CPU_ARCH unset)")
    return module, None


extension, build_error = _load()

if extension is None and build_error != "FASTGAN_BACKEND=reference":
    warnings.warn(
        f"fastgan is running its slow pure-PyTorch reference implementations: {build_error}. "
        "Build the kernels with: pip install --no-build-isolation -e .",
        RuntimeWarning,
        stacklevel=2,
    )


def has_kernels(device):
    """Whether fastgan's compiled kernels can run on tensors on `device`."""
    if extension is None:
        return False
    # Meta tensors (shapes only) run the fake kernels the ops register.
    return device.type in ("cpu", "meta") or (device.type == "cuda" and extension.cuda)


_warned_devices = set()


def use_reference(tensor):
    """True where no compiled kernel serves `tensor`'s device; warns once per device type when the
    extension is loaded but lacks that backend (e.g. CUDA tensors with a CPU-only build)."""
    if has_kernels(tensor.device):
        return False
    if extension is not None and tensor.device.type not in _warned_devices:
        _warned_devices.add(tensor.device.type)
        warnings.warn(
            f"fastgan was built without {tensor.device.type} kernels; running the pure-PyTorch "
            f"reference on {tensor.device.type} tensors", RuntimeWarning, stacklevel=3)
    return True


def backend_info():
    """Which implementation fastgan runs, and why."""
    return {
        "extension": extension is not None,
        "cpu_kernels": extension is not None,
        "cuda_kernels": extension is not None and bool(extension.cuda),
        "cuda_available": torch.cuda.is_available(),
        "cpu_capability": extension.cpu_capability if extension is not None else None,
        "cpu_module": extension.__name__ if extension is not None else None,
        "torch": torch.__version__,
        "build_error": build_error,
        # The CPU convolutions' measured dispatch: its switches, cache file and choices so far.
        "cpu_dispatch": _dispatch_info(),
    }


def _dispatch_info():
    from fastgan.ops import _dispatch  # fastgan.ops imports this module
    return _dispatch.info()
