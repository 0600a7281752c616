"""NumPy oracles of the kernel functions: the same signatures and contracts, whole-array NumPy.

What this file is: the test oracle for each kernel FUNCTION on its own (tests/test_conv.py,
test_pool.py, ... compare `kernels.X` with `X_reference` here), including contracts that only
the kernels have, such as batch norm's split into a reduction pass and an element-wise pass
(`batchnorm_backward_reduce`, `batchnorm_backward_input`) or max-pool's uint8 winner offsets.

What it is not: plain loops, or the place to learn the math. Each function works on whole
arrays: the convolutions loop over the K*K kernel taps only and contract one strided
(N, C, Ho, Wo) slab per tap with `np.einsum`; max-pool loops over the output pixels of a
window grid. To read the math, with its derivation, read the layers in `minunet/layers/`
(tests/test_fast_layers.py checks the fast layers against those, layer by layer).
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


# ------------------------------------------------------------------ max pooling
def maxpool2d_forward_reference(x: np.ndarray, kernel_size: int,
                                stride: int) -> tuple[np.ndarray, np.ndarray]:
    """out = max of each K x K window; argmax = the winner's offset kh*K + kw (uint8).

    Each window is flattened row-major and np.argmax returns its FIRST maximum: the tie rule.
    """
    N, C, H, W = x.shape
    K, S = kernel_size, stride
    Ho, Wo = (H - K) // S + 1, (W - K) // S + 1
    out = np.empty((N, C, Ho, Wo), dtype=x.dtype)      # (N, C, Ho, Wo)
    argmax = np.empty((N, C, Ho, Wo), dtype=np.uint8)  # (N, C, Ho, Wo)
    for i in range(Ho):
        for j in range(Wo):
            window = x[:, :, i * S : i * S + K, j * S : j * S + K].reshape(N, C, K * K)
            argmax[:, :, i, j] = window.argmax(axis=2)
            out[:, :, i, j] = window.max(axis=2)
    return out, argmax


def maxpool2d_backward_reference(dout: np.ndarray, argmax: np.ndarray, height: int, width: int,
                                 kernel_size: int, stride: int) -> np.ndarray:
    """dx[n, c, i*S + kh, j*S + kw] += dout[n, c, i, j] at each window's winner (np.add.at adds
    up when overlapping windows pick the same pixel)."""
    N, C, Ho, Wo = dout.shape
    dx = np.zeros((N, C, height, width), dtype=dout.dtype)  # (N, C, H, W)
    n, c, i, j = np.indices((N, C, Ho, Wo))
    kh, kw = np.divmod(argmax.astype(np.int64), kernel_size)
    np.add.at(dx, (n, c, i * stride + kh, j * stride + kw), dout)
    return dx


# ------------------------------------------------------------------ ReLU
def relu_forward_reference(x: np.ndarray) -> np.ndarray:
    """out = max(x, 0)."""
    return np.maximum(x, 0)


def relu_backward_reference(dout: np.ndarray, out: np.ndarray) -> np.ndarray:
    """dx = dout where out > 0, else 0 (also at exactly 0)."""
    return np.where(out > 0, dout, 0).astype(dout.dtype)


# ------------------------------------------------------------------ concat
def concat_channels_reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[a | b] along the channel axis."""
    return np.concatenate([a, b], axis=1)


# ------------------------------------------------------------------ batch norm
def _per_channel(v: np.ndarray) -> np.ndarray:
    """(C,) -> (1, C, 1, 1), to broadcast against (N, C, H, W)."""
    return v[None, :, None, None]


def batchnorm_stats_reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance over (N, H, W), two passes in float64."""
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=(0, 2, 3))
    var = ((x64 - _per_channel(mean)) ** 2).mean(axis=(0, 2, 3))
    return mean, var


def batchnorm_forward_reference(x: np.ndarray, scale: np.ndarray,
                                shift: np.ndarray) -> np.ndarray:
    """y = x * scale[c] + shift[c]."""
    return x * _per_channel(scale) + _per_channel(shift)


def batchnorm_backward_reduce_reference(dout: np.ndarray, x: np.ndarray,
                                        mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per channel, in float64: sum(dout) and sum(dout * (x - mean))."""
    g, x64 = dout.astype(np.float64), x.astype(np.float64)
    return g.sum(axis=(0, 2, 3)), (g * (x64 - _per_channel(mean))).sum(axis=(0, 2, 3))


def batchnorm_backward_input_reference(dout: np.ndarray, x: np.ndarray, mean: np.ndarray,
                                       a: np.ndarray, mean_g: np.ndarray,
                                       k: np.ndarray) -> np.ndarray:
    """dx = a[c] * (dout - mean_g[c] - (x - mean[c]) * k[c])."""
    return _per_channel(a) * (dout - _per_channel(mean_g) - (x - _per_channel(mean))
                              * _per_channel(k))


def batchnorm_relu_forward_reference(x: np.ndarray, scale: np.ndarray,
                                     shift: np.ndarray) -> np.ndarray:
    """y = max(x * scale[c] + shift[c], 0): batch norm's normalise step, then a ReLU."""
    return relu_forward_reference(batchnorm_forward_reference(x, scale, shift))


def batchnorm_relu_backward_reduce_reference(dout: np.ndarray, y: np.ndarray, x: np.ndarray,
                                             mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """batchnorm_backward_reduce_reference of the ReLU-masked gradient dout * (y > 0)."""
    return batchnorm_backward_reduce_reference(relu_backward_reference(dout, y), x, mean)


def batchnorm_relu_backward_input_reference(dout: np.ndarray, y: np.ndarray, x: np.ndarray,
                                            mean: np.ndarray, a: np.ndarray,
                                            mean_g: np.ndarray, k: np.ndarray) -> np.ndarray:
    """batchnorm_backward_input_reference of the ReLU-masked gradient dout * (y > 0)."""
    return batchnorm_backward_input_reference(relu_backward_reference(dout, y), x, mean, a,
                                              mean_g, k)


# ------------------------------------------------------------------ seeded watershed
def seeded_watershed_reference(image: np.ndarray, markers: np.ndarray,
                               mask: np.ndarray) -> np.ndarray:
    """kernels.watershed.seeded_watershed as a plain priority flood on Python's heapq.

    Queue items are (value, age, pixel): the markers (inside the mask) with age 0, so that
    markers of equal value leave in raster order, and every later item with the next age. Each
    popped pixel gives its label to its unlabelled neighbours in the mask (up, left, right,
    down), which join the queue with value max(their own, the popped value)."""
    import heapq

    H, W = image.shape
    labels = np.where(mask, markers, 0).astype(np.int32)           # (H, W)
    queue = [(float(image.flat[p]), 0, int(p)) for p in np.flatnonzero(labels)]
    heapq.heapify(queue)
    age = 0
    while queue:
        value, _, p = heapq.heappop(queue)
        i, j = divmod(p, W)
        for ni, nj in ((i - 1, j), (i, j - 1), (i, j + 1), (i + 1, j)):
            if 0 <= ni < H and 0 <= nj < W and mask[ni, nj] and labels[ni, nj] == 0:
                labels[ni, nj] = labels[i, j]
                age += 1
                heapq.heappush(queue, (max(float(image[ni, nj]), value), age, ni * W + nj))
    return labels
