"""Object F1 at a few fixed resize factors and with `--diameter auto`, on objects off the
trained size: the measurement behind `rescale.TRAINED_RANGE` and `rescale.ENLARGE_TO`.

    python bench/auto_diameter.py                       # the bundled `nuclei` model
    python bench/auto_diameter.py --model runs/x --scales 1 1.3 1.6

Cases (8 images each, seed 30000): `shift-small` (~15 px), `shift-large` (~30 px), tiny nuclei
(`standard` with radius 5: ~10 px, dense) and huge textured ones (radius 19 with chromatin and
nucleoli: ~36 px; radius 26: ~49 px). Each cell: object F1@0.5 (objects found / true); the
auto column also gives the mean resize factor it chose.
"""

from __future__ import annotations

import argparse

import numpy as np

import minunet as mu
from minunet import rescale

CASES = {
    "shift-small": ("shift-small", {}),
    "shift-large": ("shift-large", {}),
    "tiny (radius 5)": ("standard", {"radius": 5.0, "radius_std": 0.7, "min_size": 10,
                                     "density": 120.0}),
    "huge textured (radius 19)": ("standard", {"radius": 19.0, "radius_std": 2.0,
                                               "chromatin": 0.35, "nucleoli": 1.5,
                                               "density": 14.0}),
    "very large textured (radius 26)": ("standard", {"radius": 26.0, "radius_std": 2.5,
                                                     "chromatin": 0.35, "nucleoli": 1.5,
                                                     "density": 8.0}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nuclei")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.62, 0.8, 1.0, 1.3, 1.6])
    args = parser.parse_args()
    ckpt = mu.load(args.model)
    norm, post = ckpt.metadata["normalization"], ckpt.metadata["postprocess"]
    print("| case | true diameter (px) | " + " | ".join(f"x{s:g}" for s in args.scales)
          + " | `--diameter auto` |")
    print("|---|---|" + "---|" * (len(args.scales) + 1))
    for name, (preset, knobs) in CASES.items():
        images, labels, _ = mu.data.generate(8, preset, seed=30_000, **knobs)
        cells = []
        for scale in args.scales:
            settings = rescale.postprocess_at(post, scale) if scale != 1.0 else post
            preds = [mu.to_instances(mu.predict(ckpt.model, im, normalization=norm,
                                                scale=scale), **settings) for im in images]
            cells.append(_score(labels, preds))
        infos = [{} for _ in images]
        preds = [mu.segment(ckpt, im, diameter="auto", info=info)
                 for im, info in zip(images, infos, strict=True)]
        chosen = np.mean([info["scale"] for info in infos])
        cells.append(f"{_score(labels, preds)}, x{chosen:.2f}")
        print(f"| {name} | {rescale.object_diameter(labels):.1f} | " + " | ".join(cells) + " |",
              flush=True)


def _score(labels: np.ndarray, preds: list[np.ndarray]) -> str:
    result = mu.metrics.evaluate(list(labels), preds)
    found = sum(r[0].n_pred for r in result.objects_per_image)
    true = sum(r[0].n_true for r in result.objects_per_image)
    return f"{result.at(0.5).f1:.3f} ({found} / {true})"


if __name__ == "__main__":
    main()
