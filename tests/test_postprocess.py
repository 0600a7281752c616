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


def _watershed_case(seed):
    """A random watershed problem: few grey levels (many markers and pixels of equal value),
    masks with holes, markers outside the mask, negative values and thin images."""
    rng = np.random.default_rng(seed)
    H, W = (1, 40) if seed == 0 else (37, 1) if seed == 1 else rng.integers(2, 50, 2)
    levels = [2, 3, 5, 1000][seed % 4]
    image = (rng.integers(0, levels, (H, W)) / levels).astype(np.float32)
    if seed % 5 == 0:
        image = -image
    mask = rng.random((H, W)) < rng.uniform(0.3, 1.0)
    markers = np.where(rng.random((H, W)) < rng.uniform(0.01, 0.3),
                       rng.integers(1, 6, (H, W)), 0).astype(np.int32)
    return image, markers, mask


@pytest.mark.parametrize("seed", range(40))
def test_compiled_watershed_equals_the_reference_and_relabelling_equals_skimage(seed):
    """kernels/watershed.py gives the plain heapq flood's labels to the pixel, ties included
    (markers of equal value taken in raster order); the one-lookup _finish equals zeroing
    small objects then relabel_sequential."""
    from minunet.kernels.reference import seeded_watershed_reference
    from minunet.kernels.watershed import seeded_watershed
    from minunet.postprocess import _finish

    image, markers, mask = _watershed_case(seed)
    np.testing.assert_array_equal(seeded_watershed(image, markers, mask),
                                  seeded_watershed_reference(image, markers, mask))
    labels = ndimage.label(mask)[0]
    for min_size in (0, 1, 3, 10):
        np.testing.assert_array_equal(_finish(labels, min_size), _plain_finish(labels, min_size))


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_finish_numbers_ids_with_gaps_sequentially(dtype):
    """_finish (compiled for int32, NumPy otherwise) equals zeroing the small objects then
    skimage's relabel_sequential also where ids are missing (seeds cleared outside the
    foreground leave gaps) and min_size is 0 or 1."""
    from minunet.postprocess import _finish

    rng = np.random.default_rng(2)
    labels = rng.choice(np.array([0, 2, 3, 7, 9, 40]), (30, 40)).astype(dtype)
    labels[:3, :3] = 11                               # 9 pixels
    for min_size in (0, 1, 10, 200, 10_000):
        got = _finish(labels, min_size)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, _plain_finish(labels, min_size))


@pytest.mark.parametrize("seed", range(20))
def test_compiled_watershed_equals_skimage_where_no_two_markers_tie(seed):
    """Where every marker's value is its own (other pixels may still tie, -0.0 and 0.0
    included), skimage's watershed and ours give the same labels: the raster-order rule for
    tied markers is the only difference."""
    from skimage.segmentation import watershed

    from minunet.kernels.watershed import seeded_watershed

    image, markers, mask = _watershed_case(seed)
    distinct = np.random.default_rng(seed).permutation(image.size).reshape(image.shape)
    image = np.where(markers > 0, 2.0 + distinct / image.size, image).astype(np.float32)
    if seed % 3 == 0:
        image[image == 0] = -0.0
    expected = watershed(image, markers=markers, mask=mask)
    np.testing.assert_array_equal(seeded_watershed(image, markers, mask), expected)


def test_compiled_watershed_takes_tied_markers_in_raster_order():
    """The one rule that is ours: markers of equal value leave the queue in raster order, so
    on a flat image marker 1 (first in raster order) floods before 2, and 2 before 3; the
    pixel between 2 and 3 goes to 2. (skimage's heap pops 3 before 2 here and gives it 3.)"""
    from minunet.kernels.reference import seeded_watershed_reference
    from minunet.kernels.watershed import seeded_watershed

    image = np.zeros((3, 3), np.float32)
    markers = np.array([[0, 0, 1], [2, 0, 3], [0, 0, 0]], np.int32)
    mask = np.ones((3, 3), bool)
    expected = [[2, 1, 1], [2, 2, 3], [2, 2, 3]]
    np.testing.assert_array_equal(seeded_watershed(image, markers, mask), expected)
    np.testing.assert_array_equal(seeded_watershed_reference(image, markers, mask), expected)


