"""Timing of object matching and post-processing on 1024 x 1024 images.

    python bench/bench_metrics.py [--repeats 7]

Scene: ~1,000 discs (radius 8-14 px) on a jittered 32 px grid, so that many touch. Prints the
median of each measurement; the runs are interleaved (A B C A B C ...) so that noise from a
shared machine hits every case alike. Targets: match < 0.5 s, to_instances < 1 s.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage
from skimage.segmentation import find_boundaries

from minunet.metrics import DSB_THRESHOLDS, match
from minunet.postprocess import to_instances

SIZE = 1024
GRID = 32  # px between disc centres: 32 x 32 = 1,024 cells on the image


def scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true labels, predicted labels, three-class probabilities (3, H, W))."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    lab = np.zeros((SIZE, SIZE), np.int32)
    k = 0
    for cy in range(GRID // 2, SIZE, GRID):
        for cx in range(GRID // 2, SIZE, GRID):
            k += 1
            y, x = cy + rng.integers(-4, 5), cx + rng.integers(-4, 5)
            r = rng.integers(8, 15)
            lo_y, lo_x = max(y - r, 0), max(x - r, 0)
            win = (slice(lo_y, y + r + 1), slice(lo_x, x + r + 1))
            lab[win][(yy[win] - y) ** 2 + (xx[win] - x) ** 2 <= r * r] = k
    # prediction: shifted, ids shuffled, a few objects dropped
    perm = np.concatenate([[0], rng.permutation(k) + 1])
    pred = perm[np.roll(lab, (2, -1), axis=(0, 1))]
    pred[np.isin(pred, rng.choice(k, k // 20) + 1)] = 0
    boundary = find_boundaries(lab, mode="inner") & (lab > 0)
    probs = np.stack([lab == 0, (lab > 0) & ~boundary, boundary]).astype(np.float32)
    probs = ndimage.gaussian_filter(probs, sigma=(0, 1, 1))  # soft, like a network's output
    return lab, pred, probs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    lab, pred, probs = scene(np.random.default_rng(0))
    binary = np.stack([probs[0], 1 - probs[0]])
    cases = {
        "match, 1 threshold": lambda: match(lab, pred, 0.5),
        "match, 10 DSB thresholds": lambda: match(lab, pred, DSB_THRESHOLDS),
        "match, thresh 0.1 (solver)": lambda: match(lab, pred, 0.1),
        "to_instances, 3-class": lambda: to_instances(probs),
        "to_instances, binary + split": lambda: to_instances(binary, split=True),
    }
    for f in cases.values():  # warm-up
        f()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.repeats):
        for name, f in cases.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    n_true = int(lab.max())
    r = match(lab, pred, 0.5)
    print(f"{SIZE}x{SIZE}, {n_true} true objects, {r.n_pred} predicted, F1@0.5 = {r.f1:.3f}; "
          f"to_instances found {int(to_instances(probs).max())} objects")
    for name, ts in times.items():
        print(f"{name:32s} median {np.median(ts) * 1e3:8.1f} ms  (min {min(ts) * 1e3:.1f})")


if __name__ == "__main__":
    main()
