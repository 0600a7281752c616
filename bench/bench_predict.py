"""Peak memory and speed of tiled prediction on a large image (the 4096 x 4096 case).

    python bench/bench_predict.py [--size 4096] [--tile 1024] [--batch-size 1]

Each measurement runs in a fresh subprocess and reports its peak resident memory (ru_maxrss):
the baseline (Python + minunet + the model, nothing predicted) and the whole prediction of one
uint16 image of the given size, probabilities and instance labels included. The target is a
4096 x 4096 image within 1 GiB peak (issue 26; it was 1.5 GiB before). Tile and batch size
default to `mu.predict`'s.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

LIMIT_MIB = 1024  # the target: 1 GiB


def worker(size: int, tile: int, batch_size: int, predict_it: bool) -> None:
    import numpy as np

    import minunet as mu
    from minunet import workflow

    model = mu.UNet(1, 3, depth=3, base_channels=16, rng=np.random.default_rng(0)).eval()
    small = np.random.default_rng(1).integers(0, 4000, (64, 64), dtype=np.uint16)
    workflow.segment(model, small, tile=64)  # compile the kernels outside the measurement
    seconds = 0.0
    if predict_it:
        image = np.random.default_rng(2).integers(0, 4000, (size, size), dtype=np.uint16)
        started = time.perf_counter()
        labels, probs = workflow.segment(model, image, tile=tile, batch_size=batch_size)
        seconds = time.perf_counter() - started
        assert labels.shape == (size, size) and probs.shape == (3, size, size)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mib": peak_mib, "seconds": seconds}))


def measure(size: int, tile: int, batch_size: int, predict_it: bool) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--size", str(size), "--tile", str(tile),
           "--batch-size", str(batch_size)] + ([] if predict_it else ["--baseline"])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    from minunet.predict import DEFAULT_BATCH_SIZE, DEFAULT_TILE

    parser.add_argument("--tile", type=int, default=DEFAULT_TILE)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.size, args.tile, args.batch_size, not args.baseline)
        return
    base = measure(args.size, args.tile, args.batch_size, False)
    full = measure(args.size, args.tile, args.batch_size, True)
    verdict = "within" if full["peak_mib"] <= LIMIT_MIB else "OVER"
    print(f"image {args.size}x{args.size} uint16, tile {args.tile}, U-Net depth 3 base 16")
    print(f"baseline peak (python + minunet + model): {base['peak_mib']:7.0f} MiB")
    print(f"prediction peak (probabilities + labels): {full['peak_mib']:7.0f} MiB "
          f"({verdict} the {LIMIT_MIB} MiB target), {full['seconds']:.1f} s "
          f"({args.size * args.size / full['seconds'] / 1e6:.2f} Mpixel/s)")


if __name__ == "__main__":
    main()
