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

SIGMAS = 1.5 * 1.18 ** np.arange(20)   # px: scales tried, 1.5 .. 34 (diameters ~4 .. 100 px)
# a disc of radius r peaks at s = r / sqrt(2); blurred cells with dimmer rims peak 10 % lower
# (the mean ratio measured on generated images), hence the factor 1.1
DIAMETER_PER_SIGMA = 2.0 * np.sqrt(2.0) * 1.1
PEAK_WEIGHT_POWER = 3                   # scales are weighted by peak strength ** 3
MIN_SCALE, MAX_SCALE = 0.25, 4.0        # resizing beyond this is refused: the diameter is wrong
# the largest distance to the background inside a disc of radius r is ~r (+0.5 px on the pixel
# grid); times 1.05 it matched the equivalent diameter of generated round cells (1.03-1.09)
ROUND_DIAMETER_PER_RADIUS = 2.0 * 1.05
MIN_OBJECTS = 3                         # fewer first-pass objects: no estimate, no resizing
MIN_OBJECT_SIZE = 16                    # px: first-pass objects under this are noise
# the trained range (see `within_trained`): no resizing for objects from 1/1.75 to 2 times the
# training diameter (15-53 px for the bundled model, trained on `broad`'s cells of about 14-54
# px: images of larger cells among them). Measured with it by bench/auto_diameter.py (object
# F1@0.5 as they are -> resized): ~15 px nuclei 0.974 -> 0.961 enlarged x1.3, but `auto`'s x1.33
# with the size filter kept gives 0.982; ~30 px 0.986 -> 0.979 shrunk x0.8; ~36 px textured
# 0.971 -> 0.932 shrunk x0.8; ~49 px textured 0.970 as they are, 0.955 when `auto` shrank
# them to 1.75 x (an upper edge of 1.75, the range of the model bundled before); ~10 px 0.609
# -> 0.962 enlarged x1.6
TRAINED_RANGE = (1 / 1.75, 2.0)
PROBE_SCALE = 0.5    # `auto_scale`'s second look, at half size
PROBE_DISAGREEMENT = 2.0   # ... is believed when it sees objects over 2x larger
ENLARGE_TO = 0.8     # small objects are enlarged to 0.8 x the training diameter, no more
# enlarged images keep the plain pass's size filter in their own pixels (debris does not
# shrink with the cells), but never one over this share of the objects' estimated area
ENLARGED_MIN_SIZE_SHARE = 0.5
SHRINK_TO = TRAINED_RANGE[1]   # large ones shrunk to the trained range's upper edge, no more


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
    from scipy import ndimage  # on use: ~0.4 s to import, and only --diameter auto needs it

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


def diameter_from_probs(probs: np.ndarray, min_size: int = MIN_OBJECT_SIZE
                        ) -> tuple[float | None, int]:
    """The median object diameter (px) that a model's first pass sees, and how many objects it
    is measured on: (None, n) when there are fewer than MIN_OBJECTS.

    probs: (Kc, H, W) class probabilities from `predict` at the image's own scale. Objects are
    the instances of `to_instances(probs, min_size=min_size)`. Each object's diameter is the
    larger of two measures:
    - the equivalent diameter 2 sqrt(area / pi) of the object (right for whole objects of any
      shape, too small for an object the network split in pieces);
    - ROUND_DIAMETER_PER_RADIUS x the largest distance from a pixel of the object to the
      background of the foreground (the widest disc that fits in the object's blob: a piece of
      a split nucleus still sees the nucleus' whole width, as the foreground is not split).
    Relies on the network's foreground, not on the raw intensity, so chromatin texture,
    uneven brightness and crowding change it little."""
    from scipy import ndimage

    from .postprocess import to_instances

    labels = to_instances(probs, min_size=min_size)                     # (H, W)
    n = int(labels.max())
    if n < MIN_OBJECTS:
        return None, n
    foreground = (probs[0] < 0.5) if probs.shape[0] > 1 else (probs[0] > 0.5)
    inscribed = ndimage.maximum(ndimage.distance_transform_edt(foreground), labels,
                                np.arange(1, n + 1))                   # (n,) px
    equivalent = 2.0 * np.sqrt(np.bincount(labels.ravel())[1:] / np.pi)
    diameters = np.maximum(ROUND_DIAMETER_PER_RADIUS * np.asarray(inscribed), equivalent)
    return float(np.median(diameters)), n


def within_trained(diameter: float, train_diameter: float) -> bool:
    """Whether objects of `diameter` px are close enough to the training diameter that resizing
    would only add resampling error: within TRAINED_RANGE times it (the `broad` training set
    has cells of about 14-54 px and fragments)."""
    low, high = TRAINED_RANGE
    return low * train_diameter <= diameter <= high * train_diameter


