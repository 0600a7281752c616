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
