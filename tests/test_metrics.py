"""Pixel, object and data-set scores against hand-made geometry and independent computations."""

import itertools
import json

import numpy as np
import pytest

from minunet import metrics
from minunet.metrics import DSB_THRESHOLDS, evaluate, iou_table, match, pixel_scores


def random_labels(rng, shape=(48, 56), n=12, r_max=7):
    """Discs with random centres and radii; later discs paint over earlier ones."""
    lab = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for k in range(1, n + 1):
        cy, cx = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        r = rng.integers(2, r_max)
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    return lab


def perturbed(rng, lab):
    """A plausible prediction: shifted by a pixel, one object removed, one blob added."""
    pred = np.roll(lab, (1, -1), axis=(0, 1)).copy()
    ids = np.unique(pred[pred > 0])
    if ids.size:
        pred[pred == rng.choice(ids)] = 0
    pred[2:7, 3:9] = pred.max() + 1
    return pred


def naive_iou(t, p, a, b):
    inter = np.count_nonzero((t == a) & (p == b))
    union = np.count_nonzero((t == a) | (p == b))
    return inter / union


def brute_force_best(t, p, thresh):
    """Every one-to-one matching enumerated: max #pairs, then max summed IoU."""
    ta, pa = [int(i) for i in np.unique(t) if i], [int(i) for i in np.unique(p) if i]
    iou = {(a, b): naive_iou(t, p, a, b) for a in ta for b in pa}
    best = (0, 0.0)
    for k in range(min(len(ta), len(pa)), 0, -1):
        for rows in itertools.combinations(ta, k):
            for cols in itertools.permutations(pa, k):
                vals = [iou[(a, b)] for a, b in zip(rows, cols, strict=True)]
                if all(v >= thresh for v in vals):
                    best = max(best, (k, sum(vals)))
        if best[0] == k:
            break
    return best


@pytest.fixture
def two_squares():
    """Truth {10x10 square, 20x20 square}; prediction {10x12 box over the first, 5x5 elsewhere}."""
    t = np.zeros((64, 64), np.int32)
    t[2:12, 2:12] = 1
    t[20:40, 20:40] = 2
    p = np.zeros_like(t)
    p[2:12, 2:14] = 7
    p[50:55, 50:55] = 3
    return t, p


def test_hand_made_case(two_squares):
    t, p = two_squares
    iou = (10 * 10) / (10 * 12)  # the box contains the square: inter 100, union 120
    r = match(t, p, 0.5)
    assert (r.tp, r.fp, r.fn, r.n_true, r.n_pred) == (1, 1, 1, 2, 2)
    assert r.precision == r.recall == r.f1 == 0.5
    assert r.accuracy == pytest.approx(1 / 3)
    assert r.mean_matched_iou == pytest.approx(iou)
    assert r.panoptic_quality == pytest.approx(iou / (1 + 0.5 + 0.5))
    assert r.pairs.tolist() == [[1, 7]]
    r9 = match(t, p, 0.9)
    assert (r9.tp, r9.fp, r9.fn) == (0, 2, 2)
    assert r9.precision == r9.recall == r9.f1 == r9.accuracy == r9.mean_matched_iou == 0.0


def test_threshold_is_inclusive(two_squares):
    t, p = two_squares
    iou = 100 / 120
    assert match(t, p, iou).tp == 1
    assert match(t, p, np.nextafter(iou, 1.0)).tp == 0
    half = np.zeros((20, 20), np.int32)
    half[0:10, 0:10] = 1
    pred = np.zeros_like(half)
    pred[0:10, 0:5] = 1  # IoU exactly 50 / 100
    assert match(half, pred, 0.5).tp == 1


def test_several_thresholds_equal_single_calls(two_squares):
    t, p = two_squares
    several = match(t, p, [0.3, 0.5, 0.9])
    for r in several:
        assert r.to_dict() == match(t, p, r.thresh).to_dict()


