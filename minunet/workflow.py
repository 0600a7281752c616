"""The steps every front end shares (the example scripts, the `minunet` command, the benchmarks).

    x, targets, weights = training_arrays(images, labels, normalization)   # data -> targets
    history = mu.train(model, (x, targets, weights), ..., augment=make_augment())
    labels, probs = segment(model, image, normalization)                   # image -> instances
    result = mu.metrics.evaluate(true_labels, [segment(model, im)[0] for im in images])

Each step takes plain arrays and returns plain arrays; nothing here is needed to understand
the network or its training, only to wire them to data and metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import metrics
from .module import Module
from .postprocess import to_instances
from .predict import DEFAULT_BATCH_SIZE, DEFAULT_NORMALIZATION, DEFAULT_TILE, normalize, predict
from .train import evaluate as evaluate_loss


def training_arrays(images: np.ndarray | Sequence[np.ndarray], labels: np.ndarray,
                    normalization: dict[str, Any] | None = None, *, balance: bool = True,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw images (n, H, W) and instance labels (n, H, W) -> what `mu.train` eats.

    Returns x (n, 1, H, W) float32 (normalised exactly as `predict` will normalise), the
    3-class targets (n, H, W) int64 (0 background, 1 interior, 2 boundary) and the U-Net
    paper's weight maps (n, H, W) float32 (balance: its class-balancing term, see
    `mu.data.weight_map`).
    """
    from . import data as mudata  # on use: the generator's package is not on predict's path

    norm = DEFAULT_NORMALIZATION if normalization is None else normalization
    x = np.stack([normalize(im, norm) for im in images])[:, None]   # (n, 1, H, W)
    targets = mudata.three_class(labels)                             # (n, H, W)
    weights = mudata.weight_map(labels, balance=balance)             # (n, H, W)
    return x, targets, weights


