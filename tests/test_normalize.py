"""The default normalisation: the typical cell's level is set by the typical cell."""

import numpy as np
import pytest

import minunet as mu
from minunet.predict import DEFAULT_NORMALIZATION, normalize


def cell_level(image, labels, norm):
    x = normalize(image, norm)
    return np.median([np.median(x[labels == k]) for k in range(1, labels.max() + 1)])


def test_a_few_bright_cells_do_not_dim_the_rest():
    clean = {"photons": 1e9, "read_noise": 0.0, "contrast": 0.2, "contrast_std": 0.02}
    images, labels, _ = mu.data.generate(3, size=(192, 192), seed=4, **clean)
    bright, _, _ = mu.data.generate(3, size=(192, 192), seed=4, bright_fraction=0.05,
                                    bright_gain=3.0, **clean)
    percentile = {"method": "percentile", "low": 1.0, "high": 99.8}
    for norm, most in ((DEFAULT_NORMALIZATION, 0.08), (percentile, None)):
        before = np.mean([cell_level(im, lab, norm) for im, lab in zip(images, labels,
                                                                        strict=True)])
        after = np.mean([cell_level(im, lab, norm) for im, lab in zip(bright, labels,
                                                                       strict=True)])
        drop = 1 - after / before
        if most is None:
            assert drop > 0.2         # the old default: bright cells dim every other cell
        else:
            assert drop < most


def test_sparse_and_dense_images_agree():
    levels = []
    for density in (4.0, 34.0, 60.0):
        images, labels, _ = mu.data.generate(4, size=(192, 192), seed=5, density=density)
        levels.append(np.mean([cell_level(im, lab, DEFAULT_NORMALIZATION)
                               for im, lab in zip(images, labels, strict=True)]))
    assert max(levels) < 1.25 * min(levels)


def test_flat_image_is_centred():
    out = normalize(np.full((8, 8), 7.0))
    np.testing.assert_array_equal(out, 0.0)


def _plain_foreground_normalize(image):
    """The foreground stretch written out whole-array, as `normalize` documents it."""
    from scipy.ndimage import gaussian_filter
    from skimage.filters import threshold_otsu

    gray = image.astype(np.float64)
    lo = np.percentile(gray, 1.0)
    smooth = gaussian_filter(gray, 1.0)
    median = np.median(gray[smooth > threshold_otsu(smooth)])
    diff = np.diff(gray, axis=1).ravel()
    sigma = np.median(np.abs(diff - np.median(diff))) / (0.6745 * np.sqrt(2.0))
    scale = max(median - lo, 6.0 * sigma) / 0.6
    return ((gray - lo) / scale).astype(np.float32)


def test_normalize_is_lean_and_equals_the_whole_array_formula():
    """normalize computes its statistics in place and its stretch block by block: the same bits
    as the whole-array formula, and at most 3 float64 copies of the image at once (a 4096^2
    image: 384 MiB; the whole-array way held 4: 512 MiB)."""
    import tracemalloc

    rng = np.random.default_rng(1)
    image = rng.integers(0, 4000, (1024, 1024), dtype=np.uint16)
    image[200:400, 300:700] += 3000                         # a bright object: a foreground
    expected = _plain_foreground_normalize(image)
    tracemalloc.start()
    try:
        got = mu.normalize(image)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got, expected)
    assert peak < 3.0 * image.size * 8, peak / (image.size * 8)


@pytest.mark.parametrize("dtype, shape, seed", [(np.uint16, (64, 97), 0), (np.uint8, (50, 50), 1),
                                                (np.int16, (33, 80), 2), (np.uint16, (1, 40), 3),
                                                (np.uint16, (7, 2), 4)])
