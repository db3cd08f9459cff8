"""Data-parallel training: synced BatchNorm against one process on the whole batch, R1 under
DDP, and `fastgan train` under torchrun. Multi-process checks run on the CPU with gloo and two
processes, grouped into few launches (starting processes is the slow part)."""
import copy
import datetime
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import fastgan
from fastgan.nn import (BatchNormLeakyReLU1d, BatchNormLeakyReLU2d, SyncBatchNormLeakyReLU,
                        convert_sync_batchnorm)
from fastgan.nn.sync_batch_norm import _normalize, sync_batch_norm_leaky_relu
from fastgan.train import distributed, r1_penalty
from fastgan.train.batches import make_batches
from conftest import make_input

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORLD_SIZE = 2
LAUNCH_TIMEOUT_S = 300  # a hung collective fails the test instead of hanging the suite


# --- one process: the synced layer's math, its conversion, the fallback --------------------

def torch_bn_lrelu(x, running_mean, running_var, weight, bias, momentum, eps, slope):
    return F.leaky_relu(F.batch_norm(x, running_mean, running_var, weight, bias, True, momentum,
                                     eps), slope)


@pytest.mark.parametrize("shape, layout", [((7, 3), "contiguous"), ((3, 4, 5, 2), "channels_last"),
                                           ((2, 3, 6), "non_contiguous")], ids=str)
@pytest.mark.parametrize("slope", [0.0, 0.2, 1.0])
def test_synced_math_matches_torch(shape, layout, slope):
    """The statistics combination and the normalization with the statistics as differentiable
    inputs (group=None: the reductions are the identity) against torch's BatchNorm."""
    x = make_input(shape, layout=layout) * 3 + 100  # a large mean must not cancel the variance
    upstream = make_input(shape, layout=layout, seed=1)
    g = torch.Generator().manual_seed(2)
    weight, bias = torch.randn(2, shape[1], generator=g, dtype=torch.float64)
    results = []
    for function, group in ((torch_bn_lrelu, ()), (sync_batch_norm_leaky_relu, (None,))):
        leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
        stats = [torch.zeros(shape[1], dtype=torch.float64), torch.ones(shape[1],
                                                                        dtype=torch.float64)]
        out = function(leaves[0], *stats, *leaves[1:], 0.3, 1e-5, slope, *group)
        results.append((out, torch.autograd.grad(out, leaves, upstream), stats))
    (out, grads, stats), (expected_out, expected_grads, expected_stats) = results[1], results[0]
    torch.testing.assert_close(out, expected_out)
    for actual, expected in zip((*grads, *stats), (*expected_grads, *expected_stats)):
        torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize("affine", [True, False])
def test_synced_function_gradcheck_and_gradgradcheck(affine):
    x = make_input((4, 2, 3))
    g = torch.Generator().manual_seed(1)
    wb = (torch.randn(2, 2, generator=g, dtype=torch.float64).unbind() if affine else ())

    def function(x, *wb):
        return sync_batch_norm_leaky_relu(x, None, None, *(wb or (None, None)), 0.1, 1e-5, 0.2,
                                          None)

    inputs = (x.requires_grad_(), *(t.requires_grad_() for t in wb))
    assert gradcheck(function, inputs)
    assert gradgradcheck(function, inputs)
    # The backward that builds a graph (R1) computes the same first-order gradients.
    upstream = torch.randn_like(x)
    plain = torch.autograd.grad(function(*inputs), inputs, upstream)
    differentiable = torch.autograd.grad(function(*inputs), inputs, upstream, create_graph=True)
    for actual, expected in zip(differentiable, plain):
        torch.testing.assert_close(actual, expected)


