"""`predict`'s work around the network, compiled: gathering each tile from the image through
the mirrored indices, and the softmax of its core straight into the probability map.

Per 1152 x 1152 tile NumPy took about 10 ms for the gather (`x[:, rows[..., None],
cols[None, ...]]`), 17 ms for the softmax (five passes over three channels) and 3 ms to copy
its core into the probabilities: 0.5 s of a 4096 x 4096 image's 16 tiles. Here each is one
pass, in bands of rows on `kernels.threads`' threads.

The gather copies the same values. The softmax is `predict.softmax`'s arithmetic per pixel
(subtract the largest logit, exponentiate, divide by the sum, in the logits' dtype), with
Numba's `exp` instead of NumPy's: the probabilities can differ from NumPy's in the last bit
(tests/test_predict.py).
"""

from __future__ import annotations

import numpy as np
from numba import njit

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


def softmax_into(logits: np.ndarray, out: np.ndarray) -> None:
    """out = softmax over axis 0 of logits (Kc, h, w) (any strides; a view of a tile's core),
    out (Kc, h, w) of the same float dtype (a view of the probability map)."""
    parallel_rows(lambda a, b: _softmax_rows(logits, out, a, b), out.shape[1], BAND_ROWS,
                  serial=out.shape[1] < SERIAL_ROWS)


@njit(cache=True, nogil=True)
def _softmax_rows(logits: np.ndarray, out: np.ndarray, first: int, stop: int) -> None:
    kc, _, w = logits.shape
    top = np.empty(w, logits.dtype)               # each pixel's largest logit
    total = np.empty(w, logits.dtype)             # and its sum of exponentials
    for i in range(first, stop):
        top[:] = logits[0, i]
        for k in range(1, kc):
            row = logits[k, i]
            for j in range(w):
                top[j] = max(top[j], row[j])
        total[:] = 0
        for k in range(kc):
            row, dst = logits[k, i], out[k, i]
            for j in range(w):
                e = np.exp(row[j] - top[j])
                dst[j] = e
                total[j] += e
        for k in range(kc):
            dst = out[k, i]
            for j in range(w):
                dst[j] = dst[j] / total[j]
