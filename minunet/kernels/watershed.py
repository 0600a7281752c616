"""Seeded watershed (`postprocess.three_class_instances`): skimage's algorithm, one connected
piece of the mask at a time, in compiled loops, the pieces shared between threads.

The algorithm is `skimage.segmentation.watershed(image, markers, mask=mask)`'s (connectivity 1,
no compactness, no watershed line): every marker pixel inside the mask goes on a priority
queue; then, until the queue is empty, the smallest item is popped, and each of its 4
neighbours (up, left, right, down) that is in the mask and still unlabelled takes the popped
pixel's label and is pushed with the larger of its own image value and the popped item's value
(a flood never goes downhill). Items are ordered by (value, age): the markers first, then every
later item by the order it was pushed.

One rule is ours: markers of equal value leave the queue in raster order. skimage gives them
all age 0 and lets its binary heap's moves decide between them, an order that depends on every
other item in the heap. With this rule the queue's order is total, and that makes three things
possible without changing a single label the rule decides:
- the mask's 4-connected pieces are flooded one at a time, each with a queue of its own (a
  flood never leaves its piece, and within a piece the items keep their order), small enough to
  stay in the core's cache: on one core the bundled model's 4096 x 4096 map took 0.67 s
  against 2.45-2.6 s with one queue over the image (both under another job's load);
- a marker whose 4 neighbours are all labelled or outside the mask is never queued (popping it
  would label nothing);
- the pieces are handed to `kernels.threads.parallel_for`'s threads.
skimage's labels and these differ only where two markers of equal value compete for a pixel
(tests/test_postprocess.py: identical where marker values are distinct; equal to the plain
heapq version `kernels.reference.seeded_watershed_reference` everywhere, ties included; the
same labels as skimage on every image of `bench/segment_equal.py`).

Each queue keeps one uint64 key per item, (the float32 value's bits mapped to an unsigned
order) << 32 | age, so that one integer comparison orders (value, age), and the pixel's index
beside it; the image stays float32 and the mask's edge is checked instead of padded.

The steps around it, each one compiled pass with the labels of the NumPy/scipy steps it
replaces (tests/test_postprocess.py): `foreground_and_elevation` (the foreground mask and
the elevation, NumPy's float arithmetic in one pass of row bands on the pool's threads),
`seed_labels` (ndimage.label of the interior map over its threshold, small seeds dropped,
cleared outside the foreground), the unseeded pieces' numbers (`seeded_watershed(...,
unseeded=True)`) and `relabel` (small objects removed, ids made sequential, without
np.bincount's int64 copy).
"""

from __future__ import annotations

import numpy as np
from numba import njit

MAX_PIXELS = 2**31 - 1   # indices are int32 and ages fit in the key's low 32 bits
SERIAL_PIXELS = 2**17    # masks smaller than this are flooded in the calling thread
ITEMS_PER_THREAD = 4     # pieces are grouped into about this many work items per thread