def test_invariant_to_permuting_ids():
    rng = np.random.default_rng(0)
    for _ in range(5):
        t = random_labels(rng)
        p = perturbed(rng, t)
        base = [r.to_dict() for r in match(t, p, [0.3, 0.5, 0.75])]
        # new ids: a random permutation, spread out and far above the object count
        for lab_name in ("t", "p"):
            lab = t if lab_name == "t" else p
            top = int(lab.max())
            new_ids = np.concatenate([[0], rng.permutation(top) * 37 + 5])
            relab = new_ids[lab]
            tt, pp = (relab, p) if lab_name == "t" else (t, relab)
            got = [r.to_dict() for r in match(tt, pp, [0.3, 0.5, 0.75])]
            assert got == base


def test_huge_ids_take_the_unique_path():
    rng = np.random.default_rng(1)
    t = random_labels(rng)
    p = perturbed(rng, t)
    big = t.astype(np.int64) * 10**9  # ids far beyond the lookup-table limit
    assert match(big, p, 0.5).to_dict() == match(t, p, 0.5).to_dict()


def test_iou_table_equals_naive_per_pair(monkeypatch):
    rng = np.random.default_rng(2)
    t = random_labels(rng)
    p = perturbed(rng, t)
    for max_bins in (metrics.DENSE_TABLE_MAX_BINS, 0):  # dense bincount, then the sorted path
        monkeypatch.setattr(metrics, "DENSE_TABLE_MAX_BINS", max_bins)
        tab = iou_table(t, p)
        got = {
            (int(tab.true_ids[r]), int(tab.pred_ids[c])): v
            for r, c, v in zip(tab.rows, tab.cols, tab.iou, strict=True)
        }
        want = {}
        for a in np.unique(t[t > 0]):
            for b in np.unique(p[p > 0]):
                v = naive_iou(t, p, a, b)
                if v > 0:
                    want[(int(a), int(b))] = v
        assert got.keys() == want.keys()
        for k, v in want.items():
            assert got[k] == pytest.approx(v, rel=1e-12)


def test_matching_is_optimal_against_brute_force():
    # greedy by IoU would pair X with A and leave Y alone; the optimum pairs X-B and Y-A
    t = np.zeros((1, 20), np.int32)
    t[0, 0:10] = 1  # A
    t[0, 10:14] = 2  # B
    p = np.zeros_like(t)
    p[0, 4:14] = 5  # X: IoU with A = 6/14, with B = 4/10
    p[0, 0:4] = 6  # Y: IoU with A = 4/10
    r = match(t, p, 0.35)
    assert r.tp == 2 == brute_force_best(t, p, 0.35)[0]
    assert r.sum_matched_iou == pytest.approx(4 / 10 + 4 / 10)
    rng = np.random.default_rng(3)
    for _ in range(20):
        t = random_labels(rng, shape=(24, 24), n=4, r_max=8)
        p = random_labels(rng, shape=(24, 24), n=4, r_max=8)
        for thresh in (0.1, 0.3, 0.5):
            r = match(t, p, thresh)
            k, s = brute_force_best(t, p, thresh)
            assert r.tp == k
            assert r.sum_matched_iou == pytest.approx(s, abs=1e-12)


def test_perfect_prediction_scores_one():
    t = random_labels(np.random.default_rng(4))
    for r in match(t, t, DSB_THRESHOLDS):
        assert r.fp == r.fn == 0
        for k in ("precision", "recall", "f1", "accuracy", "mean_matched_iou", "panoptic_quality"):
            assert getattr(r, k) == 1.0
    px = pixel_scores(t, t)
    assert px.f1 == px.iou == px.kappa == px.accuracy == 1.0
    assert evaluate([t], [t]).dsb_ap == 1.0


def test_empty_conventions():
    empty = np.zeros((16, 16), np.int32)
    some = empty.copy()
    some[2:6, 2:6] = 1
    some[9:12, 9:12] = 2
    both = match(empty, empty)
    assert (both.tp, both.fp, both.fn) == (0, 0, 0)
    assert both.f1 == both.accuracy == both.panoptic_quality == both.mean_matched_iou == 1.0
    only_pred = match(empty, some)
    assert (only_pred.fp, only_pred.precision, only_pred.recall, only_pred.f1) == (2, 0, 0, 0)
    only_true = match(some, empty)
    assert (only_true.fn, only_true.precision, only_true.recall, only_true.f1) == (2, 0, 0, 0)
    px = pixel_scores(empty, empty)
    assert px.f1 == px.kappa == px.precision == 1.0
    px = pixel_scores(empty, some)
    assert px.f1 == px.recall == px.precision == 0.0
    # data set: an empty pair adds nothing pooled but scores 1 per image
    ev = evaluate([some, empty], [some, empty])
    assert ev.dsb_ap == 1.0 and ev.at(0.5).f1 == 1.0
    ev = evaluate([some, empty], [some, some])
    assert ev.objects_per_image[1][0].f1 == 0.0
    assert ev.dsb_ap == pytest.approx(0.5)  # (1 + 0) / 2 images
    assert ev.at(0.5).precision == pytest.approx(2 / 4)  # pooled: 2 tp, 2 fp


