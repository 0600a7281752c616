"""Scores for segmentations: pixel level, object level, and over a whole data set.

Everything here takes plain integer label images (0 = background, k > 0 = object k) of one
shape, usually (H, W); a boolean mask counts as one object. Nothing here knows about networks.

Pixel level (`pixel_scores`): foreground is `labels > 0`; tp, fp, fn, tn, precision, recall,
F1 (= Dice), IoU (= Jaccard), Cohen's kappa and accuracy.

Object level (`match`): every true object is paired with at most one predicted object and vice
versa, maximising first the number of pairs with IoU >= thresh (inclusive), then their summed
IoU (scipy's linear_sum_assignment). From the pairs: tp, fp, fn, precision, recall, F1,
accuracy = tp / (tp + fp + fn) (the Data Science Bowl 2018 "AP"), mean matched IoU and
panoptic quality PQ = sum of matched IoU / (tp + fp/2 + fn/2). The IoU table comes from one
pass over the pixels (a bincount of paired ids), never from a loop over object pairs.

Data set level (`evaluate`): pooled scores (sum tp/fp/fn over the images, then the ratios; the
default headline, because images with many cells should weigh more than images with few) and
the per-image mean; the DSB score (per image: mean accuracy over IoU 0.50, 0.55, ..., 0.95; then
the mean over images, as in the competition); the count error.

Empty conventions (one rule for every ratio): when a denominator is zero, the score is 1.0 if
the image has no true and no predicted foreground (nothing to find, nothing found: perfect),
and 0.0 otherwise. So an empty image with an empty prediction scores 1 everywhere, an empty
image with any prediction scores 0 on precision / F1 / accuracy, and mean matched IoU is 0.0
when nothing matched (unless both are empty). Cohen's kappa is 1.0 when both masks are
identical and constant (its chance agreement is then 1 and the formula is 0 / 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

# The Data Science Bowl 2018 thresholds 0.50, 0.55, ..., 0.95, rounded so that 0.6 is 0.6
# (np.arange would give 0.6000000000000001 and silently drop pairs at exactly IoU 0.6).
DSB_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))

# Above this many bins the paired-id histogram switches from a dense bincount to a sort of the
# overlapping pixels' codes: 2**22 int64 counts are 32 MiB, and a 1,000 x 1,000 object table
# (1e6 bins) stays on the fast dense path.
DENSE_TABLE_MAX_BINS = 2**22


def _ratio(num: float, den: float, both_empty: bool) -> float:
    """num / den, with the module's empty convention when den == 0."""
    if den > 0:
        return float(num) / float(den)
    return 1.0 if both_empty else 0.0


# ---------------------------------------------------------------------------------------------
# pixel level


@dataclass
class PixelScores:
    """Pixel scores of the foreground (labels > 0); counts are pixels."""

    tp: int
    fp: int
    fn: int
    tn: int
    precision: float
    recall: float
    f1: float  # = Dice = 2 tp / (2 tp + fp + fn)
    iou: float  # = Jaccard = tp / (tp + fp + fn)
    kappa: float  # Cohen's kappa of the two binary masks
    accuracy: float  # (tp + tn) / all pixels

    @classmethod
    def from_counts(cls, tp: int, fp: int, fn: int, tn: int) -> PixelScores:
        """All scores from the four pixel counts (used per image and pooled over a set)."""
        tp, fp, fn, tn = int(tp), int(fp), int(fn), int(tn)
        n = tp + fp + fn + tn
        both_empty = tp + fp + fn == 0
        po = _ratio(tp + tn, n, True)
        # chance agreement: P(both say foreground) + P(both say background)
        pe = ((tp + fn) * (tp + fp) + (tn + fn) * (tn + fp)) / n**2 if n else 1.0
        kappa = (po - pe) / (1.0 - pe) if pe < 1.0 else 1.0
        return cls(
            tp=tp, fp=fp, fn=fn, tn=tn,
            precision=_ratio(tp, tp + fp, both_empty),
            recall=_ratio(tp, tp + fn, both_empty),
            f1=_ratio(2 * tp, 2 * tp + fp + fn, both_empty),
            iou=_ratio(tp, tp + fp + fn, both_empty),
            kappa=float(kappa),
            accuracy=po,
        )

    def to_dict(self) -> dict:
        """Plain JSON-able dict."""
        return asdict(self)


