"""Convolution kernels: the multiply-adds in BLAS (np.matmul), the data movement around them.

A convolution is a matrix product once every receptive field is laid out as a column:

    col = im2col(x)                 # (N, Cin*K*K, Ho*Wo): column p holds the K*K window
                                    #  of every input channel that output pixel p sees
    y   = w.reshape(Cout, -1) @ col # (N, Cout, Ho*Wo)

The products go to the BLAS library NumPy ships (OpenBLAS), which reaches several times the
speed of a hand-written loop nest. How the columns are built depends on the geometry:

- stride 1 (every 3x3 and 1x1 conv of the U-Net): each im2col row is one contiguous slice of
  the padded image, flattened row by row ("shifted rows", below), built one image at a time so
  it stays in cache; the input gradient is the stride-1 convolution of dy with the flipped
  weight, so no scatter-add is needed either;
- kernel == stride, no padding (the U-Net's 2x2 stride-2 up-convolution): the windows tile the
  image, so im2col and col2im are a reshape and a transpose;
- anything else: the general Numba loops `im2col` and its adjoint `col2im` (scatter-add).

The six public functions are built from three computations, because a transposed convolution
is the adjoint of a convolution:

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


# ------------------------------------------------------------------ workspaces
# The column matrices are K*K times the size of the image and live only inside one kernel
# call. Allocating them afresh on every call costs a page fault per 4 KiB page, which on the
# project's machines took as long as filling them, so one buffer per (purpose, dtype) is kept
# and grown to the largest size seen. Not for concurrent use from several Python threads
# (neither are the layers, which save state for backward).
_workspaces: dict[tuple[str, np.dtype], np.ndarray] = {}


def _workspace(shape: tuple[int, ...], dtype: np.dtype, purpose: str = "col") -> np.ndarray:
    """An uninitialised array of `shape`, a view of the shared buffer for (purpose, dtype)."""
    size = int(np.prod(shape))
    key = (purpose, np.dtype(dtype))
    buffer = _workspaces.get(key)
    if buffer is None or buffer.size < size:
        buffer = np.empty(size, dtype=dtype)
        _workspaces[key] = buffer
    return buffer[:size].reshape(shape)


def release_workspace() -> None:
    """Free the work buffers (they are re-created on the next convolution)."""
    _workspaces.clear()


# ------------------------------------------------------------------ stride 1: shifted rows
# For stride 1 no Numba loop is needed. Pad each image by P and flatten it row by row: with
# Wp = W + 2P, tap (kh, kw) of output pixel (i, j) reads flat[(i + kh) * Wp + j + kw], so for
# all pixels at once the tap reads the contiguous slice flat[kh*Wp + kw : kh*Wp + kw + Ho*Wp].
# Each im2col row is then one slice copy, and the product yields the output on an (Ho, Wp)
# grid whose last Wp - Wo columns are discarded (they wrapped around to the next row).
# Working one image at a time keeps the columns in cache (Cin*K*K x Ho*Wp floats).

def _padded_flat(x: np.ndarray, padding: int) -> np.ndarray:
    """x (N, C, H, W) -> (N, C, (H + 2P + 1) * Wp) zero-padded, one spare row at the bottom
    so the last tap's slice stays inside."""
    N, C, H, W = x.shape
    P = padding
    xp = _workspace((N, C, H + 2 * P + 1, W + 2 * P), x.dtype, "pad")
    xp[:, :, :P] = 0
    xp[:, :, P + H:] = 0
    xp[:, :, P:P + H, :P] = 0
    xp[:, :, P:P + H, P + W:] = 0
    xp[:, :, P:P + H, P:P + W] = x
    return xp.reshape(N, C, -1)


