"""Where a Winograd convolution's time goes: the input transform, the 36 products and the
output transform, on one thread, at the bundled model's shapes in a 1152-px inference tile.

    python bench/bench_winograd_phases.py [--repeats 5] [--rounds 2]
    python bench/bench_winograd_phases.py --items [--repeats 3] [--rounds 3]
    python bench/bench_winograd_phases.py --strips [--repeats 5] [--rounds 3]

For each shape (input channels, output channels, side) of the bundled `nuclei` model's
Winograd convolutions (its 16- and 32-channel levels at 1152 px and 576 px, 64 at 288, 128
at 144), `kernels.winograd.run_items`'s three steps run on their own over every item of the
image, in the calling thread, with the item sizes the layer would take (band_cols,
band_rows): only the input transform, only the products, only the output transform, and the
three as run_items chains them. Printed: the fastest of --repeats calls of each, in
milliseconds, the input's nanoseconds per value read in the input transform, and the
products' GFLOP/s (2 x 36 Cin Cout multiply-adds per 4 x 4 tile). The rounds alternate
the shapes, so a busy moment of a shared machine shows as a round out of line.

--items: the whole convolution (`conv.conv2d_inference`, on the pool's threads) with the
item sizes the layer takes ("1 x auto": band_cols, band_rows) against items of more tile rows
(R) and narrower blocks of tiles (the row's block split in 2), the outputs checked equal to
the bit (every tile is computed the same way whatever the items). More rows per item would
read each input row fewer times (a tile row reads 6 image rows, 2 of them its neighbour's
too), but V and M then outgrow the core's L2.

--strips: how much of a full-resolution convolution's time is memory's, the question a kernel
taking a band of rows through a whole level (while it is in cache) would answer. The whole
convolution (`conv.conv2d_inference`, the pool's threads, ReLU) of the 1152-px shapes on the
full 1152 x 1152 image (its input and output, 85 MB each at 16 channels, far beyond the
caches) against the same convolution on strips of 256, 128 and 64 rows of it (9.4 MB at 128
rows), called once per strip's worth of the image and repeated on the same strip, so that
its input and output stay in cache: nanoseconds per output pixel, the fastest of --repeats.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from numba import njit

from minunet.kernels.winograd import (
    band_cols,
    band_rows,
    input_transform,
    output_transform,
    packed_weights,
    products,
    scratch_shapes,
)

SHAPES = [(16, 16, 1152), (32, 16, 1152), (32, 32, 576), (64, 32, 576), (64, 64, 288),
          (128, 64, 288), (128, 128, 144)]
STEPS = {"input": 1, "products": 2, "output": 4, "all": 7}


@njit(nogil=True)
def _steps(x: np.ndarray, U: np.ndarray, y: np.ndarray, bias: np.ndarray, R: int, cols: int,
           V: np.ndarray, M: np.ndarray, rows: np.ndarray, out_rows: np.ndarray,
           zeros: np.ndarray, which: int) -> None:
    """run_items's loop over the items of image 0 in this thread, doing only the steps in
    `which` (1 input transform, 2 products, 4 output transform, with ReLU)."""
    th, tw = x.shape[2] // 4, x.shape[3] // 4
    bands, blocks = -(-th // R), -(-tw // cols)
    rows[:] = 0
    for index in range(bands * blocks):
        band, block = divmod(index, blocks)
        first, last = band * R, min(band * R + R, th)
        j0 = block * cols
        j1 = min(j0 + cols, tw)
        wide = j1 - j0
        padded = -(-((last - first) * wide) // 48) * 48
        if which & 1:
            for tr in range(first, last):
                input_transform(x, 0, tr, (tr - first) * wide, j0, j1, 0, V, rows, zeros)
        if which & 2:
            products(V, U, M, padded)
        if which & 4:
            for tr in range(first, last):
                output_transform(M, y, 0, tr, (tr - first) * wide, j0, j1, bias, True,
                                 out_rows, 0)


def measure(cin: int, cout: int, side: int, repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    x = rng.random((1, cin, side, side), dtype=np.float32)
    U = packed_weights(rng.standard_normal((cout, cin, 3, 3)).astype(np.float32), np.float32)
    y = np.empty((1, cout, side, side), np.float32)
    bias = np.zeros(cout, np.float32)
    cols = band_cols(side // 4, cin, cout, 4)
    R = band_rows(cols, cin, cout, 4, side // 4)
    scratch = {name: np.zeros(shape, np.float32)
               for name, shape in scratch_shapes(cin, cout, cols, R, side).items()}
    zeros = np.zeros((1, side + 16), np.float32)
    ms = {}
    for name, which in STEPS.items():
        args = (x, U, y, bias, R, cols, scratch["V"], scratch["M"], scratch["rows"],
                scratch["out_rows"], zeros, which)
        _steps(*args)   # compile, and touch every page
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            _steps(*args)
            times.append(time.perf_counter() - start)
        ms[name] = 1e3 * min(times)
    return ms


ITEMS = [(1, 0), (1, 1), (1, 2), (1, 4), (2, 2), (2, 4)]   # (split blocks in, tile rows; 0: auto)


def measure_items(cin: int, cout: int, side: int, repeats: int) -> dict[tuple, float]:
    """Milliseconds of conv2d_inference (ReLU, no bias) for each of ITEMS."""
    from minunet.kernels import conv

    rng = np.random.default_rng(0)
    x = rng.random((1, cin, side, side), dtype=np.float32)
    w = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32)
    auto_cols, auto_rows = conv.band_cols, conv.band_rows
    ms, first = {}, None
    try:
        for split, rows in ITEMS:
            def cols_of(tw: int, ci: int, co: int, size: int, split: int = split) -> int:
                cols = auto_cols(tw, ci, co, size)
                return cols if split == 1 else max(48, -(-cols // (48 * split)) * 48)

            def rows_of(cols: int, ci: int, co: int, size: int, th: int,
                        row_tiles: int | None = None, rows: int = rows) -> int:
                return min(th, rows) if rows else auto_rows(cols, ci, co, size, th, row_tiles)

            conv.band_cols, conv.band_rows = cols_of, rows_of
            y = conv.conv2d_inference(x, w, None, 1, 1, relu=True)
            if first is None:
                first = y
            elif not np.array_equal(y, first):
                raise SystemExit(f"items {split, rows}: a different output for {cin, cout, side}")
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                conv.conv2d_inference(x, w, None, 1, 1, relu=True)
                times.append(time.perf_counter() - start)
            ms[(split, rows)] = 1e3 * min(times)
    finally:
        conv.band_cols, conv.band_rows = auto_cols, auto_rows
    return ms


def items_main(repeats: int, rounds: int) -> None:
    names = [f"{split}/{rows or 'auto'}" for split, rows in ITEMS]
    print(f"{'Cin':>4} {'Cout':>4} {'side':>5} " + " ".join(f"{n:>8}" for n in names)
          + "   (ms, the pool's threads; block split in / tile rows per item)")
    for r in range(rounds):
        print(f"round {r + 1}")
        for cin, cout, side in SHAPES:
            ms = measure_items(cin, cout, side, repeats)
            print(f"{cin:>4} {cout:>4} {side:>5} "
                  + " ".join(f"{ms[item]:>8.2f}" for item in ITEMS), flush=True)


STRIP_ROWS = (256, 128, 64)


def strips_main(repeats: int, rounds: int) -> None:
    from minunet.kernels import conv

    print(f"{'Cin':>4} {'Cout':>4} {'whole':>8} " + " ".join(f"{r:>8}" for r in STRIP_ROWS)
          + "   (ns per output pixel: the whole 1152 x 1152 image, strips of R rows)")
    rng = np.random.default_rng(0)
    for r in range(rounds):
        print(f"round {r + 1}")
        for cin, cout, side in SHAPES:
            if side != 1152:
                continue
            image = rng.random((1, cin, side, side), dtype=np.float32)
            w = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32)
            ns = []
            for rows in (side, *STRIP_ROWS):
                x = np.ascontiguousarray(image[:, :, :rows])
                calls = side // rows          # the whole image's worth of strips
                conv.conv2d_inference(x, w, None, 1, 1, relu=True)
                best = np.inf
                for _ in range(repeats):
                    start = time.perf_counter()
                    for _ in range(calls):
                        conv.conv2d_inference(x, w, None, 1, 1, relu=True)
                    best = min(best, (time.perf_counter() - start) / (calls * rows * side))
                ns.append(1e9 * best)
            print(f"{cin:>4} {cout:>4} " + " ".join(f"{v:>8.2f}" for v in ns), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--items", action="store_true",
                        help="the whole convolution with other item sizes")
    parser.add_argument("--strips", action="store_true",
                        help="the whole image against strips of it that stay in cache")
    args = parser.parse_args()
    if args.strips:
        strips_main(args.repeats, args.rounds)
        return
    if args.items:
        items_main(args.repeats, args.rounds)
        return
    print(f"{'Cin':>4} {'Cout':>4} {'side':>5} " + " ".join(f"{s:>9}" for s in STEPS)
          + f" {'ns/value in':>11} {'GFLOP/s prod':>12}   (ms, one thread)")
    for r in range(args.rounds):
        print(f"round {r + 1}")
        for cin, cout, side in SHAPES:
            ms = measure(cin, cout, side, args.repeats)
            flops = 2 * 36 * cin * cout * (side // 4) ** 2
            print(f"{cin:>4} {cout:>4} {side:>5} " + " ".join(f"{ms[s]:>9.2f}" for s in STEPS)
                  + f" {1e6 * ms['input'] / (cin * side * side):>11.2f}"
                  + f" {flops / ms['products'] / 1e6:>12.0f}", flush=True)


if __name__ == "__main__":
    main()
