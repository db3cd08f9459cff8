"""Loads the compiled extension, or explains why the pure-PyTorch reference runs instead."""
import os
import warnings

import torch

_CAPABILITY_RANK = {"DEFAULT": 0, "AVX2": 1, "AVX512": 2}


def _cpu_supports(capability):
    """Whether this CPU can run kernels compiled for `capability` (an at::vec level)."""
    checks = {
        "AVX2": getattr(torch.cpu, "_is_avx2_supported", None),
        "AVX512": getattr(torch.cpu, "_is_avx512_supported", None),
    }
    check = checks.get(capability)
    return True if check is None else bool(check())


def _load():
    """Returns (module or None, reason or None)."""
    if os.environ.get("FASTGAN_BACKEND", "").strip().lower() == "reference":
        return None, "FASTGAN_BACKEND=reference"
    try:
        from fastgan import _C
    except Exception as error:  # any failure to load means: run the reference
        return None, f"fastgan._C could not be loaded: {type(error).__name__}: {error}"
    if _C.torch_version != torch.__version__:
        return None, (f"fastgan._C was built against torch {_C.torch_version} but torch "
                      f"{torch.__version__} is installed; rebuild it")
    if not _cpu_supports(_C.cpu_capability):
        return None, (f"fastgan._C was compiled for {_C.cpu_capability}, which this CPU does not "
                      f"support; rebuild it on this machine (or set FASTGAN_CPU_ARCH)")
    return _C, None


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
        "torch": torch.__version__,
        "build_error": build_error,
        # The CPU convolutions' measured dispatch: its switches, cache file and choices so far.
        "cpu_dispatch": _dispatch_info(),
    }


def _dispatch_info():
    from fastgan.ops import _dispatch  # fastgan.ops imports this module
    return _dispatch.info()