def _check_labels(who: str, true_labels: object, pred_labels: object) -> tuple[np.ndarray, ...]:
    pair = []
    for name, x in (("true_labels", true_labels), ("pred_labels", pred_labels)):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{who}: {name} must be a numpy array, got {type(x).__name__}")
        if x.dtype == bool:
            x = x.astype(np.int32)
        if not np.issubdtype(x.dtype, np.integer):
            raise TypeError(
                f"{who}: {name} must hold integer object ids (0 = background), got dtype "
                f"{x.dtype}; turn probabilities into labels first with minunet.to_instances"
            )
        if x.size and x.min() < 0:
            raise ValueError(f"{who}: {name} holds negative ids (min {x.min()}); ids must be >= 0")
        pair.append(x)
    if pair[0].shape != pair[1].shape:
        raise ValueError(
            f"{who}: true_labels shape {pair[0].shape} differs from pred_labels shape "
            f"{pair[1].shape}"
        )
    return pair[0], pair[1]


def pixel_scores(true_labels: np.ndarray, pred_labels: np.ndarray) -> PixelScores:
    """Pixel scores of the foreground `labels > 0` of two label images (or masks) of one shape."""
    t, p = _check_labels("pixel_scores", true_labels, pred_labels)
    t, p = t > 0, p > 0
    tp = int(np.count_nonzero(t & p))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(t)) - tp
    return PixelScores.from_counts(tp, fp, fn, t.size - tp - fp - fn)


# ---------------------------------------------------------------------------------------------
# object level


@dataclass
class IoUTable:
    """Sparse IoU table of two label images: only pairs that overlap are listed.

    true_ids (Nt,), pred_ids (Np,): the object ids present, ascending
    true_area (Nt,), pred_area (Np,): pixel counts
    rows, cols (M,): indices into true_ids / pred_ids of the overlapping pairs
    iou (M,): IoU of each overlapping pair
    """

    true_ids: np.ndarray
    pred_ids: np.ndarray
    true_area: np.ndarray
    pred_area: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    iou: np.ndarray


def _compact_ids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map ids to 0 (background) and 1..n (objects, ascending).

    Returns (compact labels (same shape, intp), ids (n,), areas (n,)). Uses a lookup table
    when the largest id is not much larger than the image, np.unique otherwise.
    """
    flat = labels.ravel()
    top = int(flat.max()) if flat.size else 0
    if top <= 4 * flat.size + 1024:  # lookup table no bigger than a few copies of the image
        counts = np.bincount(flat, minlength=top + 1)
        ids = np.flatnonzero(counts[1:]) + 1
        lut = np.zeros(top + 1, dtype=np.intp)
        lut[ids] = np.arange(1, ids.size + 1)
        return lut[flat], ids, counts[ids]
    ids, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    if ids[0] != 0:  # no background pixel: shift so that index 0 stays background
        return inverse + 1, ids, counts
    return inverse, ids[1:], counts[1:]


def iou_table(true_labels: np.ndarray, pred_labels: np.ndarray) -> IoUTable:
    """IoU of every overlapping (true, pred) object pair, from one pass over the pixels."""
    t, p = _check_labels("iou_table", true_labels, pred_labels)
    tc, true_ids, true_area = _compact_ids(t)
    pc, pred_ids, pred_area = _compact_ids(p)
    n_cols = pred_ids.size + 1
    both = (tc > 0) & (pc > 0)
    code = tc[both] * n_cols + pc[both]  # one integer per overlapping pixel: its (true, pred) pair
    n_bins = (true_ids.size + 1) * n_cols
    if n_bins <= DENSE_TABLE_MAX_BINS:
        counts = np.bincount(code, minlength=n_bins)
        pairs = np.flatnonzero(counts)
        inter = counts[pairs]
    else:
        pairs, inter = np.unique(code, return_counts=True)
    rows, cols = pairs // n_cols - 1, pairs % n_cols - 1
    union = true_area[rows] + pred_area[cols] - inter
    return IoUTable(true_ids, pred_ids, true_area, pred_area, rows, cols, inter / union)


def _assign(table: IoUTable, thresh: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Optimal one-to-one pairs with IoU >= thresh: (rows (M,), cols (M,), iou (M,)).

    Maximises the number of pairs first, then their summed IoU. For thresh > 0.5 no object can
    have two candidates (IoU > 1/2 with two disjoint partners is impossible), so the candidates
    are the answer; below, only objects with rival candidates go to the solver.
    """
    keep = table.iou >= thresh
    rows, cols, iou = table.rows[keep], table.cols[keep], table.iou[keep]
    if rows.size == 0:
        return rows, cols, iou
    # a candidate whose true and predicted object have no other candidate is matched for sure;
    # only the rest (objects with rival candidates) go to the assignment solver
    alone = (np.bincount(rows)[rows] == 1) & (np.bincount(cols)[cols] == 1)
    if alone.all():
        return rows, cols, iou
    r_ids, r = np.unique(rows[~alone], return_inverse=True)
    c_ids, c = np.unique(cols[~alone], return_inverse=True)
    iou_sub = np.zeros((r_ids.size, c_ids.size))
    iou_sub[r, c] = iou[~alone]
    # reward 1 per pair plus an IoU bonus whose total stays below 1, so that no amount of IoU
    # can buy a lost pair
    bonus_scale = 1.0 / (2.0 * min(r_ids.size, c_ids.size))
    reward = np.zeros_like(iou_sub)
    reward[r, c] = 1.0 + iou[~alone] * bonus_scale
    from scipy.optimize import linear_sum_assignment  # on use: scipy.optimize is slow to import

    ri, ci = linear_sum_assignment(reward, maximize=True)
    real = reward[ri, ci] > 0  # the solver pairs every row; pairs without a candidate are dropped
    ri, ci = ri[real], ci[real]
    return (
        np.concatenate([rows[alone], r_ids[ri]]),
        np.concatenate([cols[alone], c_ids[ci]]),
        np.concatenate([iou[alone], iou_sub[ri, ci]]),
    )


