"""Training targets: three classes separate touching cells; the weight map and its kernel."""

import numpy as np
import pytest
from skimage.segmentation import find_boundaries

import minunet as mu
from minunet.data.targets import (
    BORDER_SIGMAS,
    inner_boundaries,
    nearest_two_distances,
    nearest_two_distances_reference,
)


def touching_squares(gap=0):
    """Two 6x6 cells side by side (touching if gap == 0) and a third far away; (17, 23)."""
    lab = np.zeros((17, 23), np.int32)
    lab[3:9, 2:8] = 1
    lab[3:9, 8 + gap:14 + gap] = 2
    lab[12:16, 18:22] = 3
    return lab


def dense_labels(n=3, size=(96, 112)):
    return mu.data.generate(n, "shift-dense", size=size, seed=1)[1]


def reference_weight(labels, w0, sigma):
    """The formula with whole-image distance transforms (no windows)."""
    classes = mu.data.three_class(labels)
    counts = np.bincount(classes.ravel(), minlength=3)
    wc = np.where(counts > 0, classes.size / ((counts > 0).sum() * np.maximum(counts, 1)), 0)
    d1, d2 = nearest_two_distances_reference(labels)
    border = np.where(labels == 0, w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2)), 0)
    return wc[classes] + border


def test_three_class_matches_find_boundaries_and_separates_touching_cells():
    for lab in [*dense_labels(), touching_squares()]:
        classes = mu.data.three_class(lab)
        assert classes.dtype == np.int64
        assert set(np.unique(classes)) <= {0, 1, 2}
        expected = np.where(find_boundaries(lab, connectivity=1, mode="inner"), 2, lab > 0)
        np.testing.assert_array_equal(classes, expected)
        # every 4-adjacent pair of pixels of two different cells is boundary on both sides
        for a, b, ca, cb in [(lab[:, 1:], lab[:, :-1], classes[:, 1:], classes[:, :-1]),
                             (lab[1:], lab[:-1], classes[1:], classes[:-1])]:
            contact = (a != b) & (a > 0) & (b > 0)
            assert (ca[contact] == 2).all() and (cb[contact] == 2).all()
        # so interiors of different cells never touch
        interior = np.where(classes == 1, lab, 0)
        for a, b in [(interior[:, 1:], interior[:, :-1]), (interior[1:], interior[:-1])]:
            assert not ((a != b) & (a > 0) & (b > 0)).any()
    lab = touching_squares()
    assert (mu.data.three_class(lab)[3:9, 7:9] == 2).all()


def test_three_class_and_weight_map_take_batches():
    labels = dense_labels(2)
    np.testing.assert_array_equal(mu.data.three_class(labels),
                                  np.stack([mu.data.three_class(lab) for lab in labels]))
    np.testing.assert_array_equal(mu.data.weight_map(labels),
                                  np.stack([mu.data.weight_map(lab) for lab in labels]))


def test_inner_boundaries_on_odd_shapes():
    rng = np.random.default_rng(0)
    for shape in [(1, 7), (5, 1), (9, 13)]:
        lab = rng.integers(0, 4, shape).astype(np.int32)
        np.testing.assert_array_equal(inner_boundaries(lab),
                                      find_boundaries(lab, connectivity=1, mode="inner"))


@pytest.mark.parametrize("shape", [(37, 53), (64, 41)])
def test_distance_kernel_matches_reference(shape):
    """The windowed Numba kernel is exact within reach and beyond-reach elsewhere (float64)."""
    lab = mu.data.generate(1, size=shape, seed=3, density=80.0)[1][0]
    reach = 12.0
    d1, d2 = nearest_two_distances(lab, reach)
    r1, r2 = nearest_two_distances_reference(lab)
    for got, want in [(d1, r1), (d2, r2)]:
        near = want <= reach
        np.testing.assert_allclose(got[near], want[near], rtol=1e-12, atol=0)
        assert (got[~near] > reach).all()


def test_distance_kernel_edge_cases():
    empty = np.zeros((6, 9), np.int32)
    d1, d2 = nearest_two_distances(empty, 5)
    assert np.isinf(d1).all() and np.isinf(d2).all()
    one = empty.copy()
    one[0, 0] = 1                              # a single cell in the corner
    d1, d2 = nearest_two_distances(one, 50)
    np.testing.assert_allclose(d1, nearest_two_distances_reference(one)[0])
    assert np.isinf(d2).all()
    gapped = np.zeros((5, 8), np.int32)
    gapped[:, 0] = 2                           # id 1 absent: the kernel skips it
    d1, _ = nearest_two_distances(gapped, 20)
    np.testing.assert_allclose(d1, np.broadcast_to(np.arange(8.0), (5, 8)))


def test_weight_map_matches_formula():
    w0, sigma = 10.0, 5.0
    for lab in [*dense_labels(2), touching_squares(gap=2)]:
        w = mu.data.weight_map(lab, w0=w0, sigma=sigma)
        assert w.dtype == np.float32 and w.shape == lab.shape
        # windows of BORDER_SIGMAS sigma drop at most w0 exp(-BORDER_SIGMAS^2 / 2) per pixel
        tol = w0 * np.exp(-(BORDER_SIGMAS**2) / 2) + 1e-5
        np.testing.assert_allclose(w, reference_weight(lab, w0, sigma), rtol=1e-6, atol=tol)


def test_weight_map_peaks_in_gaps_and_balances_classes():
    lab = touching_squares(gap=2)
    w = mu.data.weight_map(lab)
    background = lab == 0
    peak = np.unravel_index(np.argmax(np.where(background, w, -np.inf)), lab.shape)
    assert peak[1] in (8, 9) and 3 <= peak[0] < 9             # in the gap between cells 1 and 2
    assert w[peak] > w[background].min() + 5                  # by a clear margin
    # with w0 = 0 only class balancing is left: each class carries the same total weight
    classes = mu.data.three_class(lab)
    wc = mu.data.weight_map(lab, w0=0.0)
    totals = [wc[classes == c].sum() for c in range(3)]
    np.testing.assert_allclose(totals, totals[0], rtol=1e-5)


def test_bad_labels_are_refused():
    with pytest.raises(TypeError, match="three_class: labels must be an integer"):
        mu.data.three_class(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="weight_map: labels must be >= 0"):
        mu.data.weight_map(-np.ones((4, 4), np.int32))
    with pytest.raises(ValueError, match="sigma"):
        mu.data.weight_map(np.zeros((4, 4), np.int32), sigma=0)


def test_weight_map_without_balance_keeps_only_the_border_term():
    lab = touching_squares(gap=2)
    plain = mu.data.weight_map(lab, balance=False)
    balanced = mu.data.weight_map(lab)
    classes = mu.data.three_class(lab)
    border = plain - 1.0                                      # w_c = 1 everywhere
    assert (border[lab > 0] == 0).all()                       # cells: weight exactly 1
    # the border term is the same with and without balancing
    np.testing.assert_allclose(border, balanced - mu.data.weight_map(lab, w0=0.0), atol=1e-5)
    np.testing.assert_array_equal(mu.data.weight_map(lab, w0=0.0, balance=False),
                                  np.ones(lab.shape, np.float32))
    assert classes.max() == 2
    stacked = mu.data.weight_map(np.stack([lab, lab]), balance=False)
    np.testing.assert_array_equal(stacked[1], plain)
