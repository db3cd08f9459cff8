"""fastgan.CycleGANTrainer data-parallel: two processes against one process on the whole batch,
the same models on every rank, an exact resume with every rank's image pools and random state,
synced BatchNorm in a user's models, a resume with another world size, and `fastgan cyclegan`
under torchrun. As in test_distributed.py (whose launcher this uses) the processes run on the
CPU with gloo, the checks grouped into few launches (starting processes is the slow part)."""
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import fastgan
from fastgan.cli import main
from fastgan.nn import SyncBatchNormLeakyReLU
from fastgan.train import distributed
from fastgan.train.checkpoint import safe_load
from fastgan.train.cyclegan import MODEL_NAMES
from test_cyclegan_trainer import _assert_equal_states, _models
from test_distributed import LAUNCH_TIMEOUT_S, ROOT, WORLD_SIZE, _launch, _same_on_every_rank

CycleGANTrainer = fastgan.CycleGANTrainer
# batch_size in all: 2 images of each domain per process.
FIT = {"batch_size": 4, "log_every": 1, "sample_every": 0, "progress": False}


@pytest.fixture(scope="module")
def domains():
    domain_a, domain_b, _ = fastgan.data.digits_translation(16)
    return domain_a.tensors[0][:16], domain_b.tensors[0][:12]


def _trainer(out_dir=None, **options):
    return CycleGANTrainer(*_models(), device="cpu", out_dir=out_dir, seed=3, **options)


def _gradients(trainer):
    return {name: [parameter.grad for parameter in getattr(trainer, name).parameters()]
            for name in MODEL_NAMES}


def _check_one_step_against_one_process(domains, reference):
    """Without pools the losses are functions of the batch: one step on two shards of a batch
    has the averaged losses and the gradients of one process on the whole batch."""
    trainer = _trainer(pool_size=0).fit(*domains, 1, checkpoint_every=0, **FIT)
    for name, value in reference["losses"].items():
        assert trainer.history[0][name] == pytest.approx(value, rel=1e-5), name
    for name, gradients in _gradients(trainer).items():
        for index, (gradient, expected) in enumerate(zip(gradients, reference["gradients"][name])):
            # atol: the biases that an InstanceNorm follows have a gradient of 0 but for
            # rounding, about 1e-6 here (the weights' gradients are 0.1 to 10).
            torch.testing.assert_close(gradient, expected, rtol=1e-4, atol=1e-5,
                                       msg=f"{name}: parameter {index}")
    for name in MODEL_NAMES:
        _same_on_every_rank(getattr(trainer, name))


def _comparable(state):
    """A checkpoint's state less what two runs of the same training differ in: the time taken,
    and where and how many checkpoints they keep."""
    for entry in state["history"]:
        entry.pop("seconds")
    state["config"].update(out_dir=None, keep_checkpoints=1)
    return state


def _check_exact_resume(rank, folder, domains):
    """Resumed at step 2 from its checkpoint, a run ends where the run that never stopped does,
    on every rank: models, optimizers, each rank's pools and random state, data order."""
    options = {"pool_size": 3, "r1_gamma": 1.0}
    whole_dir, resumed_dir = os.path.join(folder, "whole"), os.path.join(folder, "resumed")
    whole = _trainer(whole_dir, keep_checkpoints=3, **options)
    whole.fit(*domains, 5, checkpoint_every=2, **FIT)
    for name in MODEL_NAMES:
        _same_on_every_rank(getattr(whole, name))
    pools = distributed.gather(whole.pool_a.state_dict()["images"])
    assert not torch.equal(torch.cat(pools[0]), torch.cat(pools[1]))  # each rank its own
    resumed = CycleGANTrainer.load(os.path.join(whole_dir, "checkpoints", "step_000002.pt"),
                                   device="cpu", out_dir=resumed_dir)
    assert resumed.step == 2
    resumed.fit(*domains, 5, **FIT)
    _assert_equal_states(_comparable(whole.state_dict()), _comparable(resumed.state_dict()))
    if rank == 0:  # the checkpoints hold every rank's part
        saved, resumed_saved = (safe_load(os.path.join(directory, "checkpoint.pt"))
                                for directory in (whole_dir, resumed_dir))
        assert len(saved["ranks"]) == WORLD_SIZE
        _assert_equal_states(_comparable(saved), _comparable(resumed_saved))


def _check_batch_norm_is_synced(domains):
    """A user's models with BatchNorm train with synced statistics, as fastgan.Trainer's: the
    running statistics, which each rank updates itself, stay equal on every rank."""
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                            nn.Conv2d(4, 1, 3, padding=1), nn.Tanh()) for _ in range(2)]
    models += [nn.Sequential(nn.Conv2d(1, 4, 4, stride=2), nn.BatchNorm2d(4), nn.LeakyReLU(0.2),
                             nn.Conv2d(4, 1, 3)) for _ in range(2)]
    trainer = CycleGANTrainer(*models, device="cpu", seed=3).fit(*domains, 2, checkpoint_every=0,
                                                                **FIT)
    for name in MODEL_NAMES:
        model = getattr(trainer, name)
        assert isinstance(model[1], SyncBatchNormLeakyReLU), name
        _same_on_every_rank(model)


def _worker(rank, folder, domains, reference):
    with fastgan.backends.cpu.flags(engine="fastgan"):  # as the suite's conftest.py
        _check_one_step_against_one_process(domains, reference)
        _check_exact_resume(rank, folder, domains)
        _check_batch_norm_is_synced(domains)
        one_process = CycleGANTrainer.load(reference["checkpoint"], device="cpu")
        with pytest.raises(ValueError, match="written with world size 1 .* not 2"):
            one_process.fit(*domains, 2, **FIT)


def test_two_processes_train_as_one_and_resume_exactly(domains, tmp_path):
    single = _trainer(tmp_path / "single", pool_size=0).fit(*domains, 1, **FIT)
    reference = {"losses": {key: value for key, value in single.history[0].items()
                            if key != "seconds"},
                 "gradients": _gradients(single), "checkpoint": single.checkpoint_path}
    _launch(_worker, tmp_path, str(tmp_path), domains, reference)
    # Another world size: the models load (and translate), training refuses to continue.
    two_processes = CycleGANTrainer.load(tmp_path / "whole" / "checkpoint.pt", device="cpu")
    assert two_processes.step == 5
    assert two_processes.translate(domains[0][:2]).shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="written with world size 2 .* not 1"):
        two_processes.fit(*domains, 6, **FIT)


def test_torchrun_cyclegan_on_digits_and_a_resume_with_another_world_size(tmp_path, capsys):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={WORLD_SIZE}", "-m", "fastgan", "cyclegan", "--data", "digits",
               "--steps", "2", "--device", "cpu", "--out", str(out), "--quiet"]
    run = subprocess.run(command, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                         capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "(batch 4 over 2 processes)" in run.stdout
    assert run.stdout.count('"step": 2') == 1  # rank 0 alone reports
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 2 and len(state["ranks"]) == WORLD_SIZE
    with open(out / "metrics.jsonl") as log:
        training = [entry for entry in map(json.loads, log) if "cycle" in entry]
    assert [entry["step"] for entry in training] == [2]
    with pytest.raises(SystemExit):
        main(["cyclegan", "--data", "digits", "--steps", "3", "--device", "cpu", "--out",
              str(out), "--quiet", "--resume"])
    assert "written with world size 2" in capsys.readouterr().err
