"""Mode coverage and the digits classifier's scores."""
import os

import pytest
import torch

from fastgan import data, metrics
from fastgan.metrics import digits as digits_metrics


def test_mode_coverage_counts_high_quality_samples():
    means = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    samples = torch.tensor([[0.0, 0.0]] * 6 + [[10.0, 0.2]] * 2 + [[10.0, 0.4]] + [[5.0, 5.0]])
    # std 0.1: the point 0.2 away is high quality, 0.4 away (4 std) and the far one are not
    result = metrics.mode_coverage(samples, means, std=0.1)
    assert result["counts"] == [6, 2]
    assert result["high_quality"] == pytest.approx(0.8)
    assert result["modes"] == 2  # fair share 5: 2 >= 20% of it
    # 4 of 5 at the first mode, 1 at the second: fair share 2.5, so min_share 0.5 needs 1.25
    lopsided = torch.tensor([[0.0, 0.0]] * 4 + [[10.0, 0.0]])
    result = metrics.mode_coverage(lopsided, means, std=0.1, min_share=0.5)
    assert result["counts"] == [4, 1] and result["modes"] == 1


def test_mode_coverage_of_real_ring_data():
    """Within 3 std of its mode holds 1 - exp(-4.5) = 98.9% of a 2D Gaussian."""
    samples = data.gaussian_ring(20000, generator=torch.Generator().manual_seed(0))
    result = metrics.mode_coverage(samples, data.ring_means(), std=0.01)
    assert result["modes"] == 8
    assert abs(result["high_quality"] - 0.9889) < 0.003


def test_mode_coverage_rejects_bad_input():
    with pytest.raises(ValueError, match="samples"):
        metrics.mode_coverage(torch.zeros(4, 3), torch.zeros(2, 2), std=1.0)
    with pytest.raises(ValueError, match="std"):
        metrics.mode_coverage(torch.zeros(4, 2), torch.zeros(2, 2), std=0.0)


@pytest.fixture(scope="module")
def classifier_cache(tmp_path_factory):
    """One trained classifier for the module, in a fresh cache directory."""
    cache = tmp_path_factory.mktemp("cache")
    previous = os.environ.get("FASTGAN_CACHE_DIR")
    os.environ["FASTGAN_CACHE_DIR"] = str(cache)
    digits_metrics._classifier = None
    yield cache
    digits_metrics._classifier = None
    if previous is None:
        del os.environ["FASTGAN_CACHE_DIR"]
    else:
        os.environ["FASTGAN_CACHE_DIR"] = previous


def test_classifier_recognizes_real_digits_at_every_size(classifier_cache):
    for size in (8, 32):
        images, labels = data.digits(size).tensors
        accuracy = (metrics.digits_classifier()(images).argmax(dim=1) == labels).float().mean()
        assert accuracy > 0.97


def test_classifier_is_cached_on_disk(classifier_cache):
    first = metrics.digits_classifier()
    path = classifier_cache / digits_metrics._CACHE_NAME
    assert path.exists()
    digits_metrics._classifier = None
    reloaded = metrics.digits_classifier()
    assert reloaded is not first
    images = data.digits(16).tensors[0][:50]
    assert torch.equal(first(images), reloaded(images))


def test_a_damaged_classifier_cache_is_retrained(classifier_cache):
    first = metrics.digits_classifier()
    path = classifier_cache / digits_metrics._CACHE_NAME
    path.write_bytes(path.read_bytes()[:100])  # truncated
    digits_metrics._classifier = None
    with pytest.warns(UserWarning, match="retraining the digits classifier"):
        retrained = metrics.digits_classifier()
    images = data.digits(16).tensors[0][:50]
    torch.testing.assert_close(first(images), retrained(images))
    digits_metrics._classifier = None
    assert torch.equal(metrics.digits_classifier()(images), retrained(images))  # saved again


def test_classifier_score_and_frechet_distance(classifier_cache):
    real = data.digits(32).tensors[0]
    # identical images: p(y|x) = p(y), so KL = 0 and the score is exactly 1
    assert metrics.classifier_score(real[:1].repeat(100, 1, 1, 1)) == pytest.approx(1.0)
    assert metrics.classifier_score(real) > 8
    assert metrics.frechet_distance(real, real) == pytest.approx(0.0, abs=1e-4)
    noise = torch.rand(500, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    report = metrics.digits_quality(noise)
    assert report["classifier_score"] < report["real_classifier_score"]
    assert report["frechet_distance"] > 10 * report["real_frechet_distance"]
    with pytest.raises(ValueError, match="images"):
        metrics.classifier_score(torch.zeros(4, 3, 8, 8))
