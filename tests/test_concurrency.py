"""Determinism (torch.use_deterministic_algorithms, any thread count), calls from several Python
threads at once, and no memory growth over a long training loop."""
import os
import threading

import pytest
import torch
from torch import nn

import fastgan
from fastgan import _reference
from fastgan.nn import BatchNormLeakyReLU1d, BatchNormLeakyReLU2d, ConvTranspose2d


def _bn_and_conv(seed):
    """Outputs and gradients of both ops (forward, backward, and the double backward of a
    gradient penalty) on inputs made from `seed`, by name; "conv" names depend on the transposed
    convolution (whose GEMMs are torch's), the others on the BatchNorm kernels alone."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 6, 9, 7, generator=g).to(memory_format=torch.channels_last)
    y = torch.randn(6, 16, 33, generator=g)
    weight = torch.randn(6, 4, 4, 4, generator=g).requires_grad_()
    bn_weight, bn_bias = torch.randn(16, generator=g), torch.randn(16, generator=g)
    leaves = {"conv input": x.requires_grad_(), "bn input": y.requires_grad_(),
              "conv weight": weight, "bn weight": bn_weight.requires_grad_(),
              "bn bias": bn_bias.requires_grad_()}
    conv = fastgan.ops.conv_transpose2d(x, weight, None, 2, 1, activation="leaky_relu")
    running = torch.zeros(16), torch.ones(16)
    norm = fastgan.ops.batch_norm_leaky_relu(y, *running, bn_weight, bn_bias, True)
    loss = conv.square().sum() + norm.square().sum()
    grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=True)
    penalty = sum(g.square().sum() for g in grads[:2])
    second = torch.autograd.grad(penalty, list(leaves.values()), allow_unused=True)
    results = {"conv output": conv, "bn output": norm, "bn running_mean": running[0],
               "bn running_var": running[1]}
    for name, grad, grad_of_penalty in zip(leaves, grads, second):
        results[f"grad of {name}"] = grad
        if grad_of_penalty is not None:
            results[f"penalty grad of {name}"] = grad_of_penalty
    return results


def _assert_identical(first, second):
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_deterministic_algorithms_mode_and_any_thread_count():
    """Bitwise identical results run after run at every thread count. Across thread counts the
    BatchNorm kernels (fastgan's own per-channel reductions) stay bitwise identical; the
    transposed convolution's GEMMs are torch's (MKL), which on some CPUs split their sums by
    thread count (torch's own conv_transpose2d and mm do too), so there they agree to rounding."""
    threads = torch.get_num_threads()
    try:
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(1)
        expected = _bn_and_conv(0)
        for count in (1, 2, 3, 4):
            torch.set_num_threads(count)
            first = _bn_and_conv(0)
            _assert_identical(_bn_and_conv(0), first)
            for name, value in first.items():
                if "conv" in name:
                    scale = expected[name].abs().max().item()
                    torch.testing.assert_close(value, expected[name], rtol=1e-5,
                                               atol=1e-5 * scale, msg=name)
                else:
                    assert torch.equal(value, expected[name]), name
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)


def test_ops_from_several_python_threads():
    seeds = range(6)
    expected = {seed: _bn_and_conv(seed) for seed in seeds}
    results, errors = {}, []
    start = threading.Barrier(len(seeds))

    def work(seed):
        try:
            start.wait()
            for _ in range(3):
                results[seed] = _bn_and_conv(seed)
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    workers = [threading.Thread(target=work, args=(seed,)) for seed in seeds]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not errors, errors
    for seed in seeds:
        _assert_identical(results[seed], expected[seed])


def test_threads_match_the_reference():
    """The same work on fastgan's kernels and on the reference, across threads, agrees."""
    g = torch.Generator().manual_seed(1)
    inputs = [torch.randn(4, 3, 5, 5, generator=g) for _ in range(4)]
    weight = torch.randn(3, 2, 3, 3, generator=g)
    out = [None] * len(inputs)

    def work(index):
        out[index] = fastgan.ops.conv_transpose2d(inputs[index], weight, activation="tanh")

    workers = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    for x, result in zip(inputs, out):
        torch.testing.assert_close(result, _reference.conv_transpose2d(x, weight,
                                                                       activation="tanh"))


def _resident_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_no_memory_growth_over_1000_training_iterations():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(2, 64, bias=False), BatchNormLeakyReLU1d(64),
                        nn.Linear(64, 64, bias=False), BatchNormLeakyReLU1d(64), nn.Linear(64, 1))
    upsample = nn.Sequential(ConvTranspose2d(4, 4, 4, 2, 1, bias=False), BatchNormLeakyReLU2d(4),
                             ConvTranspose2d(4, 1, 3, 1, 1, activation="tanh"))
    parameters = list(mlp.parameters()) + list(upsample.parameters())
    optimizer = torch.optim.Adam(parameters, lr=1e-3)
    data = torch.randn(256, 2)
    resident = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: parallel regions would only cost time
    try:
        _train(mlp, upsample, optimizer, data, resident)
    finally:
        torch.set_num_threads(threads)
    # A leak of one activation (64 KB) per step would add 50 MB.
    assert resident[1000] - resident[200] < 16 * 2 ** 20, resident


def _train(mlp, upsample, optimizer, data, resident):
    """1000 steps; resident[step] = the resident memory after steps 200 and 1000."""
    for step in range(1, 1001):
        points = data.detach().requires_grad_()
        images = upsample(data.view(32, 4, 2, 2))
        loss = mlp(points).mean() + images.square().mean()
        (gradient,) = torch.autograd.grad(loss, points, create_graph=True)  # as R1 does
        optimizer.zero_grad(set_to_none=True)
        (loss + gradient.square().sum()).backward()
        optimizer.step()
        if step in (200, 1000):
            resident[step] = _resident_bytes()
