"""The convolution's two products, register-tiled, for float32 on AVX-512: no im2col at all.

BLAS is slow on the U-Net's products: they have few rows (Cout = 8 to 128 output channels)
and a long pixel axis, and OpenBLAS first copies ("packs") the whole column matrix, which
im2col has just written (9 copies of the input for a 3x3 convolution). These two kernels read
the input where conv._fill_band left it, one band of rows copied once with its zero padding,
and keep a tile of their results in vector registers (`simd.py`) for the whole sum:

- `direct_product` (forward, and the input gradient, itself a convolution): 8 output
  channels x 48 pixels (three vectors of 16, each inside one output row) at a time; for every
  input channel c and tap (kh, kw) it loads the three input vectors straight from the band and
  adds w[o, c, kh, kw] * them to the 24 sums: 3 loads and 8 scalar broadcasts (the 8 weights
  side by side: `pack_weights`) feed 24 fused multiply-adds. A bias and a ReLU can be applied
  to each tile before it is stored (inference with the batch norm folded in).
- `direct_weight_product` (the weight gradient): 2 output channels x 9 taps of one input
  channel at a time, 18 sums kept as 16-lane partial sums while the loop runs over the band's
  pixels, three output rows per step: per 16 pixels of each of the three rows, 15 input
  vectors and 6 output-gradient vectors feed 54 fused multiply-adds; the lanes are added at
  the end.

So the loops run at the speed of the multiply-add units, not of the memory. `bench/
bench_conv_parts.py` times both against the BLAS route on the same shapes. Each result is a
sum in a fixed order (so results do not depend on threads), within float32 rounding of BLAS's;
tests/test_gemm.py compares them with float64 products.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from numba import njit

from .simd import vbias_relu, vfma, vload, vmul_add, vstore, vsum, vzero
from .threads import SERIAL_BYTES, get_num_threads, parallel_for

BLOCK = 48   # output pixels per register tile of direct_product: three vectors of 16
TILE = 8     # output channels per register tile of direct_product


# One compiled signature each, so that a cold start compiles each of these large kernels once,
# and only when it is first called: the band, the weights and the scratch C-contiguous (their
# strides known to the compiler: about 1.3x faster than any-stride arrays), the outputs and
# output gradients with any strides (a C-contiguous array converts to that type).
_PRODUCT = ("void(float32[:, :, ::1], float32[:, :, ::1], float32[:, :], int64, int64, "
            "float32[:, ::1], float32[::1], boolean)")
_WEIGHT_PRODUCT = ("void(float32[:, :, :, ::1], float32[:, :, :], float32[:, ::1], int64, "
                   "int64, int64, int64)")


def _compiled_on_first_call(signature: str) -> Callable[[Callable], Callable]:
    """njit(signature, cache=True, nogil=True), compiled (or loaded from the cache) when the
    function is first called instead of at import: a model that never takes this route
    never pays for it."""
    def wrap(py_func: Callable) -> Callable:
        dispatcher = None

        def compiled() -> Callable:
            """The Numba dispatcher (callable from other compiled functions too)."""
            nonlocal dispatcher
            if dispatcher is None:
                dispatcher = njit(signature, cache=True, nogil=True)(py_func)
            return dispatcher

        @functools.wraps(py_func)
        def call(*args: object) -> None:
            return (dispatcher or compiled())(*args)
        call.py_func = py_func
        call.compiled = compiled
        return call
    return wrap


def pack_weights(w_t: np.ndarray) -> np.ndarray:
    """w_t (K, M) -> (ceil(M / 8), K, 8), zero-padded: the weights of each tile of 8 output
    channels next to each other, so that direct_product's 8 broadcasts per step read one
    run of 32 bytes instead of 8 rows' worth of cache lines. In one compiled pass (C3's
    deepest weights are 9 MiB: NumPy's padded copy and transposed copy took 3-5 ms a layer,
    every forward and input gradient)."""
    k, m = w_t.shape
    tiles = -(-m // TILE)
    packed = np.empty((tiles, k, TILE), np.float32)
    w_rows = np.ascontiguousarray(w_t.T, dtype=np.float32)  # no copy for w_rows.T
    parts = min(tiles, 4 * get_num_threads())  # tiles of output channels, by thread
    parallel_for(lambda i, slot: _pack(w_rows, packed, i * tiles // parts,
                                       (i + 1) * tiles // parts),
                 parts, serial=packed.nbytes < SERIAL_BYTES, blas=False)
    return packed


@njit(cache=True, nogil=True)
def _pack(w_rows: np.ndarray, packed: np.ndarray, t_start: int, t_stop: int) -> None:
    """packed[t, k, i] = w_rows[8t + i, k], 0 past the last row, for tiles t in
    [t_start, t_stop): pack_weights's pass."""
    M, K = w_rows.shape
    zero = np.float32(0)
    for t in range(t_start, t_stop):
        for k in range(K):
            for i in range(TILE):
                o = t * TILE + i
                packed[t, k, i] = w_rows[o, k] if o < M else zero


