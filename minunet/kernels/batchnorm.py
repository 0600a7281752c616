"""Batch-norm kernels: per-channel statistics and the two element-wise passes.

    batchnorm_stats(x)                                   -> mean, var         (C,) float64
    batchnorm_forward(x, scale, shift)                   -> y = x*scale + shift, probe
    batchnorm_backward_reduce(dout, x, mean)             -> sum dout, sum dout*(x - mean)
    batchnorm_backward_input(dout, x, mean, a, mean_g, k)-> dx = a*(dout - mean_g - (x-mean)*k)
    batchnorm_relu_*: the same three with a ReLU after the normalisation (BatchNormReLU2d):
    forward clamps y at 0, backward uses dout * (y > 0) in place of dout
    batchnorm_relu_train_forward(x, gamma, beta, eps)    -> y, mean, var (train mode)
    batchnorm_relu_train_backward(dout, x, mean, istd, gamma, scale, shift)
                                                         -> dx, sum dout', sum dout'*(x - mean)
    the two passes of each direction in one, channel by channel (what BatchNormReLU2d runs
    when training): a channel's values are read a second time while they are still in the
    core's cache, instead of after the whole activation has gone through it

Each reads its arrays once (`stats`: one pass with a shifted sum of squares, instead of a
mean pass and then a variance pass). Sums over (N, H, W) run over ~131k values per channel at
the U-Net's first level, so they accumulate in float64 even for float32 input. Measured on
8 x 128 x 128 float32 values of mean 20, against a float64 reference: a float32 running sum is
off by 2.6e-6 relative in the mean (6e-7 with vector lanes), the float64 sum by < 1e-15.
`fastmath={"reassoc"}` lets LLVM split those sums over vector lanes (pairwise-like partial sums;
NaN and inf still propagate, which the layer uses to detect them).

The element-wise passes compute in the array's own dtype (float32 when training).
The passes the U-Net uses (statistics, and the three batch-norm + ReLU passes) run on
minunet's thread pool, one item per group of channels: at the U-Net's sizes the activations
sit in the 32 MiB L3, where two cores read about 1.5x faster than one. Each item is a
single-threaded, GIL-free loop over its channels (`*_channels` kernels below).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .threads import SERIAL_BYTES, get_num_threads, parallel_for

REASSOCIATE = {"reassoc"}  # vectorise sums; no "nnan"/"ninf": NaN must still show up


def _channel_groups(C: int, nbytes: int) -> tuple[int, int]:
    """(channels per item, items): about 4 items per thread, so a parked thread holds up little;
    one item (the calling thread alone) when the array is under SERIAL_BYTES."""
    items = 1 if nbytes < SERIAL_BYTES else min(C, 4 * get_num_threads())
    per = -(-C // items)
    return per, -(-C // per)


def batchnorm_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance over (N, H, W) of x (N, C, H, W), in float64.

    One pass: with d = x - shift (shift = the channel's first value, close to the mean, so
    the sums stay small), mean = shift + sum(d)/M and var = (sum(d*d) - sum(d)**2/M) / M.
    """
    C = x.shape[1]
    mean = np.empty(C)  # (C,) float64
    var = np.empty(C)   # (C,) float64
    per, items = _channel_groups(C, x.nbytes)
    parallel_for(lambda i, slot: _stats_channels(x, i * per, min(C, (i + 1) * per), mean, var),
                 items, blas=False)
    return mean, var


@njit(cache=True, nogil=True, fastmath=REASSOCIATE)
def _stats_channels(x: np.ndarray, c_start: int, c_stop: int, mean: np.ndarray,
                    var: np.ndarray) -> None:
    """batchnorm_stats for channels [c_start, c_stop), into mean and var."""
    N, C, H, W = x.shape
    HW = H * W
    M = N * HW
    xf = x.reshape(N, C, HW)
    for c in range(c_start, c_stop):
        shift = np.float64(xf[0, c, 0])
        s1 = 0.0  # float64 on purpose: see the module docstring
        s2 = 0.0
        for n in range(N):
            for p in range(HW):
                d = np.float64(xf[n, c, p]) - shift
                s1 += d
                s2 += d * d
        mean[c] = shift + s1 / M
        var[c] = max((s2 - s1 * s1 / M) / M, 0.0)