def test_normalize_gradients_reach_the_statistics():
    """The normalization's own gradients w.r.t. mean and var (the fused path's formulas)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 2, 2, generator=g, dtype=torch.float64)
    mean, weight, bias = torch.randn(3, 2, generator=g, dtype=torch.float64)
    var = torch.rand(2, generator=g, dtype=torch.float64) + 0.5
    inputs = tuple(t.requires_grad_() for t in (x, mean, var, weight, bias))

    def function(*tensors):
        return _normalize(*tensors, 1e-5, 0.2)

    assert gradcheck(function, inputs)
    assert gradgradcheck(function, inputs)


def test_without_a_process_group_it_is_the_unsynced_layer():
    torch.manual_seed(0)
    reference = BatchNormLeakyReLU2d(4, negative_slope=0.1)
    synced = convert_sync_batchnorm(copy.deepcopy(reference))
    assert isinstance(synced, SyncBatchNormLeakyReLU) and synced.negative_slope == 0.1
    for module in (reference, synced):
        module.weight.data.normal_(generator=torch.Generator().manual_seed(1))
    for training in (True, True, False):
        reference.train(training), synced.train(training)
        x = torch.randn(3, 4, 5, 5)
        torch.testing.assert_close(synced(x), reference(x), rtol=0, atol=0)
    for name, buffer in reference.named_buffers():
        torch.testing.assert_close(synced.get_buffer(name), buffer, rtol=0, atol=0)


def test_convert_sync_batchnorm_keeps_parameters_buffers_and_slopes():
    model = nn.Sequential(nn.Linear(3, 4), BatchNormLeakyReLU1d(4, negative_slope=0.0),
                          nn.Sequential(nn.BatchNorm1d(4, momentum=None, affine=False)),
                          nn.Linear(4, 1))
    parameters = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    keys = model.state_dict().keys()
    converted = convert_sync_batchnorm(model, process_group="group")
    assert converted is model
    first, second = converted[1], converted[2][0]
    assert type(first) is SyncBatchNormLeakyReLU and first.negative_slope == 0.0
    assert type(second) is SyncBatchNormLeakyReLU and second.negative_slope == 1.0
    assert second.momentum is None and not second.affine and first.process_group == "group"
    assert converted.state_dict().keys() == keys
    assert all(parameters[name] is p for name, p in converted.named_parameters())
    assert all(buffers[name] is b for name, b in converted.named_buffers())
    assert convert_sync_batchnorm(first) is first  # already synced


def test_synced_layer_rejects_1d_input():
    with pytest.raises(ValueError, match="at least 2D"):
        SyncBatchNormLeakyReLU(3)(torch.randn(3))


def test_shards_are_disjoint_and_make_up_the_single_process_batches():
    data = torch.arange(40.0).unsqueeze(1)
    single = make_batches(data, 8, seed=1)
    shards = [make_batches(data, 8, 1, rank, 2) for rank in range(2)]
    for _ in range(12):  # past an epoch's end: the shards reshuffle together
        whole, _ = next(single)
        parts = [next(shard)[0] for shard in shards]
        assert all(len(part) == 4 for part in parts)
        assert sorted(torch.cat(parts).flatten().tolist()) == sorted(whole.flatten().tolist())
    with pytest.raises(ValueError, match="batch_size .9. must be a multiple of the number of "
                                         "processes .2."):
        make_batches(data, 9, 1, 0, 2)


def test_a_loader_must_shard_with_a_distributed_sampler():
    data = TensorDataset(torch.arange(8.0))
    with pytest.raises(ValueError, match="DistributedSampler"):
        make_batches(DataLoader(data, batch_size=2, shuffle=True), 4, 0, 0, 2)
    sampler = DistributedSampler(data, num_replicas=2, rank=0, shuffle=True, seed=0)
    batches = make_batches(DataLoader(data, batch_size=2, sampler=sampler), 4, 0, 0, 2)
    epochs = [sorted(torch.cat([next(batches)[0] for _ in range(2)]).tolist()) for _ in range(3)]
    assert sampler.epoch == 2 and all(len(epoch) == 4 for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) > 1  # reshuffled per epoch


# --- two processes (gloo) -------------------------------------------------------------------

def _launch(worker, tmp_path, *args):
    """Runs worker(rank, *args) in WORLD_SIZE processes joined in a gloo group; a failure in any
    of them fails the test, and so does a hang (after LAUNCH_TIMEOUT_S)."""
    context = mp.start_processes(_join_and_run, (str(tmp_path / "store"), worker, args),
                                 nprocs=WORLD_SIZE, join=False, start_method="spawn")
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=LAUNCH_TIMEOUT_S)
    while not context.join(timeout=5):
        if datetime.datetime.now() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {WORLD_SIZE} processes did not finish in {LAUNCH_TIMEOUT_S} s")


def _join_and_run(rank, store, worker, args):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=WORLD_SIZE, timeout=datetime.timedelta(seconds=180))
    try:
        worker(rank, *args)
    finally:
        distributed.leave_process_group()


def _summed(tensor):
    total = tensor.clone()
    dist.all_reduce(total)
    return total


def _check_layer(rank, name, torch_norm, fused, sizes, shape, layout="contiguous", steps=2):
    """torch's BatchNorm + LeakyReLU on the whole batch against `fused` (None: torch_norm
    itself), converted, on this rank's part (`sizes` samples per rank), over `steps` training
    steps: outputs, input gradients, summed parameter gradients, running statistics."""
    torch.manual_seed(0)
    torch_norm = torch_norm.double()
    if torch_norm.affine:
        with torch.no_grad():
            torch_norm.weight.normal_(), torch_norm.bias.normal_()
    fused = copy.deepcopy(torch_norm if fused is None else fused).double()
    fused.load_state_dict(torch_norm.state_dict())
    slope = getattr(fused, "negative_slope", 1.0)
    synced = convert_sync_batchnorm(fused)
    start, stop = sum(sizes[:rank]), sum(sizes[:rank + 1])
    for step in range(steps):
        whole = make_input((sum(sizes), *shape[1:]), seed=step) * 2 + 1
        upstream = make_input(whole.shape, seed=10 + step)
        part = whole[start:stop].clone()
        if layout == "channels_last":
            part = part.contiguous(memory_format=torch.channels_last)
        whole.requires_grad_(), part.requires_grad_()
        for module in (torch_norm, synced):
            module.zero_grad()
        expected = F.leaky_relu(torch_norm(whole), slope)
        output = synced(part)
        (expected * upstream).sum().backward()
        (output * upstream[start:stop]).sum().backward()
        message = f"{name}, step {step}, rank {rank}"
        torch.testing.assert_close(output, expected[start:stop], msg=message)
        torch.testing.assert_close(part.grad, whole.grad[start:stop], msg=message)
        for parameter, reference in zip(synced.parameters(), torch_norm.parameters()):
            torch.testing.assert_close(_summed(parameter.grad), reference.grad, msg=message)
    for (buffer_name, buffer), reference in zip(synced.named_buffers(), torch_norm.buffers()):
        torch.testing.assert_close(buffer, reference, msg=f"{name}: {buffer_name}")


def _r1_model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 6), BatchNormLeakyReLU1d(6), nn.Linear(6, 1)).double()


def _check_r1_through_synced_layer(rank, sizes):
    """Second order: the R1 penalty's parameter gradients (summed over ranks) with the synced
    layer equal one process's on the whole batch."""
    whole = make_input((sum(sizes), 3), seed=5)
    start, stop = sum(sizes[:rank]), sum(sizes[:rank + 1])
    results = []
    for model, inputs in ((_r1_model(), whole), (convert_sync_batchnorm(_r1_model()),
                                                 whole[start:stop])):
        inputs = inputs.clone().requires_grad_()
        (gradient,) = torch.autograd.grad(model(inputs).sum(), inputs, create_graph=True)
        gradient.pow(2).sum().backward()
        results.append((gradient, [p.grad for p in model.parameters()]))
    (expected_gradient, expected), (gradient, grads) = results
    torch.testing.assert_close(gradient, expected_gradient[start:stop])
    assert expected[-1] is None  # the last bias: R1 does not reach it
    for grad, reference in zip(grads, expected):
        assert (grad is None) == (reference is None)
        if grad is not None:
            torch.testing.assert_close(_summed(grad), reference)


