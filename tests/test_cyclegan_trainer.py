"""fastgan.CycleGANTrainer: outputs, the learning-rate schedule, an exact resume, translate, the
checkpoint, and bad inputs."""
import json

import pytest
import torch

import fastgan
from fastgan.models import PatchDiscriminator, ResnetGenerator

CycleGANTrainer = fastgan.CycleGANTrainer


@pytest.fixture(scope="module")
def task():
    domain_a, domain_b, test = fastgan.data.digits_translation(16)
    # A few images are enough to exercise the loop.
    return (torch.utils.data.TensorDataset(*domain_a[:24]),
            torch.utils.data.TensorDataset(*domain_b[:20]), test)


def _models(seed=0, channels=(1, 1)):
    torch.manual_seed(seed)
    return (ResnetGenerator(channels[0], channels[1], base_channels=4, blocks=1),
            ResnetGenerator(channels[1], channels[0], base_channels=4, blocks=1),
            PatchDiscriminator(channels[0], base_channels=4, layers=2),
            PatchDiscriminator(channels[1], base_channels=4, layers=2))


def _trainer(out_dir=None, **options):
    return CycleGANTrainer(*_models(), device="cpu", out_dir=out_dir, seed=3, **options)


def test_fit_writes_metrics_pictures_and_a_checkpoint(task, tmp_path):
    domain_a, domain_b, _ = task
    trainer = _trainer(tmp_path, pool_size=3)
    trainer.fit(domain_a, domain_b, 4, batch_size=2, log_every=2, sample_every=4,
                progress=False)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4]
    assert {"g_adversarial", "cycle", "identity", "d_a", "d_b", "lr"} <= set(lines[0])
    assert (tmp_path / "checkpoint.pt").exists()
    assert trainer.latest_samples_path.endswith("step_000004.png")
    raw = torch.load(tmp_path / "samples" / "latest.pt")
    assert raw.shape == (36, 1, 16, 16)  # 6 triples of each direction
    assert len(trainer.pool_a) == 3 and len(trainer.pool_b) == 3


def test_learning_rate_is_constant_then_falls_linearly_to_zero(task):
    domain_a, domain_b, _ = task
    trainer = _trainer(lr=1e-3, decay_start=2)
    trainer.fit(domain_a, domain_b, 6, batch_size=2, log_every=1, sample_every=0,
                checkpoint_every=0, progress=False)
    lrs = [entry["lr"] for entry in trainer.history]
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-3, 7.5e-4, 5e-4, 2.5e-4])


def test_default_decay_starts_halfway(task):
    domain_a, domain_b, _ = task
    trainer = _trainer(lr=1e-3, identity_weight=0.0)
    trainer.fit(domain_a, domain_b, 4, batch_size=2, log_every=1, sample_every=0,
                checkpoint_every=0, progress=False)
    assert [entry["lr"] for entry in trainer.history] == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4])
    assert "identity" not in trainer.history[0]


def _state(trainer):
    state = trainer.state_dict()
    for entry in state["history"]:
        entry.pop("seconds")
    return state


def _assert_equal_states(first, second, where=""):
    if isinstance(first, torch.Tensor):
        assert torch.equal(first, second), where
    elif isinstance(first, dict):
        assert first.keys() == second.keys(), where
        for key in first:
            _assert_equal_states(first[key], second[key], f"{where}/{key}")
    elif isinstance(first, (list, tuple)):
        assert len(first) == len(second), where
        for index, (a, b) in enumerate(zip(first, second)):
            _assert_equal_states(a, b, f"{where}/{index}")
    else:
        assert first == second, where


def test_resumed_run_continues_exactly(task, tmp_path):
    """Stopped after 3 steps and resumed from its checkpoint, a run ends bitwise where a run that
    never stopped does: models, optimizers, both pools, random state, data order, history."""
    domain_a, domain_b, _ = task
    options = dict(batch_size=2, log_every=1, sample_every=0, progress=False)
    whole = _trainer(pool_size=4)
    whole.fit(domain_a, domain_b, 7, **options)
    # The same run, keeping its checkpoint of step 3 (as if it had stopped there).
    first = _trainer(tmp_path, pool_size=4, keep_checkpoints=3)
    first.fit(domain_a, domain_b, 7, checkpoint_every=3, **options)
    resumed = CycleGANTrainer.load(tmp_path / "checkpoints" / "step_000003.pt", device="cpu")
    assert resumed.step == 3
    resumed.fit(domain_a, domain_b, 7, **options)
    whole_state, resumed_state = _state(whole), _state(resumed)
    resumed_state["config"].update(out_dir=None, keep_checkpoints=1)
    _assert_equal_states(whole_state, resumed_state)


