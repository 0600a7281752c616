"""Probabilities -> instances: touching cells apart, isolated cells whole, clear errors."""

import numpy as np
import pytest
from scipy import ndimage
from skimage.morphology import h_maxima, reconstruction
from skimage.segmentation import find_boundaries

from minunet import to_instances
from minunet.metrics import match
from minunet.postprocess import h_maxima_mask, reconstruct_by_dilation


def discs(shape, centres, radii):
    """Label image of discs; a pixel covered by several discs goes to the nearest centre."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    dist = np.stack([np.hypot(yy - cy, xx - cx) / r for (cy, cx), r in
                     zip(centres, radii, strict=True)])  # (n, H, W) in radii
    lab = np.argmin(dist, axis=0).astype(np.int32) + 1
    lab[dist.min(axis=0) > 1] = 0
    return lab


def ideal_three_class(lab):
    """One-hot background / interior / boundary (boundary = object pixels next to another label)."""
    boundary = find_boundaries(lab, mode="inner") & (lab > 0)
    probs = np.stack([lab == 0, (lab > 0) & ~boundary, boundary]).astype(np.float32)
    return probs  # (3, H, W)


def same_partition(a, b):
    """Every object of one image is exactly an object of the other (ids may differ)."""
    n = len(np.unique(a[a > 0]))
    r = match(a, b, 1.0)
    return r.tp == n == r.n_pred


TOUCHING = discs((40, 52), [(20, 15), (20, 34)], [11, 10])  # centres 19 apart, radii sum 21
ISOLATED = discs((48, 60), [(10, 10), (12, 40), (35, 20), (36, 48)], [6, 8, 9, 5])


def test_touching_discs_separated_where_a_threshold_merges():
    probs = ideal_three_class(TOUCHING)
    assert ndimage.label(probs[0] < 0.5)[1] == 1  # plain threshold: one blob
    labels = to_instances(probs)
    assert labels.dtype == np.int32 and labels.shape == TOUCHING.shape
    assert same_partition(TOUCHING, labels)


def test_touching_discs_survive_smooth_probabilities():
    # softened edges: the maps a trained network gives are blurred, not one-hot
    probs = ndimage.gaussian_filter(ideal_three_class(TOUCHING), sigma=(0, 1, 1))
    labels = to_instances(probs)
    r = match(TOUCHING, labels, 0.8)
    assert r.tp == 2 and r.fp == 0


def test_isolated_cells_kept_whole():
    probs = ideal_three_class(ISOLATED)
    assert same_partition(ISOLATED, to_instances(probs))
    fg = np.stack([ISOLATED == 0, ISOLATED > 0]).astype(np.float64)
    assert same_partition(ISOLATED, to_instances(fg))
    assert same_partition(ISOLATED, to_instances(fg, split=True))  # one dome per disc: no split
    assert same_partition(ISOLATED, to_instances(fg[1:]))  # single channel (1, H, W)
    assert same_partition(ISOLATED, to_instances(fg[1]))  # plain (H, W)


def test_binary_split_of_touching_discs():
    fg = np.stack([TOUCHING == 0, TOUCHING > 0]).astype(np.float32)
    assert to_instances(fg).max() == 1
    split = to_instances(fg, split=True)
    r = match(TOUCHING, split, 0.9)
    assert split.max() == 2 and r.tp == 2


def test_batch_equals_single_images_and_ids_are_sequential():
    a = ideal_three_class(np.pad(TOUCHING, ((4, 4), (0, 8))))
    b = ideal_three_class(ISOLATED)
    batch = np.stack([a, b])  # (2, 3, 48, 60)
    out = to_instances(batch)
    assert out.shape == (2, 48, 60) and out.dtype == np.int32
    for i, p in enumerate((a, b)):
        np.testing.assert_array_equal(out[i], to_instances(p))
        ids = np.unique(out[i][out[i] > 0])
        np.testing.assert_array_equal(ids, np.arange(1, ids.size + 1))


def test_min_size_and_unseeded_regions():
    lab = ISOLATED.copy()
    lab[44:47, 2:5] = 9  # a 3x3 speck
    probs = ideal_three_class(lab)
    out = to_instances(probs, min_size=10)
    assert out.max() == 4  # the speck (9 pixels < 10) is gone
    assert to_instances(probs, min_size=9).max() == 5
    # a cell seen only as boundary (no interior seed) is kept as its own object...
    probs[1][lab == 1], probs[2][lab == 1] = 0.0, 1.0
    assert same_partition(ISOLATED, to_instances(probs, min_size=10))
    # ...unless asked otherwise
    assert to_instances(probs, min_size=10, keep_unseeded=False).max() == 3


def test_reconstruction_and_h_maxima_match_skimage():
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.random((33, 41)), 2) * 10
    marker = image - 0.5
    np.testing.assert_allclose(reconstruct_by_dilation(marker, image),
                               reconstruction(marker, image), rtol=0, atol=1e-12)
    lab = discs((50, 70), [(20, 15), (22, 33), (30, 55)], [11, 9, 7])
    dist = ndimage.distance_transform_edt(lab > 0)
    for h in (1.0, 2.0, 4.0):
        want = h_maxima(dist, h).astype(bool) & (lab > 0)
        np.testing.assert_array_equal(h_maxima_mask(dist, h), want)


@pytest.mark.parametrize(
    ("probs", "error", "words"),
    [
        (np.full((3, 8, 8), np.nan), FloatingPointError, "NaN"),
        (np.full((3, 8, 8), 1.5), ValueError, r"\[0, 1\]"),
        (np.full((3, 8, 8), -0.2), ValueError, "softmax"),
        (np.zeros((1, 1, 3, 8, 8)), ValueError, "shape"),
        (np.zeros((4, 8, 8)), ValueError, "Kc=1, 2 or 3"),
        (np.zeros((3, 8, 8), dtype=np.int32), TypeError, "floating"),
        ([[0.5]], TypeError, "numpy array"),
    ],
)
def test_clear_errors(probs, error, words):
    with pytest.raises(error, match=words):
        to_instances(probs)


def test_mode_must_fit_channels():
    with pytest.raises(ValueError, match="three_class"):
        to_instances(np.zeros((2, 8, 8)), mode="three_class")
    with pytest.raises(ValueError, match="binary"):
        to_instances(np.zeros((3, 8, 8)), mode="binary")
    with pytest.raises(ValueError, match="mode"):
        to_instances(np.zeros((3, 8, 8)), mode="watershed")


def test_three_class_split_cuts_blobs_the_network_drew_no_boundary_in():
    # the reference recipe's case: two overlapping blobs of uniform interior, no boundary class
    lab = TOUCHING
    probs = np.stack([lab == 0, lab > 0, np.zeros(lab.shape, bool)]).astype(np.float32)
    assert to_instances(probs).max() == 1                    # seeds alone: one object
    cut = to_instances(probs, split=True)
    assert cut.max() == 2 and match(lab, cut, 0.9).tp == 2
    # where the network did draw the boundary, the cut changes nothing
    assert same_partition(lab, to_instances(ideal_three_class(lab), split=True))
    assert same_partition(ISOLATED, to_instances(ideal_three_class(ISOLATED), split=True))


def test_three_class_split_keeps_unseeded_foreground_out_when_asked():
    lab = TOUCHING
    probs = np.stack([lab == 0, np.zeros(lab.shape, bool), lab > 0]).astype(np.float32)
    # foreground but no interior anywhere: no seed, so nothing without keep_unseeded
    assert to_instances(probs, keep_unseeded=False, split=True).max() == 0
    assert to_instances(probs, split=True).max() == 2        # kept, and cut by shape


def test_three_class_split_when_objects_fill_the_whole_image():
    shape = (12, 30)                                  # all foreground, all interior
    probs = np.stack([np.zeros(shape), np.ones(shape), np.zeros(shape)]).astype(np.float32)
    cut = to_instances(probs, split=True, min_size=1)
    assert cut.min() >= 1 and cut.max() >= 1          # no object was given id 0


def _plain_finish(labels, min_size):
    """_finish as it was written first: zero the small objects, then skimage's relabelling."""
    from skimage.segmentation import relabel_sequential

    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    labels = np.where(small[labels], 0, labels)
    return relabel_sequential(labels)[0].astype(np.int32)


