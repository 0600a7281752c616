"""Images larger than memory: predicted and labelled block by block, written as Zarr or TIFF.

    from minunet.scaleout import segment_large
    segment_large("run/best.npz", "slide.tif", "slide_labels.zarr", probs_out="slide_probs.zarr")

The image is cut into square blocks (B = 2048 px by default). Each block is one task:

    window = block + halo h + margin M, read straight from the file (only the tiles it covers)
    probabilities on block + h   = predict() on the window: each pixel has M real pixels of
                                   context (M covers the receptive field), so they equal the
                                   whole-image result to float round-off
    labels on block + h          = to_instances() with the checkpoint's settings
    kept: the block's own labels, and the labels of thin strips (S px each side) across the
          borders it shares with its neighbours

This is `dask.array.map_overlap` done by hand: the overlap is read from the file by the task
itself, so no task holds its neighbours' data, and the image edge is mirrored exactly as
`predict` mirrors it (np.pad "reflect"; dask's "reflect" boundary repeats the edge pixel).

Normalisation: a percentile stretch uses the whole image's percentiles, computed exactly in a
streaming pass before the blocks run (`stats.py`), so every block is normalised with the same two
numbers the in-memory `normalize` would use. The foreground method (the default) needs three
more whole-image numbers, also exact: the smoothed image's range and its 256-bin histogram
(Otsu's threshold, as skimage computes it from that histogram), then the median of the pixels
above that threshold; the smoothing is done window by window with a halo of its full radius.

Stitching: every block numbers its objects 1..n_b; ids are made unique by offsets. Across each
border, the two blocks labelled the same strip of pixels (one in its core, one in its halo, both
with real context): an object of one block and an object of the other are the same cell when they
share more than half of the smaller one's pixels in the strip. Those pairs are merged (union-find)
and the ids renumbered 1..N over the image. Two different cells that touch across a border
overlap in no pixel, so they stay apart. A cell wider than the halo is still merged: its pieces
overlap in the strip.

Memory: one block's window and its intermediate arrays per worker (a few hundred MiB at
B = 2048, depth 3, base 16), plus the strips (B x 2S labels per border). Nothing holds the image.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..predict import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_NORMALIZATION,
    DEFAULT_TILE,
    FOREGROUND_SMOOTH,
    RGB_TO_GRAY,
    _mirror_pad,
    _round_up,
    predict,
    receptive_radius,
    size_multiple,
)
from . import ngff
from .common import (
    ModelRef,
    check_new_output,
    check_not_input,
    describe,
    limit_threads,
    load_model,
    publish,
    remove,
    remove_stale_siblings,
    run_tasks,
    settings,
    temporary_sibling,
    threads_per_worker,
)
from .sources import LargeImage, open_large
from .stats import integer_percentiles, streaming_percentiles

BLOCK = 2048  # px per block side: ~20 MiB of float32 per window, 5-25 % of extra context
HALO = 64     # px of labels beyond the block: a cell up to ~64 px across is whole in one block
STRIP = 8     # px each side of a border compared between the two blocks
CHUNK = 256   # px per side of a stored chunk / TIFF tile; blocks are whole numbers of them
TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True)
class Plan:
    """How an H x W image is cut: block side, label halo, network margin, stitching strip."""

    height: int
    width: int
    block: int
    halo: int
    margin: int
    strip: int
    chunk: int

    @property
    def grid(self) -> tuple[int, int]:
        return math.ceil(self.height / self.block), math.ceil(self.width / self.block)

    def blocks(self) -> list[tuple[int, int]]:
        rows, cols = self.grid
        return [(i, j) for i in range(rows) for j in range(cols)]

    def core(self, i: int, j: int) -> tuple[int, int, int, int]:
        B = self.block
        return i * B, min((i + 1) * B, self.height), j * B, min((j + 1) * B, self.width)

    def ext(self, i: int, j: int) -> tuple[int, int, int, int]:
        """The block plus its halo, inside the image: where labels are computed."""
        r0, r1, c0, c1 = self.core(i, j)
        h = self.halo
        return max(0, r0 - h), min(self.height, r1 + h), max(0, c0 - h), min(self.width, c1 + h)

    def borders(self, i: int, j: int) -> dict[tuple[str, int, int], tuple[int, int, int, int]]:
        """The strips this block shares with its neighbours: key -> (r0, r1, c0, c1).

        ("right", i, j) lies between blocks (i, j) and (i, j + 1); ("down", i, j) between
        (i, j) and (i + 1, j); both blocks of a border compute the same key and region.
        """
        rows, cols = self.grid
        out = {}
        for bi, bj, kind in ((i, j, "right"), (i, j - 1, "right"), (i, j, "down"),
                             (i - 1, j, "down")):
            if bi < 0 or bj < 0 or (kind == "right" and bj + 1 >= cols) or (
                    kind == "down" and bi + 1 >= rows):
                continue
            r0, r1, c0, c1 = self.core(bi, bj)
            S = self.strip
            if kind == "right":
                out[(kind, bi, bj)] = (r0, r1, c1 - S, min(c1 + S, self.width))
            else:
                out[(kind, bi, bj)] = (r1 - S, min(r1 + S, self.height), c0, c1)
        return out


def make_plan(height: int, width: int, depth: int, *, block: int = BLOCK, halo: int = HALO,
              strip: int = STRIP) -> Plan:
    """Round the sizes to what the network and the stores need, and check them."""
    mult = 2 ** depth
    unit = max(mult, 16)                    # TIFF tiles are multiples of 16 px
    block = _round_up(max(block, unit), unit)
    chunk = min(CHUNK, block)
    block = _round_up(block, chunk)
    margin = _round_up(receptive_radius(depth), mult)
    halo = _round_up(max(halo, 2 * strip), mult)  # the strip's far side keeps S px of context
    if strip < 1 or strip > block:
        raise ValueError(f"segment_large: strip must be in 1..{block}, got {strip}")
    return Plan(height, width, block, halo, margin, strip, chunk)


# ---------------------------------------------------------------------- normalisation
OTSU_BINS = 256  # skimage's threshold_otsu default, which predict.foreground_median uses

def normalization_params(image: LargeImage, normalization: dict[str, Any] | None,
                         block: int) -> dict[str, Any]:
    """The numbers every block is normalised with, from the whole image (see `normalize`)."""
    from ..checks import check_normalization

    check_normalization(normalization, "segment_large")
    norm = dict(DEFAULT_NORMALIZATION if normalization is None else normalization)
    method = norm.get("method")
    if method not in ("foreground", "percentile", "range", "none"):
        raise ValueError(f"segment_large: unknown normalisation method {method!r}")
    params: dict[str, Any] = {"method": method}
    if method == "range":
        params["divisor"] = (float(np.iinfo(image.dtype).max)
                             if np.issubdtype(image.dtype, np.integer) else None)
    if method not in ("percentile", "foreground"):
        return params
    qs = [norm.get("low", 1.0)] + ([norm.get("high", 99.8)] if method == "percentile" else [])
    windows = [(r, min(r + block, image.height), c, min(c + block, image.width))
               for r in range(0, image.height, block) for c in range(0, image.width, block)]
    raw_ints = len(image.shape) == 2 and image.dtype.kind in "ui" and image.dtype.itemsize <= 2
    if raw_ints:  # 8-/16-bit gray: one pass, one bin per value
        found = integer_percentiles(lambda: (image.read(*w) for w in windows), qs, image.dtype)
    else:
        found = streaming_percentiles(lambda: (to_gray(image.read(*w)) for w in windows), qs,
                                      who=str(image.path))
    lo = found[0]
    if method == "percentile":
        scale = found[1] - lo
    else:  # as predict.normalize: the typical foreground pixel lands at `level`
        scale = (_foreground_median(image, windows) - lo) / norm.get("level", 0.6)
    params.update(lo=float(lo), scale=float(scale) if scale > 0 else 1.0)
    return params


def _smoothed_windows(image: LargeImage, windows: list[tuple[int, int, int, int]]
                      ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(gray, smoothed gray) of every window, the smoothing exactly that of the whole image:
    each window is read with a halo of the Gaussian's full radius (scipy truncates at 4
    sigma), so interior pixels see all their neighbours, and the image's own edges are
    reflected as they are for the whole image."""
    from scipy.ndimage import gaussian_filter

    radius = int(4.0 * FOREGROUND_SMOOTH + 0.5)
    for r0, r1, c0, c1 in windows:
        h0, h1 = max(0, r0 - radius), min(image.height, r1 + radius)
        w0, w1 = max(0, c0 - radius), min(image.width, c1 + radius)
        gray = to_gray(image.read(h0, h1, w0, w1))
        smooth = gaussian_filter(gray, FOREGROUND_SMOOTH)
        core = (slice(r0 - h0, r1 - h0), slice(c0 - w0, c1 - w0))
        yield gray[core], smooth[core]


