"""Checkpoints that never lose work: atomic writes (fsync, rename, full disk), a process killed
mid-save or terminated by SIGTERM, the last K kept, and loading that refuses code and names a
corrupt file."""
import errno
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import fastgan
from fastgan.train import checkpoint, outputs
from test_train import _fit, _mlp_models, _ring, _trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _no_pictures(monkeypatch):
    """Plots are not under test here, and matplotlib is slow."""
    monkeypatch.setattr(outputs, "save_loss_plot", lambda *args: None)
    monkeypatch.setattr(fastgan.Trainer, "_write_pictures", lambda *args: None)


def _saved_step(path):
    return checkpoint.safe_load(path)["step"]


def _leftovers(folder):
    return [name for name in os.listdir(folder) if ".tmp-" in name]


def test_atomic_save_syncs_the_file_and_its_directory(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(descriptor):
        synced.append(stat.S_ISDIR(os.fstat(descriptor).st_mode))
        real_fsync(descriptor)

    monkeypatch.setattr(checkpoint.os, "fsync", recording_fsync)
    checkpoint.atomic_save({"x": torch.arange(3)}, tmp_path / "a.pt")
    assert synced == [False, True]  # the file's data, then the rename
    assert torch.equal(checkpoint.safe_load(tmp_path / "a.pt")["x"], torch.arange(3))
    assert not _leftovers(tmp_path)


def test_full_disk_raises_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    trainer = _trainer(_mlp_models(), tmp_path)
    _fit(trainer, _ring(), 2)
    previous = (tmp_path / "checkpoint.pt").read_bytes()

    def save_until_the_disk_is_full(obj, file):
        file.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.torch, "save", save_until_the_disk_is_full)
    with pytest.raises(OSError, match="checkpoint.pt") as caught:
        _fit(trainer, _ring(), 4)
    assert caught.value.errno == errno.ENOSPC
    assert (tmp_path / "checkpoint.pt").read_bytes() == previous
    assert not _leftovers(tmp_path)
    monkeypatch.undo()
    assert _saved_step(tmp_path / "checkpoint.pt") == 2


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_checkpoint_is_an_error_naming_the_file(tmp_path, damage):
    trainer = _trainer(_mlp_models(), tmp_path)
    _fit(trainer, _ring(), 1)
    path = tmp_path / "checkpoint.pt"
    data = path.read_bytes()
    path.write_bytes({"truncated": data[:len(data) // 2], "garbage": os.urandom(len(data)),
                      "empty": b""}[damage])
    with pytest.raises(ValueError, match="truncated or corrupt") as caught:
        fastgan.Trainer.load(path, device="cpu")
    assert str(path) in str(caught.value)


class _RunsCode:
    """Unpickling it would create `marker`: what a malicious checkpoint does with os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("payload", ["reduce", "custom_class"])
def test_a_checkpoint_carrying_code_is_refused(tmp_path, payload):
    trainer = _trainer(_mlp_models(), tmp_path)
    state = trainer.state_dict()
    marker = tmp_path / "code_ran"
    state["history"] = [_RunsCode(str(marker)) if payload == "reduce" else _mlp_models()[0]]
    path = tmp_path / "crafted.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match="refusing to load") as caught:
        fastgan.Trainer.load(path, device="cpu")
    assert str(path) in str(caught.value)
    assert not marker.exists()


def test_keeps_the_last_k_checkpoints(tmp_path):
    trainer = _trainer(_mlp_models(), tmp_path, keep_checkpoints=3)
    _fit(trainer, _ring(), 5, checkpoint_every=1)
    kept = tmp_path / "checkpoints"
    assert sorted(os.listdir(kept)) == ["step_000003.pt", "step_000004.pt", "step_000005.pt"]
    for step in (3, 4, 5):
        assert _saved_step(kept / f"step_{step:06d}.pt") == step
    assert _saved_step(tmp_path / "checkpoint.pt") == 5

    # Resuming from step 3 replaces what the first run saved after it.
    resumed = fastgan.Trainer.load(kept / "step_000003.pt", device="cpu")
    assert resumed.config.keep_checkpoints == 3
    _fit(resumed, _ring(), 4, checkpoint_every=1)
    assert sorted(os.listdir(kept)) == ["step_000003.pt", "step_000004.pt"]
    assert _saved_step(tmp_path / "checkpoint.pt") == 4


def test_kept_checkpoints_are_written_where_hard_links_are_refused(tmp_path, monkeypatch):
    def refuse(source, target):
        raise OSError(errno.EPERM, "hard links not supported")

    monkeypatch.setattr(outputs.os, "link", refuse)
    trainer = _trainer(_mlp_models(), tmp_path, keep_checkpoints=2)
    _fit(trainer, _ring(), 3, checkpoint_every=1)
    kept = tmp_path / "checkpoints"
    assert sorted(os.listdir(kept)) == ["step_000002.pt", "step_000003.pt"]
    assert not os.path.samefile(kept / "step_000003.pt", tmp_path / "checkpoint.pt")
    assert [_saved_step(kept / name) for name in sorted(os.listdir(kept))] == [2, 3]


def test_keep_checkpoints_must_be_positive():
    with pytest.raises(ValueError, match="keep_checkpoints"):
        _trainer(_mlp_models(), keep_checkpoints=0)


# --- a real training process, killed or terminated ----------------------------------------------

_CHILD = textwrap.dedent("""
    import sys, time
    import torch, fastgan
    from fastgan.train import checkpoint, outputs

    out, stall_at_save = sys.argv[1], int(sys.argv[2])
    outputs.save_loss_plot = lambda *args: None  # not under test, and slow
    real_save, saves = torch.save, []

    def save(obj, file):
        saves.append(obj["step"])
        if len(saves) == stall_at_save:  # write part of it, then hang until killed
            file.write(b"PK\\x03\\x04 part of a checkpoint")
            file.flush()
            open(out + "/saving", "w").close()
            time.sleep(600)
        real_save(obj, file)

    checkpoint.torch.save = save
    torch.manual_seed(0)
    run = fastgan.Trainer(fastgan.models.MLPGenerator(z_dim=2, hidden=8, layers=1),
                          fastgan.models.MLPDiscriminator(hidden=8, layers=1), device="cpu",
                          out_dir=out)
    data = fastgan.data.gaussian_ring(256, generator=torch.Generator().manual_seed(0))
    run.fit(data, 10**6, 16, log_every=1, sample_every=0, checkpoint_every=2 * stall_at_save,
            progress=False)
""")


def _start_training(out, stall_at_save=0):
    environment = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(out), str(stall_at_save)],
                            cwd=ROOT, env=environment, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, process, timeout=120):
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the training process ended early: {process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the training process did not get there in time")
        time.sleep(0.05)


def test_sigkill_during_a_save_leaves_the_previous_checkpoint(tmp_path):
    process = _start_training(tmp_path, stall_at_save=2)  # saves at step 4, then hangs at 8
    _wait_for(lambda: (tmp_path / "saving").exists(), process)
    process.kill()
    process.communicate()
    assert _leftovers(tmp_path)  # the kill did interrupt a write
    assert _saved_step(tmp_path / "checkpoint.pt") == 4
    resumed = fastgan.Trainer.load(tmp_path / "checkpoint.pt", device="cpu")
    _fit(resumed, _ring(), 5)
    assert resumed.step == 5


def _logged_steps(folder):
    path = folder / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()
            if line.endswith("}")] if path.exists() else []


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    process = _start_training(tmp_path)
    _wait_for(lambda: len(_logged_steps(tmp_path)) >= 3, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in stderr
    assert _saved_step(tmp_path / "checkpoint.pt") == _logged_steps(tmp_path)[-1]
