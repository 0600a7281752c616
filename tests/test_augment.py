"""Joint augmentation: image, labels and weight move together; labels stay valid integers."""

import numpy as np
import pytest
from scipy.ndimage import binary_erosion, zoom

import minunet as mu
from minunet.data.augment import _spline_matrix, elastic_coordinates

GEOMETRY_ONLY = {"intensity": False, "noise": False}


def sample(size=(64, 64), seed=0):
    images, labels, _ = mu.data.generate(1, size=size, seed=seed, density=60.0)
    return images[0], labels[0]


def dihedral(x, k, flip_rows, flip_cols):
    if flip_rows:
        x = np.flip(x, -2)
    if flip_cols:
        x = np.flip(x, -1)
    return np.rot90(x, k, axes=(-2, -1))


def test_flips_and_rotations_move_everything_together():
    image, labels = sample()
    weight = mu.data.weight_map(labels)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(40):
        im, lab, w = mu.data.augment(image, labels, rng, weight=weight, elastic=False,
                                     **GEOMETRY_ONLY)
        match = [(k, fr, fc) for k in range(4) for fr in (0, 1) for fc in (0, 1)
                 if np.array_equal(lab, dihedral(labels, k, fr, fc))
                 and np.array_equal(im, dihedral(image, k, fr, fc))
                 and np.array_equal(w, dihedral(weight, k, fr, fc))]
        assert match
        seen.add(match[0])
    assert len(seen) >= 6                      # the transforms really vary


def test_non_square_keeps_its_shape():
    image, labels = sample(size=(48, 80))
    rng = np.random.default_rng(1)
    for _ in range(10):
        im, lab, w = mu.data.augment(image, labels, rng)
        assert im.shape == lab.shape == (48, 80) and w is None


def test_elastic_keeps_label_ids_and_moves_image_labels_weight_together():
    _, labels = sample(size=(72, 88), seed=2)
    # image and weight that are functions of the labels: after warping they must still agree
    image = (labels % 7).astype(np.float32) / 7
    weight = labels.astype(np.float64)
    rng = np.random.default_rng(3)
    for _ in range(5):
        im, lab, w = mu.data.augment(image, labels, rng, weight=weight, flip=False,
                                     rot90=False, **GEOMETRY_ONLY)
        assert lab.dtype == labels.dtype and w.dtype == weight.dtype and im.dtype == np.float32
        assert set(np.unique(lab)) <= set(np.unique(labels))
        assert not np.array_equal(lab, labels)                    # it did deform
        # away from label edges (where interpolation mixes ids) the three agree; a rare fold
        # of the warp (displacements of 10 px over a 36 px grid spacing) may break a few pixels
        inner = np.ones_like(lab, bool)
        for k in np.unique(lab):
            inner &= ~(binary_erosion(lab != k, iterations=2) ^ (lab != k))
        inner = binary_erosion(inner, iterations=3)      # warps stretch distances by ~1.5x
        assert inner.mean() > 0.3
        assert np.mean(np.abs(w[inner] - lab[inner]) < 1e-6) > 0.995
        # (cubic splines ring a little near steps: 0.02 of a 0.14 step)
        assert np.mean(np.abs(im[inner] - (lab[inner] % 7) / 7) < 0.02) > 0.995
        assert im.min() >= image.min() and im.max() <= image.max()


def test_elastic_class_targets_stay_classes():
    _, labels = sample(seed=4)
    classes = mu.data.three_class(labels)
    rng = np.random.default_rng(5)
    _, out, _ = mu.data.augment(np.zeros(classes.shape, np.float32), classes, rng)
    assert out.dtype == np.int64 and set(np.unique(out)) <= {0, 1, 2}


