"""Short training runs: finite losses, outputs, checkpoints that round-trip, exact resumption,
NaN and Ctrl-C handling, and errors before training."""
import dataclasses
import inspect
import json
import os
import signal

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import fastgan
from fastgan.models import DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, MLPGenerator
from fastgan.train import TrainerConfig, lazy_adam_settings, r1_penalty


def _mlp_models(seed=0):
    torch.manual_seed(seed)
    return (MLPGenerator(z_dim=2, hidden=16, layers=2),
            MLPDiscriminator(hidden=16, layers=2))


def _dcgan_models(num_classes=0, seed=0):
    torch.manual_seed(seed)
    return (DCGANGenerator(z_dim=8, out_channels=1, image_size=16, base_channels=4,
                           num_classes=num_classes),
            DCGANDiscriminator(in_channels=1, image_size=16, base_channels=4,
                               num_classes=num_classes))


def _ring(n=256):
    return fastgan.data.gaussian_ring(n, generator=torch.Generator().manual_seed(0))


def _digits(n=64):
    images, labels = fastgan.data.digits(16).tensors
    return TensorDataset(images[:n], labels[:n])


def _trainer(models, out_dir=None, **kwargs):
    return fastgan.Trainer(*models, out_dir=out_dir, **{"device": "cpu", **kwargs})


def _fit(trainer, data, steps, **kwargs):
    kwargs = {"batch_size": 16, "progress": False, "log_every": 1, **kwargs}
    return trainer.fit(data, steps, **kwargs)


def _assert_same_state(first, second):
    for name in ("generator", "discriminator", "ema"):
        a, b = getattr(first, name), getattr(second, name)
        if a is None:
            assert b is None
            continue
        for (key, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(x, y), f"{name}.{key} differs"


def _losses_are_finite(trainer):
    assert trainer.history
    for entry in trainer.history:
        assert all(torch.isfinite(torch.tensor(entry[k])) for k in ("d_loss", "g_loss"))


def test_r1_penalty_matches_its_formula():
    weight = torch.tensor([[1.0, -2.0, 3.0]])
    inputs = torch.randn(5, 3, requires_grad=True)
    # D(x) = w.x has gradient w for every sample: penalty = gamma / 2 * ||w||^2
    assert r1_penalty(inputs @ weight.T, inputs, 4.0).item() == pytest.approx(2.0 * 14.0)
    # D(x) = sum x^2 has gradient 2x: penalty = gamma / 2 * mean ||2x||^2
    expected = (2 * inputs.detach()).pow(2).sum(dim=1).mean() / 2
    assert r1_penalty(inputs.pow(2).sum(dim=1), inputs, 1.0).item() == pytest.approx(
        expected.item(), rel=1e-6)


def test_lazy_r1_adjusts_the_discriminators_adam():
    lr, betas = lazy_adam_settings(2e-4, (0.5, 0.999), 4)
    assert lr == pytest.approx(2e-4 * 4 / 5)
    assert betas == pytest.approx((0.5 ** 0.8, 0.999 ** 0.8))
    trainer = _trainer(_mlp_models(), r1_gamma=1.0, r1_interval=4)
    group = trainer.optimizer_d.param_groups[0]
    assert group["lr"] == pytest.approx(lr) and group["betas"] == pytest.approx(betas)
    assert trainer.optimizer_g.param_groups[0]["lr"] == 2e-4


def test_ring_run_writes_everything(tmp_path):
    trainer = _trainer(_mlp_models(), tmp_path, r1_gamma=0.1, r1_interval=2, ema_decay=0.9)
    evaluations = []
    _fit(trainer, _ring(), 4, sample_every=2, checkpoint_every=2, modes=fastgan.data.ring_means(),
         evaluate=lambda t: evaluations.append(t.step) or {"calls": len(evaluations)})
    assert trainer.step == 4 and evaluations == [2, 4]
    _losses_are_finite(trainer)
    assert any("r1" in entry for entry in trainer.history)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "d_loss" in line] == [1, 2, 3, 4]
    assert {"D(x)", "D(G(z))", "g_loss"} <= set(lines[0])
    for name in ("checkpoint.pt", "losses.png", "samples/step_000002.png",
                 "samples/step_000004.png"):
        assert (tmp_path / name).is_file()
    assert trainer.latest_samples_path == str(tmp_path / "samples" / "step_000004.png")
    assert trainer.sample(10).shape == (10, 2)


@pytest.mark.parametrize("loss", ["minimax", "hinge", "wasserstein"])
def test_grid_runs_with_each_loss(loss):
    trainer = _trainer(_mlp_models(), loss=loss, n_critic=2)
    grid = fastgan.data.gaussian_grid(128, generator=torch.Generator().manual_seed(0))
    _fit(trainer, grid, 3)
    _losses_are_finite(trainer)