@dataclass
class MatchResult:
    """Object-level scores at one IoU threshold (pairs count iff IoU >= thresh)."""

    thresh: float
    n_true: int
    n_pred: int
    tp: int
    fp: int
    fn: int
    precision: float  # tp / (tp + fp)
    recall: float  # tp / (tp + fn)
    f1: float  # 2 tp / (2 tp + fp + fn)
    accuracy: float  # tp / (tp + fp + fn), the DSB 2018 "AP"
    mean_matched_iou: float  # mean IoU of the tp pairs (segmentation quality, SQ)
    panoptic_quality: float  # sum of matched IoU / (tp + fp/2 + fn/2) = SQ * F1
    sum_matched_iou: float = 0.0
    # (tp, 2): (true id, pred id) of each matched pair; not part of to_dict()
    pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64), repr=False)

    @classmethod
    def from_counts(
        cls, thresh: float, tp: int, fp: int, fn: int, sum_matched_iou: float,
        pairs: np.ndarray | None = None,
    ) -> MatchResult:
        """All scores from the counts (used per image and pooled over a set)."""
        tp, fp, fn = int(tp), int(fp), int(fn)
        both_empty = tp + fp + fn == 0
        return cls(
            thresh=float(thresh), n_true=tp + fn, n_pred=tp + fp, tp=tp, fp=fp, fn=fn,
            precision=_ratio(tp, tp + fp, both_empty),
            recall=_ratio(tp, tp + fn, both_empty),
            f1=_ratio(2 * tp, 2 * tp + fp + fn, both_empty),
            accuracy=_ratio(tp, tp + fp + fn, both_empty),
            mean_matched_iou=_ratio(sum_matched_iou, tp, both_empty),
            panoptic_quality=_ratio(sum_matched_iou, tp + 0.5 * fp + 0.5 * fn, both_empty),
            sum_matched_iou=float(sum_matched_iou),
            pairs=np.zeros((0, 2), np.int64) if pairs is None else pairs,
        )

    def to_dict(self) -> dict:
        """Plain JSON-able dict of the scores (the matched pairs are left out)."""
        d = asdict(self)
        del d["pairs"]
        return d


def _check_thresh(who: str, thresh: float) -> float:
    t = float(thresh)
    if not 0.0 < t <= 1.0:
        raise ValueError(f"{who}: IoU threshold must be in (0, 1], got {thresh}")
    return t