def auto_scale(probs: np.ndarray, train_diameter: float, probe: np.ndarray | None = None
               ) -> tuple[float, float | None]:
    """`--diameter auto`: (scale for `predict`, estimated diameter or None) from the
    probabilities (Kc, H, W) of a first pass at the image's own scale (`diameter_from_probs`).

    probe: the probabilities of a pass at PROBE_SCALE (mapped back to the image's grid, as
    `predict(..., scale=PROBE_SCALE)` returns them). Nuclei far larger than the training size
    can fall apart in the first pass (its objects are pieces of chromatin), while at half size
    the network sees them whole: when the probe's estimate is more than PROBE_DISAGREEMENT
    times the first pass's, the probe's is taken (bench/auto_diameter.py's ~49 px textured
    nuclei: without the probe, `auto` enlarged some of those images and scored 0.476).

    Never resizes without a reason: scale 1 when there is no estimate (under MIN_OBJECTS
    objects) or when it lies within TRAINED_RANGE times the training diameter. Otherwise the
    objects are brought back just into the range the network knows, no further: larger ones
    shrunk to SHRINK_TO times the training diameter, smaller ones enlarged to ENLARGE_TO
    times it. Enlarging makes pixel noise coarse, and the network then takes noise bumps for
    small dim cells (see TRAINED_RANGE's measurements)."""
    estimate, _ = diameter_from_probs(probs)
    if probe is not None:
        seen_whole, _ = diameter_from_probs(probe, min_size=round(MIN_OBJECT_SIZE
                                                                  / PROBE_SCALE**2))
        if seen_whole is not None and (estimate is None
                                       or seen_whole > PROBE_DISAGREEMENT * estimate):
            estimate = seen_whole
    if estimate is None or within_trained(estimate, train_diameter):
        return 1.0, estimate
    target = train_diameter * (SHRINK_TO if estimate > train_diameter else ENLARGE_TO)
    return float(np.clip(target / estimate, MIN_SCALE, MAX_SCALE)), estimate


def grown_min_size(postprocess: dict, estimate: float | None, scale: float,
                   train_diameter: float) -> dict:
    """`--diameter auto`'s size filter: `to_instances` settings (at the training scale) whose
    min_size grows with the area of the objects the network will see, estimate x scale px
    across, when they are larger than the training diameter; never smaller than it was.

    min_size is learned as a share of the training cells' median area (workflow.
    postprocess_settings): objects twice as wide make fragments of them four times larger.
    It is not lowered for smaller objects: debris does not shrink with the cells, and
    bench/auto_diameter.py's ~15 px nuclei lost 0.04 of F1 when it was."""
    if estimate is None:
        return dict(postprocess)
    from .postprocess import MIN_SIZE

    growth = max(1.0, (estimate * scale / train_diameter) ** 2)
    return {**postprocess,
            "min_size": round(postprocess.get("min_size", MIN_SIZE) * growth)}


def auto_settings(postprocess: dict, estimate: float | None, scale: float,
                  train_diameter: float) -> dict:
    """The `to_instances` settings of a `--diameter auto` pass at `scale`, for probabilities
    on the image's own grid: the grown size filter (`grown_min_size`), mapped back from the
    network's scale (`postprocess_at`).

    An enlarged image (scale > 1) keeps the plain pass's size filter in its own pixels
    instead of the filter divided by scale**2: debris and noise specks keep their size in
    pixels while the cells are small, and the divided filter let them through (the bundled
    model on `shift-small`, 16 images: 601 objects found for 579 cells, F1 0.966, against
    0.985 with the filter kept; bench/accuracy.py). But never more than
    ENLARGED_MIN_SIZE_SHARE of the estimated objects' area, which would drop the objects
    themselves (~11 px nuclei: 0.78 with the plain filter, 0.87 with this cap)."""
    from .postprocess import MIN_SIZE

    grown = grown_min_size(postprocess, estimate, scale, train_diameter)
    if scale == 1.0:
        return grown
    mapped = postprocess_at(grown, scale)
    if scale > 1.0 and estimate is not None:
        plain = grown.get("min_size", MIN_SIZE)
        cap = round(ENLARGED_MIN_SIZE_SHARE * np.pi / 4.0 * estimate**2)
        mapped["min_size"] = max(mapped["min_size"], min(plain, cap))
    return mapped


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


def plan(image: np.ndarray, metadata: dict, diameter: float | str | None,
         first_pass: np.ndarray | None = None) -> tuple[float, dict]:
    """What `predict` and `to_instances` need for one image, given the user's diameter.

    diameter: None (the image as it is), a number of pixels, or "auto" (`auto_scale` on
    first_pass, the model's probabilities (Kc, H, W) at the image's own scale).
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
        if first_pass is None:
            raise ValueError("diameter 'auto' needs the model's first-pass probabilities "
                             "(mu.segment(..., diameter='auto') runs that pass)")
        scale = auto_scale(first_pass, float(trained))[0]
    else:
        scale = scale_for(float(diameter), float(trained))
    return scale, (postprocess_at(post, scale) if scale != 1.0 else post)
