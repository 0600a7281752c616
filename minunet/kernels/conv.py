"""Convolution kernels: the multiply-adds in register-tiled Numba kernels or in BLAS.

A convolution is a matrix product once every receptive field is laid out as a column:

    col = im2col(x)                 # (N, Cin*K*K, Ho*Wo): column p holds the K*K window
                                    #  of every input channel that output pixel p sees
    y   = w.reshape(Cout, -1) @ col # (N, Cout, Ho*Wo)

The work is cut into items, one image and a band of output rows each, which run on minunet's
thread pool (threads.py); each item writes its rows of y directly. Two routes:

- Direct (float32, stride 1, output rows a multiple of 16 pixels wide, on a CPU with
  AVX-512: the U-Net's 3x3 convolutions when it trains or predicts). `fill_band` copies the
  band's input rows once into a zero-padded scratch band (summing a NaN/inf probe on the
  way, so the layers need no pass of their own to check their input); gemm.direct_product
  then reads the columns straight from that band, no im2col at all, and keeps 8 output
  channels x 48 pixels in vector registers (gemm.py, simd.py). The weight gradient of a 3x3
  convolution is gemm.direct_weight_product, also reading the band. About 2x faster than
  the BLAS route on the U-Net's layers (`bench/bench_conv_parts.py`). `MINUNET_GEMM=blas`
  turns it off.
- BLAS (float64, the gradient checks; other strides and widths; CPUs without AVX-512): the
  columns of a band (`im2col_rows`, a GIL-free Numba loop, compiled for the U-Net's (K, S, P)
  as constants) stay in the core's cache and go to np.matmul with single-threaded BLAS.
  A 1x1 convolution's columns are x itself.

At inference, a 3x3 convolution of a few input channels (the U-Net's first, on the image)
that would take the direct route takes `_few_channels` instead: the same multiply-adds in the
same order (the same bits), from a zero-padded copy of the input, in a loop small enough to
load from Numba's cache in a few milliseconds where the direct route's two kernels take
40-60 ms, which every `minunet predict` paid at its start for this one layer.

3x3 convolutions with >= 16 input channels take a third route, Winograd F(4x4, 3x3)
(winograd.py, `_winograd`): 4x fewer multiply-adds, rounded differently (a few 1e-6 of the
output's scale in float32). Inference takes it (`conv2d_inference`), and so do training's
float32 forward and input gradient (`winograd=True`, as the fast Conv2d passes it) on images
large enough (`_winograd_pays`): as in cuDNN's and oneDNN's Winograd convolutions, the
backward pass is then the exact gradient of the direct sums, which the forward computed up to
that rounding. The weight gradient stays the direct sum.

The input gradient of a stride-1 convolution is the stride-1 convolution of dy with the
flipped weight (no scatter-add); other geometries scatter-add one image per item
(`col2im_image`), or place it when the windows tile the image (`place_image`: the 2x2
stride-2 transposed convolution).

The six public functions are built from three computations, because a transposed convolution
is the adjoint of a convolution:

    conv_transpose2d_forward         == conv2d_backward_input   (col2im(w^T @ x))
    conv_transpose2d_backward_input  == conv2d_forward           (w @ im2col(dy))
    conv_transpose2d_backward_weight == conv2d_backward_weight   (with x and dy swapped)

The readable version of the convolution is `minunet/layers/conv.py` (and conv_transpose.py);
`reference.py` holds NumPy oracles of these six functions (whole arrays, one einsum per tap),
which the tests compare them with.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np
from numba import njit

from ..checks import check_finite
from . import simd
from .gemm import BLOCK, TILE, direct_product, direct_weight_product, pack_weights
from .simd import vadd, vbias_relu, vfma, vload, vstore, vsub, vsum, vzero
from .threads import SERIAL_BYTES, SERIAL_FLOPS, get_num_threads, parallel_for
from .winograd import (
    band_cols,
    band_rows,
    packed_weights,
    run_items,
    run_items_head,
    scratch_shapes,
    transformed_weights,
    window_tiles,
    winograd_applies,
)

# float32 stride-1 convolutions use gemm.direct_product (and direct_weight_product) where
# the CPU has AVX-512 (see _direct); MINUNET_GEMM=blas sends every product to BLAS instead.
USE_DIRECT = (simd.HAVE_AVX512 and simd.AVAILABLE
               and os.environ.get("MINUNET_GEMM", "").strip().lower() != "blas")

# 3x3 convolutions use Winograd F(4x4, 3x3) (winograd.py) where it applies: inference's,
# and training's float32 forward and input gradient (layers.Conv2d). MINUNET_WINOGRAD=0 sends
# them all to the direct routes instead (and inference's up-step and head to training's
# routes: upsample.ENABLED); MINUNET_WINOGRAD=infer keeps Winograd for inference only.
_WINOGRAD_ENV = os.environ.get("MINUNET_WINOGRAD", "").strip().lower()
USE_WINOGRAD = simd.HAVE_AVX512 and simd.AVAILABLE and _WINOGRAD_ENV != "0"
TRAIN_WINOGRAD = USE_WINOGRAD and _WINOGRAD_ENV != "infer"


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


# ------------------------------------------------------------------ one image, a band of rows
# The fast path works on ITEMS: one image n and a band of R output rows [r0, r0 + R). An item
# builds the columns of just that band (Cin*K*K x R*Wo, sized to stay in the core's cache),
# multiplies them with single-threaded BLAS, and writes its output rows directly into y (no
# copy). Items run on minunet's thread pool (threads.py), handed out one at a time, so a
# busy machine slows a step by the work of one item, not by a barrier per product.

COL_BYTES = 1 << 21  # ~2 MiB of columns per item: in the 1 MiB L2 + L3 slice, and products
#                      large enough (>= ~5 MFLOP) that the per-item overhead stays small



@njit(cache=True, nogil=True, inline="always")
def _fill_band(x: np.ndarray, n: int, stride: int, padding: int, row_start: int,
               band: np.ndarray) -> float:
    """band[c, i, P + w] = x[n, c, r0*S - P + i, w], zero outside x: the input rows a band of
    output rows reads, with the zero padding around them. Returns the NaN/inf probe."""
    _, C, H, W = x.shape
    S, P = stride, padding
    rows_in, padded_width = band.shape[1], band.shape[2]
    zero = x.dtype.type(0)
    probe = zero
    h0 = row_start * S - P
    for c in range(C):
        for i in range(rows_in):
            h = h0 + i
            if h < 0 or h >= H:
                for w in range(padded_width):
                    band[c, i, w] = zero
                continue
            for w in range(P):
                band[c, i, w] = zero
            for w in range(W):
                v = x[n, c, h, w]
                probe += v - v  # stays 0 unless some v is NaN or inf
                band[c, i, P + w] = v
            for w in range(P + W, padded_width):
                band[c, i, w] = zero
    return probe


@njit(cache=True, nogil=True, inline="always")
def _im2col_rows(x: np.ndarray, n: int, kernel_size: int, stride: int, padding: int,
                 row_start: int, out_width: int, col: np.ndarray, band: np.ndarray) -> float:
    """The body of im2col_rows. It first copies the input rows the band reads into `band`
    with the zero padding around them, so the column copies need no bounds tests."""
    C = x.shape[1]
    K, S, Wo = kernel_size, stride, out_width
    R = col.shape[1] // Wo
    probe = _fill_band(x, n, stride, padding, row_start, band)
    for c in range(C):      # col[(c*K + kh)*K + kw, r*Wo + j] = band[c, r*S + kh, j*S + kw]
        for kh in range(K):
            for kw in range(K):
                dst = col[(c * K + kh) * K + kw]                        # (R*Wo,)
                for r in range(R):
                    src = band[c, r * S + kh]                           # (padded_width,)
                    base = r * Wo
                    for j in range(Wo):
                        dst[base + j] = src[j * S + kw]
    return probe


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def im2col_rows(x: np.ndarray, n: int, kernel_size: int, stride: int, padding: int,
                row_start: int, out_width: int, col: np.ndarray, band: np.ndarray) -> float:
    """col[(c*K + kh)*K + kw, r*Wo + j] = x[n, c, (r0 + r)*S - P + kh, j*S - P + kw] (0 outside).

    One image n, output rows r0 .. r0 + R - 1 where R = col.shape[1] // Wo. Writes every
    element of col (Cin*K*K, R*Wo); `band` is scratch of shape band_shape(...). Single-threaded
    and GIL-free: the pool runs one per thread. Returns a probe, sum(v - v) over the input
    values it read: 0 when they are all finite, NaN otherwise (the layers' NaN/inf check,
    without a pass of its own; `fastmath={"reassoc"}` lets that sum vectorise, and NaN still
    propagates).

    The U-Net's two geometries get their own compiled copy of the loops, with K, S and P as
    constants: LLVM then vectorises the copies, several times faster than the same loops
    with K, S, P known only at run time (`bench/bench_conv_parts.py`).
    """
    K, S, P = kernel_size, stride, padding
    if K == 3 and S == 1 and P == 1:      # every 3x3 convolution, and its input gradient
        return _im2col_rows(x, n, 3, 1, 1, row_start, out_width, col, band)
    if K == 2 and S == 2 and P == 0:      # the 2x2 transposed convolution's gradients
        return _im2col_rows(x, n, 2, 2, 0, row_start, out_width, col, band)
    return _im2col_rows(x, n, K, S, P, row_start, out_width, col, band)


# ------------------------------------------------------------------ direct (float32, AVX-512)
# For float32 stride-1 convolutions with rows a multiple of 16 pixels wide, an item copies its
# band's input rows once (_fill_band, with the padding and the NaN/inf probe) and the
# register-tiled products of gemm.py read the columns straight from there: no im2col.

@njit(cache=True, nogil=True, fastmath={"reassoc"})
def fill_band(x: np.ndarray, n: int, padding: int, row_start: int, band: np.ndarray) -> float:
    """band[c, i, P + w] = x[n, c, r0 - P + i, w], zero outside x: the input rows that a band
    of output rows r0 .. of a stride-1 convolution reads, with their zero padding (the rows
    padded to band.shape[2] values). Returns the NaN/inf probe of im2col_rows. The direct
    route's only copy of the input: gemm.py's products read their columns from `band`.
    Padding 1 (every 3x3 convolution of the U-Net) gets its own compiled copy."""
    if padding == 1:
        return _fill_band(x, n, 1, 1, row_start, band)
    return _fill_band(x, n, 1, padding, row_start, band)


def _direct_items_py(x: np.ndarray, x2: np.ndarray, w_p: np.ndarray, w_p2: np.ndarray,
                     y_rows: np.ndarray, y2_rows: np.ndarray, out_height: int, out_width: int,
                     kernel_size: int, padding: int, rows_per_band: int, bands: int, width: int,
                     counter: np.ndarray, probes: np.ndarray, band_buffer: np.ndarray,
                     spare: np.ndarray, bias: np.ndarray, relu: bool) -> None:
    """Run (image, band) items of the direct route until none are left: each thread of a
    region calls this once, and the threads share the items through `counter`, an atomic
    counter (simd.fetch_add). No Python runs between items, so the threads never wait for
    each other's GIL: on a busy virtual machine each such wait can cost a tenth of a
    millisecond.

    Two parts, for a convolution of a channel concatenation without building it: the input
    is [x | x2] along channels (x2 may have 0 channels), and the output channels are split
    into y_rows (weights w_p) and y2_rows (weights w_p2; may have 0 channels). Each item
    copies both input parts into one band and runs the product once per output part."""
    N, Ca, Cb = x.shape[0], x.shape[1], x2.shape[1]
    K, P, R, Ho, Wo = kernel_size, padding, rows_per_band, out_height, out_width
    count = N * bands
    while True:
        index = simd.fetch_add(counter, 0, 1)
        if index >= count:
            return
        n = index // bands
        r0 = (index - n * bands) * R
        rows = min(R, Ho - r0)
        plane = (rows + K - 1) * width  # one channel of the band
        band = band_buffer[:(Ca + Cb) * plane].reshape(Ca + Cb, rows + K - 1, width)
        probe = fill_band(x, n, P, r0, band_buffer[:Ca * plane].reshape(Ca, rows + K - 1,
                                                                        width))
        if Cb > 0:
            probe += fill_band(x2, n, P, r0, band_buffer[Ca * plane:(Ca + Cb) * plane]
                               .reshape(Cb, rows + K - 1, width))
        probes[index] = probe
        _product_jit(band, w_p, y_rows[n, :, r0 * Wo:(r0 + rows) * Wo], K, Wo, spare, bias,
                     relu)
        if y2_rows.shape[1] > 0:
            _product_jit(band, w_p2, y2_rows[n, :, r0 * Wo:(r0 + rows) * Wo], K, Wo, spare,
                         bias[y_rows.shape[1]:] if bias.size > 0 else bias, relu)


_direct_items_jit = None


def _direct_items() -> Callable:
    """_direct_items_py compiled (once, on first use), with gemm.direct_product inside."""
    global _direct_items_jit, _product_jit
    if _direct_items_jit is None:
        _product_jit = direct_product.compiled()
        _direct_items_jit = njit(cache=True, nogil=True)(_direct_items_py)
    return _direct_items_jit


def _weight_items_py(x: np.ndarray, x2: np.ndarray, dy_rows: np.ndarray, out_height: int,
                     out_width: int, padding: int, rows_per_band: int, bands: int, width: int,
                     counter: np.ndarray, partial: np.ndarray,
                     band_buffer: np.ndarray) -> None:
    """Run groups of (image, band) pieces of the direct weight gradient until none are left:
    each thread of a region calls this once and takes whole groups through `counter` (as
    _direct_items_py takes items), so no Python runs between pieces. Group g sums its
    consecutive pieces, in order, into partial[g] (Cout, Cin*9), zeros at the start: the
    grouping depends only on the shapes (see _weight_gradient). The input is [x | x2] along
    channels (x2 may have 0 channels), copied part by part into each piece's band."""
    N, Ca, Cb = x.shape[0], x.shape[1], x2.shape[1]
    R, P, Ho, Wo = rows_per_band, padding, out_height, out_width
    pieces = N * bands
    groups = partial.shape[0]
    while True:
        group = simd.fetch_add(counter, 0, 1)
        if group >= groups:
            return
        for index in range(group * pieces // groups, (group + 1) * pieces // groups):
            n = index // bands
            r0 = (index - n * bands) * R
            rows = min(R, Ho - r0)
            plane = (rows + 2) * width  # one channel of the band: a 3x3 kernel's rows + 2
            fill_band(x, n, P, r0, band_buffer[:Ca * plane].reshape(Ca, rows + 2, width))
            if Cb > 0:
                fill_band(x2, n, P, r0, band_buffer[Ca * plane:(Ca + Cb) * plane]
                          .reshape(Cb, rows + 2, width))
            band = band_buffer[:(Ca + Cb) * plane].reshape(1, Ca + Cb, rows + 2, width)
            _weight_product_jit(band, dy_rows[n:n + 1, :, r0 * Wo:(r0 + rows) * Wo],
                                partial[group], Wo, 0, dy_rows.shape[1], Ca + Cb)


_weight_items_jit = None


def _weight_items() -> Callable:
    """_weight_items_py compiled (once, on first use), with gemm.direct_weight_product inside."""
    global _weight_items_jit, _weight_product_jit
    if _weight_items_jit is None:
        _weight_product_jit = direct_weight_product.compiled()
        _weight_items_jit = njit(cache=True, nogil=True)(_weight_items_py)
    return _weight_items_jit


def band_shape(channels: int, width: int, rows: int, out_width: int, kernel_size: int,
               stride: int, padding: int) -> tuple[int, int, int]:
    """Shape of im2col_rows's `band`: the input rows that `rows` output rows read, padded.

    Rows are rounded up to a multiple of 16 values (64 bytes in float32), so that in a
    64-byte-aligned band every row starts a cache line: gemm.py's vector loads at column
    j + 0 (j a multiple of 16) then never straddle two lines."""
    K, S, P = kernel_size, stride, padding
    width = max(width + 2 * P, (out_width - 1) * S + K)
    return channels, (rows - 1) * S + K, -(-width // 16) * 16


@njit(cache=True, nogil=True, inline="always")
def _col2im_image(col: np.ndarray, dx: np.ndarray, n: int, kernel_size: int, stride: int,
                  padding: int, out_width: int) -> None:
    """The body of col2im_image."""
    _, C, H, W = dx.shape
    K, S, P, Wo = kernel_size, stride, padding, out_width
    Ho = col.shape[1] // Wo
    for c in range(C):
        for kh in range(K):
            for kw in range(K):
                src = col[(c * K + kh) * K + kw]                   # (Ho*Wo,)
                lo, hi = _valid_columns(W, Wo, kw, S, P)
                for i in range(Ho):
                    h = i * S - P + kh
                    if h < 0 or h >= H:
                        continue
                    dst = dx[n, c, h]                               # (W,)
                    base = i * Wo
                    for j in range(lo, hi):
                        dst[j * S - P + kw] += src[base + j]


@njit(cache=True, nogil=True)
def col2im_image(col: np.ndarray, dx: np.ndarray, n: int, kernel_size: int, stride: int,
                 padding: int, out_width: int) -> None:
    """The adjoint of im2col_rows for a whole image: dx[n, c, h, w] += every col entry that
    im2col copied from (c, h, w). col (Cin*K*K, Ho*Wo); dx[n] must start at zero.

    The U-Net's 2x2 stride-2 transposed convolution gets its own compiled copy, with K, S and
    P as constants (see im2col_rows)."""
    if kernel_size == 2 and stride == 2 and padding == 0:
        _col2im_image(col, dx, n, 2, 2, 0, out_width)
    else:
        _col2im_image(col, dx, n, kernel_size, stride, padding, out_width)


@njit(cache=True, nogil=True, inline="always")
def _place_image(col: np.ndarray, dx: np.ndarray, n: int, kernel_size: int, out_width: int,
                 bias: np.ndarray) -> None:
    """The body of place_image."""
    C = dx.shape[1]
    K, Wo = kernel_size, out_width
    Ho = col.shape[1] // Wo
    for c in range(C):
        for kh in range(K):
            for i in range(Ho):
                dst = dx[n, c, i * K + kh]                          # (W,)
                base = i * Wo
                for kw in range(K):
                    src = col[(c * K + kh) * K + kw]                # (Ho*Wo,)
                    if bias.size == 0:
                        for j in range(Wo):
                            dst[j * K + kw] = src[base + j]
                    else:
                        b = bias[c]
                        for j in range(Wo):
                            dst[j * K + kw] = src[base + j] + b


@njit(cache=True, nogil=True)
def place_image(col: np.ndarray, dx: np.ndarray, n: int, kernel_size: int, out_width: int,
                bias: np.ndarray) -> None:
    """col2im_image when the windows tile the image exactly (stride = K, no padding, the
    image (Ho*K, Wo*K)): every dx value comes from one col entry, so it is written, not
    added, and dx[n] need not be zeroed first. bias (C,) is added on the way (the transposed
    convolution's bias, no pass of its own); an empty bias adds nothing. The 2x2 case (the
    U-Net's transposed convolution) gets its own compiled copy."""
    if kernel_size == 2:
        _place_image(col, dx, n, 2, out_width, bias)
    else:
        _place_image(col, dx, n, kernel_size, out_width, bias)


class _Scratch:
    """One growing scratch buffer per (thread slot, purpose, dtype), reused between calls:
    allocating fresh column buffers each call costs a page fault per 4 KiB. Not for use from
    several of YOUR threads at once (neither are the layers, which keep state for backward)."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[int, str, np.dtype], np.ndarray] = {}

    def get(self, slot: int, purpose: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        size = math.prod(shape)
        key = (slot, purpose, np.dtype(dtype))
        buffer = self.buffers.get(key)
        if buffer is None or buffer.size < size:
            buffer = _aligned(size, np.dtype(dtype))
            self.buffers[key] = buffer
        return buffer[:size].reshape(shape)

    def drop(self, purpose: str) -> None:
        """Free the buffers of one purpose (every thread slot and dtype). Safe while other
        threads get theirs (map_batch): list(dict) is one step under the GIL, and a buffer a
        thread still uses stays alive through its own reference."""
        for key in list(self.buffers):
            if key[1] == purpose:
                self.buffers.pop(key, None)


def _aligned(size: int, dtype: np.dtype, alignment: int = 64) -> np.ndarray:
    """np.empty(size, dtype) starting on a 64-byte boundary (a cache line, one AVX-512
    vector): the direct kernels' aligned vector loads then never straddle two lines."""
    raw = np.empty(size * dtype.itemsize + alignment, dtype=np.uint8)
    offset = -raw.ctypes.data % alignment
    return raw[offset:offset + size * dtype.itemsize].view(dtype)


_scratch = _Scratch()


def release_workspace() -> None:
    """Free the scratch buffers (they are re-created by the next convolution)."""
    _scratch.buffers.clear()


def _band_columns(x: np.ndarray, index: int, bands: int, R: int, Ho: int, Wo: int, K: int,
                  S: int, P: int, slot: int) -> tuple[int, slice, np.ndarray, float]:
    """Item `index` = (image n, band of R output rows): its columns, built in this thread's
    scratch buffer. Returns (n, the band's slice of the flattened Ho*Wo pixels, col, probe);
    probe is im2col_rows's (0 when every value read is finite), NaN when nothing was read."""
    n, band = divmod(index, bands)
    r0 = band * R
    rows = min(R, Ho - r0)
    C, W = x.shape[1], x.shape[3]
    pixels = slice(r0 * Wo, (r0 + rows) * Wo)
    if K == 1 and S == 1 and P == 0:  # a 1x1 convolution's columns are x itself: no copy
        return n, pixels, x[n].reshape(C, -1)[:, pixels], np.nan
    col = _scratch.get(slot, "col", (C * K * K, rows * Wo), x.dtype)
    padded = _scratch.get(slot, "band", band_shape(C, W, rows, Wo, K, S, P), x.dtype)
    probe = im2col_rows(x, n, K, S, P, r0, Wo, col, padded)           # (Cin*K*K, rows*Wo)
    return n, pixels, col, probe


def _direct(dtype: np.dtype, K: int, S: int, P: int, Wo: int) -> bool:
    """Whether a convolution's product goes to gemm.direct_product: float32, a 3x3 kernel
    (the U-Net's; each kernel size is one more large compiled copy), stride 1, output rows a
    multiple of 16 pixels wide. Elsewhere, im2col_rows's columns and BLAS."""
    return (USE_DIRECT and dtype == np.float32 and S == 1 and K == 3 and Wo % simd.LANES == 0
            and P <= K - 1)


def _direct_weight(dtype: np.dtype, K: int, S: int, P: int, Ho: int, Wo: int) -> bool:
    """Whether a weight gradient goes to gemm.direct_weight_product: as _direct, for 3x3
    kernels (its 9 taps are spelled out)."""
    return _direct(dtype, K, S, P, Wo) and K == 3


WEIGHT_BAND_BYTES = 1 << 20  # input rows per weight-gradient item: ~1 MiB of padded band


def _weight_bands(Cin: int, W: int, Ho: int, K: int, P: int, itemsize: int) -> tuple[int, int]:
    """(R, number of bands) for the direct weight gradient: bands of R output rows whose
    padded input rows take about WEIGHT_BAND_BYTES (no columns are stored, so bands can be
    tall: fewer, longer sweeps over the pixels)."""
    per_row = Cin * (W + 2 * P) * itemsize
    R = max(1, min(Ho, WEIGHT_BAND_BYTES // per_row - (K - 1)))
    bands = -(-Ho // R)
    R = -(-Ho // bands)  # even the bands out
    return R, -(-Ho // R)


def _bands(Ho: int, Wo: int, rows_of_col: int, itemsize: int) -> tuple[int, int]:
    """(R, number of bands): bands of R output rows whose columns take about COL_BYTES."""
    per_row = max(1, rows_of_col * Wo * itemsize)
    R = max(1, min(Ho, COL_BYTES // per_row))
    bands = -(-Ho // R)
    R = -(-Ho // bands)  # even the bands out
    return R, -(-Ho // R)


def _small(N: int, Cin: int, Cout: int, Ho: int, Wo: int, K: int) -> bool:
    """Whether a region's multiply-adds x 2 are under SERIAL_FLOPS: run it in one thread."""
    return 2 * N * Ho * Wo * Cout * Cin * K * K < SERIAL_FLOPS


# ------------------------------------------------------------------ the three computations
_NO_BIAS = np.zeros(0, np.float32)  # direct_product's "no bias"


Parts = np.ndarray | tuple[np.ndarray, np.ndarray]  # an array, or two joined along channels
Window = tuple[int, int, int, int]  # (top, left, height, width) px of an output


def _parts(x: Parts) -> tuple[np.ndarray, ...]:
    """x as a tuple of C-contiguous arrays: (x,) or the two parts (a, b)."""
    return tuple(np.ascontiguousarray(p) for p in (x if isinstance(x, tuple) else (x,)))


def _joined(x: Parts) -> np.ndarray:
    """The array that x stands for: x itself, or its two parts concatenated along channels
    (the BLAS route's fallback: it needs the columns of one array)."""
    return np.concatenate(x, axis=1) if isinstance(x, tuple) else np.ascontiguousarray(x)


def _check_parts(who: str, parts: tuple[np.ndarray, ...], name: str) -> None:
    """NaN/inf anywhere in the parts raise FloatingPointError, naming the part."""
    for i, part in enumerate(parts):
        check_finite(who, part, name=name if len(parts) == 1 else f"{name} part {i}")


def _forward(x: Parts, weight: np.ndarray, stride: int, padding: int,
             bias: np.ndarray | None = None, who: str | None = None,
             name: str = "input", relu: bool = False, split: int | None = None,
             ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """y = w @ im2col(x) (+ b): x (N, Cin, H, W), weight (Cout, Cin, K, K) -> (N, Cout, Ho, Wo).
    With relu, y = max(y, 0) (an inference-only fusion: see layers.BatchNormReLU2d).

    x may be two arrays (a, b): the convolution of their concatenation along channels,
    without building it. With `split`, y comes back as two arrays, its channels [0, split)
    and [split, Cout) (the input gradient of such a convolution, in its two parts).

    Item (n, band): y[n, :, r0:r0+R] = w_rows @ im2col_rows(x[n], rows r0:r0+R).
    With `who` (the layer's name for messages), NaN/inf in x raise FloatingPointError, as
    check_array(who, x, name=name) would: found from the items' probes, without a pass of
    its own.
    """
    parts = _parts(x)
    N, _, H, W = parts[0].shape
    Cin = sum(p.shape[1] for p in parts)
    Cout, _, K, _ = weight.shape
    S, P = stride, padding
    Ho, Wo = conv_output_size(H, K, S, P), conv_output_size(W, K, S, P)
    dtype = parts[0].dtype
    w_rows = np.ascontiguousarray(weight.reshape(Cout, Cin * K * K))  # (Cout, Cin*K*K)
    R, bands = _bands(Ho, Wo, Cin * K * K, parts[0].itemsize)
    probes = np.zeros(N * bands)                                       # one per item
    direct = _direct(dtype, K, S, P, Wo)
    if not direct:  # the BLAS route needs one input and one output array
        y = _forward_blas(_joined(x), w_rows, Ho, Wo, K, S, P, R, bands, probes, bias, relu)
        outputs = (y,) if split is None else (np.ascontiguousarray(y[:, :split]),
                                              np.ascontiguousarray(y[:, split:]))
    else:  # each thread runs items in compiled code until none are left
        # the direct route adds the bias (and the ReLU) to each tile as it is computed
        tile_bias = _NO_BIAS if bias is None else np.ascontiguousarray(bias, dtype=dtype)
        cut = Cout if split is None else split
        outputs = (np.empty((N, cut, Ho, Wo), dtype=dtype),
                   np.empty((N, Cout - cut, Ho, Wo), dtype=dtype))
        rows_out = [o.reshape(N, o.shape[1], Ho * Wo) for o in outputs]
        packed = [pack_weights(w_rows[:cut].T), pack_weights(w_rows[cut:].T)]
        second = parts[1] if len(parts) > 1 else np.empty((N, 0, H, W), dtype)
        run_items = _direct_items()
        counter = np.zeros(1, np.int64)
        shape = band_shape(Cin, W, R, Wo, K, S, P)

        def worker(_: int, slot: int) -> None:
            run_items(parts[0], second, packed[0], packed[1], rows_out[0], rows_out[1], Ho,
                      Wo, K, P, R, bands, shape[2], counter, probes,
                      _scratch.get(slot, "band", (math.prod(shape),), dtype),
                      _scratch.get(slot, "spare", (TILE, BLOCK), dtype), tile_bias, relu)

        parallel_for(worker, get_num_threads(), serial=_small(N, Cin, Cout, Ho, Wo, K),
                     blas=False)
        if split is None:
            outputs = outputs[:1]
    if who is not None:
        last_row_read = (Ho - 1) * S - P + K - 1                       # rows below it: unread
        if not np.isfinite(probes.sum()) or last_row_read < H - 1:
            _check_parts(who, parts, name)                             # raises, with counts
    return outputs[0] if split is None else outputs


def _forward_blas(x: np.ndarray, w_rows: np.ndarray, Ho: int, Wo: int, K: int, S: int, P: int,
                  R: int, bands: int, probes: np.ndarray, bias: np.ndarray | None,
                  relu: bool) -> np.ndarray:
    """_forward's BLAS route: the columns of each (image, band) item, multiplied by BLAS."""
    N, Cin = x.shape[:2]
    Cout = w_rows.shape[0]
    y = np.empty((N, Cout, Ho, Wo), dtype=x.dtype)                     # (N, Cout, Ho, Wo)
    y_rows = y.reshape(N, Cout, Ho * Wo)

    def item(index: int, slot: int) -> None:
        n, pixels, col, probes[index] = _band_columns(x, index, bands, R, Ho, Wo, K, S, P,
                                                      slot)
        out = y_rows[n, :, pixels]                                     # (Cout, R*Wo), a view
        np.matmul(w_rows, col, out=out)
        if bias is not None:
            out += bias[:, None]
        if relu:
            np.maximum(out, 0, out=out)

    parallel_for(item, N * bands, serial=_small(N, Cin, Cout, Ho, Wo, K))
    return y


def _adjoint(dy: np.ndarray, weight: np.ndarray, stride: int, padding: int, height: int,
             width: int, who: str | None = None, name: str = "dout",
             bias: np.ndarray | None = None, split: int | None = None,
             ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """dx = col2im(w^T @ dy) (+ b): dy (N, Cout, Ho, Wo), weight (Cout, Cin, K, K),
    bias (Cin,) or None -> (N, Cin, H, W). With `who`, NaN/inf in dy raise (see _forward).
    With `split`, dx comes back as two arrays, its channels [0, split) and [split, Cin)."""
    N, Cout, Ho, Wo = dy.shape
    _, Cin, K, _ = weight.shape
    if stride == 1 and padding <= K - 1:
        # dx is the stride-1 convolution of dy with the flipped weight and padding K-1-P
        return _forward(dy, _flipped(weight), 1, K - 1 - padding, bias, who=who, name=name,
                        split=split)
    if split is not None:
        dx = _adjoint(dy, weight, stride, padding, height, width, who, name, bias)
        return np.ascontiguousarray(dx[:, :split]), np.ascontiguousarray(dx[:, split:])
    if who is not None:
        check_finite(who, dy, name=name)
    dy = np.ascontiguousarray(dy)
    w_cols = np.ascontiguousarray(weight.reshape(Cout, Cin * K * K).T)  # (Cin*K*K, Cout)
    dy_rows = dy.reshape(N, Cout, Ho * Wo)
    dx = np.empty((N, Cin, height, width), dtype=dy.dtype)               # (N, Cin, H, W)
    tiles = stride == K and padding == 0 and (height, width) == (Ho * K, Wo * K)
    no_bias = np.zeros(0, dy.dtype)

    def item(n: int, slot: int) -> None:  # one image
        dcol = _scratch.get(slot, "dcol", (Cin * K * K, Ho * Wo), dy.dtype)
        np.matmul(w_cols, dy_rows[n], out=dcol)
        if tiles:   # every dx value comes from one column entry, the bias added on the way
            place_image(dcol, dx, n, K, Wo, no_bias if bias is None else bias)
        else:
            dx[n] = 0
            col2im_image(dcol, dx, n, K, stride, padding, Wo)
            if bias is not None:
                dx[n] += bias[:, None, None]

    parallel_for(item, N, serial=_small(N, Cin, Cout, Ho, Wo, K))
    if Cin * K * K * Ho * Wo * dy.itemsize > KEEP_COLUMNS_BYTES:
        _scratch.drop("dcol")
    return dx


# _adjoint's columns are kept for the next call up to this size; larger ones (a transposed
# convolution of a 1024-px inference tile: 81 MiB, as much as an activation) are freed at once,
# which lowers the peak of the layers after it (malloc keeps the pages for the next call)
KEEP_COLUMNS_BYTES = 32 << 20


WEIGHT_GRADIENT_GROUPS = 8  # partial sums of dw, a fixed number: see _weight_gradient


def _weight_gradient(x: Parts, dy: np.ndarray, kernel_size: int, stride: int,
                     padding: int) -> np.ndarray:
    """dw = sum_n dy[n] @ im2col(x)[n]^T, computed as its transpose sum_n im2col(x)[n] @ dy[n]^T.

    x (N, Cin, H, W), dy (N, Cout, Ho, Wo) -> dw (Cout, Cin, K, K). The (image, band) pieces
    are split into at most WEIGHT_GRADIENT_GROUPS runs of consecutive pieces; each run is one
    item that sums its pieces' dy @ col^T in order into its own partial dw, and the partial
    sums are added in run order. The grouping depends only on the shapes, never on which
    thread ran what or how many threads there are, so dw is the same to the last bit on every
    run (training is reproducible).

    x may be two arrays (a, b), joined along channels (see _forward).
    """
    _, Cout, Ho, Wo = dy.shape
    K, S, P = kernel_size, stride, padding
    parts = _parts(x)
    N = parts[0].shape[0]
    dy_rows = np.ascontiguousarray(dy).reshape(N, Cout, Ho * Wo)
    if _direct_weight(parts[0].dtype, K, S, P, Ho, Wo):
        return _direct_weight_gradient(parts, dy_rows, Ho, Wo, P)
    x = _joined(x)
    Cin = x.shape[1]
    R, bands = _bands(Ho, Wo, Cin * K * K, x.itemsize)
    pieces = N * bands
    groups = min(pieces, WEIGHT_GRADIENT_GROUPS)
    partial = [None] * groups

    def item(group: int, slot: int) -> None:
        first, last = group * pieces // groups, (group + 1) * pieces // groups
        for index in range(first, last):
            n, pixels, col, _ = _band_columns(x, index, bands, R, Ho, Wo, K, S, P, slot)
            g = dy_rows[n, :, pixels]                                  # (Cout, R*Wo), a view
            # dw^T = col @ g^T: OpenBLAS runs this shape faster than g @ col^T
            # (bench/bench_conv_parts.py)
            if partial[group] is None:
                partial[group] = col @ g.T                             # (Cin*K*K, Cout)
            else:
                product = _scratch.get(slot, "dw", (Cin * K * K, Cout), x.dtype)
                np.matmul(col, g.T, out=product)
                partial[group] += product

    # serial or not, the same groups are summed in the same order: the same bits
    parallel_for(item, groups, serial=_small(N, Cin, Cout, Ho, Wo, K))
    dw_t = partial[0]                                                  # (Cin*K*K, Cout)
    for group in range(1, groups):
        dw_t += partial[group]
    return np.ascontiguousarray(dw_t.T).reshape(Cout, Cin, K, K)


def _direct_weight_gradient(parts: tuple[np.ndarray, ...], dy_rows: np.ndarray, Ho: int,
                            Wo: int, P: int) -> np.ndarray:
    """_weight_gradient of a float32 3x3 stride-1 convolution by gemm.direct_weight_product.
    The input is the channel concatenation of `parts`, copied part by part into the bands.

    Images of more than SMALL_IMAGE_PIXELS: the same grouping into WEIGHT_GRADIENT_GROUPS
    runs of (image, band) pieces as the BLAS route, each summed in order into its own partial
    dw (Cout, Cin*9), the partials added in run order. Smaller ones: _small_images_weight.
    Either way the same bits on every run, whatever the threads did."""
    x = parts[0]
    N, _, _, W = x.shape
    Cin = sum(p.shape[1] for p in parts)
    Cout = dy_rows.shape[1]
    second = parts[1] if len(parts) > 1 else np.empty((N, 0, *x.shape[2:]), x.dtype)
    if Ho * Wo <= SMALL_IMAGE_PIXELS:
        return _small_images_weight(x, second, dy_rows, Ho, Wo, P)
    R, bands = _weight_bands(Cin, W, Ho, 3, P, x.itemsize)
    groups = min(N * bands, WEIGHT_GRADIENT_GROUPS)
    partial = np.zeros((groups, Cout, Cin * 9), dtype=x.dtype)       # (G, Cout, Cin*9)
    shape = band_shape(Cin, W, R, Wo, 3, 1, P)
    run_groups = _weight_items()
    counter = np.zeros(1, np.int64)

    def worker(_: int, slot: int) -> None:
        run_groups(x, second, dy_rows, Ho, Wo, P, R, bands, shape[2], counter, partial,
                   _scratch.get(slot, "band", (math.prod(shape),), x.dtype))

    parallel_for(worker, min(get_num_threads(), groups), serial=_small(N, Cin, Cout, Ho, Wo, 3),
                 blas=False)
    dw = partial[0]
    for group in range(1, groups):                                     # in order: same bits
        dw += partial[group]
    return dw.reshape(Cout, Cin, 3, 3)


# Images of at most this many output pixels (32 x 32) take _small_images_weight: there a
# band of one image gives each channel pair's sweep few pixels for the lanes added at its end
# (18 sums of 16 lanes), and the BLAS route was no faster
SMALL_IMAGE_PIXELS = 1024
SWEEP_GRADIENT_BYTES = 16 << 10  # the output gradient of a channel pair in one sweep: in L1
SMALL_BLOCK_BYTES = 256 << 10    # the bands of one block of input channels in a sweep: in L2


def _small_images_weight(x: np.ndarray, x2: np.ndarray, dy_rows: np.ndarray, Ho: int, Wo: int,
                         P: int) -> np.ndarray:
    """The direct weight gradient of small images: every image padded once into one array of
    bands (N, Cin, Ho + 2, width); then items of output channels, each computing its rows of
    dw whole, B images per sweep (gemm.direct_weight_product: as many images as keep a channel
    pair's output gradient within SWEEP_GRADIENT_BYTES), input channels in blocks of about
    SMALL_BLOCK_BYTES. Each dw value is summed by one item in an order fixed by the shapes:
    the same bits whatever the threads did, and no partial sums to add."""
    N, Ca = x.shape[:2]
    Cin = Ca + x2.shape[1]
    Cout = dy_rows.shape[1]
    shape = band_shape(Cin, x.shape[3], Ho, Wo, 3, 1, P)             # (Cin, Ho + 2, width)
    bands = _scratch.get(0, "weight bands", (N, *shape), x.dtype)     # (N, Cin, Ho+2, width)
    small = _small(N, Cin, Cout, Ho, Wo, 3)

    def fill(n: int, slot: int) -> None:                              # one image
        fill_band(x, n, P, 0, bands[n, :Ca])
        if Cin > Ca:
            fill_band(x2, n, P, 0, bands[n, Ca:])

    parallel_for(fill, N, serial=small or bands.nbytes < SERIAL_BYTES, blas=False)
    dw = np.zeros((Cout, Cin * 9), dtype=x.dtype)                     # (Cout, Cin*9)
    B = max(1, min(N, SWEEP_GRADIENT_BYTES // (2 * Ho * Wo * x.itemsize)))
    c_block = max(1, SMALL_BLOCK_BYTES // (B * shape[1] * shape[2] * x.itemsize))
    pairs = -(-Cout // 2)
    items = min(pairs, 4 * get_num_threads())
    product = direct_weight_product.compiled()

    def item(i: int, slot: int) -> None:  # output channels [2 * first, 2 * last) of dw
        first, last = i * pairs // items, (i + 1) * pairs // items
        for b in range(0, N, B):          # B images per sweep, in order
            product(bands[b:b + B], dy_rows[b:b + B], dw, Wo, 2 * first, min(Cout, 2 * last),
                    c_block)

    parallel_for(item, items, serial=small, blas=False)
    return dw.reshape(Cout, Cin, 3, 3)


def _flipped(weight: np.ndarray) -> np.ndarray:
    """(Cout, Cin, K, K) -> (Cin, Cout, K, K) rotated by 180 degrees: the weight of the
    convolution that maps dy back to dx when the stride is 1. One compiled pass (NumPy's
    copy of the flipped, transposed view took 3 ms on C3's deepest weight, this 1.6)."""
    Cout, Cin, K, _ = weight.shape
    out = np.empty((Cin, Cout, K, K), dtype=weight.dtype)
    weight = np.ascontiguousarray(weight)
    parts = min(Cout, 4 * get_num_threads())  # ranges of output channels, by thread
    parallel_for(lambda i, slot: _flip(weight, out, i * Cout // parts, (i + 1) * Cout // parts),
                 parts, serial=out.nbytes < SERIAL_BYTES, blas=False)
    return out


@njit(cache=True, nogil=True)
def _flip(weight: np.ndarray, out: np.ndarray, o_start: int, o_stop: int) -> None:
    """out[c, o, kh, kw] = weight[o, c, K-1-kh, K-1-kw] for o in [o_start, o_stop): _flipped's
    pass; 3x3 kernels get their own compiled copy (the taps' loop unrolled)."""
    if weight.shape[2] == 3:
        _flip_taps(weight, out, 3, o_start, o_stop)
    else:
        _flip_taps(weight, out, weight.shape[2], o_start, o_stop)


@njit(cache=True, nogil=True, inline="always")
def _flip_taps(weight: np.ndarray, out: np.ndarray, K: int, o_start: int, o_stop: int) -> None:
    """The body of _flip: tap t of (o, c) to tap K*K - 1 - t of (c, o), reading weight in
    order."""
    Cout, Cin = weight.shape[0], weight.shape[1]
    taps = K * K
    source = weight.reshape(Cout, Cin * taps)
    target = out.reshape(Cin, Cout * taps)
    for o in range(o_start, o_stop):
        for c in range(Cin):
            for t in range(taps):
                target[c, o * taps + t] = source[o, c * taps + taps - 1 - t]


# ------------------------------------------------------------------ the public pairs
def conv2d_forward(x: Parts, weight: np.ndarray, bias: np.ndarray | None, stride: int,
                   padding: int, who: str | None = None, relu: bool = False,
                   winograd: bool = False) -> np.ndarray:
    """y[n, o, i, j] = b[o] + sum_{c,kh,kw} w[o, c, kh, kw] x[n, c, i*S - P + kh, j*S - P + kw].

    x (N, Cin, H, W), weight (Cout, Cin, K, K), bias (Cout,) or None -> y (N, Cout, Ho, Wo).
    With `who` (a name for messages), NaN or inf in x raise FloatingPointError. With relu,
    the result is max(y, 0). x may be two arrays (a, b): the convolution of their
    concatenation along channels, which is never built (the U-Net's skip and up-step).
    With `winograd`, Winograd F(4x4, 3x3) computes it where it applies (see `_winograd`),
    rounded differently from the direct sums.
    """
    if winograd and _winograd_pays(x, weight.shape[2], stride, padding, weight.shape[0]):
        return _winograd(_parts(x), weight, bias, relu, who, "input", remember=False)
    return _forward(x, weight, stride, padding, bias, who=who, relu=relu)


def conv2d_inference(x: Parts, weight: np.ndarray, bias: np.ndarray | None, stride: int,
                     padding: int, who: str | None = None, relu: bool = False,
                     window: Window | None = None) -> np.ndarray:
    """conv2d_forward for inference: Winograd where it applies, its transformed weights
    remembered between calls (winograd.packed_weights: an evaluation runs the same weights
    again and again). window (top, left, height, width): the part of the output needed
    (winograd.window_tiles's grid); Winograd computes only that, the same bits, and leaves
    the rest of the output unset; the other routes compute it all."""
    if _winograd_applies(x, weight.shape[2], stride, padding):
        return _winograd(_parts(x), weight, bias, relu, who, "input", remember=True,
                         window=window)
    if _few_channels_apply(x, weight, stride, padding):
        return _few_channels(x, weight, bias, relu, who)
    return _forward(x, weight, stride, padding, bias, who=who, relu=relu)


FEW_CHANNELS = 4  # inference convolutions of at most this many input channels: _few_channels
FEW_BAND_ROWS = 16  # output rows per item of _few_channels


def _few_channels_apply(x: Parts, weight: np.ndarray, stride: int, padding: int) -> bool:
    """Whether conv2d_inference takes _few_channels: one input array of at most FEW_CHANNELS
    channels, a 3x3 kernel, padding 1, and the direct route's conditions (float32, stride
    1, rows a multiple of 16 wide, AVX-512), so that it replaces exactly the direct sums."""
    return (not isinstance(x, tuple) and x.shape[1] <= FEW_CHANNELS and weight.shape[2] == 3
            and padding == 1 and _direct(x.dtype, 3, stride, padding, x.shape[3]))


def _few_channels(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, relu: bool,
                  who: str | None) -> np.ndarray:
    """The 3x3 pad-1 stride-1 convolution of x (N, Cin, H, W) float32 (+ bias, then ReLU with
    relu), Cin small, W a multiple of 16 -> (N, Cout, H, W): gemm.direct_product's sums (the
    9 Cin taps in order (c, kh, kw), fused multiply-adds from zero, then the bias and the
    ReLU as its epilogue applies them), read from a zero-padded copy of x. With `who`, NaN/inf
    in x raise (found from the items' probes)."""
    N, Cin, H, W = x.shape
    Cout = weight.shape[0]
    padded = np.zeros((N, Cin, H + 2, W + 2), np.float32)          # (N, Cin, H+2, W+2)
    padded[:, :, 1:H + 1, 1:W + 1] = x
    w_rows = np.ascontiguousarray(weight.reshape(Cout, Cin * 9), dtype=np.float32)
    tile_bias = _NO_BIAS if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
    y = np.empty((N, Cout, H, W), np.float32)
    bands = -(-(N * H) // FEW_BAND_ROWS)
    probes = np.zeros(bands)

    def item(k: int, slot: int) -> None:
        first = k * FEW_BAND_ROWS
        probes[k] = _few_channel_rows(padded.reshape(-1, W + 2), w_rows, tile_bias, relu,
                                      y.reshape(-1, W), Cin, H, first,
                                      min(N * H, first + FEW_BAND_ROWS))

    parallel_for(item, bands, serial=_small(N, Cin, Cout, H, W, 3), blas=False)
    if who is not None and not np.isfinite(probes.sum()):
        _check_parts(who, (x,), "input")                               # raises, with counts
    return y


@njit(cache=True, nogil=True)
def _few_channel_rows(padded: np.ndarray, w_rows: np.ndarray, bias: np.ndarray, relu: bool,
                      y: np.ndarray, channels: int, height: int, first: int,
                      stop: int) -> float:
    """Rows [first, stop) of _few_channels's output (row r: image r // height, row r %
    height), 16 pixels at a time: padded (N*Cin*(H+2), W+2) the zero-padded input's rows,
    w_rows (Cout, Cin*9), bias (Cout,) or empty, y (N*Cout*H, W). Returns the NaN/inf probe
    (sum of v - v over the input values of these rows)."""
    cout = w_rows.shape[0]
    W = y.shape[1]
    epilogue = relu or bias.size > 0
    probe = vzero()
    for r in range(first, stop):
        n, i = r // height, r % height
        for c in range(channels):  # each input value is the centre tap of one output pixel
            centre = (n * channels + c) * (height + 2) + i + 1
            for j in range(0, W, 16):
                v = vload(padded, centre, j + 1)
                probe = vadd(probe, vsub(v, v))
        for o in range(cout):
            b = bias[o] if bias.size > 0 else np.float32(0)
            out = (n * cout + o) * height + i
            for j in range(0, W, 16):
                acc = vzero()
                k = 0
                for c in range(channels):
                    top = (n * channels + c) * (height + 2) + i        # padded row of row i - 1
                    for kh in range(3):
                        for kw in range(3):
                            acc = vfma(vload(padded, top + kh, j + kw), w_rows[o, k], acc)
                            k += 1
                vstore(y, out, j, vbias_relu(acc, b, relu) if epilogue else acc)
    return vsum(probe)


def _winograd_applies(x: Parts, kernel_size: int, stride: int, padding: int) -> bool:
    """Whether _winograd takes this convolution: USE_WINOGRAD and winograd.winograd_applies
    (3x3, stride 1, padding 1, H a multiple of 4, W of 16 in float32, >= 16 input
    channels)."""
    first = x[0] if isinstance(x, tuple) else x
    Cin = sum(p.shape[1] for p in x) if isinstance(x, tuple) else x.shape[1]
    return USE_WINOGRAD and winograd_applies(first.dtype, kernel_size, stride, padding,
                                             first.shape[2], first.shape[3], Cin)


# Training's convolutions take Winograd on images of at least MIN_TRAIN_TILES 4x4 tiles, and
# on images of fewer (down to SMALL_TRAIN_TILES) only with at least SMALL_TRAIN_PAIRS channel
# pairs (Cin x Cout). Its products run over blocks of 48 tiles and an item is one image's
# band, so a 32 x 32 image (64 tiles) fills 2/3 of two blocks and a 16 x 16 one a third of
# one; there, with its weights transformed anew at each step, Winograd was slower than the
# direct route for 16 x 16 and 32 x 16 channel pairs at 32 x 32 (C1) and no faster at 16 x 16
# (C2's and C3's deepest levels), faster from 32 x 64 pairs at 32 x 32 (timings of
# conv2d_forward and conv2d_backward_input alone, 2026-12-07, Intel Xeon, 2 vCPUs under load,
# not kept as a command; the whole steps: bench/bench_unet.py, docs/speed.md).
MIN_TRAIN_TILES = 256          # 64 x 64 images
SMALL_TRAIN_TILES = 48         # 32 x 32 images (64 tiles) ...
SMALL_TRAIN_PAIRS = 1024       # ... with at least this many channel pairs


def _winograd_pays(x: Parts, kernel_size: int, stride: int, padding: int,
                   out_channels: int) -> bool:
    """Training's rule: _winograd_applies, in float32 (float64 is for the gradient checks:
    there the direct sums stay), on images large enough for the channels (see above)."""
    first = x[0] if isinstance(x, tuple) else x
    if not (first.dtype == np.float32 and _winograd_applies(x, kernel_size, stride, padding)):
        return False
    Cin = sum(p.shape[1] for p in x) if isinstance(x, tuple) else x.shape[1]
    tiles = (first.shape[2] // 4) * (first.shape[3] // 4)
    return tiles >= MIN_TRAIN_TILES or (tiles >= SMALL_TRAIN_TILES
                                        and Cin * out_channels >= SMALL_TRAIN_PAIRS)


def _winograd(parts: tuple[np.ndarray, ...], weight: np.ndarray, bias: np.ndarray | None,
              relu: bool, who: str | None, name: str, remember: bool,
              split: int | None = None, window: Window | None = None,
              ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """The 3x3 pad-1 stride-1 convolution of the parts by Winograd F(4x4, 3x3) (winograd.py):
    4x fewer multiply-adds than the direct sum, rounded differently (float32: a few 1e-6 of
    the output's scale against 4e-7; tests/test_winograd.py). With `split`, the output comes
    back as two arrays, channels [0, split) and [split, Cout) (no bias then). `remember`:
    keep the transformed weights for the next call with the same weights (inference).
    window: only that part of the output computed (conv2d_inference)."""
    N, _, H, W = parts[0].shape
    Cin = sum(p.shape[1] for p in parts)
    dtype = parts[0].dtype
    Cout = weight.shape[0]
    # (36, ceil(Cout/8), Cin, 8); training's weights change every step: nothing to remember
    U = packed_weights(weight, dtype) if remember else transformed_weights(weight, dtype)
    tile_bias = np.zeros(0, dtype) if bias is None else np.ascontiguousarray(bias, dtype=dtype)
    cut = Cout if split is None else split
    y = np.empty((N, cut, H, W), dtype=dtype)           # (N, Cout, H, W), or its first part
    y2 = np.empty((N, Cout - cut, H, W), dtype=dtype)   # the second part (or no channels)
    tiles = window_tiles(H, W, window)
    R, cols, probes, counter, shapes, zeros = _winograd_items(N, Cin, Cout, H, W, dtype,
                                                              tiles)
    second = parts[1] if len(parts) > 1 else np.empty((N, 0, H, W), dtype)

    def worker(_: int, slot: int) -> None:
        run_items(parts[0], second, U, y, y2, tile_bias, relu, R, cols, counter, probes,
                  *(_scratch.get(slot, "winograd " + name, shape, dtype)
                    for name, shape in shapes.items()), zeros, tiles)

    parallel_for(worker, get_num_threads(), serial=_small(N, Cin, Cout, H, W, 3), blas=False)
    if who is not None and not np.isfinite(probes.sum()):
        _check_parts(who, parts, name)                                 # raises, with counts
    return y if split is None else (y, y2)


def _winograd_items(N: int, Cin: int, Cout: int, H: int, W: int, dtype: np.dtype,
                    tiles: np.ndarray) -> tuple[int, int, np.ndarray, np.ndarray, dict,
                                                np.ndarray]:
    """How run_items and run_items_head cut a convolution of an (H, W) output's window of
    tiles (winograd.window_tiles) into items, and what the items share: (tile rows per item,
    tiles per item's block, one NaN/inf probe per item, the items' counter, the per-thread
    scratch shapes, a row of zeros for the padding). The items' size is the whole output's,
    a window's items no larger: band_rows's choice for a window's narrower rows took up to
    3 rows a band where the whole output takes 1, and outgrew the cache (a 16-channel
    convolution 1024 px wide: 44 against 32 ms for 1152 px, ad-hoc, 2026-12-07)."""
    itemsize = np.dtype(dtype).itemsize
    cols = band_cols(W // 4, Cin, Cout, itemsize)
    R = band_rows(cols, Cin, Cout, itemsize, H // 4, W // 4)
    th, tw = int(tiles[2]), int(tiles[3])
    probes = np.zeros(N * -(-th // R) * -(-tw // cols))  # one per item
    return (R, cols, probes, np.zeros(1, np.int64), scratch_shapes(Cin, Cout, cols, R, W),
            np.zeros((1, W + 16), dtype))


def head_fuses(x: np.ndarray, weight: np.ndarray, stride: int, padding: int,
               head_weight: np.ndarray) -> bool:
    """Whether conv2d_inference_head may run this convolution and the 1x1 convolution after
    it as one (`winograd.run_items_head`): one float32 input that Winograd takes, and a 1x1
    head of float32 weights."""
    return (not isinstance(x, tuple) and x.dtype == np.float32
            and _winograd_applies(x, weight.shape[2], stride, padding)
            and head_weight.dtype == np.float32
            and head_weight.shape[1:] == (weight.shape[0], 1, 1))


def conv2d_inference_head(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                          relu: bool, head_weight: np.ndarray, head_bias: np.ndarray | None,
                          who: str | None = None, head_who: str | None = None,
                          window: Window | None = None) -> np.ndarray:
    """conv1x1(ReLU(conv3x3(x) + bias)) for inference, as one pass (`head_fuses` must hold):
    the 3x3 convolution's output is never stored; each of its values goes into the head's
    sums as the Winograd output transform makes it, in the order of upsample.head_pixels's
    sums (the same logits to the bit). x (N, Cin, H, W), weight (Cout, Cin, 3, 3),
    head_weight (Kc, Cout, 1, 1) -> logits (N, Kc, H, W). The U-Net's last convolution and
    head: 85 MB of a 1152-px tile's 16-channel activation neither written nor read again.
    NaN/inf in x raise (with who); values of the 3x3 convolution that are not finite raise
    (with head_who), as the head's own check of its input would. window: only that part of
    the logits computed (conv2d_inference)."""
    N, Cin, H, W = x.shape
    Cout, Kc = weight.shape[0], head_weight.shape[0]
    U = packed_weights(weight, np.float32)
    tile_bias = _NO_BIAS if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
    head_w = np.ascontiguousarray(head_weight.reshape(Kc, Cout), dtype=np.float32)
    head_b = (np.zeros(Kc, np.float32) if head_bias is None
              else np.ascontiguousarray(head_bias, dtype=np.float32))
    logits = np.empty((N, Kc, H, W), np.float32)
    tiles = window_tiles(H, W, window)
    R, cols, probes, counter, shapes, zeros = _winograd_items(N, Cin, Cout, H, W, np.float32,
                                                              tiles)

    def worker(_: int, slot: int) -> None:
        run_items_head(x, U, tile_bias, relu, R, cols, counter, probes,
                       *(_scratch.get(slot, "winograd " + name, shapes[name], np.float32)
                         for name in ("V", "M", "rows")),
                       zeros, head_w, head_b, logits,
                       _scratch.get(slot, "winograd head", (4 * Kc, W + 64), np.float32),
                       tiles)

    parallel_for(worker, get_num_threads(), serial=_small(N, Cin, Cout, H, W, 3), blas=False)
    if not np.isfinite(probes.sum()):
        if who is not None:
            _check_parts(who, (x,), "input")                           # raises, with counts
        if head_who is not None:
            raise FloatingPointError(f"{head_who}: input contains NaN or inf values (the "
                                     "convolution before it gave them, from finite inputs: "
                                     "check the model's weights)")
    return logits


def conv2d_backward_input(dy: np.ndarray, weight: np.ndarray, stride: int, padding: int,
                          height: int, width: int, who: str | None = None,
                          split: int | None = None, winograd: bool = False,
                          ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """dx = col2im(w^T @ dy): dy (N, Cout, Ho, Wo) -> dx (N, Cin, H, W); H, W are x's size.
    With `who`, NaN or inf in dy raise FloatingPointError. With `split` (x was two parts),
    dx comes back as two arrays, channels [0, split) and [split, Cin). With `winograd`, a
    3x3 stride-1 pad-1 one is Winograd's convolution of dy with the flipped weight where
    that applies (see conv2d_forward)."""
    if (winograd and stride == 1 and (height, width) == dy.shape[2:]
            and _winograd_pays(dy, weight.shape[2], 1, padding, weight.shape[1])):
        return _winograd((np.ascontiguousarray(dy),), _flipped(weight), None, False, who,
                         "dout", remember=False, split=split)
    return _adjoint(dy, weight, stride, padding, height, width, who=who, split=split)


def conv2d_backward_weight(x: Parts, dy: np.ndarray, kernel_size: int, stride: int,
                           padding: int) -> np.ndarray:
    """dw[o, c, kh, kw] = sum_{n,i,j} dy[n, o, i, j] x[n, c, i*S - P + kh, j*S - P + kw];
    x may be two arrays, joined along channels."""
    return _weight_gradient(x, dy, kernel_size, stride, padding)


def conv_transpose_output_size(size: int, kernel_size: int, stride: int, padding: int) -> int:
    """Ho = (H - 1) S - 2P + K (PyTorch's rule, output_padding = 0)."""
    return (size - 1) * stride - 2 * padding + kernel_size


def conv_transpose2d_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                             stride: int, padding: int, who: str | None = None) -> np.ndarray:
    """y[n, o, i*S - P + kh, j*S - P + kw] += x[n, c, i, j] w[c, o, kh, kw] (+ b[o]).

    x (N, Cin, H, W), weight (Cin, Cout, K, K) -> y (N, Cout, Ho, Wo), Ho = (H-1)S - 2P + K.
    It is conv2d_backward_input with the weight read as a conv2d weight (Cin, Cout, K, K).
    """
    K = weight.shape[2]
    Ho = conv_transpose_output_size(x.shape[2], K, stride, padding)
    Wo = conv_transpose_output_size(x.shape[3], K, stride, padding)
    if bias is not None:
        bias = np.ascontiguousarray(bias, dtype=x.dtype)
    return _adjoint(x, weight, stride, padding, Ho, Wo, who=who, name="input", bias=bias)


def conv_transpose2d_backward_input(dy: np.ndarray, weight: np.ndarray, stride: int,
                                    padding: int, who: str | None = None) -> np.ndarray:
    """dx = w @ im2col(dy): dy (N, Cout, Ho, Wo) -> dx (N, Cin, H, W) (a plain convolution).
    With `who`, NaN or inf in dy raise FloatingPointError."""
    return _forward(dy, weight, stride, padding, who=who, name="dout")


def conv_transpose2d_backward(x: np.ndarray, dy: np.ndarray, weight: np.ndarray, stride: int,
                              padding: int, bias: bool, who: str | None = None,
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The three gradients of a transposed convolution, (dx, dw, db), from ONE im2col of dy.

    x (N, Cin, H, W), dy (N, Cout, Ho, Wo), weight (Cin, Cout, K, K) -> dx (N, Cin, H, W),
    dw (Cin, Cout, K, K), db (Cout,) (None without a bias). The same values as
    conv_transpose2d_backward_input, conv_transpose2d_backward_weight and dy.sum(axis=(0, 2, 3));
    but those build the columns of dy twice and read dy a third time:

        col = im2col(dy)    per image and band of rows (Cout*K*K, R*W)
        dx[n, :, band] = w @ col                    (Cin, R*W)
        dw^T += col @ x[n, :, band]^T               (Cout*K*K, Cin)
        db += the row sums of col, per output channel (when the windows tile dy, K = S and
              P = 0, as in the U-Net: each dy value is in exactly one column; otherwise
              db = dy.sum(axis=(0, 2, 3)))

    dw and db are summed in the fixed groups of _weight_gradient (the same bits on every run).
    With `who`, NaN/inf in dy raise FloatingPointError before anything is returned.
    """
    N, Cin, H, W = x.shape
    _, Cout, K, _ = weight.shape
    S, P = stride, padding
    rows = Cout * K * K
    if dy.shape[2:] != (conv_transpose_output_size(H, K, S, P),
                        conv_transpose_output_size(W, K, S, P)):
        raise ValueError(f"conv_transpose2d_backward: dy {dy.shape} does not match x {x.shape}")
    x_rows = np.ascontiguousarray(x).reshape(N, Cin, H * W)
    dy = np.ascontiguousarray(dy)
    w_rows = np.ascontiguousarray(weight.reshape(Cin, rows))      # (Cin, Cout*K*K)
    dx = np.empty((N, Cin, H, W), dtype=dy.dtype)
    dx_rows = dx.reshape(N, Cin, H * W)
    R, bands = _bands(H, W, rows, dy.itemsize)
    pieces = N * bands
    groups = min(pieces, WEIGHT_GRADIENT_GROUPS)
    dw_parts = np.zeros((groups, rows, Cin), dtype=dy.dtype)       # dw^T per group
    db_parts = np.zeros((groups, rows), dtype=dy.dtype)
    probes = np.zeros(pieces)
    column_sums = bias and K == S and P == 0  # every dy value in exactly one column

    def item(group: int, slot: int) -> None:
        product = _scratch.get(slot, "dw", (rows, Cin), dy.dtype)
        for index in range(group * pieces // groups, (group + 1) * pieces // groups):
            n, pixels, col, probes[index] = _band_columns(dy, index, bands, R, H, W, K, S, P,
                                                          slot)   # (Cout*K*K, R*W)
            np.matmul(w_rows, col, out=dx_rows[n, :, pixels])
            np.matmul(col, x_rows[n, :, pixels].T, out=product)
            dw_parts[group] += product
            if column_sums:
                db_parts[group] += col.sum(axis=1)

    parallel_for(item, groups, serial=_small(N, Cin, Cout, H, W, K))
    if who is not None and not np.isfinite(probes.sum()):
        check_finite(who, dy, name="dout")                          # raises, with counts
    dw_t = dw_parts[0]
    db = db_parts[0]
    for group in range(1, groups):
        dw_t += dw_parts[group]
        db += db_parts[group]
    dw = np.ascontiguousarray(dw_t.T).reshape(Cin, Cout, K, K)
    if not bias:
        return dx, dw, None
    if column_sums:
        return dx, dw, db.reshape(Cout, K * K).sum(axis=1)
    return dx, dw, dy.sum(axis=(0, 2, 3))


def conv_transpose2d_backward_weight(x: np.ndarray, dy: np.ndarray, kernel_size: int,
                                     stride: int, padding: int) -> np.ndarray:
    """dw[c, o, kh, kw] = sum_{n,i,j} x[n, c, i, j] dy[n, o, i*S - P + kh, j*S - P + kw]."""
    return _weight_gradient(dy, x, kernel_size, stride, padding)
