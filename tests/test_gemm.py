"""The CPU kernels' matrix product (csrc/cpu/gemm.cpp): fastgan's float32 kernel on every edge of
its tiles and blocks, any strides, accumulation, against float64; the gemm switch."""
import pytest
import torch
import torch.nn.functional as F

import fastgan
from fastgan import _backend

cpu = fastgan.backends.cpu
needs_kernels = pytest.mark.skipif(_backend.extension is None,
                                   reason="fastgan's kernels are not built")


def _matmul(out, a, b, accumulate=False):
    _backend.extension._cpu_matmul(out, a, b, accumulate)


def _operand(shape, transposed, generator, dtype=torch.float32):
    """A random matrix (or batch of them) of `shape`, stored transposed when asked: a view whose
    rows are not contiguous."""
    if not transposed:
        return torch.randn(shape, generator=generator, dtype=dtype)
    return torch.randn((*shape[:-2], shape[-1], shape[-2]), generator=generator,
                       dtype=dtype).transpose(-1, -2)


def _check_within_rounding(out, a, b, start=None):
    """out == start + a @ b up to float32 rounding: each entry within 2 * depth * 2^-24 of the
    sum of |a||b| (a bound any summation order meets; a wrong entry misses it by far)."""
    exact = a.double() @ b.double()
    magnitude = a.double().abs() @ b.double().abs()
    if start is not None:
        exact = exact + start.double()
        magnitude = magnitude + start.double().abs()
    bound = 2 * max(a.shape[-1], 1) * 2.0 ** -24 * magnitude + 1e-30
    assert ((out.double() - exact).abs() <= bound).all()


# Rows, depth and columns around the tile (12 x 32 on AVX-512, 6 x 16 on AVX2), the depth block
# (256) and the column block (512).
SHAPES = [(1, 1, 1), (5, 3, 7), (12, 16, 32), (13, 17, 33), (25, 64, 31), (37, 256, 64),
          (24, 257, 48), (50, 600, 96), (7, 40, 1100), (200, 9, 520)]


@needs_kernels
@pytest.mark.parametrize("rows,depth,cols", SHAPES)
@pytest.mark.parametrize("transposed_a,transposed_b", [(False, False), (True, False),
                                                        (False, True), (True, True)])
def test_product_is_exact_up_to_rounding(rows, depth, cols, transposed_a, transposed_b):
    generator = torch.Generator().manual_seed(rows * 1000 + depth)
    a = _operand((rows, depth), transposed_a, generator)
    b = _operand((depth, cols), transposed_b, generator)
    out = torch.full((rows, cols), float("nan"))
    _matmul(out, a, b)
    _check_within_rounding(out, a, b)


@needs_kernels
@pytest.mark.parametrize("rows", range(1, 25))
def test_every_count_of_last_rows(rows):
    """Rows past the last whole tile take a tile of exactly their count (1 to 11 on AVX-512, 1
    to 5 on AVX2), reading A in place."""
    generator = torch.Generator().manual_seed(rows)
    a = _operand((rows, 19), True, generator)
    b = _operand((19, 40), False, generator)
    out = torch.full((rows, 40), float("nan"))
    _matmul(out, a, b)
    _check_within_rounding(out, a, b)


@needs_kernels
@pytest.mark.parametrize("rows,depth,cols", [(13, 17, 33), (64, 300, 40), (3, 5, 600)])
def test_batched_product_accumulates_into_rows_of_a_wider_tensor(rows, depth, cols):
    """out a column slice of a wider tensor (rows `cols + 5` apart), accumulated into; the
    columns outside it are left as they were."""
    generator = torch.Generator().manual_seed(depth)
    a = _operand((4, rows, depth), False, generator)
    b = _operand((4, depth, cols), True, generator)
    wide = torch.randn(4, rows, cols + 5, generator=generator)
    start = wide.clone()
    out = wide[:, :, 2:2 + cols]
    _matmul(out, a, b, accumulate=True)
    _check_within_rounding(out, a, b, start=start[:, :, 2:2 + cols])
    assert torch.equal(wide[:, :, :2], start[:, :, :2])
    assert torch.equal(wide[:, :, 2 + cols:], start[:, :, 2 + cols:])


@needs_kernels
def test_an_empty_depth_gives_zeros_or_leaves_the_sum():
    a, b = torch.empty(5, 0), torch.empty(0, 7)
    out = torch.full((5, 7), 3.0)
    _matmul(out, a, b, accumulate=True)
    assert torch.equal(out, torch.full((5, 7), 3.0))
    _matmul(out, a, b)
    assert torch.equal(out, torch.zeros(5, 7))