@pytest.mark.parametrize("seed", range(40))
def test_compiled_watershed_and_relabelling_equal_skimage(seed):
    """kernels/watershed.py gives skimage's watershed labels to the pixel, ties included (few
    grey levels: many markers and pixels of equal value, where the heap's exact moves decide),
    on masks with holes, markers outside the mask, negative values and thin images; the
    one-lookup _finish equals zeroing small objects then relabel_sequential."""
    from skimage.segmentation import watershed

    from minunet.kernels.watershed import seeded_watershed
    from minunet.postprocess import _finish

    rng = np.random.default_rng(seed)
    H, W = (1, 40) if seed == 0 else (37, 1) if seed == 1 else rng.integers(2, 50, 2)
    levels = [2, 3, 5, 1000][seed % 4]
    image = (rng.integers(0, levels, (H, W)) / levels).astype(np.float32)
    if seed % 5 == 0:
        image = -image
    mask = rng.random((H, W)) < rng.uniform(0.3, 1.0)
    markers = np.where(rng.random((H, W)) < rng.uniform(0.01, 0.3),
                       rng.integers(1, 6, (H, W)), 0).astype(np.int32)
    expected = watershed(image, markers=markers, mask=mask)
    np.testing.assert_array_equal(seeded_watershed(image, markers, mask), expected)
    labels = ndimage.label(mask)[0]
    for min_size in (0, 1, 3, 10):
        np.testing.assert_array_equal(_finish(labels, min_size), _plain_finish(labels, min_size))


def test_to_instances_equals_the_skimage_path_on_the_bundled_model():
    """On the bundled model's probabilities of a generated image, to_instances (compiled
    watershed, one-lookup relabelling) gives the labels of the skimage path."""
    from skimage.segmentation import watershed

    import minunet as mu
    from minunet import postprocess

    ckpt = mu.load("nuclei")
    images, _, _ = mu.data.generate(1, "broad", size=(384, 512), seed=11)
    probs = mu.predict(ckpt.model, images[0], normalization=ckpt.metadata["normalization"])
    post = ckpt.metadata["postprocess"]
    fast = mu.to_instances(probs, **post)

    def skimage_watershed(elevation, markers, mask):
        return watershed(elevation, markers=markers, mask=mask)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(postprocess, "_watershed", skimage_watershed)
        patch.setattr(postprocess, "_finish", _plain_finish)
        plain = mu.to_instances(probs, **post)
    assert fast.max() > 20
    np.testing.assert_array_equal(fast, plain)
