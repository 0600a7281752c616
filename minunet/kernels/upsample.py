"""Kernels for the U-Net's two cheap layers that move the most memory: the 2x2 stride-2
transposed convolution (the up-step; forward and backward) and the 1x1 convolution (the
head; inference), float32 on AVX-512, written straight into their outputs.

The general routes (conv.py) compute both as BLAS products: the transposed convolution
writes its columns (Cout*4 values per input pixel: as large as its output) and then places
them, the head multiplies a (Cout x Cin) matrix with 3 rows. Here the up-step is the same
product, (4 Cout x Cin) @ (Cin x pixels), on bands of a few input rows that stay in the
core's cache, by the register-tiled kernel of the Winograd products (8 rows x 48 pixels in
registers), and its rows (o, kh, kw) are interleaved into the output rows with the bias;
the head sums each output vector in registers over the input channels:

    up-step  y[n, o, 2i + kh, 2j + kw] = b[o] + sum_c w[c, o, kh, kw] x[n, c, i, j]
    head     y[n, o, i, j]             = b[o] + sum_c w[o, c] x[n, c, i, j]

The up-step's backward (`up_backward_rows`) regroups a band of dy by input pixel (the
inverse interleaving) once and takes all three gradients from there: dx by the same product
kernel, dw as 4 x 4 sums over the band's pixels in registers, db as row sums.

The sums run over c in order, rounded differently from BLAS's (within float32 rounding).
Inference takes all of these (kernels/layers.py); training takes the up-step's forward and
backward together (a forward and the backward that differentiates it) on the CPUs where the
convolutions take the direct route. `tests/test_upsample.py` compares them with the NumPy
references.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
from numba import njit

from ..checks import check_finite
from . import simd
from .gemm import TILE, pack_weights
from .simd import (
    fetch_add,
    vadd,
    vbias_relu,
    vdeinterleave2,
    vfma,
    vinterleave2,
    vload,
    vmul_add,
    vstore,
    vsub,
    vsum,
    vzero,
)
from .threads import SERIAL_FLOPS, get_num_threads, parallel_for
from .winograd import products_f32

OUT_GROUP = 4  # output channels per register tile of the head


# inference's up-step and head take these kernels where they apply; False (or the
# environment's MINUNET_WINOGRAD=0, which turns off every inference-only kernel) sends them
# to the BLAS routes of training's forward
ENABLED = simd.AVAILABLE and os.environ.get("MINUNET_WINOGRAD", "").strip() != "0"


def fits(x: np.ndarray) -> bool:
    """Whether x is what these kernels take: float32 (N, C, H, W), W a multiple of 16."""
    return x.dtype == np.float32 and x.ndim == 4 and x.shape[3] % 16 == 0


def applies(x: np.ndarray) -> bool:
    """Whether inference's layers take these kernels for x: ENABLED, and `fits(x)`."""
    return ENABLED and fits(x)