@needs_kernels
def test_the_result_does_not_depend_on_the_thread_count():
    """Each entry is summed by one task in the same order whatever the threads: bitwise equal."""
    generator = torch.Generator().manual_seed(3)
    a, b = torch.randn(300, 700, generator=generator), torch.randn(700, 90, generator=generator)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            out = torch.empty(300, 90)
            _matmul(out, a, b)
            results.append(out)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


@needs_kernels
@pytest.mark.parametrize("batch,rows,depth,cols", [(None, 64, 8192, 100), (2, 30, 3000, 40),
                                                   (None, 5, 2100, 3), (None, 64, 40000, 48)])
def test_a_deep_product_of_small_matrices_is_cut_in_depth(batch, rows, depth, cols):
    """Few blocks of C and a deep product (a 1x1 input's gradient): the depth is cut into
    chunks summed in order, the same sums for any thread count; accumulation included."""
    generator = torch.Generator().manual_seed(depth)
    leading = () if batch is None else (batch,)
    a = _operand((*leading, rows, depth), False, generator)
    b = _operand((*leading, depth, cols), True, generator)
    start = torch.randn(*leading, rows, cols, generator=generator)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            out = start.clone()
            _matmul(out, a, b, accumulate=True)
            results.append(out)
    finally:
        torch.set_num_threads(threads)
    _check_within_rounding(results[0], a, b, start=start)
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])
    out = torch.full_like(start, float("nan"))
    _matmul(out, a, b)
    _check_within_rounding(out, a, b)


@needs_kernels
@pytest.mark.parametrize("gemm", ["fastgan", "torch"])
def test_both_settings_and_double_compute_the_product(gemm):
    generator = torch.Generator().manual_seed(4)
    with cpu.flags(gemm=gemm):
        for dtype in (torch.float32, torch.float64):
            a = _operand((3, 40, 70), True, generator, dtype)
            b = _operand((3, 70, 50), False, generator, dtype)
            out = torch.empty(3, 40, 50, dtype=dtype)
            _matmul(out, a, b)
            _check_within_rounding(out.float(), a.float(), b.float())


@needs_kernels
def test_mismatched_sizes_are_an_error():
    with pytest.raises(RuntimeError, match="do not match"):
        _matmul(torch.empty(3, 4), torch.empty(3, 5), torch.empty(6, 4))
    with pytest.raises(RuntimeError, match="must all be 2-D or all 3-D"):
        _matmul(torch.empty(3, 4), torch.empty(1, 3, 5), torch.empty(5, 4))


@needs_kernels
def test_the_vector_builds_have_the_kernel():
    assert _backend.extension.own_gemm_built == (_backend.extension.cpu_capability != "DEFAULT")


def test_gemm_switch_takes_only_its_values_and_restores(monkeypatch):
    assert cpu.gemm == "fastgan"
    with pytest.raises(ValueError, match="gemm must be one of"):
        cpu.gemm = "mkl"
    with cpu.flags(gemm="torch"):
        assert cpu.gemm == "torch"
    assert cpu.gemm == "fastgan"
    monkeypatch.setattr(_backend, "extension", None)
    with cpu.flags(gemm="torch"):
        assert cpu.gemm == "torch"
    assert cpu.gemm == "fastgan"


@needs_kernels
@pytest.mark.parametrize("allow_winograd", [True, False])
def test_a_convolution_agrees_under_both_gemm_settings(allow_winograd):
    """A generator layer on each of its paths, forward and both gradients, with each product."""
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(8, 64, 8, 8, generator=generator, requires_grad=True)
    weight = (torch.randn(64, 32, 4, 4, generator=generator) * 0.05).requires_grad_()
    grad = torch.randn(8, 32, 16, 16, generator=generator)
    results = {}
    for gemm in ("fastgan", "torch"):
        with cpu.flags(gemm=gemm, allow_winograd=allow_winograd):
            out = fastgan.ops.conv_transpose2d(x, weight, stride=2, padding=1)
            results[gemm] = (out, *torch.autograd.grad(out, (x, weight), grad))
    exact = F.conv_transpose2d(x.double(), weight.double(), stride=2, padding=1)
    exact_grads = torch.autograd.grad(exact, (x, weight), grad.double())
    for ours, theirs, reference in zip(results["fastgan"], results["torch"],
                                       (exact, *exact_grads)):
        scale = reference.abs().max()
        assert (ours.double() - reference).abs().max() <= 1e-4 * scale
        assert (ours - theirs).abs().max() <= 1e-4 * scale
