"""The pictures a run writes: sample grids large enough to judge (small images enlarged with
nearest neighbour, large ones 1:1) and the raw samples kept beside them."""
import numpy as np
import pytest
import torch
from PIL import Image

from fastgan.train.plots import save_image_grid
from test_train import _dcgan_models, _digits, _fit, _mlp_models, _ring, _trainer


def _levels(shape, seed):
    """Images in [-1, 1] on the 8-bit levels, so that a PNG holds them exactly; (images, the
    uint8 values a PNG must hold)."""
    values = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed))
    return values.double() / 127.5 - 1, values.to(torch.uint8)


def _expected_grid(values, columns, padding):
    """The grid laid out by hand: images left to right, top to bottom, `padding` mid-grey (128)
    pixels around each and in empty cells."""
    count, channels, height, width = values.shape
    rows = -(-count // columns)
    grid = np.full((rows * (height + padding) + padding, columns * (width + padding) + padding,
                    channels), 128, np.uint8)
    for index in range(count):
        top = padding + (index // columns) * (height + padding)
        left = padding + (index % columns) * (width + padding)
        grid[top:top + height, left:left + width] = values[index].permute(1, 2, 0).numpy()
    return grid


def _read(path):
    pixels = np.asarray(Image.open(path))
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


@pytest.mark.parametrize("channels", [1, 3])
def test_a_small_grid_is_enlarged_with_nearest_neighbour(tmp_path, channels):
    images, values = _levels((5, channels, 3, 4), seed=channels)
    # 3 columns x 2 rows of 3x4 images, padding 2: 12 x 20 pixels; 26 * 20 = 520 >= 512
    assert save_image_grid(images, tmp_path / "grid.png") == 26
    pixels = _read(tmp_path / "grid.png")
    assert pixels.shape == (12 * 26, 20 * 26, channels)
    expected = _expected_grid(values, columns=3, padding=2)
    for dy in range(26):
        for dx in range(26):  # every pixel of each 26x26 block is the grid's pixel
            np.testing.assert_array_equal(pixels[dy::26, dx::26], expected)


def test_a_large_grid_stays_one_to_one(tmp_path):
    images, values = _levels((4, 3, 255, 255), seed=0)
    assert save_image_grid(images, tmp_path / "grid.png") == 1
    np.testing.assert_array_equal(_read(tmp_path / "grid.png"),
                                  _expected_grid(values, columns=2, padding=2))


def test_min_side_sets_the_enlargement(tmp_path):
    images, values = _levels((1, 1, 10, 10), seed=1)  # 14 x 14 with the padding
    assert save_image_grid(images, tmp_path / "a.png", min_side=28) == 2
    assert save_image_grid(images, tmp_path / "b.png", min_side=29) == 3
    assert save_image_grid(images, tmp_path / "c.png", min_side=0) == 1
    assert _read(tmp_path / "b.png").shape == (42, 42, 1)


def test_a_digits_run_writes_a_viewable_grid_and_its_raw_samples(tmp_path):
    trainer = _trainer(_dcgan_models(num_classes=10), tmp_path, ema_decay=0.5)
    _fit(trainer, _digits(), 2, sample_every=1)
    pixels = _read(trainer.latest_samples_path)
    # 64 digits of 16x16 in 8 columns with padding 2: 146 pixels, enlarged 4 times
    assert pixels.shape == (146 * 4, 146 * 4, 1)
    raw = torch.load(tmp_path / "samples" / "latest.pt", weights_only=True)
    assert raw.shape == (64, 1, 16, 16) and raw.dtype == torch.float32
    levels = raw.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    np.testing.assert_array_equal(pixels[::4, ::4], _expected_grid(levels, 8, 2))


def test_a_2d_run_keeps_the_points_of_its_scatter_plot(tmp_path):
    trainer = _trainer(_mlp_models(), tmp_path)
    _fit(trainer, _ring(), 1)
    assert torch.load(tmp_path / "samples" / "latest.pt", weights_only=True).shape == (2000, 2)
