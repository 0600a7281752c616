"""Convolution kernels: im2col / col2im in Numba, the multiply-adds in BLAS (np.matmul).

A convolution is a matrix product once every receptive field is laid out as a column:

    col = im2col(x)                 # (N, Cin*K*K, Ho*Wo): column p holds the K*K window
                                    #  of every input channel that output pixel p sees
    y   = w.reshape(Cout, -1) @ col # (N, Cout, Ho*Wo)

im2col and its adjoint col2im (which scatter-adds columns back into an image) are the only
loops here; the products go to the BLAS library NumPy ships (OpenBLAS), which reaches several
times the speed of a hand-written loop nest. The six public functions are built from three,
because a transposed convolution is the adjoint of a convolution:

    conv_transpose2d_forward         == conv2d_backward_input   (col2im(w^T @ x))
    conv_transpose2d_backward_input  == conv2d_forward           (w @ im2col(dy))
    conv_transpose2d_backward_weight == conv2d_backward_weight   (with x and dy swapped)

`reference.py` holds the same six computations as plain NumPy loops over the kernel taps.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


def conv_output_size(size: int, kernel_size: int, stride: int, padding: int) -> int:
    """Ho = floor((H + 2P - K) / S) + 1 (PyTorch's rule)."""
    return (size + 2 * padding - kernel_size) // stride + 1


@njit(cache=True, inline="always")
def _valid_columns(width: int, out_width: int, kw: int, stride: int, padding: int) -> tuple:
    """Output columns j whose input column j*S - P + kw lies inside [0, W): j in [lo, hi)."""
    # j*S - P + kw >= 0  <=>  j >= ceil((P - kw) / S)
    lo = max(0, -((kw - padding) // stride))
    # j*S - P + kw <= W - 1  <=>  j <= floor((W - 1 + P - kw) / S)
    hi = min(out_width, (width - 1 + padding - kw) // stride + 1)
    return lo, max(lo, hi)


@njit(parallel=True, cache=True)
def im2col(x: np.ndarray, kernel_size: int, stride: int, padding: int, out_height: int,
           out_width: int, col: np.ndarray) -> None:
    """col[n, (c*K + kh)*K + kw, i*Wo + j] = x[n, c, i*S - P + kh, j*S - P + kw] (0 outside).

    Writes every element of col (N, C*K*K, Ho*Wo), so col may come uninitialised.
    """
    N, C, H, W = x.shape
    K, S, P, Ho, Wo = kernel_size, stride, padding, out_height, out_width
    zero = x.dtype.type(0)
    for nc in prange(N * C):  # thread owns col[n, c*K*K:(c+1)*K*K, :] (one input plane's rows)
        n, c = nc // C, nc % C
        for kh in range(K):
            for kw in range(K):
                row = (c * K + kh) * K + kw
                lo, hi = _valid_columns(W, Wo, kw, S, P)
                for i in range(Ho):
                    h = i * S - P + kh
                    base = i * Wo
                    if h < 0 or h >= H:
                        for j in range(Wo):
                            col[n, row, base + j] = zero
                        continue
                    for j in range(lo):
                        col[n, row, base + j] = zero
                    for j in range(lo, hi):
                        col[n, row, base + j] = x[n, c, h, j * S - P + kw]
                    for j in range(hi, Wo):
                        col[n, row, base + j] = zero


@njit(parallel=True, cache=True)
def col2im(col: np.ndarray, channels: int, height: int, width: int, kernel_size: int,
           stride: int, padding: int, out_height: int, out_width: int) -> np.ndarray:
    """The adjoint of im2col: x[n, c, h, w] = sum of every col entry that im2col copied from it."""
    N = col.shape[0]
    C, H, W, K, S, P, Ho, Wo = channels, height, width, kernel_size, stride, padding, \
        out_height, out_width
    x = np.zeros((N, C, H, W), dtype=col.dtype)  # (N, C, H, W)
    for nc in prange(N * C):  # thread owns x[n, c] (reads only that plane's K*K rows of col)
        n, c = nc // C, nc % C
        for kh in range(K):
            for kw in range(K):
                row = (c * K + kh) * K + kw
                lo, hi = _valid_columns(W, Wo, kw, S, P)
                for i in range(Ho):
                    h = i * S - P + kh
                    if h < 0 or h >= H:
                        continue
                    base = i * Wo
                    for j in range(lo, hi):
                        x[n, c, h, j * S - P + kw] += col[n, row, base + j]
    return x


# ------------------------------------------------------------------ the column workspace
# The column matrices are K*K times the size of the image (150 MB for the U-Net's widest layer
# at batch 8) and live only inside one kernel call. Allocating them afresh on every call costs
# a page fault per 4 KiB page, which on the project's machines took as long as filling them, so
# one buffer per dtype is kept and grown to the largest size seen. Not for concurrent use from
# several Python threads (neither are the layers, which save state for backward).
_workspaces: dict[np.dtype, np.ndarray] = {}


def _workspace(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised array of `shape`, a view of the shared buffer for `dtype`."""
    size = int(np.prod(shape))
    buffer = _workspaces.get(np.dtype(dtype))
    if buffer is None or buffer.size < size:
        buffer = np.empty(size, dtype=dtype)
        _workspaces[np.dtype(dtype)] = buffer
    return buffer[:size].reshape(shape)


def release_workspace() -> None:
    """Free the column buffers (they are re-created on the next convolution)."""
    _workspaces.clear()


# ------------------------------------------------------------------ the three computations
def _forward(x: np.ndarray, weight: np.ndarray, stride: int, padding: int) -> np.ndarray:
    """y = w @ im2col(x): x (N, Cin, H, W), weight (Cout, Cin, K, K) -> y (N, Cout, Ho, Wo)."""
    N, _, H, W = x.shape
    Cout, _, K, _ = weight.shape
    Ho, Wo = conv_output_size(H, K, stride, padding), conv_output_size(W, K, stride, padding)
    col = _workspace((N, x.shape[1] * K * K, Ho * Wo), x.dtype)  # (N, Cin*K*K, Ho*Wo)
    im2col(x, K, stride, padding, Ho, Wo, col)
    y = np.matmul(weight.reshape(Cout, -1), col)     # (N, Cout, Ho*Wo)
    return y.reshape(N, Cout, Ho, Wo)


def _adjoint(dy: np.ndarray, weight: np.ndarray, stride: int, padding: int, height: int,
             width: int) -> np.ndarray:
    """dx = col2im(w^T @ dy): dy (N, Cout, Ho, Wo), weight (Cout, Cin, K, K) -> (N, Cin, H, W)."""
    N, Cout, Ho, Wo = dy.shape
    _, Cin, K, _ = weight.shape
    w_rows = weight.reshape(Cout, -1)                                   # (Cout, Cin*K*K)
    dcol = _workspace((N, w_rows.shape[1], Ho * Wo), dy.dtype)        # (N, Cin*K*K, Ho*Wo)
    np.matmul(w_rows.T, dy.reshape(N, Cout, Ho * Wo), out=dcol)
    return col2im(dcol, Cin, height, width, K, stride, padding, Ho, Wo)


def _weight_gradient(x: np.ndarray, dy: np.ndarray, kernel_size: int, stride: int,
                     padding: int) -> np.ndarray:
    """dw = sum_n dy[n] @ im2col(x)[n]^T.

    x (N, Cin, H, W), dy (N, Cout, Ho, Wo) -> dw (Cout, Cin, K, K).
    """
    N, Cin = x.shape[:2]
    _, Cout, Ho, Wo = dy.shape
    K = kernel_size
    col = _workspace((N, Cin * K * K, Ho * Wo), x.dtype)                 # (N, Cin*K*K, Ho*Wo)
    im2col(x, K, stride, padding, Ho, Wo, col)
    dw = np.zeros((Cout, Cin * K * K), dtype=x.dtype)                   # (Cout, Cin*K*K)
    dy_rows = dy.reshape(N, Cout, Ho * Wo)
    for n in range(N):
        dw += dy_rows[n] @ col[n].T
    return dw.reshape(Cout, Cin, K, K)


# ------------------------------------------------------------------ the public pairs
def conv2d_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, stride: int,
                   padding: int) -> np.ndarray:
    """y[n, o, i, j] = b[o] + sum_{c,kh,kw} w[o, c, kh, kw] x[n, c, i*S - P + kh, j*S - P + kw].

    x (N, Cin, H, W), weight (Cout, Cin, K, K), bias (Cout,) or None -> y (N, Cout, Ho, Wo).
    """
    y = _forward(x, weight, stride, padding)
    if bias is not None:
        y += bias[None, :, None, None]
    return y


def conv2d_backward_input(dy: np.ndarray, weight: np.ndarray, stride: int, padding: int,
                          height: int, width: int) -> np.ndarray:
    """dx = col2im(w^T @ dy): dy (N, Cout, Ho, Wo) -> dx (N, Cin, H, W); H, W are x's size."""
    return _adjoint(dy, weight, stride, padding, height, width)


def conv2d_backward_weight(x: np.ndarray, dy: np.ndarray, kernel_size: int, stride: int,
                           padding: int) -> np.ndarray:
    """dw[o, c, kh, kw] = sum_{n,i,j} dy[n, o, i, j] x[n, c, i*S - P + kh, j*S - P + kw]."""
    return _weight_gradient(x, dy, kernel_size, stride, padding)


def conv_transpose_output_size(size: int, kernel_size: int, stride: int, padding: int) -> int:
    """Ho = (H - 1) S - 2P + K (PyTorch's rule, output_padding = 0)."""
    return (size - 1) * stride - 2 * padding + kernel_size


def conv_transpose2d_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                             stride: int, padding: int) -> np.ndarray:
    """y[n, o, i*S - P + kh, j*S - P + kw] += x[n, c, i, j] w[c, o, kh, kw] (+ b[o]).

    x (N, Cin, H, W), weight (Cin, Cout, K, K) -> y (N, Cout, Ho, Wo), Ho = (H-1)S - 2P + K.
    It is conv2d_backward_input with the weight read as a conv2d weight (Cin, Cout, K, K).
    """
    K = weight.shape[2]
    Ho = conv_transpose_output_size(x.shape[2], K, stride, padding)
    Wo = conv_transpose_output_size(x.shape[3], K, stride, padding)
    y = _adjoint(x, weight, stride, padding, Ho, Wo)
    if bias is not None:
        y += bias[None, :, None, None]
    return y


def conv_transpose2d_backward_input(dy: np.ndarray, weight: np.ndarray, stride: int,
                                    padding: int) -> np.ndarray:
    """dx = w @ im2col(dy): dy (N, Cout, Ho, Wo) -> dx (N, Cin, H, W) (a plain convolution)."""
    return _forward(dy, weight, stride, padding)


def conv_transpose2d_backward_weight(x: np.ndarray, dy: np.ndarray, kernel_size: int,
                                     stride: int, padding: int) -> np.ndarray:
    """dw[c, o, kh, kw] = sum_{n,i,j} x[n, c, i, j] dy[n, o, i*S - P + kh, j*S - P + kw]."""
    return _weight_gradient(dy, x, kernel_size, stride, padding)
