"""The fast path's choices outside the convolution kernels, each timed against the way it
avoids, both in ONE process, interleaved (A B A B ...), median of the per-round ratios:

  1. inference: the batch split into one slice per thread (`kernels.threads.map_batch`, what
     `UNet.forward` does in eval mode with gradients off) against the layers run on the whole
     batch, each layer's work spread over the threads (`UNet._layers_forward`);
  2. training's batch norm + ReLU: the two passes channel by channel
     (`batchnorm_relu_train_forward` / `_backward`) against the two passes over the whole
     activation (statistics then y; sums then dx);
  3. the decoder's concatenation: `Conv2d(a, b)` reading the two halves where they are,
     against building [a | b] with `Concat` and convolving that (forward and backward);
  4. regions that never call BLAS leaving its thread count alone (`parallel_for(blas=False)`)
     against switching it to one thread and back around every region;
  5. training's up-step (2x2 stride-2 transposed convolution), forward + backward, on
     upsample.py's kernels against the BLAS route (im2col of dy, np.matmul), on C2's and
     C3's up-steps (`kernels.layers.UP_STEP_MAX_WEIGHTS` is chosen from this).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_fast_paths.py [--rounds 15]

Ratios below 1 mean the fast path's way is faster. 2 threads, float32.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

import minunet as mu
from minunet.kernels import batchnorm as bn
from minunet.kernels import layers as fast
from minunet.kernels import threads

CONFIGS = {"C1": (3, 8, 8, 64), "C1 x16": (3, 8, 16, 64), "C2": (3, 16, 8, 128),
           "C3": (4, 32, 4, 256)}  # (depth, base channels, batch, size)


def interleaved(a: Callable[[], object], b: Callable[[], object], rounds: int,
                ) -> tuple[float, float, float]:
    """(median time of a, of b, median of the per-round ratios b / a), seconds."""
    a()
    b()
    ta, tb = [], []
    for _ in range(rounds):
        for fn, times in ((a, ta), (b, tb)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return (statistics.median(ta), statistics.median(tb),
            statistics.median(y / x for x, y in zip(ta, tb, strict=True)))


def split_inference(rounds: int) -> None:
    print("1. inference, batch split over the threads vs layer by layer (ms): "
          "layers | split | split / layers  (GFLOP per slice)")
    for name, (depth, base, batch, size) in CONFIGS.items():
        model = mu.UNet(1, 3, depth=depth, base_channels=base, rng=0)
        model.eval().set_grad_enabled(False)
        x = np.random.default_rng(0).standard_normal((batch, 1, size, size)).astype(np.float32)
        per_slice = model.forward_flops(batch, size, size) / threads.get_num_threads() / 1e9
        split = threads.SPLIT_FLOPS
        threads.SPLIT_FLOPS = 0.0  # split whatever the size: the threshold is what is measured
        try:
            t_layers, t_split, ratio = interleaved(lambda m=model, x=x: m._layers_forward(x),
                                                   lambda m=model, x=x: m(x), rounds)
        finally:
            threads.SPLIT_FLOPS = split
        chosen = "split" if per_slice * 1e9 >= split else "layers"
        print(f"   {name:7s} {t_layers * 1e3:7.1f} | {t_split * 1e3:7.1f} | {ratio:.2f}x  "
              f"({per_slice:.2f}; the forward takes: {chosen})")


def batchnorm_sides(shape: tuple[int, int, int, int], rng: np.random.Generator,
                    ) -> tuple[Callable[[], None], Callable[[], None]]:
    """(two passes over the whole activation, channel by channel): forward + backward."""
    C = shape[1]
    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, C).astype(np.float32)
    beta = rng.uniform(-0.3, 0.3, C).astype(np.float32)
    M = x.size // C

    def two_passes() -> None:
        mean, var = bn.batchnorm_stats(x)
        istd = 1.0 / np.sqrt(var + 1e-5)
        scale = gamma * istd
        y, _ = bn.batchnorm_relu_forward(x, scale.astype(np.float32),
                                         (beta - mean * scale).astype(np.float32))
        s1, s2 = bn.batchnorm_relu_backward_reduce(g, y, x, mean)
        bn.batchnorm_relu_backward_input(g, y, x, mean.astype(np.float32),
                                         scale.astype(np.float32), (s1 / M).astype(np.float32),
                                         (istd * (s2 * istd) / M).astype(np.float32))

    def by_channel() -> None:
        _, mean, var = bn.batchnorm_relu_train_forward(x, gamma, beta, 1e-5)
        bn.batchnorm_relu_train_backward(g, x, mean, 1.0 / np.sqrt(var + 1e-5), gamma,
                                         *bn.train_coefficients(gamma, beta, mean, var, 1e-5,
                                                                np.float32))

    return two_passes, by_channel


def batchnorm_by_channel(rounds: int) -> None:
    print("2. training batch norm + ReLU, forward + backward (ms): two passes | by channel | "
          "ratio")
    rng = np.random.default_rng(1)
    for shape in [(8, 16, 128, 128), (8, 32, 64, 64), (8, 64, 32, 32)]:
        t_two, t_one, ratio = interleaved(*batchnorm_sides(shape, rng), rounds)
        print(f"   {shape!s:18s} {t_two * 1e3:6.2f} | {t_one * 1e3:6.2f} | {ratio:.2f}x")


def convolution_sides(c: int, size: int, rng: np.random.Generator,
                      ) -> tuple[Callable[[], None], Callable[[], None]]:
    """(Concat then Conv2d, Conv2d(a, b)): forward + backward of 2c -> c channels."""
    a, b = (rng.standard_normal((8, c, size, size)).astype(np.float32) for _ in range(2))
    dy = rng.standard_normal((8, c, size, size)).astype(np.float32)
    conv = fast.Conv2d(2 * c, c, 3, padding=1, bias=False, rng=rng)
    cat = fast.Concat()

    def joined() -> None:
        conv(cat(a, b))
        cat.backward(conv.backward(dy))

    def parts() -> None:
        conv(a, b)
        conv.backward(dy)

    return joined, parts


def two_part_convolution(rounds: int) -> None:
    print("3. the decoder's first convolution, forward + backward (ms): Concat + Conv2d | "
          "Conv2d(a, b) | ratio")
    rng = np.random.default_rng(2)
    for c, size in [(16, 128), (32, 64), (64, 32)]:
        t_cat, t_parts, ratio = interleaved(*convolution_sides(c, size, rng), rounds)
        print(f"   {2 * c:3d} -> {c:3d} {size:3d}^2  {t_cat * 1e3:6.2f} | {t_parts * 1e3:6.2f} | "
              f"{ratio:.2f}x")


def blas_left_alone(rounds: int) -> None:
    print("4. C1, BLAS's thread count switched around every region vs only where BLAS runs "
          "(ms): always | only | ratio")
    model = mu.UNet(1, 3, depth=3, base_channels=8, rng=0)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 1, 64, 64)).astype(np.float32)
    target = rng.integers(0, 3, (8, 64, 64))
    loss = mu.CrossEntropyLoss()
    adam = mu.Adam(model.parameters(), lr=1e-3)
    run = threads._Pool.run

    def always(self: threads._Pool, fn: Callable, count: int, n: int, blas: bool = True) -> None:
        run(self, fn, count, n, True)

    def train_step() -> None:
        loss.forward(model.forward(x), target)
        adam.zero_grad()
        model.backward(loss.backward())
        adam.step()

    def infer() -> None:
        model.eval().set_grad_enabled(False)
        model(x)
        model.train().set_grad_enabled(True)

    for name, step in (("train", train_step), ("infer", infer)):
        def switching(step: Callable[[], None] = step) -> None:
            threads._Pool.run = always
            try:
                step()
            finally:
                threads._Pool.run = run

        t_always, t_only, ratio = interleaved(switching, step, 3 * rounds)
        print(f"   {name}  {t_always * 1e3:6.2f} | {t_only * 1e3:6.2f} | {ratio:.2f}x")


def up_step(rounds: int) -> None:
    print("5. training's up-step, forward + backward (ms): BLAS route | upsample kernels | "
          "ratio")
    rng = np.random.default_rng(4)
    limit = fast.UP_STEP_MAX_WEIGHTS
    for batch, cin, cout, size in [(8, 128, 64, 16), (8, 64, 32, 32), (8, 32, 16, 64),
                                   (4, 512, 256, 16), (4, 256, 128, 32), (4, 128, 64, 64),
                                   (4, 64, 32, 128)]:
        layer = fast.ConvTranspose2d(cin, cout, 2, stride=2, rng=rng)
        x = rng.standard_normal((batch, cin, size, size)).astype(np.float32)
        dy = rng.standard_normal((batch, cout, 2 * size, 2 * size)).astype(np.float32)

        def step(weights: int, layer: fast.ConvTranspose2d = layer, x: np.ndarray = x,
                 dy: np.ndarray = dy) -> None:
            fast.UP_STEP_MAX_WEIGHTS = weights
            try:
                layer(x)
                layer.backward(dy)
            finally:
                fast.UP_STEP_MAX_WEIGHTS = limit

        t_blas, t_kernel, ratio = interleaved(lambda step=step: step(0),
                                              lambda step=step, w=cin * cout: step(w), rounds)
        print(f"   batch {batch} {cin:3d} -> {cout:3d} {size:3d}^2  {t_blas * 1e3:6.2f} | "
              f"{t_kernel * 1e3:6.2f} | {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    print(f"{threads.get_num_threads()} threads")
    split_inference(args.rounds)
    batchnorm_by_channel(args.rounds)
    two_part_convolution(args.rounds)
    blas_left_alone(args.rounds)
    up_step(args.rounds)


if __name__ == "__main__":
    main()
