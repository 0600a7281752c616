"""The pieces behind the convolution kernels' choices, each timed against its alternative.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_conv_parts.py [--repeats 30]

0. The direct route (float32 on AVX-512: `gemm.direct_product`, `gemm.direct_weight_product`
   reading the padded band, no im2col) against the BLAS route (im2col + np.matmul), on whole
   3x3 layers of the U-Net's C2 configuration, 2 threads: forward, weight gradient, and the
   input gradient (itself a convolution); then the two kernels alone on one band (one
   thread, data in cache) in GFLOP/s, against np.matmul on that band's im2col columns.
1. im2col (the BLAS route's): `conv.im2col_rows` (its loops compiled with the U-Net's K, S, P
   as constants) against the very same loop body compiled with K, S, P known only at run time.
2. The BLAS route's weight-gradient product on one band: `col @ dy^T` (what
   `_weight_gradient` does) against `dy @ col^T`, BLAS single-threaded as inside minunet's
   regions.
3. The thread pool: an empty region of 8 items, and small regions run on one thread
   (`serial=True`) against two: batch norm + ReLU forward and backward at 1-8 MiB
   (threads.SERIAL_BYTES = 4 MiB) and a 3x3 convolution forward of 5-150 MFLOP
   (threads.SERIAL_FLOPS = 25 MFLOP).

Batch 8, float32; medians of `--repeats` calls, the two sides of each line alternating.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import numpy as np
from numba import njit
from threadpoolctl import threadpool_limits

from minunet.kernels import batchnorm, conv, gemm, layers, threads


def alternate(a: Callable[[], object], b: Callable[[], object], repeats: int
              ) -> tuple[float, float]:
    """Median seconds of a() and b(), called A B A B ... after one warm-up each."""
    a(), b()
    ta, tb = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        a()
        ta.append(time.perf_counter() - t)
        t = time.perf_counter()
        b()
        tb.append(time.perf_counter() - t)
    return float(np.median(ta)), float(np.median(tb))


def routed(direct: bool, fn: Callable[..., np.ndarray], *args: object) -> np.ndarray:
    conv.USE_DIRECT = direct
    return fn(*args)


def direct_route(repeats: int, rng: np.random.Generator) -> None:
    available = conv.USE_DIRECT
    print(f"0. direct route (AVX-512 here: {available}) against BLAS, whole layers, batch 8, "
          f"2 threads (ms): direct | BLAS | BLAS / direct")
    if not available:
        print("   skipped: no AVX-512 (or MINUNET_GEMM=blas), minunet uses BLAS everywhere")
        return
    threads.set_num_threads(2)
    total = [0.0, 0.0]
    for cin, cout, size in [(16, 16, 128), (32, 16, 128), (16, 32, 64), (32, 32, 64),
                            (64, 64, 32), (128, 64, 32), (128, 128, 16)]:
        x = rng.standard_normal((8, cin, size, size)).astype(np.float32)
        w = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32)
        dy = rng.standard_normal((8, cout, size, size)).astype(np.float32)
        line = []
        for name, fn, args in [
                ("forward", conv.conv2d_forward, (x, w, None, 1, 1)),
                ("input grad", conv.conv2d_backward_input, (dy, w, 1, 1, size, size)),
                ("weight grad", conv.conv2d_backward_weight, (x, dy, 3, 1, 1))]:
            fast, slow = alternate(partial(routed, True, fn, *args),
                                   partial(routed, False, fn, *args), repeats)
            total[0] += fast
            total[1] += slow
            line.append(f"{name} {fast * 1e3:5.2f} | {slow * 1e3:5.2f} | {slow / fast:4.2f}x")
        print(f"   {cin:3d}->{cout:3d} {size:3d}^2: " + "; ".join(line))
    print(f"   all of them: {total[0] * 1e3:.1f} | {total[1] * 1e3:.1f} ms | "
          f"{total[1] / total[0]:.2f}x")
    conv.USE_DIRECT = available
    print("   the kernels alone, one band in cache, one thread (GFLOP/s): "
          "direct_product | direct_weight_product | np.matmul on im2col columns")
    with threadpool_limits(1):
        for cin, cout, size in [(16, 16, 128), (32, 16, 128), (64, 32, 64), (128, 64, 32)]:
            x = rng.standard_normal((1, cin, size, size)).astype(np.float32)
            R, _ = conv._bands(size, size, cin * 9, 4)
            band = np.zeros(conv.band_shape(cin, size, R, size, 3, 1, 1), np.float32)
            col = np.empty((cin * 9, R * size), np.float32)
            conv.im2col_rows(x, 0, 3, 1, 1, 0, size, col, band)  # also fills the band
            w = rng.standard_normal((cout, cin * 9)).astype(np.float32)
            w_p = gemm.pack_weights(w.T)
            g = rng.standard_normal((cout, R * size)).astype(np.float32)
            y = np.empty((cout, R * size), np.float32)
            dw = np.zeros((cout, cin * 9), np.float32)
            spare = np.empty((gemm.TILE, gemm.BLOCK), np.float32)
            no_bias = np.zeros(0, np.float32)
            forward, blas = alternate(
                partial(gemm.direct_product, band, w_p, y, 3, size, spare, no_bias, False),
                partial(np.matmul, w, col, out=y), repeats)
            weight, _ = alternate(partial(gemm.direct_weight_product, band[None], g[None], dw,
                                          size, 0, cout, cin),
                                  lambda: None, repeats)
            flop = 2 * cout * cin * 9 * R * size
            print(f"   {cin:3d}->{cout:3d} {size:3d}^2, {R} rows: {flop / forward / 1e9:5.0f} | "
                  f"{flop / weight / 1e9:5.0f} | {flop / blas / 1e9:5.0f}")


def im2col(repeats: int, rng: np.random.Generator) -> None:
    generic = njit(nogil=True)(conv._im2col_rows.py_func)  # the same body, K S P at run time
    print("1. im2col, one band (us): constants compiled in | run-time K, S, P | ratio")
    for C, size, K, S, P in [(16, 128, 3, 1, 1), (64, 32, 3, 1, 1), (32, 128, 2, 2, 0)]:
        x = rng.standard_normal((8, C, size, size)).astype(np.float32)
        Wo = conv.conv_output_size(size, K, S, P)
        R, _ = conv._bands(Wo, Wo, C * K * K, 4)
        col = np.empty((C * K * K, R * Wo), np.float32)
        band = np.empty(conv.band_shape(C, size, R, Wo, K, S, P), np.float32)
        args = (x, 1, K, S, P, 0, Wo, col, band)
        fast, slow = alternate(partial(conv.im2col_rows, *args), partial(generic, *args),
                               repeats)
        print(f"   {C:3d} ch {size:3d}^2 K{K} S{S} P{P}, {R} rows: {fast * 1e6:7.1f} | "
              f"{slow * 1e6:7.1f} | {slow / fast:4.1f}x")


def weight_gradient(repeats: int, rng: np.random.Generator) -> None:
    print("2. weight-gradient product, one band (GFLOP/s): col @ dy^T | dy @ col^T | ratio")
    with threadpool_limits(1):
        for cout, rows, pixels in [(16, 144, 3328), (16, 288, 3328), (32, 288, 3584),
                                   (64, 576, 1024)]:
            g = rng.standard_normal((cout, pixels)).astype(np.float32)
            col = rng.standard_normal((rows, pixels)).astype(np.float32)
            ours, other = alternate(partial(np.matmul, col, g.T), partial(np.matmul, g, col.T),
                                    repeats)
            flop = 2 * cout * rows * pixels
            print(f"   Cout {cout:3d}, {rows:3d} x {pixels}: {flop / ours / 1e9:6.0f} | "
                  f"{flop / other / 1e9:6.0f} | {other / ours:4.2f}x")


def bn_step(bn: layers.BatchNormReLU2d, x: np.ndarray, g: np.ndarray, serial_bytes: int
            ) -> None:
    """Batch norm + ReLU forward and backward, serial below `serial_bytes`."""
    batchnorm.SERIAL_BYTES = serial_bytes
    bn.forward(x)
    bn.backward(g)


def conv_step(x: np.ndarray, w: np.ndarray, serial_flops: float) -> None:
    """A 3x3 convolution forward, serial below `serial_flops`."""
    conv.SERIAL_FLOPS = serial_flops
    conv.conv2d_forward(x, w, None, 1, 1)


def pool(repeats: int, rng: np.random.Generator) -> None:
    threads.set_num_threads(2)
    empty, _ = alternate(lambda: threads.parallel_for(lambda i, s: None, 8),
                         lambda: None, repeats * 10)
    print(f"3. an empty region of 8 items on 2 threads: {empty * 1e6:.1f} us")
    print("   one thread (serial=True) | two threads (ms) | two / one")
    for shape in [(8, 8, 64, 64), (8, 16, 64, 64), (8, 32, 64, 64), (8, 16, 128, 128)]:
        x = rng.standard_normal(shape).astype(np.float32)
        g = rng.standard_normal(shape).astype(np.float32)
        bn = layers.BatchNormReLU2d(shape[1])
        saved = batchnorm.SERIAL_BYTES
        one, two = alternate(partial(bn_step, bn, x, g, 1 << 62), partial(bn_step, bn, x, g, 0),
                             repeats)
        batchnorm.SERIAL_BYTES = saved
        print(f"   BN+ReLU fwd+bwd {x.nbytes / 2**20:4.1f} MiB: {one * 1e3:6.3f} | "
              f"{two * 1e3:6.3f} | {two / one:4.2f}")
    for C, size in [(8, 32), (8, 64), (16, 64), (16, 128)]:
        x = rng.standard_normal((8, C, size, size)).astype(np.float32)
        w = rng.standard_normal((C, C, 3, 3)).astype(np.float32)
        saved = conv.SERIAL_FLOPS
        one, two = alternate(partial(conv_step, x, w, np.inf), partial(conv_step, x, w, 0),
                             repeats)
        conv.SERIAL_FLOPS = saved
        mflop = 2 * 8 * size * size * C * C * 9 / 1e6
        print(f"   conv3x3 {C}->{C} {size}^2, {mflop:5.1f} MFLOP: {one * 1e3:6.3f} | "
              f"{two * 1e3:6.3f} | {two / one:4.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    direct_route(args.repeats, rng)
    im2col(args.repeats, rng)
    weight_gradient(args.repeats, rng)
    pool(args.repeats, rng)


if __name__ == "__main__":
    main()
