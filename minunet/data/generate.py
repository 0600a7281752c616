"""`generate`: n images and exact instance labels from a preset, plus every parameter used.

Image i is drawn with its own generator, seeded by (seed, i), so it is the same whether you ask
for 5 images or 500, and the returned parameters are enough to regenerate the set exactly
(`regenerate(params)`).

`statistics(images, labels)` measures what sets nuclei apart from plain blobs (interior
texture and its scale, rim brightness, size), on generated or real labelled images;
`python bench/generator_stats.py` prints them per preset, to compare with real images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from .presets import PRESETS, preset_params
from .reference import reference_image
from .synth import synth_image

GENERATOR_NAME = "minunet.data.generate"


def generate(n: int, preset: str = "standard", size: tuple[int, int] = (256, 256),
             seed: int = 0, **overrides: object
             ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Draw n images (n, H, W) float32 in [0, 1] and labels (n, H, W) int32 (0 = background,
    1..k = one id per cell), plus the parameters used (preset, size, seed, n, every knob).

    overrides: any knob of the preset (see `knobs(preset)`), e.g. generate(8, noise=...)."""
    H, W = _check_size(size)
    if not isinstance(n, int | np.integer) or n < 0:
        raise ValueError(f"generate: n must be a non-negative integer, got {n!r}")
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"generate: seed must be a non-negative integer, got {seed!r}")
    params = preset_params(preset)
    unknown = sorted(set(overrides) - set(params))
    if unknown:
        raise ValueError(f"generate: unknown knob(s) {', '.join(unknown)} for preset {preset!r}; "
                         f"valid knobs: {', '.join(sorted(params))}")
    for key, value in overrides.items():
        params[key] = _like(key, params[key], value)
    draw = reference_image if preset.startswith("reference") else synth_image
    images = np.empty((n, H, W), np.float32)
    labels = np.empty((n, H, W), np.int32)
    for i in range(n):
        rng = np.random.default_rng([int(seed), i])
        images[i], labels[i] = draw(rng, params, (H, W))
    from .. import __version__
    info = {"generator": GENERATOR_NAME, "preset": preset, "size": [H, W], "seed": int(seed),
            "n": int(n), "params": params,
            "overrides": {k: params[k] for k in overrides}, "minunet_version": __version__}
    return images, labels, info


def regenerate(info: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    """Draw again the data set described by `generate`'s parameters (or a manifest)."""
    missing = [k for k in ("preset", "size", "seed", "n", "params") if k not in info]
    if missing:
        raise ValueError(f"regenerate: the manifest lacks {', '.join(missing)}")
    return generate(int(info["n"]), info["preset"], tuple(info["size"]), int(info["seed"]),
                    **info["params"])


def generate_dataset(out_dir: str | Path, n: int, preset: str = "standard",
                     size: tuple[int, int] = (256, 256), seed: int = 0, preview: bool = True,
                     **overrides: object) -> Path:
    """Generate and write a data set folder (images/, labels/, manifest.json and, if asked,
    preview.png with label contours): what `minunet generate` does. Returns the folder."""
    from .dataset import save_dataset
    from .preview import preview_images

    images, labels, info = generate(n, preset, size, seed, **overrides)
    out = Path(out_dir)
    save_dataset(out, images, labels, info)
    if preview and n > 0:
        preview_images(out / "preview.png", images, labels, title=f"{preset}, seed {seed}")
    return out


def knobs(preset: str = "standard") -> dict:
    """The knobs of a preset and their values."""
    return preset_params(preset)


def _like(key: str, default: object, value: object) -> object:
    """Check an override against the type of the default it replaces."""
    if isinstance(default, list):
        if not isinstance(value, list | tuple) or len(value) != len(default):
            raise ValueError(f"generate: knob {key} must be a list of {len(default)} numbers "
                             f"like {default}, got {value!r}")
        return [type(d)(v) for d, v in zip(default, value, strict=True)]
    if not isinstance(value, int | float | np.integer | np.floating) or isinstance(value, bool):
        raise ValueError(f"generate: knob {key} must be a number like {default}, got {value!r}")
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"generate: knob {key} must be a finite non-negative number, "
                         f"got {value!r}")
    return type(default)(value)


