"""Keeping freed memory in the process: on Linux, glibc's malloc serves large blocks with fresh
mappings and gives freed memory back to the system, so the large tensors of every training step
are page-faulted in again on every step (both PyTorch's kernels and fastgan's)."""
import ctypes
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h


def keep_freed_memory(mmap_threshold=1 << 30, trim_threshold=(1 << 31) - 1):
    """Tell glibc's malloc to serve blocks up to `mmap_threshold` bytes from its heap and to keep
    up to `trim_threshold` bytes of freed memory for reuse (what
    `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...:glibc.malloc.trim_threshold=...` does at
    start-up). Process-wide: the process keeps the memory of its largest step. Returns True where
    it applied (Linux with glibc), False elsewhere."""
    for name, value in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 1 << 31:
            raise ValueError(f"{name} must be an int in [1, 2**31), got {value!r}")
    if not sys.platform.startswith("linux"):
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # the C library already loaded
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold))
