"""Builds fastgan._C: the CPU kernels always, the CUDA kernels when they can be built.

Environment:
  FASTGAN_CUDA=1|0        force the CUDA kernels on (failing loudly if impossible) or off;
                          unset: on when torch is a CUDA build and nvcc is found.
  FASTGAN_CPU_ARCH=ARCH   -march for the CPU kernels (default: native, i.e. this machine).
  TORCH_CUDA_ARCH_LIST, MAX_JOBS   respected as by torch.utils.cpp_extension.
"""
import glob
import os
import re
import subprocess

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def read_version():
    with open(os.path.join(ROOT, "fastgan", "_version.py")) as f:
        return re.search(r'__version__ = "([^"]+)"', f.read()).group(1)


def cuda_wanted():
    flag = os.environ.get("FASTGAN_CUDA", "").strip()
    problems = []
    if torch.version.cuda is None:
        problems.append(f"the installed torch {torch.__version__} is not a CUDA build")
    if CUDA_HOME is None:
        problems.append("nvcc was not found (set CUDA_HOME)")
    if flag == "1" and problems:
        raise RuntimeError("FASTGAN_CUDA=1 but the CUDA kernels cannot be built: " + "; ".join(problems))
    if flag not in ("", "0", "1"):
        raise RuntimeError(f"FASTGAN_CUDA must be 0 or 1, got {flag!r}")
    return flag == "1" or (flag == "" and not problems)


def cpu_capability(march):
    """The at::vec capability that -march=`march` enables, read from the compiler's macros."""
    compiler = os.environ.get("CXX", "c++")
    macros = subprocess.run(
        [compiler, f"-march={march}", "-dM", "-E", "-x", "c++", os.devnull],
        check=True, capture_output=True, text=True,
    ).stdout
    defined = set(re.findall(r"#define (\w+)", macros))
    if {"__AVX512F__", "__AVX512BW__", "__AVX512DQ__", "__AVX512VL__"} <= defined:
        return "AVX512"
    if {"__AVX2__", "__FMA__"} <= defined:
        return "AVX2"
    return "DEFAULT"


def extension():
    version = read_version()
    march = os.environ.get("FASTGAN_CPU_ARCH", "native")
    capability = cpu_capability(march)
    macros = [
        ("FASTGAN_VERSION", version),
        ("FASTGAN_TORCH_VERSION", torch.__version__),
        ("CPU_CAPABILITY", capability),
        (f"CPU_CAPABILITY_{capability}", None),
    ]
    # -fopenmp: at::parallel_for is inline OpenMP code; without it the kernels run on one thread.
    cxx_flags = ["-O3", f"-march={march}", "-fopenmp", "-Wno-unknown-pragmas"]
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp") +
                     glob.glob("csrc/autograd/*.cpp"))
    if not cuda_wanted():
        return CppExtension(
            "fastgan._C", sources, define_macros=macros, extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    macros.append(("FASTGAN_WITH_CUDA", None))
    return CUDAExtension(
        "fastgan._C",
        sources + sorted(glob.glob("csrc/cuda/*.cu")),
        define_macros=macros,
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
        extra_link_args=["-fopenmp"],
    )


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
