"""Winograd F(4x4, 3x3): a 3x3 stride-1 pad-1 convolution in 2.25 multiplies per output
instead of 9, for inference (eval mode, gradients off) only.

The idea (Lavin & Gray 2015, "Fast Algorithms for Convolutional Neural Networks"). Cut the
output into 4x4 tiles; tile (i, j) reads the 6x6 input patch d starting at row 4i - 1,
column 4j - 1 (zero outside the image). For one input channel c and output channel o,

    y_tile = A^T [ (G w[o, c] G^T)  *  (B^T d B) ] A          (* element by element)

is exactly the 4x4 block of the 3x3 correlation of d with w[o, c] (the matrices below; the
identity holds in exact arithmetic). Summed over the input channels, the 36 element-by-element
products become 36 independent matrix products, one per "frequency" f = (a, b) of the 6x6
transformed tile:

    V[f, c, t] = (B^T d_{c,t} B)[f]         input transform,  every channel c and tile t
    U[f, c, o] = (G w[o, c] G^T)[f]         weight transform, once per call
    M[f, o, t] = sum_c U[f, c, o] V[f, c, t]    36 products (Cout x Cin) @ (Cin x tiles)
    y[o, tile t] = A^T M[:, o, t] A (+ bias, then ReLU)       output transform

The products take 36 Cin Cout multiply-adds per tile of 16 outputs against 144 Cin Cout for
the direct convolution: 4x fewer. The transforms are linear in Cin + Cout per tile, so they
pay when the channels are many (the U-Net's levels with >= 16 input channels).

`winograd_conv3x3_reference` below is the same computation in whole-array NumPy (the test
oracle and the place to read it); `run_items` the fast one (called by
conv.conv2d_inference): the image is cut into bands of tile rows, and wide rows into blocks
of tiles (`band_cols`: V and M of an item within ITEM_BYTES, 1 MiB, so that they stay in the
core's L2 between the three steps: on 1152-px tiles, 288 tiles a row, whole rows of 16-32
channels took 1.3-2 MiB), one item each on minunet's thread pool; an item transforms its input
into V, multiplies (float32: `products_f32`, 8 output channels x 48 tiles held in vector
registers; float64: plain loops), and writes its output pixels through the output
transform, with the bias and ReLU on the way. In float32 the transforms work on 16 lanes at
a time (simd.py), the stride-4 reads and writes of the tiles done as shuffles of contiguous
vectors; the output transform goes down the tile's columns first, in registers, then across
each output row, stored straight into y (`_output_transform_f32`).

Rounding. The transforms multiply by up to 5 (B^T) and 8 (A^T) and by 1/6 and 1/24 (G), so
rounding errors are larger than the direct convolution's: in float32, a few 1e-6 of the
output's scale against 4e-7 (tests/test_winograd.py bounds it); in float64, ~1e-15. A
pixel's rounding depends on its whole 6x6 input patch, so on values up to 4 px beyond its
3x3 window: two tilings of an image agree within that rounding, not to the bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import overload

from .gemm import TILE
from .simd import (
    fetch_add,
    vadd,
    vbias_relu,
    vdeinterleave4,
    vfma,
    vinterleave4,
    vload,
    vnext,
    vstore,
    vsub,
    vsum,
    vzero,
)

ALPHA = 6   # the transformed tile is 6 x 6
M_OUT = 4   # ... for a 4 x 4 output tile

# y_tile = AT (U * V) AT^T,  U = G w G^T,  V = BT d BT^T
BT = np.array([[4, 0, -5, 0, 1, 0],
               [0, -4, -4, 1, 1, 0],
               [0, 4, -4, -1, 1, 0],
               [0, -2, -1, 2, 1, 0],
               [0, 2, -1, -2, 1, 0],
               [0, 4, 0, -5, 0, 1]], dtype=np.float64)
G = np.array([[1 / 4, 0, 0],
              [-1 / 6, -1 / 6, -1 / 6],
              [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6],
              [1 / 24, -1 / 12, 1 / 6],
              [0, 0, 1]], dtype=np.float64)
AT = np.array([[1, 1, 1, 1, 1, 0],
               [0, 1, -1, 2, -2, 0],
               [0, 1, 1, 4, 4, 0],
               [0, 1, -1, 8, -8, 1]], dtype=np.float64)

BAND_BYTES = 8 << 20  # V and M of one item at most (each frequency's part is in L1/L2)
ITEM_BYTES = 1 << 20  # ... and of one row's block of tiles: rows wider than that are split
# the U-Net's first convolution (1 input channel) stays direct: its transforms would
# outweigh the products they save; no threshold between 1 and 16 channels was measured
MIN_CHANNELS = 16


def winograd_applies(dtype: np.dtype, kernel_size: int, stride: int, padding: int,
                     height: int, width: int, in_channels: int) -> bool:
    """Whether run_items takes this convolution: float32 or float64, 3x3, stride 1, padding
    1, H a multiple of 4, W a multiple of 4 (float64) or 16 (float32: whole vectors), and at
    least MIN_CHANNELS input channels (below that the transforms cost more than the
    multiplies they save)."""
    lanes = 16 if dtype == np.float32 else M_OUT
    return (dtype in (np.float32, np.float64) and kernel_size == 3 and stride == 1
            and padding == 1 and height % M_OUT == 0 and width % lanes == 0
            and in_channels >= MIN_CHANNELS)


# A window of a convolution's output: (top, left, height, width) px, the part computed (the
# rest of the output array is left as it was). Rows on the 4 x 4 tiles' grid, columns on
# whole vectors of 16, so the window's tiles are the whole output's tiles: the same bits.
WINDOW_ROWS = M_OUT
WINDOW_COLS = 16


def window_tiles(height: int, width: int,
                 window: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The window (top, left, height, width) px of an (height, width) output as run_items
    takes it: (tile row r0, tile c0, tile rows th, tiles a row tw) int64; None: the whole
    output. ValueError for a window off the grid (WINDOW_ROWS, WINDOW_COLS) or the output."""
    if window is None:
        return np.array([0, 0, height // M_OUT, width // M_OUT], np.int64)
    top, left, h, w = (int(v) for v in window)
    if (top % WINDOW_ROWS or h % WINDOW_ROWS or left % WINDOW_COLS or w % WINDOW_COLS
            or top < 0 or left < 0 or h < 1 or w < 1 or top + h > height or left + w > width):
        raise ValueError(f"window {window} of a {height} x {width} output: expected rows on a "
                         f"grid of {WINDOW_ROWS} and columns of {WINDOW_COLS} px inside it")
    return np.array([top // M_OUT, left // M_OUT, h // M_OUT, w // M_OUT], np.int64)


# ------------------------------------------------------------------ the reference
def winograd_conv3x3_reference(x: np.ndarray, weight: np.ndarray,
                               bias: np.ndarray | None = None) -> np.ndarray:
    """The 3x3 pad-1 convolution of x (N, Cin, H, W) with weight (Cout, Cin, 3, 3) (+ bias),
    computed the Winograd way in whole-array NumPy. H, W multiples of 4."""
    N, C, H, W = x.shape
    th, tw = H // M_OUT, W // M_OUT
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))                  # (N, C, H+2, W+2)
    # d[n, c, i, j, r, s] = xp[n, c, 4i + r, 4j + s]: the 6x6 patches of every tile
    s0, s1, s2, s3 = xp.strides
    d = np.lib.stride_tricks.as_strided(xp, (N, C, th, tw, ALPHA, ALPHA),
                                        (s0, s1, 4 * s2, 4 * s3, s2, s3))
    bt, g, at = (m.astype(x.dtype) for m in (BT, G, AT))
    V = np.einsum("ar,ncijrs,bs->abcnij", bt, d, bt)                  # (6, 6, C, N, th, tw)
    U = np.einsum("ar,ocrs,bs->abco", g, weight.astype(x.dtype), g)   # (6, 6, C, Cout)
    M = np.einsum("abco,abcnij->abonij", U, V)                        # (6, 6, Cout, N, th, tw)
    Y = np.einsum("pa,abonij,qb->noipjq", at, M, at)                  # (N, Cout, th, 4, tw, 4)
    y = Y.reshape(N, -1, H, W)
    return y if bias is None else y + bias.astype(x.dtype)[:, None, None]


def transformed_weights(weight: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """U[f, c, o] = (G w[o, c] G^T)[f] (f = 6a + b), computed in float64 and rounded once,
    packed for the products: (36, ceil(Cout/8), Cin, 8) (gemm.pack_weights per frequency),
    zero for the channels past Cout. Compiled loops: training transforms its changing weights
    at every step (NumPy's einsum took 5-30 ms for 128 x 128 channels, this well under 1)."""
    Cout, Cin = weight.shape[:2]
    packed = np.zeros((ALPHA * ALPHA, -(-Cout // TILE), Cin, TILE), dtype=dtype)
    _transform_weights(np.ascontiguousarray(weight), G, packed)
    return packed


@njit(cache=True, nogil=True)
def _transform_weights(weight: np.ndarray, g: np.ndarray, packed: np.ndarray) -> None:
    """packed[6a + b, o // 8, c, o % 8] = sum_{r,s} g[a, r] w[o, c, r, s] g[b, s], the sums in
    float64 (transformed_weights's loops), one input channel at a time, the output channels
    innermost (vector lanes)."""
    Cout, Cin = weight.shape[0], weight.shape[1]
    w = np.empty((Cin, 9, Cout))                   # w[c, 3r + s, o] in float64
    for o in range(Cout):
        for c in range(Cin):
            for k in range(9):
                w[c, k, o] = weight[o, c, k // 3, k % 3]
    t = np.empty((ALPHA, 3, Cout))                 # (G w[:, c])[a, s, o]
    u = np.empty((ALPHA * ALPHA, Cout))            # (G w[:, c] G^T)[f, o]
    for c in range(Cin):
        wc = w[c]                                  # (9, Cout)
        for a in range(ALPHA):
            for s in range(3):
                g0, g1, g2 = g[a, 0], g[a, 1], g[a, 2]
                for o in range(Cout):
                    t[a, s, o] = g0 * wc[s, o] + g1 * wc[3 + s, o] + g2 * wc[6 + s, o]
        for a in range(ALPHA):
            for b in range(ALPHA):
                g0, g1, g2 = g[b, 0], g[b, 1], g[b, 2]
                for o in range(Cout):
                    u[a * ALPHA + b, o] = t[a, 0, o] * g0 + t[a, 1, o] * g1 + t[a, 2, o] * g2
        for f in range(ALPHA * ALPHA):
            for ot in range(packed.shape[1]):
                for i in range(min(TILE, Cout - ot * TILE)):
                    packed[f, ot, c, i] = u[f, ot * TILE + i]


_PACKED: list[tuple[tuple, np.ndarray, np.ndarray]] = []  # (key, weights' copy, U), oldest first
_PACKED_BYTES = 64 << 20   # kept at most (the bundled model's 13 convolutions: 7 MiB)


def packed_weights(weight: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """transformed_weights, remembered by the weights' contents: a forward pass would
    otherwise transform every layer's weights again (31 ms of a 152 ms 640-px forward of the
    bundled model; bench/bench_inference.py --tile 640). Found by comparing the weights bit
    for bit with a copy of those remembered, not by the array, so weights changed in place
    (training between two evaluations) or folded anew into a fresh array each pass are
    transformed exactly when they differ. (A digest of the bytes did the same: blake2b took
    3.9 ms a pass over the bundled model's 1.75 MB of 3x3 weights, the comparisons 0.3.)"""
    w = np.ascontiguousarray(weight)
    key = (w.shape, w.dtype.str, np.dtype(dtype).str)
    bits = w.view(f"u{w.itemsize}")             # compared as bits: -0.0 is not 0.0, NaN is NaN
    for known_key, known, U in _PACKED:
        if known_key == key and np.array_equal(known, bits):
            return U
    U = transformed_weights(w, dtype)
    _PACKED.append((key, bits.copy(), U))
    while sum(u.nbytes + k.nbytes for _, k, u in _PACKED) > _PACKED_BYTES and len(_PACKED) > 1:
        _PACKED.pop(0)                          # the oldest first
    return U


# ------------------------------------------------------------------ transforms
@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _probe(row: np.ndarray) -> float:
    """sum(v - v) over a row: 0 when every value is finite, NaN otherwise (the layers'
    NaN/inf check without a pass of its own; "reassoc" lets the sum vectorise)."""
    probe = row.dtype.type(0)
    for v in row:
        probe += v - v
    return probe


@njit(cache=True, nogil=True, inline="always")
def _input_transform(x: np.ndarray, n: int, tile_row: int, base: int, j0: int, j1: int,
                     channel0: int, V: np.ndarray, rows: np.ndarray, zeros: np.ndarray) -> float:
    """V[6a + b, channel0 + c, base + j - j0] = (B^T d B)[a, b] for every channel c of x[n]
    and every tile j in [j0, j1) of tile row `tile_row`, in plain loops (any float dtype).
    Returns the NaN/inf probe (sum of v - v over the values read). rows (6, >= W + 2)
    scratch; zeros (1, >= W) zeros."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    zero = x.dtype.type(0)
    four, five, two = x.dtype.type(4), x.dtype.type(5), x.dtype.type(2)
    probe = zero
    h0 = tile_row * M_OUT - 1
    w_lo, w_hi = max(0, M_OUT * j0 - 1), min(W, M_OUT * j1 + 1)  # the columns tiles j0.. read
    for c in range(C):
        # the columns first: rows[a, 1 + w] = sum_r BT[a, r] x[h0 + r, w], padding 0 at 0, W+1
        d0 = x[n, c, h0] if h0 >= 0 else zeros[0]
        d1 = x[n, c, h0 + 1]
        d2 = x[n, c, h0 + 2]
        d3 = x[n, c, h0 + 3]
        d4 = x[n, c, h0 + 4]
        d5 = x[n, c, h0 + 5] if h0 + 5 < H else zeros[0]
        # every image row is row 1-4 of exactly one tile row: probed there
        probe += (_probe(d1[w_lo:w_hi]) + _probe(d2[w_lo:w_hi]) + _probe(d3[w_lo:w_hi])
                  + _probe(d4[w_lo:w_hi]))
        for a in range(ALPHA):
            rows[a, 0] = zero
            rows[a, W + 1] = zero
        for w in range(w_lo, w_hi):
            a0, a1, a2, a3, a4, a5 = d0[w], d1[w], d2[w], d3[w], d4[w], d5[w]
            rows[0, 1 + w] = four * a0 - five * a2 + a4
            rows[1, 1 + w] = -four * (a1 + a2) + a3 + a4
            rows[2, 1 + w] = four * (a1 - a2) - a3 + a4
            rows[3, 1 + w] = two * (a3 - a1) - a2 + a4
            rows[4, 1 + w] = two * (a1 - a3) - a2 + a4
            rows[5, 1 + w] = four * a1 - five * a3 + a5
        # then the rows: V[6a + b, c, tile j] = sum_s BT[b, s] rows[a, 4j + s]
        for a in range(ALPHA):
            r = rows[a]
            out = V[a * ALPHA:(a + 1) * ALPHA, channel0 + c]           # (6, tiles)
            for j in range(j0, j1):
                e0, e1, e2, e3, e4, e5 = (r[4 * j], r[4 * j + 1], r[4 * j + 2], r[4 * j + 3],
                                          r[4 * j + 4], r[4 * j + 5])
                t = base + j - j0
                out[0, t] = four * e0 - five * e2 + e4
                out[1, t] = -four * (e1 + e2) + e3 + e4
                out[2, t] = four * (e1 - e2) - e3 + e4
                out[3, t] = two * (e3 - e1) - e2 + e4
                out[4, t] = two * (e1 - e3) - e2 + e4
                out[5, t] = four * e1 - five * e3 + e5
    return probe


@njit(cache=True, nogil=True, inline="always")
def _output_transform(M: np.ndarray, y: np.ndarray, n: int, tile_row: int, base: int,
                      j0: int, j1: int, bias: np.ndarray, relu: bool, rows: np.ndarray,
                      o0: int) -> None:
    """y[n, o, 4 tile_row + p, 4j + q] = (A^T M[:, o0 + o, base + j - j0] A)[p, q] (+ bias[o],
    then ReLU) for every output channel o of y and tile j in [j0, j1) of the tile row, in
    plain loops (any float dtype). rows (6, >= W) scratch. o0: y's first channel in M (a
    second output part, see run_items)."""
    K = y.shape[1]
    zero = y.dtype.type(0)
    two, four, eight = y.dtype.type(2), y.dtype.type(4), y.dtype.type(8)
    h0 = tile_row * M_OUT
    for o in range(K):
        # the rows first: rows[a, 4j + q] = sum_b M[6a + b, o, tile j] AT[q, b]
        for a in range(ALPHA):
            m = M[a * ALPHA:(a + 1) * ALPHA, o0 + o]                     # (6, tiles)
            r = rows[a]
            for j in range(j0, j1):
                t = base + j - j0
                m0, m1, m2, m3, m4, m5 = m[0, t], m[1, t], m[2, t], m[3, t], m[4, t], m[5, t]
                s12, d12, s34, d34 = m1 + m2, m1 - m2, m3 + m4, m3 - m4
                r[4 * j] = m0 + s12 + s34
                r[4 * j + 1] = d12 + two * d34
                r[4 * j + 2] = s12 + four * s34
                r[4 * j + 3] = d12 + eight * d34 + m5
        # then the columns: y[h0 + p, w] = sum_a AT[p, a] rows[a, w]
        b = bias[o] if bias.size > 0 else zero
        y0, y1, y2, y3 = y[n, o, h0], y[n, o, h0 + 1], y[n, o, h0 + 2], y[n, o, h0 + 3]
        r0, r1, r2, r3, r4, r5 = rows[0], rows[1], rows[2], rows[3], rows[4], rows[5]
        for w in range(M_OUT * j0, M_OUT * j1):
            s12, d12, s34, d34 = r1[w] + r2[w], r1[w] - r2[w], r3[w] + r4[w], r3[w] - r4[w]
            v0 = r0[w] + s12 + s34 + b
            v1 = d12 + two * d34 + b
            v2 = s12 + four * s34 + b
            v3 = d12 + eight * d34 + r5[w] + b
            if relu:
                v0 = v0 if v0 > zero else zero
                v1 = v1 if v1 > zero else zero
                v2 = v2 if v2 > zero else zero
                v3 = v3 if v3 > zero else zero
            y0[w], y1[w], y2[w], y3[w] = v0, v1, v2, v3


# float32: the same transforms on 16 lanes at a time (simd.py). The rows are kept with an
# offset, rows[a, PAD + w] = column w, zeros at column -1 and W; the strided reads and
# writes of the tiles (4 columns apart) are vdeinterleave4 / vinterleave4 of 64 contiguous
# values.
PAD = 16


@njit(cache=True, nogil=True, inline="always")
def _input_transform_f32(x: np.ndarray, n: int, tile_row: int, base: int, j0: int, j1: int,
                         channel0: int, V: np.ndarray, rows: np.ndarray,
                         zeros: np.ndarray) -> float:
    """_input_transform for float32, W a multiple of 16, j0 a multiple of 16 and j1 one too
    or the row's last tile. rows (6, W + 160) scratch, zero in its columns -1 and W (run_items
    zeroes it; nothing writes there). Only the image columns [4 j0 - 16, 4 j1 + 16) (within
    the image) are transformed into rows, so the tiles j0.. read fresh values: the 16 around
    are the neighbours' columns -1 and 4 j1 rounded out to whole vectors; the stores of a last
    block of 16 past j1 are garbage tiles, which run_items overwrites or zeroes.
    Every array is handled as 2-D rows (x as (N*C*H, W), V as (36*Cin, T)): a view made
    inside a loop costs two atomic reference counts."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    xr = x.reshape(-1, W)                                               # (N*C*H, W)
    Cin = V.shape[1]
    Vr = V.reshape(-1, V.shape[2])                                      # (36*Cin, T)
    probe = vzero()
    h0 = tile_row * M_OUT - 1
    w_lo, w_hi = max(0, M_OUT * j0 - 16), min(W, M_OUT * j1 + 16)
    for c in range(C):
        first = (n * C + c) * H + h0                                    # row h0 of x[n, c]
        top = xr if h0 >= 0 else zeros                                  # row h0: padding?
        i0 = first if h0 >= 0 else 0
        bottom = xr if h0 + 5 < H else zeros
        i5 = first + 5 if h0 + 5 < H else 0
        for w in range(w_lo, w_hi, 16):  # columns: rows[a, PAD + w] = sum_r BT[a, r] x[h0 + r, w]
            d0 = vload(top, i0, w)
            d1 = vload(xr, first + 1, w)
            d2 = vload(xr, first + 2, w)
            d3 = vload(xr, first + 3, w)
            d4 = vload(xr, first + 4, w)
            d5 = vload(bottom, i5, w)
            vstore(rows, 0, PAD + w, vfma(d0, np.float32(4), vfma(d2, np.float32(-5), d4)))
            s12, s34 = vadd(d1, d2), vadd(d3, d4)
            total = vadd(s12, s34)  # rows 1-4 are each probed in exactly one tile row
            probe = vadd(probe, vsub(total, total))
            vstore(rows, 1, PAD + w, vfma(s12, np.float32(-4), s34))
            vstore(rows, 2, PAD + w, vfma(vsub(d1, d2), np.float32(4), vsub(d4, d3)))
            vstore(rows, 3, PAD + w, vfma(vsub(d3, d1), np.float32(2), vsub(d4, d2)))
            vstore(rows, 4, PAD + w, vfma(vsub(d1, d3), np.float32(2), vsub(d4, d2)))
            vstore(rows, 5, PAD + w, vfma(d1, np.float32(4), vfma(d3, np.float32(-5), d5)))
        for a in range(ALPHA):  # the rows: V[6a + b, c, tile j] = sum_s BT[b, s] rows[a, 4j + s]
            v0 = a * ALPHA * Cin + channel0 + c                         # row of V[6a, c]
            # p[k] = columns 4j + k - 1 of tiles j .. j + 15; columns 4j + 3 and 4j + 4 are
            # p[0] and p[1] of the next 16 tiles, one lane along (vnext)
            col = PAD - 1 + 4 * j0
            p = vdeinterleave4(vload(rows, a, col), vload(rows, a, col + 16),
                               vload(rows, a, col + 32), vload(rows, a, col + 48))
            for j in range(j0, j1, 16):
                col = PAD - 1 + 4 * (j + 16)
                q = vdeinterleave4(vload(rows, a, col), vload(rows, a, col + 16),
                                   vload(rows, a, col + 32), vload(rows, a, col + 48))
                e0, e1, e2, e3 = p[0], p[1], p[2], p[3]
                e4 = vnext(p[0], q[0])
                e5 = vnext(p[1], q[1])
                t = base + j - j0
                vstore(Vr, v0, t, vfma(e0, np.float32(4), vfma(e2, np.float32(-5), e4)))
                vstore(Vr, v0 + Cin, t, vfma(vadd(e1, e2), np.float32(-4), vadd(e3, e4)))
                vstore(Vr, v0 + 2 * Cin, t, vfma(vsub(e1, e2), np.float32(4), vsub(e4, e3)))
                vstore(Vr, v0 + 3 * Cin, t, vfma(vsub(e3, e1), np.float32(2), vsub(e4, e2)))
                vstore(Vr, v0 + 4 * Cin, t, vfma(vsub(e1, e3), np.float32(2), vsub(e4, e2)))
                vstore(Vr, v0 + 5 * Cin, t, vfma(e1, np.float32(4),
                                                 vfma(e3, np.float32(-5), e5)))
                p = q
    return vsum(probe)  # NaN if some value was NaN or inf (or the sum of four overflowed)


@njit(cache=True, nogil=True, inline="always")
def _at(m0, m1, m2, m3, m4, m5):  # noqa: ANN001 (vectors)
    """A^T (m0, .., m5) for six vectors (16 tiles each): the four sums of the output
    transform's 1-D step, grouped as in _output_transform's loops."""
    s12, d12, s34, d34 = vadd(m1, m2), vsub(m1, m2), vadd(m3, m4), vsub(m3, m4)
    return (vadd(vadd(m0, s12), s34), vfma(d34, np.float32(2), d12),
            vfma(s34, np.float32(4), s12), vfma(d34, np.float32(8), vadd(d12, m5)))


@njit(cache=True, nogil=True, inline="always")
def _down(Mr: np.ndarray, Cp: int, o: int, t: int, b: int):
    """The output transform's vertical half for column b of 16 tiles t.. of channel o:
    (A^T M)[p, b] for p = 0..3, from M's rows 6a + b (a = 0..5), M as (36*Cout', T) rows with
    Cp channels a frequency."""
    return _at(vload(Mr, b * Cp + o, t), vload(Mr, (6 + b) * Cp + o, t),
               vload(Mr, (12 + b) * Cp + o, t), vload(Mr, (18 + b) * Cp + o, t),
               vload(Mr, (24 + b) * Cp + o, t), vload(Mr, (30 + b) * Cp + o, t))


@njit(cache=True, nogil=True, inline="always")
def _store_row(yr: np.ndarray, h: int, w: int, w_end: int, c0, c1, c2, c3, c4, c5,  # noqa: ANN001
               b: np.float32, relu: bool) -> None:
    """y row h, columns w .. w + 63 (those < w_end): the horizontal half of the output
    transform of 16 tiles, c0..c5 their six columns (A^T M already applied down), then the
    bias and the ReLU. The four outputs of each tile are interleaved into place."""
    q = _at(c0, c1, c2, c3, c4, c5)
    v = vinterleave4(q[0], q[1], q[2], q[3])
    vstore(yr, h, w, vbias_relu(v[0], b, relu))
    if w + 16 < w_end:
        vstore(yr, h, w + 16, vbias_relu(v[1], b, relu))
    if w + 32 < w_end:
        vstore(yr, h, w + 32, vbias_relu(v[2], b, relu))
    if w + 48 < w_end:
        vstore(yr, h, w + 48, vbias_relu(v[3], b, relu))


@njit(cache=True, nogil=True, inline="always")
def _output_transform_f32(M: np.ndarray, y: np.ndarray, n: int, tile_row: int, base: int,
                          j0: int, j1: int, bias: np.ndarray, relu: bool,
                          rows: np.ndarray, o0: int) -> None:
    """_output_transform for float32, W a multiple of 16, j0 and j1 as in
    _input_transform_f32; M as (36*Cout', T) rows and y as (N*Cout*H, W) rows (see
    _input_transform_f32); `rows` is not used; y's channel o is M's o0 + o. Down first,
    then across: for 16 tiles, the six M vectors of each column b give (A^T M)[p, b]
    (registers, no scratch), then each output row p is A^T across b, interleaved into 64
    consecutive pixels and stored straight into y (the other order, across first, stores six
    rows of scratch and interleaves six times instead of four)."""
    K, H, W = y.shape[1], y.shape[2], y.shape[3]
    Cp = M.shape[1]
    Mr = M.reshape(-1, M.shape[2])                                      # (36*Cout', T)
    yr = y.reshape(-1, W)                                               # (N*Cout*H, W)
    w_end = M_OUT * j1
    for o in range(K):
        b = bias[o] if bias.size > 0 else np.float32(0)
        mo = o0 + o                                                     # o's row in M
        h = (n * K + o) * H + tile_row * M_OUT                          # row of y[n, o, 4 tr]
        for j in range(j0, j1, 16):
            t = base + j - j0
            # down: cb[p] = sum_a AT[p, a] M[6a + b, o, tiles t..t+15], column b of each tile
            c0, c1 = _down(Mr, Cp, mo, t, 0), _down(Mr, Cp, mo, t, 1)
            c2, c3 = _down(Mr, Cp, mo, t, 2), _down(Mr, Cp, mo, t, 3)
            c4, c5 = _down(Mr, Cp, mo, t, 4), _down(Mr, Cp, mo, t, 5)
            # across: y[4 tr + p, 4j .. 4j + 63] = A^T (c0[p], .., c5[p]) per tile
            w = M_OUT * j
            _store_row(yr, h, w, w_end, c0[0], c1[0], c2[0], c3[0], c4[0], c5[0], b, relu)
            _store_row(yr, h + 1, w, w_end, c0[1], c1[1], c2[1], c3[1], c4[1], c5[1], b, relu)
            _store_row(yr, h + 2, w, w_end, c0[2], c1[2], c2[2], c3[2], c4[2], c5[2], b, relu)
            _store_row(yr, h + 3, w, w_end, c0[3], c1[3], c2[3], c3[3], c4[3], c5[3], b, relu)


def input_transform(x: np.ndarray, n: int, i: int, base: int, j0: int, j1: int, c0: int,
                    V: np.ndarray, rows: np.ndarray, zeros: np.ndarray) -> float:
    """_input_transform_f32 for float32, _input_transform otherwise (chosen when compiled)."""


@overload(input_transform)
def _input_transform_overload(x, n, i, base, j0, j1, c0, V, rows, zeros):  # noqa: ANN001
    if x.dtype == types.float32:
        return (lambda x, n, i, base, j0, j1, c0, V, rows, zeros:
                _input_transform_f32(x, n, i, base, j0, j1, c0, V, rows, zeros))
    return (lambda x, n, i, base, j0, j1, c0, V, rows, zeros:
            _input_transform(x, n, i, base, j0, j1, c0, V, rows, zeros))


def output_transform(M: np.ndarray, y: np.ndarray, n: int, i: int, base: int, j0: int, j1: int,
                     bias: np.ndarray, relu: bool, rows: np.ndarray, o0: int) -> None:
    """_output_transform_f32 for float32, _output_transform otherwise."""


@overload(output_transform)
def _output_transform_overload(M, y, n, i, base, j0, j1, bias, relu, rows, o0):  # noqa: ANN001
    if y.dtype == types.float32:
        return (lambda M, y, n, i, base, j0, j1, bias, relu, rows, o0:
                _output_transform_f32(M, y, n, i, base, j0, j1, bias, relu, rows, o0))
    return (lambda M, y, n, i, base, j0, j1, bias, relu, rows, o0:
            _output_transform(M, y, n, i, base, j0, j1, bias, relu, rows, o0))


# ------------------------------------------------------------------ the 36 products
@njit(cache=True, nogil=True)
def products_f32(V: np.ndarray, U: np.ndarray, M: np.ndarray, tiles: int) -> None:
    """M[f, o, t] = sum_c U[f, c, o] V[f, c, t] for t < tiles (rounded up to 16), float32:
    8 output channels x 48 tiles (three vectors of 16) in vector registers while the loop
    runs over c (as gemm.direct_product). V (36, Cin, T), U packed (36, ceil(Cout/8), Cin, 8),
    M (36, 8 ceil(Cout/8), T), T a multiple of 48."""
    F, C, T = V.shape[0], V.shape[1], V.shape[2]
    otiles = U.shape[1]
    Vr = V.reshape(-1, T)                                               # (36*Cin, T)
    Mr = M.reshape(-1, T)                                               # (36*Cout', T)
    Ur = U.reshape(-1, TILE)                                            # (36*otiles*Cin, 8)
    for f in range(F):
        for t in range(0, tiles, 48):
            for ot in range(otiles):
                u = (f * otiles + ot) * C                               # row of U[f, ot, 0]
                a0 = vzero(); a1 = vzero(); a2 = vzero(); a3 = vzero()  # noqa: E702
                a4 = vzero(); a5 = vzero(); a6 = vzero(); a7 = vzero()  # noqa: E702
                b0 = vzero(); b1 = vzero(); b2 = vzero(); b3 = vzero()  # noqa: E702
                b4 = vzero(); b5 = vzero(); b6 = vzero(); b7 = vzero()  # noqa: E702
                d0 = vzero(); d1 = vzero(); d2 = vzero(); d3 = vzero()  # noqa: E702
                d4 = vzero(); d5 = vzero(); d6 = vzero(); d7 = vzero()  # noqa: E702
                for c in range(C):
                    v = f * C + c
                    c0 = vload(Vr, v, t)
                    c1 = vload(Vr, v, t + 16)
                    c2 = vload(Vr, v, t + 32)
                    w = Ur[u + c, 0]
                    a0 = vfma(c0, w, a0); b0 = vfma(c1, w, b0); d0 = vfma(c2, w, d0)  # noqa: E702
                    w = Ur[u + c, 1]
                    a1 = vfma(c0, w, a1); b1 = vfma(c1, w, b1); d1 = vfma(c2, w, d1)  # noqa: E702
                    w = Ur[u + c, 2]
                    a2 = vfma(c0, w, a2); b2 = vfma(c1, w, b2); d2 = vfma(c2, w, d2)  # noqa: E702
                    w = Ur[u + c, 3]
                    a3 = vfma(c0, w, a3); b3 = vfma(c1, w, b3); d3 = vfma(c2, w, d3)  # noqa: E702
                    w = Ur[u + c, 4]
                    a4 = vfma(c0, w, a4); b4 = vfma(c1, w, b4); d4 = vfma(c2, w, d4)  # noqa: E702
                    w = Ur[u + c, 5]
                    a5 = vfma(c0, w, a5); b5 = vfma(c1, w, b5); d5 = vfma(c2, w, d5)  # noqa: E702
                    w = Ur[u + c, 6]
                    a6 = vfma(c0, w, a6); b6 = vfma(c1, w, b6); d6 = vfma(c2, w, d6)  # noqa: E702
                    w = Ur[u + c, 7]
                    a7 = vfma(c0, w, a7); b7 = vfma(c1, w, b7); d7 = vfma(c2, w, d7)  # noqa: E702
                o = f * M.shape[1] + ot * TILE                          # row of M[f, 8 ot]
                vstore(Mr, o, t, a0)
                vstore(Mr, o, t + 16, b0)
                vstore(Mr, o, t + 32, d0)
                vstore(Mr, o + 1, t, a1)
                vstore(Mr, o + 1, t + 16, b1)
                vstore(Mr, o + 1, t + 32, d1)
                vstore(Mr, o + 2, t, a2)
                vstore(Mr, o + 2, t + 16, b2)
                vstore(Mr, o + 2, t + 32, d2)
                vstore(Mr, o + 3, t, a3)
                vstore(Mr, o + 3, t + 16, b3)
                vstore(Mr, o + 3, t + 32, d3)
                vstore(Mr, o + 4, t, a4)
                vstore(Mr, o + 4, t + 16, b4)
                vstore(Mr, o + 4, t + 32, d4)
                vstore(Mr, o + 5, t, a5)
                vstore(Mr, o + 5, t + 16, b5)
                vstore(Mr, o + 5, t + 32, d5)
                vstore(Mr, o + 6, t, a6)
                vstore(Mr, o + 6, t + 16, b6)
                vstore(Mr, o + 6, t + 32, d6)
                vstore(Mr, o + 7, t, a7)
                vstore(Mr, o + 7, t + 16, b7)
                vstore(Mr, o + 7, t + 32, d7)


@njit(cache=True, nogil=True)
def products_plain(V: np.ndarray, U: np.ndarray, M: np.ndarray, tiles: int) -> None:
    """products_f32 in plain loops, for any float dtype (float64: the exactness tests)."""
    F, C = V.shape[0], V.shape[1]
    otiles = U.shape[1]
    for f in range(F):
        for ot in range(otiles):
            for i in range(TILE):
                row = M[f, ot * TILE + i]                                # (T,)
                row[:tiles] = 0
                for c in range(C):
                    w = U[f, ot, c, i]
                    v = V[f, c]
                    for t in range(tiles):
                        row[t] += w * v[t]


def products(V: np.ndarray, U: np.ndarray, M: np.ndarray, tiles: int) -> None:
    """products_f32 for float32 arrays, products_plain otherwise (chosen when compiled)."""
    (products_f32 if V.dtype == np.float32 else products_plain)(V, U, M, tiles)


@overload(products)
def _products_overload(V, U, M, tiles):  # noqa: ANN001
    if V.dtype == types.float32:
        return lambda V, U, M, tiles: products_f32(V, U, M, tiles)
    return lambda V, U, M, tiles: products_plain(V, U, M, tiles)


# ------------------------------------------------------------------ the items
@njit(cache=True, nogil=True)
def run_items(x: np.ndarray, x2: np.ndarray, U: np.ndarray, y: np.ndarray, y2: np.ndarray,
              bias: np.ndarray, relu: bool, tile_rows: int, tile_cols: int, counter: np.ndarray,
              probes: np.ndarray, V: np.ndarray, M: np.ndarray, rows: np.ndarray,
              out_rows: np.ndarray, zeros: np.ndarray, window: np.ndarray) -> None:
    """Run items (image, band of tile_rows tile rows, block of tile_cols tiles of each row)
    until none are left (each thread of the region calls this once; the items are shared
    through the atomic `counter`, as conv._direct_items_py). tile_cols is a multiple of 16
    or the whole row; the last block of a row may be narrower. The input is [x | x2] along
    channels (x2 may have 0 channels); the output is [y | y2] along channels (y2 may have 0
    channels: the input gradient of a convolution of two parts, returned as two arrays;
    bias then covers y's channels only); V, M, rows, out_rows: this thread's scratch
    (scratch_shapes); zeros (1, W + 16) zeros. Every tile is computed the same way whatever
    the items: the same bits for any tile_rows and tile_cols.

    window (4,) int64: the output tiles computed, tile rows [r0, r0 + th) and tiles [c0, c0 +
    tw) of each (`full_window`, or `tile_window`: c0 and tw multiples of 4, 16-px columns);
    the rest of y is left as it was. Each tile reads the input around it wherever it is, so
    the window's tiles are the same bits as the whole output's."""
    Ca = x.shape[1]
    th, tw, bands, blocks, count = _plan(x.shape[0], window, tile_rows, tile_cols)
    rows[:] = 0   # the padding columns stay zero (the input transform writes inside them)
    while True:
        index = fetch_add(counter, 0, 1)
        if index >= count:
            return
        n, first, last, j0, j1 = _item(index, bands, blocks, tile_rows, tile_cols, th, tw,
                                       window)
        wide, tiles, padded = _sizes(first, last, j0, j1)
        probe = x.dtype.type(0)
        for tr in range(first, last):
            base = (tr - first) * wide
            probe += input_transform(x, n, tr, base, j0, j1, 0, V, rows, zeros)
            if x2.shape[1] > 0:
                probe += input_transform(x2, n, tr, base, j0, j1, Ca, V, rows, zeros)
        probes[index] = probe
        V[:, :, tiles:padded] = 0  # the last block's unused tiles: no garbage, no denormals
        products(V, U, M, padded)
        for tr in range(first, last):
            output_transform(M, y, n, tr, (tr - first) * wide, j0, j1, bias, relu, out_rows, 0)
            if y2.shape[1] > 0:
                output_transform(M, y2, n, tr, (tr - first) * wide, j0, j1, bias[:0], relu,
                                 out_rows, y.shape[1])


@njit(cache=True, nogil=True)
def run_items_head(x: np.ndarray, U: np.ndarray, bias: np.ndarray, relu: bool,
                   tile_rows: int, tile_cols: int, counter: np.ndarray, probes: np.ndarray,
                   V: np.ndarray, M: np.ndarray, rows: np.ndarray, zeros: np.ndarray,
                   head_w: np.ndarray, head_b: np.ndarray, logits: np.ndarray,
                   acc: np.ndarray, window: np.ndarray) -> None:
    """run_items (float32, one input part) for a convolution whose output goes straight into
    a 1x1 convolution, the U-Net's last one and its head: logits = head_w @ y + head_b with
    y = this convolution (+ bias, ReLU), never stored. For each tile row of an item, each
    output value of y, as the output transform makes it, is multiplied into `acc` (Kc*4,
    >= W) row by row, channel after channel: acc[4k + p] = fma(y[o], head_w[k, o], acc)
    for o = 0, 1, .. (upsample.head_pixels's sums, in its order), and then the tile row's
    logits are acc + head_b. head_w (Kc, Cout) float32, head_b (Kc,); logits (N, Kc, H, W).
    probes[item]: the input's NaN/inf probe plus y's (sum of v - v over the values).
    window: the logits' tiles computed, as run_items's (the rest of logits left as it was)."""
    th, tw, bands, blocks, count = _plan(x.shape[0], window, tile_rows, tile_cols)
    rows[:] = 0
    while True:
        index = fetch_add(counter, 0, 1)
        if index >= count:
            return
        n, first, last, j0, j1 = _item(index, bands, blocks, tile_rows, tile_cols, th, tw,
                                       window)
        wide, tiles, padded = _sizes(first, last, j0, j1)
        probe = np.float32(0)
        for tr in range(first, last):
            probe += _input_transform_f32(x, n, tr, (tr - first) * wide, j0, j1, 0, V, rows,
                                          zeros)
        V[:, :, tiles:padded] = 0
        products_f32(V, U, M, padded)
        for tr in range(first, last):
            probe += _output_head_f32(M, n, tr, (tr - first) * wide, j0, j1, bias, relu,
                                      head_w, head_b, logits, acc)
        probes[index] = probe


@njit(cache=True, nogil=True, inline="always")
def _output_head_f32(M: np.ndarray, n: int, tile_row: int, base: int, j0: int, j1: int,
                     bias: np.ndarray, relu: bool, head_w: np.ndarray, head_b: np.ndarray,
                     logits: np.ndarray, acc: np.ndarray) -> float:
    """_output_transform_f32's values of tile row `tile_row`, tiles j0..j1, channel after
    channel, into the head's sums in acc, then logits = acc + head_b (see run_items_head).
    Returns the probe of the values (sum of v - v)."""
    Kc, H, W = logits.shape[1], logits.shape[2], logits.shape[3]
    K = head_w.shape[1]
    Cp = M.shape[1]
    Mr = M.reshape(-1, M.shape[2])                                      # (36*Cout', T)
    lr = logits.reshape(-1, W)                                          # (N*Kc*H, W)
    w_end = M_OUT * j1
    probe = vzero()
    for o in range(K):
        b = bias[o] if bias.size > 0 else np.float32(0)
        for j in range(j0, j1, 16):
            t = base + j - j0
            c0, c1 = _down(Mr, Cp, o, t, 0), _down(Mr, Cp, o, t, 1)
            c2, c3 = _down(Mr, Cp, o, t, 2), _down(Mr, Cp, o, t, 3)
            c4, c5 = _down(Mr, Cp, o, t, 4), _down(Mr, Cp, o, t, 5)
            w = M_OUT * j
            probe = _head_row(acc, 0, o, w, w_end, c0[0], c1[0], c2[0], c3[0], c4[0], c5[0],
                              b, relu, head_w, probe)
            probe = _head_row(acc, 1, o, w, w_end, c0[1], c1[1], c2[1], c3[1], c4[1], c5[1],
                              b, relu, head_w, probe)
            probe = _head_row(acc, 2, o, w, w_end, c0[2], c1[2], c2[2], c3[2], c4[2], c5[2],
                              b, relu, head_w, probe)
            probe = _head_row(acc, 3, o, w, w_end, c0[3], c1[3], c2[3], c3[3], c4[3], c5[3],
                              b, relu, head_w, probe)
    for k in range(Kc):
        for p in range(M_OUT):
            h = (n * Kc + k) * H + tile_row * M_OUT + p                 # row of logits[n, k]
            for col in range(M_OUT * j0, w_end, 16):
                vstore(lr, h, col, vbias_relu(vload(acc, k * M_OUT + p, col), head_b[k],
                                              False))
    return vsum(probe)


@njit(cache=True, nogil=True, inline="always")
def _head_row(acc: np.ndarray, p: int, o: int, w: int, w_end: int, c0, c1, c2, c3, c4, c5,  # noqa: ANN001
              b: np.float32, relu: bool, head_w: np.ndarray, probe):  # noqa: ANN001
    """_store_row's values of output row p of 16 tiles (columns w .. w + 63, those < w_end),
    multiplied into the head's sums acc[4k + p] instead of stored; returns the probe."""
    q = _at(c0, c1, c2, c3, c4, c5)
    v = vinterleave4(q[0], q[1], q[2], q[3])
    for s in range(4):
        col = w + 16 * s
        if col < w_end:
            value = vbias_relu(v[s], b, relu)
            probe = vadd(probe, vsub(value, value))
            for k in range(head_w.shape[0]):
                row = k * M_OUT + p
                previous = vzero() if o == 0 else vload(acc, row, col)
                vstore(acc, row, col, vfma(value, head_w[k, o], previous))
    return probe


@njit(cache=True, nogil=True, inline="always")
def _plan(images: int, window: np.ndarray, tile_rows: int,
          tile_cols: int) -> tuple[int, int, int, int, int]:
    """The items of a window (r0, c0, th, tw) of tiles in each of `images` images: (tile rows
    th, tiles a row tw, bands of tile_rows rows, blocks of tile_cols tiles, items
    images * bands * blocks)."""
    th, tw = window[2], window[3]
    bands, blocks = -(-th // tile_rows), -(-tw // tile_cols)
    return th, tw, bands, blocks, images * bands * blocks


@njit(cache=True, nogil=True, inline="always")
def _sizes(first: int, last: int, j0: int, j1: int) -> tuple[int, int, int]:
    """An item's (tiles a row, tiles, tiles rounded up to the products' 48)."""
    wide = j1 - j0
    tiles = (last - first) * wide
    return wide, tiles, -(-tiles // 48) * 48


@njit(cache=True, nogil=True, inline="always")
def _item(index: int, bands: int, blocks: int, tile_rows: int, tile_cols: int, th: int,
          tw: int, window: np.ndarray) -> tuple[int, int, int, int, int]:
    """Item `index`'s image n, tile rows [first, last) and tiles [j0, j1) of each (items in
    the order image, band of tile_rows rows, block of tile_cols tiles; the window's th rows
    of tw tiles start at tile row window[0], tile window[1])."""
    n = index // (bands * blocks)
    band, block = divmod(index - n * bands * blocks, blocks)
    first = band * tile_rows
    j0 = block * tile_cols
    r0, c0 = window[0], window[1]
    return (n, r0 + first, r0 + min(first + tile_rows, th), c0 + j0,
            c0 + min(j0 + tile_cols, tw))


def band_cols(tiles_wide: int, in_channels: int, out_channels: int, itemsize: int) -> int:
    """Tiles per item along a row: the whole row when its V and M take at most ITEM_BYTES,
    else the fewest blocks of a multiple of 48 tiles (the products' block) that do (at least
    48)."""
    per_tile = ALPHA * ALPHA * (in_channels + out_channels) * itemsize
    most = max(48, ITEM_BYTES // per_tile // 48 * 48)
    if tiles_wide <= most:
        return tiles_wide
    blocks = -(-tiles_wide // most)
    return -(-tiles_wide // (48 * blocks)) * 48  # the blocks evened out, whole 48s


def band_rows(tiles_wide: int, in_channels: int, out_channels: int, itemsize: int,
              tile_rows: int, row_tiles: int | None = None) -> int:
    """Tile rows per item: V and M of a band at most BAND_BYTES (at least one row), and of
    those the count whose tiles fill the products' blocks of 48 best, the fewest rows among
    equals (more items to share between the threads). tiles_wide: an item's block of tiles
    (band_cols); row_tiles: the whole row's, when the row is cut into blocks, whose last one
    may be narrower and counts too. On a 144-px level (36 tiles a row) 4 rows fill 3 blocks
    of 48, 1 row 3/4 of one; a 288-px level of 64 channels (72 tiles a row, blocks of 48 +
    24) computes a third more products than it needs at 1 row a band (the 24 tiles padded to
    48), none at 2 (`python bench/bench_winograd_phases.py --items`)."""
    per_row = ALPHA * ALPHA * (in_channels + out_channels) * tiles_wide * itemsize
    most = max(1, min(tile_rows, BAND_BYTES // per_row))
    row = tiles_wide if row_tiles is None else row_tiles
    widths = [tiles_wide] * (row // tiles_wide) + ([row % tiles_wide] if row % tiles_wide
                                                    else [])

    def waste(R: int) -> tuple[float, int]:
        return sum(-(-R * w // 48) * 48 for w in widths) / (R * row), R
    return min(range(1, most + 1), key=waste)


def scratch_shapes(in_channels: int, out_channels: int, tiles_wide: int, rows_per_item: int,
                   width: int) -> dict[str, tuple[int, ...]]:
    """The per-thread scratch arrays of an item: V, M, the transforms' rows."""
    # the vector stores of the last tile row run up to 15 tiles past it
    tiles = -(-(rows_per_item * tiles_wide + 16) // 48) * 48
    cout = -(-out_channels // TILE) * TILE
    return {"V": (ALPHA * ALPHA, in_channels, tiles), "M": (ALPHA * ALPHA, cout, tiles),
            "rows": (ALPHA, width + 160),
            "out_rows": (ALPHA, width + 64)}
