"""Shared test helpers: devices, dtype-aware comparison, float64 gradient checks."""
import os

import pytest
import torch

# The dispatch's choices stay in memory: the suite, and the programs it starts, write no cache
# file outside their temporary directories.
os.environ["FASTGAN_CACHE_DIR"] = ""

import fastgan  # noqa: E402 - after the environment it reads

try:  # property-based tests' budgets (tests/test_properties.py)
    from hypothesis import settings as _hypothesis_settings
except ImportError:
    pass
else:
    # CI: bounded and reproducible; "thorough" for a long search before a release.
    _hypothesis_settings.register_profile("ci", max_examples=30, deadline=None,
                                          derandomize=True, print_blob=True)
    _hypothesis_settings.register_profile("thorough", max_examples=1000, deadline=None)
    _hypothesis_settings.load_profile(os.environ.get("FASTGAN_HYPOTHESIS_PROFILE", "ci"))

HAS_CUDA_KERNELS = torch.cuda.is_available() and fastgan.backend_info()["cuda_kernels"]

# Every device fastgan's kernels can run on here; CUDA entries are marked and skip cleanly.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]

# (rtol, atol) for comparing against a float64 reference computed from the same inputs.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (5e-2, 5e-2),
    "tf32": (1e-2, 1e-2),  # float32 with torch.backends.cuda.matmul.allow_tf32
}


@pytest.fixture(autouse=True)
def fastgan_kernels_on_every_shape():
    """The suite tests fastgan's kernels: every part of every convolution runs by them unless a
    test asks for torch's or the dispatch's choice (fastgan.backends.cpu.flags)."""
    with fastgan.backends.cpu.flags(engine="fastgan"):
        yield


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA device and fastgan's CUDA kernels")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA_KERNELS:
            item.add_marker(skip)


def require_extension():
    """FASTGAN_REQUIRE_EXT=1 (as in CI) turns a missing extension into a failure."""
    return os.environ.get("FASTGAN_REQUIRE_EXT") == "1"


def assert_close(actual, expected, dtype=None, scale=1.0):
    """Compares within the tolerance of `dtype` (default: actual's), loosened by `scale`."""
    rtol, atol = TOLERANCES[dtype or actual.dtype]
    torch.testing.assert_close(actual.to(expected.dtype), expected, rtol=rtol * scale,
                               atol=atol * scale)


def shape_layouts(shapes):
    """(shape, layout) for every layout make_input knows that fits the shape (channels_last: 4D
    and 5D)."""
    return [(shape, layout) for shape in shapes
            for layout in ("contiguous", "channels_last", "non_contiguous")
            if layout != "channels_last" or len(shape) in (4, 5)]


def make_input(shape, dtype=torch.float64, device="cpu", layout="contiguous", seed=0):
    """Random input in one of the layouts the kernels meet: contiguous, channels_last (4D, or
    channels_last_3d for 5D), non_contiguous (a strided view)."""
    generator = torch.Generator().manual_seed(seed)
    if layout == "non_contiguous":
        wide = list(shape)
        wide[-1] *= 2
        return torch.randn(wide, generator=generator, dtype=dtype)[..., ::2].to(device)
    x = torch.randn(shape, generator=generator, dtype=dtype).to(device)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    return x


def first_and_second_order_grads(out, leaves, seed):
    """The gradients of `out` (against a random upstream gradient made from `seed`) with respect
    to `leaves`, then those of their squared norms' sum with respect to `leaves` (zeros where
    unused): what an R1 penalty differentiates, for any subset of an op's inputs."""
    upstream = make_input(out.shape, out.dtype, out.device, seed=seed)
    first = torch.autograd.grad(out, leaves, upstream, create_graph=True)
    penalty = sum(g.square().sum() for g in first)
    second = torch.autograd.grad(penalty, leaves, allow_unused=True)
    return [*first, *(s if s is not None else torch.zeros_like(leaf)
                      for s, leaf in zip(second, leaves))]