def test_conditional_digits_run(tmp_path):
    trainer = _trainer(_dcgan_models(num_classes=10), tmp_path, ema_decay=0.5, r1_gamma=1.0,
                       r1_interval=1, label_smoothing=0.1)
    _fit(trainer, _digits(), 2)
    _losses_are_finite(trainer)
    assert (tmp_path / "samples" / "step_000002.png").is_file()
    samples = trainer.sample(4, labels=torch.tensor([1, 2, 3, 4]))
    assert samples.shape == (4, 1, 16, 16)
    with pytest.raises(ValueError, match="labels"):
        trainer.sample(2, labels=torch.tensor([0, 10]))


def test_image_folder_and_dataloader_runs(tmp_path):
    from PIL import Image
    for index in range(8):
        Image.new("L", (20, 20), index * 30).save(tmp_path / f"{index}.png")
    folder = fastgan.data.ImageFolder(tmp_path, image_size=16, channels=1)
    trainer = _trainer(_dcgan_models())
    _fit(trainer, folder, 2, batch_size=4)
    _fit(trainer, DataLoader(folder, batch_size=4, shuffle=True), 4)
    assert trainer.step == 4
    _losses_are_finite(trainer)


@pytest.mark.parametrize("kind", ["ring", "digits"])
def test_resume_gives_the_same_parameters(tmp_path, kind):
    models, data, kwargs = ((_mlp_models, _ring(), {}) if kind == "ring" else
                            (lambda: _dcgan_models(num_classes=10), _digits(), {}))
    options = {"r1_gamma": 1.0, "r1_interval": 2, "ema_decay": 0.8, "seed": 3}
    uninterrupted = _trainer(models(), tmp_path / "a", **options)
    _fit(uninterrupted, data, 6, sample_every=2, checkpoint_every=3)

    first_half = _trainer(models(), tmp_path / "b", **options)
    _fit(first_half, data, 3, sample_every=2)
    resumed = fastgan.Trainer.load(tmp_path / "b" / "checkpoint.pt", device="cpu")
    assert resumed.step == 3
    _fit(resumed, data, 6, sample_every=2)
    _assert_same_state(uninterrupted, resumed)
    assert [e["step"] for e in resumed.history] == list(range(1, 7))
    torch.manual_seed(0)  # sampling uses the trainer's own generator, not the global one
    assert torch.equal(uninterrupted.sample(5), resumed.sample(5))


def test_lr_decay_falls_linearly_to_zero_and_resumes(tmp_path):
    options = {"lr_g": 1e-3, "lr_d": 2e-3, "lr_decay": (2, 6)}
    trainer = _trainer(_mlp_models(), tmp_path, **options)
    learning_rates = []
    for steps in range(1, 7):
        _fit(trainer, _ring(), steps)
        learning_rates.append((trainer.optimizer_g.param_groups[0]["lr"],
                               trainer.optimizer_d.param_groups[0]["lr"]))
    # step s (0-based) trains with lr * (6 - s) / 4 once s >= 2
    expected = [1, 1, 1, 0.75, 0.5, 0.25]
    assert learning_rates == pytest.approx([(1e-3 * f, 2e-3 * f) for f in expected])
    resumed = fastgan.Trainer.load(tmp_path / "checkpoint.pt", device="cpu")
    assert resumed.config.lr_decay == (2, 6)
    _fit(resumed, _ring(), 7)  # past the end the learning rates stay at 0
    assert resumed.optimizer_g.param_groups[0]["lr"] == 0.0


def test_checkpoint_round_trip(tmp_path):
    trainer = _trainer(_dcgan_models(), tmp_path, ema_decay=0.9)
    _fit(trainer, _digits(), 2)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == 2 and state["models"]["generator"]["name"] == "DCGANGenerator"
    loaded = fastgan.Trainer.load(tmp_path / "checkpoint.pt", device="cpu")
    _assert_same_state(trainer, loaded)
    assert loaded.config == trainer.config
    for a, b in zip(trainer.optimizer_d.state_dict()["state"].values(),
                    loaded.optimizer_d.state_dict()["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"])
    other = tmp_path / "copy.pt"
    loaded.save(other)
    assert fastgan.Trainer.load(other, device="cpu").step == 2


def test_the_checkpoint_stores_the_settings_as_plain_values(tmp_path):
    trainer = _trainer(_mlp_models(), tmp_path, r1_gamma=1, betas=[0, 0.99], lr_decay=(2, 6),
                       ema_decay=0.5, n_critic=2, seed=4, keep_checkpoints=2)
    _fit(trainer, _ring(), 1)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["config"] == {
        "loss": "non_saturating", "r1_gamma": 1.0, "r1_interval": 16, "lr_g": 2e-4,
        "lr_d": 2e-4, "betas": [0.0, 0.99], "ema_decay": 0.5, "label_smoothing": 0.0,
        "n_critic": 2, "lr_decay": [2, 6], "amp": False, "out_dir": str(tmp_path), "seed": 4,
        "keep_checkpoints": 2}
    assert isinstance(trainer.config.r1_gamma, float) and trainer.config.betas == (0.0, 0.99)
    with pytest.raises(AttributeError):
        trainer.config.seed = 5  # settings are fixed once the trainer is built


