"""The accuracy table: train the default models, score them in and out of distribution.

    python bench/accuracy.py                  # trains both models; runs/accuracy/
    python bench/accuracy.py --pretrained     # score the bundled `nuclei` model as the broad one
    python bench/accuracy.py --quick          # a 1-minute smoke run of the same code

Two models, each a U-Net (depth 3, base 16) trained on 128 x 128 crops with three-class targets,
the U-Net paper's weight map, augmentation, Adam and a cosine learning rate:

1. the notebook's benchmark: trained on `reference` (the public Keras notebook's recipe: 320
   images, 24 epochs, weight map without class balancing, see `train_reference`), the
   epoch kept by validation pixel F1 (the metric the notebook and this table report), scored on
   new `reference` images and on `reference-shifted` ones, with the notebook's own metrics
   (pixel F1 and Cohen's kappa of the foreground) plus object scores. `reference-shifted` is
   scored twice: as it is, and with `--diameter auto` (the object diameter measured on the
   model's own first pass, `rescale.auto_scale`, and the image resized where it is off the
   trained size).
   The ceiling column bounds the pixel F1 any model can reach (see `pixel_ceiling`).
2. minunet's default: the recipe of the bundled pretrained model (bench/train_pretrained.py:
   `broad`, 240 images, 30 epochs, the epoch kept by validation object F1), scored on new
   `standard` images and on every `shift-*` preset (object F1 at IoU 0.5, the DSB mean AP over
   IoU 0.50:0.05:0.95, panoptic quality, pixel F1, kappa), and, for the record, on its own
   `broad` and on the notebook's two recipes. With --pretrained the bundled
   checkpoint is scored instead of training the same recipe again.

Pixel scores come from the predicted foreground (background probability < 0.5), pooled over the
test images; object scores from the instances of `to_instances`, pooled. Every image is
generated from a fixed seed, so the table is regenerated exactly by running this again
(up to float round-off in multi-threaded BLAS). Writes table.md, results.json and an error map
and overlay per test preset to the output folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

import minunet as mu
from minunet import rescale, workflow
from minunet.data.presets import preset_params
from minunet.models import pretrained_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_pretrained import N_VAL, RECIPE, SIZE, train_broad, train_default

N_TEST = 16
REFERENCE_PLAN = {"n_train": 320, "epochs": 24}
QUICK = {"n_train": 16, "epochs": 1}
AUTO = "auto"   # a test row scored with the diameter estimated from each image


def train_reference(n_train: int, epochs: int, out: Path, seed: int) -> mu.Checkpoint:
    """Train the default U-Net on `reference`, keeping the epoch of best validation pixel F1.

    The weight map has no class balancing here (`balance=False`): balancing weighs the rare
    cell pixels ~30x the background ones, which moves the decision towards "cell" and costs
    pixel F1 in false-positive pixels on distractor clouds and salt; the border term stays.
    The post-processing's seed threshold and shape split are then picked on the validation
    images (`workflow.tune_postprocess`; the split is offered here because the recipe's
    clouds overlap with no border the network could see)."""
    history, x_val, labels, post = train_default(out, "reference", n_train, epochs, seed,
                                                 "val_pixel_f1", balance=False)
    print(f"reference: best epoch {history.best_epoch} of {len(history)}, "
          f"val pixel F1 {history.best_score:.3f}")
    ckpt = mu.load(out / "best.npz")
    post = workflow.tune_postprocess(ckpt.model, x_val, labels[:N_VAL], post,
                                     split_depths=workflow.SPLIT_DEPTHS)
    print(f"post-processing {post} (validation object F1)")
    mu.save(ckpt.model, out / "best.npz", position=ckpt.position,
            **{**ckpt.metadata, "postprocess": post})
    return mu.load(out / "best.npz")


def pixel_ceiling(images: np.ndarray, labels: np.ndarray, preset: str) -> float:
    """An upper bound on the pixel F1 of any model on `reference`-recipe images.

    In the recipe a cell pixel's gray level is uniform in `cell_intensity`; salt and distractor
    pixels (never on a cell) can take the same levels. Two kinds of pixel are then
    indistinguishable from their look-alikes, whatever a model does:
    - a cell pixel with no cell pixel among its 8 neighbours looks exactly like salt (missed);
    - an off-cell pixel at a cell gray level with at least 6 of its 8 neighbours on cells looks
      exactly like a cell pixel (taken).
    Counting only these (a lower bound on the errors) gives an upper bound on F1."""
    lo, hi = (v / 255.0 for v in preset_params(preset)["cell_intensity"])
    ring = np.ones((3, 3))
    ring[1, 1] = 0
    tp = fn = fp = 0
    for image, lab in zip(images, labels, strict=True):
        cell = lab > 0
        neighbours = ndimage.convolve(cell.astype(np.int32), ring.astype(np.int32),
                                      mode="constant")
        lone = cell & (neighbours == 0)
        lookalike = ~cell & (image >= lo - 1e-6) & (image < hi) & (neighbours >= 6)
        fn += int(lone.sum())
        fp += int(lookalike.sum())
        tp += int(cell.sum()) - int(lone.sum())
    return 2 * tp / (2 * tp + fp + fn)


def score(ckpt: mu.Checkpoint, preset: str, seed: int, out: Path, diameter: str | None = None
          ) -> dict[str, float]:
    """Scores of a checkpoint on N_TEST new images of `preset`; saves an error map and an
    overlay. Every row also scores `--diameter auto` (object F1 and count, the mean ratio of
    the estimate to the true median diameter, the images resized): the plain pass is the
    first pass of `mu.segment(..., diameter="auto")` (`rescale.auto_scale`), and an image is
    predicted again only where that resizes it. diameter=AUTO: the row's pixel and object
    scores are those of the auto pass."""
    images, labels, _ = mu.data.generate(N_TEST, preset, size=SIZE, seed=seed)
    norm, trained = ckpt.metadata["normalization"], ckpt.metadata["diameter"]
    plain, auto, foreground, auto_foreground, ratios, resized = [], [], [], [], [], 0
    for image, lab in zip(images, labels, strict=True):
        probs = mu.predict(ckpt.model, image, normalization=norm)
        plain.append(mu.to_instances(probs, **ckpt.metadata["postprocess"]))
        foreground.append((probs[0] < 0.5).astype(np.int32))  # the notebook's binary mask
        probe = mu.predict(ckpt.model, image, normalization=norm, scale=rescale.PROBE_SCALE)
        scale, estimate = rescale.auto_scale(probs, trained, probe)
        if estimate is not None:
            ratios.append(estimate / rescale.object_diameter(lab))
        settings = rescale.auto_settings(ckpt.metadata["postprocess"], estimate, scale,
                                         trained)
        if scale != 1.0:
            resized += 1
            probs = mu.predict(ckpt.model, image, normalization=norm, scale=scale)
        auto.append(mu.to_instances(probs, **settings))
        auto_foreground.append((probs[0] < 0.5).astype(np.int32))
    if diameter == AUTO:
        plain, foreground = auto, auto_foreground
    objects = mu.metrics.evaluate(list(labels), plain)
    pixels = mu.metrics.evaluate(list(labels), foreground, thresholds=[0.5]).pixel_pooled
    row = workflow.summarize(objects)
    row["pixel_f1"], row["kappa"] = pixels.f1, pixels.kappa
    auto_row = workflow.summarize(mu.metrics.evaluate(list(labels), auto))
    row["auto_f1"], row["auto_n_pred"] = auto_row["object_f1"], auto_row["n_pred"]
    row["estimate_ratio"] = float(np.mean(ratios)) if ratios else float("nan")
    row["resized"] = resized
    if preset.startswith("reference"):
        row["ceiling"] = pixel_ceiling(images, labels, preset)
    name = preset + ("-auto" if diameter else "")
    mu.viz.error_map(labels[0], foreground[0], out / f"{name}_error_map.png", title=name)
    mu.viz.overlay(images[0], labels[0], plain[0], out / f"{name}_overlay.png", title=name)
    return row


def table(rows: dict[str, dict[str, float]]) -> str:
    header = ("| test preset | pixel F1 | kappa | object F1@0.5 | DSB AP | PQ "
              "| cells (true / found) | `--diameter auto`: object F1@0.5 (found) "
              "| estimate / true diameter | images resized | pixel F1 ceiling |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for preset, r in rows.items():
        ceiling = f"{r['ceiling']:.3f}" if "ceiling" in r else ""
        lines.append(f"| {preset} | {r['pixel_f1']:.3f} | {r['kappa']:.3f} | "
                     f"{r['object_f1']:.3f} | {r['dsb_ap']:.3f} | {r['panoptic_quality']:.3f} | "
                     f"{int(r['n_true'])} / {int(r['n_pred'])} | "
                     f"{r['auto_f1']:.3f} ({int(r['auto_n_pred'])}) | "
                     f"{r['estimate_ratio']:.2f} | {r['resized']} / {N_TEST} | {ceiling} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/accuracy")
    parser.add_argument("--quick", action="store_true", help="tiny run, to check it works")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["reference", "broad"],
                        help="train and score one model only")
    parser.add_argument("--pretrained", action="store_true",
                        help="score the bundled `nuclei` model instead of training the broad "
                             "recipe again")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict[str, dict] = {}
    shifts = [p for p in mu.data.PRESETS if p.startswith("shift-")]
    for name in ["reference", "broad"]:
        if args.only and args.only != name:
            continue
        t0 = time.perf_counter()
        if name == "reference":
            plan = QUICK if args.quick else REFERENCE_PLAN
            ckpt = train_reference(plan["n_train"], plan["epochs"], out / "model-reference",
                                   args.seed)
            tests = [("reference", None), ("reference-shifted", None),
                     ("reference-shifted", AUTO)]
            what = f"`reference` ({plan['n_train']} images, {plan['epochs']} epochs)"
        else:
            if args.pretrained:
                ckpt = mu.load(pretrained_path("nuclei"))
                plan = ckpt.metadata["recipe"]
                what = (f"`broad`: the bundled `nuclei` model ({plan['n_train']} images, "
                        f"{plan['epochs']} epochs)")
            else:
                plan = ({**RECIPE, **QUICK} if args.quick else RECIPE) | {"seed": args.seed}
                ckpt = train_broad(out / "model-broad", **plan)
                what = f"`broad` ({plan['n_train']} images, {plan['epochs']} epochs)"
            tests = ([("standard", None)] + [(p, None) for p in shifts]
                     + [("broad", None), ("reference", None), ("reference-shifted", None)])
        trained = time.perf_counter() - t0
        rows = {}
        for k, (preset, diameter) in enumerate(tests):
            label = preset + (", diameter auto" if diameter else "")
            seed = 10_000 + (k if diameter is None else k - 1)   # same images as the plain row
            rows[label] = score(ckpt, preset, seed, out, diameter)
        results[name] = {"trained_on": what, "train_seconds": trained, "rows": rows}
        print(f"\ntrained on {what} ({trained:.0f} s)")
        print(table(rows))

    total = time.perf_counter() - started
    text = [f"# minunet accuracy (bench/accuracy.py, {total / 60:.1f} min in all)", ""]
    for r in results.values():
        text += [f"## Trained on {r['trained_on']}, {r['train_seconds'] / 60:.1f} min", "",
                 table(r["rows"]), ""]
    (out / "table.md").write_text("\n".join(text))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\n{total / 60:.1f} minutes; wrote {out / 'table.md'} and {out / 'results.json'}")


if __name__ == "__main__":
    main()