def _check_r1_under_ddp(rank):
    """The trainer's lazy R1 step under DDP (the penalty plus every_parameter_term) gives each
    rank the gradients of one process's penalty on the whole batch, over several iterations
    (DDP fails an iteration after a backward that missed a parameter)."""
    torch.manual_seed(2)
    single = fastgan.models.MLPDiscriminator(hidden=8, batch_norm=True).double()
    ddp = distributed.wrap(copy.deepcopy(single), torch.device("cpu"))
    half = 4
    for step in range(3):
        whole = make_input((2 * half, 2), seed=20 + step)
        part = whole[rank * half:(rank + 1) * half].clone().requires_grad_()
        whole.requires_grad_()
        single.zero_grad(), ddp.zero_grad()
        r1_penalty(single(whole), whole, 2.0).backward()
        logits = ddp(part)
        (r1_penalty(logits, part, 2.0) + distributed.every_parameter_term(logits)).backward()
        for (name, parameter), reference in zip(ddp.module.named_parameters(),
                                                single.parameters()):
            expected = torch.zeros_like(reference) if reference.grad is None else reference.grad
            torch.testing.assert_close(parameter.grad, expected, msg=f"{step}: {name}")
    assert distributed.all_ranks(True) and not distributed.all_ranks(rank == 0)
    assert distributed.any_rank(rank == 1) and not distributed.any_rank(False)
    assert distributed.mean_over_ranks({"x": float(rank)}) == {"x": 0.5}


