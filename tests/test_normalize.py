"""The default normalisation: the typical cell's level is set by the typical cell."""

import numpy as np

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
