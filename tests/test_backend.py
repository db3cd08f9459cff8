"""The extension loads and reports its build; the reference fallback works and warns once."""
import json
import subprocess
import sys

import torch
import torch.nn.functional as F

import fastgan
from conftest import require_extension


def run_python(code, **env):
    import os
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
    from fastgan import _C
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
print(json.dumps({"info": info, "ok": ok, "loaded": "fastgan._C" in __import__("sys").modules}))
"""
    report = json.loads(run_python(code, FASTGAN_BACKEND="reference").stdout)
    assert report["info"]["extension"] is False
    assert report["info"]["build_error"] == "FASTGAN_BACKEND=reference"
    assert report["ok"] and not report["loaded"]


def test_missing_extension_warns_once_and_falls_back():
    code = """
import sys, warnings
sys.modules["fastgan._C"] = None          # makes `from fastgan import _C` raise ImportError
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
    assert "fastgan._C could not be loaded" in message and "pip install" in message
    assert extension == "False"


def test_reference_matches_torch_functional():
    x = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    expected = F.leaky_relu(F.batch_norm(x, None, None, training=True), 0.1)
    actual = fastgan._reference.batch_norm_leaky_relu(x, None, None, training=True,
                                                      negative_slope=0.1)
    torch.testing.assert_close(actual, expected)


def test_cli_info_reports_backend():
    out = run_python("from fastgan.cli import main; main(['info'])").stdout
    assert json.loads(out)["fastgan"] == fastgan.__version__