@njit(cache=True, fastmath=REASSOCIATE)
def batchnorm_forward(x: np.ndarray, scale: np.ndarray,
                      shift: np.ndarray) -> tuple[np.ndarray, float]:
    """y[n, c] = x[n, c] * scale[c] + shift[c]; x (N, C, H, W), scale, shift (C,) in x's dtype.

    Also returns `probe` = sum(x - x): 0 when every x is finite, NaN otherwise (the eval-mode
    NaN/inf check, in this same pass; in train mode the statistics already reveal them).
    """
    N, C, H, W = x.shape
    HW = H * W
    xf = x.reshape(N, C, HW)
    y = np.empty_like(x)  # (N, C, H, W)
    yf = y.reshape(N, C, HW)
    probe = x.dtype.type(0)
    for n in range(N):
        for c in range(C):
            a = scale[c]
            b = shift[c]
            for p in range(HW):
                v = xf[n, c, p]
                probe += v - v
                yf[n, c, p] = v * a + b
    return y, probe


@njit(cache=True, fastmath=REASSOCIATE)
def batchnorm_backward_reduce(dout: np.ndarray, x: np.ndarray,
                              mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per channel, in float64: sum of dout, and sum of dout * (x - mean). Shapes (N, C, H, W)."""
    N, C, H, W = x.shape
    HW = H * W
    xf = x.reshape(N, C, HW)
    gf = dout.reshape(N, C, HW)
    sum_g = np.zeros(C)    # (C,) float64
    sum_gxc = np.zeros(C)  # (C,) float64
    for c in range(C):
        m = mean[c]
        s1 = 0.0  # float64 on purpose: see the module docstring
        s2 = 0.0
        for n in range(N):
            for p in range(HW):
                g = np.float64(gf[n, c, p])
                s1 += g
                s2 += g * (np.float64(xf[n, c, p]) - m)
        sum_g[c] = s1
        sum_gxc[c] = s2
    return sum_g, sum_gxc


@njit(cache=True)
def batchnorm_backward_input(dout: np.ndarray, x: np.ndarray, mean: np.ndarray, a: np.ndarray,
                             mean_g: np.ndarray, k: np.ndarray) -> np.ndarray:
    """dx[n, c] = a[c] * (dout[n, c] - mean_g[c] - (x[n, c] - mean[c]) * k[c]).

    dout, x (N, C, H, W); mean, a, mean_g, k (C,) in x's dtype. See layers/batchnorm.py for
    where the coefficients come from.
    """
    N, C, H, W = x.shape
    HW = H * W
    xf = x.reshape(N, C, HW)
    gf = dout.reshape(N, C, HW)
    dx = np.empty_like(x)  # (N, C, H, W)
    df = dx.reshape(N, C, HW)
    for n in range(N):
        for c in range(C):
            ac = a[c]
            mg = mean_g[c]
            mc = mean[c]
            kc = k[c]
            for p in range(HW):
                df[n, c, p] = ac * (gf[n, c, p] - mg - (xf[n, c, p] - mc) * kc)
    return dx


# ---------------------------------------------------------------- fused with a ReLU after it
def batchnorm_relu_forward(x: np.ndarray, scale: np.ndarray,
                           shift: np.ndarray) -> tuple[np.ndarray, float]:
    """y = max(x * scale[c] + shift[c], 0) and the finiteness probe, as batchnorm_forward."""
    x = np.ascontiguousarray(x)
    C = x.shape[1]
    y = np.empty_like(x)  # (N, C, H, W)
    per, items = _channel_groups(C, x.nbytes)
    probes = np.zeros(items, dtype=x.dtype)  # one per item: no shared accumulator
    parallel_for(lambda i, slot: _bn_relu_forward_channels(
        x, scale, shift, i * per, min(C, (i + 1) * per), y, probes, i), items, blas=False)
    return y, probes.sum()


@njit(cache=True, nogil=True, fastmath=REASSOCIATE)
def _bn_relu_forward_channels(x: np.ndarray, scale: np.ndarray, shift: np.ndarray,
                              c_start: int, c_stop: int, y: np.ndarray, probes: np.ndarray,
                              item: int) -> None:
    """batchnorm_relu_forward for channels [c_start, c_stop); probe into probes[item]."""
    N, C, H, W = x.shape
    HW = H * W
    xf = x.reshape(N, C, HW)
    yf = y.reshape(N, C, HW)
    zero = x.dtype.type(0)
    probe = x.dtype.type(0)
    for n in range(N):
        for c in range(c_start, c_stop):
            a = scale[c]
            b = shift[c]
            for p in range(HW):
                v = xf[n, c, p]
                probe += v - v
                t = v * a + b
                yf[n, c, p] = t if t > zero else zero
    probes[item] = probe


def batchnorm_relu_backward_reduce(dout: np.ndarray, y: np.ndarray, x: np.ndarray,
                                   mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """batchnorm_backward_reduce of the masked gradient g = dout * (y > 0). Shapes (N, C, H, W)."""
    C = x.shape[1]
    sum_g = np.zeros(C)    # (C,) float64
    sum_gxc = np.zeros(C)  # (C,) float64
    per, items = _channel_groups(C, x.nbytes)
    parallel_for(lambda i, slot: _bn_relu_reduce_channels(
        dout, y, x, mean, i * per, min(C, (i + 1) * per), sum_g, sum_gxc), items, blas=False)
    return sum_g, sum_gxc


@njit(cache=True, nogil=True, fastmath=REASSOCIATE)
def _bn_relu_reduce_channels(dout: np.ndarray, y: np.ndarray, x: np.ndarray, mean: np.ndarray,
                             c_start: int, c_stop: int, sum_g: np.ndarray,
                             sum_gxc: np.ndarray) -> None:
    """batchnorm_relu_backward_reduce for channels [c_start, c_stop)."""
    N, C, H, W = x.shape
    HW = H * W
    xf = x.reshape(N, C, HW)
    yf = y.reshape(N, C, HW)
    gf = dout.reshape(N, C, HW)
    for c in range(c_start, c_stop):
        m = mean[c]
        s1 = 0.0  # float64 on purpose: see the module docstring
        s2 = 0.0
        for n in range(N):
            for p in range(HW):
                g = np.float64(gf[n, c, p]) if yf[n, c, p] > 0 else 0.0
                s1 += g
                s2 += g * (np.float64(xf[n, c, p]) - m)
        sum_g[c] = s1
        sum_gxc[c] = s2


def batchnorm_relu_backward_input(dout: np.ndarray, y: np.ndarray, x: np.ndarray,
                                  mean: np.ndarray, a: np.ndarray, mean_g: np.ndarray,
                                  k: np.ndarray) -> np.ndarray:
    """batchnorm_backward_input of the masked gradient g = dout * (y > 0)."""
    C = x.shape[1]
    dx = np.empty_like(x)  # (N, C, H, W)
    per, items = _channel_groups(C, x.nbytes)
    parallel_for(lambda i, slot: _bn_relu_input_channels(
        dout, y, x, mean, a, mean_g, k, i * per, min(C, (i + 1) * per), dx), items,
        blas=False)
    return dx


@njit(cache=True, nogil=True)
def _bn_relu_input_channels(dout: np.ndarray, y: np.ndarray, x: np.ndarray, mean: np.ndarray,
                            a: np.ndarray, mean_g: np.ndarray, k: np.ndarray, c_start: int,
                            c_stop: int, dx: np.ndarray) -> None:
    """batchnorm_relu_backward_input for channels [c_start, c_stop), into dx."""
    for c in range(c_start, c_stop):
        _bn_relu_input_channel(dout, y, x, c, mean[c], a[c], mean_g[c], k[c], dx)


@njit(cache=True, nogil=True)
def _bn_relu_input_channel(dout: np.ndarray, y: np.ndarray, x: np.ndarray, c: int,
                           mean: float, a: float, mean_g: float, k: float,
                           dx: np.ndarray) -> None:
    """dx[:, c] = a * (g - mean_g - (x[:, c] - mean) * k), g = dout[:, c] * (y[:, c] > 0); the
    coefficients in x's dtype. No fastmath: the same rounding wherever it is called from."""
    N, C, H, W = x.shape
    HW = H * W
    xf = x.reshape(N, C, HW)
    yf = y.reshape(N, C, HW)
    gf = dout.reshape(N, C, HW)
    df = dx.reshape(N, C, HW)
    zero = x.dtype.type(0)
    for n in range(N):
        for p in range(HW):
            g = gf[n, c, p] if yf[n, c, p] > zero else zero
            df[n, c, p] = a * (g - mean_g - (xf[n, c, p] - mean) * k)


# ---------------------------------------------------------------- train mode, channel by channel
# At the U-Net's sizes one channel of an activation is 0.1-1 MiB (C2's first level: 8 images
# x 128 x 128 float32 = 512 KiB): the two passes of batch norm over one channel fit in a core's
# L2 cache together. So the train-mode kernels below run both passes for a channel before
# moving to the next, and the second pass reads from cache instead of memory.

def batchnorm_relu_train_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                                 eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train-mode BatchNormReLU2d forward: batch statistics, then y, per channel.

    x (N, C, H, W) contiguous; gamma, beta (C,) in x's dtype. Returns y = max(x * scale +
    shift, 0) (N, C, H, W), and mean, var (C,) float64 (biased), where scale =
    gamma / sqrt(var + eps) and shift = beta - mean * scale, rounded to x's dtype: the values
    of batchnorm_stats followed by batchnorm_relu_forward, to the bit. NaN/inf in x show up as
    a non-finite mean or var.
    """
    C = x.shape[1]
    y = np.empty_like(x)  # (N, C, H, W)
    mean = np.empty(C)    # (C,) float64
    var = np.empty(C)     # (C,) float64
    per, items = _channel_groups(C, x.nbytes)
    parallel_for(lambda i, slot: _bn_relu_train_forward_channels(
        x, gamma, beta, eps, i * per, min(C, (i + 1) * per), y, mean, var), items,
        blas=False)
    return y, mean, var


@njit(cache=True, nogil=True, fastmath=REASSOCIATE)
def _bn_relu_train_forward_channels(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                                    eps: float, c_start: int, c_stop: int, y: np.ndarray,
                                    mean: np.ndarray, var: np.ndarray) -> None:
    """batchnorm_relu_train_forward for channels [c_start, c_stop)."""
    _stats_channels(x, c_start, c_stop, mean, var)  # each channel's statistics first ...
    N, C, H, W = x.shape
    HW = H * W
    xf = x.reshape(N, C, HW)
    yf = y.reshape(N, C, HW)
    zero = x.dtype.type(0)
    for c in range(c_start, c_stop):                # ... then its y, as the layer's Python
        istd = 1.0 / np.sqrt(var[c] + eps)          # did it (float64, then x's dtype)
        scale = np.float64(gamma[c]) * istd
        a = x.dtype.type(scale)
        b = x.dtype.type(np.float64(beta[c]) - mean[c] * scale)
        for n in range(N):
            for p in range(HW):
                t = xf[n, c, p] * a + b
                yf[n, c, p] = t if t > zero else zero


def batchnorm_relu_train_backward(dout: np.ndarray, x: np.ndarray, mean: np.ndarray,
                                  istd: np.ndarray, gamma: np.ndarray, scale: np.ndarray,
                                  shift: np.ndarray,
                                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train-mode BatchNormReLU2d backward, per channel: the sums, then dx.

    dout, x (N, C, H, W) contiguous; mean, istd (C,) float64; gamma (C,) in x's dtype; scale,
    shift (C,) in x's dtype: the forward's y = max(x * scale + shift, 0) coefficients, as
    batchnorm_relu_train_forward rounded them (`train_coefficients`). The ReLU's mask y > 0
    is recomputed as x * scale + shift > 0, the very operations of the forward, so y itself
    is not read (one array less per pass). With g = dout * (y > 0): returns dx (N, C, H, W)
    and, in float64, sum_g = sum(g) and sum_gxc = sum(g * (x - mean)) per channel (for dbeta
    and dgamma), where

        dx = a * (g - mean_g - (x - mean) * k),  a = gamma * istd, mean_g = sum_g / M,
        k = istd * (sum_gxc * istd) / M          (M = N*H*W; coefficients rounded to x's
                                                   dtype)

    the values of batchnorm_relu_backward_reduce, BatchNorm2d's coefficients and
    batchnorm_relu_backward_input (given y), to the bit.
    """
    C = x.shape[1]
    dx = np.empty_like(x)   # (N, C, H, W)
    sum_g = np.empty(C)     # (C,) float64
    sum_gxc = np.empty(C)   # (C,) float64
    per, items = _channel_groups(C, x.nbytes)
    parallel_for(lambda i, slot: _bn_relu_train_backward_channels(
        dout, x, mean, istd, gamma, scale, shift, i * per, min(C, (i + 1) * per), dx, sum_g,
        sum_gxc), items, blas=False)
    return dx, sum_g, sum_gxc