@pytest.mark.parametrize("method", ["foreground", "percentile"])
def test_counting_gives_the_float_path_to_the_bit(dtype, shape, seed, method):
    """8/16-bit images take their percentiles and medians by counting (kernels/ranks.py);
    the same image as float64 takes np.percentile / np.median: the same bits out, on cells
    with noise, on a flat image, and on an image of two values (even counts, half medians)."""
    from minunet.kernels import ranks

    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    cells = rng.normal(0.3, 0.1, shape) + 0.4 * (rng.random(shape) > 0.7)
    images = [np.clip(cells * min(info.max, 5000), info.min, info.max).astype(dtype),
              np.full(shape, 7, dtype), (rng.random(shape) > 0.5).astype(dtype) * 9]
    norm = {"method": method, "low": 1.0, "level": 0.6, "high": 99.8}
    for image in images:
        assert ranks.small_integers(image) is not None
        np.testing.assert_array_equal(normalize(image, norm),
                                      normalize(image.astype(np.float64), norm))
    values = rng.integers(-300, 300, 1001)
    counts = ranks.value_counts(values)
    for q in (0, 1, 37.5, 50, 99.8, 100):
        assert ranks.percentile(*counts, q) == np.percentile(values.astype(np.float64), q)
    assert ranks.median(*counts) == np.median(values.astype(np.float64))
    even = ranks.value_counts(values[:-1])
    assert ranks.median(*even) == np.median(values[:-1].astype(np.float64))
    centre = ranks.median(*even)
    assert ranks.mad(*even, centre) == np.median(np.abs(values[:-1] - centre))


@pytest.mark.parametrize("threaded", [False, True])
@pytest.mark.parametrize("shape", [(1, 7), (3, 3), (5, 200), (64, 97), (300, 41)])
def test_compiled_gaussian_and_histogram_are_scipy_and_numpy_to_the_bit(shape, threaded,
                                                                        monkeypatch):
    """foreground_median's smoothing and histogram (kernels/smooth.py) against
    scipy.ndimage.gaussian_filter (mode "reflect", short lines included) and np.histogram;
    16-bit images read as they are; in the calling thread and in bands of 64 rows on the
    pool's threads."""
    from scipy.ndimage import gaussian_filter

    from minunet.kernels import smooth
    from minunet.predict import FOREGROUND_SMOOTH, OTSU_BINS

    if threaded:
        monkeypatch.setattr(smooth, "SERIAL_PIXELS", 0)
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    counts16 = (rng.random(shape) * 4000).round()
    for gray, given in [(counts16, counts16.copy()), (counts16, counts16.astype(np.uint16)),
                        (rng.standard_normal(shape),) * 2]:
        expected = gaussian_filter(gray, FOREGROUND_SMOOTH)
        got = smooth.gaussian_filter(given, smooth.gaussian_weights(FOREGROUND_SMOOTH))
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, expected)
        counts, edges = np.histogram(expected, bins=OTSU_BINS)
        got_counts, got_edges = smooth.histogram(expected, OTSU_BINS)
        np.testing.assert_array_equal(got_counts, counts)
        np.testing.assert_array_equal(got_edges, edges)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.int64])
def test_compiled_counts_equal_bincount(dtype):
    """ranks.value_counts and difference_counts (compiled, no widened copies) against
    np.bincount of the values (and of np.diff's neighbour differences) shifted by their
    minimum; a single value and a one-row image included."""
    from minunet.kernels import ranks

    rng = np.random.default_rng(3)
    info = np.iinfo(dtype)
    for shape in [(1, 1), (1, 5), (37, 61)]:
        image = rng.integers(max(info.min, -3000), min(info.max, 3000), shape, endpoint=True
                             ).astype(dtype)
        counts, offset = ranks.value_counts(image)
        wide = image.astype(np.int64).ravel()
        assert offset == wide.min()
        np.testing.assert_array_equal(counts, np.bincount(wide - wide.min()))
        if shape[1] > 1:
            diffs = np.diff(image.astype(np.int64), axis=1).ravel()
            counts, offset = ranks.difference_counts(image)
            assert offset == diffs.min()
            np.testing.assert_array_equal(counts, np.bincount(diffs - diffs.min()))


def test_otsu_threshold_equals_skimage():
    """predict.otsu_threshold (no skimage import on predict's path) gives skimage's threshold,
    value and type, on histograms with empty ends, one-sided mass and random counts."""
    from skimage.filters import threshold_otsu

    from minunet.predict import otsu_threshold

    rng = np.random.default_rng(4)
    centers = np.linspace(-1.5, 7.25, 256)
    cases = [rng.integers(0, 1000, 256), np.r_[np.zeros(10, int), rng.integers(1, 50, 200),
                                               np.zeros(46, int)]]
    two = np.zeros(256, int)
    two[[20, 30, 200, 240]] = [500, 20, 7, 900]
    cases.append(two)
    for _ in range(20):
        counts = rng.poisson(rng.uniform(0, 30, 256)).astype(np.int64)
        counts[rng.integers(0, 256, 40)] = 0
        cases.append(counts)
    for counts in cases:
        expected = threshold_otsu(hist=(counts, centers))
        got = otsu_threshold(counts, centers)
        assert got == expected and type(got) is type(expected)


