"""Numba kernels for data generation and targets, each with a plain reference the tests use.

Painting star-convex outlines (`paint_cells`, `paint_debris`, `paint_blobs`; reference:
`synth.paint_reference`). A shape is one row of a (K, SHAPE_COLUMNS) float64 table (see the
column names below); the outline radius along the unit direction (ux, uy) is
    ellipse(w) * (1 + Re(sum_j c_j z^j)),  z = ux + i uy,  w = z * rotation,
    ellipse(w) = a b / sqrt((b Re w)^2 + (a Im w)^2),  j = 2..5,
and a pixel belongs to the shape when its centre lies within that radius.

Distances to the nearest and second-nearest cell for the weight map:
`nearest_two_sq(labels, boxes, reach)` computes, for every pixel, the squared Euclidean distance
to the nearest and the second-nearest instance, each instance's distance transform done on its
bounding box grown by `reach` (outside it the distance exceeds `reach` and is left at +inf).
The distance transform is exact: a scan per column (1-D distance to the nearest cell pixel),
then Felzenszwalb and Huttenlocher's lower envelope of parabolas per row.

The plain reference is `targets.nearest_two_distances_reference` (one scipy distance transform
of the whole image per instance, then a sort), which the tests compare against.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

FAR = 1e30      # "no cell pixel in this column": larger than any squared distance in an image

# columns of a shape table row
CY, CX, A, B, ROT_RE, ROT_IM, REACH = range(7)
COEFF_RE = 7                     # 4 harmonic coefficients (orders 2..5), real parts ...
COEFF_IM = 11                    # ... and imaginary parts
N_HARMONICS = 4
SHAPE_COLUMNS = 15


@njit(cache=True)
def outline_radius(shape: np.ndarray, ux: float, uy: float) -> float:
    """Distance from the centre to the outline of `shape` along the unit vector (ux, uy)."""
    wr = ux * shape[ROT_RE] - uy * shape[ROT_IM]          # w = z * rotation
    wi = ux * shape[ROT_IM] + uy * shape[ROT_RE]
    a, b = shape[A], shape[B]
    ellipse = a * b / np.sqrt((b * wr) ** 2 + (a * wi) ** 2)
    pr, pi = 0.0, 0.0                                     # Horner: poly = sum_j c_j z^j
    for j in range(N_HARMONICS - 1, -1, -1):
        pr, pi = pr + shape[COEFF_RE + j], pi + shape[COEFF_IM + j]
        pr, pi = pr * ux - pi * uy, pr * uy + pi * ux
    pr, pi = pr * ux - pi * uy, pr * uy + pi * ux         # orders start at 2: one more z
    return ellipse * (1.0 + pr)


@njit(cache=True)
def _box(shape: np.ndarray, H: int, W: int) -> tuple[int, int, int, int]:
    """Bounding box [y0, y1) x [x0, x1) of a shape's reach, clipped to the image."""
    reach = shape[REACH] + 1.0
    cy, cx = shape[CY], shape[CX]
    return (max(int(np.floor(cy - reach)), 0), min(int(np.floor(cy + reach)) + 2, H),
            max(int(np.floor(cx - reach)), 0), min(int(np.floor(cx + reach)) + 2, W))


@njit(cache=True)
def _polar(shape: np.ndarray, y: int, x: int) -> tuple[float, float]:
    """Distance of pixel centre (y, x) from the shape's centre, and the outline radius there."""
    dy = y + 0.5 - shape[CY]
    dx = x + 0.5 - shape[CX]
    dist = np.sqrt(dx * dx + dy * dy)
    if dist > 0:
        return dist, outline_radius(shape, dx / dist, dy / dist)
    return dist, outline_radius(shape, 1.0, 0.0)


@njit(cache=True)
def paint_cells(shapes: np.ndarray, labels: np.ndarray, rho: np.ndarray) -> None:
    """Paint shapes k = 0.. in order as ids k + 1 (later occludes earlier) into labels (H, W);
    rho (H, W) gets dist / outline radius (0 at the centre, 1 on the outline)."""
    H, W = labels.shape
    for k in range(shapes.shape[0]):
        y0, y1, x0, x1 = _box(shapes[k], H, W)
        for y in range(y0, y1):
            for x in range(x0, x1):
                dist, edge = _polar(shapes[k], y, x)
                if dist <= edge:
                    labels[y, x] = k + 1
                    rho[y, x] = dist / edge