def match(
    true_labels: np.ndarray, pred_labels: np.ndarray, thresh: float | Sequence[float] = 0.5
) -> MatchResult | list[MatchResult]:
    """Match predicted objects to true objects one-to-one and score the matching.

    true_labels, pred_labels: integer label images of one shape, usually (H, W); 0 is
        background, any positive id is an object (ids need not be sequential)
    thresh: IoU threshold in (0, 1], inclusive (a pair with IoU == thresh counts), or a
        sequence of thresholds: then one MatchResult per threshold, from one IoU table

    Empty images: no true and no predicted object gives 1.0 for every ratio; see the module
    docstring for the full convention.
    """
    table = iou_table(true_labels, pred_labels)
    several = not np.isscalar(thresh)
    results = []
    for t in (thresh if several else [thresh]):
        t = _check_thresh("match", t)
        rows, cols, iou = _assign(table, t)
        tp = int(rows.size)
        pairs = np.stack([table.true_ids[rows], table.pred_ids[cols]], axis=1).astype(np.int64)
        # math.fsum is exactly rounded: the score does not depend on the order of the ids
        results.append(MatchResult.from_counts(
            t, tp, table.pred_ids.size - tp, table.true_ids.size - tp, math.fsum(iou), pairs
        ))
    return results if several else results[0]


# ---------------------------------------------------------------------------------------------
# data set level


@dataclass
class EvaluationResult:
    """Scores of a data set of label images.

    thresholds: the IoU thresholds of `objects_pooled` and of each row of `objects_per_image`
    pixel_pooled: pixel counts summed over the images, then the ratios
    pixel_per_image: one PixelScores per image
    objects_pooled: per threshold, tp / fp / fn / matched IoU summed over the images, then the
        ratios (the default headline: every object weighs the same, whatever its image)
    objects_per_image: per image, one MatchResult per threshold
    dsb_ap: Data Science Bowl 2018 score: per image the mean of `accuracy` over the thresholds,
        then the mean over images (the competition's definition; meaningful with DSB_THRESHOLDS)
    dsb_ap_pooled: the mean over thresholds of the pooled accuracy
    count_error_mean_abs: mean over images of |n_pred - n_true|
    count_error_mean_rel: mean over images of |n_pred - n_true| / max(n_true, 1)
    names: one name per image (for reports)
    """

    thresholds: list[float]
    pixel_pooled: PixelScores
    pixel_per_image: list[PixelScores]
    objects_pooled: list[MatchResult]
    objects_per_image: list[list[MatchResult]]
    dsb_ap: float
    dsb_ap_pooled: float
    count_error_mean_abs: float
    count_error_mean_rel: float
    names: list[str]

    @property
    def n_images(self) -> int:
        """Number of images evaluated."""
        return len(self.pixel_per_image)

    def at(self, thresh: float) -> MatchResult:
        """The pooled object scores at one of `thresholds`."""
        for r in self.objects_pooled:
            if abs(r.thresh - thresh) < 1e-9:
                return r
        raise KeyError(f"EvaluationResult.at: threshold {thresh} not in {self.thresholds}")

    def per_image_mean(self, thresh: float) -> dict[str, float]:
        """The mean over images of each object score at one threshold (each image weighs 1)."""
        i = self.thresholds.index(self.at(thresh).thresh)
        keys = ("precision", "recall", "f1", "accuracy", "mean_matched_iou", "panoptic_quality")
        rows = [img[i] for img in self.objects_per_image]
        return {k: float(np.mean([getattr(r, k) for r in rows])) if rows else 0.0 for k in keys}

    def per_image_table(self, thresh: float = 0.5) -> list[dict]:
        """One row per image: its name, counts and headline scores at `thresh` (for reports)."""
        i = self.thresholds.index(self.at(thresh).thresh)
        rows = []
        for name, px, objs in zip(
            self.names, self.pixel_per_image, self.objects_per_image, strict=True
        ):
            o = objs[i]
            rows.append({
                "name": name, "n_true": o.n_true, "n_pred": o.n_pred,
                "pixel_f1": px.f1, "pixel_kappa": px.kappa,
                "f1": o.f1, "precision": o.precision, "recall": o.recall,
                "panoptic_quality": o.panoptic_quality,
                "dsb_ap": float(np.mean([r.accuracy for r in objs])),
            })
        return rows

    def to_dict(self) -> dict:
        """Plain JSON-able dict: summary, pooled and per-image-mean scores, per-image rows."""
        first = self.thresholds[0]
        return {
            "n_images": self.n_images,
            "thresholds": list(self.thresholds),
            "aggregate": "pooled (sum tp/fp/fn over images, then ratios); "
                         "per_image_mean also given; dsb_ap is a per-image mean",
            "dsb_ap": self.dsb_ap,
            "dsb_ap_pooled": self.dsb_ap_pooled,
            "count_error_mean_abs": self.count_error_mean_abs,
            "count_error_mean_rel": self.count_error_mean_rel,
            "pixel_pooled": self.pixel_pooled.to_dict(),
            "pixel_per_image_mean": {
                k: float(np.mean([getattr(p, k) for p in self.pixel_per_image]))
                for k in ("precision", "recall", "f1", "iou", "kappa", "accuracy")
            } if self.pixel_per_image else {},
            "objects_pooled": [r.to_dict() for r in self.objects_pooled],
            "objects_per_image_mean": {
                str(t): self.per_image_mean(t) for t in self.thresholds
            },
            "per_image": self.per_image_table(first),
        }


