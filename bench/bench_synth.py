"""Images per second per preset at 256 x 256 on one core, plus the per-sample training costs.

    NUMBA_NUM_THREADS=1 python bench/bench_synth.py [--images 40] [--rounds 5]

Presets are timed round-robin (every preset once per round, so a busy spell on a shared
machine hits all of them alike) and the median round is reported. Target: >= 50 images/s for
`standard` and `reference` (the notebook's own generator needed ~6 s per image).
"""

import argparse
import os
import time

os.environ.setdefault("NUMBA_NUM_THREADS", "1")   # one core, as the target is stated

import numpy as np

import minunet as mu

SIZE = (256, 256)
TARGET = 50.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40, help="images per timing")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    presets = list(mu.data.PRESETS)
    for p in presets:                                   # warm up (imports, JIT, caches)
        mu.data.generate(1, p, size=SIZE)
    rates = {p: [] for p in presets}
    for r in range(args.rounds):
        for p in presets:
            t = time.perf_counter()
            mu.data.generate(args.images, p, size=SIZE, seed=r)
            rates[p].append(args.images / (time.perf_counter() - t))

    print(f"images/s at {SIZE[0]}x{SIZE[1]}, NUMBA_NUM_THREADS="
          f"{os.environ['NUMBA_NUM_THREADS']}, median of {args.rounds} rounds of "
          f"{args.images} images")
    print(f"{'preset':22s} {'median':>8s} {'min':>8s} {'max':>8s}")
    for p in presets:
        r = np.array(rates[p])
        flag = "" if p not in ("standard", "reference") else (
            "  ok" if np.median(r) >= TARGET else f"  below target {TARGET:g}")
        print(f"{p:22s} {np.median(r):8.1f} {r.min():8.1f} {r.max():8.1f}{flag}")

    images, labels, _ = mu.data.generate(8, size=SIZE, seed=0)
    crops_im, crops_lab = images[:, :128, :128], labels[:, :128, :128]
    weight = mu.data.weight_map(crops_lab[0])
    rng = np.random.default_rng(0)
    jobs = {
        "three_class 256^2": lambda i: mu.data.three_class(labels[i]),
        "weight_map 256^2": lambda i: mu.data.weight_map(labels[i]),
        "augment 128^2 (all on)": lambda i: mu.data.augment(crops_im[i], crops_lab[i], rng,
                                                            weight=weight),
    }
    print(f"\nper-sample cost, median ms over 5 x 8 calls (~{labels.max(axis=(1, 2)).mean():.0f}"
          " cells per 256^2 image)")
    for name, job in jobs.items():
        job(0)
        times = []
        for _ in range(5):
            t = time.perf_counter()
            for i in range(8):
                job(i)
            times.append((time.perf_counter() - t) / 8 * 1e3)
        print(f"{name:26s} {np.median(times):7.2f} ms")


if __name__ == "__main__":
    main()
