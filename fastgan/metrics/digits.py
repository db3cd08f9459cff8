"""Sample quality on the digits: a small classifier trained on the real digits gives a
classifier score (the Inception Score with this classifier) and a Frechet distance in its
feature space (FID with this classifier), next to the same numbers for the real data."""
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from fastgan.data.images import DIGITS_CLASSES, digits
from fastgan._checks import check_tensor
from fastgan.train.checkpoint import atomic_save, safe_load

_NATIVE_SIZE = 8  # the digits are 8x8: every input is average-pooled back to it
_TRAINING_SIZES = (8, 32)
_CACHE_NAME = "digits_classifier_v1.pt"
_classifier = None


class DigitsClassifier(nn.Module):
    """An MLP on 8x8 average-pooled images, so one classifier serves every image size."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(_NATIVE_SIZE ** 2, 128), nn.ReLU(),
                                      nn.Linear(128, 64), nn.ReLU())
        self.head = nn.Linear(64, DIGITS_CLASSES)

    def embed(self, images):
        return self.features(F.adaptive_avg_pool2d(images, _NATIVE_SIZE))

    def forward(self, images):
        return self.head(self.embed(images))


def cache_dir():
    return os.environ.get("FASTGAN_CACHE_DIR",
                          os.path.join(os.path.expanduser("~"), ".cache", "fastgan"))


def _train_classifier():
    """Deterministic (fixed seed, full-batch Adam) on the digits at every size the trainer
    produces, pooled to 8x8: upsampling then pooling blurs them slightly."""
    datasets = [digits(size) for size in _TRAINING_SIZES]
    images = torch.cat([F.adaptive_avg_pool2d(d.tensors[0], _NATIVE_SIZE) for d in datasets])
    labels = torch.cat([d.tensors[1] for d in datasets])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        classifier = DigitsClassifier()
        optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-2)
        for _ in range(150):
            optimizer.zero_grad()
            F.cross_entropy(classifier(images), labels).backward()
            optimizer.step()
    return classifier


def digits_classifier():
    """The classifier, trained on first use and cached in memory and in cache_dir()
    ($FASTGAN_CACHE_DIR, default ~/.cache/fastgan)."""
    global _classifier
    if _classifier is None:
        path = os.path.join(cache_dir(), _CACHE_NAME)
        classifier = None
        if os.path.exists(path):
            try:
                classifier = DigitsClassifier()
                classifier.load_state_dict(safe_load(path))
            except (ValueError, RuntimeError) as error:  # a damaged cache: train again
                warnings.warn(f"retraining the digits classifier: {error}", stacklevel=2)
                classifier = None
        if classifier is None:
            classifier = _train_classifier()
            atomic_save(classifier.state_dict(), path)
        _classifier = classifier.eval().requires_grad_(False)
    return _classifier


def _check_digit_images(name, images, minimum=1):
    check_tensor(name, images, dims=(4,))
    if images.shape[1] != 1:
        raise ValueError(f"{name} must be grey (N, 1, H, W) digits, got {tuple(images.shape)}")
    if len(images) < minimum:
        raise ValueError(f"{name} must hold at least {minimum} images, got {len(images)}")
    return images.detach().float().cpu()


def classifier_score(images):
    """exp(E_x KL(p(y|x) || p(y))): from 1 (all alike or unrecognizable) to 10 (confident and
    balanced over the ten digits)."""
    probabilities = digits_classifier()(_check_digit_images("images", images)).softmax(dim=1)
    marginal = probabilities.mean(dim=0, keepdim=True)
    kl = (probabilities * (probabilities.clamp_min(1e-12).log() - marginal.log())).sum(dim=1)
    return kl.mean().exp().item()


def _gaussian(features):
    features = features.double()
    return features.mean(dim=0), torch.cov(features.T)


def _sqrt_psd(matrix):
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(images, reference):
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) between Gaussians fitted to the
    classifier's features of the two image sets."""
    classifier = digits_classifier()
    # A covariance needs two samples.
    mean1, cov1 = _gaussian(classifier.embed(_check_digit_images("images", images, 2)))
    mean2, cov2 = _gaussian(classifier.embed(_check_digit_images("reference", reference, 2)))
    root1 = _sqrt_psd(cov1)
    # tr((S1 S2)^(1/2)) = tr((S1^(1/2) S2 S1^(1/2))^(1/2)), the latter symmetric
    cross = torch.linalg.eigvalsh(root1 @ cov2 @ root1).clamp_min(0).sqrt().sum()
    return ((mean1 - mean2).pow(2).sum() + cov1.trace() + cov2.trace() - 2 * cross).item()


def digits_quality(images):
    """The scores of `images` next to the real digits' own: the real classifier score, and the
    Frechet distance between two halves of the real data (the floor for this sample size)."""
    _check_digit_images("images", images, 2)
    real = digits(images.shape[-1]).tensors[0]
    half = len(real) // 2
    return {"classifier_score": classifier_score(images),
            "real_classifier_score": classifier_score(real),
            "frechet_distance": frechet_distance(images, real),
            "real_frechet_distance": frechet_distance(real[:half], real[half:])}
