"""fastgan.train.keep_freed_memory: glibc's malloc keeps a freed large block instead of unmapping
it (checked with mallinfo2, in a fresh interpreter: the setting is process-wide); and the CPU
convolution kernels hold no scratch memory between calls."""
import ctypes
import subprocess
import sys

import pytest
import torch

import fastgan

SCRIPT = """
import ctypes, torch, fastgan
fields = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
          "fordblks", "keepcost")
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in fields]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
def allocate_and_free():
    block = torch.empty(64 << 18)  # 64 MiB: above glibc's largest dynamic mmap threshold
    mapped = libc.mallinfo2().hblkhd
    del block
    return mapped, libc.mallinfo2().fordblks
print(*allocate_and_free(), fastgan.train.keep_freed_memory(), *allocate_and_free())
"""


def has_mallinfo2():
    return sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "mallinfo2")


@pytest.mark.skipif(not has_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_freed_blocks_stay_with_the_process():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            check=True)
    mapped_before, free_before, applied, mapped_after, free_after = result.stdout.split()
    block = 64 << 20
    assert int(mapped_before) >= block and int(free_before) < block  # mapped, then unmapped
    assert applied == "True"
    assert int(mapped_after) < block and int(free_after) >= block  # from the heap, then kept


@pytest.mark.parametrize("kwargs", [{"mmap_threshold": 0}, {"trim_threshold": 1 << 31},
                                    {"mmap_threshold": 1.5}, {"trim_threshold": True}])
def test_bad_thresholds_are_rejected(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        fastgan.train.keep_freed_memory(**kwargs)


@pytest.mark.skipif(fastgan._backend.extension is None, reason="fastgan's kernels are not built")
def test_the_convolution_kernels_keep_no_scratch_between_calls():
    """The Winograd path's operands and the other paths' buffers (tens of MiB at DCGAN sizes) are
    freed when each op returns, so they never add to a training step's peak memory."""
    extension = fastgan._backend.extension
    x = torch.randn(4, 64, 16, 16, requires_grad=True)
    weight = (torch.randn(64, 64, 4, 4) * 0.05).requires_grad_()
    with fastgan.backends.cpu.flags(engine="fastgan"):
        for allow_winograd in (True, False):
            with fastgan.backends.cpu.flags(allow_winograd=allow_winograd):
                out = fastgan.ops.conv_transpose2d(x, weight, stride=2, padding=1)
                assert extension._cpu_scratch_bytes_held() == 0
                out.square().sum().backward()
                assert extension._cpu_scratch_bytes_held() == 0
