"""Inference kernels for the U-Net's two cheap layers that move the most memory: the 2x2
stride-2 transposed convolution (the up-step) and the 1x1 convolution (the head), float32 on
AVX-512, written straight into their outputs.

The general routes (conv.py) compute both as BLAS products: the transposed convolution
writes its columns (Cout*4 values per input pixel: as large as its output) and then places
them, the head multiplies a (Cout x Cin) matrix with 3 rows. Here each output vector is
summed in registers over the input channels and stored once, with the bias:

    up-step  y[n, o, 2i + kh, 2j + kw] = b[o] + sum_c w[c, o, kh, kw] x[n, c, i, j]
    head     y[n, o, i, j]             = b[o] + sum_c w[o, c] x[n, c, i, j]

For inference only (eval mode, gradients off: kernels/layers.py): the sums run over c in
order, rounded differently from BLAS's, and training's forward must be the one its backward
differentiates. `tests/test_upsample.py` compares both with the NumPy references.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
from numba import njit

from ..checks import check_finite
from . import simd
from .simd import fetch_add, vadd, vbias_relu, vfma, vinterleave2, vload, vstore, vsub, vsum, vzero
from .threads import SERIAL_FLOPS, get_num_threads, parallel_for

OUT_GROUP = 4  # output channels per register tile (x 4 taps of the up-step: 16 vectors)


# inference's up-step and head take these kernels where they apply; False (or the
# environment's MINUNET_WINOGRAD=0, which turns off every inference-only kernel) sends them
# to the BLAS routes of training's forward
ENABLED = simd.AVAILABLE and os.environ.get("MINUNET_WINOGRAD", "").strip() != "0"


def applies(x: np.ndarray) -> bool:
    """Whether these kernels take x: ENABLED, float32, rows a multiple of 16 values."""
    return ENABLED and x.dtype == np.float32 and x.ndim == 4 and x.shape[3] % 16 == 0


def pack_up_weights(weight: np.ndarray) -> np.ndarray:
    """(Cin, Cout, 2, 2) -> (ceil(Cout/4), Cin, 16): for each group of 4 output channels,
    per input channel, the 16 weights [o][kh][kw] side by side (zeros past Cout)."""
    cin, cout = weight.shape[:2]
    groups = -(-cout // OUT_GROUP)
    padded = np.zeros((cin, groups * OUT_GROUP, 2, 2), np.float32)
    padded[:, :cout] = weight
    return np.ascontiguousarray(padded.reshape(cin, groups, OUT_GROUP * 4).transpose(1, 0, 2))


@njit(cache=True, nogil=True)
def up_rows(x: np.ndarray, w_p: np.ndarray, bias: np.ndarray, y: np.ndarray,
            counter: np.ndarray, probes: np.ndarray) -> None:
    """y = the 2x2 stride-2 transposed convolution of x (+ bias): x (N, Cin, H, W) float32,
    W a multiple of 16; w_p pack_up_weights's; bias (Cout,); y (N, Cout, 2H, 2W). Items are
    (image, input row), shared between the threads that call this through `counter`;
    probes[item] = sum(v - v) over the values it read (NaN if one is NaN or inf)."""
    N, C, H, W = x.shape
    cout = y.shape[1]
    xr = x.reshape(-1, W)                                          # (N*C*H, W)
    yr = y.reshape(-1, 2 * W)                                      # (N*Cout*2H, 2W)
    wr = w_p.reshape(-1, 16)                                       # (groups*C, 16)
    groups = w_p.shape[0]
    while True:
        index = fetch_add(counter, 0, 1)
        if index >= N * H:
            return
        n, i = index // H, index % H
        probe = vzero()
        for g in range(groups):
            for j in range(0, W, 16):
                a0 = vzero(); a1 = vzero(); a2 = vzero(); a3 = vzero()  # noqa: E702
                b0 = vzero(); b1 = vzero(); b2 = vzero(); b3 = vzero()  # noqa: E702
                d0 = vzero(); d1 = vzero(); d2 = vzero(); d3 = vzero()  # noqa: E702
                e0 = vzero(); e1 = vzero(); e2 = vzero(); e3 = vzero()  # noqa: E702
                for c in range(C):
                    v = vload(xr, (n * C + c) * H + i, j)
                    probe = vadd(probe, vsub(v, v))
                    k = g * C + c
                    a0 = vfma(v, wr[k, 0], a0); a1 = vfma(v, wr[k, 1], a1)  # noqa: E702
                    a2 = vfma(v, wr[k, 2], a2); a3 = vfma(v, wr[k, 3], a3)  # noqa: E702
                    b0 = vfma(v, wr[k, 4], b0); b1 = vfma(v, wr[k, 5], b1)  # noqa: E702
                    b2 = vfma(v, wr[k, 6], b2); b3 = vfma(v, wr[k, 7], b3)  # noqa: E702
                    d0 = vfma(v, wr[k, 8], d0); d1 = vfma(v, wr[k, 9], d1)  # noqa: E702
                    d2 = vfma(v, wr[k, 10], d2); d3 = vfma(v, wr[k, 11], d3)  # noqa: E702
                    e0 = vfma(v, wr[k, 12], e0); e1 = vfma(v, wr[k, 13], e1)  # noqa: E702
                    e2 = vfma(v, wr[k, 14], e2); e3 = vfma(v, wr[k, 15], e3)  # noqa: E702
                o = g * OUT_GROUP
                # taps (kh, kw) = (0, 0), (0, 1), (1, 0), (1, 1) of each output channel
                _store_up(yr, n, o, cout, 2 * H, i, j, bias, a0, a1, a2, a3)
                _store_up(yr, n, o + 1, cout, 2 * H, i, j, bias, b0, b1, b2, b3)
                _store_up(yr, n, o + 2, cout, 2 * H, i, j, bias, d0, d1, d2, d3)
                _store_up(yr, n, o + 3, cout, 2 * H, i, j, bias, e0, e1, e2, e3)
        probes[index] = vsum(probe)


@njit(cache=True, nogil=True, inline="always")
def _store_up(yr: np.ndarray, n: int, o: int, cout: int, height: int, i: int, j: int,
              bias: np.ndarray, t00, t01, t10, t11) -> None:  # noqa: ANN001
    """Rows 2i and 2i + 1, columns 2j .. 2j + 31 of output channel o (if o < Cout), from the
    four taps' sums: row 2i interleaves taps (0, 0) and (0, 1), row 2i + 1 (1, 0) and (1, 1)."""
    if o >= cout:
        return
    b = bias[o]
    row = (n * cout + o) * height + 2 * i
    top = vinterleave2(vbias_relu(t00, b, False), vbias_relu(t01, b, False))
    vstore(yr, row, 2 * j, top[0])
    vstore(yr, row, 2 * j + 16, top[1])
    bottom = vinterleave2(vbias_relu(t10, b, False), vbias_relu(t11, b, False))
    vstore(yr, row + 1, 2 * j, bottom[0])
    vstore(yr, row + 1, 2 * j + 16, bottom[1])


