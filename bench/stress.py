"""Hard cases that mix two or more factors, as real images do: object F1@0.5 of a model with
default settings and with `--diameter auto`, and objects found against true.

    python bench/stress.py                              # the bundled `nuclei` model
    python bench/stress.py --model old.npz              # any checkpoint or run folder

8 images of 256 x 256 per case (seed 555). The cases are `standard` or `broad` with knobs
moved the way real nuclei move them: large textured nuclei (radius 18 with chromatin and
nucleoli: the splits a real image showed), dim textured ones, a wide spread of brightness,
crowding, defocus, irregular outlines, small textured nuclei, low light, very bright outliers.
The single-factor presets are in the accuracy table (bench/accuracy.py); this is where their
combinations are measured.
"""

from __future__ import annotations

import argparse
import time

import minunet as mu
from minunet import metrics

N_IMAGES, SEED, SIZE = 8, 555, (256, 256)
CASES: dict[str, tuple[str, dict[str, float]]] = {
    "broad": ("broad", {}),
    "bright spread": ("standard", {"brightness_sigma": 1.0}),
    "bright spread, broad": ("broad", {"brightness_sigma": 1.0}),
    "crowded": ("standard", {"density": 60.0, "touching": 0.7}),
    "crowded, broad": ("broad", {"density": 60.0, "touching": 0.6}),
    "defocus": ("standard", {"defocus": 0.5}),
    "dim textured": ("standard", {"contrast": 0.15, "texture": 0.35, "chromatin": 0.4}),
    "irregular": ("standard", {"irregularity": 0.2, "elongation": 0.9}),
    "small textured": ("standard", {"radius": 7.0, "chromatin": 0.3, "texture": 0.2}),
    "large textured": ("standard", {"radius": 18.0, "chromatin": 0.4, "texture": 0.3,
                                    "nucleoli": 2.0}),
    "low light": ("standard", {"photons": 30.0}),
    "bright outliers, broad": ("broad", {"bright_fraction": 0.15, "bright_gain": 5.0}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nuclei", help="checkpoint, run folder or name")
    parser.add_argument("--quick", action="store_true", help="two cases of 2 small images")
    args = parser.parse_args()
    ckpt = mu.load(args.model)
    n, size = (2, (96, 96)) if args.quick else (N_IMAGES, SIZE)
    cases = list(CASES.items())[:2] if args.quick else CASES.items()
    started = time.perf_counter()
    print("| case | object F1@0.5 | found / true | `--diameter auto` | found |")
    print("|---|---|---|---|---|")
    for name, (base, knobs) in cases:
        images, labels, _ = mu.data.generate(n, base, size=size, seed=SEED, **knobs)
        plain = [mu.segment(ckpt, image) for image in images]
        auto = [mu.segment(ckpt, image, diameter="auto") for image in images]
        f1 = metrics.evaluate(list(labels), plain).at(0.5).f1
        auto_f1 = metrics.evaluate(list(labels), auto).at(0.5).f1
        true = sum(int(lab.max()) for lab in labels)
        print(f"| {name} | {f1:.3f} | {sum(int(p.max()) for p in plain)} / {true} | "
              f"{auto_f1:.3f} | {sum(int(a.max()) for a in auto)} |", flush=True)
    print(f"\n{args.model}: {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