def test_elastic_displacements_follow_the_coarse_grid():
    rng = np.random.default_rng(6)
    H, W, sigma = 65, 33, 10.0                      # odd sides: the middle grid point is a pixel
    rows, cols = elastic_coordinates(rng, H, W, sigma, 3)
    coarse = np.random.default_rng(6).normal(0.0, sigma, (2, 3, 3))
    grid_r, grid_c = np.meshgrid([0, H // 2, H - 1], [0, W // 2, W - 1], indexing="ij")
    np.testing.assert_allclose(rows[grid_r, grid_c] - grid_r, coarse[0], atol=1e-9)
    np.testing.assert_allclose(cols[grid_r, grid_c] - grid_c, coarse[1], atol=1e-9)
    # smooth: neighbouring pixels move by nearly the same amount
    assert np.abs(np.diff(rows - np.arange(H)[:, None], axis=0)).max() < 2.0


def test_separable_spline_equals_2d_zoom():
    coarse = np.random.default_rng(7).normal(size=(3, 3))
    want = zoom(coarse, (57 / 3, 40 / 3), order=3, mode="mirror", grid_mode=False)
    got = _spline_matrix(57, 3) @ coarse @ _spline_matrix(40, 3).T
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_multichannel_image_channels_move_identically():
    image, labels = sample(seed=8)
    stack = np.stack([image, image, image])
    rng = np.random.default_rng(9)
    im, _, _ = mu.data.augment(stack, labels, rng, **GEOMETRY_ONLY)
    assert im.shape == stack.shape
    np.testing.assert_array_equal(im[0], im[2])


def test_intensity_and_noise_change_only_the_image():
    image, labels = sample(seed=10)
    copy_image, copy_labels = image.copy(), labels.copy()
    rng = np.random.default_rng(11)
    im, lab, _ = mu.data.augment(image, labels, rng, flip=False, rot90=False, elastic=False)
    np.testing.assert_array_equal(lab, labels)
    assert not np.allclose(im, image) and im.min() >= 0 and im.max() <= 1
    np.testing.assert_array_equal(image, copy_image)           # inputs untouched
    np.testing.assert_array_equal(labels, copy_labels)
    # noise alone raises the pixel-to-pixel differences
    plain, _, _ = mu.data.augment(image, labels, np.random.default_rng(1), flip=False,
                                  rot90=False, elastic=False, intensity=False, noise=False)
    noisy, _, _ = mu.data.augment(image, labels, np.random.default_rng(1), flip=False,
                                  rot90=False, elastic=False, intensity=False, noise_std=0.2)
    assert np.diff(noisy, axis=1).std() > 1.2 * np.diff(plain, axis=1).std()


def test_bad_inputs_are_refused():
    image, labels = sample()
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown knob.*wobble.*valid knobs"):
        mu.data.augment(image, labels, rng, wobble=1.0)
    with pytest.raises(TypeError, match="labels must be an integer"):
        mu.data.augment(image, labels.astype(np.float32), rng)
    with pytest.raises(ValueError, match="image must be float"):
        mu.data.augment(image[:10], labels, rng)
    with pytest.raises(ValueError, match="weight must be"):
        mu.data.augment(image, labels, rng, weight=np.ones((3, 3)))


def test_elastic_uses_one_warp_for_all_three():
    """Replaying the generator: labels, image and weight are sampled at the same coordinates."""
    from scipy.ndimage import map_coordinates
    _, labels = sample(size=(56, 72), seed=12)
    image = np.random.default_rng(13).random(labels.shape).astype(np.float32)
    weight = np.random.default_rng(14).random(labels.shape)
    im, lab, w = mu.data.augment(image, labels, np.random.default_rng(15), weight=weight,
                                 flip=False, rot90=False, **GEOMETRY_ONLY)
    rows, cols = elastic_coordinates(np.random.default_rng(15), 56, 72, 10.0, 3)
    np.testing.assert_array_equal(
        lab, map_coordinates(labels, [rows, cols], order=0, mode="reflect"))
    np.testing.assert_allclose(
        w, map_coordinates(weight, [rows, cols], order=1, mode="reflect"), rtol=1e-12)
    want = np.clip(map_coordinates(image.astype(np.float64), [rows, cols], order=3,
                                   mode="reflect"), image.min(), image.max())
    np.testing.assert_allclose(im, want, rtol=1e-5, atol=1e-6)


def test_warped_ramp_and_bands_agree():
    """Semantic check: an image that encodes the column and labels that encode column bands
    still agree after warping (a shift of the labels by a pixel would break this)."""
    H, W, band = 64, 80, 8
    cols = np.broadcast_to(np.arange(W, dtype=np.float32), (H, W))
    image = cols / W
    labels = (cols // band).astype(np.int32) + 1
    rng = np.random.default_rng(16)
    for _ in range(4):
        im, lab, _ = mu.data.augment(image, labels, rng, flip=False, rot90=False,
                                     **GEOMETRY_ONLY)
        source_col = im * W                  # where each output pixel sampled from
        clear = (np.abs(source_col / band - np.round(source_col / band)) * band > 0.6) \
            & (source_col > 1) & (source_col < W - 2)          # off band edges and borders
        assert clear.mean() > 0.5
        np.testing.assert_array_equal(lab[clear], (source_col[clear] // band).astype(int) + 1)
