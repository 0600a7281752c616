"""Seeded watershed (`postprocess.three_class_instances`): skimage's algorithm, step for step,
in one compiled loop with a leaner queue.

The oracle is `skimage.segmentation.watershed(image, markers, mask=mask)` (connectivity 1, no
compactness, no watershed line), which the tests compare with, to the label. Its algorithm:
every marker pixel (inside the mask, raster order) goes on a priority queue with age 0; then,
until the queue is empty, the smallest item is popped (by value, then age: the earlier pushed
first), and each of its 4 neighbours (up, left, right, down) that is in the mask and still
unlabelled takes the popped pixel's label and is pushed with the next age (ages count from 2)
and the larger of its own image value and the popped item's value (a flood never goes
downhill). Items of equal value and age (the markers of equal value) leave the
queue in an order that depends on the binary heap's exact moves, and that order decides which
seed a pixel between two such seeds joins; so the heap here makes the same moves (the same
sift-up on push, the same left-before-right sift-down on pop) on the same keys.

What differs is only how the queue is stored, for speed and memory: one uint64 key per item,
(the float32 value's bits mapped to an unsigned order) << 32 | age, so that one integer
comparison orders (value, age) as skimage's two comparisons do, and the pixel's index beside
it: 12 bytes per item where skimage keeps a 40-byte item and a pointer; the image stays float32
(skimage copies it to float64, padded), and the mask's edge is checked instead of padded.
On a 4096 x 4096 image of the bundled model (4.2 M foreground pixels, 2.8 M of them seeds):
`bench/bench_segment.py` has the time of the whole post-processing (docs/speed.md).
"""

from __future__ import annotations

import numpy as np
from numba import njit

MAX_PIXELS = 2**31 - 1   # indices are int32 and ages fit in the key's low 32 bits


def seeded_watershed(image: np.ndarray, markers: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """skimage.segmentation.watershed(image, markers, mask=mask) for float32 image (H, W),
    integer markers (H, W) (0: none), bool mask (H, W) -> int32 labels (H, W)."""
    image = np.ascontiguousarray(image, dtype=np.float32)
    if image.size > MAX_PIXELS:
        raise ValueError(f"seeded_watershed: at most {MAX_PIXELS} pixels, got {image.size}")
    out = np.ascontiguousarray(markers, dtype=np.int32).copy()
    _flood(image.view(np.uint32), np.ascontiguousarray(mask, dtype=np.bool_), out)
    return out


@njit(cache=True, inline="always")
def _order(bits: np.uint32) -> np.uint64:
    """A float32's bits as an unsigned integer in the floats' order: the sign bit flipped for
    positives, all bits flipped for negatives (-0.0 made +0.0 first: the floats are equal)."""
    if bits == np.uint32(0x80000000):
        bits = np.uint32(0)
    if bits & np.uint32(0x80000000):
        return np.uint64(~bits)
    return np.uint64(bits | np.uint32(0x80000000))


@njit(cache=True, inline="always")
def _key(order: np.uint64, age: int) -> np.uint64:
    """(value, age) as one unsigned integer that sorts as skimage's two comparisons do."""
    return (order << np.uint64(32)) | np.uint64(age)


@njit(cache=True, inline="always")
def _push(keys: np.ndarray, where: np.ndarray, items: int, key: np.uint64, index: int) -> None:
    """skimage's heappush: append, then swap up while smaller than the parent."""
    child = items
    keys[child] = key
    where[child] = index
    while child > 0:
        parent = (child + 1) // 2 - 1
        if keys[child] < keys[parent]:
            keys[child], keys[parent] = keys[parent], keys[child]
            where[child], where[parent] = where[parent], where[child]
            child = parent
        else:
            break


@njit(cache=True, inline="always")
def _sift_down(keys: np.ndarray, where: np.ndarray, items: int) -> None:
    """skimage's heappop after the last item moved to the root: swap it down with the smaller
    child (the left one on a tie) while that child is smaller."""
    i = 0
    while True:
        left = 2 * i + 1
        right = left + 1
        if left >= items:
            break
        smallest = i
        if keys[left] < keys[i]:
            smallest = left
        if right < items and keys[right] < keys[smallest]:
            smallest = right
        if smallest == i:
            break
        keys[i], keys[smallest] = keys[smallest], keys[i]
        where[i], where[smallest] = where[smallest], where[i]
        i = smallest


@njit(cache=True)
def _flood(bits: np.ndarray, mask: np.ndarray, out: np.ndarray) -> None:
    """The watershed proper: bits (H, W) uint32 (the float32 image), mask (H, W), out (H, W)
    int32 holding the markers on entry and the labels on return."""
    H, W = bits.shape
    capacity = 0
    for i in range(H):                    # each pixel is pushed at most once
        for j in range(W):
            if mask[i, j]:
                capacity += 1
            else:
                out[i, j] = 0             # skimage: markers * mask
    keys = np.empty(capacity, np.uint64)
    where = np.empty(capacity, np.int32)  # the pixel, as i * W + j
    items = 0
    for i in range(H):                    # the markers, in raster order, age 0
        for j in range(W):
            if out[i, j] != 0:
                _push(keys, where, items, _key(_order(bits[i, j]), 0), i * W + j)
                items += 1
    age = 1
    while items > 0:
        index = where[0]
        level = keys[0] >> np.uint64(32)  # the popped value, as _order
        items -= 1
        if items > 0:
            keys[0] = keys[items]
            where[0] = where[items]
            _sift_down(keys, where, items)
        i, j = index // W, index % W
        label = out[i, j]
        for step in range(4):             # up, left, right, down: skimage's neighbour order
            if step == 0:
                ni, nj = i - 1, j
            elif step == 1:
                ni, nj = i, j - 1
            elif step == 2:
                ni, nj = i, j + 1
            else:
                ni, nj = i + 1, j
            if ni < 0 or ni >= H or nj < 0 or nj >= W:
                continue
            if not mask[ni, nj] or out[ni, nj] != 0:
                continue
            age += 1
            out[ni, nj] = label           # labelled when pushed: nothing cheaper comes later
            value = max(_order(bits[ni, nj]), level)   # never below the pixel it came from
            _push(keys, where, items, _key(value, age), ni * W + nj)
            items += 1
