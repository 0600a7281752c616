"""Training targets from instance labels: three classes and the U-Net paper's weight map.

three_class: 0 background, 1 cell interior, 2 cell boundary. Boundary pixels are cell pixels
with a 4-neighbour of another id (skimage's find_boundaries, mode "inner", which
`inner_boundaries` reproduces faster), so two touching cells are always separated by two
boundary pixels (one from each side) and a network that predicts interiors can split them.

weight_map (Ronneberger et al. 2015, eq. 2):
    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))
d1, d2: distances from background pixel x to the nearest and second-nearest cell. The border
term is applied on background pixels only (inside a cell d1 = 0 and the term would only re-weight
the cell). w_c balances the three classes of `three_class` in each image: w_c = P / (K * P_c),
P pixels, P_c of class c, K classes present, so every present class carries the same total weight.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import distance_transform_edt, find_objects

from .kernels import nearest_two_sq

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
N_CLASSES = 3
BORDER_SIGMAS = 5.0     # d2 is only computed within 5 sigma of each cell: beyond it the border
                        # term is below w0 * exp(-12.5) = 3.7e-6 * w0


def three_class(labels: np.ndarray) -> np.ndarray:
    """Class map (H, W) or (N, H, W) int64: 0 background, 1 interior, 2 boundary."""
    labels = _check_labels("three_class", labels)
    if labels.ndim == 3:
        return np.stack([three_class(one) for one in labels])
    classes = (labels > 0).astype(np.int64)
    classes[inner_boundaries(labels)] = BOUNDARY
    return classes


def inner_boundaries(labels: np.ndarray) -> np.ndarray:
    """Cell pixels (H, W) bool with a 4-neighbour of another id: skimage's
    find_boundaries(labels, connectivity=1, mode="inner"), in four array comparisons."""
    differs = np.zeros(labels.shape, bool)
    across = labels[:, 1:] != labels[:, :-1]          # (H, W-1): left/right neighbours differ
    differs[:, 1:] |= across
    differs[:, :-1] |= across
    down = labels[1:, :] != labels[:-1, :]            # (H-1, W): up/down neighbours differ
    differs[1:, :] |= down
    differs[:-1, :] |= down
    return differs & (labels > 0)


def weight_map(labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0,
               balance: bool = True) -> np.ndarray:
    """The U-Net weight map (H, W) or (N, H, W) float32 (see the module docstring).

    balance=False drops the class-balancing term (w_c = 1 for every pixel): the loss then
    counts every pixel alike and only the border term is added. Balancing makes rare cell
    pixels weigh as much in total as the background, which helps find every object but moves
    the network's decision towards "cell" (more false-positive pixels): without it the
    foreground probability is calibrated for pixel scores such as pixel F1.
    """
    labels = _check_labels("weight_map", labels)
    if sigma <= 0 or w0 < 0:
        raise ValueError(f"weight_map: need sigma > 0 and w0 >= 0, got sigma={sigma}, w0={w0}")
    if labels.ndim == 3:
        return np.stack([weight_map(one, w0, sigma, balance) for one in labels])
    classes = three_class(labels)
    if balance:
        counts = np.bincount(classes.ravel(), minlength=N_CLASSES)
        present = counts > 0
        class_weight = np.where(present, classes.size / (present.sum() * np.maximum(counts, 1)),
                                0)
    else:
        class_weight = np.ones(N_CLASSES)
    weight = class_weight.astype(np.float32)[classes]
    d1, d2 = nearest_two_distances(labels, BORDER_SIGMAS * sigma)
    near = (labels == 0) & np.isfinite(d2)            # background with two cells in reach
    gap = d1[near] + d2[near]
    weight[near] += (w0 * np.exp(-gap**2 / (2 * sigma**2))).astype(np.float32)
    return weight


def nearest_two_distances(labels: np.ndarray, reach: float) -> tuple[np.ndarray, np.ndarray]:
    """Distances (H, W) to the nearest and second-nearest instance, inf beyond `reach` px.

    Each instance's distance transform is computed only on its bounding box grown by `reach`
    (outside it the distance exceeds `reach`), so the cost follows the cells, not the image;
    the loops are the Numba kernel `kernels.nearest_two_sq`."""
    objects = find_objects(labels)
    boxes = np.full((len(objects), 4), -1, np.int64)           # (K, 4): y0, y1, x0, x1
    for k, box in enumerate(objects):
        if box is not None:
            boxes[k] = box[0].start, box[0].stop, box[1].start, box[1].stop
    d1sq, d2sq = nearest_two_sq(labels, boxes, int(np.ceil(reach)))
    return np.sqrt(d1sq), np.sqrt(d2sq)


def nearest_two_distances_reference(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plain version: one whole-image distance transform per instance, then sort."""
    ids = np.unique(labels[labels > 0])
    if ids.size == 0:
        return np.full(labels.shape, np.inf), np.full(labels.shape, np.inf)
    stack = np.stack([distance_transform_edt(labels != k) for k in ids])   # (cells, H, W)
    stack = np.concatenate([stack, np.full((2, *labels.shape), np.inf)])
    stack.sort(axis=0)
    return stack[0], stack[1]


def _check_labels(who: str, labels: np.ndarray) -> np.ndarray:
    if not isinstance(labels, np.ndarray) or not np.issubdtype(labels.dtype, np.integer):
        got = labels.dtype if isinstance(labels, np.ndarray) else type(labels).__name__
        raise TypeError(f"{who}: labels must be an integer array of instance ids, got {got}")
    if labels.ndim not in (2, 3):
        raise ValueError(f"{who}: labels must be (H, W) or (N, H, W), got shape {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"{who}: labels must be >= 0 (0 = background), got {labels.min()}")
    return labels