INNER_MARGIN = 2       # px: interior statistics skip the cell's outer 2 px (blurred rim)
BACKGROUND_MARGIN = 3  # px: background pixels are at least 3 px from any cell
MIN_INNER_PIXELS = 20  # cells with fewer interior pixels are too small to measure texture
MAX_LAG = 8            # px: texture correlations are measured up to this shift


def statistics(images: np.ndarray | list, labels: np.ndarray | list) -> dict[str, float]:
    """What the interiors of labelled cells look like, pooled over images (H, W) and their
    instance labels (H, W):

    interior_cv: the median over cells of std / (mean - background) of the cell's interior
        pixels (more than INNER_MARGIN px inside), background the median of the pixels more
        than BACKGROUND_MARGIN px from any cell: texture, nucleoli and noise together;
    texture_scale: the shift (px) at which the correlation of interior pixels about their
        cell's mean falls to 1/2 (pixel noise alone: under 1 px);
    rim_ratio: the median over cells of (rim mean - background) / (interior mean -
        background), the rim the outer INNER_MARGIN px (1: even; < 1: dim rims);
    diameter: the median equivalent diameter, px."""
    cvs, rims, areas = [], [], []
    lag_sums, lag_counts, variance = np.zeros(MAX_LAG + 1), np.zeros(MAX_LAG + 1), 0.0
    for image, lab in zip(images, labels, strict=True):
        image, lab = np.asarray(image, np.float64), np.asarray(lab)
        far = ndimage.distance_transform_edt(lab == 0)
        background = np.median(image[far > BACKGROUND_MARGIN]) if (far > 3).any() else 0.0
        depth = _depth_in_cell(lab)
        inner = (depth > INNER_MARGIN) & (lab > 0)
        residual = np.zeros_like(image)
        for k, box in enumerate(ndimage.find_objects(lab), start=1):
            if box is None:
                continue
            cell, core = lab[box] == k, inner[box] & (lab[box] == k)
            areas.append(cell.sum())
            if core.sum() < MIN_INNER_PIXELS:
                continue
            mean = image[box][core].mean()
            rim = image[box][cell & ~core].mean()
            if mean - background > 0:
                cvs.append(image[box][core].std() / (mean - background))
                rims.append((rim - background) / (mean - background))
            residual[box][core] = image[box][core] - mean
        variance += (residual[inner] ** 2).sum()
        lag_counts[0] += inner.sum()
        for lag in range(1, MAX_LAG + 1):
            for a, b, ma, mb in ((residual[:, :-lag], residual[:, lag:], inner[:, :-lag],
                                  inner[:, lag:]), (residual[:-lag], residual[lag:],
                                                    inner[:-lag], inner[lag:])):
                both = ma & mb
                lag_sums[lag] += (a[both] * b[both]).sum()
                lag_counts[lag] += both.sum()
    if not cvs:
        raise ValueError("statistics: no cell is large enough to measure")
    correlation = (lag_sums / np.maximum(lag_counts, 1)) / (variance / lag_counts[0])
    correlation[0] = 1.0
    below = np.flatnonzero(correlation < 0.5)
    scale = float(MAX_LAG)
    if below.size:                       # interpolate between the last lag above 1/2 and it
        i = int(below[0])
        scale = i - 1 + (correlation[i - 1] - 0.5) / (correlation[i - 1] - correlation[i])
    return {"interior_cv": float(np.median(cvs)), "texture_scale": scale,
            "rim_ratio": float(np.median(rims)),
            "diameter": float(2 * np.sqrt(np.median(areas) / np.pi))}


def _depth_in_cell(lab: np.ndarray) -> np.ndarray:
    """Distance (H, W) from each cell pixel to the nearest pixel outside its own cell."""
    edge = np.zeros(lab.shape, bool)
    edge[:-1] |= lab[:-1] != lab[1:]
    edge[1:] |= lab[:-1] != lab[1:]
    edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    edge[:, 1:] |= lab[:, :-1] != lab[:, 1:]
    edge |= lab == 0
    return ndimage.distance_transform_edt(~edge) + 1.0 * (lab > 0)


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    try:
        H, W = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"generate: size must be (height, width), got {size!r}") from None
    if H < 8 or W < 8:
        raise ValueError(f"generate: size must be at least 8 x 8 px, got {size!r}")
    return H, W


__all__ = ["PRESETS", "generate", "generate_dataset", "knobs", "regenerate"]