def _trainer(out_dir, **options):
    torch.manual_seed(0)
    models = (fastgan.models.MLPGenerator(z_dim=2, hidden=16, layers=2),
              fastgan.models.MLPDiscriminator(hidden=16, layers=2, batch_norm=True))
    return fastgan.Trainer(*models, device="cpu", out_dir=out_dir, seed=3, **options)


def _fit(trainer, steps):
    data = fastgan.data.gaussian_ring(256, generator=torch.Generator().manual_seed(0))
    return trainer.fit(data, steps, batch_size=16, log_every=1, sample_every=0, progress=False)


def _same_on_every_rank(module):
    for name, tensor in module.state_dict().items():
        first, second = distributed.gather(tensor)
        assert torch.equal(first, second), name


def _check_trainer(rank, folder):
    """The trainer in a process group: models equal on every rank, rank 0 alone writes, and
    resuming from its checkpoint continues exactly (per-rank noise, sharded data order)."""
    options = {"r1_gamma": 1.0, "r1_interval": 2, "ema_decay": 0.8}
    uninterrupted = _fit(_trainer(os.path.join(folder, "a"), **options), 4)
    assert uninterrupted.world_size == WORLD_SIZE and uninterrupted.rank == rank
    for module in (uninterrupted.generator, uninterrupted.discriminator):
        _same_on_every_rank(module)
    assert os.path.exists(os.path.join(folder, "a", "checkpoint.pt"))  # before any rank returns
    with open(os.path.join(folder, "a", "metrics.jsonl")) as log:
        assert [json.loads(line)["step"] for line in log] == [1, 2, 3, 4]  # from rank 0 alone
    _fit(_trainer(os.path.join(folder, "b"), **options), 2)
    resumed = fastgan.Trainer.load(os.path.join(folder, "b", "checkpoint.pt"), device="cpu",
                                   out_dir=os.path.join(folder, "c"))
    _fit(resumed, 4)
    # Rank 0 alone samples, so only its EMA copy has recalibrated BatchNorm statistics.
    for name in ("generator", "discriminator", "ema")[:3 if rank == 0 else 2]:
        for key, value in getattr(uninterrupted, name).state_dict().items():
            assert torch.equal(value, getattr(resumed, name).state_dict()[key]), (name, key)
    # R1 in the same backward as the loss (two DDP forwards, one backward).
    _same_on_every_rank(_fit(_trainer(None, r1_gamma=1.0, r1_interval=1), 2).discriminator)


def _worker(rank, folder):
    cases = [
        ("2d, halves", nn.BatchNorm2d(3), BatchNormLeakyReLU2d(3), (4, 4), (0, 3, 3, 2)),
        ("2d, 3 and 5, channels_last", nn.BatchNorm2d(3),
         BatchNormLeakyReLU2d(3, negative_slope=0.0), (3, 5), (0, 3, 2, 3), "channels_last"),
        ("plain BatchNorm1d, an empty rank", nn.BatchNorm1d(4), None, (0, 6), (0, 4)),
        ("1d (N, C, L), 1 and 2, cumulative, no affine",
         nn.BatchNorm1d(2, momentum=None, affine=False),
         BatchNormLeakyReLU1d(2, momentum=None, affine=False), (1, 2), (0, 2, 3)),
    ]
    for name, torch_norm, fused, sizes, shape, *layout in cases:
        _check_layer(rank, name, torch_norm, fused, sizes, shape, *layout)
    _check_r1_through_synced_layer(rank, (3, 5))
    _check_r1_under_ddp(rank)
    _check_trainer(rank, folder)


def test_synced_batch_norm_r1_and_trainer_on_two_processes(tmp_path):
    _launch(_worker, tmp_path, str(tmp_path))


def test_torchrun_train_writes_one_checkpoint_and_resumes(tmp_path):
    out = tmp_path / "run"

    def train(*extra):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={WORLD_SIZE}", "-m", "fastgan", "train", "--data", "ring",
                   "--batch-size", "16", "--device", "cpu", "--out", str(out), "--quiet", *extra]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=LAUNCH_TIMEOUT_S)
        assert run.returncode == 0, run.stdout + run.stderr
        return run.stdout

    stdout = train("--steps", "3")
    assert stdout.count('"step": 3') == 1  # rank 0 alone reports
    assert sorted(name for name in os.listdir(out) if name.endswith(".pt")) == ["checkpoint.pt"]
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 3 and len(state["rng_per_rank"]) == WORLD_SIZE
    train("--steps", "5", "--resume")
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 5
    assert [entry["step"] for entry in state["history"]] == [3, 5]
