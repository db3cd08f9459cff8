"""Datasets: scikit-learn's digits (and a translation task made of them), PacGAN's 2D Gaussian
mixtures and folders of images."""
from fastgan.data.images import DIGITS_CLASSES, ImageFolder, UnpairedImageFolders, digits
from fastgan.data.translation import appearance_change, digits_translation
from fastgan.data.mixtures import (gaussian_grid, gaussian_ring, grid_means, ring_means,
                                   sample_mixture)

__all__ = ["digits", "digits_translation", "appearance_change", "ImageFolder",
           "UnpairedImageFolders", "DIGITS_CLASSES", "gaussian_ring", "gaussian_grid",
           "ring_means", "grid_means", "sample_mixture"]