@njit(cache=True)
def paint_debris(shapes: np.ndarray, levels: np.ndarray, layer: np.ndarray) -> None:
    """layer (H, W) = max(layer, level_k) inside each shape k."""
    H, W = layer.shape
    for k in range(shapes.shape[0]):
        y0, y1, x0, x1 = _box(shapes[k], H, W)
        for y in range(y0, y1):
            for x in range(x0, x1):
                dist, edge = _polar(shapes[k], y, x)
                if dist <= edge and levels[k] > layer[y, x]:
                    layer[y, x] = levels[k]


@njit(cache=True)
def paint_blobs(shapes: np.ndarray, levels: np.ndarray, soft: float, layer: np.ndarray) -> None:
    """layer (H, W) += level_k * Phi((outline radius - dist) / soft) on each shape's box:
    a shape with edges softened as by a Gaussian blur of std `soft` px."""
    H, W = layer.shape
    for k in range(shapes.shape[0]):
        y0, y1, x0, x1 = _box(shapes[k], H, W)
        for y in range(y0, y1):
            for x in range(x0, x1):
                dist, edge = _polar(shapes[k], y, x)
                # Phi(t) = erfc(-t / sqrt 2) / 2
                layer[y, x] += levels[k] * 0.5 * math.erfc((dist - edge) / (soft * np.sqrt(2.0)))


@njit(cache=True)
def nearest_two_sq(labels: np.ndarray, boxes: np.ndarray, reach: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """labels (H, W) int; boxes (K, 4) int rows [y0, y1, x0, x1) of ids 1..K (y0 = -1: absent).

    Returns d1sq, d2sq (H, W) float64: squared distances to the nearest and second-nearest cell.
    """
    H, W = labels.shape
    d1sq = np.full((H, W), np.inf)
    d2sq = np.full((H, W), np.inf)
    side = max(H, W)
    col = np.empty((H, W))                    # squared 1-D distances down each column
    f = np.empty(side)
    out = np.empty(side)
    v = np.empty(side, np.int64)              # parabola vertices of the lower envelope
    z = np.empty(side + 1)                    # boundaries between parabolas
    for k in range(boxes.shape[0]):
        if boxes[k, 0] < 0:
            continue
        y0, y1 = max(boxes[k, 0] - reach, 0), min(boxes[k, 1] + reach, H)
        x0, x1 = max(boxes[k, 2] - reach, 0), min(boxes[k, 3] + reach, W)
        cell = k + 1
        # pass 1: per column, distance to the nearest pixel of `cell` above or below
        for x in range(x0, x1):
            last = -1
            for y in range(y0, y1):
                if labels[y, x] == cell:
                    last = y
                col[y, x] = FAR if last < 0 else float(y - last) ** 2
            last = -1
            for y in range(y1 - 1, y0 - 1, -1):
                if labels[y, x] == cell:
                    last = y
                if last >= 0:
                    below = float(last - y) ** 2
                    if below < col[y, x]:
                        col[y, x] = below
        # pass 2: per row, lower envelope of parabolas col[y, q] + (x - q)^2
        n = x1 - x0
        for y in range(y0, y1):
            for i in range(n):
                f[i] = col[y, x0 + i]
            _envelope(f, n, out, v, z)
            for i in range(n):
                d = out[i]
                x = x0 + i
                if d < d1sq[y, x]:
                    d2sq[y, x] = d1sq[y, x]
                    d1sq[y, x] = d
                elif d < d2sq[y, x]:
                    d2sq[y, x] = d
    return d1sq, d2sq


@njit(cache=True)
def _envelope(f: np.ndarray, n: int, out: np.ndarray, v: np.ndarray, z: np.ndarray) -> None:
    """out[i] = min_q f[q] + (i - q)^2 for i, q in 0..n-1 (Felzenszwalb & Huttenlocher 2012)."""
    k = 0
    v[0] = 0
    z[0] = -np.inf
    z[1] = np.inf
    for q in range(1, n):
        s = ((f[q] + q * q) - (f[v[k]] + v[k] * v[k])) / (2.0 * (q - v[k]))
        while s <= z[k]:
            k -= 1
            s = ((f[q] + q * q) - (f[v[k]] + v[k] * v[k])) / (2.0 * (q - v[k]))
        k += 1
        v[k] = q
        z[k] = s
        z[k + 1] = np.inf
    k = 0
    for i in range(n):
        while z[k + 1] < i:
            k += 1
        out[i] = (i - v[k]) ** 2 + f[v[k]]
