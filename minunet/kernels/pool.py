"""Max-pooling kernels: maxpool2d_forward / maxpool2d_backward.

Forward keeps, for every output pixel, WHERE its maximum came from: the offset of the winner
inside its K x K window, `kh * K + kw`, as one byte (uint8; K <= 16, so K*K - 1 <= 255 fits).
Backward then routes each upstream gradient to that one input pixel and never looks at x again.

Ties go to the FIRST maximum in row-major window order (the comparison is a strict `>`), which
is also what `np.argmax` over a flattened window returns (see `reference.py`).

Both kernels are single-threaded: they read and write each byte once and one core already
saturates memory bandwidth on the machines we measured (see bench/bench_activations.py).
"""

from __future__ import annotations

import numpy as np
from numba import njit

MAX_KERNEL_SIZE = 16  # the window offset kh*K + kw is stored in one byte: K*K <= 256


@njit(cache=True)
def maxpool2d_forward(x: np.ndarray, K: int, S: int) -> tuple[np.ndarray, np.ndarray]:
    """out[n,c,i,j] = max over the window x[n, c, i*S : i*S+K, j*S : j*S+K].

    x: (N, C, H, W) contiguous. Returns out (N, C, Ho, Wo) and argmax (N, C, Ho, Wo) uint8,
    with Ho = (H - K) // S + 1 (floor, like PyTorch: trailing rows that fit no window are dropped).
    """
    N, C, H, W = x.shape
    Ho = (H - K) // S + 1
    Wo = (W - K) // S + 1
    out = np.empty((N, C, Ho, Wo), dtype=x.dtype)  # (N, C, Ho, Wo)
    argmax = np.empty((N, C, Ho, Wo), dtype=np.uint8)  # (N, C, Ho, Wo) offset kh*K + kw
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    best = x[n, c, i * S, j * S]
                    where = 0
                    for kh in range(K):
                        for kw in range(K):
                            v = x[n, c, i * S + kh, j * S + kw]
                            if v > best:  # strict: on a tie the first maximum keeps the win
                                best = v
                                where = kh * K + kw
                    out[n, c, i, j] = best
                    argmax[n, c, i, j] = where
    return out, argmax


@njit(cache=True)
def maxpool2d_backward(dout: np.ndarray, argmax: np.ndarray, H: int, W: int, K: int,
                       S: int) -> np.ndarray:
    """dx[n, c, i*S + kh, j*S + kw] += dout[n, c, i, j] where (kh, kw) won window (i, j).

    forward was `out[i, j] = x[i*S + kh*, j*S + kw*]`, so d out / d x is 1 at the winner and 0
    elsewhere. `+=` because overlapping windows (S < K) can pick the same input pixel twice.
    dout, argmax: (N, C, Ho, Wo). Returns dx (N, C, H, W), zero where no window won.
    """
    N, C, Ho, Wo = dout.shape
    dx = np.zeros((N, C, H, W), dtype=dout.dtype)  # (N, C, H, W)
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    where = np.int64(argmax[n, c, i, j])
                    kh = where // K
                    kw = where - kh * K
                    dx[n, c, i * S + kh, j * S + kw] += dout[n, c, i, j]
    return dx