def test_a_checkpoint_without_the_newer_settings_loads_with_their_defaults(tmp_path):
    trainer = _trainer(_mlp_models(), tmp_path, lr_g=1e-3)
    _fit(trainer, _ring(), 1)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    for name in ("n_critic", "lr_decay", "keep_checkpoints"):
        del state["config"][name]
    torch.save(state, tmp_path / "older.pt")
    loaded = fastgan.Trainer.load(tmp_path / "older.pt", device="cpu")
    assert (loaded.config.n_critic, loaded.config.lr_decay, loaded.config.keep_checkpoints,
            loaded.config.lr_g) == (1, None, 1, 1e-3)


def test_trainer_config_fields_are_the_trainers_keywords():
    keywords = [name for name, parameter in inspect.signature(fastgan.Trainer).parameters.items()
                if parameter.kind is inspect.Parameter.KEYWORD_ONLY]
    fields = [field.name for field in dataclasses.fields(TrainerConfig)]
    assert fields == [name for name in keywords if name != "device"]


class _UserGenerator(torch.nn.Module):
    z_dim = 2

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)

    def forward(self, z):
        return self.linear(z)


def test_user_models_must_be_passed_to_load(tmp_path):
    torch.manual_seed(0)
    trainer = _trainer((_UserGenerator(), MLPDiscriminator(hidden=8)), tmp_path)
    _fit(trainer, _ring(), 1)
    with pytest.raises(ValueError, match="generator="):
        fastgan.Trainer.load(tmp_path / "checkpoint.pt", device="cpu")
    loaded = fastgan.Trainer.load(tmp_path / "checkpoint.pt", generator=_UserGenerator(),
                                  device="cpu")
    _assert_same_state(trainer, loaded)


def test_non_finite_loss_stops_with_the_step_named(tmp_path):
    trainer = _trainer(_mlp_models(), tmp_path)
    _fit(trainer, _ring(), 4, checkpoint_every=2)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    poisoned = _ring()
    poisoned[:, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="step 5"):
        _fit(trainer, poisoned, 8, checkpoint_every=1)
    assert trainer.step == 4
    intact = fastgan.Trainer.load(tmp_path / "checkpoint.pt", device="cpu")
    assert intact.step == 4
    for key, value in saved["generator"].items():
        assert torch.equal(intact.generator.state_dict()[key], value)


class _InterruptingDataset(Dataset):
    """Sends this process a SIGINT (a Ctrl-C) when item `at` is first read."""

    def __init__(self, data, at):
        self.data, self.at, self.reads = data, at, 0

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        self.reads += 1
        if self.reads == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return self.data[index]


def test_ctrl_c_finishes_the_step_and_saves(tmp_path):
    trainer = _trainer(_mlp_models(), tmp_path)
    handler = signal.getsignal(signal.SIGINT)
    # 16 reads check the data, then 16 per step: read 40 falls in step 2
    dataset = _InterruptingDataset(_ring(), at=40)
    with pytest.raises(KeyboardInterrupt):
        _fit(trainer, dataset, 10, checkpoint_every=0)
    assert trainer.step == 2
    assert fastgan.Trainer.load(tmp_path / "checkpoint.pt", device="cpu").step == 2
    assert signal.getsignal(signal.SIGINT) is handler


def test_bad_input_fails_before_training(tmp_path):
    out = tmp_path / "out"
    conditional = _trainer(_dcgan_models(num_classes=10), out)
    unlabeled = fastgan.data.digits(16).tensors[0][:32]
    with pytest.raises(ValueError, match="no labels"):
        _fit(conditional, unlabeled, 2)
    with pytest.raises(ValueError, match="shape"):
        _fit(_trainer(_dcgan_models(), out), _ring(), 2)
    with pytest.raises(ValueError, match="batch_size"):
        _fit(_trainer(_mlp_models(), out), _ring(8), 2)
    with pytest.raises(TypeError, match="data"):
        _fit(_trainer(_mlp_models(), out), [[0.0, 1.0]] * 32, 2)
    assert conditional.step == 0 and not out.exists()


@pytest.mark.parametrize("kwargs, match", [
    ({"loss": "lsgan"}, "loss"), ({"amp": True}, "amp"), ({"r1_interval": 0}, "r1_interval"),
    ({"ema_decay": 1.5}, "ema_decay"), ({"device": "tpu9"}, "device"),
    ({"loss": "hinge", "label_smoothing": 0.1}, "label_smoothing"), ({"betas": (0.5,)}, "betas"),
    ({"lr_decay": 5}, "lr_decay"), ({"lr_decay": (4, 4)}, "lr_decay end")])
def test_trainer_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _trainer(_mlp_models(), **kwargs)


def test_models_must_agree_on_conditioning():
    generator, _ = _dcgan_models(num_classes=10)
    _, discriminator = _dcgan_models()
    with pytest.raises(ValueError, match="num_classes"):
        _trainer((generator, discriminator))
