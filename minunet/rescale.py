"""Object scale: measure how big the objects are, and bring an image to the size a model knows.

A U-Net sees a fixed neighbourhood, so it segments objects of about the size it was trained on.
For objects of another size, the image is resized by

    scale = training diameter / object diameter        (< 1 shrinks large objects)

before the network, and the probabilities are resized back to the image's own grid (`predict`
does both when given `scale`). The training diameter is `object_diameter(labels)` of the training
labels, stored in the checkpoint's metadata under "diameter". The object diameter is given by
the user, or estimated from the image by `estimate_diameter`:

Scale-space blob detection (Lindeberg). The scale-normalised Laplacian of Gaussian
-s^2 LoG_s * image, for a bright disc of radius r, peaks at its centre at s = r / sqrt(2).
Its local maxima over (scale, row, column) are blobs, each with a scale and a strength; the
estimate is DIAMETER_PER_SIGMA times the median of the scales weighted by strength**3, so cells
outweigh the many weak peaks of noise, texture and debris without a hard threshold. Peaks on the
smallest or largest scale tried are dropped: a lone bright pixel (salt) peaks on the smallest, a
slow background trend on the largest. On 4 images of each of 13 generated presets (diameters
6-38 px) the estimate / true median diameter was 0.80-1.20 (std of its log 0.08).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

SIGMAS = 1.5 * 1.18 ** np.arange(20)   # px: scales tried, 1.5 .. 34 (diameters ~4 .. 100 px)
# a disc of radius r peaks at s = r / sqrt(2); blurred cells with dimmer rims peak 10 % lower
# (the mean ratio measured on generated images), hence the factor 1.1
DIAMETER_PER_SIGMA = 2.0 * np.sqrt(2.0) * 1.1
PEAK_WEIGHT_POWER = 3                   # scales are weighted by peak strength ** 3
MIN_SCALE, MAX_SCALE = 0.25, 4.0        # resizing beyond this is refused: the diameter is wrong


def object_diameter(labels: np.ndarray | list[np.ndarray]) -> float:
    """Median equivalent diameter 2 sqrt(area / pi) of the objects of labels (..., H, W) int,
    or of a list of label images of different sizes."""
    if isinstance(labels, (list, tuple)):
        images = [np.asarray(lab) for lab in labels]
    else:
        labels = np.asarray(labels)
        images = list(labels.reshape(-1, *labels.shape[-2:]))
    areas = np.concatenate([np.bincount(lab.ravel())[1:] for lab in images])
    areas = areas[areas > 0]
    if areas.size == 0:
        raise ValueError("object_diameter: the labels hold no objects")
    return float(2.0 * np.sqrt(np.median(areas) / np.pi))


def estimate_diameter(image: np.ndarray) -> float:
    """Estimate the typical object diameter (px) of a gray image (H, W): see the module doc.

    Works on the raw or the normalised image (the estimate ignores the intensity scale). Raises
    ValueError when no blob stands out (an empty or flat image): then give the diameter."""
    x = np.asarray(image, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"estimate_diameter: expected one (H, W) gray image, got {x.shape}")
    x = x - np.median(x)
    stack = np.stack([-s * s * ndimage.gaussian_laplace(x, s, truncate=3.0)
                      for s in SIGMAS])                               # (S, H, W)
    peaks = (stack == ndimage.maximum_filter(stack, size=3)) & (stack > 0)
    peaks[0] = peaks[-1] = False                                      # salt / background trend
    scale_index, _, _ = np.nonzero(peaks)
    weight = stack[peaks].astype(np.float64) ** PEAK_WEIGHT_POWER
    if weight.size == 0 or not weight.sum() > 0:
        raise ValueError("estimate_diameter: no blob-like objects found; give the diameter")
    order = np.argsort(scale_index, kind="stable")
    cumulative = np.cumsum(weight[order])
    median = scale_index[order][np.searchsorted(cumulative, cumulative[-1] / 2)]
    return float(DIAMETER_PER_SIGMA * SIGMAS[median])


def scale_for(diameter: float, train_diameter: float) -> float:
    """The resize factor that brings objects of `diameter` px to `train_diameter` px."""
    if not (np.isfinite(diameter) and diameter > 0):
        raise ValueError(f"diameter must be a positive number of pixels, got {diameter!r}")
    if not (np.isfinite(train_diameter) and train_diameter > 0):
        raise ValueError(f"the model's training diameter must be positive, got {train_diameter!r}")
    scale = train_diameter / diameter
    if not MIN_SCALE <= scale <= MAX_SCALE:
        raise ValueError(f"objects of {diameter:.3g} px are {1 / scale:.3g} x the model's "
                         f"{train_diameter:.3g} px: resizing by {scale:.3g} is outside "
                         f"[{MIN_SCALE}, {MAX_SCALE}]; check the diameter (in pixels)")
    return float(scale)


def resize(x: np.ndarray, shape: tuple[int, int], order: int = 1) -> np.ndarray:
    """x (H, W) or (C, H, W) resampled to (..., *shape) with a spline of `order`, pixel centres
    aligned (skimage's convention); shrinking first smooths away what the new grid cannot hold."""
    from skimage.transform import resize as sk_resize

    x = np.asarray(x)
    out_shape = (*x.shape[:-2], *shape)
    shrink = shape[0] < x.shape[-2] or shape[1] < x.shape[-1]
    sigma = [0.0] * (x.ndim - 2) + [max(0.0, (x.shape[-2] / shape[0] - 1) / 2),
                                    max(0.0, (x.shape[-1] / shape[1] - 1) / 2)]
    return sk_resize(x, out_shape, order=order, mode="reflect", preserve_range=True,
                     anti_aliasing=shrink, anti_aliasing_sigma=sigma if shrink else None,
                     ).astype(x.dtype, copy=False)


def scaled_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    """(H, W) times scale, rounded, at least 1 px per side."""
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def postprocess_at(postprocess: dict, scale: float) -> dict:
    """`to_instances` settings learned at the training scale, for probabilities mapped back to an
    image resized by 1 / scale: pixel counts (min_size, min_seed_size) divided by scale**2,
    the split depth (a length in pixels) by scale."""
    from .postprocess import MIN_SEED_SIZE, MIN_SIZE, SPLIT_DEPTH

    out = dict(postprocess)
    for key, default in (("min_size", MIN_SIZE), ("min_seed_size", MIN_SEED_SIZE)):
        out[key] = max(1, round(out.get(key, default) / scale**2))
    if out.get("split"):
        out["split_depth"] = out.get("split_depth", SPLIT_DEPTH) / scale
    return out


def plan(image: np.ndarray, metadata: dict, diameter: float | str | None
         ) -> tuple[float, dict]:
    """What `predict` and `to_instances` need for one image, given the user's diameter.

    diameter: None (the image as it is), a number of pixels, or "auto" (`estimate_diameter`).
    metadata: the checkpoint's metadata; its "diameter" is the training object diameter and
    its "postprocess" the `to_instances` settings at that scale.
    Returns (scale for `predict(..., scale=)`, settings for `to_instances`)."""
    post = dict(metadata.get("postprocess") or {})
    if diameter is None:
        return 1.0, post
    trained = metadata.get("diameter")
    if trained is None:
        raise ValueError("this model does not record the object diameter it was trained on "
                         "(checkpoint metadata 'diameter'); predict without a diameter, or "
                         "retrain it with this version of minunet")
    if isinstance(diameter, str):
        if diameter != "auto":
            raise ValueError(f"diameter must be a number of pixels or 'auto', got {diameter!r}")
        diameter = estimate_diameter(np.asarray(image, dtype=np.float32)
                                     if np.asarray(image).ndim == 2 else _gray(image))
    scale = scale_for(float(diameter), float(trained))
    return scale, (postprocess_at(post, scale) if scale != 1.0 else post)


def _gray(image: np.ndarray) -> np.ndarray:
    from .predict import to_gray

    return to_gray(image).astype(np.float32)