def evaluate(
    true_list: Sequence[np.ndarray],
    pred_list: Sequence[np.ndarray],
    thresholds: Sequence[float] = DSB_THRESHOLDS,
    names: Sequence[str] | None = None,
) -> EvaluationResult:
    """Score a data set: pixel, object and DSB scores, pooled and per image.

    true_list, pred_list: label images, pairwise of one shape (a (N, H, W) array works too)
    thresholds: IoU thresholds, each in (0, 1], inclusive; the default is the DSB's 0.50:0.05:0.95
    names: one name per image for the report (default "0", "1", ...)

    Pooled scores are the default headline. An image with no true and no predicted object adds
    nothing to the pooled counts and scores 1.0 in every per-image mean; an empty image with
    predicted objects scores 0.0 there (see the module docstring).
    """
    if len(true_list) != len(pred_list):
        raise ValueError(
            f"evaluate: {len(true_list)} true label images but {len(pred_list)} predictions"
        )
    if len(true_list) == 0:
        raise ValueError("evaluate: no images given")
    thresholds = [_check_thresh("evaluate", t) for t in thresholds]
    if not thresholds:
        raise ValueError("evaluate: thresholds is empty")
    names = [str(i) for i in range(len(true_list))] if names is None else [str(n) for n in names]
    if len(names) != len(true_list):
        raise ValueError(f"evaluate: {len(names)} names for {len(true_list)} images")
    pixel, objects = [], []
    for t, p in zip(true_list, pred_list, strict=True):
        pixel.append(pixel_scores(t, p))
        objects.append(match(t, p, thresholds))
    pixel_pooled = PixelScores.from_counts(
        *(sum(getattr(s, k) for s in pixel) for k in ("tp", "fp", "fn", "tn"))
    )
    objects_pooled = [
        MatchResult.from_counts(
            t,
            sum(img[i].tp for img in objects),
            sum(img[i].fp for img in objects),
            sum(img[i].fn for img in objects),
            math.fsum(img[i].sum_matched_iou for img in objects),
        )
        for i, t in enumerate(thresholds)
    ]
    n_true = np.array([img[0].n_true for img in objects], dtype=np.float64)
    n_pred = np.array([img[0].n_pred for img in objects], dtype=np.float64)
    return EvaluationResult(
        thresholds=thresholds,
        pixel_pooled=pixel_pooled,
        pixel_per_image=pixel,
        objects_pooled=objects_pooled,
        objects_per_image=objects,
        dsb_ap=float(np.mean([np.mean([r.accuracy for r in img]) for img in objects])),
        dsb_ap_pooled=float(np.mean([r.accuracy for r in objects_pooled])),
        count_error_mean_abs=float(np.mean(np.abs(n_pred - n_true))),
        count_error_mean_rel=float(np.mean(np.abs(n_pred - n_true) / np.maximum(n_true, 1))),
        names=names,
    )