def _force_threads(monkeypatch):
    """Run the kernels of kernels/smooth.py and kernels/ranks.py on the pool's threads (and
    the counting in one pass per possible value) even for small images."""
    from minunet.kernels import ranks, smooth

    monkeypatch.setattr(smooth, "SERIAL_PIXELS", 0)
    monkeypatch.setattr(ranks, "SERIAL_PIXELS", 0)


def _plain_percentile_normalize(image):
    gray = image.astype(np.float64)
    lo, hi = np.percentile(gray, [1.0, 99.8])
    return ((gray - lo) / (hi - lo)).astype(np.float32)


@pytest.mark.parametrize("threaded", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64])
def test_normalize_equals_the_whole_array_formulas_to_the_bit(dtype, threaded, monkeypatch):
    """Both methods, every input type, on an odd-sized image (H != W, neither a multiple of
    the bands), in the calling thread and on the pool's threads: the same bits as the
    formulas written out whole-array with scipy, skimage and NumPy."""
    if threaded:
        _force_threads(monkeypatch)
    rng = np.random.default_rng(11)
    shape = (131, 77)
    cells = rng.normal(0.3, 0.1, shape) + 0.4 * (rng.random(shape) > 0.7)
    if np.issubdtype(dtype, np.integer):
        image = np.clip(cells * 200 if dtype == np.uint8 else cells * 5000 - 900,
                        np.iinfo(dtype).min, np.iinfo(dtype).max).astype(dtype)
    else:
        image = (cells * 3.7 - 1.1).astype(dtype)
    np.testing.assert_array_equal(normalize(image), _plain_foreground_normalize(image))
    np.testing.assert_array_equal(normalize(image, {"method": "percentile"}),
                                  _plain_percentile_normalize(image))


def test_an_image_with_nan_or_inf_is_refused():
    for bad in (np.nan, np.inf):
        image = np.ones((40, 30))
        image[3, 4] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            normalize(image)


@pytest.mark.parametrize("threaded", [False, True])
@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.3, 2.2])
def test_smoothing_and_its_range_are_scipys_for_every_radius(sigma, threaded, monkeypatch):
    """gaussian_filter_range: scipy's gaussian_filter to the bit and its min and max, for
    radii under 4 taps (sigma 0.5: r = 2), 4 (one pass of four), 5 (four, then one) and 9,
    on short and odd-sized images."""
    from scipy.ndimage import gaussian_filter

    from minunet.kernels import smooth

    if threaded:
        _force_threads(monkeypatch)
    rng = np.random.default_rng(int(sigma * 10))
    weights = smooth.gaussian_weights(sigma)
    for shape in [(1, 1), (2, 9), (70, 3), (129, 66)]:
        for image in (rng.integers(0, 60000, shape).astype(np.uint16),
                      rng.integers(-128, 127, shape).astype(np.int8),
                      rng.standard_normal(shape) * 1e3):
            expected = gaussian_filter(image.astype(np.float64), sigma)
            got, lo, hi = smooth.gaussian_filter_range(image, weights)
            np.testing.assert_array_equal(got, expected)
            assert (lo, hi) == (expected.min(), expected.max())


def _numpy_histogram_rule(values, bins):
    """np.histogram's equal-bin rule written out (numpy/lib/_histograms_impl.py): the guess
    int((x - first) / span * bins), the last bin closed, then one step down where x is below
    the guessed bin's edge, one up where it is at or above the next. np.histogram itself
    refuses edges that are not all distinct; this rule still counts there."""
    values = values.ravel()
    first, last = values.min(), values.max()
    edges = np.linspace(first, last, bins + 1)
    index = ((values - first) / (last - first) * bins).astype(np.intp)
    index[index == bins] -= 1
    index[values < edges[index]] -= 1
    index[(values >= edges[index + 1]) & (index != bins - 1)] += 1
    return np.bincount(index, minlength=bins), edges