def _shifted_columns(flat: np.ndarray, K: int, Wp: int, L: int, col: np.ndarray) -> None:
    """col (C, K*K, L)[c, kh*K + kw] = flat (C, *)[c, kh*Wp + kw : ... + L] (one image)."""
    for kh in range(K):
        for kw in range(K):
            offset = kh * Wp + kw
            col[:, kh * K + kw, :] = flat[:, offset:offset + L]


def _forward_stride1(x: np.ndarray, weight: np.ndarray, padding: int) -> np.ndarray:
    """Stride-1 convolution: x (N, Cin, H, W), weight (Cout, Cin, K, K) -> (N, Cout, Ho, Wo)."""
    N, Cin, H, W = x.shape
    Cout, _, K, _ = weight.shape
    Wp = W + 2 * padding
    Ho, Wo = H + 2 * padding - K + 1, Wp - K + 1
    L = Ho * Wp
    flat = _padded_flat(x, padding)                               # (N, Cin, (Hp+1)*Wp)
    col = _workspace((Cin, K * K, L), x.dtype)                    # (Cin, K*K, Ho*Wp)
    wide = _workspace((Cout, Ho, Wp), x.dtype, "wide")            # (Cout, Ho, Wp)
    w_rows = weight.reshape(Cout, Cin * K * K)
    y = np.empty((N, Cout, Ho, Wo), dtype=x.dtype)                # (N, Cout, Ho, Wo)
    for n in range(N):
        _shifted_columns(flat[n], K, Wp, L, col)
        np.matmul(w_rows, col.reshape(Cin * K * K, L), out=wide.reshape(Cout, L))
        y[n] = wide[:, :, :Wo]
    return y


def _weight_gradient_stride1(x: np.ndarray, dy: np.ndarray, K: int,
                             padding: int) -> np.ndarray:
    """dw = sum_n dy[n] @ col[n]^T with the shifted-row columns; -> (Cout, Cin, K, K)."""
    N, Cin, _, W = x.shape
    _, Cout, Ho, Wo = dy.shape
    Wp = W + 2 * padding
    L = Ho * Wp
    flat = _padded_flat(x, padding)                               # (N, Cin, (Hp+1)*Wp)
    col = _workspace((Cin, K * K, L), x.dtype)                    # (Cin, K*K, Ho*Wp)
    wide = _workspace((Cout, Ho, Wp), x.dtype, "wide")            # dy on the (Ho, Wp) grid
    wide[:, :, Wo:] = 0  # the wrapped-around columns must not contribute
    dw = np.zeros((Cout, Cin * K * K), dtype=x.dtype)             # (Cout, Cin*K*K)
    for n in range(N):
        _shifted_columns(flat[n], K, Wp, L, col)
        wide[:, :, :Wo] = dy[n]
        dw += wide.reshape(Cout, L) @ col.reshape(Cin * K * K, L).T
    return dw.reshape(Cout, Cin, K, K)


def _flipped(weight: np.ndarray) -> np.ndarray:
    """(Cout, Cin, K, K) -> (Cin, Cout, K, K) rotated by 180 degrees: the weight of the
    convolution that maps dy back to dx when the stride is 1."""
    return np.ascontiguousarray(weight.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])


# ------------------------------------------------------------------ K == S, P == 0: patches
# When the kernel tiles the image without overlap (the U-Net's 2x2 stride-2 up-convolution),
# im2col is a reshape and a transpose, and col2im its inverse: no loop, no scatter-add.

def _patches(x: np.ndarray, K: int, Ho: int, Wo: int) -> np.ndarray:
    """Non-overlapping im2col: x (N, C, H, W) -> col (N, C*K*K, Ho*Wo)."""
    N, C = x.shape[:2]
    blocks = x[:, :, :Ho * K, :Wo * K].reshape(N, C, Ho, K, Wo, K)
    col = _workspace((N, C, K, K, Ho, Wo), x.dtype)
    np.copyto(col, blocks.transpose(0, 1, 3, 5, 2, 4))
    return col.reshape(N, C * K * K, Ho * Wo)


