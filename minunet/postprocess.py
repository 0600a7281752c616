"""Per-pixel class probabilities -> one integer label per cell (0 = background).

Two kinds of network output are understood:

three-class (Kc = 3: background, interior, boundary), the U-Net's usual target:
    1. seeds      = interior probability > seed_thresh, split into 4-connected components;
                    components smaller than min_seed_size pixels are dropped
    2. foreground = 1 - background probability > fg_thresh
    3. watershed  from the seeds on the elevation 1 - interior probability, grown only into
                  the foreground: the boundary class is a ridge, so touching cells meet along
                  it instead of merging (skimage's algorithm; seeds of equal elevation flood in
                  raster order: kernels/watershed.py)
    4. foreground components that hold no seed become objects of their own (keep_unseeded)
    5. optionally (split=True) objects are also cut where their SHAPE says two blobs meet:
       the distance transform of the foreground is split by a watershed from its h-maxima
       (as in binary mode below), and each object is cut along those lines. It helps where
       the network draws no boundary between overlapping blobs of uniform brightness (the
       reference recipe's clouds); validation decides whether a model uses it
    6. objects smaller than min_size pixels are removed; ids are made sequential 1..n

binary (Kc = 2: background, foreground; or Kc = 1: foreground only):
    foreground = foreground probability > fg_thresh, split into 4-connected components;
    optionally (split=True) touching blobs are split by a watershed on the distance transform,
    seeded by its h-maxima (maxima at least split_depth pixels above the saddle to a
    neighbour; blobs too flat for any such maximum stay whole), then small objects are
    removed and ids made sequential.

Thresholds are strict (`>`). Shapes: (Kc, H, W) -> (H, W); (N, Kc, H, W) -> (N, H, W); a plain
(H, W) array is read as a single foreground-probability channel. The result is int32.
"""

from __future__ import annotations

import numpy as np

from .checks import check_finite, check_postprocess

FG_THRESH = 0.5  # foreground iff more likely than background
SEED_THRESH = 0.5  # a seed pixel is more likely interior than not
MIN_SEED_SIZE = 4  # seeds of 1-3 pixels are mostly noise on the interior map, not cells
MIN_SIZE = 16  # objects under 16 pixels (a disc of radius ~2) are below any cell we segment
SPLIT_DEPTH = 2.0  # pixels: a neck must be 2 px narrower (in radius) than both blobs to split
# scipy's 4-neighbourhood (generate_binary_structure(2, 1)): objects touching only at a
# corner stay apart
FOUR_CONNECTED = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)
# h-maxima plateaus come from a 3x3 dilation, so they are 8-connected: one plateau, one seed
EIGHT_CONNECTED = np.ones((3, 3), bool)
# scipy.ndimage and skimage are imported where they are used: the default path (float32
# probabilities) runs compiled code only, and importing scipy.ndimage costs ~0.4 s at every
# start of `minunet predict`
# softmax in float32 can overshoot 1 (or undershoot 0) by a few ulp; more than this is a bug
PROB_TOLERANCE = 1e-5
MODES = ("auto", "three_class", "binary")
# h-maxima compare distances that went through a subtraction: allow this much rounding
H_MAXIMA_ROUNDING = 1e-9


