"""Plain NumPy references of the kernels: slow, obvious, and the oracle the tests compare with.

Read these first to see *what* a kernel computes; the kernel files show *how* it is made fast.
Each loop runs over the K*K kernel taps only, and handles a whole (N, C, Ho, Wo) slab per tap
with one einsum, so the indexing stays visible.
"""

from __future__ import annotations

import numpy as np


# ------------------------------------------------------------------ conv2d
def _tap(x_padded: np.ndarray, kh: int, kw: int, stride: int, out_height: int,
         out_width: int) -> np.ndarray:
    """The input pixels tap (kh, kw) meets: x_padded[:, :, i*S + kh, j*S + kw] for all i, j."""
    return x_padded[:, :, kh : kh + stride * out_height : stride,
                    kw : kw + stride * out_width : stride]  # (N, C, Ho, Wo)


def conv2d_forward_reference(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                             stride: int, padding: int) -> np.ndarray:
    """y[n, o, i, j] = b[o] + sum_{c,kh,kw} w[o, c, kh, kw] x_padded[n, c, i*S + kh, j*S + kw]."""
    N, _, H, W = x.shape
    Cout, _, K, _ = weight.shape
    Ho = (H + 2 * padding - K) // stride + 1
    Wo = (W + 2 * padding - K) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    y = np.zeros((N, Cout, Ho, Wo), dtype=x.dtype)  # (N, Cout, Ho, Wo)
    for kh in range(K):
        for kw in range(K):
            y += np.einsum("oc,nchw->nohw", weight[:, :, kh, kw], _tap(xp, kh, kw, stride, Ho, Wo))
    if bias is not None:
        y += bias[None, :, None, None]
    return y


def conv2d_backward_input_reference(dy: np.ndarray, weight: np.ndarray, stride: int,
                                    padding: int, height: int, width: int) -> np.ndarray:
    """Forward added w[o,c,kh,kw] x_padded[n,c,i*S+kh,j*S+kw] into y[n,o,i,j]; send dy back."""
    N, _, Ho, Wo = dy.shape
    _, Cin, K, _ = weight.shape
    # sized so that every tap's slice fits, even when floor() dropped the last rows
    dxp = np.zeros((N, Cin, height + 2 * padding + stride, width + 2 * padding + stride),
                   dtype=dy.dtype)
    for kh in range(K):
        for kw in range(K):
            _tap(dxp, kh, kw, stride, Ho, Wo)[...] += np.einsum(
                "oc,nohw->nchw", weight[:, :, kh, kw], dy)
    return dxp[:, :, padding : padding + height, padding : padding + width].copy()


def conv2d_backward_weight_reference(x: np.ndarray, dy: np.ndarray, kernel_size: int,
                                     stride: int, padding: int) -> np.ndarray:
    """dw[o, c, kh, kw] = sum_{n,i,j} dy[n, o, i, j] x_padded[n, c, i*S + kh, j*S + kw]."""
    _, Cin, _, _ = x.shape
    _, Cout, Ho, Wo = dy.shape
    K = kernel_size
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    dw = np.zeros((Cout, Cin, K, K), dtype=x.dtype)  # (Cout, Cin, K, K)
    for kh in range(K):
        for kw in range(K):
            dw[:, :, kh, kw] = np.einsum("nohw,nchw->oc", dy, _tap(xp, kh, kw, stride, Ho, Wo))
    return dw


# ------------------------------------------------------------------ conv_transpose2d
def conv_transpose2d_forward_reference(x: np.ndarray, weight: np.ndarray,
                                       bias: np.ndarray | None, stride: int,
                                       padding: int) -> np.ndarray:
    """Each input pixel stamps its patch: y_full[n,o,i*S+kh,j*S+kw] += x[n,c,i,j] w[c,o,kh,kw].

    The output is y_full with P rows/columns cropped on each side: Ho = (H-1)S - 2P + K.
    """
    N, _, H, W = x.shape
    _, Cout, K, _ = weight.shape
    full = np.zeros((N, Cout, (H - 1) * stride + K, (W - 1) * stride + K), dtype=x.dtype)
    for kh in range(K):
        for kw in range(K):
            full[:, :, kh : kh + stride * H : stride, kw : kw + stride * W : stride] += np.einsum(
                "co,nchw->nohw", weight[:, :, kh, kw], x)
    Ho, Wo = full.shape[2] - 2 * padding, full.shape[3] - 2 * padding
    y = full[:, :, padding : padding + Ho, padding : padding + Wo].copy()
    if bias is not None:
        y += bias[None, :, None, None]
    return y


def conv_transpose2d_backward_input_reference(dy: np.ndarray, weight: np.ndarray, stride: int,
                                              padding: int) -> np.ndarray:
    """dx[n, c, i, j] = sum_{o,kh,kw} w[c, o, kh, kw] dy_padded[n, o, i*S + kh, j*S + kw]."""
    N, _, Ho, Wo = dy.shape
    Cin, _, K, _ = weight.shape
    H = (Ho + 2 * padding - K) // stride + 1
    W = (Wo + 2 * padding - K) // stride + 1
    dyp = np.pad(dy, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    dx = np.zeros((N, Cin, H, W), dtype=dy.dtype)  # (N, Cin, H, W)
    for kh in range(K):
        for kw in range(K):
            dx += np.einsum("co,nohw->nchw", weight[:, :, kh, kw], _tap(dyp, kh, kw, stride, H, W))
    return dx


def conv_transpose2d_backward_weight_reference(x: np.ndarray, dy: np.ndarray, kernel_size: int,
                                               stride: int, padding: int) -> np.ndarray:
    """dw[c, o, kh, kw] = sum_{n,i,j} x[n, c, i, j] dy_padded[n, o, i*S + kh, j*S + kw]."""
    _, Cin, H, W = x.shape
    Cout = dy.shape[1]
    K = kernel_size
    dyp = np.pad(dy, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    dw = np.zeros((Cin, Cout, K, K), dtype=x.dtype)  # (Cin, Cout, K, K)
    for kh in range(K):
        for kw in range(K):
            dw[:, :, kh, kw] = np.einsum("nchw,nohw->co", x, _tap(dyp, kh, kw, stride, H, W))
    return dw
