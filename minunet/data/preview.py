"""A PNG grid of examples per preset, label contours drawn over the images (matplotlib Agg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from skimage.segmentation import find_boundaries

from .generate import generate
from .presets import PRESETS

CONTOUR_RGB = (1.0, 0.25, 0.1)      # orange-red contours read well on gray images
TILE_INCHES = 2.2                   # each example's tile, inches
DPI = 100


def preview_grid(out_path: str | Path, presets: list[str] | None = None, n_per_preset: int = 4,
                 size: tuple[int, int] = (256, 256), seed: int = 0) -> Path:
    """Write a PNG: one row per preset, `n_per_preset` examples with label contours in color."""
    presets = list(PRESETS) if presets is None else list(presets)
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # on use: a second to import
    from matplotlib.figure import Figure

    fig = Figure(figsize=(TILE_INCHES * n_per_preset, TILE_INCHES * len(presets) + 0.3),
                 dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(presets), n_per_preset, squeeze=False)
    for row, preset in enumerate(presets):
        images, labels, _ = generate(n_per_preset, preset, size=size, seed=seed)
        for col in range(n_per_preset):
            ax = axes[row, col]
            ax.imshow(overlay_contours(images[col], labels[col]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(preset, fontsize=8)
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path)
    return out_path


def preview_images(out_path: str | Path, images: np.ndarray, labels: np.ndarray,
                   n: int = 8, columns: int = 4, title: str = "") -> Path:
    """Write a PNG of the first `n` images (N, H, W) with their label contours."""
    n = min(n, len(images))
    if n == 0:
        raise ValueError("preview_images: no images to show")
    rows = -(-n // columns)
    cols = min(columns, n)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(TILE_INCHES * cols, TILE_INCHES * rows + 0.3), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.set_axis_off()
        if i < n:
            ax.imshow(overlay_contours(images[i], labels[i]), interpolation="nearest")
            ax.set_title(f"{i}: {int(labels[i].max())} cells", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path)
    return out_path


def overlay_contours(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGB (H, W, 3) float image: gray `image` (scaled to its range) with instance contours."""
    lo, hi = float(image.min()), float(image.max())
    gray = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.float32)
    rgb[find_boundaries(labels, mode="inner")] = CONTOUR_RGB
    return rgb
