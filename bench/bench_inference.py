"""Inference's own kernels, layer by layer, against the routes they replace; and the cost of
NumPy's huge pages on a process's first forward.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_inference.py
    python bench/bench_inference.py --tile 1152 --rounds 3
    python bench/bench_inference.py --first-forward        # huge pages on / off, fresh processes

Default: the bundled `nuclei` model in eval mode, gradients off, on one random tile of
TILE x TILE pixels (1152: the default 1024-px core with its margins). Each round times one
forward with minunet's inference kernels (Winograd 3x3 convolutions, the up-step and head
kernels) and one without (`kernels.conv.USE_WINOGRAD` and `kernels.upsample.ENABLED` off:
the routes of MINUNET_WINOGRAD=0), alternating, and prints per layer call the milliseconds
of both (the best of the rounds) and each block's share of the forward.

--first-forward: in fresh processes, alternating, the first and second forward of such a
tile with NumPy's huge-page requests off (minunet's default, kernels/memory.py) and on
(NUMPY_MADVISE_HUGEPAGE=1), with the system time of the first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict

FIRST_FORWARD = r"""
import json, resource, sys, time
import numpy as np
import minunet as mu
model = mu.load("nuclei").model
model.eval()
model.set_grad_enabled(False)
model(np.zeros((1, 1, 256, 256), np.float32))                   # compiled kernels loaded
x = np.random.default_rng(0).standard_normal((1, 1, TILE, TILE)).astype(np.float32)
times = []
for _ in range(2):
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    model(x)
    times.append((time.perf_counter() - t0,
                  resource.getrusage(resource.RUSAGE_SELF).ru_stime - r0.ru_stime))
print(json.dumps(times))
"""


def first_forward(tile: int, rounds: int) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    print(f"{'huge pages':>10} {'first s':>8} {'its system s':>12} {'second s':>9}")
    for _ in range(rounds):
        for name, extra in (("off", {}), ("on", {"NUMPY_MADVISE_HUGEPAGE": "1"})):
            out = subprocess.run([sys.executable, "-c",
                                  FIRST_FORWARD.replace("TILE", str(tile))],
                                 env={**env, **extra}, capture_output=True, text=True,
                                 check=True).stdout
            (first, system), (second, _) = json.loads(out.strip().splitlines()[-1])
            print(f"{name:>10} {first:>8.2f} {system:>12.2f} {second:>9.2f}", flush=True)


def layers(tile: int, rounds: int) -> None:
    import numpy as np

    import minunet as mu
    from minunet.kernels import conv, upsample
    from minunet.kernels import layers as fast_layers

    model = mu.load("nuclei").model
    model.eval()
    model.set_grad_enabled(False)
    x = np.random.default_rng(0).standard_normal((1, 1, tile, tile)).astype(np.float32)
    best: dict[tuple, dict[str, float]] = defaultdict(dict)
    totals: dict[str, float] = {}
    calls: list[tuple] = []

    def timed(module: object, name: str, fn: object) -> object:
        def call(*args: object) -> object:
            t0 = time.perf_counter()
            y = fn(*args)
            key = (name, tuple(a.shape[1] for a in args), y.shape[1], y.shape[2])
            calls.append((key, time.perf_counter() - t0))
            return y
        return call

    for name in ("down", "up"):
        for i, block in enumerate(getattr(model, name)):
            block.forward = timed(block, f"{name}.{i}", block.forward)
    model.bottom.forward = timed(model.bottom, "bottom", model.bottom.forward)
    for name in ("upconv", "pool"):
        for i, layer in enumerate(getattr(model, name)):
            layer.forward = timed(layer, f"{name}.{i}", layer.forward)
    model.head.forward = timed(model.head, "head", model.head.forward)
    assert isinstance(model.head, fast_layers.Conv2d)
    switches = conv.USE_WINOGRAD, upsample.ENABLED
    for side in ("with", "without"):   # compile / load both routes once
        conv.USE_WINOGRAD = upsample.ENABLED = switches[0] if side == "with" else False
        model(x)
    for _ in range(rounds):
        for side in ("with", "without"):
            conv.USE_WINOGRAD, upsample.ENABLED = switches if side == "with" else (False, False)
            calls.clear()
            t0 = time.perf_counter()
            model(x)
            total = time.perf_counter() - t0
            totals[side] = min(totals.get(side, total), total)
            for key, seconds in calls:
                best[key][side] = min(best[key].get(side, seconds), seconds)
    conv.USE_WINOGRAD, upsample.ENABLED = switches
    print(f"tile {tile}x{tile}, best of {rounds}: forward {1e3 * totals['with']:.0f} ms with "
          f"the inference kernels, {1e3 * totals['without']:.0f} ms without")
    print(f"{'layer':>9} {'in ch':>9} {'out':>4} {'size':>5} {'with ms':>8} {'without':>8} "
          f"{'share':>6}")
    for key, sides in best.items():
        name, cin, cout, size = key
        print(f"{name:>9} {'+'.join(map(str, cin)):>9} {cout:>4} {size:>5} "
              f"{1e3 * sides['with']:>8.1f} {1e3 * sides['without']:>8.1f} "
              f"{100 * sides['with'] / totals['with']:>5.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", type=int, default=1152)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--first-forward", action="store_true")
    args = parser.parse_args()
    if args.first_forward:
        first_forward(args.tile, args.rounds)
    else:
        layers(args.tile, args.rounds)


if __name__ == "__main__":
    main()