def _unpatch(col: np.ndarray, C: int, H: int, W: int, K: int, Ho: int, Wo: int) -> np.ndarray:
    """The inverse of `_patches`: col (N, C*K*K, Ho*Wo) -> x (N, C, H, W), 0 where unused."""
    N = col.shape[0]
    x = np.empty((N, C, H, W), dtype=col.dtype)
    if H > Ho * K or W > Wo * K:
        x[...] = 0
    blocks = col.reshape(N, C, K, K, Ho, Wo).transpose(0, 1, 4, 2, 5, 3)
    x[:, :, :Ho * K, :Wo * K] = blocks.reshape(N, C, Ho * K, Wo * K)
    return x


def _columns(x: np.ndarray, K: int, stride: int, padding: int, Ho: int, Wo: int) -> np.ndarray:
    """im2col (N, C*K*K, Ho*Wo) by the cheapest route for this geometry."""
    if K == stride and padding == 0:
        return _patches(x, K, Ho, Wo)
    col = _workspace((x.shape[0], x.shape[1] * K * K, Ho * Wo), x.dtype)
    im2col(x, K, stride, padding, Ho, Wo, col)
    return col


# ------------------------------------------------------------------ the three computations
def _forward(x: np.ndarray, weight: np.ndarray, stride: int, padding: int) -> np.ndarray:
    """y = w @ im2col(x): x (N, Cin, H, W), weight (Cout, Cin, K, K) -> y (N, Cout, Ho, Wo)."""
    if stride == 1:
        return _forward_stride1(x, weight, padding)
    N, _, H, W = x.shape
    Cout, _, K, _ = weight.shape
    Ho, Wo = conv_output_size(H, K, stride, padding), conv_output_size(W, K, stride, padding)
    col = _columns(x, K, stride, padding, Ho, Wo)                 # (N, Cin*K*K, Ho*Wo)
    y = np.matmul(weight.reshape(Cout, -1), col)     # (N, Cout, Ho*Wo)
    return y.reshape(N, Cout, Ho, Wo)


def _adjoint(dy: np.ndarray, weight: np.ndarray, stride: int, padding: int, height: int,
             width: int) -> np.ndarray:
    """dx = col2im(w^T @ dy): dy (N, Cout, Ho, Wo), weight (Cout, Cin, K, K) -> (N, Cin, H, W)."""
    N, Cout, Ho, Wo = dy.shape
    _, Cin, K, _ = weight.shape
    if stride == 1 and padding <= K - 1:
        # dx is the stride-1 convolution of dy with the flipped weight and padding K-1-P
        return _forward_stride1(dy, _flipped(weight), K - 1 - padding)
    w_rows = weight.reshape(Cout, -1)                                   # (Cout, Cin*K*K)
    dcol = _workspace((N, w_rows.shape[1], Ho * Wo), dy.dtype)        # (N, Cin*K*K, Ho*Wo)
    np.matmul(w_rows.T, dy.reshape(N, Cout, Ho * Wo), out=dcol)
    if K == stride and padding == 0:
        return _unpatch(dcol, Cin, height, width, K, Ho, Wo)
    return col2im(dcol, Cin, height, width, K, stride, padding, Ho, Wo)


def _weight_gradient(x: np.ndarray, dy: np.ndarray, kernel_size: int, stride: int,
                     padding: int) -> np.ndarray:
    """dw = sum_n dy[n] @ im2col(x)[n]^T.

    x (N, Cin, H, W), dy (N, Cout, Ho, Wo) -> dw (Cout, Cin, K, K).
    """
    if stride == 1:
        return _weight_gradient_stride1(x, dy, kernel_size, padding)
    N, Cin = x.shape[:2]
    _, Cout, Ho, Wo = dy.shape
    K = kernel_size
    col = _columns(x, K, stride, padding, Ho, Wo)                 # (N, Cin*K*K, Ho*Wo)
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
