"""Joint augmentation of an image, its integer labels and an optional weight map.

Geometric steps move all three together: random flips, 90-degree rotations (180 only when the
image is not square, so shapes are kept) and the U-Net paper's elastic deformation: random
displacement vectors on a coarse 3 x 3 grid drawn from N(0, 10 px), interpolated to every pixel
by a cubic spline, then the image resampled with cubic splines, the weight map linearly, and
the labels by nearest neighbour, so every label value stays one of the input's values.
Outside the image the three are all reflected about the border (scipy's "reflect"); near the
border an instance's reflected copy can appear as a second piece with the same id.

Photometric steps touch the image only, assumed on [0, 1] (what `generate` and the readers
give): x -> clip(x, 0, 1) ** gamma * scale + offset, then Gaussian noise, clipped to [0, 1].
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.ndimage import map_coordinates, zoom

KNOBS: dict[str, float] = {
    "elastic_sigma": 10.0,  # px, std of the coarse displacements (U-Net paper)
    "elastic_grid": 3,      # coarse grid points per side (U-Net paper)
    "scale": 0.2,           # intensity multiplied by U(1 - scale, 1 + scale)
    "offset": 0.05,         # plus U(-offset, offset)
    "gamma": 0.25,          # raised to the power exp(U(-gamma, gamma))
    "noise_std": 0.03,      # Gaussian noise with std U(0, noise_std)
}


def augment(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, *,
            weight: np.ndarray | None = None, flip: bool = True, rot90: bool = True,
            elastic: bool = True, intensity: bool = True, noise: bool = True,
            **knobs: float) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Augment image (H, W) or (C, H, W) float, labels (H, W) int and weight (H, W) float
    together; returns new arrays (image, labels, weight), weight None if none was given."""
    k = _check(image, labels, weight, knobs)
    H, W = labels.shape
    maps = [image, labels] + ([] if weight is None else [weight])   # spatial axes are the last 2
    if flip:
        for axis in (-2, -1):
            if rng.random() < 0.5:
                maps = [np.flip(m, axis=axis) for m in maps]
    if rot90:
        turns = int(rng.integers(4)) if H == W else 2 * int(rng.integers(2))
        maps = [np.rot90(m, turns, axes=(-2, -1)) for m in maps]
    if elastic:
        rows, cols = elastic_coordinates(rng, H, W, k["elastic_sigma"], int(k["elastic_grid"]))
        # cubic splines overshoot at steps: keep the image within its own range
        maps[0] = np.clip(_resample(maps[0], rows, cols, order=3), image.min(), image.max())
        maps[1] = _resample(maps[1], rows, cols, order=0)
        if weight is not None:
            maps[2] = _resample(maps[2], rows, cols, order=1)
    out = np.array(maps[0], dtype=image.dtype)            # copies: never views of the inputs
    if intensity:
        gamma = np.exp(rng.uniform(-k["gamma"], k["gamma"]))
        scale = rng.uniform(1 - k["scale"], 1 + k["scale"])
        shift = rng.uniform(-k["offset"], k["offset"])
        out = (np.clip(out, 0, 1) ** gamma * scale + shift).astype(image.dtype)
    if noise:
        std = rng.uniform(0, k["noise_std"])
        out = out + (std * rng.standard_normal(out.shape)).astype(image.dtype)
    if intensity or noise:
        np.clip(out, 0, 1, out=out)
    new_labels = np.array(maps[1], dtype=labels.dtype)
    new_weight = None if weight is None else np.array(maps[2], dtype=weight.dtype)
    return out, new_labels, new_weight


def elastic_coordinates(rng: np.random.Generator, H: int, W: int, sigma: float, grid: int
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Sampling coordinates (H, W) each: pixel position + a smooth random displacement.

    Displacements are drawn on a grid x grid lattice spanning the image corner to corner and
    interpolated by a cubic spline (scipy's zoom, corners aligned). A tensor-product spline is
    separable, so the 2-D zoom is Ry @ coarse @ Rx.T with 1-D interpolation matrices."""
    coarse = rng.normal(0.0, sigma, (2, grid, grid))                 # (2, g, g) in px
    Ry, Rx = _spline_matrix(H, grid), _spline_matrix(W, grid)        # (H, g), (W, g)
    rows = np.arange(H)[:, None] + Ry @ coarse[0] @ Rx.T
    cols = np.arange(W)[None, :] + Ry @ coarse[1] @ Rx.T
    return rows, cols


@lru_cache(maxsize=64)
def _spline_matrix(n: int, grid: int) -> np.ndarray:
    """(n, grid): column j is the cubic-spline zoom of the j-th unit vector to length n."""
    eye = np.eye(grid)
    return np.stack([zoom(e, n / grid, order=3, mode="mirror", grid_mode=False) for e in eye],
                    axis=1)


def _resample(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, order: int) -> np.ndarray:
    """x (H, W) or (C, H, W) sampled at (rows, cols) with spline `order` (0 = nearest)."""
    if x.ndim == 3:
        return np.stack([_resample(c, rows, cols, order) for c in x])
    x = np.ascontiguousarray(x)
    return map_coordinates(x, [rows, cols], order=order, mode="reflect", output=x.dtype)


def _check(image: np.ndarray, labels: np.ndarray, weight: np.ndarray | None, knobs: dict
           ) -> dict:
    unknown = sorted(set(knobs) - set(KNOBS))
    if unknown:
        raise ValueError(f"augment: unknown knob(s) {', '.join(unknown)}; "
                         f"valid knobs: {', '.join(KNOBS)}")
    if not (isinstance(labels, np.ndarray) and np.issubdtype(labels.dtype, np.integer)
            and labels.ndim == 2):
        raise TypeError("augment: labels must be an integer array (H, W), got "
                        f"{getattr(labels, 'dtype', type(labels).__name__)} "
                        f"{getattr(labels, 'shape', '')}")
    if not (isinstance(image, np.ndarray) and np.issubdtype(image.dtype, np.floating)
            and image.ndim in (2, 3) and image.shape[-2:] == labels.shape):
        raise ValueError(f"augment: image must be float (H, W) or (C, H, W) matching labels "
                         f"{labels.shape}, got {getattr(image, 'dtype', type(image).__name__)} "
                         f"{getattr(image, 'shape', '')}")
    if weight is not None and (not isinstance(weight, np.ndarray) or weight.shape != labels.shape
                               or not np.issubdtype(weight.dtype, np.floating)):
        raise ValueError(f"augment: weight must be a float array of shape {labels.shape}, got "
                         f"{getattr(weight, 'dtype', type(weight).__name__)} "
                         f"{getattr(weight, 'shape', '')}")
    return {**KNOBS, **knobs}