@njit(cache=True, nogil=True, inline="always")
def _epilogue(out: np.ndarray, rows: int, bias: np.ndarray, first: int, relu: bool) -> None:
    """out[i] = out[i] + bias[first + i] (0 without a bias), then max(., 0) with relu, for
    the first `rows` rows of an (8, 48) tile, in vector registers."""
    zero = np.float32(0)
    for i in range(rows):
        b = bias[first + i] if bias.size > 0 else zero
        out_i = out[i:i + 1]
        vstore(out_i, 0, 0, vbias_relu(vload(out_i, 0, 0), b, relu))
        vstore(out_i, 0, 16, vbias_relu(vload(out_i, 0, 16), b, relu))
        vstore(out_i, 0, 32, vbias_relu(vload(out_i, 0, 32), b, relu))


@_compiled_on_first_call(_PRODUCT)
def direct_product(band: np.ndarray, w_p: np.ndarray, y: np.ndarray, kernel_size: int,
                   out_width: int, spare: np.ndarray, bias: np.ndarray, relu: bool) -> None:
    """y[o, r*Wo + j] = sum_{c,kh,kw} w[o, c, kh, kw] band[c, r + kh, j + kw] (+ bias[o],
    then max(., 0) with relu): a stride-1 convolution of the zero-padded band, with no
    im2col at all.

    3x3 kernels only. band (Cin, rows_in, padded_width) float32 (conv.fill_band's); w_p the
    weight as
    pack_weights(w.reshape(Cout, -1).T) gives it; y (Cout, R*Wo) with unit stride along
    pixels, Wo a multiple of 16; spare (8, 48) scratch; bias (Cout,) or empty (none). For 48
    output pixels (three vectors of 16, each inside one row) and 8 output channels at a time,
    the 24 sums stay in registers while the loop runs over c, kh, kw; each step loads the
    three input vectors straight from the band. The bias and the ReLU are applied to each
    tile before it is stored (a convolution with a batch norm folded in and the ReLU after
    it, in one pass: inference, see layers.BatchNormReLU2d.after_conv).
    """
    if kernel_size != 3:  # one compiled copy only: this kernel takes seconds to compile
        raise ValueError("direct_product: 3x3 kernels only")
    _direct_product(band, w_p, y, 3, out_width, spare, bias, relu)  # the taps unrolled


