"""The synthetic cell model: star-convex cells on an uneven background, imaged through a blurry,
noisy microscope. One call draws one image and its exact instance labels.

The model, in the order it is drawn (every knob lives in `presets.STANDARD`):

1. Outlines. Each cell is an ellipse of mean radius `radius` (px, std `radius_std`; both
   grow per image by exp(U(0, radius_spread)), the density falling with the area) with
   aspect ratio 1 + |N(0, elongation)| (at most `max_aspect`) and a random orientation; with
   probability `fragments` it is a small fragment instead, its radius times U(FRAGMENT_SCALE).
   The ellipse's radius is multiplied by
   1 + sum_j a_j cos(j psi + phase_j), j = 2..5, a_j ~ U(0, irregularity) * 2 / j: a star-convex
   outline that bends at low orders and wrinkles at high ones.
2. Placement. The cell count is Poisson(density) per 256x256 px of image. With probability
   `touching` a cell is placed against a random earlier cell along a random direction, at a
   centre distance of (sum of the two outline radii along it) * U(1 - overlap, 1); otherwise it
   goes anywhere at least 0.9 x the sum of the mean radii away from every other centre (so
   near-misses touch, more often in denser fields).
3. Labels. Cells are painted in order, so a later cell occludes an earlier one; then
   `instances.make_connected` makes every id one 4-connected piece of >= min_size pixels.
4. Intensity. Each cell gets a brightness above background ~ N(contrast, contrast_std) (clipped
   to [0.5, 1.5] * contrast), times a heavy-tailed gain exp(N(0, brightness_sigma)) (median 1;
   sigma 0.6 gives a p95 : p5 spread of about 7), and with probability `bright_fraction` times
   `bright_gain` more (the few very bright cells that set an image's top percentiles); dimmed
   towards its rim by (1 - edge_falloff * rho^2) (rho = 0 at the centre, 1 on the outline),
   times (1 + texture * T), T a smooth unit-variance random field of correlation
   length `texture_scale` px (its amplitude varied per image by `texture_spread`). What real
   nuclei add, each off in `standard` (`_nuclear_detail`): clumpy chromatin (a lognormal
   texture of amplitude `chromatin`), dark nucleoli and bright foci (`nucleoli`, `spots` per
   cell), and a fraction `defocus` of cells out of the focal plane (blurred).
5. Unlabelled distractors: `debris` small bright irregular specks per 256x256 px (radius 2-4.5 px,
   brightness debris_intensity * U(0.6, 1.4), painted off the cells) and `blobs` out-of-focus
   cell-sized blobs (brightness blob_intensity * U(0.6, 1.4), edges softened as by a Gaussian
   blur of `blob_blur` px).
6. Illumination. (background + cells + distractors) * (1 + linear gradient of total span
   `gradient` in a random direction - vignetting * r^2 / 2), r the distance from a slightly
   off-centre point in units of half the image side.
7. Per-image exposure (off in `standard`): the scene becomes gain * scene ** gamma + offset,
   log gain ~ U(-gain_spread, gain_spread), log gamma ~ U(-gamma_spread, gamma_spread),
   offset ~ U(0, offset); blur and photons vary per image by blur * U(1 - blur_spread,
   1 + blur_spread) and photons * exp(U(-photons_spread, photons_spread)).
8. Optics and camera. Gaussian PSF of `blur` px, Poisson shot noise with `photons` expected
   photons at intensity 1 (drawn as a normal of equal mean and variance where the mean count
   is >= 30), Gaussian read noise of std `read_noise`, clipped to [0, 1].
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.special import ndtr

from . import kernels as K
from .instances import make_connected

REFERENCE_AREA = 256 * 256          # densities are counts per 256 x 256 px of image
HARMONIC_ORDERS = np.arange(2, 6)   # outline wiggles: 2 = bean, 3 = triangle, 4-5 = wrinkles
FRAGMENT_SCALE = (0.3, 0.6)         # a fragment's radius is this fraction of a cell's
RADIUS_CLIP = (0.6, 1.5)            # a cell's radius stays within these multiples of `radius`
PLACEMENT_TRIES = 30                # attempts to place one cell before giving up on it
TOUCH_MIN_SEPARATION = 0.75         # a touching cell keeps its centre this far (x sum of radii)
                                    # from every other centre, so it never swallows a third cell
FREE_MIN_SEPARATION = 0.9          # freely placed centres keep 0.9 x the sum of mean radii apart:
                                    # near-misses touch, more often the denser the field
CONTRAST_CLIP = (0.5, 1.5)          # per-cell brightness stays within these multiples of contrast
DEBRIS_RADIUS = (2.0, 4.5)          # debris specks: well under the smallest cells
DEBRIS_IRREGULARITY = 0.25          # debris is jagged
INTENSITY_SPREAD = (0.6, 1.4)       # distractor brightness multipliers
BLOB_RADIUS = (0.8, 1.3)            # out-of-focus blobs are cell-sized (x radius)
VIGNETTE_CENTRE_SHIFT = 0.3         # optical centre within +-0.3 half-sides of the image centre
BLOB_EDGE_SIGMAS = 3.0              # a blob's soft edge is drawn out to 3 blur stds
NORMAL_SHOT_FROM = 30.0             # mean photon count from which shot noise is drawn as normal
SPOT_REACH = 0.7                    # nucleoli and foci sit within 70 % of the way to the rim
SPOT_SIZE_SPREAD = (0.7, 1.3)       # an image's spot size is its radius knob times this
SPOT_RADIUS = 1.0                   # bright foci (Gaussian std, px): smaller than nucleoli


def synth_image(rng: np.random.Generator, p: dict, size: tuple[int, int]
                ) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image (H, W) float32 in [0, 1] and its instance labels (H, W) int32."""
    H, W = size
    area_ratio = H * W / REFERENCE_AREA
    if p["radius_spread"] > 0:                           # drawn only when on (see _cell_gains)
        p = _image_cell_size(rng, p)
    table = _place_cells(rng, p, H, W, area_ratio)
    labels, rho = _paint(table, H, W)
    labels = make_connected(labels, min_size=int(p["min_size"]))
    n = int(labels.max())

    contrast = np.clip(rng.normal(p["contrast"], p["contrast_std"], n),
                       CONTRAST_CLIP[0] * p["contrast"], CONTRAST_CLIP[1] * p["contrast"])
    contrast *= _cell_gains(rng, p, n)
    brightness = np.concatenate([[0.0], contrast]).astype(np.float32)[labels]   # (H, W)
    texture = _smooth_field(rng, H, W, p["texture_scale"])
    detail = 1.0                                          # this image's texture strength
    if p["texture_spread"] > 0:                          # drawn only when on (see _cell_gains)
        detail = np.exp(rng.uniform(-p["texture_spread"], p["texture_spread"]))
    cells = brightness * (1 - np.float32(p["edge_falloff"]) * rho**2)
    cells *= 1 + np.float32(p["texture"] * detail) * texture   # background pixels stay 0
    cells = _nuclear_detail(rng, p, cells, labels, rho, detail)

    scene = _debris(rng, p, labels, area_ratio)
    scene += _blobs(rng, p, H, W, area_ratio)
    scene += cells
    scene += np.float32(p["background"])
    scene *= _illumination(rng, p, H, W)
    scene, blur, photons = _exposure(rng, p, scene)
    if blur > 0:
        scene = gaussian_filter(scene, blur, mode="reflect")
    image = _camera(rng, scene, photons, float(p["read_noise"]))
    return np.clip(image, 0.0, 1.0, out=image), labels


