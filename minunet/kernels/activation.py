"""ReLU kernels: relu_forward / relu_backward, one pass over memory each.

In NumPy, `dout * (out > 0)` makes a boolean temporary and reads the data twice; these loops
read each input once and write the output once. Single-threaded: memory-bound (see pool.py).
"""

from __future__ import annotations

import numpy as np
from numba import njit

REASSOCIATE = {"reassoc"}  # lets the probe sum vectorise; NaN still propagates


@njit(cache=True, fastmath=REASSOCIATE)
def relu_forward(x: np.ndarray) -> tuple[np.ndarray, float]:
    """out = max(x, 0), any shape (contiguous).

    Also returns `probe` = sum(x - x): 0 when every x is finite, NaN otherwise. That is the
    layer's NaN/inf check, done in this same pass instead of a second one over x.
    """
    out = np.empty_like(x)
    xf = x.reshape(-1)
    of = out.reshape(-1)
    zero = x.dtype.type(0)
    probe = x.dtype.type(0)
    for i in range(xf.size):
        v = xf[i]
        probe += v - v
        of[i] = v if v > zero else zero
    return out, probe


@njit(cache=True)
def relu_backward(dout: np.ndarray, out: np.ndarray) -> np.ndarray:
    """dx = dout where out > 0, else 0 (gradient 0 at exactly 0). Same shapes, contiguous."""
    dx = np.empty_like(dout)
    gf = dout.reshape(-1)
    of = out.reshape(-1)
    df = dx.reshape(-1)
    zero = dout.dtype.type(0)
    for i in range(gf.size):
        df[i] = gf[i] if of[i] > zero else zero
    return dx