@pytest.mark.parametrize("threads", [1, 2])
def test_compiled_watershed_split_over_threads_gives_the_same_labels(threads, monkeypatch):
    """Many pieces of mask handed to the pool's threads in groups: the labels of the plain
    flood (the pieces never meet, so their order and grouping cannot matter)."""
    from minunet.kernels import threads as pool
    from minunet.kernels import watershed as ws
    from minunet.kernels.reference import seeded_watershed_reference

    rng = np.random.default_rng(5)
    image = (rng.integers(0, 7, (90, 120)) / 7).astype(np.float32)
    mask = ndimage.binary_opening(rng.random((90, 120)) < 0.6)
    markers = np.where(rng.random((90, 120)) < 0.05, rng.integers(1, 9, (90, 120)), 0)
    monkeypatch.setattr(ws, "SERIAL_PIXELS", 1)
    before = pool.get_num_threads()
    pool.set_num_threads(threads)
    try:
        got = ws.seeded_watershed(image, markers, mask)
    finally:
        pool.set_num_threads(before)
    assert ndimage.label(mask)[1] > 20
    np.testing.assert_array_equal(got, seeded_watershed_reference(image, markers, mask))


@pytest.mark.parametrize("seed", range(24))
def test_compiled_seeds_equal_ndimage_label_finish_and_mask(seed):
    """kernels/watershed.py's seed_labels: ndimage.label of p > t (4-connected), small
    regions dropped and ids made sequential (_finish), cleared outside the foreground; float32
    and float64, values equal to the threshold (strict >), thin images."""
    from minunet.kernels.watershed import seed_labels

    rng = np.random.default_rng(seed)
    H, W = (1, 30) if seed == 0 else (25, 1) if seed == 1 else rng.integers(2, 60, 2)
    dtype = np.float32 if seed % 2 else np.float64
    p = ndimage.gaussian_filter(rng.random((H, W)), rng.uniform(0, 2)).astype(dtype)
    thresh = float(np.quantile(p, rng.uniform(0.2, 0.9)))
    if seed % 3 == 0:
        p[rng.random((H, W)) < 0.1] = dtype(thresh)
    foreground = rng.random((H, W)) < rng.uniform(0.5, 1.0)
    min_size = int(rng.integers(0, 8))
    expected = _plain_finish(ndimage.label(p > thresh, structure=np.array(
        [[0, 1, 0], [1, 1, 1], [0, 1, 0]]))[0], min_size)
    expected[~foreground] = 0
    got = seed_labels(p, thresh, min_size, foreground)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("seed", range(20))
