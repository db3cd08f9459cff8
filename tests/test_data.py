"""The datasets: digits, PacGAN's mixtures, image folders."""
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from fastgan import data


def test_digits():
    dataset = data.digits(image_size=16)
    images, labels = dataset.tensors
    assert images.shape == (1797, 1, 16, 16)
    assert images.min() == -1 and images.max() == 1
    assert sorted(labels.unique().tolist()) == list(range(10))
    native = data.digits(image_size=8).tensors[0]
    # sklearn's pixel values 0..16 map linearly to [-1, 1]
    from sklearn.datasets import load_digits
    np.testing.assert_allclose(native[:, 0].numpy(), load_digits().images / 8 - 1, atol=1e-6)
    with pytest.raises(ValueError, match="image_size"):
        data.digits(image_size=4)


def test_ring_means_and_samples():
    means = data.ring_means()
    assert means.shape == (8, 2)
    torch.testing.assert_close(means.norm(dim=1), torch.ones(8))
    angles = torch.atan2(means[:, 1], means[:, 0]).remainder(2 * math.pi).sort().values
    torch.testing.assert_close(angles, torch.arange(8) * (math.pi / 4))
    samples = data.gaussian_ring(20000, generator=torch.Generator().manual_seed(0))
    offsets = samples - means[torch.cdist(samples, means).argmin(dim=1)]
    assert abs(offsets.std().item() - 0.01) < 5e-4
    assert abs(offsets.mean().item()) < 5e-4


def test_grid_means_and_samples():
    means = data.grid_means()
    assert {tuple(m) for m in means.tolist()} == {(x, y) for x in (-4.0, -2.0, 0.0, 2.0, 4.0)
                                                   for y in (-4.0, -2.0, 0.0, 2.0, 4.0)}
    samples = data.gaussian_grid(25000, generator=torch.Generator().manual_seed(0))
    nearest = torch.cdist(samples, means).argmin(dim=1)
    assert abs((samples - means[nearest]).std().item() - 0.05) < 2e-3
    counts = torch.bincount(nearest, minlength=25)
    assert counts.min() > 800 and counts.max() < 1200  # 1000 each, equal weights


def test_mixtures_are_seeded():
    first = data.gaussian_ring(10, generator=torch.Generator().manual_seed(3))
    second = data.gaussian_ring(10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, second)
    with pytest.raises(ValueError, match="std"):
        data.gaussian_grid(10, std=0)


def _write_image(path, color, size=(10, 6)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_image_folder_with_classes(tmp_path):
    _write_image(str(tmp_path / "cats" / "a.png"), (255, 0, 0))
    _write_image(str(tmp_path / "cats" / "b.jpg"), (255, 0, 0))
    _write_image(str(tmp_path / "dogs" / "c.png"), (0, 0, 255))
    (tmp_path / "dogs" / "broken.png").write_bytes(b"not an image")
    (tmp_path / "dogs" / "notes.txt").write_text("ignored")
    with pytest.warns(UserWarning, match="broken.png"):
        dataset = data.ImageFolder(tmp_path, image_size=4)
    assert dataset.classes == ["cats", "dogs"] and dataset.num_classes == 2
    assert len(dataset) == 3
    image, label = dataset[2]
    assert label == 1
    assert image.shape == (3, 4, 4)
    torch.testing.assert_close(image[:, 0, 0], torch.tensor([-1.0, -1.0, 1.0]))


def test_image_folder_without_classes_is_unlabeled(tmp_path):
    _write_image(str(tmp_path / "a.png"), (255, 255, 255))
    dataset = data.ImageFolder(tmp_path, image_size=8, channels=1)
    assert dataset.num_classes == 0
    image = dataset[0]
    assert isinstance(image, torch.Tensor) and image.shape == (1, 8, 8)
    torch.testing.assert_close(image, torch.ones(1, 8, 8))


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="root"):
        data.ImageFolder(tmp_path / "missing", image_size=8)
    with pytest.raises(ValueError, match="no readable images"):
        data.ImageFolder(tmp_path, image_size=8)
    with pytest.raises(ValueError, match="channels"):
        data.ImageFolder(tmp_path, image_size=8, channels=2)


def _gradient_image(path, size=(12, 10)):
    """Red rising left to right, green top to bottom: crops and flips show in the values."""
    width, height = size
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    pixels[..., 1] = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_unpaired_folders_crop_and_flip_at_random(tmp_path):
    for name in ("a1", "a2"):
        _gradient_image(str(tmp_path / "A" / f"{name}.png"))
    _write_image(str(tmp_path / "B" / "b.png"), (0, 0, 255))
    domain_a, domain_b = data.UnpairedImageFolders(tmp_path / "A", tmp_path / "B", image_size=6,
                                                   load_size=8)
    assert (len(domain_a), len(domain_b)) == (2, 1)
    torch.manual_seed(0)
    images = [domain_a[0] for _ in range(40)]
    assert all(image.shape == (3, 6, 6) for image in images)
    assert all(-1 <= image.min() and image.max() <= 1 for image in images)
    # Different crops (the green channel's top row moves) and both directions of red.
    assert len({round(image[1, 0, 0].item(), 4) for image in images}) > 1
    rising = [bool(image[0, 0, -1] > image[0, 0, 0]) for image in images]
    assert any(rising) and not all(rising)
    torch.manual_seed(0)
    assert all(torch.equal(image, domain_a[0]) for image in images[:5])  # seeded: repeatable
    torch.testing.assert_close(domain_b[0], torch.tensor([-1.0, -1.0, 1.0])[:, None, None]
                               .expand(3, 6, 6))


def test_unpaired_folders_without_augmentation_resize(tmp_path):
    _gradient_image(str(tmp_path / "A" / "a.png"))
    _gradient_image(str(tmp_path / "B" / "b.png"))
    domain_a, _ = data.UnpairedImageFolders(tmp_path / "A", tmp_path / "B", image_size=6,
                                            load_size=8, channels=1, augment=False)
    first, second = domain_a[0], domain_a[0]
    assert first.shape == (1, 6, 6) and torch.equal(first, second)


def test_unpaired_folders_errors_name_the_problem(tmp_path):
    _write_image(str(tmp_path / "A" / "a.png"), (0, 0, 0))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="must not exceed load_size"):
        data.UnpairedImageFolders(tmp_path / "A", tmp_path / "A", image_size=300)
    with pytest.raises(ValueError, match="empty.*no readable images"):
        data.UnpairedImageFolders(tmp_path / "A", tmp_path / "empty")
    with pytest.raises(ValueError, match="missing.*is not a directory"):
        data.UnpairedImageFolders(tmp_path / "missing", tmp_path / "A")
    with pytest.raises(TypeError, match="augment must be a bool"):
        data.UnpairedImageFolders(tmp_path / "A", tmp_path / "A", augment="yes")
