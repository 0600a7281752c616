"""Prediction on images of any size: normalisation, then overlap-tile inference.

The U-Net sees a tile of size T + 2M (T = the tile's core, M = the margin around it) and only
the core's prediction is kept. When M covers the network's receptive field, every kept pixel
saw exactly the context it would have seen in one whole-image pass, so the tiled result equals
the untiled one up to float round-off. Beyond the image's edges the image is mirrored
(`np.pad(mode="reflect")`), as in the U-Net paper's overlap-tile strategy.

Tiles start at multiples of 2**depth, the network's pooling grid, so max-pooling sees the same
windows in every tile. Memory stays bounded: only `batch_size` tiles go through the network at a
time, and the output is written tile by tile into one (Kc, H, W) array.

Large tiles are cheaper: the margins are computed for nothing, and a 256-px core with the depth-3
margin of 56 px computes 2.07x the image's pixels, a 1024-px core 1.27x (DEFAULT_TILE). The
automatic margin is also widened (by 8 px a side for a 1024-px core of a depth-3 network, at
most 7 * 2**depth px for small cores) so that each tile is a multiple of FAST_WIDTH * 2**depth
px wide: then every level's rows are a multiple of 16 px, which the
direct AVX-512 convolutions need (`kernels/conv.py`, `_direct`); otherwise the deeper levels
take the BLAS route. A wider margin only adds context, so the result stays seamless. The core
also grows (by rows past the image's, mirrored and dropped) until each tile is a multiple of
FAST_HEIGHT * 2**depth px tall: every level's height is then a multiple of 4, which Winograd's
4 x 4 tiles need (`kernels/winograd.py`); a 1000 x 1000 image's tile was 1144 px tall, and its
levels 2 and 3 (286 and 143 rows) took the direct sums, 2-3x slower there.

The fast U-Net (kernels/unet.py) is asked for each tile's core only (`forward_window`): its
encoder needs the margin, its decoder computes only what the core depends on, the same bits.

Normalisation (`normalize`) turns whatever a user's file holds (8-/16-bit integers, floats, RGB)
into one float32 gray image. Its settings are a small dict stored in the checkpoint, so training
and prediction apply exactly the same steps.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from .kernels import ranks, tiles
from .kernels import smooth as smooth_kernels
from .module import Module

# ITU-R BT.709 luma weights (also skimage.color.rgb2gray's): how bright each channel looks.
RGB_TO_GRAY = np.array([0.2125, 0.7154, 0.0721], dtype=np.float64)

# Default normalisation: the 1st percentile goes to 0 and the median foreground pixel (Otsu's
# threshold on the lightly smoothed image) to 0.6. Unlike an upper percentile, that level is set
# by the typical cell, not by the few brightest ones, nor by how much of the image cells cover.
# Measured on 8 generated 256x256 images per case (median normalised cell brightness above the
# background; share of cells below 0.2):
#                      standard   shift-brightness   standard, 4 cells per 256x256
#   percentile 1/99.8    0.49         0.32; 20 %          0.61
#   percentile 1/98      0.64         0.41; 11 %          0.97  (sparse images stretched)
#   foreground           0.52         0.38; 13 %          0.55
# (`predict.FOREGROUND_LEVEL`; "percentile" remains available for older checkpoints.)
DEFAULT_NORMALIZATION: dict[str, Any] = {"method": "foreground", "low": 1.0, "level": 0.6}
FOREGROUND_SMOOTH = 1.0   # px: Gaussian smoothing before Otsu's threshold, so noise does not
                          # decide which pixels count as foreground
# An empty field (camera offset + noise, no cells) has a "foreground" too: Otsu splits the noise,
# and stretching that split to `level` turns noise into cell-bright blobs (65 objects on one
# 256x256 field). So the stretch is capped: the foreground must stand MIN_SIGNAL_TO_NOISE noise
# sigmas above the 1st percentile to be stretched to `level`; below that the scale is as if it
# did. Measured with `python bench/empty_fields.py` (bundled `nuclei` model): pure noise stands
# 2.6-2.9 sigmas at every offset and noise level, real generated images 7.9 and more (the lowest:
# shift-noise 7.9, shift-contrast 8.6, 3 cells per field 9.2, standard 13.2); objects found on 18
# noise-only fields: 6-18 each without the cap, 0 with 6, 8 or 12; object F1 on the cells the
# same with and without (standard 0.982, shift-noise 0.978, shift-contrast 0.953).
MIN_SIGNAL_TO_NOISE = 6.0
OTSU_BINS = 256           # skimage.filters.threshold_otsu's default number of bins

# Tiling defaults (`predict`, `mu.segment`, `minunet predict --tile`). 1024-px cores, one tile
# per forward pass: with the bundled model on a 4096^2 image, 0.56x the network time of 256-px
# cores in batches of 4 and 0.76x that of 1024-px cores in batches of 2 (`bench/bench_segment.py
# --sizes 4096 --tiles 256:4,1024:1,1024:2`, one run, docs/speed.md), the same probabilities to
# the bit, and about 80 MiB per activation of 16 channels.
DEFAULT_TILE = 1024
DEFAULT_BATCH_SIZE = 1
# the direct convolution kernels take rows a multiple of this many pixels (one AVX-512 vector
# of float32; kernels/conv.py `_direct`); the automatic margin makes every level's rows so
FAST_WIDTH = 16
# and Winograd's convolutions (kernels/winograd.py) rows a multiple of its 4 x 4 output tiles
FAST_HEIGHT = 4
# bytes per tile pixel and top-level channel of a U-Net's forward pass (`memory_estimate`)
WORKING_SET_PER_CHANNEL = 19


def to_gray(image: np.ndarray, *, who: str = "image") -> np.ndarray:
    """(H, W), (H, W, 1), (1, H, W), (H, W, 3) RGB or (H, W, 4) RGBA -> (H, W) float64.

    RGB(A) becomes luminance with the BT.709 weights; the alpha channel is dropped.
    """
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8)
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise TypeError(f"{who}: expected a numeric image, got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    elif image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    elif image.ndim == 3 and image.shape[-1] in (3, 4):
        image = image[..., :3].astype(np.float64) @ RGB_TO_GRAY
    if image.ndim != 2:
        raise ValueError(
            f"{who}: expected a 2-D gray image (H, W) or RGB(A) (H, W, 3|4), got shape "
            f"{image.shape}"
        )
    if image.size == 0:
        raise ValueError(f"{who}: the image is empty (shape {image.shape})")
    return image.astype(np.float64, copy=False)


def normalize(image: np.ndarray, normalization: dict[str, Any] | None = None, *,
              who: str = "image") -> np.ndarray:
    """Turn a raw image into the float32 (H, W) gray image the network was trained on.

    normalization["method"]:
      "foreground" (default): (x - p_low) / (m - p_low) * level, p_low the image's `low`
                   percentile (1), m the median of the pixels above Otsu's threshold of the
                   image smoothed by FOREGROUND_SMOOTH px: the typical cell lands at `level`
                   (0.6) however bright its few brightest neighbours are; not clipped.
                   The stretch is capped where m - p_low is under `min_snr` (6) times the
                   pixel noise (`noise_sigma`): an empty field is not stretched into cells.
      "percentile": (x - p_low) / (p_high - p_low) with the image's own percentiles
                   `low` and `high` (1 and 99.8 by default); not clipped.
      "range":     integers divided by their dtype's maximum (uint8 / 255, uint16 / 65535);
                   floats taken as they are.
      "none":      the values as they are (float32).
    """
    from .checks import check_normalization, check_pixel_range

    check_normalization(normalization, "normalize")  # a zero level would give blank images
    norm = dict(DEFAULT_NORMALIZATION if normalization is None else normalization)
    raw = np.asarray(image)
    method = norm.get("method")
    # 8/16-bit images: percentiles and medians by counting, the same values (kernels/ranks.py)
    ints = ranks.small_integers(raw) if method in ("foreground", "percentile") else None
    counts = None if ints is None else ranks.value_counts(ints)
    if ints is not None:
        # to_gray would only widen them to float64 (exactly), finite and in range: the steps
        # below read the integers as they are, and no float64 copy is made
        gray = ints
    else:
        gray = to_gray(raw, who=who)
        if not np.isfinite(gray).all():
            raise ValueError(f"{who}: contains NaN or inf values "
                             f"({int((~np.isfinite(gray)).sum())} pixels); fix or mask them "
                             "before predicting")
        check_pixel_range(who, gray)  # ±1.8e308 is finite, but its range is not
    if method == "foreground":
        low = norm.get("low", 1.0)
        lo = np.percentile(gray, low) if ints is None else ranks.percentile(*counts, low)
        signal = max(foreground_median(gray, ints) - lo,
                     norm.get("min_snr", MIN_SIGNAL_TO_NOISE) * noise_sigma(gray, ints))
        scale = signal / norm.get("level", 0.6)
        if not scale > 0:  # a flat image: nothing to stretch, just centre it
            scale = 1.0
        return _stretch(gray, lo, scale)
    elif method == "percentile":
        qs = [norm.get("low", 1.0), norm.get("high", 99.8)]
        lo, hi = (np.percentile(gray, qs) if ints is None
                  else [ranks.percentile(*counts, q) for q in qs])
        scale = hi - lo
        if scale <= 0:  # a flat image: nothing to stretch, just centre it
            scale = 1.0
        return _stretch(gray, lo, scale)
    elif method == "range":
        if np.issubdtype(raw.dtype, np.integer):
            out = gray / float(np.iinfo(raw.dtype).max)
        else:
            out = gray
    elif method == "none":
        out = gray
    else:
        raise ValueError(f"normalize: unknown method {method!r}; use 'foreground', "
                         "'percentile', 'range' or 'none'")
    return out.astype(np.float32)


def _stretch(gray: np.ndarray, lo: float, scale: float) -> np.ndarray:
    """((gray - lo) / scale) as float32: computed in float64 and rounded once, as the
    whole-array expression, without its two full-size float64 temporaries (compiled, on the
    pool's threads: kernels/smooth.py)."""
    return smooth_kernels.stretch(gray, lo, scale)


def normalize_channels(image: np.ndarray, normalization: dict[str, Any] | None = None, *,
                       who: str = "image") -> np.ndarray:
    """A multi-channel image (H, W, C), channels last, -> (C, H, W) float32, each channel
    normalised on its own by `normalize` (the input of a model of C input channels)."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"{who}: expected channels last (H, W, C), got shape {image.shape}")
    return np.stack([normalize(image[..., c], normalization, who=who)
                     for c in range(image.shape[-1])])


def otsu_threshold(counts: np.ndarray, centers: np.ndarray) -> float:
    """Otsu's threshold of a histogram: the bin centre that maximises the between-class
    variance w1 * w2 * (m1 - m2)^2 of the pixels at or below it (class 1) and above it.
    The same arithmetic as skimage.filters.threshold_otsu(hist=(counts, centers)) (empty end
    bins trimmed, counts in float32; tested equal), without importing skimage.filters, which
    imports scipy.ndimage: ~0.4 s at every start of `minunet predict`."""
    filled = np.flatnonzero(counts)
    counts, centers = counts[filled[0]:filled[-1] + 1], centers[filled[0]:filled[-1] + 1]
    if counts.size == 1:
        return centers[0]
    counts = counts.astype(np.float32)
    w1 = np.cumsum(counts)                                  # pixels in class 1, per split
    w2 = np.cumsum(counts[::-1])[::-1]                      # pixels in class 2
    m1 = np.cumsum(counts * centers) / w1                   # class 1's mean
    m2 = (np.cumsum((counts * centers)[::-1]) / w2[::-1])[::-1]
    between = w1[:-1] * w2[1:] * (m1[:-1] - m2[1:]) ** 2    # split after bin i
    # a NumPy scalar, not a Python float: `smooth > threshold` then compares in float64 as
    # with skimage's value (a Python float would be rounded to smooth's float32 first)
    return centers[np.argmax(between)]


def foreground_median(gray: np.ndarray, ints: np.ndarray | None = None) -> float:
    """Median of the pixels of gray (H, W) above Otsu's threshold of its smoothed copy.
    ints: gray's values as small integers (ranks.small_integers), to count instead of sort."""
    # scipy.ndimage.gaussian_filter(gray, FOREGROUND_SMOOTH), compiled: the same bits; its
    # min and max come from the same pass
    smooth, first, last = smooth_kernels.gaussian_filter_range(
        gray, smooth_kernels.gaussian_weights(FOREGROUND_SMOOTH))
    if last <= first:
        return last
    # skimage's threshold_otsu(smooth) without its flattened copy of the image: the same
    # np.histogram call skimage makes (256 bins over [min, max]), on smooth itself (compiled,
    # the same counts and edges)
    counts, edges = smooth_kernels.histogram(smooth, OTSU_BINS, first, last)
    threshold = otsu_threshold(counts, (edges[:-1] + edges[1:]) / 2.0)
    if ints is not None:
        # the counts of ints[smooth > threshold] in one pass, without the mask and the copy
        above = ranks.value_counts_above(ints, smooth, threshold)
        return ranks.median(*above) if above[0].size else float(gray.max())
    mask = smooth > threshold
    del smooth
    above = gray[mask]
    # overwrite_input: the median partitions `above` (a copy already) instead of copying it
    return float(np.median(above, overwrite_input=True)) if above.size else float(gray.max())


def noise_sigma(gray: np.ndarray, ints: np.ndarray | None = None) -> float:
    """The pixel noise's standard deviation in gray (H, W), robustly: the median absolute
    deviation of differences between horizontal neighbours (which cancel smooth structure
    such as cells and illumination), over sqrt(2) for the difference of two noisy pixels and
    0.6745 for a Gaussian's MAD. Noise correlated between neighbours reads lower.
    ints: gray's values as small integers (ranks.small_integers), to count instead of sort."""
    if gray.shape[1] < 2:
        return 0.0
    if ints is not None:
        counts = ranks.difference_counts(ints)
        mad = ranks.mad(*counts, ranks.median(*counts))
        return float(mad / (0.6745 * np.sqrt(2.0)))
    diff = np.diff(gray, axis=1).ravel()
    # in place (the medians partition diff: the values stay, their order does not matter), so
    # a 4096^2 image needs one float64 copy here, not four
    centre = np.median(diff, overwrite_input=True)
    np.abs(np.subtract(diff, centre, out=diff), out=diff)
    mad = np.median(diff, overwrite_input=True)
    return float(mad / (0.6745 * np.sqrt(2.0)))


def size_multiple(model: Module) -> int:
    """The factor image sides must be divisible by: 2**depth for a U-Net."""
    depth = getattr(model, "depth", None)
    if depth is None and hasattr(model, "config"):
        depth = model.config().get("depth")
    if depth is None:
        raise TypeError(f"predict: cannot tell the depth of a {type(model).__name__}: it needs a "
                        "`depth` attribute or config()['depth']")
    return 2 ** int(depth)


def receptive_radius(depth: int) -> int:
    """How far (in pixels) an output pixel of a U-Net with 3x3 convs can see, per side.

    Per level l (scale 2**l): two 3x3 convs on the way down (2 * 2**l), the 2x2 pool (2**l),
    two on the way up (2 * 2**l); the bottom adds two convs at scale 2**depth. The 2x2
    stride-2 transposed conv adds nothing. Sum: 7 * 2**depth - 5.
    """
    return 7 * 2**depth - 5


def predict(model: Module, image: np.ndarray, *, tile: int = DEFAULT_TILE,
            margin: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
            normalization: dict[str, Any] | None = None,
            normalized: bool = False, scale: float = 1.0,
            progress: bool = False, channel: int | str | None = None) -> np.ndarray:
    """Class probabilities (Kc, H, W) float32 for one image of any size.

    model:        a U-Net (or any Module with `depth`) mapping (N, Cin, h, w) -> (N, Kc, h, w)
    image:        the raw image (see `normalize`), or an already normalised (H, W) float32
                  array with `normalized=True` ((Cin, H, W), each channel normalised, for a
                  model of Cin > 1 input channels)
    tile:         side of each tile's kept core (default 1024), rounded up to a multiple of
                  2**depth; shrunk to the image when the image is smaller (a tile's height and
                  width shrink apart); the automatic margin may widen it by 2**depth px
    margin:       context added on each side of a tile (default: the receptive radius, rounded
                  up to a multiple of 2**depth, which makes tiling seamless, and widened so
                  that tiles are a multiple of FAST_WIDTH * 2**depth px wide; the core then
                  grows until they are a multiple of FAST_HEIGHT * 2**depth px tall)
    batch_size:   tiles per forward pass (default 1; memory grows with it)
    normalization: the settings stored in the checkpoint (default DEFAULT_NORMALIZATION)
    scale:        resize the normalised image by this factor before the network and the
                  probabilities back to (H, W) after it: objects of diameter d px are seen at
                  d * scale px (`rescale.scale_for(d, checkpoint diameter)`; 1 = as they are)
    progress:     a progress bar over the tile batches on a terminal (for large images; quiet
                  when stderr is not a terminal or the image is one batch)
    channel:      the channel to use of a multi-channel or RGB image (0-based; axes as in
                  `io.images.plain_axes`, e.g. (H, W, 3) or (C, H, W)); None: gray as it is,
                  RGB as luminance. Stacks: `mu.segment`, plane by plane.
    """
    if channel is not None:
        from .io.images import image_from_array

        planes, _ = image_from_array(image).select(channel)
        if len(planes) != 1:
            raise ValueError(f"predict: expected one image, got a stack of {len(planes)} "
                             "planes; use mu.segment, or predict one plane")
        image = planes[0]
    x = (np.asarray(image, dtype=np.float32) if normalized
         else normalize(image, normalization))
    if scale != 1.0:
        from . import rescale

        if not (np.isfinite(scale) and scale > 0):
            raise ValueError(f"predict: scale must be a positive number, got {scale!r}")
        small = rescale.resize(x, rescale.scaled_shape(x.shape[-2:], scale), order=1)
        probs = predict(model, small, tile=tile, margin=margin, batch_size=batch_size,
                        normalized=True, progress=progress)
        probs = np.clip(rescale.resize(probs, x.shape[-2:], order=1), 0.0, 1.0)  # (Kc, H, W)
        return probs / probs.sum(axis=0, keepdims=True)
    n_in = int(getattr(model, "in_channels", 1))
    if x.ndim == 2:
        x = x[None]                                                  # (1, H, W)
    if x.ndim != 3 or x.shape[0] != n_in:
        raise ValueError(f"predict: the model takes {n_in} input channel(s): expected one "
                         f"image {'(H, W)' if n_in == 1 else f'({n_in}, H, W), normalised'}, "
                         f"got shape {x.shape}")
    if normalized and not np.isfinite(x).all():
        raise ValueError("predict: the image contains NaN or inf values")
    if tile < 1 or batch_size < 1:
        raise ValueError(f"predict: tile ({tile}) and batch_size ({batch_size}) must be >= 1")
    H, W = x.shape[-2:]
    core_h, core_w, margin = tile_plan(model, (H, W), tile, margin)
    n_rows, n_cols = math.ceil(H / core_h), math.ceil(W / core_w)

    # Mirror the image beyond its edges: margin on every side, and up to a whole number of
    # tiles on the bottom/right. "reflect" needs the pad to be shorter than the image, so an
    # image smaller than the margin is reflected repeatedly. The mirrored image is never built:
    # rows[k] and cols[k] say which image row and column its k-th row and column would be, and
    # each tile is gathered from x through them (a 4096^2 image: 72 MiB less).
    pad_bottom = n_rows * core_h - H + margin
    pad_right = n_cols * core_w - W + margin
    if H == 1 or W == 1:  # _mirror_pad repeats the edge instead
        rows = np.clip(np.arange(-margin, H + pad_bottom), 0, H - 1)
        cols = np.clip(np.arange(-margin, W + pad_right), 0, W - 1)
    else:
        rows = _mirror_index(H, margin, pad_bottom)              # (Hp,) image rows
        cols = _mirror_index(W, margin, pad_right)               # (Wp,) image columns

    was_training, had_grad = model.training, model.grad_enabled
    model.eval()                   # batch norm uses its running statistics
    model.set_grad_enabled(False)  # keep no activations for a backward that never comes
    probs: np.ndarray | None = None
    dtype = model.dtype
    try:
        origins = [(r * core_h, c * core_w) for r in range(n_rows) for c in range(n_cols)]
        starts = range(0, len(origins), batch_size)
        if progress and len(starts) > 1 and sys.stderr.isatty():
            from tqdm import tqdm  # only for a bar on screen: its import takes 30 ms

            starts = tqdm(starts, desc=f"tiles of {H}x{W}", unit="batch", leave=False,
                          file=sys.stderr)
        side_h, side_w = core_h + 2 * margin, core_w + 2 * margin
        keep = getattr(model, "forward_window", None)   # kernels/unet.py's UNet
        batch = None
        for start in starts:
            batch_origins = origins[start:start + batch_size]
            if batch is None or len(batch) != len(batch_origins):   # one buffer, reused
                batch = np.empty((len(batch_origins), n_in, side_h, side_w), dtype=dtype)
            for i, (r0, c0) in enumerate(batch_origins):              # batch: (N, Cin, h, w)
                tiles.gather_tile(x, rows[r0:r0 + side_h], cols[c0:c0 + side_w], batch[i])
            # the cores only: the fast U-Net's decoder then skips most of the margins
            logits = (model(batch) if keep is None                          # (N, Kc, h, w)
                      else keep(batch, (margin, margin, core_h, core_w)))
            if probs is None:
                probs = np.empty((logits.shape[1], H, W), dtype=np.float32)  # (Kc, H, W)
            for i, (r0, c0) in enumerate(batch_origins):
                h = min(core_h, H - r0)
                w = min(core_w, W - c0)
                core = logits[i, :, margin:margin + h, margin:margin + w]
                if core.dtype == np.float32:   # softmax(core) written into its place
                    tiles.softmax_into(core, probs, r0, c0)
                else:
                    probs[:, r0:r0 + h, c0:c0 + w] = softmax(core[None])[0]
            del logits
    finally:
        model.train(was_training)
        model.set_grad_enabled(had_grad)
    assert probs is not None
    return probs


def tile_plan(model: Module, shape: tuple[int, int], tile: int = DEFAULT_TILE,
              margin: int | None = None) -> tuple[int, int, int]:
    """(core_h, core_w, margin): the tiles `predict` cuts an (H, W) image into, with the
    tile and margin arguments of `predict`: each tile is (core_h + 2 margin, core_w + 2 margin)
    px and keeps its core."""
    mult = size_multiple(model)
    fast = margin is None
    if margin is None:
        margin = receptive_radius(int(math.log2(mult)))
    margin = _round_up(margin, mult)
    H, W = shape
    core_h = min(_round_up(tile, mult), _round_up(H, mult))   # a tile's kept rows
    core_w = min(_round_up(tile, mult), _round_up(W, mult))   # and columns
    if fast:
        core_w, margin = fast_tile_width(core_w, margin, mult)
        core_h = _round_up(core_h + 2 * margin, FAST_HEIGHT * mult) - 2 * margin
    return core_h, core_w, margin


def memory_estimate(model: Module, shape: tuple[int, int], tile: int = DEFAULT_TILE,
                    batch_size: int = DEFAULT_BATCH_SIZE) -> int | None:
    """About how many bytes `predict` of one (H, W) image allocates at its peak (the default
    margin): the network's working set on a batch of tiles, and the image-sized
    arrays (the normalised image, the probabilities). None for a model that is not a U-Net of
    known width. An estimate, for `minunet predict` to map that much memory ahead
    (`kernels.memory.Prefault`), not a limit.

    The U-Net's inference working set is about WORKING_SET_PER_CHANNEL bytes per tile pixel
    and top-level channel: malloc's heap grew by 18.5-22 bytes (20.4 for the bundled model) on
    one tile of 1152 x 1152 or 384 x 1152 px, of depth 2-4, 8-32 base channels, 1 or 3 inputs
    (measured with mallinfo2, 2026-12-07). Over a whole `predict` of a 1100 x 1100 image the
    estimate was 0.95-1.03x the heap's growth for depth 3 (8 or 16 channels) and depth 2 (16),
    1.18x for depth 4 (16) and 1.34x for depth 2 with 8 channels (`tests/test_memory.py`)."""
    base = getattr(model, "base_channels", None)
    if not isinstance(base, int) or len(shape) != 2 or min(shape) < 1:
        return None
    core_h, core_w, margin = tile_plan(model, shape, tile)
    tile_px = (core_h + 2 * margin) * (core_w + 2 * margin) * batch_size
    wide = np.dtype(getattr(model, "dtype", np.float32)).itemsize // 4   # float64: twice
    classes = int(getattr(model, "num_classes", 3))
    return (wide * WORKING_SET_PER_CHANNEL * base * tile_px
            + 4 * (1 + classes) * shape[0] * shape[1])


def fast_tile_width(core: int, margin: int, mult: int) -> tuple[int, int]:
    """(core, margin) widened so that core + 2 * margin is a multiple of FAST_WIDTH * mult:
    the margin grows by whole multiples of mult (the pooling grid) and the core takes the rest,
    so core >= the given core, margin >= the given margin, core + 2 * margin the smallest such
    width. E.g. (1024, 56, 8) -> (1024, 64): 1152 px, 1152 / 8 = 144 = 9 * 16."""
    side = _round_up(core + 2 * margin, FAST_WIDTH * mult)
    margin += (side - core - 2 * margin) // 2 // mult * mult
    return side - 2 * margin, margin


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the class axis 1 of (N, Kc, H, W), stable (the max is subtracted first)."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _round_up(value: int, multiple: int) -> int:
    return -(-int(value) // multiple) * multiple


def _mirror_index(n: int, before: int, after: int) -> np.ndarray:
    """(before + n + after,) int: the index along an axis of length n > 1 that each position
    of `_mirror_pad`'s output along that axis copies."""
    index = np.repeat(np.arange(n)[:, None], 2, axis=1)                  # (n, 2)
    return _mirror_pad(index, before, after, 0, 0)[:, 0]


def _mirror_pad(x: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """np.pad(mode="reflect") of the last two axes of x (..., H, W), repeated while the pad is
    longer than the image allows."""
    keep = [(0, 0)] * (x.ndim - 2)
    while top or bottom or left or right:
        H, W = x.shape[-2:]
        t, b = min(top, H - 1), min(bottom, H - 1)
        lft, rgt = min(left, W - 1), min(right, W - 1)
        if H == 1 or W == 1:  # nothing to reflect: repeat the edge instead
            return np.pad(x, [*keep, (top, bottom), (left, right)], mode="edge")
        x = np.pad(x, [*keep, (t, b), (lft, rgt)], mode="reflect")
        top, bottom, left, right = top - t, bottom - b, left - lft, right - rgt
    return x
