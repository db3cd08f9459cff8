"""fastgan.train.ImagePool: filling, the half-and-half exchange once full, size 0, and an exact
resume from its state_dict."""
import pytest
import torch

from fastgan.train import ImagePool


def _batch(start, count=2):
    """Images whose every pixel is their index: easy to tell apart."""
    return torch.arange(start, start + count, dtype=torch.float32).view(-1, 1, 1, 1).expand(
        -1, 1, 2, 2).contiguous()


def _ids(images):
    return images[:, 0, 0, 0].tolist()


def test_fills_with_the_new_images_then_exchanges_about_half():
    pool = ImagePool(size=4, seed=0)
    assert _ids(pool.query(_batch(0))) == [0, 1] and _ids(pool.query(_batch(2))) == [2, 3]
    assert len(pool) == 4
    old = 0
    for step in range(200):
        returned = _ids(pool.query(_batch(100 + 2 * step)))
        old += sum(1 for i in returned if i < 100 + 2 * step)
        assert len(pool) == 4
    assert 150 < old < 250  # about half of 400 draws came from the pool
    stored = {image[0, 0, 0, 0].item() for image in pool.images}
    assert len(stored) == 4  # each stored image once


def test_returned_images_are_detached_copies():
    pool = ImagePool(size=2)
    images = _batch(0).requires_grad_()
    returned = pool.query(images * 1)
    assert not returned.requires_grad
    pool.images[0].add_(10)
    assert _ids(returned) == [0, 1]


def test_size_zero_returns_the_images_as_they_are():
    images = _batch(0)
    assert ImagePool(size=0).query(images) is images


def test_resume_draws_what_an_uninterrupted_pool_draws():
    uninterrupted, first = ImagePool(size=3, seed=5), ImagePool(size=3, seed=5)
    for step in range(5):
        uninterrupted.query(_batch(10 * step, 3))
        first.query(_batch(10 * step, 3))
    resumed = ImagePool(size=3, seed=99)
    resumed.load_state_dict(first.state_dict())
    for step in range(5, 15):
        assert torch.equal(uninterrupted.query(_batch(10 * step, 3)),
                           resumed.query(_batch(10 * step, 3)))


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="size must be >= 0"):
        ImagePool(size=-1)
    with pytest.raises(ValueError, match="holds up to 3 images"):
        ImagePool(size=2).load_state_dict(ImagePool(size=3).state_dict())