def _foreground_median(image: LargeImage, windows: list[tuple[int, int, int, int]]) -> float:
    """predict.foreground_median of the whole image, in streaming passes over its windows."""
    from skimage.filters import threshold_otsu

    smin, smax, gmax = np.inf, -np.inf, -np.inf
    for gray, smooth in _smoothed_windows(image, windows):       # pass 1: ranges
        smin, smax = min(smin, float(smooth.min())), max(smax, float(smooth.max()))
        gmax = max(gmax, float(gray.max()))
    if smax <= smin:
        return smax
    counts = np.zeros(OTSU_BINS, dtype=np.int64)
    for _, smooth in _smoothed_windows(image, windows):          # pass 2: Otsu's histogram
        counts += np.histogram(smooth, bins=OTSU_BINS, range=(smin, smax))[0]
    edges = np.histogram_bin_edges(np.empty(0), bins=OTSU_BINS, range=(smin, smax))
    threshold = threshold_otsu(hist=(counts, (edges[:-1] + edges[1:]) / 2.0))

    def above() -> Iterator[np.ndarray]:
        for gray, smooth in _smoothed_windows(image, windows):
            yield gray[smooth > threshold]
    if not any(values.size for values in above()):
        return gmax
    return float(streaming_percentiles(above, [50.0], who=str(image.path))[0])


