"""Training pictures: sample grids, 2D scatter plots with the true modes, loss curves."""
import math
import os

import numpy as np
import torch

# A grid shorter than this (pixels, its longer side) is enlarged: a 64-image grid of 16x16
# digits is 146 pixels, a thumbnail too small to judge on a screen.
VIEWABLE_SIDE = 512
# The padding between tiles is mid-grey, so that tiles stand apart on dark and light images alike.
PADDING_VALUE = 0.0


def save_image_grid(images, path, padding=2, min_side=VIEWABLE_SIDE):
    """(N, C, H, W) images in [-1, 1] tiled into a square-ish grid, saved as PNG. A grid whose
    longer side is under `min_side` pixels is enlarged by the smallest integer factor that reaches
    it, every pixel becoming a square block (nearest neighbour: no blur, no new values); larger
    grids are saved 1:1. Returns that factor."""
    from PIL import Image

    count, channels, height, width = images.shape
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    grid = torch.full((channels, rows * (height + padding) + padding,
                       columns * (width + padding) + padding), PADDING_VALUE)
    for index, image in enumerate(images.float().cpu()):
        top = padding + (index // columns) * (height + padding)
        left = padding + (index % columns) * (width + padding)
        grid[:, top:top + height, left:left + width] = image
    pixels = grid.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    scale = max(1, math.ceil(min_side / max(pixels.shape[:2])))
    pixels = pixels.repeat(scale, axis=0).repeat(scale, axis=1)
    Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels).save(path)
    return scale


def save_scatter(points, path, modes=None):
    """2D samples as a scatter plot, with the true mode centres marked when given."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 5))
    axes = figure.add_subplot()
    points = points.float().cpu().numpy()
    axes.scatter(points[:, 0], points[:, 1], s=2, alpha=0.4, label="samples")
    if modes is not None:
        modes = modes.float().cpu().numpy()
        axes.scatter(modes[:, 0], modes[:, 1], marker="x", color="red", s=40, label="modes")
        axes.legend(loc="upper right")
    axes.set_aspect("equal")
    figure.savefig(path, dpi=100)


DCGAN_LOSSES = (("d_loss", "D loss"), ("g_loss", "G loss"))


def save_loss_plot(history, path, losses=DCGAN_LOSSES):
    """The logged losses, `losses` ((metric key, label) pairs), against the step."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    steps = np.array([entry["step"] for entry in history])
    for key, label in losses:
        axes.plot(steps, [entry[key] for entry in history], label=label)
    axes.set_xlabel("step")
    axes.legend()
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=100)
