"""Label images as ImageJ ROIs: one polygon per object, traced along the pixels' edges.

    rois = mu.to_rois(labels)                  # [roifile.ImagejRoi, ...], one per label id
    mu.write_rois(labels, "cells_rois.zip")    # Fiji's ROI Manager and QuPath open the zip

Why edges, not centres. A contour through pixel CENTRES (skimage's find_contours, OpenCV's
findContours) cuts every boundary pixel in half: filled back, the polygon loses about half a
pixel all round, a quarter of a 10-px nucleus (the Cellpose bug, cellpose#581). Here the polygon
runs along the pixels' sides, as Fiji's wand tool traces them (a TRACED ROI), so the pixels whose
centres lie inside it are exactly the object's pixels.

Pixel (row r, column c) is the square [c, c + 1] x [r, r + 1] in ImageJ's (x, y) coordinates.
Every side between an object pixel and a non-object pixel is an edge, directed so that the object
lies on its right (clockwise on the screen, y pointing down):

    top    (c, r)         -> (c + 1, r)          right  (c + 1, r)     -> (c + 1, r + 1)
    bottom (c + 1, r + 1) -> (c, r + 1)          left   (c, r + 1)     -> (c, r)

Edges chain into closed loops: an object's outer boundary runs clockwise, each hole's boundary
counter-clockwise. Where two pixels touch only at a corner, the walk turns right (towards the
object), which keeps such pixels in separate loops (the filling is the same either way; the
turn only has to be a fixed rule so that every edge is used once). An ImageJ polygon is one
loop, so the loops of an object with holes (or of a label in several pieces) are joined by
zero-width bridges: a path along the pixel grid to the next loop and back the same way. A
bridge encloses no area and no pixel centre lies on it, so filling the polygon (even-odd or
non-zero rule) still gives exactly the object's pixels; Fiji draws it as a thin line.

Coordinates. ImageJ stores a polygon as 16-bit offsets from its bounding box, whose corners are
16-bit too. Images up to 32767 px a side use those integer coordinates; beyond that the ROI
carries float32 "sub-pixel" coordinates (exact for integers below 2**24), which ImageJ reads as
absolute positions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

INT16_MAX = 32767  # ImageJ's ROI header and offsets are signed 16-bit
# (dx, dy) of a step east, south, west, north: directions 0..3, clockwise on the screen
STEPS = ((1, 0), (0, 1), (-1, 0), (0, -1))


def outline(mask: np.ndarray) -> np.ndarray:
    """The polygon (V, 2) int64 (x, y) whose filling is exactly the True pixels of mask (H, W).

    One closed loop per boundary, joined by zero-width bridges (see the module docstring); only
    the corners are kept. Raises ValueError for an empty mask.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"outline: expected a 2-D mask (H, W), got shape {mask.shape}")
    if not mask.any():
        raise ValueError("outline: the mask is empty, there is nothing to trace")
    loops = [_corners(loop) for loop in _loops(mask)]
    loops.sort(key=lambda loop: (loop[0][1], loop[0][0]))  # top to bottom: reproducible
    polygon = list(loops[0])
    anchor = loops[0][0]
    for loop in loops[1:]:  # to the loop's first corner and back, along the grid
        corner = (loop[0][0], anchor[1])
        polygon += [anchor, corner, *loop, loop[0], corner]
    return np.array(_no_repeats(polygon), dtype=np.int64)


