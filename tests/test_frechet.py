"""Frechet distance and Inception Score with the caller's networks, and the FID Inception-v3
that loads pytorch-fid's weights file: tested with random weights of the same layout (no
weights are downloaded), the distance against scipy and closed forms, the score against hand
computations."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn

from fastgan import metrics
from fastgan.metrics import digits as digits_metrics


def _sample_covariance(rng, dimension, samples):
    """np.cov of `samples` correlated Gaussian points: rank min(samples - 1, dimension)."""
    points = rng.standard_normal((samples, dimension)) @ rng.standard_normal((dimension,) * 2)
    return np.atleast_2d(np.cov(points, rowvar=False))


def _distance_with_scipy(mu1, sigma1, mu2, sigma2):
    """The definition, with scipy's matrix square root of the product."""
    root = scipy.linalg.sqrtm(sigma1 @ sigma2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2)
                 - 2 * np.trace(root).real)


def _distance_with_eigenvalues(mu1, sigma1, mu2, sigma2):
    """tr (S1 S2)^(1/2) is the sum of the square roots of S1 S2's eigenvalues, which are those
    of S1^(1/2) S2 S1^(1/2): real and >= 0 (up to rounding) for covariances."""
    eigenvalues = np.linalg.eigvals(sigma1 @ sigma2).real.clip(min=0)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2)
                 - 2 * np.sqrt(eigenvalues).sum())


@pytest.mark.parametrize("dimension, samples", [(1, 50), (6, 40), (32, 200),
                                                (32, 10)],  # the last: rank 9, singular
                         ids=["1d", "6d", "32d", "32d-rank9"])
def test_distance_matches_scipy_on_random_covariances(dimension, samples):
    rng = np.random.default_rng(dimension + samples)
    mu1, mu2 = rng.standard_normal(dimension), rng.standard_normal(dimension)
    sigma1 = _sample_covariance(rng, dimension, samples)
    sigma2 = _sample_covariance(rng, dimension, samples)
    expected = _distance_with_scipy(mu1, sigma1, mu2, sigma2)
    assert expected == pytest.approx(_distance_with_eigenvalues(mu1, sigma1, mu2, sigma2),
                                     rel=1e-6)
    distance = metrics.frechet_distance_from_statistics(mu1, sigma1, mu2, sigma2)
    assert isinstance(distance, float)
    assert distance == pytest.approx(expected, rel=1e-10, abs=1e-10)
    # torch tensors, float32 ones included, are read in float64
    as_tensors = [torch.from_numpy(value) for value in (mu1, sigma1, mu2, sigma2)]
    assert metrics.frechet_distance_from_statistics(*as_tensors) == pytest.approx(expected,
                                                                                  rel=1e-10)
    assert metrics.frechet_distance_from_statistics(mu1, sigma1, mu1, sigma1) == pytest.approx(
        0.0, abs=1e-6 * np.trace(sigma1))


def test_distance_between_gaussians_with_diagonal_covariances():
    """Diagonal covariances commute: the distance is ||mu1 - mu2||^2 + sum (sqrt a - sqrt b)^2,
    here (1 + 0 + 4) + ((1 - 2)^2 + (2 - 1)^2 + (3 - 1)^2) = 11."""
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    variances1, variances2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    distance = metrics.frechet_distance_from_statistics(mu1, np.diag(variances1), mu2,
                                                        np.diag(variances2))
    assert distance == pytest.approx(11.0, rel=1e-12)

    # The same from samples, with the identity as the feature network: 20000 samples estimate
    # each mean and variance to about 1%.
    generator = torch.Generator().manual_seed(0)

    def samples(mu, variances):
        points = torch.randn(20000, 3, generator=generator) * torch.tensor(variances).sqrt()
        return (points + torch.tensor(mu)).view(-1, 3, 1, 1)  # "images" of 3 channels

    distance = metrics.frechet_distance(samples(mu1, variances1), samples(mu2, variances2),
                                        feature_network=lambda images: images)
    assert distance == pytest.approx(11.0, abs=0.3)