def training_samples(images: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                     normalization: dict[str, Any] | None = None, *,
                     names: Sequence[str] | None = None,
                     ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """`training_arrays` for images of different sizes (gray or RGB): per-sample lists of
    x (1, H, W) float32, targets (H, W) int64 and weight maps (H, W) float32."""
    from . import data as mudata

    norm = DEFAULT_NORMALIZATION if normalization is None else normalization
    names = names or [f"image {i}" for i in range(len(images))]
    xs, ts, ws = [], [], []
    for image, lab, name in zip(images, labels, names, strict=True):
        xs.append(normalize(image, norm, who=name)[None])           # (1, H, W)
        ts.append(mudata.three_class(lab[None])[0])                  # (H, W)
        ws.append(mudata.weight_map(lab[None])[0])                   # (H, W)
    return xs, ts, ws


MIN_SIZE_FRACTION = 0.15  # smallest kept object: 15 % of the median training cell's area
MIN_SIZE_FLOOR = 4        # never keep objects of fewer pixels than this


def postprocess_settings(labels: np.ndarray) -> dict[str, int]:
    """`to_instances` settings learned from the training labels (n, H, W), stored with the model.

    min_size: objects smaller than 15 % of the median training cell's area are removed. Debris
    the network half-detects is far smaller than a typical cell, while a cell cut by the image
    border is rarely that small. Measured with the bundled `nuclei` model (8 images per preset,
    object F1@0.5 for min_size 11 / 30 / 45 / 60 / 80 px; its training cells' median area is
    about 400 px): standard 0.909 / 0.941 / 0.952 / 0.969 / 0.981, shift-sizes (12 % small
    fragments) 0.890 / 0.925 / 0.915 / 0.928 / 0.924, shift-distractors 0.850 / 0.893 / 0.926 /
    0.968 / 0.984. (The rule before, a quarter of the 1st-percentile area, gave 11 px on
    training sets with small fragments.) Cells of 150 px give 22 px; the notebook's 13-px
    blobs give the floor of 4 px.
    """
    areas = _cell_areas(labels)
    if areas.size == 0:
        return {"min_size": MIN_SIZE_FLOOR}
    return {"min_size": max(MIN_SIZE_FLOOR, int(MIN_SIZE_FRACTION * np.median(areas)))}


def _cell_areas(labels: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """Pixels of every object of the label images (ids present only)."""
    areas = np.concatenate([np.bincount(np.asarray(lab).ravel())[1:] for lab in labels])
    return areas[areas > 0]


FINETUNE_MIN_SIZE_CAP = 0.5  # a fine-tuned model's filter stays under half the median cell


def finetune_min_size(labels: np.ndarray | list[np.ndarray], start_min_size: int) -> int:
    """The size filter of a model fine-tuned on `labels` (n, H, W) from a model whose filter
    is `start_min_size`: the larger of the one the labels teach (`postprocess_settings`) and
    the starting model's, but never over half the labels' median cell area.

    Debris and noise specks keep their size in pixels while a lab's cells can be small: the
    bundled model (filter 82 px) fine-tuned on 2 `shift-small` images (cells of ~170 px)
    learned 25 px from them and scored 0.907 on new images, 0.953 with its filter kept, and
    0.970 as it was (bench/finetune.py's images; measured once, not kept as a command).
    Large cells still raise the filter (15 % of their area), and objects half a cell's size
    are kept whatever the start's filter was."""
    own = postprocess_settings(labels)["min_size"]
    areas = _cell_areas(labels)
    if areas.size == 0:
        return own
    cap = int(FINETUNE_MIN_SIZE_CAP * np.median(areas))
    return max(own, min(int(start_min_size), cap))


SEED_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)   # interior probabilities tried for the seeds
SPLIT_DEPTHS = (None, 0.5, 1.0, 2.0)          # None: no shape split; else its depth in px


def tune_postprocess(model: Module, x_val: np.ndarray, val_labels: np.ndarray,
                     postprocess: dict[str, Any], *,
                     seed_thresholds: Sequence[float] = SEED_THRESHOLDS,
                     split_depths: Sequence[float | None] = (None,)) -> dict[str, Any]:
    """The post-processing with the best object F1@0.5 on validation images: `postprocess`
    (e.g. min_size from `postprocess_settings`) plus the seed threshold and, if split_depths
    offers any (e.g. SPLIT_DEPTHS), the shape split (`to_instances`'s seed_thresh, split,
    split_depth), picked on x_val (n, 1, H, W), normalised, with instance labels val_labels
    (n, H, W). On a tie the earlier setting in the grids wins (lower threshold, no split).
    The network runs once per image.

    The split is off unless asked for: it is for objects the network cannot outline (blobs
    of uniform brightness that overlap); on cells with visible borders a handful of
    validation images can pick it by chance, and it then cuts elongated cells in two."""
    return best_postprocess(model, x_val, val_labels, postprocess,
                            seed_thresholds=seed_thresholds, split_depths=split_depths)[0]


def best_postprocess(model: Module, x_val: np.ndarray, val_labels: np.ndarray,
                     postprocess: dict[str, Any], *,
                     seed_thresholds: Sequence[float] = SEED_THRESHOLDS,
                     split_depths: Sequence[float | None] = (None,)
                     ) -> tuple[dict[str, Any], float]:
    """`tune_postprocess`, and the object F1@0.5 its choice scores on the validation images."""
    probs = [predict(model, x_val[i], normalized=True) for i in range(len(x_val))]
    best, best_f1 = dict(postprocess), -1.0
    for depth in split_depths:
        for thresh in seed_thresholds:
            candidate = {**postprocess, "seed_thresh": thresh}
            if depth is not None:
                candidate |= {"split": True, "split_depth": depth}
            f1 = metrics.evaluate(list(val_labels), [to_instances(p, **candidate)
                                                     for p in probs]).at(0.5).f1
            if f1 > best_f1:
                best, best_f1 = candidate, f1
    return best, best_f1


def make_augment(**knobs: Any) -> Callable:
    """The per-sample augmentation hook for `mu.train` (flips, rot90, elastic, intensity, noise).

    knobs are passed to `mu.data.augment` (e.g. elastic=False).
    """
    from . import data as mudata

    def augment(image: np.ndarray, target: np.ndarray, weight: np.ndarray | None,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        return mudata.augment(image, target, rng, weight=weight, **knobs)

    return augment


def segment(model: Module, image: np.ndarray, normalization: dict[str, Any] | None = None, *,
            tile: int = DEFAULT_TILE, batch_size: int = DEFAULT_BATCH_SIZE,
            normalized: bool = False,
            progress: bool = False, scale: float = 1.0,
            **postprocess: Any) -> tuple[np.ndarray, np.ndarray]:
    """One raw image (any size) -> (instance labels (H, W) int32, probabilities (Kc, H, W)).
    scale: as in `predict` (objects resized by this factor for the network)."""
    probs = predict(model, image, tile=tile, batch_size=batch_size,
                    normalization=normalization, normalized=normalized, progress=progress,
                    scale=scale)
    return to_instances(probs, **postprocess), probs


def object_score_fn(val_labels: np.ndarray | Sequence[np.ndarray], thresh: float = 0.5, *,
                    loss: bool = True, postprocess: dict[str, Any] | None = None,
                    ) -> Callable[[Module, tuple], dict[str, float]]:
    """A `score_fn` for `mu.train`: validation loss plus object F1 / DSB AP of the instances.

    val_labels: the instance labels (n, H, W) of the validation images, or a list of (H, W) of
    different sizes, whose normalised pixels are the first array of `val_data`; postprocess:
    `to_instances` settings.
    """
    settings = postprocess or {}
    val_labels = [np.asarray(v) for v in val_labels]

    def score(model: Module, val_data: tuple) -> dict[str, float]:
        scores = evaluate_loss(model, val_data) if loss else {}
        x = val_data[0]  # (n, 1, H, W), or a list of (1, H, W) of different sizes
        preds = [segment(model, x[i], normalized=True, **settings)[0]   # x[i]: (Cin, H, W)
                 for i in range(len(x))]
        result = metrics.evaluate(val_labels, preds)
        scores["val_f1"] = result.at(thresh).f1
        scores["val_ap"] = result.dsb_ap
        scores["val_pixel_f1"] = result.pixel_pooled.f1
        return scores

    return score


def summarize(result: metrics.EvaluationResult, thresh: float = 0.5) -> dict[str, float]:
    """The headline numbers of an evaluation: pixel F1 and kappa, object F1 / AP / PQ."""
    at = result.at(thresh)
    return {
        "pixel_f1": result.pixel_pooled.f1,
        "kappa": result.pixel_pooled.kappa,
        "object_f1": at.f1,
        "dsb_ap": result.dsb_ap,
        "panoptic_quality": at.panoptic_quality,
        "n_true": float(sum(r[0].n_true for r in result.objects_per_image)),
        "n_pred": float(sum(r[0].n_pred for r in result.objects_per_image)),
    }