def _image_cell_size(rng: np.random.Generator, p: dict) -> dict:
    """This image's cells, all larger together (images differ in magnification and cell
    type): radius and radius_std times f = exp(U(0, radius_spread)), and density / f^2, so
    that the cells cover about the same share of the image. Only larger: debris and nucleoli
    keep their sizes in pixels, and smaller cells would look like debris (a model trained on
    sizes spread both ways took debris for cells: not kept, see docs/accuracy.md)."""
    f = float(np.exp(rng.uniform(0.0, p["radius_spread"])))
    return {**p, "radius": p["radius"] * f, "radius_std": p["radius_std"] * f,
            "density": p["density"] / f**2}


# ---- outlines --------------------------------------------------------------------------------

def _draw_shape(rng: np.random.Generator, radius: float, radius_std: float, elongation: float,
                irregularity: float, max_aspect: float = 2.5, fragments: float = 0.0
                ) -> tuple[np.ndarray, float]:
    """One outline as a shape-table row (see `kernels`), centre unset, and its mean radius."""
    r = float(np.clip(rng.normal(radius, radius_std), RADIUS_CLIP[0] * radius,
                      RADIUS_CLIP[1] * radius))
    if fragments > 0 and rng.random() < fragments:     # drawn only when on: `standard` unchanged
        r *= rng.uniform(*FRAGMENT_SCALE)
    aspect = 1.0 + min(abs(rng.normal(0.0, elongation)), max(max_aspect - 1.0, 0.0))
    amps = irregularity * rng.random(HARMONIC_ORDERS.size) * 2.0 / HARMONIC_ORDERS
    theta = rng.uniform(0.0, np.pi)
    phases = rng.uniform(0.0, 2 * np.pi, HARMONIC_ORDERS.size)
    row = np.zeros(K.SHAPE_COLUMNS)
    row[K.A], row[K.B] = r * np.sqrt(aspect), r / np.sqrt(aspect)
    row[K.ROT_RE], row[K.ROT_IM] = np.cos(theta), -np.sin(theta)      # e^(-i theta)
    row[K.COEFF_RE:K.COEFF_RE + K.N_HARMONICS] = amps * np.cos(phases)
    row[K.COEFF_IM:K.COEFF_IM + K.N_HARMONICS] = amps * np.sin(phases)
    row[K.REACH] = row[K.A] * (1.0 + amps.sum())
    return row, r


