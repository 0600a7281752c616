"""Pictures of segmentations and scores, saved as PNG files.

Every function takes plain arrays (label images: 0 = background, k > 0 = object k) or paths,
writes one PNG and returns its path. Drawing uses matplotlib's object API (`Figure` with an
Agg canvas), so importing this module never changes the user's matplotlib backend.

Image pictures (error map, overlay, label image) are drawn pixel for pixel: the picture is
the array, scaled by a whole factor (nearest neighbour), with a legend strip below; so the
colors in the file are exactly the colors named here and in the legend.

Colors (8-bit RGB), shared by the error map and the overlay:
    TP_COLOR  green    foreground in both / a prediction matched to a true object
    FP_COLOR  magenta  predicted only / a prediction that matches nothing
    FN_COLOR  red      missed / a true object no prediction matches
    PRED_COLOR yellow  an outline of a predicted object, when there is no truth to compare with
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from skimage.segmentation import find_boundaries

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn: `minunet predict` never does
    from matplotlib.figure import Figure

from .metrics import DSB_THRESHOLDS, EvaluationResult, evaluate, match

TP_COLOR = (0, 200, 0)
FP_COLOR = (255, 0, 255)
FN_COLOR = (230, 0, 0)
PRED_COLOR = (255, 220, 0)
BACKGROUND_COLOR = (0, 0, 0)
DPI = 100  # figure inches * DPI = pixels; 100 keeps the arithmetic obvious
MIN_PICTURE_WIDTH = 480  # px: small images are scaled up until the legend fits under them
LEGEND_HEIGHT = 32  # px: one row of legend entries
TITLE_HEIGHT = 24  # px: one line of title
PLOT_SIZE = (800, 450)  # px: curves and distributions
REPORT_SIZE = (1500, 1000)  # px: the report page
GOLDEN = (math.sqrt(5) - 1) / 2  # hue step between consecutive ids: neighbours differ most
# gray levels of the overlay's image come from these percentiles (robust to a few hot pixels)
GRAY_PERCENTILES = (1.0, 99.8)


def _rgb(color: tuple[int, int, int]) -> tuple[float, ...]:
    return tuple(c / 255 for c in color)


def _as_path(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


MAX_SCALED_PIXELS = 4_000_000  # an upscaled picture holds at most this many pixels (~30 bytes
                               # each while drawn), so a tall narrow image stays small
MAX_SCALED_SIDE = 16_384       # px: nor grows taller or wider than this (Agg stops at 65,536)


def _auto_scale(width: int, scale: int | None, height: int | None = None) -> int:
    """The whole factor small images are drawn at: enough to make them MIN_PICTURE_WIDTH
    wide, but (given the height) never beyond MAX_SCALED_PIXELS or MAX_SCALED_SIDE: a
    1000 x 3 image would otherwise become 160,000 x 480 pixels."""
    if scale is not None:
        if int(scale) < 1:
            raise ValueError(f"viz: scale must be a whole number >= 1, got {scale}")
        return int(scale)
    s = max(1, math.ceil(MIN_PICTURE_WIDTH / max(width, 1)))
    if height is not None:
        area = max(height, 1) * max(width, 1)
        s = min(s, math.isqrt(MAX_SCALED_PIXELS // area),
                MAX_SCALED_SIDE // max(height, width, 1))
    return max(1, s)


def _upscale(a: np.ndarray, scale: int) -> np.ndarray:
    """(H, W, ...) -> (H*scale, W*scale, ...), nearest neighbour."""
    return a if scale == 1 else np.repeat(np.repeat(a, scale, axis=0), scale, axis=1)


def _check_2d(who: str, name: str, a: object) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{who}: {name} must be a numpy array, got {type(a).__name__}")
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"{who}: {name} must be one (H, W) image, got shape {a.shape}")
    return a


def _save_picture(
    rgb: np.ndarray, path: str | Path, legend: Sequence[tuple[str, tuple[int, int, int]]],
    title: str | None,
) -> Path:
    """Write an (H, W, 3) uint8 picture pixel for pixel, a legend strip below, a title above."""
    path = _as_path(path)
    step = math.ceil(max(rgb.shape[:2]) / MAX_SCALED_SIDE)
    if step > 1:  # Agg draws at most 65,536 px a side: every step-th pixel of a huge picture
        rgb = rgb[::step, ::step]
    h, w = rgb.shape[:2]
    bottom = LEGEND_HEIGHT if legend else 0
    top = TITLE_HEIGHT if title else 0
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    fig = Figure(figsize=(w / DPI, (h + bottom + top) / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    fig.figimage(rgb, xo=0, yo=bottom, origin="upper")
    if legend:
        handles = [Patch(facecolor=_rgb(c), edgecolor=_rgb(c), label=name) for name, c in legend]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False,
                   fontsize=9, borderaxespad=0.3, handlelength=1.2, columnspacing=1.0)
    if title:
        fig.text(0.5, 1 - (top / 2) / (h + bottom + top), title, ha="center", va="center",
                 fontsize=10)
    fig.savefig(path, dpi=DPI)
    return path


# ---------------------------------------------------------------------------------------------
# pixel error map


def error_map_rgb(true_labels: np.ndarray, pred_labels: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: TP green, FP magenta, FN red, true negatives black."""
    t = _check_2d("error_map", "true_labels", true_labels) > 0
    p = _check_2d("error_map", "pred_labels", pred_labels) > 0
    if t.shape != p.shape:
        raise ValueError(f"error_map: true_labels {t.shape} and pred_labels {p.shape} differ")
    rgb = np.empty((*t.shape, 3), np.uint8)
    rgb[...] = BACKGROUND_COLOR
    rgb[t & p] = TP_COLOR
    rgb[~t & p] = FP_COLOR
    rgb[t & ~p] = FN_COLOR
    return rgb


