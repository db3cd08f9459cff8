"""The bundled translation task (fastgan.data.digits_translation) and its scores: the split, the
known appearance change, and scores that tell the right answer from the wrong ones."""
import pytest
import torch
import torch.nn.functional as F

import fastgan
from fastgan.data import appearance_change, digits_translation
from fastgan.metrics import translation_scores


@pytest.fixture(scope="module")
def task():
    return digits_translation(16)


def test_split_is_disjoint_fixed_and_unpaired(task):
    domain_a, domain_b, test = task
    assert (len(domain_a), len(domain_b), len(test)) == (718, 899, 180)
    for dataset in task:
        images, labels = dataset.tensors
        assert images.shape[1:] == (1, 16, 16) and images.min() >= -1 and images.max() <= 1
        assert labels.shape == (len(images),)
    # Every digit image is in at most one part: B's are transformed, so compare through T.
    a_images = torch.cat([domain_a.tensors[0], test.tensors[0]])
    b_sources = domain_b.tensors[0]
    matches = (appearance_change(a_images)[:, None] == b_sources[None]).flatten(2).all(-1)
    assert not matches.any()
    again = digits_translation(16)
    assert all(torch.equal(x.tensors[0], y.tensors[0]) for x, y in zip(task, again))


def test_appearance_change_inverts_and_thickens():
    x = -torch.ones(1, 1, 5, 5)
    x[0, 0, 2, 2] = 1.0  # one bright pixel
    changed = appearance_change(x)
    assert torch.equal(changed[0, 0, 1:4, 1:4], -torch.ones(3, 3))  # dark, and 3x3 wide
    assert changed[0, 0, 0, 0] == 1.0
    assert torch.equal(changed, -F.max_pool2d(x, 3, 1, 1))


def test_baselines_score_as_documented(task):
    """The identity and invert-only baselines' errors (1.22 and 0.35 at 16x16), the right
    answer's, and a wrong pairing: the scores separate them."""
    domain_a, domain_b, test = task
    x = test.tensors[0]
    oracle = translation_scores(appearance_change(x), test, domain_b)
    identity = translation_scores(x, test, domain_b)
    invert = translation_scores(-x, test, domain_b)
    shuffled = translation_scores(appearance_change(x.flip(0)), test, domain_b)
    assert oracle["pixel_error"] == 0 and oracle["class_preservation"] >= 0.95
    assert identity["pixel_error"] == pytest.approx(1.22, abs=0.01)
    assert invert["pixel_error"] == pytest.approx(0.35, abs=0.01)
    assert shuffled["class_preservation"] < 0.3
    assert oracle["classifier_accuracy"] > 0.9


def test_scores_reject_a_wrong_shape(task):
    _, domain_b, test = task
    with pytest.raises(ValueError, match="translated must have the test images' shape"):
        translation_scores(torch.zeros(3, 1, 16, 16), test, domain_b)


def test_image_size_is_checked():
    with pytest.raises(ValueError, match="image_size"):
        fastgan.data.digits_translation(4)