def _place_cells(rng: np.random.Generator, p: dict, H: int, W: int, area_ratio: float
                 ) -> np.ndarray:
    """Shape table (K, SHAPE_COLUMNS) of cells, some placed against an earlier cell."""
    n_target = rng.poisson(p["density"] * area_ratio)
    table = np.zeros((n_target, K.SHAPE_COLUMNS))
    radii = np.zeros(n_target)
    k = 0
    for _ in range(n_target):
        row, r = _draw_shape(rng, p["radius"], p["radius_std"], p["elongation"],
                             p["irregularity"], p["max_aspect"], p["fragments"])
        touch = k > 0 and rng.random() < p["touching"]
        for _try in range(PLACEMENT_TRIES):
            if touch:
                j = int(rng.integers(k))
                psi = rng.uniform(0.0, 2 * np.pi)
                ux, uy = np.cos(psi), np.sin(psi)
                reach = (K.outline_radius(table[j], ux, uy)
                         + K.outline_radius(row, -ux, -uy))
                dist = reach * rng.uniform(1.0 - p["overlap"], 1.0)
                cy, cx = table[j, K.CY] + dist * uy, table[j, K.CX] + dist * ux
                min_sep = TOUCH_MIN_SEPARATION
            else:
                cy, cx = rng.uniform((0.0, 0.0), (H, W))
                min_sep = FREE_MIN_SEPARATION
            if not (0 <= cy < H and 0 <= cx < W):
                continue
            gaps = (np.hypot(table[:k, K.CY] - cy, table[:k, K.CX] - cx)
                    - min_sep * (radii[:k] + r))
            if k == 0 or gaps.min() >= 0 or (touch and _only_partner(gaps, j)):
                break
        else:
            continue
        row[K.CY], row[K.CX] = cy, cx
        table[k], radii[k] = row, r
        k += 1
    return table[:k]


def _only_partner(gaps: np.ndarray, j: int) -> bool:
    """A touching cell may come closer than TOUCH_MIN_SEPARATION only to its partner j."""
    others = np.delete(gaps, j)
    return others.size == 0 or others.min() >= 0