@pytest.mark.parametrize("threaded", [False, True])
def test_histogram_puts_values_on_the_edges_in_numpys_bins(threaded, monkeypatch):
    """smooth.histogram against np.histogram's rule where the bin is decided by the edge
    test: values exactly on every edge and one float64 step either side of it, the last edge
    (closed), a huge offset with a tiny span (edges a few ulps apart, several equal: there
    np.histogram raises), and a span so small that np.linspace's step is 0 (its other
    formula for the edges)."""
    from minunet.kernels import smooth

    if threaded:
        _force_threads(monkeypatch)
    rng = np.random.default_rng(5)
    for first, last in [(-3.7, 1234.5), (0.0, 1.0), (1e9, 1e9 + 3e-6), (0.0, 5e-322)]:
        edges = np.linspace(first, last, 257)
        values = np.concatenate([edges, np.nextafter(edges, np.inf),
                                 np.nextafter(edges, -np.inf), rng.uniform(first, last, 2000)])
        values = np.clip(values, first, last)[:2765].reshape(-1, 7)    # (395, 7)
        expected_counts, expected_edges = _numpy_histogram_rule(values, 256)
        if last - first >= 1.0:                 # distinct edges: NumPy itself agrees
            np.testing.assert_array_equal(np.histogram(values, 256)[0], expected_counts)
        counts, got_edges = smooth.histogram(values, 256)
        np.testing.assert_array_equal(counts, expected_counts)
        np.testing.assert_array_equal(got_edges, expected_edges)


@pytest.mark.parametrize("threaded", [False, True])
def test_compiled_stretch_is_numpys_float64_expression(threaded, monkeypatch):
    """smooth.stretch: ((gray - lo) / scale).astype(np.float32) to the bit (one rounding, from
    float64) for 8-/16-bit integers and float64, on odd sizes; float32, which NumPy would
    compute in float32, is refused rather than rounded differently."""
    from minunet.kernels import smooth

    if threaded:
        _force_threads(monkeypatch)
    rng = np.random.default_rng(6)
    for shape in [(1, 1), (3, 70), (67, 33)]:
        for gray in (rng.integers(0, 255, shape).astype(np.uint8),
                     rng.integers(0, 65535, shape).astype(np.uint16),
                     rng.integers(-30000, 30000, shape).astype(np.int16),
                     rng.standard_normal(shape) * 1e4):
            for lo, scale in [(3.0, 100.0), (np.float64(-1.25), np.float64(0.3717)),
                              (1e-3, 1e-300)]:                    # the last: float32 inf
                expected = ((gray - lo) / scale).astype(np.float32)
                np.testing.assert_array_equal(smooth.stretch(gray, lo, scale), expected)
    with pytest.raises(TypeError, match="float32"):
        smooth.stretch(np.ones((2, 2), np.float32), 0.0, 1.0)


@pytest.mark.parametrize("threaded", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16])
def test_counts_of_the_values_above_a_threshold(dtype, threaded, monkeypatch):
    """ranks.value_counts_above(values, key, t) == value_counts(values[key > t]) (the
    comparison in float64, ties at t excluded), an empty selection included; and the
    one-pass value_counts / difference_counts of large images equal np.bincount."""
    from minunet.kernels import ranks

    if threaded:
        _force_threads(monkeypatch)
    rng = np.random.default_rng(7)
    info = np.iinfo(dtype)
    for shape in [(1, 1), (5, 1), (97, 41)]:
        values = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
        key = rng.integers(0, 5, shape) + 0.5 * rng.random(shape)
        for threshold in (np.float64(2.0), 2.25, key.max(), -1.0):
            chosen = values[key > threshold]
            counts, offset = ranks.value_counts_above(values, key, threshold)
            if chosen.size == 0:
                assert counts.size == 0
                continue
            wide = chosen.astype(np.int64)
            assert offset == wide.min()
            np.testing.assert_array_equal(counts, np.bincount(wide - wide.min()))
        wide = values.astype(np.int64)
        counts, offset = ranks.value_counts(values)
        assert offset == wide.min()
        np.testing.assert_array_equal(counts, np.bincount(wide.ravel() - wide.min()))
        if shape[1] > 1:
            diffs = np.diff(wide, axis=1).ravel()
            counts, offset = ranks.difference_counts(values)
            assert offset == diffs.min()
            np.testing.assert_array_equal(counts, np.bincount(diffs - diffs.min()))
