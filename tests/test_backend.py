"""The extension loads and reports its build; the reference fallback works and warns once."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import fastgan
from conftest import require_extension


def run_python(code, **env):
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, **env}, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def test_extension_loads_and_reports_its_build():
    info = fastgan.backend_info()
    assert set(info) >= {"extension", "cpu_kernels", "cuda_kernels", "torch", "build_error"}
    if require_extension():
        assert info["extension"], f"FASTGAN_REQUIRE_EXT=1 but: {info['build_error']}"
    if not info["extension"]:
        return
    _C = fastgan._backend.extension
    assert _C.__version__ == fastgan.__version__
    assert _C.torch_version == torch.__version__
    assert _C.cpu_capability in ("DEFAULT", "AVX2", "AVX512")
    # Without OpenMP the CPU kernels' at::parallel_for silently runs on one thread.
    assert _C.openmp == torch.backends.openmp.is_available()
    assert info["cpu_kernels"] and info["build_error"] is None
    assert hasattr(torch.ops.fastgan, "batch_norm_leaky_relu")


def test_forced_reference_backend_runs_the_reference():
    code = """
import json, warnings, torch, torch.nn.functional as F
with warnings.catch_warnings():
    warnings.simplefilter("error")   # a forced fallback is not a surprise: no warning
    import fastgan
info = fastgan.backend_info()
x = torch.randn(4, 3, 5, 5)
out = fastgan.ops.batch_norm_leaky_relu(x, None, None, training=True)
ok = torch.equal(out, F.leaky_relu(F.batch_norm(x, None, None, training=True), 0.2))
loaded = [name for name in __import__("sys").modules if name.startswith("fastgan._C")]
print(json.dumps({"info": info, "ok": ok, "loaded": loaded}))
"""
    report = json.loads(run_python(code, FASTGAN_BACKEND="reference").stdout)
    assert report["info"]["extension"] is False
    assert report["info"]["build_error"] == "FASTGAN_BACKEND=reference"
    assert report["ok"] and not report["loaded"]


def test_missing_extension_warns_once_and_falls_back():
    code = """
import importlib.util, warnings
find_spec = importlib.util.find_spec      # as if no kernels were built
importlib.util.find_spec = lambda name, *args: (None if name.startswith("fastgan._C")
                                                else find_spec(name, *args))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import torch, fastgan
    x = torch.randn(4, 3)
    fastgan.ops.batch_norm_leaky_relu(x, None, None, training=True)
    fastgan.ops.batch_norm_leaky_relu(x, None, None, training=True)
messages = [str(w.message) for w in caught if "fastgan" in str(w.message)]
print(len(messages)); print(messages[0] if messages else "")
print(fastgan.backend_info()["extension"])
"""
    count, message, extension = run_python(code).stdout.strip().splitlines()
    assert count == "1"
    assert "fastgan's kernels could not be loaded" in message and "pip install" in message
    assert extension == "False"


CAPABILITIES = {"AVX512": "_is_avx512_supported", "AVX2": "_is_avx2_supported", "DEFAULT": None}


def _runs_here(capability):
    check = CAPABILITIES[capability]
    return check is None or getattr(torch.cpu, check)()


def test_the_best_capability_this_cpu_runs_is_loaded():
    """The best this CPU runs, at most ATEN_CPU_CAPABILITY's."""
    info = fastgan.backend_info()
    if not info["extension"] or info["cpu_module"] == "fastgan._C_native":
        pytest.skip("a build for one -march (FASTGAN_CPU_ARCH) has no capability to choose")
    cap = os.environ.get("ATEN_CPU_CAPABILITY", "").upper()
    allowed = list(CAPABILITIES)[list(CAPABILITIES).index(cap):] if cap in CAPABILITIES \
        else list(CAPABILITIES)
    best = next(capability for capability in allowed if _runs_here(capability))
    assert info["cpu_capability"] == best
    assert info["cpu_module"] == f"fastgan._C_{best.lower()}"


# Each op on the CPU against torch, in the process of a lower capability.
_OPS_AGAINST_TORCH = """
import json, torch, torch.nn.functional as F
import fastgan
torch.manual_seed(0)
x = torch.randn(4, 8, 9, 7, dtype=torch.float64, requires_grad=True)
w = torch.randn(8, 5, 4, 4, dtype=torch.float64, requires_grad=True) / 8
errors = []
with fastgan.backends.cpu.flags(engine="fastgan"):
    for channels_last in (False, True):
        y = x.to(memory_format=torch.channels_last) if channels_last else x
        ours = fastgan.ops.conv_transpose2d(y, w, None, 2, 1, activation="tanh")
        theirs = torch.tanh(F.conv_transpose2d(y, w, None, 2, 1))
        grads = [torch.autograd.grad(out.square().sum(), (x, w)) for out in (ours, theirs)]
        errors.append((ours - theirs).abs().max().item())
        errors += [(a - b).abs().max().item() for a, b in zip(*grads)]
        big = torch.randn(64, 64, 16, 16, dtype=torch.float64)   # the Winograd path
        wide = torch.randn(64, 32, 4, 4, dtype=torch.float64) / 32
        errors.append((fastgan.ops.conv_transpose2d(big, wide, None, 2, 1)
                       - F.conv_transpose2d(big, wide, None, 2, 1)).abs().max().item())
        bn = fastgan.ops.batch_norm_leaky_relu(y, None, None, training=True)
        errors.append((bn - F.leaky_relu(F.batch_norm(y, None, None, training=True), 0.2))
                      .abs().max().item())
        (grad,) = torch.autograd.grad(bn.sum(), x, create_graph=True)
        ours_penalty = fastgan.ops.r1_penalty(bn, x)
        errors.append((ours_penalty - 5.0 * grad.square().sum((1, 2, 3)).mean()).abs().item())
info = fastgan.backend_info()
print(json.dumps({"capability": info["cpu_capability"], "module": info["cpu_module"],
                  "error": max(errors)}))
"""


@pytest.mark.parametrize("capability", ["AVX2", "DEFAULT"])
def test_a_lower_capability_is_loaded_on_request_and_computes_the_same(capability):
    """ATEN_CPU_CAPABILITY, as torch reads it, caps the kernels fastgan loads: the lower
    capability's kernels run and agree with torch."""
    info = fastgan.backend_info()
    if not info["extension"] or info["cpu_module"] == "fastgan._C_native":
        pytest.skip("a build for one -march (FASTGAN_CPU_ARCH) has no capability to choose")
    if not _runs_here(capability):
        pytest.skip(f"this CPU does not run {capability}")
    report = json.loads(run_python(_OPS_AGAINST_TORCH,
                                   ATEN_CPU_CAPABILITY=capability.lower()).stdout)
    assert report["capability"] == capability
    assert report["module"] == f"fastgan._C_{capability.lower()}"
    assert report["error"] < 1e-10


def test_reference_matches_torch_functional():
    x = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    expected = F.leaky_relu(F.batch_norm(x, None, None, training=True), 0.1)
    actual = fastgan._reference.batch_norm_leaky_relu(x, None, None, training=True,
                                                      negative_slope=0.1)
    torch.testing.assert_close(actual, expected)


def test_cli_info_reports_backend():
    out = run_python("from fastgan.cli import main; main(['info'])").stdout
    assert json.loads(out)["fastgan"] == fastgan.__version__
