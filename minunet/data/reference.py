"""The public notebook's generator (lucasmtse/Introduction_CNN_U_NET), vectorised.

The notebook draws, on 0-255 (then divides by 255):
  background       every pixel uniform in `background`
  cells            `n_cells` clouds; each is max(min, int(N(mean, std))) draws at
                   centre + (int(N(0, sigma)), int(N(0, sigma))) clipped to the image, the
                   centre uniform in [margin, side - margin); every drawn pixel gets an intensity
                   uniform in `cell_intensity` and is marked foreground
  salt             `n_salt` pixels at uniform positions, intensity in `salt_intensity`, written
                   only where the mask is 0
  distractors      `n_distractors` clouds like the cells' (their own draws/sigma), intensity in
                   `distractor_intensity`, written only where the mask is 0, never foreground

Here a cloud's thousands of draws are one multinomial over a window of offsets (the truncated
Gaussian's mass function, product of the two axes), so a cloud costs a few microseconds. Since
every write draws a fresh uniform intensity, the last write to a pixel is uniform too: each
hit pixel gets one uniform value. The window is +-WINDOW_SIGMAS sigma; the mass beyond it is
below 1e-14 per draw and is dropped.

Instance ids (the notebook's mask is binary): each foreground pixel belongs to the cloud that
put the most draws on it (ties: the later cloud); `make_connected` then hands stray pieces cut
off by a neighbouring cloud to that neighbour. A cloud's outlying draws that touch no other
cloud keep the cloud's id, so here (unlike the `standard` model) an instance is one cloud, not
always one 4-connected piece. The foreground never changes: the binary mask is the recipe's.
At sizes other than 256 x 256 the counts scale with the image area.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

from .instances import make_connected

RECIPE_SIDE = 256                   # the recipe's image side; counts scale with area from it
WINDOW_SIGMAS = 8                   # offsets beyond 8 sigma: < 1e-14 of the draws, dropped
GRAY_LEVELS = 255.0                 # the notebook divides 0-255 values by 255


def offset_pmf(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Offsets d = -M..M and P(int(N(0, sigma)) = d) (int truncates towards zero)."""
    M = int(np.ceil(WINDOW_SIGMAS * sigma))
    d = np.arange(-M, M + 1)
    a = np.abs(d)
    # d = 0 collects (-1, 1); d = k > 0 collects [k, k + 1); symmetric for negative d
    pmf = np.where(a == 0, ndtr(1 / sigma) - ndtr(-1 / sigma),
                   ndtr((a + 1) / sigma) - ndtr(a / sigma))
    return d, pmf


def cloud_hits(rng: np.random.Generator, centres: np.ndarray, draws: np.ndarray, sigma: float,
               H: int, W: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels hit by each cloud's draws: (cloud index, flat pixel index, number of draws)."""
    d, pmf = offset_pmf(sigma)
    dy, dx = np.meshgrid(d, d, indexing="ij")
    p2 = np.outer(pmf, pmf).ravel()
    order = np.argsort(-p2, kind="stable")    # likely bins first: the sampler stops early
    p2, dy, dx = p2[order], dy.ravel()[order], dx.ravel()[order]
    counts = rng.multinomial(draws, p2 / p2.sum())                    # (clouds, bins)
    cloud, b = np.nonzero(counts)
    rows = np.clip(centres[cloud, 0] + dy[b], 0, H - 1)               # the notebook clips
    cols = np.clip(centres[cloud, 1] + dx[b], 0, W - 1)
    key = cloud.astype(np.int64) * (H * W) + rows * W + cols
    # clipping can send two offsets of one cloud to the same border pixel: add them up
    key, inverse = np.unique(key, return_inverse=True)
    n = np.bincount(inverse, weights=counts[cloud, b]).astype(np.int64)
    return key // (H * W), key % (H * W), n


def reference_image(rng: np.random.Generator, p: dict, size: tuple[int, int]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """One image (H, W) float32 in [0, 1] and instance labels (H, W) int32 from the recipe."""
    H, W = size
    area = H * W / RECIPE_SIDE**2
    image = rng.integers(*p["background"], size=H * W).astype(np.float32)   # flat (H*W,)

    centres, draws = _clouds(rng, p["n_cells"], p["cell_draws"], p["centre_margin"], area, H, W)
    cloud, pixel, n = cloud_hits(rng, centres, draws, p["cell_sigma"], H, W)
    owner = np.zeros(H * W, np.int32)
    order = np.lexsort((cloud, n, pixel))           # per pixel: most draws last, ties: later
    last = np.r_[pixel[order][1:] != pixel[order][:-1], True]
    owner[pixel[order][last]] = cloud[order][last] + 1
    foreground = owner > 0
    image[foreground] = rng.integers(*p["cell_intensity"], size=int(foreground.sum()))

    n_salt = _scaled_count(rng, p["n_salt"], area)
    where = rng.integers(0, H * W, n_salt)
    value = rng.integers(*p["salt_intensity"], size=n_salt)
    off = ~foreground[where]
    image[where[off]] = value[off]

    centres, draws = _clouds(rng, p["n_distractors"], p["distractor_draws"],
                             p["centre_margin"], area, H, W)
    _, pixel, _ = cloud_hits(rng, centres, draws, p["distractor_sigma"], H, W)
    pixel = np.unique(pixel)
    pixel = pixel[~foreground[pixel]]
    image[pixel] = rng.integers(*p["distractor_intensity"], size=pixel.size)

    labels = make_connected(owner.reshape(H, W), min_size=1, orphans_keep_id=True)
    return (image / GRAY_LEVELS).reshape(H, W).astype(np.float32), labels


def _scaled_count(rng: np.random.Generator, low_high: list, area: float) -> int:
    """A count uniform in [low, high), scaled by the image area relative to 256 x 256."""
    low, high = (max(1, round(v * area)) for v in low_high)
    return int(rng.integers(low, max(high, low + 1)))


def _clouds(rng: np.random.Generator, count: list, draws: list, margin: int, area: float,
            H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """Cloud centres (clouds, 2) and draw counts (clouds,) as the recipe draws them."""
    n = _scaled_count(rng, count, area)
    lo_y, hi_y = min(margin, H // 2), max(H - margin, H // 2 + 1)
    lo_x, hi_x = min(margin, W // 2), max(W - margin, W // 2 + 1)
    centres = np.stack([rng.integers(lo_y, hi_y, n), rng.integers(lo_x, hi_x, n)], axis=1)
    minimum, mean, std = draws
    n_draws = np.maximum(minimum, rng.normal(mean, std, n).astype(np.int64))
    return centres, n_draws