def _check_probs(probs: object, mode: str) -> np.ndarray:
    """Validate and return probs as (N, Kc, H, W)."""
    who = "to_instances"
    if not isinstance(probs, np.ndarray):
        raise TypeError(f"{who}: probs must be a numpy array, got {type(probs).__name__}")
    if not np.issubdtype(probs.dtype, np.floating):
        raise TypeError(f"{who}: probs must be floating point probabilities, got {probs.dtype}")
    if mode not in MODES:
        raise ValueError(f"{who}: mode must be one of {MODES}, got {mode!r}")
    if probs.ndim == 2:
        probs = probs[None, None]
    elif probs.ndim == 3:
        probs = probs[None]
    elif probs.ndim != 4:
        raise ValueError(
            f"{who}: probs must be (Kc, H, W) or (N, Kc, H, W) (or (H, W) foreground), "
            f"got shape {probs.shape}"
        )
    kc = probs.shape[1]
    if mode == "three_class" and kc != 3:
        raise ValueError(f"{who}: mode 'three_class' needs Kc=3 channels, got shape {probs.shape}")
    if mode == "binary" and kc not in (1, 2):
        raise ValueError(f"{who}: mode 'binary' needs Kc=1 or 2 channels, got shape {probs.shape}")
    if kc not in (1, 2, 3):
        raise ValueError(
            f"{who}: expected Kc=1, 2 or 3 class channels on axis -3, got {kc} (shape "
            f"{probs.shape}); a batch of single-channel maps is (N, 1, H, W)"
        )
    lo, hi = _probability_range(probs)                 # NaN and inf show in these two
    if not (np.isfinite(lo) and np.isfinite(hi)):
        check_finite(who, probs, name="probs")         # raises, counting them
    if lo < -PROB_TOLERANCE or hi > 1 + PROB_TOLERANCE:
        raise ValueError(
            f"{who}: probs must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]; "
            f"apply softmax (or sigmoid) to the logits first"
        )
    return probs