def train_coefficients(gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray,
                       eps: float, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) in `dtype` as batchnorm_relu_train_forward computed them per channel:
    istd = 1 / sqrt(var + eps), scale = gamma * istd, shift = beta - mean * scale in float64,
    then rounded (the same operations, so the same bits)."""
    istd = 1.0 / np.sqrt(var + eps)
    scale = gamma.astype(np.float64) * istd
    return scale.astype(dtype), (beta.astype(np.float64) - mean * scale).astype(dtype)


@njit(cache=True, nogil=True, fastmath=REASSOCIATE)
def _bn_relu_train_backward_channels(dout: np.ndarray, x: np.ndarray, mean: np.ndarray,
                                     istd: np.ndarray, gamma: np.ndarray, scale: np.ndarray,
                                     shift: np.ndarray, c_start: int, c_stop: int,
                                     dx: np.ndarray, sum_g: np.ndarray,
                                     sum_gxc: np.ndarray) -> None:
    """batchnorm_relu_train_backward for channels [c_start, c_stop)."""
    N, _, H, W = x.shape
    M = N * H * W
    dtype = x.dtype.type
    for c in range(c_start, c_stop):
        _bn_relu_reduce_affine(dout, x, mean, scale[c], shift[c], c, sum_g, sum_gxc)
        s = istd[c]  # the coefficients as the layer's Python rounds them: float64, then dtype
        _bn_relu_input_affine(dout, x, c, scale[c], shift[c], dtype(mean[c]),
                              dtype(np.float64(gamma[c]) * s), dtype(sum_g[c] / M),
                              dtype(s * (sum_gxc[c] * s) / M), dx)


@njit(cache=True, nogil=True, fastmath=REASSOCIATE, inline="always")
def _bn_relu_reduce_affine(dout: np.ndarray, x: np.ndarray, mean: np.ndarray, scale: float,
                           shift: float, c: int, sum_g: np.ndarray,
                           sum_gxc: np.ndarray) -> None:
    """_bn_relu_reduce_channels for channel c, the mask y > 0 as x * scale + shift > 0."""
    N, C, H, W = x.shape
    HW = H * W
    xf = x.reshape(N, C, HW)
    gf = dout.reshape(N, C, HW)
    zero = x.dtype.type(0)
    m = mean[c]
    s1 = 0.0  # float64 on purpose: see the module docstring
    s2 = 0.0
    for n in range(N):
        for p in range(HW):
            v = xf[n, c, p]
            g = np.float64(gf[n, c, p]) if v * scale + shift > zero else 0.0
            s1 += g
            s2 += g * (np.float64(v) - m)
    sum_g[c] = s1
    sum_gxc[c] = s2


@njit(cache=True, nogil=True)
def _bn_relu_input_affine(dout: np.ndarray, x: np.ndarray, c: int, scale: float,
                          shift: float, mean: float, a: float, mean_g: float, k: float,
                          dx: np.ndarray) -> None:
    """_bn_relu_input_channel with the mask y > 0 as x * scale + shift > 0. No fastmath:
    the same rounding wherever it is called from."""
    N, C, H, W = x.shape
    HW = H * W
    xf = x.reshape(N, C, HW)
    gf = dout.reshape(N, C, HW)
    df = dx.reshape(N, C, HW)
    zero = x.dtype.type(0)
    for n in range(N):
        for p in range(HW):
            v = xf[n, c, p]
            g = gf[n, c, p] if v * scale + shift > zero else zero
            df[n, c, p] = a * (g - mean_g - (v - mean) * k)
