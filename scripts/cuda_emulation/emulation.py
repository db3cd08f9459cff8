"""Builds a csrc/cuda/*.cu file as a CPU extension on top of prelude.h (the CUDA built-ins its
kernels use, emulated): the source is compiled unchanged apart from mechanical rewrites (CUDA
includes dropped, `kernel<<<...>>>(args)` -> `emulate_launch(..., kernel, args)`, the op
registration replaced by Python bindings)."""
import os
import re

import torch
import torch.utils.cpp_extension as cpp_extension

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.path.join(ROOT, "build", "cuda_emulation")


def emulation_source(name, bindings):
    """csrc/cuda/<name>.cu rewritten for prelude.h; `bindings` is the PYBIND11_MODULE body, with
    the kernels' anonymous namespace reachable as fastgan::cuda::emulated."""
    with open(os.path.join(ROOT, "csrc", "cuda", name + ".cu")) as f:
        src = f.read()
    # The project's headers come before the prelude defines __CUDA_ARCH__ (the host view of c10).
    headers = re.findall(r'^#include "\.\./(.*)"$', src, flags=re.M)
    src = re.sub(r"^#include.*$", "", src, flags=re.M)
    src = src[:src.index("TORCH_LIBRARY_IMPL")] + "}  // namespace cuda\n}  // namespace fastgan\n"
    src = src.replace("namespace cuda {\nnamespace {", "namespace cuda {\nnamespace emulated {", 1)
    launch = re.compile(r"(\w+(?:<[^<>;]*>)?)\s*<<<(.*?)>>>\((.*?)\);", re.S)
    src, launches = launch.subn(lambda m: f"emulate_launch({m[2]}, {m[1]}, {m[3]});", src)
    if launches == 0:
        raise RuntimeError("no kernel launches found to rewrite")
    includes = "".join(f'#include "{header}"\n' for header in headers)
    return (includes + '#include "prelude.h"\n' + src
            + "PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {\n"
            + "  using namespace fastgan::cuda::emulated;\n" + bindings + "}\n")


def build(name, bindings, arch):
    """The emulation of csrc/cuda/<name>.cu for compute capability `arch` (700, 800, ...)."""
    os.makedirs(BUILD, exist_ok=True)
    source = os.path.join(BUILD, f"{name}_emulated.cpp")
    with open(source, "w") as f:
        f.write(emulation_source(name, bindings))
    directory = os.path.join(BUILD, f"{name}_sm{arch}")
    os.makedirs(directory, exist_ok=True)
    return cpp_extension.load(
        name=f"{name}_emulated_sm{arch}", sources=[source],
        extra_include_paths=[os.path.join(ROOT, "csrc"), HERE], build_directory=directory,
        extra_cflags=["-O1", "-std=c++20", f"-DEMULATED_CUDA_ARCH={arch}"])


def run_tests(kernels, probe, pytest_args):
    """pytest on `pytest_args` with the CPU kernels of fastgan's ops replaced by `kernels` ({op
    name: emulated kernel}); `probe()` is called first and must fail unless the emulation took
    their place. Nonzero when a test failed."""
    import pytest
    library = torch.library.Library("fastgan", "IMPL")
    for name, kernel in kernels.items():
        library.impl(name, kernel, "CPU")
    probe()
    try:
        return pytest.main(["-q", "-p", "no:cacheprovider", "--rootdir", ROOT, *pytest_args])
    finally:
        library._destroy()
