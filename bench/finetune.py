"""Fine-tuning on a handful of annotated images: does it beat the bundled model and training
from scratch? One reproducible command.

    python bench/finetune.py                   # full table (about an hour on 2 busy cores)
    python bench/finetune.py --quick           # a smoke run, seconds

For presets the bundled model finds hard (`broad`, and its three weakest single-factor shifts
in docs/accuracy.md: `shift-small`, `shift-sizes`, `shift-blur`), and for `lab` (large, dim,
textured nuclei on an uneven background: far from the `broad` images `nuclei` was trained
on), with 1, 2, 4 and 8 annotated 256 x 256 images, it
reports object F1@0.5 on 16 new images of the preset for
(a) the bundled model `nuclei` as it is,
(b) a U-Net trained from random weights on those images (`mu.fit(folder, out)`, the command's
    from-scratch recipe, limited to the fine-tuning's number of steps: equal time),
(c) `nuclei` fine-tuned on them (`mu.fit(folder, out, from_="nuclei")`: the command's
    defaults, exactly what `minunet train --data FOLDER --from nuclei` does),
and the time each training run took. The annotated images are the first n of one draw (each
set contains the smaller ones); the test images are another draw. Works with whatever
minunet/models/nuclei.npz is.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

import minunet as mu
from minunet import metrics
from minunet.runs import FINETUNE_DEFAULTS

# `lab`: `standard` moved far from `broad` on several axes at once
LAB = {"radius": 20.0, "radius_std": 3.0, "density": 14.0, "touching": 0.3,   # large nuclei
       "contrast": 0.15, "contrast_std": 0.04, "edge_falloff": 0.1,          # dim, soft rims
       "texture": 0.35, "texture_scale": 4.0,                                # coarse texture
       "background": 0.2, "gradient": 0.6, "vignetting": 0.4}                # uneven background
# the bundled model's hardest presets (docs/accuracy.md): broad, its training preset (0.936),
# and its weakest single-factor shifts, shift-small (0.966), shift-sizes (0.969) and
# shift-blur (0.970). Before the model's retraining on larger cells these were shift-texture,
# broad, shift-contrast and shift-blur; the first and third now score 0.990 and 0.991.
PRESETS = {"lab": ("standard", LAB), "broad": ("broad", {}),
           "shift-small": ("shift-small", {}), "shift-sizes": ("shift-sizes", {}),
           "shift-blur": ("shift-blur", {})}
FULL = {"sizes": (1, 2, 4, 8), "n_test": 16, "size": (256, 256), "settings": {},
        "defaults_n": 16}
QUICK = {"sizes": (1, 2), "n_test": 2, "size": (96, 96),
         "settings": {"epochs": 1, "samples_per_epoch": 8, "batch_size": 4, "crop": 64},
         "defaults_n": None}
TRAIN_SEED, TEST_SEED = 7, 1000


def draw(preset: str, n: int, size: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    base, knobs = PRESETS[preset]
    images, labels, _ = mu.data.generate(n, base, size=size, seed=seed, **knobs)
    return images, labels


def object_f1(ckpt: mu.Checkpoint, images: np.ndarray, labels: np.ndarray) -> float:
    preds = [mu.segment(ckpt, image) for image in images]
    return metrics.evaluate(list(labels), preds).at(0.5).f1


def train_and_score(folder: Path, out: Path, settings: dict, test: tuple) -> tuple[float, float]:
    """mu.fit on a data folder with `settings`; (test object F1, seconds)."""
    started = time.perf_counter()
    run = mu.fit(folder, out, progress=False, **settings)
    seconds = time.perf_counter() - started
    return object_f1(run.best, *test), seconds


def bench_preset(preset: str, recipe: dict, work: Path) -> list[dict]:
    sizes, size = recipe["sizes"], recipe["size"]
    train_images, train_labels = draw(preset, max(sizes), size, TRAIN_SEED)
    test = draw(preset, recipe["n_test"], size, TEST_SEED)
    bundled = object_f1(mu.load("nuclei"), *test)
    print(f"{preset}: bundled nuclei F1 {bundled:.3f}", flush=True)
    # equal time: from scratch gets the fine-tuning's epochs and samples per epoch
    scratch = {"epochs": FINETUNE_DEFAULTS["epochs"], **recipe["settings"]}
    rows = []
    for n in sizes:
        folder = work / f"{preset}-{n}"
        mu.data.save_dataset(folder, train_images[:n], train_labels[:n], {"preset": preset})
        f1_scratch, s_scratch = train_and_score(folder, work / f"{preset}-{n}-scratch",
                                                scratch, test)
        f1_ft, s_ft = train_and_score(folder, work / f"{preset}-{n}-finetune",
                                      {"from_": "nuclei", **recipe["settings"]}, test)
        row = {"preset": preset, "n_images": n, "bundled": bundled, "scratch": f1_scratch,
               "finetune": f1_ft, "scratch_s": s_scratch, "finetune_s": s_ft}
        print(f"{preset} n={n}: bundled {bundled:.3f}  scratch {f1_scratch:.3f} "
              f"({s_scratch:.0f} s)  fine-tuned {f1_ft:.3f} ({s_ft:.0f} s)", flush=True)
        rows.append(row)
    return rows


def command_defaults(recipe: dict, work: Path) -> dict:
    """`minunet train --data FOLDER` with no other option, from random weights, on
    `defaults_n` images of `lab`: the command's own recipe (40 epochs of 64 crops)."""
    n, size = recipe["defaults_n"], recipe["size"]
    images, labels = draw("lab", n, size, TRAIN_SEED)
    test = draw("lab", recipe["n_test"], size, TEST_SEED)
    folder = work / f"lab-{n}"
    mu.data.save_dataset(folder, images, labels, {"preset": "lab"})
    f1, seconds = train_and_score(folder, work / f"lab-{n}-defaults", {}, test)
    print(f"lab n={n}, command defaults from scratch: {f1:.3f} ({seconds:.0f} s)", flush=True)
    return {"preset": "lab", "n_images": n, "defaults_scratch": f1, "seconds": seconds}


