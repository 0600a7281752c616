"""Empty fields: how many objects the bundled `nuclei` model finds where there are none, and what
the empty-field guard of the normalisation (`predict.MIN_SIGNAL_TO_NOISE`) costs on real cells.

    python bench/empty_fields.py              # guard values 0 (off), 6, 8, 12; about 3 minutes
    python bench/empty_fields.py --snr 8      # one value

Noise-only fields: a camera offset plus Gaussian noise, 256 x 256, at three offsets and three
noise levels (16-bit counts), and an 8-bit one. Cells: 4 generated images per preset (object F1
at IoU 0.5, pooled): `standard`, the two with the weakest signal over noise (`shift-noise`,
`shift-contrast`), a sparse field (3 cells per 256 x 256), and near-empty fields (1 cell per
256 x 256 on average, no debris or out-of-focus blobs: 12 images, with the number of cells and
of objects found in each). Every image is seeded.
"""

from __future__ import annotations

import argparse

import numpy as np

import minunet as mu
from minunet.predict import MIN_SIGNAL_TO_NOISE, foreground_median, noise_sigma

FIELDS = [(100, 2), (100, 10), (1000, 10), (1000, 50), (10000, 200), (10, 3)]
PRESETS = [("standard", {}), ("shift-noise", {}), ("shift-contrast", {}),
           ("sparse", {"density": 3.0}),
           ("near-empty", {"density": 1.0, "debris": 0.0, "blobs": 0.0})]


def noise_field(offset: float, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dtype = np.uint8 if offset + 6 * sigma < 256 else np.uint16
    return np.clip(np.round(offset + rng.normal(0, sigma, (256, 256))), 0, None).astype(dtype)


def snr(image: np.ndarray) -> float:
    gray = np.asarray(image, float)
    return (foreground_median(gray) - np.percentile(gray, 1)) / noise_sigma(gray)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--snr", type=float, nargs="*", default=[0.0, 6.0, 8.0, 12.0])
    args = parser.parse_args()
    ckpt = mu.load("nuclei")
    norm = dict(ckpt.metadata["normalization"])
    cells = {}
    for name, knobs in PRESETS:
        preset = "standard" if name in ("sparse", "near-empty") else name
        n = 12 if name == "near-empty" else 4
        cells[name] = mu.data.generate(n, preset, seed=21 if n == 12 else 11, **knobs)[:2]
    print("signal over noise, in noise sigmas: " + ", ".join(
        f"noise {o}+-{s}: {snr(noise_field(o, s, 0)):.1f}" for o, s in FIELDS[:2]) + "; "
        + ", ".join(f"{n}: {min(snr(im) for im in cells[n][0]):.1f} (lowest)" for n in cells
                  if n != "near-empty"))
    header = ["min_snr"] + [f"noise {o}+-{s}" for o, s in FIELDS] + [f"F1 {n}" for n in cells]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for k in args.snr:
        settings = {**norm, "min_snr": k}
        row = [f"{k:g}" + (" (default)" if k == MIN_SIGNAL_TO_NOISE else "")]
        for offset, sigma in FIELDS:
            counts = [int(mu.segment(_with(ckpt, settings), noise_field(offset, sigma, s)).max())
                      for s in range(3)]
            row.append("/".join(map(str, counts)))
        for name in cells:
            images, labels = cells[name]
            preds = [mu.segment(_with(ckpt, settings), im) for im in images]
            row.append(f"{mu.metrics.evaluate(list(labels), preds).at(0.5).f1:.3f}")
            if name == "near-empty":
                pairs = zip(labels, preds, strict=True)
                row[-1] += " (cells/found: " + " ".join(
                    f"{int(t.max())}/{int(p.max())}" for t, p in pairs) + ")"
        print("| " + " | ".join(row) + " |", flush=True)


def _with(ckpt: mu.Checkpoint, normalization: dict) -> mu.Checkpoint:
    ckpt.metadata["normalization"] = normalization
    return ckpt


if __name__ == "__main__":
    main()