def error_map(
    true_labels: np.ndarray, pred_labels: np.ndarray, path: str | Path, *,
    scale: int | None = None, title: str | None = None,
) -> Path:
    """Pixel error map of the foreground (labels > 0): TP green, FP magenta, FN red.

    The PNG is W*scale wide and H*scale + 32 (legend) [+ 24 (title)] high; scale defaults to
    the smallest whole factor that makes it at least 480 px wide.
    """
    rgb = error_map_rgb(true_labels, pred_labels)
    s = _auto_scale(rgb.shape[1], scale, rgb.shape[0])
    legend = [("true positive", TP_COLOR), ("false positive", FP_COLOR),
              ("false negative", FN_COLOR)]
    return _save_picture(_upscale(rgb, s), path, legend, title)


# ---------------------------------------------------------------------------------------------
# instance overlay


def _gray(image: np.ndarray) -> np.ndarray:
    """(H, W) image -> (H, W, 3) uint8 gray, stretched between robust percentiles."""
    img = np.asarray(image, dtype=np.float64)
    lo, hi = np.percentile(img, GRAY_PERCENTILES)
    g = np.clip((img - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(img)
    return np.repeat((g * 255).astype(np.uint8)[..., None], 3, axis=2)


def overlay_rgb(
    image: np.ndarray, true_labels: np.ndarray, pred_labels: np.ndarray, *,
    thresh: float = 0.5, scale: int = 1,
) -> np.ndarray:
    """(H*scale, W*scale, 3) uint8: the image in gray with outlines colored by match status.

    Predicted objects matched at IoU >= thresh: green; unmatched predictions: magenta;
    true objects no prediction matches: red (drawn first, so predictions lie on top).
    """
    image = _check_2d("overlay", "image", image)
    t = _check_2d("overlay", "true_labels", true_labels)
    p = _check_2d("overlay", "pred_labels", pred_labels)
    if not image.shape == t.shape == p.shape:
        raise ValueError(f"overlay: image {image.shape}, true_labels {t.shape} and pred_labels "
                         f"{p.shape} must have one shape")
    r = match(t, p, thresh)
    matched_true = np.isin(t, r.pairs[:, 0])
    matched_pred = np.isin(p, r.pairs[:, 1])
    rgb = _upscale(_gray(image), scale)
    p_up = _upscale(p, scale)
    missed = _upscale(np.where(matched_true, 0, t), scale)  # true objects left unmatched
    missed = find_boundaries(missed, mode="inner") & (missed > 0)
    rgb[missed] = FN_COLOR
    outline = find_boundaries(p_up, mode="inner") & (p_up > 0)
    good = _upscale(matched_pred, scale)
    rgb[outline & good] = TP_COLOR
    rgb[outline & ~good] = FP_COLOR
    return rgb


def outline_rgb(image: np.ndarray, pred_labels: np.ndarray, *, scale: int = 1) -> np.ndarray:
    """(H*scale, W*scale, 3) uint8: the image in gray, every predicted object outlined yellow."""
    image = _check_2d("overlay", "image", image)
    p = _check_2d("overlay", "pred_labels", pred_labels)
    if image.shape != p.shape:
        raise ValueError(f"overlay: image {image.shape} and pred_labels {p.shape} must have "
                         "one shape")
    rgb = _upscale(_gray(image), scale)
    p_up = _upscale(p, scale)
    rgb[find_boundaries(p_up, mode="inner") & (p_up > 0)] = PRED_COLOR
    return rgb


def overlay(
    image: np.ndarray, true_labels: np.ndarray | None, pred_labels: np.ndarray,
    path: str | Path, *, thresh: float = 0.5, scale: int | None = None,
    title: str | None = None,
) -> Path:
    """Image in gray, predicted outlines green (matched) or magenta (false positive), missed
    true objects outlined red. Size as in `error_map`.

    Without truth (`true_labels=None`) nothing can be matched: every predicted object is
    outlined yellow and the legend says just that."""
    s = _auto_scale(np.shape(image)[-1], scale, np.shape(image)[-2])
    if true_labels is None:
        n = len(np.unique(pred_labels[pred_labels > 0]))
        rgb = outline_rgb(image, pred_labels, scale=s)
        return _save_picture(rgb, path, [(f"predicted objects ({n})", PRED_COLOR)], title)
    rgb = overlay_rgb(image, true_labels, pred_labels, thresh=thresh, scale=s)
    legend = [(f"matched (IoU ≥ {thresh:g})", TP_COLOR), ("false positive", FP_COLOR),
              ("missed", FN_COLOR)]
    return _save_picture(rgb, path, legend, title)


# ---------------------------------------------------------------------------------------------
# label image


def label_rgb(labels: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: each id its own color, the same color for the same id in every call.

    The hue of id k is k * 0.618... (mod 1), the golden-ratio sequence: consecutive ids, which
    are usually neighbours, get far-apart hues. Background is black.
    """
    lab = _check_2d("label_image", "labels", labels)
    ids = np.unique(lab)
    ids = ids[ids > 0]
    hsv = np.stack([(ids * GOLDEN) % 1.0, np.full(ids.size, 0.75), np.full(ids.size, 0.95)], -1)
    from matplotlib.colors import hsv_to_rgb

    colors = (hsv_to_rgb(hsv) * 255).astype(np.uint8).reshape(-1, 3)  # (n, 3)
    rgb = np.zeros((*lab.shape, 3), np.uint8)
    rgb[...] = BACKGROUND_COLOR
    if ids.size:
        rgb[lab > 0] = colors[np.searchsorted(ids, lab[lab > 0])]
    return rgb


def label_image(
    labels: np.ndarray, path: str | Path, *, scale: int | None = None, title: str | None = None,
) -> Path:
    """Label image colored by instance (stable colors, see `label_rgb`); no legend strip."""
    rgb = label_rgb(labels)
    n = int(np.unique(labels[labels > 0]).size)
    s = _auto_scale(rgb.shape[1], scale, rgb.shape[0])
    return _save_picture(_upscale(rgb, s), path, [], title if title else f"{n} objects")


# ---------------------------------------------------------------------------------------------
# training curves and score distributions


def read_log(log_path: str | Path) -> dict[str, np.ndarray]:
    """A JSON-lines training log (one object per epoch) -> {key: (epochs,) float array}.

    Keeps every numeric key (booleans are not numbers here); an epoch missing a key gets NaN.
    """
    rows = []
    for n, line in enumerate(Path(log_path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"read_log: {log_path} line {n} is not JSON: {e}") from None
        if not isinstance(row, dict):
            raise ValueError(f"read_log: {log_path} line {n} is not a JSON object")
        rows.append(row)
    if not rows:
        raise ValueError(f"read_log: {log_path} holds no epochs")
    keys = []
    for row in rows:
        for k, v in row.items():
            if isinstance(v, int | float) and not isinstance(v, bool) and k not in keys:
                keys.append(k)
    return {k: np.array([float(r.get(k, np.nan)) if _numeric(r.get(k)) else np.nan
                         for r in rows]) for k in keys}


def _numeric(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _draw_curves(ax_loss: object, ax_scores: object, log: dict[str, np.ndarray]) -> None:
    x = log.get("epoch", np.arange(1, len(next(iter(log.values()))) + 1))
    losses = [k for k in log if "loss" in k]
    others = [k for k in log if k not in losses and k not in ("epoch", "time", "lr", "seconds")]
    for k in losses:
        ax_loss.plot(x, log[k], marker=".", label=k)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_title("loss")
    if losses:
        ax_loss.legend(fontsize=8)
    for k in others:
        ax_scores.plot(x, log[k], marker=".", label=k)
    ax_scores.set_xlabel("epoch")
    ax_scores.set_title("other logged values")
    if others:
        ax_scores.legend(fontsize=8)
    else:
        ax_scores.text(0.5, 0.5, "no other numeric keys in the log", ha="center",
                       transform=ax_scores.transAxes)


def _plot_figure(size: tuple[int, int]) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def training_curves(log_path: str | Path, path: str | Path, *, title: str | None = None) -> Path:
    """Loss curves (keys containing "loss") and every other numeric key per epoch, from a
    JSON-lines log with at least `epoch` and `train_loss`. PNG of 800 x 450 px."""
    log = read_log(log_path)
    fig = _plot_figure(PLOT_SIZE)
    ax_loss, ax_scores = fig.subplots(1, 2)
    _draw_curves(ax_loss, ax_scores, log)
    if title:
        fig.suptitle(title)
    path = _as_path(path)
    fig.savefig(path, dpi=DPI)
    return path


def _draw_distribution(ax: object, scores: Mapping[str, Sequence[float]]) -> None:
    names = list(scores)
    values = [np.asarray(scores[k], dtype=np.float64) for k in names]
    ax.boxplot(values, positions=range(len(names)), widths=0.5, showfliers=False)
    for i, v in enumerate(values):
        # spread the dots sideways by rank, not at random: the same data draws the same picture
        offsets = (np.argsort(np.argsort(v)) / max(v.size - 1, 1) - 0.5) * 0.3
        ax.plot(i + offsets, v, "o", markersize=3, alpha=0.6)
    ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"per-image scores ({values[0].size if values else 0} images)")


def score_distribution(
    scores: Mapping[str, Sequence[float]], path: str | Path, *, title: str | None = None
) -> Path:
    """Box and dots per score over the images of a test set: {score name: per-image values}.
    PNG of 800 x 450 px."""
    if not scores:
        raise ValueError("score_distribution: no scores given")
    fig = _plot_figure(PLOT_SIZE)
    _draw_distribution(fig.subplots(), scores)
    if title:
        fig.suptitle(title)
    path = _as_path(path)
    fig.savefig(path, dpi=DPI)
    return path


# ---------------------------------------------------------------------------------------------
# the evaluation report

HEADLINE_KEYS = ("precision", "recall", "f1", "accuracy", "mean_matched_iou", "panoptic_quality")


def _markdown(result: EvaluationResult, title: str) -> str:
    t0 = result.thresholds[0]
    pooled, mean = result.at(t0), result.per_image_mean(t0)
    lines = [f"# {title}", "", f"{result.n_images} images. Pooled = tp/fp/fn summed over the "
             "images, then the ratios (the headline); per-image mean = each image weighs one.",
             "", f"| score at IoU ≥ {t0:g} | pooled | per-image mean |", "| --- | ---: | ---: |"]
    lines += [f"| {k} | {getattr(pooled, k):.4f} | {mean[k]:.4f} |" for k in HEADLINE_KEYS]
    px = result.pixel_pooled
    lines += [f"| pixel F1 (Dice) | {px.f1:.4f} | "
              f"{np.mean([p.f1 for p in result.pixel_per_image]):.4f} |",
              f"| pixel Cohen's kappa | {px.kappa:.4f} | "
              f"{np.mean([p.kappa for p in result.pixel_per_image]):.4f} |",
              f"| DSB mean AP (IoU {result.thresholds[0]:g}:{result.thresholds[-1]:g}) | "
              f"{result.dsb_ap_pooled:.4f} | {result.dsb_ap:.4f} |",
              f"| count error (mean abs / rel) | | {result.count_error_mean_abs:.2f} / "
              f"{result.count_error_mean_rel:.3f} |", "",
              "| IoU ≥ | tp | fp | fn | precision | recall | F1 | accuracy (AP) | PQ |",
              "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r.thresh:g} | {r.tp} | {r.fp} | {r.fn} | {r.precision:.4f} | {r.recall:.4f} "
              f"| {r.f1:.4f} | {r.accuracy:.4f} | {r.panoptic_quality:.4f} |"
              for r in result.objects_pooled]
    lines += ["", f"| image | true | predicted | pixel F1 | F1 @ {t0:g} | PQ @ {t0:g} | DSB AP |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['name']} | {r['n_true']} | {r['n_pred']} | {r['pixel_f1']:.4f} | "
              f"{r['f1']:.4f} | {r['panoptic_quality']:.4f} | {r['dsb_ap']:.4f} |"
              for r in result.per_image_table(t0)]
    return "\n".join(lines) + "\n"


def write_report(
    out_dir: str | Path,
    true_list: Sequence[np.ndarray],
    pred_list: Sequence[np.ndarray],
    images: Sequence[np.ndarray] | None = None,
    *,
    result: EvaluationResult | None = None,
    thresholds: Sequence[float] = DSB_THRESHOLDS,
    names: Sequence[str] | None = None,
    log_path: str | Path | None = None,
    title: str = "minunet evaluation",
) -> dict[str, Path]:
    """One evaluation report in out_dir: report.png (a 1500 x 1000 px page), report.json,
    report.md. Returns {"png": ..., "json": ..., "md": ...}.

    true_list, pred_list: label images (H, W) per image; images: the raw images (for the
        example overlay; without them the page shows the predicted label image)
    result: an `evaluate(...)` result to reuse (computed here from the lists otherwise)
    log_path: a training log (JSON lines) to add its curves to the page
    The example shown is the image whose DSB AP is the median of the set.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if result is None:
        result = evaluate(true_list, pred_list, thresholds, names)
    t0 = result.thresholds[0]
    table = result.per_image_table(t0)
    (out_dir / "report.json").write_text(json.dumps(result.to_dict(), indent=2))
    (out_dir / "report.md").write_text(_markdown(result, title))

    fig = _plot_figure(REPORT_SIZE)
    grid = fig.subplots(2, 3)
    ax = grid[0, 0]
    ax.axis("off")
    ax.text(0, 1, _summary_text(result), va="top", family="monospace", fontsize=9,
            transform=ax.transAxes)
    ax = grid[0, 1]
    th = result.thresholds
    for k in ("precision", "recall", "f1", "accuracy", "panoptic_quality"):
        ax.plot(th, [getattr(r, k) for r in result.objects_pooled], marker=".", label=k)
    ax.set_xlabel("IoU threshold")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("pooled object scores")
    ax.legend(fontsize=8)
    _draw_distribution(grid[0, 2], {
        "pixel F1": [r["pixel_f1"] for r in table], f"F1@{t0:g}": [r["f1"] for r in table],
        f"PQ@{t0:g}": [r["panoptic_quality"] for r in table],
        "DSB AP": [r["dsb_ap"] for r in table],
    })
    i = int(np.argsort([r["dsb_ap"] for r in table])[len(table) // 2])  # the median image
    t, p = np.asarray(true_list[i]), np.asarray(pred_list[i])
    if images is not None:
        s = max(1, REPORT_SIZE[0] // 3 // t.shape[1])  # outlines one screen pixel thin
        grid[1, 0].imshow(overlay_rgb(images[i], t, p, thresh=t0, scale=s),
                          interpolation="nearest")
        grid[1, 0].set_title(f"image {table[i]['name']}: green matched, magenta false "
                             "positive, red missed", fontsize=9)
    else:
        grid[1, 0].imshow(label_rgb(p), interpolation="nearest")
        grid[1, 0].set_title(f"image {table[i]['name']}: predicted objects", fontsize=9)
    grid[1, 1].imshow(error_map_rgb(t, p), interpolation="nearest")
    grid[1, 1].set_title("pixels: green TP, magenta FP, red FN", fontsize=9)
    for a in grid[1, :2]:
        a.set_xticks([])
        a.set_yticks([])
    if log_path is not None:
        _draw_curves(grid[1, 2], grid[1, 2], read_log(log_path))  # one panel: all curves
        grid[1, 2].set_title("training log")
    else:
        grid[1, 2].axis("off")
    fig.suptitle(title)
    png = out_dir / "report.png"
    fig.savefig(png, dpi=DPI)
    return {"png": png, "json": out_dir / "report.json", "md": out_dir / "report.md"}


def _summary_text(result: EvaluationResult) -> str:
    t0 = result.thresholds[0]
    r, px = result.at(t0), result.pixel_pooled
    return "\n".join([
        f"images            {result.n_images}",
        f"objects true/pred {r.n_true} / {r.n_pred}",
        "",
        f"pooled, IoU >= {t0:g}",
        f"  precision       {r.precision:.4f}",
        f"  recall          {r.recall:.4f}",
        f"  F1              {r.f1:.4f}",
        f"  accuracy (AP)   {r.accuracy:.4f}",
        f"  panoptic qual.  {r.panoptic_quality:.4f}",
        f"  mean match IoU  {r.mean_matched_iou:.4f}",
        "",
        f"DSB mean AP       {result.dsb_ap:.4f}",
        f"  (pooled)        {result.dsb_ap_pooled:.4f}",
        f"pixel F1 (Dice)   {px.f1:.4f}",
        f"pixel kappa       {px.kappa:.4f}",
        f"count error       {result.count_error_mean_abs:.2f} per image",
    ])


def learning_signals(feature_maps: Mapping[str, np.ndarray],
                     grad_norms: Mapping[str, Sequence[float]], path: str | Path, *,
                     title: str | None = None) -> Path:
    """What a U-Net learns, in one PNG (1000 x 600 px): above, a feature map per level (the
    first channel of each array in `feature_maps`, e.g. the outputs of down.0, down.1, bottom
    kept by `mu.trace(model, keep=True)`); below, the gradient norm of each layer over the
    training steps (`grad_norms`: layer name -> one norm per step, e.g. `Trace.grad_norms()`
    collected each step), on a log scale: vanishing or exploding gradients show as lines
    falling to the bottom or rising away from the rest."""
    if not feature_maps or not grad_norms:
        raise ValueError("learning_signals: needs at least one feature map and one layer's "
                         "gradient norms")
    fig = _plot_figure((1000, 600))
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1.2])
    axes = np.atleast_1d(top.subplots(1, len(feature_maps)))
    for ax, (name, fmap) in zip(axes, feature_maps.items(), strict=True):
        a = np.asarray(fmap, dtype=np.float64)
        while a.ndim > 2:  # (N, C, H, W) or (C, H, W): the first image's first channel
            a = a[0]
        ax.imshow(a, cmap="magma", interpolation="nearest")
        ax.set_title(f"{name} {a.shape[0]}x{a.shape[1]}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    ax = bottom.subplots()
    from matplotlib.colors import hsv_to_rgb

    colors = [hsv_to_rgb((0.75 * k / max(len(grad_norms) - 1, 1), 0.8, 0.8))
              for k in range(len(grad_norms))]
    for color, (name, norms) in zip(colors, grad_norms.items(), strict=True):
        ax.semilogy(np.arange(len(norms)), np.maximum(np.asarray(norms, float), 1e-30),
                    color=color, label=name, linewidth=1)
    ax.set_xlabel("training step")
    ax.set_ylabel("norm of the input gradient")
    if len(grad_norms) <= 16:
        ax.legend(fontsize=7, ncol=2)
    else:
        names = list(grad_norms)
        ax.text(0.01, 0.02, f"{len(names)} layers, red: {names[0]} ... violet: {names[-1]}",
                transform=ax.transAxes, fontsize=8)
    if title:
        fig.suptitle(title)
    path = _as_path(path)
    fig.savefig(path, dpi=DPI)
    return path