@pytest.mark.filterwarnings("ignore:Matrix is singular")  # scipy's, on the first try
def test_a_singular_product_is_regularized_with_eps():
    """A product with no finite square root (nilpotent, so sqrtm's is inf) gets eps on both
    diagonals: (S1 + eps I)(S2 + eps I) = [[a, 1 + eps], [0, a]], a = eps (1 + eps), whose root
    [[sqrt a, (1 + eps) / (2 sqrt a)], [0, sqrt a]] has trace 2 sqrt a."""
    sigma1, sigma2, mu = np.array([[0.0, 1.0], [0.0, 0.0]]), np.eye(2), np.zeros(2)
    eps = 1e-6
    with pytest.warns(RuntimeWarning, match="adding eps"):
        distance = metrics.frechet_distance_from_statistics(mu, sigma1, mu, sigma2, eps=eps)
    assert distance == pytest.approx(0 + 2 - 2 * 2 * math.sqrt(eps * (1 + eps)), rel=1e-9)


def test_a_large_imaginary_root_is_an_error():
    """diag(1, -1) is no covariance: its square root is diag(1, i)."""
    with pytest.raises(ValueError, match="imaginary component of up to 1"):
        metrics.frechet_distance_from_statistics(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2),
                                                 np.eye(2))


class TinyFeatureNetwork(nn.Module):
    """Random weights behind the FID Inception's interface: images (N, 3, H, W) to pooled
    (N, D, 1, 1) features (pytorch-fid's pool3 shape), and `logits`."""

    def __init__(self, features=12, classes=5):
        super().__init__()
        self.conv = nn.Conv2d(3, features, 3, padding=1)
        self.bn = nn.BatchNorm2d(features)
        self.fc = nn.Linear(features, classes)

    def forward(self, images):
        return F.adaptive_avg_pool2d(torch.tanh(self.bn(self.conv(images))), 1)

    def logits(self, images):
        return self.fc(self(images).flatten(1))


@pytest.fixture
def tiny_network():
    torch.manual_seed(0)
    network = TinyFeatureNetwork()
    with torch.no_grad():  # running statistics that differ from the training-mode batch ones
        network.bn.running_mean.uniform_(-0.5, 0.5)
        network.bn.running_var.uniform_(0.5, 2.0)
    return network


def _images(count, seed, shift=0.0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, 8, 8, generator=generator) * 2 - 1 + shift


def test_distance_with_a_feature_network_against_numpy_statistics(tiny_network):
    images, reference = _images(300, 1), _images(200, 2, shift=0.3)
    tiny_network.eval()
    with torch.no_grad():
        features, reference_features = (tiny_network(x).flatten(1).double().numpy()
                                        for x in (images, reference))
    expected = _distance_with_scipy(features.mean(axis=0), np.cov(features, rowvar=False),
                                    reference_features.mean(axis=0),
                                    np.cov(reference_features, rowvar=False))
    assert expected > 1e-3
    tiny_network.train()  # the metric must switch to eval mode itself
    assert metrics.frechet_distance(images, reference, tiny_network) == pytest.approx(
        expected, rel=1e-9)
    assert metrics.frechet_distance(reference, images, tiny_network) == pytest.approx(
        expected, rel=1e-9)
    assert metrics.frechet_distance(images, images, tiny_network) == pytest.approx(0.0,
                                                                                   abs=1e-9)
    assert tiny_network.training  # and restore it
    # cached reference statistics, as tensors or as pytorch-fid's numpy arrays
    mu, sigma = metrics.feature_statistics(reference, tiny_network)
    assert metrics.frechet_distance(images, (mu, sigma), tiny_network) == pytest.approx(
        expected, rel=1e-9)
    assert metrics.frechet_distance(images, [mu.numpy(), sigma.numpy()],
                                    tiny_network) == pytest.approx(expected, rel=1e-9)