@njit(cache=True, nogil=True, inline="always")
def _direct_product(band: np.ndarray, w_p: np.ndarray, y: np.ndarray, kernel_size: int,
                    out_width: int, spare: np.ndarray, bias: np.ndarray, relu: bool) -> None:
    """The body of direct_product."""
    epilogue = relu or bias.size > 0
    C = band.shape[0]
    K, Wo = kernel_size, out_width
    cout, pixels = y.shape
    vectors = pixels // 16
    full = cout - cout % TILE
    for v in range(0, vectors, 3):                  # 48 pixels: three vectors of 16
        whole = v + 3 <= vectors
        q0 = v * 16
        q1 = q0 + 16 if v + 1 < vectors else q0     # past the band: vector 0 again
        q2 = q0 + 32 if v + 2 < vectors else q0
        r0 = q0 // Wo
        j0 = q0 - r0 * Wo
        r1 = q1 // Wo
        j1 = q1 - r1 * Wo
        r2 = q2 // Wo
        j2 = q2 - r2 * Wo
        count = min(48, pixels - q0)
        for o in range(0, full, TILE):
            w_o = w_p[o // TILE]                    # (Cin*K*K, 8)
            a0 = vzero(); a1 = vzero(); a2 = vzero(); a3 = vzero()  # noqa: E702
            a4 = vzero(); a5 = vzero(); a6 = vzero(); a7 = vzero()  # noqa: E702
            b0 = vzero(); b1 = vzero(); b2 = vzero(); b3 = vzero()  # noqa: E702
            b4 = vzero(); b5 = vzero(); b6 = vzero(); b7 = vzero()  # noqa: E702
            d0 = vzero(); d1 = vzero(); d2 = vzero(); d3 = vzero()  # noqa: E702
            d4 = vzero(); d5 = vzero(); d6 = vzero(); d7 = vzero()  # noqa: E702
            k = 0
            for c in range(C):
                rows = band[c]                      # (rows_in, padded_width)
                for kh in range(K):
                    for kw in range(K):
                        c0 = vload(rows, r0 + kh, j0 + kw)
                        c1 = vload(rows, r1 + kh, j1 + kw)
                        c2 = vload(rows, r2 + kh, j2 + kw)
                        w = w_o[k, 0]
                        a0 = vfma(c0, w, a0); b0 = vfma(c1, w, b0); d0 = vfma(c2, w, d0)  # noqa: E702
                        w = w_o[k, 1]
                        a1 = vfma(c0, w, a1); b1 = vfma(c1, w, b1); d1 = vfma(c2, w, d1)  # noqa: E702
                        w = w_o[k, 2]
                        a2 = vfma(c0, w, a2); b2 = vfma(c1, w, b2); d2 = vfma(c2, w, d2)  # noqa: E702
                        w = w_o[k, 3]
                        a3 = vfma(c0, w, a3); b3 = vfma(c1, w, b3); d3 = vfma(c2, w, d3)  # noqa: E702
                        w = w_o[k, 4]
                        a4 = vfma(c0, w, a4); b4 = vfma(c1, w, b4); d4 = vfma(c2, w, d4)  # noqa: E702
                        w = w_o[k, 5]
                        a5 = vfma(c0, w, a5); b5 = vfma(c1, w, b5); d5 = vfma(c2, w, d5)  # noqa: E702
                        w = w_o[k, 6]
                        a6 = vfma(c0, w, a6); b6 = vfma(c1, w, b6); d6 = vfma(c2, w, d6)  # noqa: E702
                        w = w_o[k, 7]
                        a7 = vfma(c0, w, a7); b7 = vfma(c1, w, b7); d7 = vfma(c2, w, d7)  # noqa: E702
                        k += 1
            out = y[o:o + TILE, q0:q0 + 48] if whole else spare        # (8, 48)
            vstore(out, 0, 0, a0); vstore(out, 0, 16, b0); vstore(out, 0, 32, d0)  # noqa: E702
            vstore(out, 1, 0, a1); vstore(out, 1, 16, b1); vstore(out, 1, 32, d1)  # noqa: E702
            vstore(out, 2, 0, a2); vstore(out, 2, 16, b2); vstore(out, 2, 32, d2)  # noqa: E702
            vstore(out, 3, 0, a3); vstore(out, 3, 16, b3); vstore(out, 3, 32, d3)  # noqa: E702
            vstore(out, 4, 0, a4); vstore(out, 4, 16, b4); vstore(out, 4, 32, d4)  # noqa: E702
            vstore(out, 5, 0, a5); vstore(out, 5, 16, b5); vstore(out, 5, 32, d5)  # noqa: E702
            vstore(out, 6, 0, a6); vstore(out, 6, 16, b6); vstore(out, 6, 32, d6)  # noqa: E702
            vstore(out, 7, 0, a7); vstore(out, 7, 16, b7); vstore(out, 7, 32, d7)  # noqa: E702
            if epilogue:
                _epilogue(out, TILE, bias, o, relu)
            if not whole:
                y[o:o + TILE, q0:q0 + count] = spare[:, :count]
        for o in range(full, cout):                 # the channels left over: one at a time
            w_o = w_p[o // TILE]
            i = o - full
            a0 = vzero(); b0 = vzero(); d0 = vzero()  # noqa: E702
            k = 0
            for c in range(C):
                rows = band[c]
                for kh in range(K):
                    for kw in range(K):
                        w = w_o[k, i]
                        a0 = vfma(vload(rows, r0 + kh, j0 + kw), w, a0)
                        b0 = vfma(vload(rows, r1 + kh, j1 + kw), w, b0)
                        d0 = vfma(vload(rows, r2 + kh, j2 + kw), w, d0)
                        k += 1
            vstore(spare, 0, 0, a0); vstore(spare, 0, 16, b0); vstore(spare, 0, 32, d0)  # noqa: E702
            if epilogue:
                _epilogue(spare, 1, bias, o, relu)
            y[o, q0:q0 + count] = spare[0, :count]


@_compiled_on_first_call(_WEIGHT_PRODUCT)
def direct_weight_product(band: np.ndarray, g: np.ndarray, dw: np.ndarray, out_width: int,
                          o_start: int, o_stop: int, c_block: int) -> None:
    """dw[o, (c*3 + kh)*3 + kw] += sum_{b,r,j} g[b, o, r*Wo + j] band[b, c, r + kh, j + kw]
    for o in [o_start, o_stop): a 3x3 stride-1 convolution's weight gradient over B bands
    (one per image, or B = 1), read straight from the bands.

    band (B, Cin, rows_in, padded_width) float32 (conv.fill_band's, per image); g (B, Cout,
    R*Wo) float32, the output gradient there, unit stride along pixels, Wo a multiple of 16;
    dw (Cout, Cin*9) float32 (added to). For 2 output channels and one input channel at a
    time, the 18 sums (2 x 9 taps) stay in registers as 16-lane partial sums while the loop
    runs over the pixels of all B bands, three output rows per step: an input row loaded once
    serves every output row that reads it (row r + 2 is tap kh = 2 of output row r, 1 of
    r + 1, 0 of r + 2), so a step makes 15 input loads and 6 output-gradient loads for 54
    multiply-adds. (The kernel this replaced, three channels and one row per step, 12 loads
    for 27, was slower on every U-Net layer it was timed on; 3 channels x 2 rows spill
    registers.) The lanes are added once per channel pair and input channel, so the longer
    the sweep, the less that costs: small images are swept B at a time
    (conv._direct_weight_gradient). The input channels go in blocks of c_block, every output
    channel of a block before the next block, so that the block's bands stay in the core's
    L2 cache while the output gradient streams past. bench/bench_conv_parts.py times it.
    """
    B, C = band.shape[0], band.shape[1]
    pixels = g.shape[2]
    Wo = out_width
    R = pixels // Wo
    for c0 in range(0, C, c_block):
        for o in range(o_start, o_stop, 2):
            o1 = min(o + 1, o_stop - 1)         # past the last channel: computed, not kept
            for c in range(c0, min(C, c0 + c_block)):
                a0 = vzero(); a1 = vzero(); a2 = vzero(); a3 = vzero(); a4 = vzero()  # noqa: E702
                a5 = vzero(); a6 = vzero(); a7 = vzero(); a8 = vzero()  # noqa: E702
                b0 = vzero(); b1 = vzero(); b2 = vzero(); b3 = vzero(); b4 = vzero()  # noqa: E702
                b5 = vzero(); b6 = vzero(); b7 = vzero(); b8 = vzero()  # noqa: E702
                for i in range(B):              # the images' bands: one sweep
                    rows = band[i, c]           # (rows_in, padded_width)
                    gi = g[i]                   # (Cout, R*Wo)
                    r = 0
                    while r + 3 <= R:                   # three output rows r, r + 1, r + 2
                        for j in range(0, Wo, 16):
                            p = r * Wo + j
                            e0 = vload(gi, o, p); f0 = vload(gi, o1, p)  # noqa: E702
                            e1 = vload(gi, o, p + 1 * Wo); f1 = vload(gi, o1, p + 1 * Wo)  # noqa: E702
                            e2 = vload(gi, o, p + 2 * Wo); f2 = vload(gi, o1, p + 2 * Wo)  # noqa: E702
                            x = vload(rows, r, j)
                            a0 = vmul_add(x, e0, a0); b0 = vmul_add(x, f0, b0)  # noqa: E702
                            x = vload(rows, r, j + 1)
                            a1 = vmul_add(x, e0, a1); b1 = vmul_add(x, f0, b1)  # noqa: E702
                            x = vload(rows, r, j + 2)
                            a2 = vmul_add(x, e0, a2); b2 = vmul_add(x, f0, b2)  # noqa: E702
                            x = vload(rows, r + 1, j)
                            a3 = vmul_add(x, e0, a3); b3 = vmul_add(x, f0, b3)  # noqa: E702
                            a0 = vmul_add(x, e1, a0); b0 = vmul_add(x, f1, b0)  # noqa: E702
                            x = vload(rows, r + 1, j + 1)
                            a4 = vmul_add(x, e0, a4); b4 = vmul_add(x, f0, b4)  # noqa: E702
                            a1 = vmul_add(x, e1, a1); b1 = vmul_add(x, f1, b1)  # noqa: E702
                            x = vload(rows, r + 1, j + 2)
                            a5 = vmul_add(x, e0, a5); b5 = vmul_add(x, f0, b5)  # noqa: E702
                            a2 = vmul_add(x, e1, a2); b2 = vmul_add(x, f1, b2)  # noqa: E702
                            x = vload(rows, r + 2, j)
                            a6 = vmul_add(x, e0, a6); b6 = vmul_add(x, f0, b6)  # noqa: E702
                            a3 = vmul_add(x, e1, a3); b3 = vmul_add(x, f1, b3)  # noqa: E702
                            a0 = vmul_add(x, e2, a0); b0 = vmul_add(x, f2, b0)  # noqa: E702
                            x = vload(rows, r + 2, j + 1)
                            a7 = vmul_add(x, e0, a7); b7 = vmul_add(x, f0, b7)  # noqa: E702
                            a4 = vmul_add(x, e1, a4); b4 = vmul_add(x, f1, b4)  # noqa: E702
                            a1 = vmul_add(x, e2, a1); b1 = vmul_add(x, f2, b1)  # noqa: E702
                            x = vload(rows, r + 2, j + 2)
                            a8 = vmul_add(x, e0, a8); b8 = vmul_add(x, f0, b8)  # noqa: E702
                            a5 = vmul_add(x, e1, a5); b5 = vmul_add(x, f1, b5)  # noqa: E702
                            a2 = vmul_add(x, e2, a2); b2 = vmul_add(x, f2, b2)  # noqa: E702
                            x = vload(rows, r + 3, j)
                            a6 = vmul_add(x, e1, a6); b6 = vmul_add(x, f1, b6)  # noqa: E702
                            a3 = vmul_add(x, e2, a3); b3 = vmul_add(x, f2, b3)  # noqa: E702
                            x = vload(rows, r + 3, j + 1)
                            a7 = vmul_add(x, e1, a7); b7 = vmul_add(x, f1, b7)  # noqa: E702
                            a4 = vmul_add(x, e2, a4); b4 = vmul_add(x, f2, b4)  # noqa: E702
                            x = vload(rows, r + 3, j + 2)
                            a8 = vmul_add(x, e1, a8); b8 = vmul_add(x, f1, b8)  # noqa: E702
                            a5 = vmul_add(x, e2, a5); b5 = vmul_add(x, f2, b5)  # noqa: E702
                            x = vload(rows, r + 4, j)
                            a6 = vmul_add(x, e2, a6); b6 = vmul_add(x, f2, b6)  # noqa: E702
                            x = vload(rows, r + 4, j + 1)
                            a7 = vmul_add(x, e2, a7); b7 = vmul_add(x, f2, b7)  # noqa: E702
                            x = vload(rows, r + 4, j + 2)
                            a8 = vmul_add(x, e2, a8); b8 = vmul_add(x, f2, b8)  # noqa: E702
                        r += 3
                    while r < R:                        # the rows left over, one at a time
                        for j in range(0, Wo, 16):
                            p = r * Wo + j
                            e0 = vload(gi, o, p); f0 = vload(gi, o1, p)  # noqa: E702
                            x = vload(rows, r, j)
                            a0 = vmul_add(x, e0, a0); b0 = vmul_add(x, f0, b0)  # noqa: E702
                            x = vload(rows, r, j + 1)
                            a1 = vmul_add(x, e0, a1); b1 = vmul_add(x, f0, b1)  # noqa: E702
                            x = vload(rows, r, j + 2)
                            a2 = vmul_add(x, e0, a2); b2 = vmul_add(x, f0, b2)  # noqa: E702
                            x = vload(rows, r + 1, j)
                            a3 = vmul_add(x, e0, a3); b3 = vmul_add(x, f0, b3)  # noqa: E702
                            x = vload(rows, r + 1, j + 1)
                            a4 = vmul_add(x, e0, a4); b4 = vmul_add(x, f0, b4)  # noqa: E702
                            x = vload(rows, r + 1, j + 2)
                            a5 = vmul_add(x, e0, a5); b5 = vmul_add(x, f0, b5)  # noqa: E702
                            x = vload(rows, r + 2, j)
                            a6 = vmul_add(x, e0, a6); b6 = vmul_add(x, f0, b6)  # noqa: E702
                            x = vload(rows, r + 2, j + 1)
                            a7 = vmul_add(x, e0, a7); b7 = vmul_add(x, f0, b7)  # noqa: E702
                            x = vload(rows, r + 2, j + 2)
                            a8 = vmul_add(x, e0, a8); b8 = vmul_add(x, f0, b8)  # noqa: E702
                        r += 1
                k = c * 9
                dw[o, k] += vsum(a0); dw[o, k + 1] += vsum(a1); dw[o, k + 2] += vsum(a2)  # noqa: E702
                dw[o, k + 3] += vsum(a3); dw[o, k + 4] += vsum(a4); dw[o, k + 5] += vsum(a5)  # noqa: E702
                dw[o, k + 6] += vsum(a6); dw[o, k + 7] += vsum(a7); dw[o, k + 8] += vsum(a8)  # noqa: E702
                if o1 > o:
                    dw[o1, k] += vsum(b0); dw[o1, k + 1] += vsum(b1); dw[o1, k + 2] += vsum(b2)  # noqa: E702
                    dw[o1, k + 3] += vsum(b3); dw[o1, k + 4] += vsum(b4); dw[o1, k + 5] += vsum(b5)  # noqa: E702
                    dw[o1, k + 6] += vsum(b6); dw[o1, k + 7] += vsum(b7); dw[o1, k + 8] += vsum(b8)  # noqa: E702