def _probability_range(probs: np.ndarray) -> tuple[float, float]:
    """(probs.min(), probs.max()) as floats, NaN and inf included as NumPy reports them.

    Over chunks of RANGE_CHUNK elements on the pool's threads, each chunk's min then max
    (NumPy's own SIMD loops, which release the GIL): the max reads the chunk from the core's
    L2 cache, so the image is read from memory once, by both cores, instead of twice by
    one. The min of the chunks' mins is the min (NaN propagates through np.min as through
    the whole array's). (3, 2048, 2048) float32, 2 threads of an Intel Xeon, min of 11 in
    one process: `_check_probs` 7.5 -> 2.8 ms."""
    from .kernels.threads import get_num_threads, parallel_for

    if probs.size < RANGE_CHUNK or get_num_threads() == 1 or not probs.flags.c_contiguous:
        return float(probs.min()), float(probs.max())
    flat = probs.reshape(-1)
    n_chunks = -(-flat.size // RANGE_CHUNK)
    found = np.empty((2, n_chunks), flat.dtype)           # each chunk's min and max

    def item(k: int, slot: int) -> None:
        chunk = flat[k * RANGE_CHUNK:(k + 1) * RANGE_CHUNK]
        found[0, k] = chunk.min()
        found[1, k] = chunk.max()

    parallel_for(item, n_chunks, blas=False)
    return float(found[0].min()), float(found[1].max())


RANGE_CHUNK = 1 << 17  # elements: 512 KiB of float32, within any core's L2 cache


def _foreground_and_elevation(p_background: np.ndarray, p_interior: np.ndarray,
                              fg_thresh: float) -> tuple[np.ndarray, np.ndarray]:
    """(1 - p_background > fg_thresh, 1 - p_interior): the foreground mask and the
    watershed's elevation, for float32/float64 maps in one compiled pass on the pool's
    threads with NumPy's float arithmetic (kernels/watershed.py's
    foreground_and_elevation: 6.3 -> 2.4 ms at 2048^2, 2 threads). A NumPy scalar threshold
    (np.float64 is strong in NEP 50: the comparison runs in float64) takes NumPy's path."""
    if (type(fg_thresh) in (float, int) and p_background.dtype == p_interior.dtype
            and p_background.dtype in (np.float32, np.float64)
            and p_background.ndim == 2 and p_background.shape == p_interior.shape):
        from .kernels.watershed import foreground_and_elevation

        return foreground_and_elevation(p_background, p_interior, fg_thresh)
    return (1.0 - p_background) > fg_thresh, 1.0 - p_interior


def _finish(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Remove objects under min_size pixels; sequential ids 1..n; int32.

    One lookup: new_id[old] = how many kept ids are <= old (0 for the removed and absent
    ones), which is skimage's relabel_sequential after zeroing the small objects, in one pass
    over the image instead of three (compiled for int32 labels: kernels/watershed.py's
    relabel, without np.bincount's int64 copy)."""
    if labels.dtype == np.int32 and labels.ndim == 2:
        from .kernels.watershed import relabel

        return relabel(labels, min_size)
    sizes = np.bincount(labels.ravel())
    keep = (sizes >= min_size) & (sizes > 0)          # absent ids take no number
    keep[0] = False                                   # the background stays 0
    new_id = np.where(keep, np.cumsum(keep), 0).astype(np.int32)
    return new_id[labels]


def _watershed(elevation: np.ndarray, markers: np.ndarray, mask: np.ndarray,
               keep_unseeded: bool, pieces: tuple[np.ndarray, np.ndarray] | None = None,
               ) -> np.ndarray:
    """skimage's watershed(elevation, markers=markers, mask=mask), then (keep_unseeded) the
    mask's pieces that hold no marker as objects of their own. For a float32 elevation
    through kernels/watershed.py, which floods the mask's connected pieces one at a time on
    the pool's threads, markers of equal elevation in raster order (skimage: in its heap's
    order), 3.5x faster on one core on the bundled model's 4096^2 probabilities. pieces: the
    mask's pieces if already found (`_seeds_and_pieces`)."""
    from .kernels.watershed import MAX_PIXELS, seeded_watershed

    if elevation.dtype == np.float32 and elevation.ndim == 2 and elevation.size <= MAX_PIXELS:
        return seeded_watershed(elevation, markers, mask, unseeded=keep_unseeded, pieces=pieces)
    from skimage.segmentation import watershed

    labels = watershed(elevation, markers=markers, mask=mask)
    return _add_unseeded(labels, mask) if keep_unseeded else labels


def _seeds_and_pieces(p_interior: np.ndarray, seed_thresh: float, min_seed_size: int,
                      foreground: np.ndarray,
                      ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """`_seeds`, and the foreground's pieces for the compiled watershed (which takes a float32
    elevation, 1 - p_interior; None where it does not apply): two searches over the image,
    independent of each other, run at the same time on two of the pool's threads (one after
    the other for small images)."""
    from .kernels.threads import get_num_threads, parallel_for
    from .kernels.watershed import MAX_PIXELS, SERIAL_PIXELS, mask_pieces

    if not (p_interior.dtype == np.float32 and p_interior.ndim == 2
            and p_interior.size <= MAX_PIXELS):
        return _seeds(p_interior, seed_thresh, min_seed_size, foreground), None
    found: list = [None, None]

    def item(k: int, slot: int) -> None:
        found[k] = (_seeds(p_interior, seed_thresh, min_seed_size, foreground) if k == 0
                    else mask_pieces(foreground))

    parallel_for(item, 2, serial=foreground.size < SERIAL_PIXELS or get_num_threads() == 1,
                 blas=False)
    return found[0], found[1]


def _seeds(p_interior: np.ndarray, seed_thresh: float, min_seed_size: int,
           foreground: np.ndarray) -> np.ndarray:
    """Seeds: 4-connected regions of interior probability > seed_thresh, those under
    min_seed_size pixels dropped, ids 1..n, cleared outside the foreground (compiled for
    float images: kernels/watershed.py's seed_labels, the same labels in one pass)."""
    from .kernels.watershed import seed_labels

    if p_interior.dtype.kind == "f" and p_interior.ndim == 2:
        return seed_labels(p_interior, seed_thresh, min_seed_size, foreground)
    from scipy import ndimage

    seeds, _ = ndimage.label(p_interior > seed_thresh, structure=FOUR_CONNECTED)
    seeds = _finish(seeds, min_seed_size)
    seeds[~foreground] = 0  # a seed outside the foreground cannot grow
    return seeds


def _add_unseeded(labels: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Give each foreground component that the watershed did not reach an id of its own
    (in place: labels, a watershed's fresh output, is changed and returned)."""
    from scipy import ndimage

    rest, n_rest = ndimage.label(foreground & (labels == 0), structure=FOUR_CONNECTED)
    if n_rest:
        unseeded = rest > 0
        labels[unseeded] = rest[unseeded] + labels.max()
    return labels


def reconstruct_by_dilation(marker: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Grayscale reconstruction: dilate `marker` (3x3) under `mask` until nothing changes.

    marker <= mask, both (H, W). Same result as skimage.morphology.reconstruction, but the loop
    stops after a few passes on distance maps (each pass only has to climb the domes that are
    higher than marker), where skimage's general algorithm sorts every pixel.
    """
    from scipy import ndimage

    rec = marker
    while True:
        grown = np.minimum(ndimage.grey_dilation(rec, size=(3, 3)), mask)
        if np.array_equal(grown, rec):
            return rec
        rec = grown


def h_maxima_mask(image: np.ndarray, h: float) -> np.ndarray:
    """Pixels on the top of a dome at least h high: image - reconstruction(image - h) >= h.

    For a distance map (>= 0) the marker is clipped at 0, which leaves every dome over the
    background unchanged and spares the loop from climbing the background.
    """
    rec = reconstruct_by_dilation(np.maximum(image - h, 0.0), image)
    return (image - rec >= h - H_MAXIMA_ROUNDING) & (image > 0)


def three_class_instances(
    p_background: np.ndarray,
    p_interior: np.ndarray,
    *,
    fg_thresh: float = FG_THRESH,
    seed_thresh: float = SEED_THRESH,
    min_seed_size: int = MIN_SEED_SIZE,
    min_size: int = MIN_SIZE,
    keep_unseeded: bool = True,
    split: bool = False,
    split_depth: float = SPLIT_DEPTH,
) -> np.ndarray:
    """Labels (H, W) from background and interior probabilities (H, W); see the module doc."""
    foreground, elevation = _foreground_and_elevation(p_background, p_interior, fg_thresh)
    seeds, pieces = _seeds_and_pieces(p_interior, seed_thresh, min_seed_size, foreground)
    labels = _watershed(elevation, seeds, foreground, keep_unseeded, pieces)  # (H, W)
    del seeds, pieces, elevation  # their memory goes to the steps below
    if split and foreground.any():
        labels = _cut(labels, _distance_regions(labels > 0, split_depth))
    return _finish(labels, min_size)


def _distance_regions(foreground: np.ndarray, split_depth: float) -> np.ndarray:
    """Regions (H, W) of the watershed of the foreground's distance transform from its
    h-maxima: one region per blob, split where a neck is split_depth px narrower than both."""
    from scipy import ndimage
    from skimage.segmentation import watershed

    distance = ndimage.distance_transform_edt(foreground)  # (H, W) pixels to background
    markers, _ = ndimage.label(h_maxima_mask(distance, split_depth), EIGHT_CONNECTED)
    return _add_unseeded(watershed(-distance, markers=markers, mask=foreground), foreground)


CUT_MIN_FRACTION = 0.25  # a piece cut off an object must hold this share of it, else it stays


def _cut(labels: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """Each object of labels cut along the borders of regions: one id per (object, region)
    pair, 0 staying 0. A piece under CUT_MIN_FRACTION of its object is a sliver between two
    nearly equal borders (the network's and the shape's), not a blob: it stays with the
    object's largest piece."""
    pair = labels.astype(np.int64).ravel() * (int(regions.max()) + 1) + regions.ravel()
    pair[labels.ravel() == 0] = 0                              # off the objects stays 0
    keys, first, ids = np.unique(pair, return_index=True, return_inverse=True)
    area = np.bincount(ids)                                    # pixels per piece
    owner = labels.ravel()[first]                              # object of each piece
    object_area = np.bincount(owner, weights=area)             # pixels per object
    # the largest piece of each object: sort pieces by (object, area), keep each object's last
    order = np.lexsort((area, owner))
    largest = np.zeros(owner.max() + 1, np.int64)
    largest[owner[order]] = order                              # later (larger) pieces win
    small = area < CUT_MIN_FRACTION * object_area[owner]
    target = np.where(small, largest[owner], np.arange(keys.size))
    _, new = np.unique(target, return_inverse=True)            # sequential from 0
    out = new[ids].reshape(labels.shape).astype(np.int32)
    return out if keys[0] == 0 else out + 1                    # 0: the background piece


def binary_instances(
    p_foreground: np.ndarray,
    *,
    fg_thresh: float = FG_THRESH,
    min_size: int = MIN_SIZE,
    split: bool = False,
    split_depth: float = SPLIT_DEPTH,
) -> np.ndarray:
    """Labels (H, W) from a foreground probability (H, W); see the module doc."""
    from scipy import ndimage

    foreground = p_foreground > fg_thresh  # (H, W)
    labels, _ = ndimage.label(foreground, structure=FOUR_CONNECTED)
    if split and foreground.any():
        labels = _distance_regions(foreground, split_depth)
    return _finish(labels, min_size)


def to_instances(
    probs: np.ndarray,
    mode: str = "auto",
    *,
    fg_thresh: float = FG_THRESH,
    seed_thresh: float = SEED_THRESH,
    min_seed_size: int = MIN_SEED_SIZE,
    min_size: int = MIN_SIZE,
    keep_unseeded: bool = True,
    split: bool = False,
    split_depth: float = SPLIT_DEPTH,
) -> np.ndarray:
    """Instance labels from class probabilities.

    probs: (Kc, H, W) or (N, Kc, H, W) probabilities in [0, 1] (softmax output), or (H, W)
        foreground probability. Channel order: Kc=3 background, interior, boundary;
        Kc=2 background, foreground; Kc=1 foreground.
    mode: "auto" (Kc=3 -> "three_class", Kc in {1, 2} -> "binary"), "three_class" or "binary"
    fg_thresh: a pixel is foreground iff its foreground probability (three-class: 1 - background)
        is > fg_thresh (default 0.5)
    seed_thresh, min_seed_size: three-class seeds are 4-connected regions of interior
        probability > seed_thresh (default 0.5) with at least min_seed_size pixels (default 4)
    min_size: objects with fewer pixels are removed (default 16)
    keep_unseeded: three-class: foreground regions without any seed become objects (default True)
    split, split_depth: split touching blobs with a distance-transform watershed whose
        seeds are maxima at least split_depth pixels (default 2) above their saddle (binary:
        the foreground; three-class: each object is also cut along those lines)

    Returns int32 labels (H, W) or (N, H, W), 0 = background, ids 1..n per image.
    Raises TypeError / ValueError / FloatingPointError for a wrong type or shape, probabilities
    outside [0, 1], or NaN / inf.
    """
    check_postprocess({"mode": mode, "fg_thresh": fg_thresh, "seed_thresh": seed_thresh,
                       "min_seed_size": min_seed_size, "min_size": min_size,
                       "keep_unseeded": keep_unseeded, "split": split,
                       "split_depth": split_depth})  # a NaN threshold: 0 objects, no error
    batch = _check_probs(probs, mode)  # (N, Kc, H, W)
    kc = batch.shape[1]
    out = np.zeros((batch.shape[0], *batch.shape[2:]), dtype=np.int32)  # (N, H, W)
    for i, p in enumerate(batch):
        if kc == 3:
            out[i] = three_class_instances(
                p[0], p[1], fg_thresh=fg_thresh, seed_thresh=seed_thresh,
                min_seed_size=min_seed_size, min_size=min_size, keep_unseeded=keep_unseeded,
                split=split, split_depth=split_depth,
            )
        else:
            out[i] = binary_instances(
                p[-1], fg_thresh=fg_thresh, min_size=min_size, split=split,
                split_depth=split_depth,
            )
    return out if probs.ndim == 4 else out[0]