def test_statistics_are_float64():
    """Features near 1e4 with a spread of 1e-2: float32 moments of them are off by about 1e-8
    (mean) and 5e-4 (covariance) relative; float64 ones match numpy's to rounding."""
    generator = torch.Generator().manual_seed(0)
    features = (1e4 + 1e-2 * torch.randn(1000, 4, generator=generator)).float()
    mu, sigma = metrics.feature_statistics(features.view(1000, 4, 1, 1), lambda x: x)
    assert mu.dtype == sigma.dtype == torch.float64
    as_float64 = features.double().numpy()
    np.testing.assert_allclose(mu.numpy(), as_float64.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(sigma.numpy(), np.cov(as_float64, rowvar=False), rtol=1e-9,
                               atol=1e-12)
    _, one_feature_sigma = metrics.feature_statistics(features[:, :1, None, None], lambda x: x)
    assert one_feature_sigma.shape == (1, 1)


class RecordingNetwork(nn.Module):
    """Records, for each call, the batch size, its own mode and whether gradients were on."""

    def __init__(self):
        super().__init__()
        self.dropout = nn.Dropout(0.5)
        self.calls = []

    def forward(self, images):
        self.calls.append((len(images), self.training, torch.is_grad_enabled()))
        return self.dropout(images.flatten(1))

    def logits(self, images):
        return self(images)


def test_networks_run_in_eval_mode_in_batches_without_gradients():
    network = RecordingNetwork()
    network.dropout.eval()  # modes set module by module come back as they were
    images = torch.randn(7, 2, 1, 1, requires_grad=True)
    mu, _ = metrics.feature_statistics(images, network, batch_size=3)
    assert [call[0] for call in network.calls] == [3, 3, 1]
    assert not any(training or grad for _, training, grad in network.calls)
    assert network.training and not network.dropout.training
    # dropout is off in eval mode: the mean is the images' own
    torch.testing.assert_close(mu, images.detach().double().flatten(1).mean(dim=0))
    network.calls.clear()
    metrics.inception_score(images, network.logits, splits=1, batch_size=5)  # a bound method
    assert [call[:2] for call in network.calls] == [(5, False), (2, False)]
    assert network.training


class LookupNetwork(nn.Module):
    """Known logits: image i, a single pixel holding i, gets row i of `table`."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.as_tensor(table, dtype=torch.float64)

    def forward(self, images):
        return self.table[images.flatten().long()]


def _indices(count):
    return torch.arange(count, dtype=torch.float32).view(count, 1, 1, 1)


def test_inception_score_of_known_logits():
    # identical (uniform) predictions: p(y|x) = p(y), KL = 0, score exp(0) = 1
    uniform = LookupNetwork(torch.zeros(20, 4))
    assert metrics.inception_score(_indices(20), uniform, splits=5) == pytest.approx((1.0, 0.0))
    # confident and balanced in every part: p(y) uniform, KL = log 4, score 4
    confident = LookupNetwork(50.0 * F.one_hot(torch.arange(40) % 4, 4))
    assert metrics.inception_score(_indices(40), confident) == pytest.approx((4.0, 0.0))
    # p(y|x) = (0.8, 0.2) and (0.2, 0.8): p(y) = (0.5, 0.5), each KL = 0.8 log 1.6 + 0.2 log 0.4
    mixed = LookupNetwork(np.log([[0.8, 0.2], [0.2, 0.8]]))
    kl = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)
    assert metrics.inception_score(_indices(2), mixed, splits=1) == pytest.approx(
        (math.exp(kl), 0.0), rel=1e-12)
    # two parts scoring 4 and 1: mean 2.5, population std 1.5
    table = torch.cat([50.0 * torch.eye(4), torch.zeros(4, 4)])
    assert metrics.inception_score(_indices(8), LookupNetwork(table), splits=2) == pytest.approx(
        (2.5, 1.5))
    # parts of 3, 3 and 2 images: [0 1 2] scores 3, [3 0 1] 3, [2 3] 2
    confident = LookupNetwork(50.0 * F.one_hot(torch.arange(8) % 4, 4))
    scores = np.array([3.0, 3.0, 2.0])
    assert metrics.inception_score(_indices(8), confident, splits=3) == pytest.approx(
        (scores.mean(), scores.std()))


def test_without_a_feature_network_the_digits_classifier_is_used(monkeypatch):
    calls = []
    monkeypatch.setattr(digits_metrics, "frechet_distance",
                        lambda images, reference: calls.append((images, reference)) or 1.25)
    images, reference = torch.zeros(4, 1, 8, 8), torch.ones(4, 1, 8, 8)
    assert metrics.frechet_distance(images, reference) == 1.25
    assert calls == [(images, reference)]


def _returning(output):
    return lambda images: output


IMAGES = torch.zeros(4, 3, 8, 8)
STATISTICS = np.zeros(3), np.eye(3)
# (call, error type, the name the message must contain)
BAD_CALLS = {
    "images type": (lambda: metrics.frechet_distance([0.0], IMAGES, nn.Identity()), TypeError,
                    "images"),
    "images dims": (lambda: metrics.frechet_distance(IMAGES[0], IMAGES, nn.Identity()),
                    ValueError, "images"),
    "one image": (lambda: metrics.frechet_distance(IMAGES[:1], IMAGES, nn.Identity()),
                  ValueError, "images"),
    "one reference": (lambda: metrics.frechet_distance(IMAGES, IMAGES[:1], nn.Identity()),
                      ValueError, "reference"),
    "reference length": (lambda: metrics.frechet_distance(IMAGES, STATISTICS * 2,
                                                          nn.Identity()), ValueError,
                         "reference"),
    "reference sigma": (lambda: metrics.frechet_distance(IMAGES, (np.zeros(3), np.eye(2)),
                                                         nn.Identity()), ValueError,
                        "reference"),
    "reference features": (lambda: metrics.frechet_distance(IMAGES.view(4, -1, 1, 1),
                                                            STATISTICS, nn.Identity()),
                           ValueError, "reference"),
    "feature_network type": (lambda: metrics.frechet_distance(IMAGES, IMAGES, "inception"),
                             TypeError, "feature_network"),
    "feature_network shape": (lambda: metrics.frechet_distance(IMAGES, IMAGES, nn.Identity()),
                              ValueError, "feature_network"),
    "feature_network nan": (lambda: metrics.feature_statistics(
        IMAGES, _returning(torch.full((4, 2), math.nan))), ValueError, "feature_network"),
    "feature_network batch": (lambda: metrics.feature_statistics(
        IMAGES, _returning(torch.zeros(3, 2))), ValueError, "feature_network"),
    "batch_size": (lambda: metrics.feature_statistics(IMAGES, nn.Flatten(), batch_size=0),
                   ValueError, "batch_size"),
    "mu1 type": (lambda: metrics.frechet_distance_from_statistics([0.0], np.eye(1), *STATISTICS),
                 TypeError, "mu1"),
    "mu1 dims": (lambda: metrics.frechet_distance_from_statistics(np.eye(3), np.eye(3),
                                                                  *STATISTICS),
                 ValueError, "mu1"),
    "sigma1 shape": (lambda: metrics.frechet_distance_from_statistics(
        np.zeros(3), np.zeros((3, 2)), *STATISTICS), ValueError, "sigma1"),
    "sigma1 nan": (lambda: metrics.frechet_distance_from_statistics(
        np.zeros(3), np.full((3, 3), math.nan), *STATISTICS), ValueError, "sigma1"),
    "mu2 length": (lambda: metrics.frechet_distance_from_statistics(
        *STATISTICS, np.zeros(2), np.eye(2)), ValueError, "mu2"),
    "sigma2 shape": (lambda: metrics.frechet_distance_from_statistics(
        *STATISTICS, np.zeros(3), np.eye(4)), ValueError, "sigma2"),
    "eps": (lambda: metrics.frechet_distance_from_statistics(*STATISTICS, *STATISTICS, eps=0.0),
            ValueError, "eps"),
    "score classifier_network": (lambda: metrics.inception_score(IMAGES, None), TypeError,
                                 "classifier_network"),
    "score images": (lambda: metrics.inception_score(IMAGES[0], nn.Flatten()), ValueError,
                     "images"),
    "score splits": (lambda: metrics.inception_score(IMAGES, nn.Flatten(), splits=0),
                     ValueError, "splits"),
    "score splits type": (lambda: metrics.inception_score(IMAGES, nn.Flatten(), splits=2.0),
                          TypeError, "splits"),
    "score too many splits": (lambda: metrics.inception_score(IMAGES, nn.Flatten()),
                              ValueError, "splits"),
}


@pytest.mark.parametrize("call, error, name", BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_bad_arguments_are_named(call, error, name):
    with pytest.raises(error, match=rf"\b{name}\b"):
        call()


# The FID Inception-v3, with random weights in pytorch-fid's layout.

@pytest.fixture(scope="module")
def random_inception():
    """Random weights that keep activations of order 1 through the 94 layers (the default
    initialization fades them to ~1e-8), and random running statistics, so that any weight
    left unloaded changes the features."""
    generator = torch.Generator().manual_seed(0)
    model = metrics.FIDInceptionV3().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator)
                                    * math.sqrt(2 / fan_in))
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.uniform_(-0.2, 0.2, generator=generator)
                module.running_mean.uniform_(-0.2, 0.2, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                module.num_batches_tracked.fill_(1000)
        model.fc.weight.normal_(0, 0.1, generator=generator)
        model.fc.bias.normal_(0, 0.1, generator=generator)
    return model


@pytest.fixture(scope="module")
def weights_file(random_inception, tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "pt_inception.pth"
    torch.save(random_inception.state_dict(), path)
    return path


def test_layout_matches_pytorch_fid_weights(random_inception):
    """torchvision documents 27,161,264 parameters for its Inception-v3 (1000 classes, with the
    auxiliary classifier). The FID variant drops that classifier: 1x1 conv 768->128 with batch
    norm (98,304 + 256), 5x5 conv 128->768 with batch norm (2,457,600 + 1,536) and a
    768->1000 linear layer (769,000), 3,326,696 in all; and has 1008 classes, 8 x 2049 =
    16,392 more in fc: 23,850,960."""
    assert sum(p.numel() for p in random_inception.parameters()) == 23_850_960
    state = random_inception.state_dict()
    # 94 convolutions, each with a batch norm (weight, bias, running_mean, running_var,
    # num_batches_tracked), and fc's weight and bias
    assert sum(key.endswith(".conv.weight") for key in state) == 94
    assert len(state) == 94 * 6 + 2
    assert not any(key.startswith("AuxLogits") for key in state)
    assert not any(key.endswith(".conv.bias") for key in state)
    expected_shapes = {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Conv2d_1a_3x3.bn.running_var": (32,),
        "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
        "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
        "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
        "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
        "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
        "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
        "Mixed_7b.branch3x3_2b.conv.weight": (384, 384, 3, 1),
        "Mixed_7c.branch3x3dbl_1.conv.weight": (448, 2048, 1, 1),
        "Mixed_7c.branch_pool.bn.bias": (192,),
        "fc.weight": (1008, 2048),
        "fc.bias": (1008,),
    }
    assert {key: tuple(state[key].shape) for key in expected_shapes} == expected_shapes
    assert all(module.eps == 1e-3 for module in random_inception.modules()
               if isinstance(module, nn.BatchNorm2d))


def _pool_reference(x, kind):
    """3x3 windows, stride 1, padding 1, pooled by hand: the average over the window's pixels
    inside the image (padding excluded), or the maximum."""
    height, width = x.shape[-2:]
    result = torch.empty_like(x)
    for i in range(height):
        for j in range(width):
            window = x[..., max(i - 1, 0):i + 2, max(j - 1, 0):j + 2].flatten(-2)
            result[..., i, j] = window.mean(-1) if kind == "average" else window.amax(-1)
    return result


@pytest.mark.parametrize("block, channels, kind", [("Mixed_5b", 192, "average"),
                                                   ("Mixed_6c", 768, "average"),
                                                   ("Mixed_7b", 1280, "average"),
                                                   ("Mixed_7c", 2048, "max")])
def test_pooling_branches_are_the_fid_variants(random_inception, block, channels, kind):
    block = getattr(random_inception, block)
    x = torch.randn(1, channels, 5, 5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pooled_branch = block(x)[:, -block.branch_pool.conv.out_channels:]
        expected = block.branch_pool(_pool_reference(x, kind))
    torch.testing.assert_close(pooled_branch, expected)


def test_loader_round_trip(random_inception, weights_file):
    loaded = metrics.fid_inception_v3(weights_file)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    loaded_state = loaded.state_dict()
    assert all(torch.equal(value, loaded_state[key])
               for key, value in random_inception.state_dict().items())
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        features = loaded(images)
        assert features.shape == (2, 2048) and features.std() > 0.1
        assert torch.equal(features, random_inception(images))
        # images are resized to 299x299 as pytorch-fid does (bilinear, corners not aligned),
        # and the logits are fc of the features
        resized = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
        logits = loaded.logits(resized)
    assert logits.shape == (2, 1008)
    torch.testing.assert_close(logits, features @ loaded.fc.weight.T + loaded.fc.bias)


def test_loader_reads_files_without_step_counters_and_in_the_legacy_format(random_inception,
                                                                           tmp_path):
    """pytorch-fid's file predates PyTorch 1.6's zip format and may lack BatchNorm's
    num_batches_tracked, which eval mode does not use."""
    state = {key: value for key, value in random_inception.state_dict().items()
             if not key.endswith("num_batches_tracked")}
    path = tmp_path / "legacy.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    loaded_state = metrics.fid_inception_v3(path).state_dict()
    assert all(torch.equal(value, loaded_state[key]) for key, value in state.items())


def test_loader_errors_name_the_weights_path(random_inception, tmp_path):
    state = random_inception.state_dict()

    def saved(name, content):
        path = tmp_path / name
        torch.save(content, path)
        return path

    with pytest.raises(TypeError, match=r"\bweights_path\b"):
        metrics.fid_inception_v3(None)
    with pytest.raises(ValueError, match=r"weights_path .* is not a file.*pt_inception"):
        metrics.fid_inception_v3(tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a weights file" * 10)
    with pytest.raises(ValueError, match=r"weights_path .* could not be read"):
        metrics.fid_inception_v3(tmp_path / "junk.pth")
    with pytest.raises(ValueError, match=r"weights_path .* does not hold a state_dict"):
        metrics.fid_inception_v3(saved("tensor.pth", torch.zeros(3)))
    renamed = {f"module.{key}": value for key, value in state.items()}
    with pytest.raises(ValueError, match=r"weights_path .* 472 missing keys \(Conv2d_1a_3x3"
                                         r".*566 unexpected keys \(module\.Conv2d_1a_3x3"):
        metrics.fid_inception_v3(saved("renamed.pth", renamed))
    with_aux = {**state, "AuxLogits.fc.weight": torch.zeros(1008, 768)}
    del with_aux["fc.bias"]
    with pytest.raises(ValueError, match=r"1 missing keys \(fc\.bias\); "
                                         r"1 unexpected keys \(AuxLogits\.fc\.weight\)"):
        metrics.fid_inception_v3(saved("aux.pth", with_aux))
    imagenet_head = {**state, "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}
    with pytest.raises(ValueError, match=r"weights_path .* 2 tensors of the wrong shape.*"
                                         r"fc\.weight \(1000, 2048\), expected \(1008, 2048\)"):
        metrics.fid_inception_v3(saved("imagenet.pth", imagenet_head))


def test_inception_rejects_images_that_are_not_rgb(random_inception):
    with pytest.raises(ValueError, match=r"\bimages\b must be RGB"):
        random_inception(torch.zeros(2, 1, 8, 8))
    with pytest.raises(TypeError, match=r"\bimages\b"):
        random_inception(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\bimages\b"):
        random_inception(torch.zeros(3, 8, 8))