def test_compiled_watershed_numbers_unseeded_pieces_as_ndimage_would(seed):
    """seeded_watershed(unseeded=True) equals the plain flood followed by _add_unseeded
    (ndimage.label of the pixels no flood reached, numbered after the largest label)."""
    from minunet.kernels.reference import seeded_watershed_reference
    from minunet.kernels.watershed import seeded_watershed
    from minunet.postprocess import _add_unseeded

    image, markers, mask = _watershed_case(seed)
    markers[:, : markers.shape[1] // 2] = 0           # some pieces hold no marker
    expected = _add_unseeded(seeded_watershed_reference(image, markers, mask), mask)
    np.testing.assert_array_equal(seeded_watershed(image, markers, mask, unseeded=True),
                                  expected)


@pytest.mark.parametrize("seed", range(8))
def test_to_instances_equals_the_skimage_path_on_random_maps(seed):
    """On random smooth three-class maps (no two seed pixels of equal value), float32 and
    float64, with and without keep_unseeded: the compiled path's labels are the skimage
    path's."""
    rng = np.random.default_rng(seed)
    H, W = rng.integers(20, 90, 2)
    logits = ndimage.gaussian_filter(rng.standard_normal((3, H, W)), (0, 2, 2)) * 8
    probs = np.exp(logits) / np.exp(logits).sum(axis=0)
    probs = probs.astype(np.float32 if seed % 2 else np.float64)
    settings = {"seed_thresh": 0.5, "min_size": int(rng.integers(0, 20)),
                "keep_unseeded": bool(seed % 4 < 2)}
    fast = to_instances(probs, **settings)
    with pytest.MonkeyPatch.context() as patch:
        _skimage_path(patch)
        plain = to_instances(probs, **settings)
    assert plain.max() > 1
    np.testing.assert_array_equal(fast, plain)


def _skimage_path(patch):
    """Patch postprocess to the path before its compiled kernels: ndimage's labels for the
    seeds, skimage's watershed, then ndimage's labels of the unseeded pieces, and skimage's
    relabelling."""
    from skimage.segmentation import watershed

    from minunet import postprocess

    def ndimage_seeds(p_interior, seed_thresh, min_seed_size, foreground):
        seeds = ndimage.label(p_interior > seed_thresh, structure=postprocess.FOUR_CONNECTED)[0]
        seeds = _plain_finish(seeds, min_seed_size)
        seeds[~foreground] = 0
        return seeds

    def skimage_watershed(elevation, markers, mask, keep_unseeded, pieces=None):
        labels = watershed(elevation, markers=markers, mask=mask)
        return postprocess._add_unseeded(labels, mask) if keep_unseeded else labels

    patch.setattr(postprocess, "_seeds", ndimage_seeds)
    patch.setattr(postprocess, "_watershed", skimage_watershed)
    patch.setattr(postprocess, "_finish", _plain_finish)


def test_to_instances_equals_the_skimage_path_on_the_bundled_model():
    """On the bundled model's probabilities of a generated image, to_instances (compiled
    seeds and watershed, one-lookup relabelling) gives the labels of the skimage path."""
    import minunet as mu

    ckpt = mu.load("nuclei")
    images, _, _ = mu.data.generate(1, "broad", size=(384, 512), seed=11)
    probs = mu.predict(ckpt.model, images[0], normalization=ckpt.metadata["normalization"])
    post = ckpt.metadata["postprocess"]
    fast = mu.to_instances(probs, **post)
    with pytest.MonkeyPatch.context() as patch:
        _skimage_path(patch)
        plain = mu.to_instances(probs, **post)
    assert fast.max() > 20
    np.testing.assert_array_equal(fast, plain)


def test_mask_pieces_are_the_4_connected_components_in_raster_order():
    from minunet.kernels.watershed import mask_pieces
    from minunet.postprocess import FOUR_CONNECTED

    rng = np.random.default_rng(11)
    mask = ndimage.gaussian_filter(rng.standard_normal((70, 90)), 2) > 0.1
    pixels, starts = mask_pieces(mask)
    labels, n = ndimage.label(mask, structure=FOUR_CONNECTED)   # numbered in raster order
    assert starts.size == n + 1 and starts[-1] == pixels.size == mask.sum()
    for k in range(n):
        piece = np.sort(pixels[starts[k]:starts[k + 1]])
        np.testing.assert_array_equal(piece, np.flatnonzero(labels.ravel() == k + 1))


def test_pieces_found_beside_the_seeds_give_the_same_labels(monkeypatch):
    """On an image of at least SERIAL_PIXELS, the foreground's pieces are found on a second
    thread while the seeds are labelled, and handed to the watershed: the labels are those of
    the watershed finding them itself."""
    from minunet import postprocess
    from minunet.kernels import watershed

    rng = np.random.default_rng(7)
    logits = ndimage.gaussian_filter(rng.standard_normal((3, 512, 512)), (0, 3, 3)) * 10
    probs = (np.exp(logits) / np.exp(logits).sum(axis=0)).astype(np.float32)
    assert 512 * 512 >= watershed.SERIAL_PIXELS
    given = []
    real = watershed.seeded_watershed
    monkeypatch.setattr(watershed, "seeded_watershed",
                        lambda *a, **k: given.append(k["pieces"] is not None) or real(*a, **k))
    together = to_instances(probs, seed_thresh=0.5)
    monkeypatch.setattr(postprocess, "_seeds_and_pieces",
                        lambda p, t, m, fg: (postprocess._seeds(p, t, m, fg), None))
    alone = to_instances(probs, seed_thresh=0.5)
    assert given == [True, False]
    assert together.max() > 10
    np.testing.assert_array_equal(together, alone)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_compiled_relabelling_over_pixel_ranges_equals_numpys(threads, monkeypatch):
    """kernels/watershed.relabel (the object sizes counted over ranges of pixels on the
    pool's threads, then the new ids looked up) gives _finish's NumPy labels on an image
    large enough to be split (ids missing, small objects, the largest id small), whatever
    the number of threads."""
    from minunet.kernels import threads as pool
    from minunet.kernels.watershed import SERIAL_PIXELS, relabel
    from minunet.postprocess import _finish

    monkeypatch.setattr(pool, "get_num_threads", lambda: threads)
    rng = np.random.default_rng(threads)
    labels = rng.integers(0, 700, (600, 400)).astype(np.int32)
    labels[labels % 7 == 3] = 0                      # ids missing
    labels[:5, :5] = 701                             # a small object with the largest id
    assert labels.size > SERIAL_PIXELS
    for min_size in (0, 1, 40, 380):
        np.testing.assert_array_equal(relabel(labels, min_size),
                                      _finish(labels.astype(np.int64), min_size))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("seed", range(6))
def test_compiled_watershed_over_threads_numbers_unseeded_pieces_as_ndimage_would(
        seed, threads, monkeypatch):
    """seeded_watershed(unseeded=True) with the markers copied in row bands and each group of
    pieces finding its own fronts on the pool's threads: the plain flood followed by
    _add_unseeded (markers outside the mask dropped, pieces without markers numbered after
    the largest marker in the mask, in raster order)."""
    from minunet.kernels import threads as pool
    from minunet.kernels import watershed as ws
    from minunet.kernels.reference import seeded_watershed_reference
    from minunet.postprocess import _add_unseeded

    rng = np.random.default_rng(seed)
    H, W = rng.integers(60, 130, 2)
    image = (rng.integers(0, 4, (H, W)) / 4).astype(np.float32)
    mask = ndimage.binary_opening(rng.random((H, W)) < 0.6)
    markers = np.where(rng.random((H, W)) < 0.03, rng.integers(1, 9, (H, W)), 0)
    markers[:, : W // 3] = 0                          # pieces without a marker
    markers[~mask & (rng.random((H, W)) < 0.2)] = 50  # the largest marker, outside the mask
    monkeypatch.setattr(ws, "SERIAL_PIXELS", 1)
    monkeypatch.setattr(ws, "BAND_PIXELS", 7 * W)     # several bands of 7 rows
    monkeypatch.setattr(pool, "_num_threads", threads)
    expected = _add_unseeded(seeded_watershed_reference(image, markers, mask), mask)
    got = ws.seeded_watershed(image, markers, mask, unseeded=True)
    assert ndimage.label(mask)[1] > 20 and expected.max() > markers[mask].max() > 0
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_compiled_foreground_and_elevation_equal_numpys_arithmetic(dtype, threads,
                                                                   monkeypatch):
    """kernels/watershed.foreground_and_elevation in row bands: NumPy's (1.0 - p_background)
    > fg_thresh and 1.0 - p_interior to the bit, float32 and float64, odd sizes, values with
    1 - p equal to the threshold (strict >), and thresholds a float32 cannot hold (NumPy
    rounds them to float32 before comparing, so 0.49999999 is 0.5 there)."""
    from minunet.kernels import threads as pool
    from minunet.kernels import watershed as ws
    from minunet.postprocess import _foreground_and_elevation

    monkeypatch.setattr(ws, "SERIAL_PIXELS", 1)
    monkeypatch.setattr(ws, "BAND_PIXELS", 5 * 61)
    monkeypatch.setattr(pool, "_num_threads", threads)
    rng = np.random.default_rng(3)
    p_background = rng.random((47, 61)).astype(dtype)
    p_background[rng.random((47, 61)) < 0.2] = 0.5    # 1 - p == 0.5 exactly
    p_background[:3] = np.nextafter(dtype(0.5), dtype(0))   # 1 - p rounds to 0.5 in float32
    p_interior = rng.random((47, 61)).astype(dtype)
    for fg_thresh in (0.5, 0.49999999, 0.50000001, 0.3, 0.0, 1.0, float("nan"), 1,
                      np.float64(0.49999999)):          # NumPy compares this one in float64
        foreground, elevation = _foreground_and_elevation(p_background, p_interior, fg_thresh)
        np.testing.assert_array_equal(foreground, (1.0 - p_background) > fg_thresh)
        assert elevation.dtype == dtype
        np.testing.assert_array_equal(elevation.view(np.uint8),
                                      (1.0 - p_interior).view(np.uint8))


def test_probability_range_over_chunks_equals_numpys_min_and_max(monkeypatch):
    """_probability_range over chunks on the pool's threads: probs.min() and probs.max(),
    a NaN or inf in any one chunk showing as NumPy shows it, float32 and float64,
    non-contiguous arrays and a last chunk shorter than the rest."""
    from minunet import postprocess
    from minunet.kernels import threads as pool

    monkeypatch.setattr(postprocess, "RANGE_CHUNK", 1000)
    monkeypatch.setattr(pool, "_num_threads", 2)
    rng = np.random.default_rng(4)
    for dtype in (np.float32, np.float64):
        probs = rng.random((3, 41, 53)).astype(dtype)
        probs[1, 20, 7] = -0.25                       # the min, in a middle chunk
        probs[2, 40, 52] = 1.75                       # the max, in the short last chunk
        for x in (probs, probs[:, ::2, 1:]):
            assert postprocess._probability_range(x) == (float(x.min()), float(x.max()))
        for value in (np.nan, np.inf, -np.inf):
            bad = probs.copy()
            bad[1, 30, 30] = value
            lo, hi = postprocess._probability_range(bad)
            assert not (np.isfinite(lo) and np.isfinite(hi))
            np.testing.assert_array_equal([lo, hi], [bad.min(), bad.max()])


@pytest.mark.parametrize(
    ("value", "error", "words"),
    [(np.nan, FloatingPointError, "1 NaN and 0 inf"), (-np.inf, FloatingPointError, "1 inf"),
     (1.5, ValueError, r"\[0, 1.5\]"), (-0.2, ValueError, r"\[-0.2, 1\]")],
)
def test_clear_errors_for_one_bad_value_in_a_large_image(value, error, words):
    """One bad value among 3 x 512 x 512 probabilities (checked in chunks on the pool's
    threads) gives the error the whole array's min and max give."""
    probs = np.zeros((3, 512, 512), np.float32)
    probs[0] = 1.0
    probs[2, 300, 401] = value
    with pytest.raises(error, match=words):
        to_instances(probs)
