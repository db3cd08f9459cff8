"""Every public function checks its arguments up front and names the bad one in its error."""
import pytest
import torch

import fastgan
from fastgan.models import (DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, MLPGenerator,
                            init_dcgan_weights)

X4 = torch.randn(2, 3, 4, 4)
WEIGHT = torch.randn(3, 2, 3, 3)
STATS = torch.zeros(3), torch.ones(3)


def _mlp_trainer(**kwargs):
    torch.manual_seed(0)
    return fastgan.Trainer(MLPGenerator(hidden=8, layers=1), MLPDiscriminator(hidden=8, layers=1),
                           device="cpu", **kwargs)


def _fit(**kwargs):
    arguments = {"data": fastgan.data.gaussian_ring(64), "steps": 1, "batch_size": 8,
                 "progress": False, **kwargs}
    return _mlp_trainer().fit(**arguments)


# (call, error type, the name the message must contain)
BAD_CALLS = {
    # ops
    "bn input": (lambda: fastgan.ops.batch_norm_leaky_relu([1.0], *STATS), TypeError, "input"),
    "bn running_mean": (lambda: fastgan.ops.batch_norm_leaky_relu(X4, torch.zeros(4), STATS[1]),
                        ValueError, "running_mean"),
    "bn weight": (lambda: fastgan.ops.batch_norm_leaky_relu(X4, *STATS, weight=torch.ones(2)),
                  ValueError, "weight"),
    "bn training": (lambda: fastgan.ops.batch_norm_leaky_relu(X4, *STATS, training="yes"),
                    TypeError, "training"),
    "bn momentum": (lambda: fastgan.ops.batch_norm_leaky_relu(X4, *STATS, training=True,
                                                                        momentum=2.0),
                    ValueError, "momentum"),
    "bn eps": (lambda: fastgan.ops.batch_norm_leaky_relu(X4, *STATS, eps=0.0), ValueError, "eps"),
    "bn negative_slope": (lambda: fastgan.ops.batch_norm_leaky_relu(X4, *STATS,
                                                                    negative_slope="0.2"),
                          TypeError, "negative_slope"),
    "conv weight": (lambda: fastgan.ops.conv_transpose2d(X4, WEIGHT[:2]), ValueError, "weight"),
    "conv stride": (lambda: fastgan.ops.conv_transpose2d(X4, WEIGHT, stride=0), ValueError,
                    "stride"),
    "conv groups": (lambda: fastgan.ops.conv_transpose2d(X4, WEIGHT, groups=2), ValueError,
                    "groups"),
    "conv activation": (lambda: fastgan.ops.conv_transpose2d(X4, WEIGHT, activation="gelu"),
                        ValueError, "activation"),
    "conv bias": (lambda: fastgan.ops.conv_transpose2d(X4, WEIGHT, torch.zeros(5)), ValueError,
                  "bias"),
    # losses
    "d_loss kind": (lambda: fastgan.losses.d_loss(torch.zeros(2), torch.zeros(2), "lsgan"),
                    ValueError, "kind"),
    "g_loss fake_logits": (lambda: fastgan.losses.g_loss([0.0]), TypeError, "fake_logits"),
    # data
    "digits image_size": (lambda: fastgan.data.digits(4), ValueError, "image_size"),
    "ring n": (lambda: fastgan.data.gaussian_ring(0), ValueError, "n"),
    "ring modes": (lambda: fastgan.data.gaussian_ring(8, modes=0), ValueError, "modes"),
    "ring radius": (lambda: fastgan.data.gaussian_ring(8, radius=-1.0), ValueError, "radius"),
    "ring generator": (lambda: fastgan.data.gaussian_ring(8, generator=0), TypeError,
                       "generator"),
    "grid side": (lambda: fastgan.data.gaussian_grid(8, side=1.5), TypeError, "side"),
    "mixture means": (lambda: fastgan.data.sample_mixture(8, [[0.0, 0.0]], 0.1), TypeError,
                      "means"),
    "mixture empty means": (lambda: fastgan.data.sample_mixture(8, torch.zeros(0, 2), 0.1),
                            ValueError, "means"),
    "image folder root": (lambda: fastgan.data.ImageFolder("/nonexistent/fastgan", 16),
                          ValueError, "root"),
    # metrics
    "coverage samples": (lambda: fastgan.metrics.mode_coverage(torch.zeros(3), torch.zeros(2, 2),
                                                               0.1), ValueError, "samples"),
    "coverage min_share": (lambda: fastgan.metrics.mode_coverage(
        torch.zeros(3, 2), torch.zeros(2, 2), 0.1, min_share=2.0), ValueError, "min_share"),
    "classifier_score images": (lambda: fastgan.metrics.classifier_score(torch.zeros(4, 3, 8, 8)),
                                ValueError, "images"),
    "frechet reference": (lambda: fastgan.metrics.frechet_distance(
        torch.zeros(4, 1, 8, 8), torch.zeros(1, 1, 8, 8)), ValueError, "reference"),
    "digits_quality images": (lambda: fastgan.metrics.digits_quality([0.0]), TypeError,
                              "images"),
    # models
    "mlp hidden": (lambda: MLPGenerator(hidden=0), ValueError, "hidden"),
    "mlp batch_norm": (lambda: MLPDiscriminator(batch_norm="no"), TypeError, "batch_norm"),
    "mlp z": (lambda: MLPGenerator()([[0.0, 0.0]]), TypeError, "z"),
    "dcgan image_size": (lambda: DCGANGenerator(image_size=48), ValueError, "image_size"),
    "dcgan z": (lambda: DCGANGenerator(image_size=16, base_channels=2)(None), TypeError, "z"),
    "dcgan images": (lambda: DCGANDiscriminator(image_size=16, base_channels=2)("images"),
                     TypeError, "images"),
    "init module": (lambda: init_dcgan_weights("model"), TypeError, "module"),
    # nn modules
    "module negative_slope": (lambda: fastgan.nn.BatchNormLeakyReLU2d(3, negative_slope=None),
                              TypeError, "negative_slope"),
    "module activation": (lambda: fastgan.nn.ConvTranspose2d(3, 2, 3, activation="elu"),
                          ValueError, "activation"),
    # trainer
    "trainer generator": (lambda: fastgan.Trainer(None, MLPDiscriminator()), TypeError,
                          "generator"),
    "trainer lr_g": (lambda: _mlp_trainer(lr_g=0.0), ValueError, "lr_g"),
    "trainer seed": (lambda: _mlp_trainer(seed=1.5), TypeError, "seed"),
    "trainer out_dir": (lambda: _mlp_trainer(out_dir=3), TypeError, "out_dir"),
    "trainer keep_checkpoints": (lambda: _mlp_trainer(keep_checkpoints=0), ValueError,
                                 "keep_checkpoints"),
    "fit steps": (lambda: _fit(steps=-1), ValueError, "steps"),
    "fit batch_size": (lambda: _fit(batch_size=1), ValueError, "batch_size"),
    "fit data": (lambda: _fit(data="ring"), TypeError, "data"),
    "fit evaluate": (lambda: _fit(evaluate=3), TypeError, "evaluate"),
    "fit modes": (lambda: _fit(modes=[[0.0, 1.0]]), TypeError, "modes"),
    "fit log_every": (lambda: _fit(log_every=-1), ValueError, "log_every"),
    "sample n": (lambda: _mlp_trainer().sample(0), ValueError, "n"),
    "save path": (lambda: _mlp_trainer().save(None), TypeError, "path"),
    "load path": (lambda: fastgan.Trainer.load(3), TypeError, "path"),
    "load missing file": (lambda: fastgan.Trainer.load("/nonexistent/fastgan.pt"), ValueError,
                          "path"),
}


@pytest.mark.parametrize("call, error, name", BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_bad_arguments_are_named(call, error, name):
    with pytest.raises(error, match=rf"\b{name}\b"):
        call()
