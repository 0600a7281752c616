"""`predict`'s work around the network, compiled: gathering each tile from the image through
the mirrored indices, and the softmax of its core straight into the probability map.

Per 1152 x 1152 tile NumPy took about 10 ms for the gather (`x[:, rows[..., None],
cols[None, ...]]`), 17 ms for the softmax (five passes over three channels) and 3 ms to copy
its core into the probabilities: 0.5 s of a 4096 x 4096 image's 16 tiles. Here each is one
pass, in bands of rows on `kernels.threads`' threads.

The gather copies the same values. The softmax is `predict.softmax`'s arithmetic per pixel
(subtract the largest logit, exponentiate, divide by the sum, in the logits' dtype), with
another `exp` than NumPy's: the probabilities can differ from NumPy's in the last bit
(tests/test_predict.py). In float32 it runs on 16 lanes (simd.py's vmax, vexp, vdiv):
`_softmax_rows` with the C library's scalar `expf` (what Numba's `np.exp` calls) spent 26 ns
a pixel, 27 ms of one core per 1024 x 1024 core of a tile; `simd.vexp` evaluates e**x in
float64 and rounds once, which gives exp(x) correctly rounded to float32 on all but one of the
1.1e9 float32 values in [-110, 0] where glibc's expf is one ulp off on 97 thousand.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import simd
from .simd import vadd, vdiv, vexp, vload, vmax, vstore, vsub
from .threads import parallel_rows

BAND_ROWS = 32
SERIAL_ROWS = 4 * BAND_ROWS   # fewer rows than this run in the calling thread


def gather_tile(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, out: np.ndarray) -> None:
    """out[c, i, j] = x[c, rows[i], cols[j]] for x (C, H, W), rows (h,), cols (w,) ints in
    range, out (C, h, w) of x's dtype, C-contiguous."""
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    cols = np.ascontiguousarray(cols, dtype=np.int64)
    parallel_rows(lambda a, b: _gather_rows(x, rows, cols, out, a, b), out.shape[1],
                  BAND_ROWS, serial=out.shape[1] < SERIAL_ROWS)


@njit(cache=True, nogil=True)
def _gather_rows(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, out: np.ndarray,
                 first: int, stop: int) -> None:
    for c in range(out.shape[0]):
        for i in range(first, stop):
            src = x[c, rows[i]]
            dst = out[c, i]
            for j in range(cols.size):
                dst[j] = src[cols[j]]


def softmax_into(logits: np.ndarray, out: np.ndarray, top: int = 0, left: int = 0) -> None:
    """out[:, top:top + h, left:left + w] = softmax over axis 0 of logits (Kc, h, w) (any
    strides; a view of a tile's core), out (Kc, H, W) of the same float dtype (the
    probability map, C-contiguous: the kernels' types are then the same for every tile and
    image, one compiled kernel loaded, whether the core spans the map's width or not)."""
    if not out.flags.c_contiguous:
        raise ValueError("softmax_into: out must be C-contiguous (the whole probability map)")
    rows = (_softmax_rows_f32 if simd.AVAILABLE and logits.dtype == np.float32
            and out.dtype == np.float32 and logits.strides[2] == 4
            else _softmax_rows)
    parallel_rows(lambda a, b: rows(logits, out, top, left, a, b), logits.shape[1], BAND_ROWS,
                  serial=logits.shape[1] < SERIAL_ROWS)


@njit(cache=True, nogil=True)
def _softmax_rows(logits: np.ndarray, out: np.ndarray, top: int, left: int, first: int,
                  stop: int) -> None:
    kc, _, w = logits.shape
    big = np.empty(w, logits.dtype)               # each pixel's largest logit
    total = np.empty(w, logits.dtype)             # and its sum of exponentials
    for i in range(first, stop):
        big[:] = logits[0, i]
        for k in range(1, kc):
            row = logits[k, i]
            for j in range(w):
                big[j] = max(big[j], row[j])
        total[:] = 0
        for k in range(kc):
            row, dst = logits[k, i], out[k, top + i, left:left + w]
            for j in range(w):
                e = np.exp(row[j] - big[j])
                dst[j] = e
                total[j] += e
        for k in range(kc):
            dst = out[k, top + i, left:left + w]
            for j in range(w):
                dst[j] = dst[j] / total[j]


@njit(cache=True, nogil=True)
def _softmax_rows_f32(logits: np.ndarray, out: np.ndarray, top: int, left: int, first: int,
                      stop: int) -> None:
    """_softmax_rows for float32 rows of unit stride, 16 pixels at a time, in three passes
    over the band of rows [first, stop) (which stays in the core's cache): the largest logit
    of each pixel, then exp(logit - largest) into out and their sum, then out / sum; the same
    order of operations as _softmax_rows, with vexp for exp. The last pixels of a row that do
    not fill 16 lanes go through `spare` (a tail padded with the row's last logit)."""
    kc, _, w = logits.shape
    full = w - w % 16                              # pixels in whole vectors
    rows = stop - first
    big = np.empty((rows, full + 16), np.float32)  # each pixel's largest logit
    total = np.empty((rows, full + 16), np.float32)  # and its sum of exponentials
    tails = np.empty((kc * rows, 16), np.float32)  # exp of the tails, per class and row
    spare = np.empty((1, 16), np.float32)
    for k in range(kc):
        lk = logits[k]                                               # (h, w)
        for i in range(first, stop):
            t = i - first
            for j in range(0, full, 16):
                v = vload(lk, i, j)
                vstore(big, t, j, v if k == 0 else vmax(vload(big, t, j), v))
            if full < w:
                _tail(lk, i, full, spare)
                v = vload(spare, 0, 0)
                vstore(big, t, full, v if k == 0 else vmax(vload(big, t, full), v))
    for k in range(kc):
        lk, ok = logits[k], out[k]                                   # (h, w), (H, W)
        for i in range(first, stop):
            t = i - first
            for j in range(0, full, 16):
                e = vexp(vsub(vload(lk, i, j), vload(big, t, j)))
                vstore(ok, top + i, left + j, e)
                vstore(total, t, j, e if k == 0 else vadd(vload(total, t, j), e))
            if full < w:
                _tail(lk, i, full, spare)
                e = vexp(vsub(vload(spare, 0, 0), vload(big, t, full)))
                vstore(tails, k * rows + t, 0, e)
                vstore(total, t, full, e if k == 0 else vadd(vload(total, t, full), e))
    for k in range(kc):
        ok = out[k]
        for i in range(first, stop):
            t = i - first
            for j in range(0, full, 16):
                vstore(ok, top + i, left + j, vdiv(vload(ok, top + i, left + j),
                                                   vload(total, t, j)))
            if full < w:
                vstore(spare, 0, 0, vdiv(vload(tails, k * rows + t, 0), vload(total, t, full)))
                for j in range(full, w):
                    ok[top + i, left + j] = spare[0, j - full]


@njit(cache=True, nogil=True, inline="always")
def _tail(row_array: np.ndarray, i: int, start: int, spare: np.ndarray) -> None:
    """spare[0] = row_array[i, start:], padded with the row's last value to 16 lanes."""
    w = row_array.shape[1]
    for j in range(16):
        spare[0, j] = row_array[i, min(start + j, w - 1)]