def seeded_watershed(image: np.ndarray, markers: np.ndarray, mask: np.ndarray, *,
                     unseeded: bool = False,
                     pieces: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """The seeded watershed for float32 image (H, W), integer markers (H, W) (0: none), bool
    mask (H, W) -> int32 labels (H, W); markers outside the mask are dropped.

    unseeded=True: each piece of the mask that holds no marker (which no flood reaches) also
    becomes an object, numbered after the largest marker in the mask in the raster order of
    the pieces' first pixels: what `ndimage.label` of the unreached pixels, added on top, gives
    (`postprocess._add_unseeded`).

    pieces: `mask_pieces(mask)`, if already found (`postprocess` finds them while it labels
    the seeds).

    Everything that touches the whole image runs on the pool's threads: the markers copied
    (zero outside the mask) in bands of rows, then each group of pieces finds its own fronts
    and floods them; only the numbering of the unseeded pieces (their pixels only) is serial.
    Before, one serial pass zeroed the markers outside the mask and found every piece's
    front (13 ms of the flood's 62 ms on the bundled model's 2048^2 map); A/B in one process,
    2 threads of an Intel Xeon: 71 -> 61 ms (min of 11), the same labels."""
    from .threads import get_num_threads, parallel_for, parallel_rows

    image = np.ascontiguousarray(image, dtype=np.float32)
    if image.size > MAX_PIXELS:
        raise ValueError(f"seeded_watershed: at most {MAX_PIXELS} pixels, got {image.size}")
    markers = np.ascontiguousarray(markers, dtype=np.int32)
    mask = np.ascontiguousarray(mask, dtype=np.bool_)
    pixels, starts = _mask_pieces(mask) if pieces is None else pieces
    serial = image.size < SERIAL_PIXELS or get_num_threads() == 1
    out = np.empty(mask.shape, np.int32)
    parallel_rows(lambda first, stop: _masked_copy(markers, mask, out, first, stop),
                  mask.shape[0], _band(mask.shape), serial=serial)
    bits = image.view(np.uint32)
    serial = pixels.size < SERIAL_PIXELS or get_num_threads() == 1
    n_items = 1 if serial else ITEMS_PER_THREAD * get_num_threads()
    # piece boundaries that split the mask's pixels into n_items groups of about equal size
    bounds = np.unique(np.searchsorted(starts, np.linspace(0, pixels.size, n_items + 1)))
    bounds[-1] = starts.size - 1
    n_pieces = starts.size - 1
    seeded = np.empty(n_pieces, np.bool_)        # piece k holds a marker
    top = np.zeros(n_pieces, np.int32)           # the largest marker in piece k (or 0)

    def item(k: int, slot: int) -> None:
        _flood_pieces(bits, mask, out, pixels, starts, bounds[k], bounds[k + 1], seeded, top)

    parallel_for(item, bounds.size - 1, serial=serial, blas=False)
    if unseeded and not seeded.all():
        _label_unseeded(out, pixels, starts, seeded, int(top.max()))
    return out


BAND_PIXELS = 1 << 16  # the row bands of the element-wise passes hold about this many pixels


def _band(shape: tuple[int, ...]) -> int:
    """Rows per band for `parallel_rows` over an (H, W) image: about BAND_PIXELS pixels."""
    return max(1, BAND_PIXELS // max(1, shape[-1]))


@njit(cache=True, nogil=True)
def _masked_copy(markers: np.ndarray, mask: np.ndarray, out: np.ndarray, first: int,
                 stop: int) -> None:
    """Rows first..stop-1 of out = markers inside the mask, 0 outside (skimage: markers *
    mask)."""
    W = mask.shape[1]
    for i in range(first, stop):
        for j in range(W):
            out[i, j] = markers[i, j] if mask[i, j] else 0


def mask_pieces(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 4-connected pieces of a bool mask (H, W), for `seeded_watershed(..., pieces=)`."""
    return _mask_pieces(np.ascontiguousarray(mask, dtype=np.bool_))


@njit(cache=True, nogil=True)
def _mask_pieces(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mask's 4-connected pieces, found by breadth-first search from their first pixel in
    raster order: pixels (n_mask,) int32 (i * W + j), piece k's at pixels[starts[k]:starts[k +
    1]], in the search's order."""
    H, W = mask.shape
    flat_mask = mask.ravel()
    count = 0
    for p in range(H * W):
        count += flat_mask[p]
    pixels = np.empty(count, np.int32)
    seen = np.zeros(H * W, np.bool_)
    starts = np.empty(1024, np.int64)
    n_pieces = 0
    size = 0
    for start in range(H * W):
        if not flat_mask[start] or seen[start]:   # flat: no division per pixel (30 -> 19 ms)
            continue
        if n_pieces + 1 >= starts.size:
            starts = _grown(starts)
        starts[n_pieces] = size
        n_pieces += 1
        seen[start] = True
        pixels[size] = start
        head = size
        size += 1
        while head < size:                # the queue is the piece's own stretch of pixels
            p = pixels[head]
            head += 1
            i, j = p // W, p % W
            if i > 0 and mask[i - 1, j] and not seen[p - W]:
                seen[p - W] = True
                pixels[size] = p - W
                size += 1
            if j > 0 and mask[i, j - 1] and not seen[p - 1]:
                seen[p - 1] = True
                pixels[size] = p - 1
                size += 1
            if j + 1 < W and mask[i, j + 1] and not seen[p + 1]:
                seen[p + 1] = True
                pixels[size] = p + 1
                size += 1
            if i + 1 < H and mask[i + 1, j] and not seen[p + W]:
                seen[p + W] = True
                pixels[size] = p + W
                size += 1
    starts[n_pieces] = size
    return pixels, starts[:n_pieces + 1].copy()


@njit(cache=True, inline="always")
def _grown(a: np.ndarray) -> np.ndarray:
    b = np.empty(2 * a.size, a.dtype)
    b[:a.size] = a
    return b


@njit(cache=True, nogil=True)
def _label_unseeded(out: np.ndarray, pixels: np.ndarray, starts: np.ndarray,
                    seeded: np.ndarray, top: int) -> None:
    """Number the pieces without a marker after the largest marker (top), in the pieces'
    order."""
    flat = out.ravel()
    next_id = max(0, top)
    for k in range(starts.size - 1):
        if seeded[k]:
            continue
        next_id += 1
        for p in pixels[starts[k]:starts[k + 1]]:
            flat[p] = next_id


def seed_labels(p_interior: np.ndarray, seed_thresh: float, min_seed_size: int,
                foreground: np.ndarray) -> np.ndarray:
    """The three-class seeds: 4-connected regions of p_interior (H, W) > seed_thresh with at
    least min_seed_size pixels, numbered 1..n in the raster order of their first pixels, then
    cleared outside foreground (H, W) bool -> int32 (H, W). The same labels as
    `ndimage.label`, `postprocess._finish` and the masking, in one pass."""
    p_interior = np.ascontiguousarray(p_interior)
    out = np.zeros(p_interior.shape, np.int32)
    _seeds(p_interior, p_interior.dtype.type(seed_thresh), int(min_seed_size),
           np.ascontiguousarray(foreground, dtype=np.bool_), out)
    return out


@njit(cache=True, nogil=True)
def _seeds(p: np.ndarray, thresh: float, min_size: int, foreground: np.ndarray,
           out: np.ndarray) -> None:
    H, W = p.shape
    flat_p, flat_fg, flat = p.ravel(), foreground.ravel(), out.ravel()
    seen = np.zeros(H * W, np.bool_)
    # the search's queue, as large as any region can be: only the pages a region reaches are
    # ever touched, and no check for growth stays in the loop (with the four neighbours
    # written out: 38 -> 20 ms on the bundled model's 2048^2 interior map, one thread)
    piece = np.empty(H * W, np.int32)
    next_id = 0
    for start in range(H * W):
        if not flat_p[start] > thresh or seen[start]:
            continue
        seen[start] = True
        piece[0] = start
        size, head = 1, 0
        while head < size:
            q = piece[head]
            head += 1
            i = q // W
            j = q - i * W
            if i > 0 and not seen[q - W] and flat_p[q - W] > thresh:
                seen[q - W] = True
                piece[size] = q - W
                size += 1
            if j > 0 and not seen[q - 1] and flat_p[q - 1] > thresh:
                seen[q - 1] = True
                piece[size] = q - 1
                size += 1
            if j + 1 < W and not seen[q + 1] and flat_p[q + 1] > thresh:
                seen[q + 1] = True
                piece[size] = q + 1
                size += 1
            if i + 1 < H and not seen[q + W] and flat_p[q + W] > thresh:
                seen[q + W] = True
                piece[size] = q + W
                size += 1
        if size < min_size:
            continue
        next_id += 1
        for q in piece[:size]:
            if flat_fg[q]:
                flat[q] = next_id


def foreground_and_elevation(p_background: np.ndarray, p_interior: np.ndarray,
                             fg_thresh: float) -> tuple[np.ndarray, np.ndarray]:
    """(1 - p_background > fg_thresh, 1 - p_interior) for float (H, W) maps of one dtype:
    bool (H, W) and (H, W) in that dtype, in one pass of row bands on the pool's threads
    (`postprocess.three_class_instances`; NumPy's two expressions, serial: 6.3 -> 2.4 ms at
    2048^2, 2 threads, min of 11).

    The float arithmetic is NumPy's: a Python float meeting a float32 array is a float32
    (NEP 50), so 1 - p is computed in p's dtype and compared with fg_thresh rounded to it."""
    from .threads import get_num_threads, parallel_rows

    p_background = np.ascontiguousarray(p_background)
    p_interior = np.ascontiguousarray(p_interior)
    dtype = p_background.dtype.type
    foreground = np.empty(p_background.shape, np.bool_)
    elevation = np.empty(p_interior.shape, p_interior.dtype)
    serial = p_background.size < SERIAL_PIXELS or get_num_threads() == 1
    parallel_rows(lambda first, stop: _foreground_elevation(
        p_background, p_interior, dtype(1.0), dtype(fg_thresh), foreground, elevation,
        first, stop), p_background.shape[0], _band(p_background.shape), serial=serial)
    return foreground, elevation


@njit(cache=True, nogil=True)
def _foreground_elevation(p_background: np.ndarray, p_interior: np.ndarray, one: np.floating,
                          thresh: np.floating, foreground: np.ndarray, elevation: np.ndarray,
                          first: int, stop: int) -> None:
    """Rows first..stop-1: foreground = one - p_background > thresh, elevation = one -
    p_interior (one and thresh in the maps' dtype)."""
    W = p_background.shape[1]
    for i in range(first, stop):
        for j in range(W):
            foreground[i, j] = one - p_background[i, j] > thresh
            elevation[i, j] = one - p_interior[i, j]


RELABEL_PARTS = 8  # pixel ranges of relabel's passes, shared by the pool's threads


def relabel(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Labels (H, W) int32 >= 0 with the objects under min_size pixels removed and the rest
    numbered 1..n in the order of their old ids (`postprocess._finish`): int32 (H, W). Two
    passes over ranges of pixels on the pool's threads: each range's object sizes, then the
    new ids looked up (the sizes summed and the lookup built between them)."""
    from .threads import get_num_threads, parallel_for

    flat = np.ascontiguousarray(labels).ravel()
    serial = flat.size < SERIAL_PIXELS or get_num_threads() == 1
    parts = 1 if serial else RELABEL_PARTS
    bounds = np.linspace(0, flat.size, parts + 1).astype(np.int64)
    top = int(flat.max()) if flat.size else 0
    sizes = np.zeros((parts, top + 1), np.int64)
    parallel_for(lambda k, slot: _count(flat, bounds[k], bounds[k + 1], sizes[k]), parts,
                 serial=serial, blas=False)
    total = sizes.sum(axis=0)
    keep = total >= max(min_size, 1)
    keep[0] = False                                           # the background stays 0
    new_id = np.where(keep, np.cumsum(keep), 0).astype(np.int32)
    out = np.empty(labels.shape, np.int32)
    out_flat = out.ravel()
    parallel_for(lambda k, slot: _lookup(flat, new_id, bounds[k], bounds[k + 1], out_flat),
                 parts, serial=serial, blas=False)
    return out


@njit(cache=True, nogil=True)
def _count(flat: np.ndarray, start: int, stop: int, sizes: np.ndarray) -> None:
    """sizes[v] += the number of pixels of flat[start:stop] equal to v."""
    for k in range(start, stop):
        sizes[flat[k]] += 1


@njit(cache=True, nogil=True)
def _lookup(flat: np.ndarray, new_id: np.ndarray, start: int, stop: int,
            out: np.ndarray) -> None:
    """out[k] = new_id[flat[k]] for k in [start, stop)."""
    for k in range(start, stop):
        out[k] = new_id[flat[k]]


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
    """(value, age) as one unsigned integer that sorts as the two comparisons do."""
    return (order << np.uint64(32)) | np.uint64(age)


@njit(cache=True, inline="always")
def _push(keys: np.ndarray, where: np.ndarray, items: int, key: np.uint64, index: int) -> None:
    """A binary heap's push: append, then swap up while smaller than the parent."""
    child = items
    keys[child] = key
    where[child] = index
    while child > 0:
        parent = (child - 1) // 2
        if keys[child] < keys[parent]:
            keys[child], keys[parent] = keys[parent], keys[child]
            where[child], where[parent] = where[parent], where[child]
            child = parent
        else:
            break


@njit(cache=True, inline="always")
def _sift_down(keys: np.ndarray, where: np.ndarray, items: int) -> None:
    """A binary heap's pop, after the last item moved to the root: swap it down with the
    smaller child while that child is smaller."""
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


@njit(cache=True, inline="always")
def _unlabelled(mask: np.ndarray, out: np.ndarray, i: int, j: int) -> bool:
    """Pixel (i, j) is inside the image and the mask, and has no label yet."""
    H, W = mask.shape
    return 0 <= i < H and 0 <= j < W and mask[i, j] and out[i, j] == 0


@njit(cache=True, nogil=True)
def _flood_pieces(bits: np.ndarray, mask: np.ndarray, out: np.ndarray, pixels: np.ndarray,
                  starts: np.ndarray, first: int, stop: int, seeded: np.ndarray,
                  top: np.ndarray) -> None:
    """Flood pieces first..stop-1 (`_mask_pieces`): bits (H, W) uint32 (the float32 image),
    out (H, W) int32 holding the markers (zero outside the mask) on entry and the labels on
    return (only these pieces' pixels). Also sets seeded[k] (piece k holds a marker) and
    top[k] (its largest marker, 0 if none) for `_label_unseeded`."""
    H, W = bits.shape
    flat = out.ravel()
    flat_mask = mask.ravel()
    largest = 0
    for k in range(first, stop):
        largest = max(largest, starts[k + 1] - starts[k])
    keys = np.empty(largest, np.uint64)
    where = np.empty(largest, np.int32)   # the pixel, as i * W + j
    front = np.empty(largest, np.int32)
    for k in range(first, stop):
        # the front: the markers with an unlabelled neighbour in the mask (the only ones a
        # flood starts from; the neighbours are in this piece)
        n_front = 0
        has_marker = False
        largest_marker = 0
        for p in pixels[starts[k]:starts[k + 1]]:
            label = flat[p]
            if label == 0:
                continue
            has_marker = True
            largest_marker = max(largest_marker, label)
            i, j = p // W, p % W
            if ((i > 0 and flat_mask[p - W] and flat[p - W] == 0)
                    or (j > 0 and flat_mask[p - 1] and flat[p - 1] == 0)
                    or (j + 1 < W and flat_mask[p + 1] and flat[p + 1] == 0)
                    or (i + 1 < H and flat_mask[p + W] and flat[p + W] == 0)):
                front[n_front] = p
                n_front += 1
        seeded[k] = has_marker
        top[k] = largest_marker
        if n_front == 0:                  # no marker, or every pixel a marker
            continue
        # the front in raster order: ages 0, 1, ...
        front[:n_front].sort()
        items = 0
        for age in range(n_front):
            p = front[age]
            _push(keys, where, items, _key(_order(bits[p // W, p % W]), age), p)
            items += 1
        age = n_front
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
            for step in range(4):         # up, left, right, down: skimage's neighbour order
                if step == 0:
                    ni, nj = i - 1, j
                elif step == 1:
                    ni, nj = i, j - 1
                elif step == 2:
                    ni, nj = i, j + 1
                else:
                    ni, nj = i + 1, j
                if not _unlabelled(mask, out, ni, nj):
                    continue
                out[ni, nj] = label       # labelled when pushed: nothing cheaper comes later
                value = max(_order(bits[ni, nj]), level)   # never below the pixel it came from
                _push(keys, where, items, _key(value, age), ni * W + nj)
                age += 1
                items += 1