def pack_head_weights(weight: np.ndarray) -> np.ndarray:
    """(Cout, Cin, 1, 1) -> (ceil(Cout/4), Cin, 4): per group of 4 output channels and input
    channel, the 4 weights side by side (zeros past Cout)."""
    cout, cin = weight.shape[:2]
    groups = -(-cout // OUT_GROUP)
    padded = np.zeros((groups * OUT_GROUP, cin), np.float32)
    padded[:cout] = weight.reshape(cout, cin)
    return np.ascontiguousarray(padded.reshape(groups, OUT_GROUP, cin).transpose(0, 2, 1))


HEAD_PIXELS = 4096  # pixels per item of the head: 16 channels x 4096 x 4 bytes = 256 KiB


@njit(cache=True, nogil=True)
def head_pixels(x: np.ndarray, w_p: np.ndarray, bias: np.ndarray, y: np.ndarray,
                counter: np.ndarray, probes: np.ndarray) -> None:
    """y = the 1x1 convolution of x (+ bias): x (N, Cin, H, W) float32, H*W a multiple of
    16; w_p pack_head_weights's; y (N, Cout, H, W). Items: (image, run of HEAD_PIXELS
    pixels), shared through `counter`; for 4 output channels x 32 pixels at a time, the 8
    sums stay in registers over the input channels. probes: as up_rows's."""
    N, C, H, W = x.shape
    cout = y.shape[1]
    P = H * W
    xr = x.reshape(N * C, P)
    yr = y.reshape(N * cout, P)
    runs = -(-P // HEAD_PIXELS)
    groups = w_p.shape[0]
    while True:
        index = fetch_add(counter, 0, 1)
        if index >= N * runs:
            return
        n, run = index // runs, index % runs
        first = run * HEAD_PIXELS
        last = min(first + HEAD_PIXELS, P)
        probe = vzero()
        for g in range(groups):
            o = g * OUT_GROUP
            for p in range(first, last, 16):
                a0 = vzero(); a1 = vzero(); a2 = vzero(); a3 = vzero()  # noqa: E702
                for c in range(C):
                    v = vload(xr, n * C + c, p)
                    probe = vadd(probe, vsub(v, v))
                    a0 = vfma(v, w_p[g, c, 0], a0)
                    a1 = vfma(v, w_p[g, c, 1], a1)
                    a2 = vfma(v, w_p[g, c, 2], a2)
                    a3 = vfma(v, w_p[g, c, 3], a3)
                vstore(yr, n * cout + o, p, vbias_relu(a0, bias[o], False))
                if o + 1 < cout:
                    vstore(yr, n * cout + o + 1, p, vbias_relu(a1, bias[o + 1], False))
                if o + 2 < cout:
                    vstore(yr, n * cout + o + 2, p, vbias_relu(a2, bias[o + 2], False))
                if o + 3 < cout:
                    vstore(yr, n * cout + o + 3, p, vbias_relu(a3, bias[o + 3], False))
        probes[index] = vsum(probe)


def _run(kernel: Callable, x: np.ndarray, w_p: np.ndarray, bias: np.ndarray | None, y: np.ndarray,
         items: int, flops: float, who: str | None) -> np.ndarray:
    """Run `kernel` on every thread until its items are done; NaN/inf in x raise (with who)."""
    counter = np.zeros(1, np.int64)
    probes = np.zeros(items)
    b = np.zeros(y.shape[1], np.float32) if bias is None else np.ascontiguousarray(
        bias, dtype=np.float32)

    def worker(_: int, slot: int) -> None:
        kernel(x, w_p, b, y, counter, probes)

    parallel_for(worker, get_num_threads(), serial=flops < SERIAL_FLOPS, blas=False)
    if who is not None and not np.isfinite(probes.sum()):
        check_finite(who, x, name="input")                          # raises, with counts
    return y


def conv_transpose2x2_inference(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                                who: str | None = None) -> np.ndarray:
    """The 2x2 stride-2 transposed convolution (no padding) of x (N, Cin, H, W) float32 with
    weight (Cin, Cout, 2, 2) (+ bias) -> (N, Cout, 2H, 2W); W a multiple of 16 (`applies`)."""
    x = np.ascontiguousarray(x)
    N, C, H, W = x.shape
    cout = weight.shape[1]
    y = np.empty((N, cout, 2 * H, 2 * W), np.float32)
    return _run(up_rows, x, pack_up_weights(weight), bias, y, N * H,
                8.0 * N * C * cout * H * W, who)


def conv1x1_inference(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                      who: str | None = None) -> np.ndarray:
    """The 1x1 convolution of x (N, Cin, H, W) float32 with weight (Cout, Cin, 1, 1)
    (+ bias) -> (N, Cout, H, W); W a multiple of 16 (`applies`)."""
    x = np.ascontiguousarray(x)
    N, C, H, W = x.shape
    cout = weight.shape[0]
    y = np.empty((N, cout, H, W), np.float32)
    return _run(head_pixels, x, pack_head_weights(weight), bias, y,
                N * -(-H * W // HEAD_PIXELS), 2.0 * N * C * cout * H * W, who)
