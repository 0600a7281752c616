"""The convolution's matrix products, register-tiled, for float32 on AVX-512.

BLAS is slow on the U-Net's products: they have few rows (Cout = 8 to 128 output channels)
and a long pixel axis, and OpenBLAS first copies ("packs") the whole column matrix, which
im2col has just written, before multiplying. This kernel multiplies the columns where im2col
left them, in a layout made for it: `colb` (blocks, Cin*K*K, 48), the columns of 48
consecutive pixels stored one block after another, so that each block is read front to
back. For every block and every 8 output channels it keeps the 8 x 48 results in 24 vector
registers (`simd.py`) while it runs over k:

    for k in range(Cin*K*K):
        c0, c1, c2 = colb[b, k, 0:16], colb[b, k, 16:32], colb[b, k, 32:48]
        for each of the 8 channels o:  acc[o] += w[o, k] * (c0, c1, c2)   # 3 fused mul-adds

3 loads and 8 scalar broadcasts feed 24 multiply-adds, so the loop runs at the speed of the
multiply-add units instead of the memory's. The weight gradient's product, dw^T = col @ g^T
(`blocked_weight_product`), reads the same blocked columns and keeps 24 rows k x 16 output
channels in registers. `bench/bench_conv_parts.py` times both against np.matmul on the same
columns.

Each output is the sum over k in order, fused multiply-adds, one rounding each: within float32
rounding of BLAS's (which sums in another order); tests compare it with the readable layers.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .simd import vadd, vfma, vload, vstore, vzero

BLOCK = 48   # pixels per block of colb: three vectors of 16 float32
TILE = 8     # output channels per register tile


@njit(cache=True, nogil=True)
def blocked_product(wt: np.ndarray, colb: np.ndarray, y: np.ndarray, spare: np.ndarray) -> None:
    """y[o, b*48 + l] = sum_k wt[k, o] * colb[b, k, l] for every column of y.

    wt (Cin*K*K, Cout) float32, C-contiguous (the weight, transposed); colb (blocks, Cin*K*K,
    48) float32, C-contiguous, with blocks * 48 >= y.shape[1] (the last block's extra lanes
    are computed and dropped); y (Cout, pixels) float32 with unit stride along pixels (a
    band of one image's output); spare (TILE, 48) float32 scratch for the last, partial block.
    """
    kd, cout = wt.shape
    pixels = y.shape[1]
    full = cout - cout % TILE
    for b in range(colb.shape[0]):
        cb = colb[b]                                          # (Cin*K*K, 48)
        p = b * BLOCK
        last = p + BLOCK > pixels
        for o in range(0, full, TILE):
            a0 = vzero(); a1 = vzero(); a2 = vzero(); a3 = vzero()  # noqa: E702
            a4 = vzero(); a5 = vzero(); a6 = vzero(); a7 = vzero()  # noqa: E702
            b0 = vzero(); b1 = vzero(); b2 = vzero(); b3 = vzero()  # noqa: E702
            b4 = vzero(); b5 = vzero(); b6 = vzero(); b7 = vzero()  # noqa: E702
            d0 = vzero(); d1 = vzero(); d2 = vzero(); d3 = vzero()  # noqa: E702
            d4 = vzero(); d5 = vzero(); d6 = vzero(); d7 = vzero()  # noqa: E702
            for k in range(kd):
                c0 = vload(cb, k, 0)
                c1 = vload(cb, k, 16)
                c2 = vload(cb, k, 32)
                w = wt[k, o]
                a0 = vfma(c0, w, a0); b0 = vfma(c1, w, b0); d0 = vfma(c2, w, d0)  # noqa: E702
                w = wt[k, o + 1]
                a1 = vfma(c0, w, a1); b1 = vfma(c1, w, b1); d1 = vfma(c2, w, d1)  # noqa: E702
                w = wt[k, o + 2]
                a2 = vfma(c0, w, a2); b2 = vfma(c1, w, b2); d2 = vfma(c2, w, d2)  # noqa: E702
                w = wt[k, o + 3]
                a3 = vfma(c0, w, a3); b3 = vfma(c1, w, b3); d3 = vfma(c2, w, d3)  # noqa: E702
                w = wt[k, o + 4]
                a4 = vfma(c0, w, a4); b4 = vfma(c1, w, b4); d4 = vfma(c2, w, d4)  # noqa: E702
                w = wt[k, o + 5]
                a5 = vfma(c0, w, a5); b5 = vfma(c1, w, b5); d5 = vfma(c2, w, d5)  # noqa: E702
                w = wt[k, o + 6]
                a6 = vfma(c0, w, a6); b6 = vfma(c1, w, b6); d6 = vfma(c2, w, d6)  # noqa: E702
                w = wt[k, o + 7]
                a7 = vfma(c0, w, a7); b7 = vfma(c1, w, b7); d7 = vfma(c2, w, d7)  # noqa: E702
            out = spare if last else y[o:o + TILE, p:p + BLOCK]  # (8, 48)
            vstore(out, 0, 0, a0); vstore(out, 0, 16, b0); vstore(out, 0, 32, d0)  # noqa: E702
            vstore(out, 1, 0, a1); vstore(out, 1, 16, b1); vstore(out, 1, 32, d1)  # noqa: E702
            vstore(out, 2, 0, a2); vstore(out, 2, 16, b2); vstore(out, 2, 32, d2)  # noqa: E702
            vstore(out, 3, 0, a3); vstore(out, 3, 16, b3); vstore(out, 3, 32, d3)  # noqa: E702
            vstore(out, 4, 0, a4); vstore(out, 4, 16, b4); vstore(out, 4, 32, d4)  # noqa: E702
            vstore(out, 5, 0, a5); vstore(out, 5, 16, b5); vstore(out, 5, 32, d5)  # noqa: E702
            vstore(out, 6, 0, a6); vstore(out, 6, 16, b6); vstore(out, 6, 32, d6)  # noqa: E702
            vstore(out, 7, 0, a7); vstore(out, 7, 16, b7); vstore(out, 7, 32, d7)  # noqa: E702
            if last:
                y[o:o + TILE, p:] = spare[:, :pixels - p]
        for o in range(full, cout):  # the channels left over: one at a time
            a0 = vzero(); b0 = vzero(); d0 = vzero()  # noqa: E702
            for k in range(kd):
                w = wt[k, o]
                a0 = vfma(vload(cb, k, 0), w, a0)
                b0 = vfma(vload(cb, k, 16), w, b0)
                d0 = vfma(vload(cb, k, 32), w, d0)
            out = spare if last else y[o:o + 1, p:p + BLOCK]
            vstore(out, 0, 0, a0); vstore(out, 0, 16, b0); vstore(out, 0, 32, d0)  # noqa: E702
            if last:
                y[o, p:] = spare[0, :pixels - p]


@njit(cache=True, nogil=True, inline="always")
def vadd_store(a: np.ndarray, i: int, j: int, v) -> None:  # noqa: ANN001
    """a[i, j:j+16] += v."""
    vstore(a, i, j, vadd(vload(a, i, j), v))


K_TILE = 24  # rows of the weight gradient per register tile


@njit(cache=True, nogil=True)
def blocked_weight_product(colb: np.ndarray, g_t: np.ndarray, dw_t: np.ndarray) -> None:
    """dw_t[k, o] += sum_p colb[p // 48, k, p % 48] * g_t[p, o] over every pixel p of colb.

    The weight gradient's product (col @ g^T) on blocked columns, with the output gradient
    transposed: colb (blocks, Cin*K*K, 48) float32 as im2col_blocks writes it; g_t
    (blocks*48, Cout) float32, C-contiguous, Cout a multiple of 16 (rows past the band's
    pixels must be finite: colb is 0 there); dw_t (Cin*K*K, Cout) float32, C-contiguous.
    For 24 rows k and 16 channels o at a time, 24 vectors of 16 channels stay in registers
    over every pixel:

        for each pixel p:  acc[k] += colb[.., k, ..] * g_t[p, o:o+16]   (24 fused mul-adds)

    so no partial sums are written before the end, and no lanes need adding up.
    """
    blocks, kd, _ = colb.shape
    cout = g_t.shape[1]
    k_full = kd - kd % K_TILE
    for o in range(0, cout, 16):
        for k in range(0, k_full, K_TILE):
            a0 = vzero(); a1 = vzero(); a2 = vzero(); a3 = vzero()  # noqa: E702
            a4 = vzero(); a5 = vzero(); a6 = vzero(); a7 = vzero()  # noqa: E702
            a8 = vzero(); a9 = vzero(); a10 = vzero(); a11 = vzero()  # noqa: E702
            a12 = vzero(); a13 = vzero(); a14 = vzero(); a15 = vzero()  # noqa: E702
            a16 = vzero(); a17 = vzero(); a18 = vzero(); a19 = vzero()  # noqa: E702
            a20 = vzero(); a21 = vzero(); a22 = vzero(); a23 = vzero()  # noqa: E702
            for b in range(blocks):
                cb = colb[b, k:k + K_TILE]                  # (24, 48)
                for lane in range(BLOCK):
                    e = vload(g_t, b * BLOCK + lane, o)     # g_t[p, o:o+16]
                    a0 = vfma(e, cb[0, lane], a0); a1 = vfma(e, cb[1, lane], a1)  # noqa: E702
                    a2 = vfma(e, cb[2, lane], a2); a3 = vfma(e, cb[3, lane], a3)  # noqa: E702
                    a4 = vfma(e, cb[4, lane], a4); a5 = vfma(e, cb[5, lane], a5)  # noqa: E702
                    a6 = vfma(e, cb[6, lane], a6); a7 = vfma(e, cb[7, lane], a7)  # noqa: E702
                    a8 = vfma(e, cb[8, lane], a8); a9 = vfma(e, cb[9, lane], a9)  # noqa: E702
                    a10 = vfma(e, cb[10, lane], a10); a11 = vfma(e, cb[11, lane], a11)  # noqa: E702
                    a12 = vfma(e, cb[12, lane], a12); a13 = vfma(e, cb[13, lane], a13)  # noqa: E702
                    a14 = vfma(e, cb[14, lane], a14); a15 = vfma(e, cb[15, lane], a15)  # noqa: E702
                    a16 = vfma(e, cb[16, lane], a16); a17 = vfma(e, cb[17, lane], a17)  # noqa: E702
                    a18 = vfma(e, cb[18, lane], a18); a19 = vfma(e, cb[19, lane], a19)  # noqa: E702
                    a20 = vfma(e, cb[20, lane], a20); a21 = vfma(e, cb[21, lane], a21)  # noqa: E702
                    a22 = vfma(e, cb[22, lane], a22); a23 = vfma(e, cb[23, lane], a23)  # noqa: E702
            vadd_store(dw_t, k, o, a0); vadd_store(dw_t, k + 1, o, a1)  # noqa: E702
            vadd_store(dw_t, k + 2, o, a2); vadd_store(dw_t, k + 3, o, a3)  # noqa: E702
            vadd_store(dw_t, k + 4, o, a4); vadd_store(dw_t, k + 5, o, a5)  # noqa: E702
            vadd_store(dw_t, k + 6, o, a6); vadd_store(dw_t, k + 7, o, a7)  # noqa: E702
            vadd_store(dw_t, k + 8, o, a8); vadd_store(dw_t, k + 9, o, a9)  # noqa: E702
            vadd_store(dw_t, k + 10, o, a10); vadd_store(dw_t, k + 11, o, a11)  # noqa: E702
            vadd_store(dw_t, k + 12, o, a12); vadd_store(dw_t, k + 13, o, a13)  # noqa: E702
            vadd_store(dw_t, k + 14, o, a14); vadd_store(dw_t, k + 15, o, a15)  # noqa: E702
            vadd_store(dw_t, k + 16, o, a16); vadd_store(dw_t, k + 17, o, a17)  # noqa: E702
            vadd_store(dw_t, k + 18, o, a18); vadd_store(dw_t, k + 19, o, a19)  # noqa: E702
            vadd_store(dw_t, k + 20, o, a20); vadd_store(dw_t, k + 21, o, a21)  # noqa: E702
            vadd_store(dw_t, k + 22, o, a22); vadd_store(dw_t, k + 23, o, a23)  # noqa: E702
        for k in range(k_full, kd):                         # the rows left over, one by one
            a0 = vzero()
            for b in range(blocks):
                for lane in range(BLOCK):
                    a0 = vfma(vload(g_t, b * BLOCK + lane, o), colb[b, k, lane], a0)
            vadd_store(dw_t, k, o, a0)


@njit(cache=True, nogil=True)
def direct_product(band: np.ndarray, w_t: np.ndarray, y: np.ndarray, kernel_size: int,
                   out_width: int, spare: np.ndarray) -> None:
    """y[o, r*Wo + j] = sum_{c,kh,kw} w_t[(c*K + kh)*K + kw, o] band[c, r + kh, j + kw]:
    a stride-1 convolution of the zero-padded band, with no im2col at all.

    band (Cin, rows_in, padded_width) float32 (conv._fill_band's), w_t (Cin*K*K, Cout) the
    weight transposed, C-contiguous; y (Cout, R*Wo) with unit stride along pixels, Wo a
    multiple of 16; spare (TILE, 48) scratch. For 48 output pixels (three vectors of 16, each
    inside one row) and 8 output channels at a time, the 24 sums stay in registers while the
    loop runs over c, kh, kw; each step loads the three input vectors straight from the band.
    """
    C = band.shape[0]
    K, Wo = kernel_size, out_width
    cout = w_t.shape[1]
    pixels = y.shape[1]
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
                        w = w_t[k, o]
                        a0 = vfma(c0, w, a0); b0 = vfma(c1, w, b0); d0 = vfma(c2, w, d0)  # noqa: E702
                        w = w_t[k, o + 1]
                        a1 = vfma(c0, w, a1); b1 = vfma(c1, w, b1); d1 = vfma(c2, w, d1)  # noqa: E702
                        w = w_t[k, o + 2]
                        a2 = vfma(c0, w, a2); b2 = vfma(c1, w, b2); d2 = vfma(c2, w, d2)  # noqa: E702
                        w = w_t[k, o + 3]
                        a3 = vfma(c0, w, a3); b3 = vfma(c1, w, b3); d3 = vfma(c2, w, d3)  # noqa: E702
                        w = w_t[k, o + 4]
                        a4 = vfma(c0, w, a4); b4 = vfma(c1, w, b4); d4 = vfma(c2, w, d4)  # noqa: E702
                        w = w_t[k, o + 5]
                        a5 = vfma(c0, w, a5); b5 = vfma(c1, w, b5); d5 = vfma(c2, w, d5)  # noqa: E702
                        w = w_t[k, o + 6]
                        a6 = vfma(c0, w, a6); b6 = vfma(c1, w, b6); d6 = vfma(c2, w, d6)  # noqa: E702
                        w = w_t[k, o + 7]
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
            if not whole:
                y[o:o + TILE, q0:q0 + count] = spare[:, :count]
        for o in range(full, cout):                 # the channels left over: one at a time
            a0 = vzero(); b0 = vzero(); d0 = vzero()  # noqa: E702
            k = 0
            for c in range(C):
                rows = band[c]
                for kh in range(K):
                    for kw in range(K):
                        w = w_t[k, o]
                        a0 = vfma(vload(rows, r0 + kh, j0 + kw), w, a0)
                        b0 = vfma(vload(rows, r1 + kh, j1 + kw), w, b0)
                        d0 = vfma(vload(rows, r2 + kh, j2 + kw), w, d0)
                        k += 1
            vstore(spare, 0, 0, a0); vstore(spare, 0, 16, b0); vstore(spare, 0, 32, d0)  # noqa: E702
            y[o, q0:q0 + count] = spare[0, :count]