def test_translate(task):
    _, _, test = task
    trainer = _trainer()
    images = test.tensors[0][:5]
    translated = trainer.translate(images)
    assert translated.shape == images.shape and translated.abs().max() <= 1
    torch.testing.assert_close(trainer.translate(images[0]), translated[0])
    assert trainer.translate(images, "b2a").shape == images.shape
    assert trainer.translate(images[:0]).shape == (0, 1, 16, 16)
    with pytest.raises(ValueError, match="direction"):
        trainer.translate(images, "a_to_b")


def test_user_models_must_be_given_to_load(task, tmp_path):
    domain_a, domain_b, _ = task

    class Wrapped(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    g_ab, g_ba, d_a, d_b = _models()
    trainer = CycleGANTrainer(Wrapped(g_ab), g_ba, d_a, d_b, device="cpu", out_dir=tmp_path)
    trainer.fit(domain_a, domain_b, 1, batch_size=2, sample_every=0, progress=False)
    with pytest.raises(ValueError, match="user-defined g_ab: pass g_ab="):
        CycleGANTrainer.load(tmp_path / "checkpoint.pt", device="cpu")
    restored = CycleGANTrainer.load(tmp_path / "checkpoint.pt",
                                    g_ab=Wrapped(ResnetGenerator(1, 1, 4, 1)), device="cpu")
    assert restored.step == 1


def test_a_dcgan_checkpoint_is_not_a_cyclegan_one(tmp_path):
    trainer = fastgan.Trainer(fastgan.models.MLPGenerator(z_dim=2, hidden=8, layers=1),
                              fastgan.models.MLPDiscriminator(hidden=8, layers=1), device="cpu")
    trainer.save(tmp_path / "dcgan.pt")
    with pytest.raises(ValueError, match="not a CycleGAN checkpoint"):
        CycleGANTrainer.load(tmp_path / "dcgan.pt", device="cpu")


def test_r1_on_both_discriminators(task):
    domain_a, domain_b, _ = task
    trainer = _trainer(r1_gamma=1.0)
    trainer.fit(domain_a, domain_b, 1, batch_size=2, sample_every=0, checkpoint_every=0,
                progress=False)
    assert trainer.history[0]["r1"] > 0


def test_bad_arguments_name_themselves(task):
    domain_a, domain_b, _ = task
    with pytest.raises(ValueError, match="loss must be one of"):
        _trainer(loss="l2")
    with pytest.raises(ValueError, match="cycle_weight"):
        _trainer(cycle_weight=-1.0)
    with pytest.raises(ValueError, match="amp=True needs a CUDA device"):
        _trainer(amp=True)
    with pytest.raises(TypeError, match="amp must be a bool"):
        _trainer(amp=1)
    with pytest.raises(TypeError, match="d_b must be a torch.nn.Module"):
        CycleGANTrainer(*_models()[:3], "not a model", device="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        _trainer().fit(domain_a, domain_b, 1, batch_size=0)
    colour = torch.utils.data.TensorDataset(torch.zeros(4, 3, 16, 16))
    with pytest.raises(ValueError, match=r"g_ab cannot take images of shape \(3, 16, 16\)"):
        _trainer().fit(colour, domain_b, 1, batch_size=2, progress=False)
    with pytest.raises(ValueError, match="identity loss needs as many channels"):
        CycleGANTrainer(*_models(channels=(3, 1)), device="cpu").fit(
            colour, domain_b, 1, batch_size=2, progress=False)


@pytest.mark.cuda
def test_amp_trains_and_resumes_on_cuda(task, tmp_path):
    """bfloat16 autocast on CUDA: finite losses, the setting kept by the checkpoint, and
    translations in float32."""
    domain_a, domain_b, test = task
    trainer = CycleGANTrainer(*_models(), device="cuda", amp=True, out_dir=tmp_path, seed=3)
    trainer.fit(domain_a, domain_b, 2, batch_size=2, sample_every=0, progress=False)
    assert all(torch.isfinite(torch.tensor(value)) for row in trainer.history
               for value in row.values())
    loaded = CycleGANTrainer.load(tmp_path / "checkpoint.pt", device="cuda")
    assert loaded.config.amp
    assert loaded.translate(test.tensors[0][:3]).dtype == torch.float32
