"""Train a small U-Net on synthetic cells in under two minutes, then look at what it learned.

    python examples/train_small.py                 # writes runs/train_small/
    python examples/train_small.py --quick         # a 20-second smoke run

Six steps, each one call into minunet that you can open and read:

1. data      mu.data.generate        images of touching, noisy cells + one label per cell;
                                     `standard` with heavy-tailed cell brightness (a few very
                                     bright cells among dim ones) and textured interiors
                                     (chromatin, nucleoli), as in real nuclei
2. targets   workflow.training_arrays background / interior / boundary classes, the U-Net
                                     paper's weight map (heavy in the gaps between cells)
3. model     mu.UNet                 3 levels down, 3 up, skip connections between them
4. train     mu.train                Adam, cosine learning rate, flips/rotations/elastic
                                     augmentation, the best epoch (by object F1) kept; then
                                     the seed threshold of the watershed picked on the
                                     validation images and stored with the model
5. evaluate  workflow.segment        tiled prediction -> watershed into instances, scored
             mu.metrics.evaluate     on held-out `standard` images and every shift preset
6. pictures  mu.viz                  training curves, error map, instance overlay, report
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import minunet as mu
from minunet import workflow
from minunet.predict import DEFAULT_NORMALIZATION
from minunet.rescale import object_diameter

SIZE = (256, 256)   # generated image size
CROP = 128          # training crop side (the U-Net sees 128x128 windows)
N_TRAIN = 88        # training images
N_VAL = 4           # validation images (pick the best epoch)
N_TEST = 8          # test images of `standard`
N_TEST_SHIFT = 4    # test images of each shift preset
PRESET = "standard"
# ... with the brightness of real nuclei: per-cell lognormal gain, 3 % of cells 3x brighter,
# and their interiors: clumpy chromatin and dark nucleoli (varying in strength per image), so
# that the network does not draw boundaries inside textured nuclei
KNOBS = {"brightness_sigma": 0.5, "bright_fraction": 0.03,
         "chromatin": 0.3, "nucleoli": 1.0, "texture_spread": 0.7}
EPOCHS = 12
BATCH = 8
LR = 3e-3           # Adam's peak learning rate (cosine decay, short warm-up)
SHIFT_PRESETS = [p for p in mu.data.PRESETS if p.startswith("shift-")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/train_small", help="output folder")
    parser.add_argument("--quick", action="store_true", help="tiny run, to check it works")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n_train, epochs, n_test = (16, 2, 2) if args.quick else (N_TRAIN, EPOCHS, N_TEST)
    n_shift = 2 if args.quick else N_TEST_SHIFT
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    # 1. data: images (n, H, W) float32 in [0, 1], labels (n, H, W) int32 with ids 1..k
    images, labels, _ = mu.data.generate(n_train + N_VAL, PRESET, size=SIZE, seed=args.seed,
                                         **KNOBS)
    print(f"generated {len(images)} images {SIZE} ({time.perf_counter() - started:.1f} s)")

    # 2. targets: x (n, 1, H, W) normalised, classes (n, H, W), weight maps (n, H, W)
    norm = DEFAULT_NORMALIZATION  # the typical cell at 0.6; stored in the checkpoint
    x, classes, weights = workflow.training_arrays(images, labels, norm)
    post = workflow.postprocess_settings(labels[N_VAL:])  # e.g. the smallest cell size kept
    train_data = (x[N_VAL:], classes[N_VAL:], weights[N_VAL:])
    val_data = (x[:N_VAL], classes[:N_VAL], weights[:N_VAL])

    # 3. model
    model = mu.UNet(in_channels=1, num_classes=3, depth=3, base_channels=16,
                    rng=np.random.default_rng(args.seed))
    print(model.summary((CROP, CROP)))

    # 4. train
    steps_per_epoch = -(-len(train_data[0]) // BATCH)
    schedule = mu.CosineSchedule(LR, total_steps=epochs * steps_per_epoch,
                                 warmup_steps=steps_per_epoch)
    history = mu.train(
        model, train_data, val_data, epochs=epochs, batch_size=BATCH, lr=LR,
        schedule=schedule, crop=CROP, augment=workflow.make_augment(),
        score_fn=workflow.object_score_fn(labels[:N_VAL], postprocess=post), monitor="val_f1",
        seed=args.seed, out_dir=out,
        metadata={"normalization": norm, "postprocess": post,
                  "diameter": object_diameter(labels[N_VAL:])},  # training object size
    )
    ckpt = mu.load(out / "best.npz")
    best = ckpt.model
    print(f"trained {len(history)} epochs, best epoch {history.best_epoch} "
          f"(val F1 {history.best_score:.3f}) ({time.perf_counter() - started:.1f} s)")

    # 4b. calibrate: the interior probability that makes a seed, picked on the validation
    # images (a briefly trained model is unsure in the gap between touching cells, so a
    # stricter seed keeps them apart); stored with the model, so `minunet predict` uses it
    post = workflow.tune_postprocess(best, x[:N_VAL], labels[:N_VAL], post)
    mu.save(best, out / "best.npz", position=ckpt.position, **{**ckpt.metadata,
                                                              "postprocess": post})
    print(f"seed threshold {post['seed_thresh']:g} (validation object F1)")

    # 5. evaluate on new images of `standard` and of every one-factor shift
    rows = {}
    for k, preset in enumerate(["standard", *SHIFT_PRESETS]):
        n = n_test if preset == "standard" else n_shift
        test_images, test_labels, _ = mu.data.generate(n, preset, size=SIZE, seed=10_000 + k)
        preds = [workflow.segment(best, im, norm, **post)[0] for im in test_images]
        result = mu.metrics.evaluate(list(test_labels), preds)
        rows[preset] = workflow.summarize(result)
        if preset == "standard":
            standard = (test_images, test_labels, preds, result)
    print_table(rows)

    # 6. pictures
    test_images, test_labels, preds, result = standard
    mu.viz.training_curves(out / "log.jsonl", out / "curves.png")
    mu.viz.error_map(test_labels[0], preds[0], out / "error_map.png",
                     title="pixel errors: TP green, FP magenta, FN red")
    mu.viz.overlay(test_images[0], test_labels[0], preds[0], out / "overlay.png",
                   title="outlines: matched green, false positive magenta, missed red")
    mu.viz.write_report(out / "report", list(test_labels), preds, list(test_images),
                        result=result, log_path=out / "log.jsonl",
                        title="train_small: held-out standard images")
    f1 = rows["standard"]["object_f1"]
    print(f"\nobject F1@0.5 on bright-and-dim cells (shift-brightness): "
          f"{rows['shift-brightness']['object_f1']:.3f}")
    print(f"object F1@0.5 on held-out standard images: {f1:.3f}"
          f"  (total {time.perf_counter() - started:.0f} s)")
    print(f"pictures and report in {out}/: curves.png, error_map.png, overlay.png, report/")


def print_table(rows: dict[str, dict[str, float]]) -> None:
    print(f"\n{'preset':<20}{'pixel F1':>9}{'kappa':>8}{'obj F1@.5':>10}{'AP':>7}{'PQ':>7}")
    for preset, r in rows.items():
        print(f"{preset:<20}{r['pixel_f1']:>9.3f}{r['kappa']:>8.3f}{r['object_f1']:>10.3f}"
              f"{r['dsb_ap']:>7.3f}{r['panoptic_quality']:>7.3f}")


if __name__ == "__main__":
    main()
