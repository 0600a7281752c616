"""Max-pooling kernels: maxpool2d_forward / maxpool2d_backward.

Forward keeps, for every output pixel, WHERE its maximum came from: the offset of the winner
inside its K x K window, `kh * K + kw`, as one byte (uint8; K <= 16, so K*K - 1 <= 255 fits).
Backward then routes each upstream gradient to that one input pixel and never looks at x again.

Ties go to the FIRST maximum in row-major window order (the comparison is a strict `>`), which
is also what `np.argmax` over a flattened window returns (see `reference.py`).

The training kernels are single-threaded: they read and write each byte once and one core
already saturates memory bandwidth on this machine class (bench/bench_bn_relu_pool.py times
them). Two exceptions. Inference's 2x2 pooling (`maxpool2x2_values`) keeps no winners and
shares the planes between the threads (the whole pass before and after: bench/ab_steps.py
--segment). And
`maxpool2d_backward(..., plus=skip)`: the fast U-Net's backward adds the skip connection's
gradient to the pool's as it places it (one pass over the activation instead of a second for
`d += dskip`), on the thread pool by groups of channels.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .threads import SERIAL_BYTES, get_num_threads, parallel_for

MAX_KERNEL_SIZE = 16  # the window offset kh*K + kw is stored in one byte: K*K <= 256
REASSOCIATE = {"reassoc"}  # lets the finiteness probe sum vectorise; NaN still propagates


def maxpool2d_forward(x: np.ndarray, K: int, S: int) -> tuple[np.ndarray, np.ndarray, float]:
    """out[n,c,i,j] = max over the window x[n, c, i*S : i*S+K, j*S : j*S+K].

    x: (N, C, H, W) contiguous. Returns out (N, C, Ho, Wo), argmax (N, C, Ho, Wo) uint8 and
    `probe` = sum(x - x) over every input value: 0 when all are finite, NaN otherwise (a
    finiteness check for free in the same pass; NaN would otherwise vanish, `v > best` is False).
    Ho = (H - K) // S + 1 (floor, like PyTorch: trailing rows that fit no window are dropped).
    The U-Net's 2x2 / stride 2 pooling has its own loop; other sizes take the general one.
    """
    if K == 2 and S == 2:
        return _maxpool2x2_forward(x)
    return _maxpool2d_forward_general(x, K, S)


def maxpool2d_backward(dout: np.ndarray, argmax: np.ndarray, H: int, W: int, K: int,
                       S: int, plus: np.ndarray | None = None) -> np.ndarray:
    """dx[n, c, i*S + kh, j*S + kw] += dout[n, c, i, j] where (kh, kw) won window (i, j).

    forward was `out[i, j] = x[i*S + kh*, j*S + kw*]`, so d out / d x is 1 at the winner and 0
    elsewhere. dout, argmax: (N, C, Ho, Wo). Returns dx (N, C, H, W), zero where no window won.
    With `plus` (N, C, H, W) in dout's dtype, returns dx + plus, computed in the same pass
    (the U-Net's skip gradient joining: exactly the sum `dx + plus`, each value one addition).
    """
    if plus is not None:
        if K == 2 and S == 2:
            return _maxpool2x2_backward_plus(dout, argmax, np.ascontiguousarray(plus))
        return _maxpool2d_backward_general(dout, argmax, H, W, K, S) + plus
    if K == 2 and S == 2:
        return _maxpool2x2_backward(dout, argmax, H, W)
    return _maxpool2d_backward_general(dout, argmax, H, W, K, S)


def _maxpool2x2_backward_plus(dout: np.ndarray, argmax: np.ndarray,
                              plus: np.ndarray) -> np.ndarray:
    """_maxpool2x2_backward(...) + plus, in one pass, by groups of channels on the thread pool
    (one group, in the calling thread, under threads.SERIAL_BYTES)."""
    C = plus.shape[1]
    dx = np.empty_like(plus)  # (N, C, H, W)
    items = 1 if plus.nbytes < SERIAL_BYTES else min(C, 4 * get_num_threads())
    per = -(-C // items)
    parallel_for(lambda i, slot: _maxpool2x2_backward_plus_channels(
        dout, argmax, plus, dx, i * per, min(C, (i + 1) * per)), -(-C // per), blas=False)
    return dx


@njit(cache=True, nogil=True)
def _maxpool2x2_backward_plus_channels(dout: np.ndarray, argmax: np.ndarray, plus: np.ndarray,
                                       dx: np.ndarray, c_start: int, c_stop: int) -> None:
    """dx[:, c] = _maxpool2x2_backward's dx[:, c] + plus[:, c] for c in [c_start, c_stop)."""
    N, _, Ho, Wo = dout.shape
    H, W = plus.shape[2], plus.shape[3]
    zero = dout.dtype.type(0)
    for n in range(N):
        for c in range(c_start, c_stop):
            for i in range(Ho):
                for j in range(Wo):
                    g = dout[n, c, i, j]
                    where = np.int32(argmax[n, c, i, j])
                    dx[n, c, 2 * i, 2 * j] = (g if where == 0 else zero) + plus[n, c, 2 * i, 2 * j]
                    dx[n, c, 2 * i, 2 * j + 1] = ((g if where == 1 else zero)
                                                  + plus[n, c, 2 * i, 2 * j + 1])
                    dx[n, c, 2 * i + 1, 2 * j] = ((g if where == 2 else zero)
                                                  + plus[n, c, 2 * i + 1, 2 * j])
                    dx[n, c, 2 * i + 1, 2 * j + 1] = ((g if where == 3 else zero)
                                                      + plus[n, c, 2 * i + 1, 2 * j + 1])
            for h in range(2 * Ho, H):  # trailing row / column: in no window, plus alone
                for w in range(W):
                    dx[n, c, h, w] = plus[n, c, h, w]
            for h in range(2 * Ho):
                for w in range(2 * Wo, W):
                    dx[n, c, h, w] = plus[n, c, h, w]


@njit(cache=True, fastmath=REASSOCIATE)
def _maxpool2d_forward_general(x: np.ndarray, K: int,
                               S: int) -> tuple[np.ndarray, np.ndarray, float]:
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
    probe = x.dtype.type(0)  # windows may skip pixels (S > K): a separate pass over all of x
    xf = x.reshape(-1)
    for p in range(xf.size):
        probe += xf[p] - xf[p]
    return out, argmax, probe


@njit(cache=True)
def _maxpool2d_backward_general(dout: np.ndarray, argmax: np.ndarray, H: int, W: int, K: int,
                                S: int) -> np.ndarray:
    N, C, Ho, Wo = dout.shape
    dx = np.zeros((N, C, H, W), dtype=dout.dtype)  # (N, C, H, W)
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    where = np.int64(argmax[n, c, i, j])
                    kh = where // K
                    kw = where - kh * K
                    # `+=`: overlapping windows (S < K) can pick the same input pixel twice
                    dx[n, c, i * S + kh, j * S + kw] += dout[n, c, i, j]
    return dx


@njit(cache=True, nogil=True, inline="always")
def _window(top: np.ndarray, bottom: np.ndarray, j: int) -> tuple[float, int, float]:
    """Window j of the row pair (top, bottom): its four values a b / c d compared in
    row-major order; returns (the maximum, the winner's offset 2*kh + kw, the sum of v - v
    over the four: 0 when all are finite, NaN otherwise)."""
    a = top[2 * j]
    b = top[2 * j + 1]
    c = bottom[2 * j]
    d = bottom[2 * j + 1]
    finite = (a - a) + (b - b) + (c - c) + (d - d)
    # selects, not branches: random data would mispredict half of them
    best = a
    where = 0
    where = 1 if b > best else where  # strict `>`: ties keep the first
    best = b if b > best else best
    where = 2 if c > best else where
    best = c if c > best else best
    where = 3 if d > best else where
    best = d if d > best else best
    return best, where, finite


@njit(cache=True, fastmath=REASSOCIATE)
def _maxpool2x2_forward(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """K = S = 2: the four values a b / c d of each window compared in row-major order."""
    N, C, H, W = x.shape
    Ho = H // 2
    Wo = W // 2
    out = np.empty((N, C, Ho, Wo), dtype=x.dtype)  # (N, C, Ho, Wo)
    argmax = np.empty((N, C, Ho, Wo), dtype=np.uint8)  # (N, C, Ho, Wo) offset 2*kh + kw
    probe = x.dtype.type(0)
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                top = x[n, c, 2 * i]         # (W,)
                bottom = x[n, c, 2 * i + 1]  # (W,)
                for j in range(Wo):
                    best, where, finite = _window(top, bottom, j)
                    probe += finite
                    out[n, c, i, j] = best
                    argmax[n, c, i, j] = where
            for h in range(2 * Ho, H):  # a trailing row no window covers (odd H)
                for w in range(W):
                    probe += x[n, c, h, w] - x[n, c, h, w]
            for h in range(2 * Ho):     # a trailing column (odd W)
                for w in range(2 * Wo, W):
                    probe += x[n, c, h, w] - x[n, c, h, w]
    return out, argmax, probe


def maxpool2x2_values(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Inference's 2x2 / stride 2 pooling: _maxpool2x2_forward's `out` and `probe` (the same
    values: the same comparisons in the same order) without the winners, which only a backward
    would read, by groups of planes (n, c) on the thread pool. x (N, C, H, W) contiguous."""
    N, C, H, W = x.shape
    out = np.empty((N, C, H // 2, W // 2), dtype=x.dtype)  # (N, C, Ho, Wo)
    planes = N * C
    items = 1 if x.nbytes < SERIAL_BYTES else min(planes, 4 * get_num_threads())
    per = -(-planes // items)
    count = -(-planes // per)
    probes = np.zeros(count, dtype=x.dtype)  # one per item: summed below
    parallel_for(lambda i, slot: _maxpool2x2_planes(x, out, probes, i, i * per,
                                                    min(planes, (i + 1) * per)),
                 count, blas=False)
    return out, probes.sum()


@njit(cache=True, nogil=True, fastmath=REASSOCIATE)
def _maxpool2x2_planes(x: np.ndarray, out: np.ndarray, probes: np.ndarray, item: int,
                       p_start: int, p_stop: int) -> None:
    """out's planes [p_start, p_stop) of the N*C planes, as _maxpool2x2_forward computes
    them; probes[item] = the sum of v - v over those planes of x."""
    H, W = x.shape[2], x.shape[3]
    Ho, Wo = out.shape[2], out.shape[3]
    xr = x.reshape(-1, H, W)              # (N*C, H, W)
    outr = out.reshape(-1, Ho, Wo)        # (N*C, Ho, Wo)
    probe = x.dtype.type(0)
    for p in range(p_start, p_stop):
        for i in range(Ho):
            top = xr[p, 2 * i]            # (W,)
            bottom = xr[p, 2 * i + 1]     # (W,)
            row = outr[p, i]              # (Wo,)
            for j in range(Wo):
                best, _, finite = _window(top, bottom, j)   # the winner is not kept
                probe += finite
                row[j] = best
        for h in range(2 * Ho, H):  # a trailing row no window covers (odd H)
            for w in range(W):
                probe += xr[p, h, w] - xr[p, h, w]
        for h in range(2 * Ho):     # a trailing column (odd W)
            for w in range(2 * Wo, W):
                probe += xr[p, h, w] - xr[p, h, w]
    probes[item] = probe


@njit(cache=True)
def _maxpool2x2_backward(dout: np.ndarray, argmax: np.ndarray, H: int, W: int) -> np.ndarray:
    """K = S = 2: windows do not overlap, so each dx value is written once (no zero-fill pass)."""
    N, C, Ho, Wo = dout.shape
    dx = np.empty((N, C, H, W), dtype=dout.dtype)  # (N, C, H, W)
    zero = dout.dtype.type(0)
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    g = dout[n, c, i, j]
                    where = np.int32(argmax[n, c, i, j])
                    dx[n, c, 2 * i, 2 * j] = g if where == 0 else zero
                    dx[n, c, 2 * i, 2 * j + 1] = g if where == 1 else zero
                    dx[n, c, 2 * i + 1, 2 * j] = g if where == 2 else zero
                    dx[n, c, 2 * i + 1, 2 * j + 1] = g if where == 3 else zero
            for h in range(2 * Ho, H):  # trailing row / column: in no window, gradient 0
                for w in range(W):
                    dx[n, c, h, w] = zero
            for h in range(2 * Ho):
                for w in range(2 * Wo, W):
                    dx[n, c, h, w] = zero
    return dx