def pack_up_weights(weight: np.ndarray) -> np.ndarray:
    """(Cin, Cout, 2, 2) -> (1, ceil(4 Cout / 8), Cin, 8): the up-step as one matrix product
    whose rows are (o, kh, kw), row 4o + 2kh + kw, packed as winograd.products_f32 reads its
    weights (one frequency): 8 rows side by side per input channel, zeros past 4 Cout."""
    cin, cout = weight.shape[:2]
    rows = 4 * cout
    tiles = -(-rows // TILE)
    padded = np.zeros((cin, tiles * TILE), np.float32)
    padded[:, :rows] = weight.reshape(cin, rows)
    return np.ascontiguousarray(padded.reshape(cin, tiles, TILE).transpose(1, 0, 2))[None]


UP_BAND_BYTES = 1 << 18  # input rows per item of the up-step: its columns and products ~256 KiB


def up_band_rows(cin: int, cout: int, height: int, width: int) -> int:
    """Input rows per item: the copied rows and the products of a band about UP_BAND_BYTES."""
    per_row = (cin + 4 * cout + TILE) * width * 4
    return max(1, min(height, UP_BAND_BYTES // per_row))


@njit(cache=True, nogil=True)
def up_rows(x: np.ndarray, w_p: np.ndarray, bias: np.ndarray, y: np.ndarray,
            counter: np.ndarray, probes: np.ndarray, rows_per_item: int, V: np.ndarray,
            M: np.ndarray, window: np.ndarray) -> None:
    """y = the 2x2 stride-2 transposed convolution of x (+ bias): x (N, Cin, H, W) float32,
    W a multiple of 16; w_p pack_up_weights's; bias (Cout,); y (N, Cout, 2H, 2W).

    Items are (image, band of rows_per_item input rows), shared between the threads that
    call this through `counter`. An item copies its band into V (1, Cin, T) (the NaN/inf
    probe on the way: probes[item]), multiplies M = w^T V with winograd.products_f32 (8 rows
    (o, kh, kw) x 48 pixels in registers), and writes each output channel's two rows per
    input row from M's rows (o, 0, 0) and (o, 0, 1) interleaved (kw), and (o, 1, 0), (o, 1, 1),
    with the bias. V, M: this thread's scratch, T >= rows_per_item W rounded up to 48.
    window (4,) int64: the input pixels taken, rows [i0, i0 + h), columns [j0, j0 + w) (j0
    and w multiples of 16; `up_window`); only their output pixels are written."""
    N, C, H, W = x.shape
    cout = y.shape[1]
    R = rows_per_item
    top, left, height, width = window[0], window[1], window[2], window[3]
    bands = -(-height // R)
    xr = x.reshape(-1, W)                                          # (N*C*H, W)
    yr = y.reshape(-1, 2 * W)                                      # (N*Cout*2H, 2W)
    Vr = V.reshape(-1, V.shape[2])                                 # (Cin, T)
    Mr = M.reshape(-1, M.shape[2])                                 # (4 Cout', T)
    while True:
        index = fetch_add(counter, 0, 1)
        if index >= N * bands:
            return
        n = index // bands
        i0 = (index - n * bands) * R
        rows = min(R, height - i0)
        i0 += top
        pixels = rows * width
        padded = -(-pixels // 48) * 48
        probe = vzero()
        for c in range(C):
            for r in range(rows):
                src = (n * C + c) * H + i0 + r
                for j in range(0, width, 16):
                    v = vload(xr, src, left + j)
                    probe = vadd(probe, vsub(v, v))
                    vstore(Vr, c, r * width + j, v)
            for t in range(pixels, padded):
                Vr[c, t] = 0
        probes[index] = vsum(probe)
        products_f32(V, w_p, M, padded)
        for o in range(cout):
            b = bias[o]
            for r in range(rows):
                out = ((n * cout + o) * H + i0 + r) * 2                # output row 2i
                for j in range(0, width, 16):
                    t = r * width + j
                    col = 2 * (left + j)
                    row = vinterleave2(vbias_relu(vload(Mr, 4 * o, t), b, False),
                                       vbias_relu(vload(Mr, 4 * o + 1, t), b, False))
                    vstore(yr, out, col, row[0])
                    vstore(yr, out, col + 16, row[1])
                    row = vinterleave2(vbias_relu(vload(Mr, 4 * o + 2, t), b, False),
                                       vbias_relu(vload(Mr, 4 * o + 3, t), b, False))
                    vstore(yr, out + 1, col, row[0])
                    vstore(yr, out + 1, col + 16, row[1])


UP_GRADIENT_GROUPS = 8  # partial sums of dw and db, a fixed number (conv.py's rule)
UP_GRADIENT_PIXELS = 1024  # input pixels per item of the up-step's backward, at least


@njit(cache=True, nogil=True)
def up_backward_rows(x: np.ndarray, dy: np.ndarray, w_p: np.ndarray, dx: np.ndarray,
                     dw_parts: np.ndarray, db_parts: np.ndarray, counter: np.ndarray,
                     probes: np.ndarray, rows_per_item: int, D: np.ndarray,
                     M: np.ndarray) -> None:
    """The three gradients of the 2x2 stride-2 transposed convolution (up_rows's), from one
    read of dy. Forward was y[n, o, 2i + kh, 2j + kw] = b[o] + sum_c w[c, o, kh, kw]
    x[n, c, i, j], so with D[4o + 2kh + kw, (i, j)] = dy[n, o, 2i + kh, 2j + kw] (dy's
    pixels regrouped by their input pixel, the inverse of up_rows's interleaving):

        dx[n, c, i, j]     = sum_q w[c, q] D[q, (i, j)]     (w as (Cin, 4 Cout))
        dw[c, q]          += sum_(i, j) x[n, c, i, j] D[q, (i, j)]
        db[o]             += sum of the rows q = 4o .. 4o + 3 of D

    x (N, Cin, H, W) float32, W a multiple of 16; dy (N, Cout, 2H, 2W); w_p
    pack_weights(w.reshape(Cin, 4 Cout).T)[None]; dx (N, Cin, H, W) (written);
    dw_parts (G, 4 Cout, Cin) and db_parts (G, Cout) zeros, one per group (added to).
    Items are (image, band of rows_per_item input rows), cut into G groups of consecutive
    items; a thread takes a whole group through `counter` and sums its items in order into
    that group's partials, so the caller's sum over groups is the same bits whatever the
    threads did. D (1, 4 Cout, T), M (1, 8 ceil(Cin / 8), T): this thread's scratch, T >=
    rows_per_item W rounded up to 48. probes[item]: sum(v - v) over the dy values read."""
    N, C, H, W = x.shape
    cout = dy.shape[1]
    R = rows_per_item
    bands = -(-H // R)
    pieces = N * bands
    groups = dw_parts.shape[0]
    dyr = dy.reshape(-1, 2 * W)                                    # (N*Cout*2H, 2W)
    xr = x.reshape(-1, H * W)                                      # (N*Cin, H*W)
    dxr = dx.reshape(-1, H * W)                                    # (N*Cin, H*W)
    Dr = D.reshape(-1, D.shape[2])                                 # (4 Cout, T)
    Mr = M.reshape(-1, M.shape[2])                                 # (Cin', T)
    zero = np.float32(0)
    while True:
        group = fetch_add(counter, 0, 1)
        if group >= groups:
            return
        dwt = dw_parts[group]                                      # (4 Cout, Cin)
        db = db_parts[group]                                       # (Cout,)
        for index in range(group * pieces // groups, (group + 1) * pieces // groups):
            n = index // bands
            i0 = (index - n * bands) * R
            rows = min(R, H - i0)
            pixels = rows * W
            padded = -(-pixels // 48) * 48
            probe = vzero()
            for o in range(cout):                                  # D from dy, and db
                total = vzero()
                for r in range(rows):
                    for kh in range(2):
                        src = ((n * cout + o) * H + i0 + r) * 2 + kh     # dy row 2i + kh
                        for j in range(0, W, 16):
                            v0 = vload(dyr, src, 2 * j)
                            v1 = vload(dyr, src, 2 * j + 16)
                            probe = vadd(probe, vadd(vsub(v0, v0), vsub(v1, v1)))
                            p = vdeinterleave2(v0, v1)             # columns kw = 0, 1
                            vstore(Dr, 4 * o + 2 * kh, r * W + j, p[0])
                            vstore(Dr, 4 * o + 2 * kh + 1, r * W + j, p[1])
                            total = vadd(total, vadd(p[0], p[1]))
                db[o] += vsum(total)
                for q in range(4 * o, 4 * o + 4):
                    for t in range(pixels, padded):               # products read up to here
                        Dr[q, t] = zero
            probes[index] = vsum(probe)
            products_f32(D, w_p, M, padded)                        # M = w D: (Cin', T)
            for c in range(C):
                for t in range(0, pixels, 16):
                    vstore(dxr, n * C + c, i0 * W + t, vload(Mr, c, t))
            _up_weight_product(Dr, xr, n * C, i0 * W, pixels, dwt)


@njit(cache=True, nogil=True, inline="always")
def _up_weight_product(Dr: np.ndarray, xr: np.ndarray, row0: int, col0: int, pixels: int,
                       dwt: np.ndarray) -> None:
    """dwt[q, c] += sum_(t < pixels) Dr[q, t] xr[row0 + c, col0 + t]: 4 rows q x 4 channels c
    at a time, their 16 sums kept as 16-lane partial sums over t, the lanes added at the end
    (rows and channels past the last: computed, not kept)."""
    Q, C = dwt.shape
    for q in range(0, Q, 4):
        q1 = min(q + 1, Q - 1)
        q2 = min(q + 2, Q - 1)
        q3 = min(q + 3, Q - 1)
        for c in range(0, C, 4):
            c1 = min(c + 1, C - 1)
            c2 = min(c + 2, C - 1)
            c3 = min(c + 3, C - 1)
            a0 = vzero(); a1 = vzero(); a2 = vzero(); a3 = vzero()  # noqa: E702
            b0 = vzero(); b1 = vzero(); b2 = vzero(); b3 = vzero()  # noqa: E702
            e0 = vzero(); e1 = vzero(); e2 = vzero(); e3 = vzero()  # noqa: E702
            f0 = vzero(); f1 = vzero(); f2 = vzero(); f3 = vzero()  # noqa: E702
            for t in range(0, pixels, 16):
                d0 = vload(Dr, q, t)
                d1 = vload(Dr, q1, t)
                d2 = vload(Dr, q2, t)
                d3 = vload(Dr, q3, t)
                v = vload(xr, row0 + c, col0 + t)
                a0 = vmul_add(d0, v, a0); b0 = vmul_add(d1, v, b0)  # noqa: E702
                e0 = vmul_add(d2, v, e0); f0 = vmul_add(d3, v, f0)  # noqa: E702
                v = vload(xr, row0 + c1, col0 + t)
                a1 = vmul_add(d0, v, a1); b1 = vmul_add(d1, v, b1)  # noqa: E702
                e1 = vmul_add(d2, v, e1); f1 = vmul_add(d3, v, f1)  # noqa: E702
                v = vload(xr, row0 + c2, col0 + t)
                a2 = vmul_add(d0, v, a2); b2 = vmul_add(d1, v, b2)  # noqa: E702
                e2 = vmul_add(d2, v, e2); f2 = vmul_add(d3, v, f2)  # noqa: E702
                v = vload(xr, row0 + c3, col0 + t)
                a3 = vmul_add(d0, v, a3); b3 = vmul_add(d1, v, b3)  # noqa: E702
                e3 = vmul_add(d2, v, e3); f3 = vmul_add(d3, v, f3)  # noqa: E702
            _add_lanes(dwt, q, c, a0, b0, e0, f0)
            if c + 1 < C:
                _add_lanes(dwt, q, c1, a1, b1, e1, f1)
            if c + 2 < C:
                _add_lanes(dwt, q, c2, a2, b2, e2, f2)
            if c + 3 < C:
                _add_lanes(dwt, q, c3, a3, b3, e3, f3)


@njit(cache=True, nogil=True, inline="always")
def _add_lanes(dwt: np.ndarray, q: int, c: int, a: object, b: object, e: object,
               f: object) -> None:
    """dwt[q .. q + 3, c] += the lane sums of a, b, e, f (rows past the last: not kept)."""
    Q = dwt.shape[0]
    dwt[q, c] += vsum(a)
    if q + 1 < Q:
        dwt[q + 1, c] += vsum(b)
    if q + 2 < Q:
        dwt[q + 2, c] += vsum(e)
    if q + 3 < Q:
        dwt[q + 3, c] += vsum(f)


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


@njit(cache=True, nogil=True)
def head_backward_pixels(x: np.ndarray, dy: np.ndarray, weight: np.ndarray, dx: np.ndarray,
                         dw_parts: np.ndarray, db_parts: np.ndarray, counter: np.ndarray,
                         probes: np.ndarray) -> None:
    """The three gradients of head_pixels's 1x1 convolution, from one read of dy per item.
    Forward was y[n, o, p] = b[o] + sum_c w[o, c] x[n, c, p], so

        dx[n, c, p] = sum_o w[o, c] dy[n, o, p]
        dw[o, c]   += sum_p dy[n, o, p] x[n, c, p]      (4 x 4 sums in registers)
        db[o]      += sum_p dy[n, o, p]

    x (N, Cin, H, W) float32, H*W a multiple of 16; dy (N, Cout, H, W); weight (Cout, Cin)
    float32; dx (N, Cin, H, W) (written); dw_parts (G, Cout, Cin), db_parts (G, Cout) zeros
    (added to). Items are (image, run of HEAD_PIXELS pixels), cut into G groups of
    consecutive items; a thread takes a whole group through `counter` and sums its items in
    order into that group's partials (the same bits whatever the threads did). probes[item]:
    sum(v - v) over the dy values read."""
    N, C, H, W = x.shape
    cout = dy.shape[1]
    P = H * W
    xr = x.reshape(N * C, P)
    dyr = dy.reshape(N * cout, P)
    dxr = dx.reshape(N * C, P)
    runs = -(-P // HEAD_PIXELS)
    pieces = N * runs
    groups = dw_parts.shape[0]
    while True:
        group = fetch_add(counter, 0, 1)
        if group >= groups:
            return
        for index in range(group * pieces // groups, (group + 1) * pieces // groups):
            n, run = index // runs, index % runs
            first = run * HEAD_PIXELS
            last = min(first + HEAD_PIXELS, P)
            probe = vzero()
            for o in range(cout):                                   # db, and the probe
                total = vzero()
                for p in range(first, last, 16):
                    v = vload(dyr, n * cout + o, p)
                    probe = vadd(probe, vsub(v, v))
                    total = vadd(total, v)
                db_parts[group, o] += vsum(total)
            probes[index] = vsum(probe)
            for p in range(first, last, 16):                        # dx
                for c in range(C):
                    acc = vzero()
                    for o in range(cout):
                        acc = vfma(vload(dyr, n * cout + o, p), weight[o, c], acc)
                    vstore(dxr, n * C + c, p, acc)
            _up_weight_product(dyr[n * cout:(n + 1) * cout, first:last], xr, n * C, first,
                               last - first, dw_parts[group])        # dw


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


def up_window(height: int, width: int,
              window: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The output window (top, left, height, width) px of the up-step of an (height, width)
    input as up_rows takes it: the input's (top, left, height, width) int64, half of each;
    None: all of it. ValueError unless the window is even and its input columns start and
    end on whole vectors of 16 px."""
    if window is None:
        return np.array([0, 0, height, width], np.int64)
    top, left, h, w = (int(v) for v in window)
    if (top % 2 or h % 2 or left % 32 or w % 32 or top < 0 or left < 0 or h < 2 or w < 32
            or top + h > 2 * height or left + w > 2 * width):
        raise ValueError(f"window {window} of the up-step's {2 * height} x {2 * width} output: "
                         "expected even rows and columns on a grid of 32 px inside it")
    return np.array([top // 2, left // 2, h // 2, w // 2], np.int64)


def conv_transpose2x2_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                                who: str | None = None,
                                window: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The 2x2 stride-2 transposed convolution (no padding) of x (N, Cin, H, W) float32 with
    weight (Cin, Cout, 2, 2) (+ bias) -> (N, Cout, 2H, 2W); W a multiple of 16 (`applies`).
    window (top, left, height, width): the part of the output needed (`up_window`); only
    that is computed (from the input pixels under it), and the rest of y is left unset."""
    x = np.ascontiguousarray(x)
    N, C, H, W = x.shape
    cout = weight.shape[1]
    y = np.empty((N, cout, 2 * H, 2 * W), np.float32)
    part = up_window(H, W, window)
    R = up_band_rows(C, cout, int(part[2]), int(part[3]))
    T = -(-R * int(part[3]) // 48) * 48
    rows = -(-4 * cout // TILE) * TILE
    counter = np.zeros(1, np.int64)
    probes = np.zeros(N * -(-int(part[2]) // R))
    b = np.zeros(cout, np.float32) if bias is None else np.ascontiguousarray(bias, np.float32)
    w_p = pack_up_weights(weight)

    def worker(_: int, slot: int) -> None:
        V = _aligned_scratch(slot, "up V", (1, C, T))
        M = _aligned_scratch(slot, "up M", (1, rows, T))
        up_rows(x, w_p, b, y, counter, probes, R, V, M, part)

    parallel_for(worker, get_num_threads(),
                 serial=8.0 * N * C * cout * part[2] * part[3] < SERIAL_FLOPS, blas=False)
    if who is not None and not np.isfinite(probes.sum()):
        check_finite(who, x, name="input")                          # raises, with counts
    return y


def conv_transpose2x2_backward(x: np.ndarray, dy: np.ndarray, weight: np.ndarray,
                               bias: bool, who: str | None = None,
                               ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(dx, dw, db) of conv_transpose2x2_forward, from one read of dy (up_backward_rows):
    x (N, Cin, H, W) float32 (`fits`), dy (N, Cout, 2H, 2W), weight (Cin, Cout, 2, 2) ->
    dx (N, Cin, H, W), dw (Cin, Cout, 2, 2), db (Cout,) (None without a bias). The same
    values as conv.conv_transpose2d_backward within float32 rounding, the same bits on every
    run. With `who`, NaN/inf in dy raise FloatingPointError before anything is returned."""
    x = np.ascontiguousarray(x)
    dy = np.ascontiguousarray(dy, dtype=np.float32)
    N, C, H, W = x.shape
    cout = weight.shape[1]
    if dy.shape != (N, cout, 2 * H, 2 * W):
        raise ValueError(f"conv_transpose2x2_backward: dy {dy.shape} does not match x {x.shape}")
    dx = np.empty((N, C, H, W), np.float32)
    # at least UP_GRADIENT_PIXELS per band where the image has them: dw's lanes are added
    # once per band and channel pair, which would cost more than the products on short bands
    R = min(H, max(up_band_rows(C, cout, H, W), -(-UP_GRADIENT_PIXELS // W)))
    T = -(-R * W // 48) * 48
    pieces = N * -(-H // R)
    groups = min(pieces, UP_GRADIENT_GROUPS)
    dw_parts = np.zeros((groups, 4 * cout, C), np.float32)        # dw^T per group
    db_parts = np.zeros((groups, cout), np.float32)
    counter = np.zeros(1, np.int64)
    probes = np.zeros(pieces)
    w_p = pack_weights(np.ascontiguousarray(weight, np.float32).reshape(C, 4 * cout).T)[None]

    def worker(_: int, slot: int) -> None:
        D = _aligned_scratch(slot, "up D", (1, 4 * cout, T))
        M = _aligned_scratch(slot, "up dX", (1, w_p.shape[1] * TILE, T))
        up_backward_rows(x, dy, w_p, dx, dw_parts, db_parts, counter, probes, R, D, M)

    parallel_for(worker, min(get_num_threads(), groups),
                 serial=16.0 * N * C * cout * H * W < SERIAL_FLOPS, blas=False)
    if who is not None and not np.isfinite(probes.sum()):
        check_finite(who, dy, name="dout")                          # raises, with counts
    dw_t = dw_parts[0]
    db = db_parts[0]
    for group in range(1, groups):                                  # in order: the same bits
        dw_t += dw_parts[group]
        db += db_parts[group]
    dw = np.ascontiguousarray(dw_t.T).reshape(C, cout, 2, 2)
    return dx, dw, (db if bias else None)


def _aligned_scratch(slot: int, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """conv.py's per-thread scratch (64-byte aligned, kept between calls), float32."""
    from .conv import _scratch

    return _scratch.get(slot, name, shape, np.float32)


def conv1x1_backward(x: np.ndarray, dy: np.ndarray, weight: np.ndarray, bias: bool,
                     who: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(dx, dw, db) of the 1x1 convolution (head_backward_pixels): x (N, Cin, H, W) float32
    (`fits`), dy (N, Cout, H, W), weight (Cout, Cin, 1, 1) -> dx (N, Cin, H, W), dw (Cout,
    Cin, 1, 1), db (Cout,) (None without a bias). With `who`, NaN/inf in dy raise
    FloatingPointError before anything is returned (found from the items' probes)."""
    x = np.ascontiguousarray(x)
    dy = np.ascontiguousarray(dy, dtype=np.float32)
    N, C, H, W = x.shape
    cout = weight.shape[0]
    if dy.shape != (N, cout, H, W):
        raise ValueError(f"conv1x1_backward: dy {dy.shape} does not match x {x.shape}")
    dx = np.empty((N, C, H, W), np.float32)
    pieces = N * -(-H * W // HEAD_PIXELS)
    groups = min(pieces, UP_GRADIENT_GROUPS)
    dw_parts = np.zeros((groups, cout, C), np.float32)
    db_parts = np.zeros((groups, cout), np.float32)
    counter = np.zeros(1, np.int64)
    probes = np.zeros(pieces)
    w = np.ascontiguousarray(weight.reshape(cout, C), dtype=np.float32)

    def worker(_: int, slot: int) -> None:
        head_backward_pixels(x, dy, w, dx, dw_parts, db_parts, counter, probes)

    parallel_for(worker, min(get_num_threads(), groups),
                 serial=4.0 * N * C * cout * H * W < SERIAL_FLOPS, blas=False)
    if who is not None and not np.isfinite(probes.sum()):
        check_finite(who, dy, name="dout")                          # raises, with counts
    dw = dw_parts[0]
    db = db_parts[0]
    for group in range(1, groups):                                  # in order: the same bits
        dw += dw_parts[group]
        db += db_parts[group]
    return dx, dw.reshape(cout, C, 1, 1), (db if bias else None)


def conv1x1_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                      who: str | None = None) -> np.ndarray:
    """The 1x1 convolution of x (N, Cin, H, W) float32 with weight (Cout, Cin, 1, 1)
    (+ bias) -> (N, Cout, H, W); W a multiple of 16 (`applies`)."""
    x = np.ascontiguousarray(x)
    N, C, H, W = x.shape
    cout = weight.shape[0]
    y = np.empty((N, cout, H, W), np.float32)
    return _run(head_pixels, x, pack_head_weights(weight), bias, y,
                N * -(-H * W // HEAD_PIXELS), 2.0 * N * C * cout * H * W, who)
