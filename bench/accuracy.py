"""The accuracy table: train the default models, score them in and out of distribution.

    python bench/accuracy.py                  # about 21 minutes on 2 cores; runs/accuracy/
    python bench/accuracy.py --quick          # a 1-minute smoke run of the same code

Two models, each a U-Net (depth 3, base 16) trained on 128 x 128 crops with three-class targets,
the U-Net paper's weight map, augmentation, Adam and a cosine learning rate:

1. the notebook's benchmark: trained on `reference` (the public Keras notebook's recipe), scored
   on new `reference` images and on `reference-shifted` ones, with the notebook's own metrics
   (pixel F1 and Cohen's kappa of the foreground) plus object scores;
2. minunet's own: trained on `standard`, scored on new `standard` images and on every `shift-*`
   preset (object F1 at IoU 0.5, the DSB mean AP over IoU 0.50:0.05:0.95, panoptic quality,
   pixel F1, kappa).

Pixel scores come from the predicted foreground (background probability < 0.5), pooled over the
test images; object scores from the instances of `to_instances`, pooled. Every image is
generated from a fixed seed, so the table is regenerated exactly by running this again
(up to float round-off in multi-threaded BLAS). Writes table.md, results.json and an error map
and overlay per test preset to the output folder.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import minunet as mu
from minunet import workflow
from minunet.predict import DEFAULT_NORMALIZATION

SIZE = (256, 256)
CROP = 128
BATCH = 8
LR = 3e-3
N_VAL = 8
N_TEST = 16
# (training preset, training images, epochs): about 21 minutes on 2 cores in all
PLANS = {"reference": ("reference", 160, 16), "standard": ("standard", 240, 40)}
QUICK = {"reference": ("reference", 16, 1), "standard": ("standard", 16, 1)}


def train_model(preset: str, n_train: int, epochs: int, out: Path, seed: int) -> mu.Checkpoint:
    """Generate `n_train + N_VAL` images of `preset` and train the default U-Net on them."""
    images, labels, _ = mu.data.generate(n_train + N_VAL, preset, size=SIZE, seed=seed)
    post = workflow.postprocess_settings(labels[N_VAL:])
    x, classes, weights = workflow.training_arrays(images, labels, DEFAULT_NORMALIZATION)
    model = mu.UNet(1, 3, depth=3, base_channels=16, rng=np.random.default_rng(seed))
    steps = epochs * -(-n_train // BATCH)
    history = mu.train(
        model, (x[N_VAL:], classes[N_VAL:], weights[N_VAL:]),
        (x[:N_VAL], classes[:N_VAL], weights[:N_VAL]),
        epochs=epochs, batch_size=BATCH, lr=LR, crop=CROP,
        schedule=mu.CosineSchedule(LR, total_steps=steps, warmup_steps=min(50, steps - 1)),
        augment=workflow.make_augment(),
        score_fn=workflow.object_score_fn(labels[:N_VAL], postprocess=post), monitor="val_f1",
        seed=seed, out_dir=out,
        metadata={"normalization": DEFAULT_NORMALIZATION, "postprocess": post},
    )
    print(f"{preset}: best epoch {history.best_epoch} of {len(history)}, "
          f"val F1 {history.best_score:.3f}")
    return mu.load(out / "best.npz")


def score(ckpt: mu.Checkpoint, preset: str, seed: int, out: Path) -> dict[str, float]:
    """Scores of `model` on N_TEST new images of `preset`; saves an error map and an overlay."""
    images, labels, _ = mu.data.generate(N_TEST, preset, size=SIZE, seed=seed)
    instances, foreground = [], []
    for image in images:
        pred, probs = workflow.segment(ckpt.model, image, DEFAULT_NORMALIZATION,
                                       **ckpt.metadata["postprocess"])
        instances.append(pred)
        foreground.append((probs[0] < 0.5).astype(np.int32))  # the notebook's binary mask
    objects = mu.metrics.evaluate(list(labels), instances)
    pixels = mu.metrics.evaluate(list(labels), foreground, thresholds=[0.5]).pixel_pooled
    row = workflow.summarize(objects)
    row["pixel_f1"], row["kappa"] = pixels.f1, pixels.kappa
    mu.viz.error_map(labels[0], foreground[0], out / f"{preset}_error_map.png", title=preset)
    mu.viz.overlay(images[0], labels[0], instances[0], out / f"{preset}_overlay.png",
                   title=preset)
    return row


def table(rows: dict[str, dict[str, float]]) -> str:
    header = ("| test preset | pixel F1 | kappa | object F1@0.5 | DSB AP | PQ "
              "| cells (true / found) |")
    lines = [header, "|---|---|---|---|---|---|---|"]
    for preset, r in rows.items():
        lines.append(f"| {preset} | {r['pixel_f1']:.3f} | {r['kappa']:.3f} | "
                     f"{r['object_f1']:.3f} | {r['dsb_ap']:.3f} | {r['panoptic_quality']:.3f} | "
                     f"{int(r['n_true'])} / {int(r['n_pred'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/accuracy")
    parser.add_argument("--quick", action="store_true", help="tiny run, to check it works")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=sorted(PLANS), help="train and score one model only")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plans = QUICK if args.quick else PLANS
    if args.only:
        plans = {args.only: plans[args.only]}
    started = time.perf_counter()
    results: dict[str, dict] = {}

    tests = {"reference": ["reference", "reference-shifted"],
             "standard": ["standard", *[p for p in mu.data.PRESETS if p.startswith("shift-")]]}
    for name, (preset, n_train, epochs) in plans.items():
        t0 = time.perf_counter()
        ckpt = train_model(preset, n_train, epochs, out / f"model-{name}", args.seed)
        trained = time.perf_counter() - t0
        rows = {p: score(ckpt, p, 10_000 + k, out) for k, p in enumerate(tests[name])}
        results[name] = {"train_preset": preset, "train_images": n_train, "epochs": epochs,
                         "train_seconds": trained, "rows": rows}
        print(f"\ntrained on {preset} ({n_train} images, {epochs} epochs, {trained:.0f} s)")
        print(table(rows))

    total = time.perf_counter() - started
    text = [f"# minunet accuracy (bench/accuracy.py, {total / 60:.1f} min in all)", ""]
    for r in results.values():
        text += [f"## Trained on `{r['train_preset']}` ({r['train_images']} images of "
                 f"{SIZE[0]}x{SIZE[1]}, {r['epochs']} epochs, {r['train_seconds'] / 60:.1f} min)",
                 "", table(r["rows"]), ""]
    (out / "table.md").write_text("\n".join(text))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\n{total / 60:.1f} minutes; wrote {out / 'table.md'} and {out / 'results.json'}")


if __name__ == "__main__":
    main()