def to_gray(raw: np.ndarray) -> np.ndarray:
    """A window as `predict.to_gray` turns it into float64 gray (RGB(A) -> BT.709 luma)."""
    if raw.dtype == bool:
        raw = raw.astype(np.uint8)
    from ..checks import check_pixel_range

    gray = raw[..., :3].astype(np.float64) @ RGB_TO_GRAY if raw.ndim == 3 else \
        raw.astype(np.float64)
    if np.isfinite(gray).all():  # NaN and inf are named where they are refused
        check_pixel_range("the image", gray)
    return gray


def normalize_window(raw: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """The same arithmetic as `predict.normalize`, with the whole image's statistics."""
    gray = to_gray(raw)
    if params["method"] in ("percentile", "foreground"):
        out = (gray - np.float64(params["lo"])) / np.float64(params["scale"])
    elif params["method"] == "range" and params.get("divisor") is not None:
        out = gray / params["divisor"]
    else:
        if not np.isfinite(gray).all():
            raise ValueError("the image contains NaN or inf values")
        out = gray
    return out.astype(np.float32)


# ---------------------------------------------------------------------- one block
@dataclass(frozen=True)
class BlockTask:
    """Everything a worker needs for one block, as plain values (it opens the files itself)."""

    source: str
    key: str | None
    plan: Plan
    index: tuple[int, int]
    norm: dict[str, Any]
    model: ModelRef
    tile: int
    batch_size: int
    labels_store: str
    probs_store: str | None
    threads: int | None


def segment_block(task: BlockTask) -> dict[str, Any]:
    """Probabilities and labels of one block (+ halo); writes the block, returns the strips."""
    import zarr

    limit_threads(task.threads)
    model, metadata = load_model(task.model)
    _, post = settings(metadata)
    plan, (i, j) = task.plan, task.index
    image = open_large(task.source, task.key)
    r0, r1, c0, c1 = plan.core(i, j)
    e0, e1, f0, f1 = plan.ext(i, j)
    M = plan.margin
    w0, w1 = max(0, e0 - M), min(plan.height, e1 + M)       # window rows, inside the image
    v0, v1 = max(0, f0 - M), min(plan.width, f1 + M)        # window columns
    x = normalize_window(image.read(w0, w1, v0, v1), task.norm)          # (h, w) float32
    # Beyond the image the network sees the image mirrored, exactly as predict() pads it.
    x = _mirror_pad(x, M - (e0 - w0), M - (w1 - e1), M - (f0 - v0), M - (v1 - f1))
    # predict's own (automatic) margin, as in memory: the same tile widths, so the same route
    # through the convolution kernels and the same bits as `mu.predict` on the whole image
    probs = predict(model, x, tile=task.tile, batch_size=task.batch_size,
                    normalized=True)[:, M:M + e1 - e0, M:M + f1 - f0]      # (Kc, eh, ew)
    from ..postprocess import to_instances

    labels = to_instances(probs, **post)                                  # (eh, ew) 1..n
    core = labels[r0 - e0:r1 - e0, c0 - f0:c1 - f0]
    zarr.open_array(task.labels_store, mode="r+")[r0:r1, c0:c1] = core.astype(np.uint32)
    if task.probs_store is not None:
        zarr.open_array(task.probs_store, mode="r+")[:, r0:r1, c0:c1] = \
            probs[:, r0 - e0:r1 - e0, c0 - f0:c1 - f0]
    strips = {key: labels[a - e0:b - e0, c - f0:d - f0].copy()
              for key, (a, b, c, d) in plan.borders(i, j).items()}
    present = np.unique(core)
    return {"index": (i, j), "n": int(labels.max(initial=0)),
            "present": present[present > 0].astype(np.int64), "strips": strips}


# ---------------------------------------------------------------------- stitching
def match_strip(a: np.ndarray, b: np.ndarray, share: float = 0.5) -> list[tuple[int, int]]:
    """Pairs (id in a, id in b) of the same object: labels a and b of one strip (h, w) from
    two blocks; the same object when they share more than `share` of the smaller's pixels."""
    both = (a > 0) & (b > 0)
    if not both.any():
        return []
    pa, pb = a[both].astype(np.int64), b[both].astype(np.int64)
    pairs, counts = np.unique(np.stack([pa, pb]), axis=1, return_counts=True)
    area_a = np.bincount(a.ravel())
    area_b = np.bincount(b.ravel())
    smaller = np.minimum(area_a[pairs[0]], area_b[pairs[1]])
    keep = counts > share * smaller
    return [(int(p), int(q)) for p, q in pairs[:, keep].T]


def stitch(plan: Plan, results: dict[tuple[int, int], dict[str, Any]]
           ) -> tuple[dict[tuple[int, int], np.ndarray], int]:
    """Per block, a lookup table local id -> final id (0 -> 0); and the number of objects."""
    blocks = plan.blocks()
    offset, total = {}, 0
    for b in blocks:
        offset[b] = total
        total += results[b]["n"]
    parent = np.arange(total + 1, dtype=np.int64)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = int(parent[root])
        while parent[x] != root:                       # path compression
            parent[x], x = root, int(parent[x])
        return root

    for b in blocks:
        i, j = b
        for key in results[b]["strips"]:
            kind, bi, bj = key
            if (bi, bj) != b:
                continue                               # each border once, from its first block
            other = (i, j + 1) if kind == "right" else (i + 1, j)
            pairs = match_strip(results[b]["strips"][key], results[other]["strips"][key])
            for p, q in pairs:
                ra, rb = find(offset[b] + p), find(offset[other] + q)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    roots = parent
    while True:                                        # every id straight to its root
        hop = roots[roots]
        if np.array_equal(hop, roots):
            break
        roots = hop
    # final ids 1..N in the order objects first appear (blocks row-major, ids ascending)
    present = np.concatenate([offset[b] + results[b]["present"] for b in blocks] +
                             [np.zeros(0, np.int64)])
    owners = roots[present]
    _, first = np.unique(owners, return_index=True)
    final = np.zeros(total + 1, dtype=np.uint32)
    final[owners[np.sort(first)]] = np.arange(1, first.size + 1, dtype=np.uint32)
    luts = {}
    for b in blocks:
        lut = np.zeros(results[b]["n"] + 1, dtype=np.uint32)
        local = results[b]["present"]
        lut[local] = final[roots[offset[b] + local]]
        luts[b] = lut
    return luts, int(first.size)


def relabel_block(args: tuple[str, tuple[int, int, int, int], np.ndarray]) -> None:
    """Map one block of the stored labels through its lookup table, in place."""
    import zarr

    store, (r0, r1, c0, c1), lut = args
    labels = zarr.open_array(store, mode="r+")
    labels[r0:r1, c0:c1] = lut[labels[r0:r1, c0:c1]]


# ---------------------------------------------------------------------- the whole image
def segment_large(model: ModelRef, source: str | Path, labels_out: str | Path, *,
                  probs_out: str | Path | None = None, key: str | None = None,
                  block: int = BLOCK, halo: int = HALO, strip: int = STRIP,
                  tile: int = DEFAULT_TILE, batch_size: int = DEFAULT_BATCH_SIZE,
                  client: Any = None, workers: int | None = None,
                  scheduler: str | None = None, progress: bool = True,
                  overwrite: bool = False) -> dict[str, Any]:
    """Segment an image larger than memory, block by block; see the module docstring.

    model:      a checkpoint path or run folder (needed with a cluster), a loaded Checkpoint,
                or (model, metadata); the metadata's normalisation and post-processing are used
    source:     a TIFF (tiled or not), a Zarr array / OME-Zarr group, or an .npy file
    labels_out: new path: `.ome.zarr` (OME-Zarr: the image with uint32 labels under
                labels/cells, see `ngff.py`), `.zarr` (a plain uint32 Zarr array) or `.tif` /
                `.tiff` (tiled uint32 TIFF)
    probs_out:  optional new `.zarr` path for the probabilities (Kc, H, W) float32
    key:        the array inside a Zarr group (default: OME-Zarr's full resolution)
    block, halo, strip: see the module docstring (rounded up to the network's grid)
    tile, batch_size:   passed to `predict` inside each block
    client / workers / scheduler: run the blocks on a dask.distributed Client, a new local
                cluster of `workers` processes, or the scheduler at that address (default:
                one block after another in this process, without Dask)
    overwrite:  replace an earlier output (a file or a Zarr store) at labels_out / probs_out;
                without it an existing output is refused. The source is never replaced.

    Every check (outputs, source, model) runs before anything is written.
    Returns {"objects", "shape", "blocks", "seconds", "labels", "probs"}.
    """
    started = time.perf_counter()
    labels_out = Path(labels_out)
    probs_path = None if probs_out is None else Path(probs_out)
    who = "segment_large"
    if probs_path is not None and probs_path.resolve() == labels_out.resolve():
        raise ValueError(f"{who}: labels_out and probs_out are both {labels_out}; give the "
                         "probabilities a name of their own")
    for output in (labels_out, probs_path):
        if output is not None:
            check_not_input(output, [Path(source)], who)
            check_new_output(output, who, overwrite)
    if probs_path is not None and probs_path.suffix.lower() in TIFF_SUFFIXES:
        raise ValueError(f"{who}: probabilities are written as Zarr; name {probs_path} "
                         "something.zarr")
    if (client is not None or workers or scheduler) and not isinstance(model, (str, Path)):
        raise TypeError(f"{who}: on a cluster, give the checkpoint's path, which each worker "
                        "loads once, not a model object")
    net, metadata = load_model(model)
    norm_settings, post_settings = settings(metadata)
    from ..checks import check_normalization, check_postprocess

    check_normalization(norm_settings, who)  # (model, metadata) given: not checked by load
    check_postprocess(post_settings, who)
    image = open_large(source, key)
    depth = int(math.log2(size_multiple(net)))
    plan = make_plan(image.height, image.width, depth, block=block, halo=halo, strip=strip)
    _say(progress, f"{image.path}: {image.height} x {image.width} {image.dtype}, "
         f"{len(plan.blocks())} blocks of {plan.block} px (halo {plan.halo}, margin "
         f"{plan.margin})")
    norm = normalization_params(image, norm_settings, plan.block)
    classes = _num_classes(net, 2 ** depth)

    is_tiff = labels_out.suffix.lower() in TIFF_SUFFIXES
    is_ome = ngff.is_ome(labels_out)  # NAME.ome.zarr: the image and its labels (ngff.py)
    for output in (labels_out, probs_path):  # what a killed (kill -9) run left behind
        if output is not None:
            remove_stale_siblings(output)
    scratch = temporary_sibling(labels_out, ".zarr")
    store = scratch  # where the full-resolution labels go (inside the group for OME-Zarr)
    probs_tmp = None if probs_path is None else temporary_sibling(probs_path, ".zarr")
    own_client = own_cluster = None
    try:
        import zarr

        if is_ome:
            store = ngff.create_labels(scratch, (plan.height, plan.width), plan.chunk)
        else:
            zarr.create_array(str(scratch), shape=(plan.height, plan.width), dtype="uint32",
                              chunks=(plan.chunk, plan.chunk), fill_value=0)
        if probs_tmp is not None:
            zarr.create_array(str(probs_tmp), shape=(classes, plan.height, plan.width),
                              dtype="float32", chunks=(classes, plan.chunk, plan.chunk),
                              fill_value=0.0)
        if client is None and (workers or scheduler):
            from .common import make_client

            client, own_cluster = make_client(workers, scheduler)
            own_client = client
        threads = threads_per_worker(client)
        # absolute paths: a worker may run in another folder, or on another machine
        ref = str(Path(model).resolve()) if isinstance(model, (str, Path)) else (net, metadata)
        tasks = [BlockTask(str(image.path.resolve()), key, plan, b, norm, ref, tile,
                           batch_size, str(store.resolve()),
                           None if probs_tmp is None else str(probs_tmp.resolve()), threads)
                 for b in plan.blocks()]
        results = {}
        for done, (task, result, error) in enumerate(run_tasks(segment_block, tasks, client),
                                                     start=1):
            if error is not None:
                raise RuntimeError(f"{who}: block {task.index} of {image.path} failed: "
                                   f"{describe(error)}") from error
            results[task.index] = result
            _say(progress, f"  block {done}/{len(tasks)} done "
                 f"({time.perf_counter() - started:.0f} s)")
        luts, n_objects = stitch(plan, results)
        if is_tiff:
            tiff_tmp = temporary_sibling(labels_out)
            try:
                _write_tiff(tiff_tmp, str(scratch), plan, luts)
                publish(tiff_tmp, labels_out, overwrite)
            finally:
                remove(tiff_tmp)
        else:
            jobs = [(str(store.resolve()), plan.core(*b), luts[b]) for b in plan.blocks()]
            for _, _, error in run_tasks(relabel_block, jobs, client):
                if error is not None:
                    raise error
            if is_ome:
                ngff.finish(scratch, image, plan.chunk, labels_out.name[:-len(ngff.SUFFIX)])
            publish(scratch, labels_out, overwrite)
        if probs_tmp is not None:
            publish(probs_tmp, probs_path, overwrite)
    finally:
        remove(scratch)
        if probs_tmp is not None:
            remove(probs_tmp)
        if own_client is not None:
            own_client.close()
        if own_cluster is not None:
            own_cluster.close()
    seconds = time.perf_counter() - started
    _say(progress, f"{n_objects} objects -> {labels_out} ({seconds:.1f} s)")
    return {"objects": n_objects, "shape": (plan.height, plan.width),
            "blocks": len(plan.blocks()), "seconds": seconds, "labels": labels_out,
            "probs": probs_path}


def _write_tiff(path: Path, scratch: str, plan: Plan, luts: dict[tuple[int, int], np.ndarray]
                ) -> None:
    """Stream the stored labels, relabelled, into a tiled uint32 TIFF, tile by tile."""
    import tifffile
    import zarr

    labels = zarr.open_array(scratch, mode="r")
    T = plan.chunk

    def tiles():  # row-major, as tifffile expects; a tile never straddles two blocks
        for r in range(0, plan.height, T):
            for c in range(0, plan.width, T):
                tile = np.zeros((T, T), dtype=np.uint32)
                part = labels[r:r + T, c:c + T]
                tile[:part.shape[0], :part.shape[1]] = luts[(r // plan.block,
                                                             c // plan.block)][part]
                yield tile

    big = plan.height * plan.width * 4 > 2**31
    with open(path, "xb") as f:
        tifffile.imwrite(f, tiles(), shape=(plan.height, plan.width), dtype=np.uint32,
                         tile=(T, T), compression="zlib", bigtiff=big,
                         photometric="minisblack")


def _num_classes(model: Any, mult: int) -> int:
    """Kc: the model's output channels (one tiny forward in eval mode)."""
    config = model.config() if hasattr(model, "config") else {}
    if "num_classes" in config:
        return int(config["num_classes"])
    probe = predict(model, np.zeros((mult, mult), np.float32), normalized=True)
    return probe.shape[0]


def _say(progress: bool, line: str) -> None:
    if progress:
        print(line, file=sys.stderr, flush=True)


def predict_command(args: Any, model: Path, inputs: list[str]) -> int:
    """`minunet predict MODEL INPUTS --out DIR --chunked`: each input (a TIFF, a Zarr folder,
    an .npy file) becomes DIR/NAME.ome.zarr (OME-Zarr: the image, its uint32 labels under
    labels/cells; NAME_probs.zarr with --probs).
    Every argument is checked before anything is written; a failing input is named with its
    problem and the others go on; returns the exit code."""
    out = Path(args.out)
    overwrite = bool(getattr(args, "overwrite", False))
    jobs = []
    for item in inputs:
        source = Path(item)
        if not source.exists():
            raise FileNotFoundError(f"{source} does not exist")
        name = source.name
        while Path(name).suffix.lower() in (".zarr", ".ome", ".tif", ".tiff", ".npy"):
            name = Path(name).stem
        jobs.append((source, out / f"{name}{ngff.SUFFIX}",
                     out / f"{name}_probs.zarr" if args.probs else None))
    names = [labels.name for _, labels, _ in jobs]
    if len(set(names)) != len(names):
        raise ValueError("predict --chunked: two inputs would write the same output name; "
                         "predict them into different --out folders")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"predict --chunked: --out {out} is a file; give a folder")
    load_model(str(model))  # a bad checkpoint is refused once, before anything is written
    sources = [source for source, _, _ in jobs]
    for _, labels, probs in jobs:  # every check before anything is computed
        for output in (labels, probs):
            if output is not None:
                check_not_input(output, sources, "predict --chunked")
                if out.is_dir():
                    check_new_output(output, "predict --chunked", overwrite)
    client, cluster = None, None
    failed = []
    done = 0
    try:
        if args.workers is not None or args.scheduler:
            from .common import make_client

            client, cluster = make_client(args.workers, args.scheduler)
        out.mkdir(parents=True, exist_ok=True)  # only now: a refused run leaves no folder
        from ..io import locks

        locks.hold(out, "minunet predict --chunked")  # released when the command ends
        for source, labels, probs in jobs:
            try:
                result = segment_large(str(model), source, labels, probs_out=probs,
                                       block=args.block, tile=args.tile, client=client,
                                       overwrite=overwrite)
                print(f"{source} -> {labels} ({result['objects']} objects, "
                      f"{result['seconds']:.1f} s)")
                done += 1
            except Exception as err:  # a bad input is named; the others still run
                failed.append(source)
                print(f"minunet predict: error: {_describe_failure(source, err)}",
                      file=sys.stderr)
    except KeyboardInterrupt:
        again = "with --overwrite " if done else ""
        print(f"minunet predict: interrupted after {done} of {len(jobs)} images (those are "
              f"complete in {out}); run the same command {again}to start again",
              file=sys.stderr)
        return 130
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    if failed:
        print(f"minunet predict: {len(failed)} of {len(jobs)} images failed: "
              f"{', '.join(map(str, failed))}", file=sys.stderr)
    return 2 if failed else 0


def _describe_failure(source: Path, err: BaseException) -> str:
    """One line naming the input and its problem, whatever raised (zlib, zarr, tifffile...)."""
    text = str(err) or type(err).__name__
    if isinstance(err, KeyError):
        text = f"{type(err).__name__}: {err.args[0] if err.args else ''}"
    elif not isinstance(err, (OSError, ValueError, RuntimeError, TypeError)):
        text = f"cannot be read or segmented ({type(err).__name__}: {text})"
    return text if str(source) in text else f"{source}: {text}"
