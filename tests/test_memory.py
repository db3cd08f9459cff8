"""fastgan.train.keep_freed_memory: glibc's malloc keeps a freed large block instead of unmapping
it (checked with mallinfo2, in a fresh interpreter: the setting is process-wide)."""
import ctypes
import subprocess
import sys

import pytest

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