def _paint(table: np.ndarray, H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise outlines in order (later occludes earlier): labels (H, W) and rho (H, W)."""
    labels = np.zeros((H, W), np.int32)
    rho = np.zeros((H, W), np.float32)
    K.paint_cells(table, labels, rho)
    return labels, rho


def paint_reference(table: np.ndarray, H: int, W: int, mode: str,
                    levels: np.ndarray | None = None, soft: float = 1.0,
                    dtype: type = np.float64) -> tuple[np.ndarray | None, np.ndarray]:
    """Plain NumPy version of the painting kernels (the tests' oracle).

    mode "cells": (labels, rho) as `paint_cells`; "debris" / "blobs": (None, layer) as
    `paint_debris` / `paint_blobs`."""
    labels = np.zeros((H, W), np.int32)
    layer = np.zeros((H, W), dtype)
    for k, row in enumerate(table):
        reach = row[K.REACH] + 1.0
        cy, cx = row[K.CY], row[K.CX]
        y0, y1 = max(int(np.floor(cy - reach)), 0), min(int(np.floor(cy + reach)) + 2, H)
        x0, x1 = max(int(np.floor(cx - reach)), 0), min(int(np.floor(cx + reach)) + 2, W)
        if y0 >= y1 or x0 >= x1:
            continue
        offset = (np.arange(x0, x1)[None, :] + 0.5 - row[K.CX]) \
            + 1j * (np.arange(y0, y1)[:, None] + 0.5 - row[K.CY])
        dist = np.abs(offset)
        z = np.where(dist > 0, offset / np.maximum(dist, 1e-300), 1.0)
        w = z * (row[K.ROT_RE] + 1j * row[K.ROT_IM])
        a, b = row[K.A], row[K.B]
        coeffs = row[K.COEFF_RE:K.COEFF_RE + 4] + 1j * row[K.COEFF_IM:K.COEFF_IM + 4]
        wiggle = sum(c * z ** order for c, order in zip(coeffs, HARMONIC_ORDERS, strict=True))
        edge = a * b / np.sqrt((b * w.real) ** 2 + (a * w.imag) ** 2) * (1.0 + wiggle.real)
        inside = dist <= edge
        box = (slice(y0, y1), slice(x0, x1))
        if mode == "cells":
            labels[box][inside] = k + 1
            layer[box][inside] = (dist / edge)[inside]
        elif mode == "debris":
            layer[box] = np.maximum(layer[box], np.where(inside, levels[k], 0))
        else:
            layer[box] += levels[k] * ndtr((edge - dist) / soft)
    return (labels if mode == "cells" else None), layer


# ---- brightness and exposure ---------------------------------------------------------------------

def _cell_gains(rng: np.random.Generator, p: dict, n: int) -> np.ndarray:
    """Per-cell brightness gains (n,): lognormal exp(N(0, brightness_sigma)), and bright_gain
    for a fraction bright_fraction of cells. Nothing is drawn for a knob that is off, so
    presets without them get the same images as before the knobs existed."""
    gains = np.ones(n)
    if p["brightness_sigma"] > 0:
        gains *= np.exp(rng.normal(0.0, p["brightness_sigma"], n))
    if p["bright_fraction"] > 0:
        gains *= np.where(rng.random(n) < p["bright_fraction"], p["bright_gain"], 1.0)
    return gains


def _exposure(rng: np.random.Generator, p: dict, scene: np.ndarray
              ) -> tuple[np.ndarray, float, float]:
    """Per-image gain, gamma and offset applied to the scene (H, W), and this image's blur and
    photon count. Draws only for the knobs that are on (see `_cell_gains`)."""
    blur, photons = float(p["blur"]), float(p["photons"])
    if p["gamma_spread"] > 0:
        gamma = np.exp(rng.uniform(-p["gamma_spread"], p["gamma_spread"]))
        scene = np.clip(scene, 0.0, None) ** np.float32(gamma)
    if p["gain_spread"] > 0:
        scene = scene * np.float32(np.exp(rng.uniform(-p["gain_spread"], p["gain_spread"])))
    if p["offset"] > 0:
        scene = scene + np.float32(rng.uniform(0.0, p["offset"]))
    if p["blur_spread"] > 0:
        blur *= rng.uniform(1.0 - p["blur_spread"], 1.0 + p["blur_spread"])
    if p["photons_spread"] > 0:
        photons *= np.exp(rng.uniform(-p["photons_spread"], p["photons_spread"]))
    return scene.astype(np.float32, copy=False), blur, photons


# ---- what real nuclei add: chromatin, nucleoli, foci, defocus -----------------------------------

def _nuclear_detail(rng: np.random.Generator, p: dict, cells: np.ndarray, labels: np.ndarray,
                    rho: np.ndarray, detail: float = 1.0) -> np.ndarray:
    """Chromatin, nucleoli, bright foci and out-of-focus cells on the cell layer (H, W); each
    is drawn only when its knob is on, so presets without them keep their images.

    chromatin: cells * exp(c F - c^2 / 2), c = chromatin * detail (the image's texture
        strength), F a unit-variance field of length chromatin_scale:
        a lognormal texture of mean 1 and coefficient of variation ~c, bright clumps between
        darker gaps (a Gaussian texture would be as often dark as bright).
    nucleoli / spots: Poisson(knob * cells) unit-height Gaussian spots at random points of the
        cells' inner part (rho < SPOT_REACH), darkening by nucleolus_depth / brightening by
        spot_gain at their centre.
    defocus: a fraction of the cells is blurred by defocus_blur px (their light spreads
        past the outline, their edge is soft and their peak lower)."""
    H, W = cells.shape
    n = int(labels.max())
    if p["chromatin"] > 0:
        c = np.float32(p["chromatin"] * detail)
        cells *= np.exp(c * _smooth_field(rng, H, W, p["chromatin_scale"]) - c * c / 2)
    if p["nucleoli"] > 0:
        dark = _spots(rng, labels, rho, p["nucleoli"] * n, p["nucleolus_radius"])
        cells *= 1 - np.float32(p["nucleolus_depth"]) * np.minimum(dark, 1)
    if p["spots"] > 0:
        cells *= 1 + np.float32(p["spot_gain"]) * _spots(rng, labels, rho, p["spots"] * n,
                                                           SPOT_RADIUS)
    if p["defocus"] > 0:
        chosen = np.concatenate([[False], rng.random(n) < p["defocus"]])[labels]  # (H, W)
        blurred = gaussian_filter(np.where(chosen, cells, 0), p["defocus_blur"], mode="reflect")
        cells = np.where(chosen, 0, cells) + blurred
    return cells.astype(np.float32, copy=False)


def _spots(rng: np.random.Generator, labels: np.ndarray, rho: np.ndarray, mean_count: float,
           radius: float) -> np.ndarray:
    """Poisson(mean_count) Gaussian spots of std radius * U(SPOT_SIZE_SPREAD) and height 1
    (H, W), centred on random pixels of the cells' inner part (rho < SPOT_REACH)."""
    inner = np.flatnonzero((labels > 0) & (rho < SPOT_REACH))
    count = rng.poisson(mean_count)
    impulses = np.zeros(labels.size, np.float32)
    if count == 0 or inner.size == 0:
        return impulses.reshape(labels.shape)
    np.add.at(impulses, rng.choice(inner, count), np.float32(1))
    sigma = radius * rng.uniform(*SPOT_SIZE_SPREAD)
    spread = gaussian_filter(impulses.reshape(labels.shape), sigma, mode="constant")
    return spread * np.float32(2 * np.pi * sigma**2)      # a lone spot peaks at ~1


# ---- distractors, illumination, texture ----------------------------------------------------------

def _debris(rng: np.random.Generator, p: dict, labels: np.ndarray, area_ratio: float
            ) -> np.ndarray:
    """Small jagged bright specks, never on a cell pixel (they are unlabelled)."""
    H, W = labels.shape
    n = rng.poisson(p["debris"] * area_ratio)
    table = np.zeros((n, K.SHAPE_COLUMNS))
    levels = np.zeros(n, np.float32)
    for k in range(n):
        table[k], _ = _draw_shape(rng, rng.uniform(*DEBRIS_RADIUS), 0.0, 0.3,
                                  DEBRIS_IRREGULARITY)
        table[k, K.CY], table[k, K.CX] = rng.uniform((0.0, 0.0), (H, W))
        levels[k] = p["debris_intensity"] * rng.uniform(*INTENSITY_SPREAD)
    layer = np.zeros((H, W), np.float32)
    K.paint_debris(table, levels, layer)
    layer[labels > 0] = 0.0
    return layer


def _blobs(rng: np.random.Generator, p: dict, H: int, W: int, area_ratio: float) -> np.ndarray:
    """Out-of-focus cells from another plane: cell-sized, dimmer, with soft edges.

    A blob blurred by a Gaussian of std s has (for s well under its radius) the edge profile
    Phi((R - dist) / s) of a blurred half-plane; drawing that directly on each blob's box costs
    far less than filtering the whole image."""
    n = rng.poisson(p["blobs"] * area_ratio)
    soft = max(float(p["blob_blur"]), 1e-3)
    table = np.zeros((n, K.SHAPE_COLUMNS))
    levels = np.zeros(n, np.float32)
    for k in range(n):
        table[k], _ = _draw_shape(rng, p["radius"] * rng.uniform(*BLOB_RADIUS), 0.0,
                                  p["elongation"], p["irregularity"], p["max_aspect"])
        table[k, K.CY], table[k, K.CX] = rng.uniform((0.0, 0.0), (H, W))
        table[k, K.REACH] += BLOB_EDGE_SIGMAS * soft      # room for the soft edge
        levels[k] = p["blob_intensity"] * rng.uniform(*INTENSITY_SPREAD)
    layer = np.zeros((H, W), np.float32)
    K.paint_blobs(table, levels, soft, layer)
    return layer


def _illumination(rng: np.random.Generator, p: dict, H: int, W: int) -> np.ndarray:
    """Multiplicative illumination (H, W): a linear gradient and a vignette.

    Both are sums of a function of the row and a function of the column, so the field is one
    broadcast add of two profiles."""
    y = (np.arange(H) + 0.5) / H * 2 - 1                 # -1..1 across the image
    x = (np.arange(W) + 0.5) / W * 2 - 1
    angle = rng.uniform(0.0, 2 * np.pi)
    oy, ox = rng.uniform(-VIGNETTE_CENTRE_SHIFT, VIGNETTE_CENTRE_SHIFT, 2)
    g, v = p["gradient"] / 2, p["vignetting"] / 2
    rows = 1.0 + g * np.sin(angle) * y - v * (y - oy) ** 2
    cols = g * np.cos(angle) * x - v * (x - ox) ** 2
    return (rows[:, None] + cols[None, :]).astype(np.float32)


def _camera(rng: np.random.Generator, scene: np.ndarray, photons: float, read_noise: float
            ) -> np.ndarray:
    """Shot noise and read noise on a scene (H, W) in intensity units.

    Photon counts are Poisson(photons * scene), plus Gaussian read noise. Where the mean count
    is at least NORMAL_SHOT_FROM the count is drawn as N(mean, mean) (skewness 1/sqrt(mean) <
    0.18 there), and the two noises then sum to one normal draw of variance
    scene / photons + read_noise^2; dimmer pixels get an exact Poisson count."""
    clean = np.clip(scene, 0.0, None)
    mean = clean * np.float32(photons)
    noise = rng.standard_normal(scene.shape, dtype=np.float32)
    std = np.sqrt(clean / np.float32(photons) + np.float32(read_noise) ** 2)
    image = clean + std * noise
    dim = mean < NORMAL_SHOT_FROM
    if dim.any():
        image[dim] = (rng.poisson(mean[dim]) / np.float32(photons)
                      + np.float32(read_noise) * noise[dim])
    return image


def _smooth_field(rng: np.random.Generator, H: int, W: int, scale: float) -> np.ndarray:
    """Smooth random field (H, W) with unit variance and correlation length `scale` px."""
    white = rng.standard_normal((H, W), dtype=np.float32)
    if scale <= 0:
        return white
    # white noise filtered by a 2-D Gaussian of std s has variance 1 / (4 pi s^2)
    return gaussian_filter(white, scale, mode="wrap") * np.float32(2.0 * np.sqrt(np.pi) * scale)
