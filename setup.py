"""Builds fastgan's compiled kernels: the CPU kernels always, the CUDA kernels when they can be
built.

As ATen does, the CPU kernels are compiled once per instruction set (at::vec capability) on x86:
fastgan._C_default (SSE2), fastgan._C_avx2 and fastgan._C_avx512, each a whole extension module.
At import fastgan loads the best one the CPU runs, at most ATEN_CPU_CAPABILITY when that is set
(fastgan/_backend.py), so an extension built on one machine runs on an older one.

Environment:
  FASTGAN_CUDA=1|0        force the CUDA kernels on (failing loudly if impossible) or off;
                          unset: on when torch is a CUDA build and nvcc is found.
  FASTGAN_CPU_ARCH=ARCH   one module, fastgan._C_native, compiled with -march=ARCH (e.g. native:
                          this machine's every instruction, and only machines that have them);
                          unset or "portable": the per-capability modules.
  TORCH_CUDA_ARCH_LIST, MAX_JOBS   respected as by torch.utils.cpp_extension.
"""
import glob
import os
import platform
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


# The compiler flags of each at::vec capability: ATen's own (cmake/Codegen.cmake), so that the
# kernels use what torch's kernels of that capability use.
CAPABILITY_FLAGS = {
    "DEFAULT": [],
    "AVX2": ["-mavx2", "-mfma", "-mf16c", "-mbmi", "-mbmi2", "-mlzcnt"],
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c",
               "-mbmi", "-mbmi2", "-mlzcnt"],
}


def variants():
    """[(module name, capability, compiler flags)] to build."""
    arch = os.environ.get("FASTGAN_CPU_ARCH", "portable").strip() or "portable"
    if arch != "portable":
        return [("_C_native", cpu_capability(arch), [f"-march={arch}"])]
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return [("_C_default", "DEFAULT", [])]
    return [(f"_C_{capability.lower()}", capability, flags)
            for capability, flags in CAPABILITY_FLAGS.items()]


def extension(name, capability, arch_flags, with_cuda):
    version = read_version()
    macros = [
        ("FASTGAN_VERSION", version),
        ("FASTGAN_TORCH_VERSION", torch.__version__),
        ("CPU_CAPABILITY", capability),
        (f"CPU_CAPABILITY_{capability}", None),
    ]
    # -fopenmp: at::parallel_for is inline OpenMP code; without it the kernels run on one thread.
    cxx_flags = ["-O3", *arch_flags, "-fopenmp", "-Wno-unknown-pragmas"]
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp") +
                     glob.glob("csrc/autograd/*.cpp"))
    if not with_cuda:
        return CppExtension(
            f"fastgan.{name}", sources, define_macros=macros,
            extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"],
        )
    macros.append(("FASTGAN_WITH_CUDA", None))
    return CUDAExtension(
        f"fastgan.{name}",
        sources + sorted(glob.glob("csrc/cuda/*.cu")),
        define_macros=macros,
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
        extra_link_args=["-fopenmp"],
    )


class BuildEachInItsOwnDirectory(BuildExtension.with_options(use_ninja=True)):
    """The variants compile the same sources with different flags: each keeps its object files
    (and ninja's record of them) in a directory of its own under build/objects, whoever builds
    (`setup.py build_ext`, or pip, which would otherwise use a temporary directory), so a
    rebuild recompiles only what changed: `make`'s pip install and its `build_ext --inplace`
    compile once between them."""

    def build_extension(self, ext):
        shared = self.build_temp
        self.build_temp = os.path.join(ROOT, "build", "objects", ext.name.rpartition(".")[2])
        try:
            super().build_extension(ext)
        finally:
            self.build_temp = shared


setup(
    ext_modules=[extension(name, capability, flags, cuda_wanted())
                 for name, capability, flags in variants()],
    cmdclass={"build_ext": BuildEachInItsOwnDirectory},
)
