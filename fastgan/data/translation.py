"""The bundled image-to-image translation task (no download): scikit-learn's digits split into
two disjoint halves, nothing paired. Domain A is the first half as it is; domain B is the second
half under a known, local change of appearance, T(x) = -max_pool2d(x, 3, stride=1, padding=1)
on images in [-1, 1] (inverted, strokes thickened). A held-out part of A is the test set, on
which a translation A -> B can be scored against T (fastgan.metrics.translation_scores)."""
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from fastgan._checks import check_int
from fastgan.data.images import digits

# The split is fixed, so that every run and every seed is scored on the same images.
SPLIT_SEED = 0
# The share of domain A's half held out as the test set.
TEST_SHARE = 0.2


def appearance_change(images):
    """T: inverted, strokes thickened by a 3x3 maximum (images in [-1, 1], (N, C, H, W))."""
    return -F.max_pool2d(images, 3, stride=1, padding=1)


def digits_translation(image_size=16):
    """(domain_a, domain_b, test): TensorDatasets of (images (N, 1, image_size, image_size) in
    [-1, 1], labels (N,)). domain_a and test are digits as they are, domain_b other digits under
    appearance_change; the labels are for scoring only (translation trains without them)."""
    check_int("image_size", image_size, minimum=8)
    images, labels = digits(image_size).tensors
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SPLIT_SEED))
    half = len(order) // 2
    a_indices, b_indices = order[:half], order[half:]
    test_count = int(round(TEST_SHARE * len(a_indices)))
    test, a_train = a_indices[:test_count], a_indices[test_count:]
    return (TensorDataset(images[a_train], labels[a_train]),
            TensorDataset(appearance_change(images[b_indices]), labels[b_indices]),
            TensorDataset(images[test], labels[test]))