def _loops(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """The closed boundary walks of mask, each a list of (x, y) vertices (first not repeated)."""
    inside = np.pad(mask, 1)  # (H + 2, W + 2): pixels outside the image count as background
    core = inside[1:-1, 1:-1]
    r, c = np.nonzero(core & ~inside[:-2, 1:-1])        # top sides
    edges = [(c, r, 0)]
    r, c = np.nonzero(core & ~inside[1:-1, 2:])         # right sides
    edges.append((c + 1, r, 1))
    r, c = np.nonzero(core & ~inside[2:, 1:-1])         # bottom sides
    edges.append((c + 1, r + 1, 2))
    r, c = np.nonzero(core & ~inside[1:-1, :-2])        # left sides
    edges.append((c, r + 1, 3))
    leaving: dict[tuple[int, int], list[int]] = {}      # start vertex -> directions leaving it
    for xs, ys, d in edges:
        for x, y in zip(xs.tolist(), ys.tolist(), strict=True):
            leaving.setdefault((x, y), []).append(d)
    loops = []
    while leaving:
        start = min(leaving)  # any vertex works; min makes the result reproducible
        vertex, d = start, leaving[start][0]
        loop = []
        while True:
            ways = leaving[vertex]
            # right turn first (towards the object), then straight on, then left
            d = next(t for t in ((d + 1) % 4, d, (d + 3) % 4) if t in ways) if loop else d
            ways.remove(d)
            if not ways:
                del leaving[vertex]
            loop.append(vertex)
            vertex = (vertex[0] + STEPS[d][0], vertex[1] + STEPS[d][1])
            if vertex == start:
                break
        loops.append(loop)
    return loops


def _corners(loop: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The vertices of a closed loop where it turns (straight runs collapse to their ends)."""
    n = len(loop)
    keep = []
    for i in range(n):
        (x0, y0), (x1, y1), (x2, y2) = loop[i - 1], loop[i], loop[(i + 1) % n]
        if (x1 - x0, y1 - y0) != (x2 - x1, y2 - y1):  # unit steps: a turn changes the step
            keep.append(loop[i])
    return keep


def _no_repeats(polygon: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = [p for i, p in enumerate(polygon) if i == 0 or p != polygon[i - 1]]
    while len(out) > 1 and out[-1] == out[0]:
        out.pop()
    return out


def to_rois(labels: np.ndarray) -> list[Any]:
    """One ImageJ polygon ROI (`roifile.ImagejRoi`, type TRACED) per object of labels (H, W).

    The ROIs are named by their label id ("1", "2", ...) and come in increasing id order; each
    covers exactly its object's pixels (see the module docstring). Label 0 is background.
    A label stack (Z, H, W) gives the ROIs of each plane in turn, each with its plane as
    ImageJ's 1-based position and named "PLANE-ID" (e.g. "3-17"), as Fiji's ROI Manager keeps
    ROIs of a stack.
    """
    labels = np.asarray(labels)
    if labels.ndim == 3 and np.issubdtype(labels.dtype, np.integer):
        rois = []
        for z, plane in enumerate(labels, start=1):
            for roi in to_rois(plane):
                roi.name, roi.position = f"{z}-{roi.name}", z
                rois.append(roi)
        return rois
    import roifile
    from scipy import ndimage

    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"to_rois: expected a 2-D integer label image (or a (Z, H, W) stack), "
                         f"got {labels.dtype} of shape {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError("to_rois: label ids must be >= 0 (0 is the background)")
    large = max(labels.shape) > INT16_MAX
    rois = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        mask = labels[box] == index
        points = outline(mask) + np.array([box[1].start, box[0].start])  # (V, 2) x, y
        roi = roifile.ImagejRoi.frompoints(points.astype(np.float32) if large else points,
                                           name=str(index))
        roi.roitype = roifile.ROI_TYPE.TRACED  # what Fiji's wand makes: an outline of pixels
        rois.append(roi)
    return rois


def write_rois(labels: np.ndarray, path: str | os.PathLike) -> Path:
    """Write `to_rois(labels)` as an ImageJ ROI zip at path (atomically); return the path.

    An image without objects gives a zip without ROIs. Existing files are replaced only by
    their caller's choice: the command never passes an existing path.
    """
    import roifile

    from .io.files import write_atomic

    rois = to_rois(labels)
    return write_atomic(Path(path), lambda tmp: roifile.roiwrite(tmp, rois, mode="w"))