def textbook_kappa(a, b):
    a, b = a.ravel(), b.ravel()
    po = np.mean(a == b)
    pe = np.mean(a) * np.mean(b) + np.mean(~a) * np.mean(~b)
    return (po - pe) / (1 - pe)


def test_pixel_scores_against_formulas():
    rng = np.random.default_rng(5)
    for p_fg in (0.1, 0.5, 0.8):
        t = rng.random((31, 47)) < p_fg
        p = np.where(rng.random(t.shape) < 0.8, t, rng.random(t.shape) < p_fg)
        s = pixel_scores(t.astype(np.int32) * 3, p)  # ids > 1 and bool masks both count
        tp = np.sum(t & p)
        fp = np.sum(~t & p)
        fn = np.sum(t & ~p)
        tn = np.sum(~t & ~p)
        assert (s.tp, s.fp, s.fn, s.tn) == (tp, fp, fn, tn)
        assert s.f1 == pytest.approx(2 * tp / (2 * tp + fp + fn), rel=1e-12)
        assert s.iou == pytest.approx(tp / (tp + fp + fn), rel=1e-12)
        assert s.precision == pytest.approx(tp / (tp + fp), rel=1e-12)
        assert s.recall == pytest.approx(tp / (tp + fn), rel=1e-12)
        assert s.accuracy == pytest.approx((tp + tn) / t.size, rel=1e-12)
        assert s.kappa == pytest.approx(textbook_kappa(t, p), rel=1e-12)


def test_evaluate_pooled_and_per_image():
    rng = np.random.default_rng(6)
    trues = [random_labels(rng) for _ in range(4)]
    preds = [perturbed(rng, t) for t in trues]
    ev = evaluate(trues, preds, names=["a", "b", "c", "d"])
    singles = [match(t, p, DSB_THRESHOLDS) for t, p in zip(trues, preds, strict=True)]
    for i, thresh in enumerate(DSB_THRESHOLDS):
        tp = sum(s[i].tp for s in singles)
        fp = sum(s[i].fp for s in singles)
        fn = sum(s[i].fn for s in singles)
        pooled = ev.at(thresh)
        assert (pooled.tp, pooled.fp, pooled.fn) == (tp, fp, fn)
        assert pooled.f1 == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert ev.per_image_mean(thresh)["f1"] == pytest.approx(np.mean([s[i].f1 for s in singles]))
    assert ev.dsb_ap == pytest.approx(np.mean([np.mean([r.accuracy for r in s]) for s in singles]))
    n_true = np.array([s[0].n_true for s in singles])
    n_pred = np.array([s[0].n_pred for s in singles])
    assert ev.count_error_mean_abs == pytest.approx(np.mean(np.abs(n_pred - n_true)))
    pix_tp = sum(pixel_scores(t, p).tp for t, p in zip(trues, preds, strict=True))
    assert ev.pixel_pooled.tp == pix_tp
    d = json.loads(json.dumps(ev.to_dict()))
    assert d["n_images"] == 4 and [r["name"] for r in d["per_image"]] == ["a", "b", "c", "d"]
    assert d["thresholds"][2] == 0.6  # exact, not 0.6000000000000001


def test_clear_errors():
    t = np.zeros((8, 8), np.int32)
    with pytest.raises(TypeError, match="to_instances"):
        match(t, t.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        match(t, np.zeros((8, 9), np.int32))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        match(t, t, 0.0)
    with pytest.raises(ValueError, match="negative"):
        match(t - 1, t)
    with pytest.raises(ValueError, match="predictions"):
        evaluate([t, t], [t])