def table(rows: list[dict]) -> str:
    lines = ["| preset | images | (a) bundled | (b) from scratch | (c) fine-tuned | time (b) | "
             "time (c) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if "defaults_scratch" in r:
            lines.append(f"\n`minunet train --data` with no option (from scratch) on "
                         f"{r['n_images']} `{r['preset']}` images: object F1@0.5 "
                         f"{r['defaults_scratch']:.3f} in {r['seconds'] / 60:.1f} min")
            continue
        lines.append(f"| {r['preset']} | {r['n_images']} | {r['bundled']:.3f} | "
                     f"{r['scratch']:.3f} | {r['finetune']:.3f} | {r['scratch_s'] / 60:.1f} min "
                     f"| {r['finetune_s'] / 60:.1f} min |")
    return "\n".join(lines) + "\n"


def write(out: Path, rows: list[dict]) -> str:
    text = table(rows)
    (out / "table.md").write_text(text)
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run, to check it works")
    parser.add_argument("--only", choices=list(PRESETS), help="one preset only")
    parser.add_argument("--sizes", help="numbers of annotated images, e.g. 2,4 (1,2,4,8)")
    parser.add_argument("--no-defaults", action="store_true",
                        help="skip the run with the command's from-scratch defaults")
    parser.add_argument("--out", default="runs/finetune", help="folder for table.md and "
                        "results.json")
    args = parser.parse_args()
    recipe = dict(QUICK if args.quick else FULL)
    if args.sizes:
        recipe["sizes"] = tuple(int(n) for n in args.sizes.split(","))
    if args.no_defaults:
        recipe["defaults_n"] = None
    presets = [args.only] if args.only else (["lab"] if args.quick else list(PRESETS))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="minunet-finetune-") as work:
        for preset in presets:
            rows += bench_preset(preset, recipe, Path(work))
            write(out, rows)  # what is done so far, in case the run is cut short
        if recipe["defaults_n"] and not args.only:
            rows.append(command_defaults(recipe, Path(work)))
    print(write(out, rows))
    print(f"wrote {out / 'table.md'} in {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
