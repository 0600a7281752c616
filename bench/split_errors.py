"""What kind of errors a model makes, preset by preset: splits, false objects, misses.

    python bench/split_errors.py                                  # the bundled `nuclei` model
    python bench/split_errors.py --model runs/train_small --presets standard shift-chromatin

On 16 images per preset (the accuracy table's seeds are not reused: seed 10000), each
predicted object that matches no true object at IoU >= 0.5 is a *split piece* when most of
its pixels lie on a true cell (the network cut a cell in two or more), a *false object* when
most lie on background; a true cell matched by nothing is a *miss*. This is the measurement
that showed why textured nuclei split (docs/accuracy.md): the pieces sit inside cells.
"""

from __future__ import annotations

import argparse

import numpy as np

import minunet as mu

N_IMAGES = 16
SEED = 10_000


def error_kinds(true: np.ndarray, pred: np.ndarray) -> tuple[int, int, int]:
    """(split pieces, false objects, missed cells) of predicted labels against true ones."""
    overlap = np.zeros((true.max() + 1, pred.max() + 1))                # (true id, pred id)
    np.add.at(overlap, (true.ravel(), pred.ravel()), 1)
    area_true, area_pred = overlap.sum(1), overlap.sum(0)
    iou = overlap / (area_true[:, None] + area_pred[None, :] - overlap)
    matched = iou[1:, 1:] > 0.5
    unmatched = np.flatnonzero(~matched.any(axis=0)) + 1
    false = int((overlap[0, unmatched] > 0.5 * area_pred[unmatched]).sum())
    return unmatched.size - false, false, int((~matched.any(axis=1)).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nuclei", help="checkpoint, run folder or name")
    parser.add_argument("--presets", nargs="+",
                        default=["standard", "shift-texture", "shift-chromatin",
                                 "shift-uneven", "broad"])
    args = parser.parse_args()
    ckpt = mu.load(args.model)
    print("| preset | object F1@0.5 | cells (true / found) | split pieces | false objects "
          "| missed |")
    print("|---|---|---|---|---|---|")
    for preset in args.presets:
        images, labels, _ = mu.data.generate(N_IMAGES, preset, seed=SEED)
        preds = [mu.segment(ckpt, image) for image in images]
        kinds = np.sum([error_kinds(t, p) for t, p in zip(labels, preds, strict=True)], axis=0)
        result = mu.metrics.evaluate(list(labels), preds)
        n_true = sum(r[0].n_true for r in result.objects_per_image)
        n_pred = sum(r[0].n_pred for r in result.objects_per_image)
        print(f"| {preset} | {result.at(0.5).f1:.3f} | {n_true} / {n_pred} | {kinds[0]} | "
              f"{kinds[1]} | {kinds[2]} |", flush=True)


if __name__ == "__main__":
    main()
