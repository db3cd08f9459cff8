"""Image datasets scaled to [-1, 1] (the range of the generator's tanh)."""
import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from fastgan._checks import check_int

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DIGITS_CLASSES = 10


def digits(image_size=32):
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, no download) as a
    TensorDataset of (images (N, 1, image_size, image_size) in [-1, 1], labels (N,) int64)."""
    from sklearn.datasets import load_digits

    check_int("image_size", image_size, minimum=8)
    data = load_digits()
    images = torch.from_numpy(data.images).float().div(16.0).unsqueeze(1)  # pixels are 0..16
    if image_size != 8:
        images = F.interpolate(images, size=image_size, mode="bilinear", align_corners=False)
    return TensorDataset(images.clamp(0, 1).mul(2).sub(1), torch.from_numpy(data.target).long())


class ImageFolder(Dataset):
    """Images under `root`, resized (shorter side, then a centre crop) to image_size x image_size
    with `channels` 1 (grey) or 3 (RGB), in [-1, 1].

    With class subfolders (root/cat/*.png, root/dog/*.png) the items are (image, label) and
    `classes` names the labels; with images directly in root they are plain images and
    `num_classes` is 0. Files that Pillow cannot read are skipped with a warning."""

    def __init__(self, root, image_size, channels=3):
        from PIL import Image

        self.image_size = check_int("image_size", image_size, minimum=1)
        self.channels = check_int("channels", channels, choices=(1, 3))
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise ValueError(f"root {root!r} is not a directory")
        subfolders = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
        self.classes = subfolders
        candidates = []  # (path, label)
        if subfolders:
            for label, name in enumerate(subfolders):
                for folder, _, files in sorted(os.walk(os.path.join(root, name))):
                    candidates += [(os.path.join(folder, f), label) for f in sorted(files)]
        else:
            candidates = [(os.path.join(root, f), -1) for f in sorted(os.listdir(root))]
        self.samples = []
        for path, label in candidates:
            if not path.lower().endswith(IMAGE_EXTENSIONS):
                continue
            try:
                with Image.open(path) as image:
                    image.verify()
            except Exception as error:  # Pillow raises many types for a bad file
                warnings.warn(f"skipping unreadable image {path}: {error}", stacklevel=2)
                continue
            self.samples.append((path, label))
        if not self.samples:
            raise ValueError(f"root {root!r} contains no readable images "
                             f"({', '.join(IMAGE_EXTENSIONS)})")
        self.num_classes = len(self.classes)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        from PIL import Image, ImageOps

        path, label = self.samples[index]
        with Image.open(path) as image:
            image = ImageOps.fit(image.convert("L" if self.channels == 1 else "RGB"),
                                 (self.image_size, self.image_size), Image.Resampling.BICUBIC)
            pixels = _to_tensor(image, self.channels)
        return (pixels, label) if self.num_classes else pixels


def _to_tensor(image, channels):
    """A Pillow image as (channels, H, W) in [-1, 1]."""
    pixels = torch.from_numpy(np.array(image, dtype=np.float32))
    pixels = pixels.unsqueeze(0) if channels == 1 else pixels.permute(2, 0, 1)
    return pixels.div(127.5).sub(1.0)


class _TranslationFolder(ImageFolder):
    """A folder's images (labels ignored) as CycleGAN prepares them: resized to load_size x
    load_size, then a random image_size crop and a random horizontal flip (augment), or resized
    to image_size x image_size (not augment). The random draws use torch's generator, so that a
    seeded, resumed run repeats them."""

    def __init__(self, root, image_size, load_size, channels, augment):
        super().__init__(root, image_size, channels)
        self.load_size, self.augment = load_size, augment

    def __getitem__(self, index):
        from PIL import Image

        path, _ = self.samples[index]
        mode = "L" if self.channels == 1 else "RGB"
        with Image.open(path) as image:
            if not self.augment:
                resized = image.convert(mode).resize((self.image_size, self.image_size),
                                                     Image.Resampling.BICUBIC)
                return _to_tensor(resized, self.channels)
            resized = image.convert(mode).resize((self.load_size, self.load_size),
                                                 Image.Resampling.BICUBIC)
        pixels = _to_tensor(resized, self.channels)
        top, left = (int(torch.randint(self.load_size - self.image_size + 1, ()))
                     for _ in range(2))
        pixels = pixels[:, top:top + self.image_size, left:left + self.image_size]
        if torch.rand(()) < 0.5:
            pixels = pixels.flip(-1)
        return pixels.contiguous()


class UnpairedImageFolders:
    """Two folders of images that need not correspond, CycleGAN's data:

        domain_a, domain_b = UnpairedImageFolders("horses", "zebras")

    Each domain is a Dataset of a folder's images (or, when it has subfolders, theirs: the names
    are ignored) as (channels, image_size, image_size) in [-1, 1]. With augment (training) each image is resized to
    load_size x load_size, then cropped at random to image_size and flipped left-right with
    probability 1/2; without it (translating) resized to image_size."""

    def __init__(self, root_a, root_b, image_size=256, load_size=286, channels=3, augment=True):
        check_int("image_size", image_size, minimum=1)
        check_int("load_size", load_size, minimum=1)
        if image_size > load_size:
            raise ValueError(f"image_size ({image_size}) must not exceed load_size ({load_size}): "
                             f"the crop is taken from the image resized to load_size")
        if not isinstance(augment, bool):
            raise TypeError(f"augment must be a bool, got {type(augment).__name__}")
        self.domain_a, self.domain_b = (
            _TranslationFolder(root, image_size, load_size, channels, augment)
            for root in (root_a, root_b))

    def __iter__(self):
        return iter((self.domain_a, self.domain_b))
