"""Channel concatenation kernel: concat_channels, a copy that also checks finiteness.

`np.concatenate` alone is as fast; this loop exists so that the NaN/inf check of both inputs
happens in the same single pass as the copy, instead of two more passes (see the layer).
Single-threaded: memory-bound (bench/bench_bn_relu_pool.py).
"""

from __future__ import annotations

import numpy as np
from numba import njit

REASSOCIATE = {"reassoc"}  # lets the probe sum vectorise; NaN still propagates


@njit(cache=True, fastmath=REASSOCIATE)
def concat_channels(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float]:
    """out = [a | b] along channels: a (N, Ca, H, W), b (N, Cb, H, W) -> (N, Ca + Cb, H, W).

    Both contiguous, same dtype. Also returns `probe` = sum(v - v) over every value of a and
    b: 0 when all are finite, NaN otherwise.
    """
    N, Ca, H, W = a.shape
    Cb = b.shape[1]
    size_a = Ca * H * W  # one image of a, flattened: channels are contiguous blocks of H*W
    size_b = Cb * H * W
    af = a.reshape(N, size_a)
    bf = b.reshape(N, size_b)
    out = np.empty((N, Ca + Cb, H, W), dtype=a.dtype)  # (N, Ca + Cb, H, W)
    of = out.reshape(N, size_a + size_b)
    probe = a.dtype.type(0)
    for n in range(N):
        for p in range(size_a):
            v = af[n, p]
            probe += v - v
            of[n, p] = v
        for p in range(size_b):
            v = bf[n, p]
            probe += v - v
            of[n, size_a + p] = v
    return out, probe
