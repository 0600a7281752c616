"""The synthetic cell model: exact labels, determinism, presets, and every knob doing its job."""

import numpy as np
import pytest
from scipy.ndimage import binary_dilation, laplace
from skimage.measure import label as connected
from skimage.measure import regionprops

import minunet as mu
from minunet.data.instances import make_connected
from minunet.data.presets import SHIFTS, STANDARD, preset_params

# A camera and microscope that add nothing: isolates one knob's effect on the scene.
CLEAN = {"photons": 1e9, "read_noise": 0.0, "blur": 0.0}
BRIGHTNESS_MARGIN = 0.1   # standard: cell median minus its surrounding background median
SIZE = (128, 160)         # odd-shaped, small: fast, and catches H/W mix-ups


def check_exact_labels(labels, min_size):
    for lab in labels:
        n = lab.max()
        ids = np.unique(lab)
        assert ids.tolist() == list(range(n + 1)) or (n == 0 and ids.tolist() == [0])
        sizes = np.bincount(lab.ravel())[1:]
        assert sizes.min(initial=min_size) >= min_size
        # one 4-connected piece per id: connected regions of equal value == number of ids
        assert connected(lab, background=0, connectivity=1).max() == n


@pytest.mark.parametrize("preset", ["standard", "shift-dense", "shift-small", "shift-shape",
                                    "shift-combined"])
def test_labels_are_exact(preset):
    images, labels, info = mu.data.generate(4, preset, size=SIZE, seed=3)
    assert images.shape == labels.shape == (4, *SIZE)
    assert images.dtype == np.float32 and labels.dtype == np.int32
    assert images.min() >= 0 and images.max() <= 1
    assert (labels.max(axis=(1, 2)) > 3).all()
    check_exact_labels(labels, info["params"]["min_size"])


def test_cells_brighter_than_local_background():
    images, labels, _ = mu.data.generate(4, "standard", seed=11)
    worst = np.inf
    for image, lab in zip(images, labels, strict=True):
        for region in regionprops(lab):
            cell = lab == region.label
            ring = binary_dilation(cell, iterations=8) & ~binary_dilation(cell, iterations=3)
            ring &= lab == 0
            if ring.sum() < 20:          # a cell boxed in by neighbours has no background ring
                continue
            worst = min(worst, np.median(image[cell]) - np.median(image[ring]))
    assert worst >= BRIGHTNESS_MARGIN


def test_distractors_are_unlabelled_and_off_cells():
    kw = {**CLEAN, "gradient": 0.0, "vignetting": 0.0, "blobs": 0.0}
    im0, lab0, _ = mu.data.generate(3, size=SIZE, seed=5, debris=0.0, **kw)
    im1, lab1, _ = mu.data.generate(3, size=SIZE, seed=5, debris=30.0, **kw)
    np.testing.assert_array_equal(lab0, lab1)          # debris never changes the labels
    changed = ~np.isclose(im0, im1, atol=1e-3)        # the camera adds ~2e-5 here
    assert changed.sum() > 100                         # ... but it is there
    assert not (changed & (lab0 > 0)).any()            # ... and only off the cells
    _, blob_lab, _ = mu.data.generate(3, size=SIZE, seed=5, debris=0.0, **{**kw, "blobs": 20.0})
    np.testing.assert_array_equal(blob_lab, lab0)


def test_determinism_and_independence_of_n():
    a_im, a_lab, _ = mu.data.generate(2, size=SIZE, seed=7)
    b_im, b_lab, _ = mu.data.generate(5, size=SIZE, seed=7)
    np.testing.assert_array_equal(a_im, b_im[:2])
    np.testing.assert_array_equal(a_lab, b_lab[:2])
    c_im, _, _ = mu.data.generate(2, size=SIZE, seed=8)
    assert not np.array_equal(a_im, c_im)


def test_regenerate_from_params():
    images, labels, info = mu.data.generate(2, "shift-noise", size=SIZE, seed=2, density=20)
    again, again_labels, _ = mu.data.regenerate(info)
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, again_labels)
    assert info["overrides"] == {"density": 20.0}


def test_unknown_override_names_valid_knobs():
    with pytest.raises(ValueError, match="unknown knob.*noise_level.*valid knobs:.*photons"):
        mu.data.generate(1, noise_level=3)
    with pytest.raises(ValueError, match="unknown preset"):
        mu.data.generate(1, "shift-everything")
    with pytest.raises(ValueError, match="density"):
        mu.data.generate(1, density=-1)


def test_presets_document_exactly_what_they_change():
    required = {"standard", "shift-combined", "reference", "reference-shifted"}
    assert required <= set(mu.data.PRESETS)
    shifts = [p for p in mu.data.PRESETS if p.startswith("shift-") and p != "shift-combined"]
    assert len(shifts) >= 8
    for name in [*shifts, "shift-combined"]:
        params = preset_params(name)
        changed = {k for k in STANDARD if params[k] != STANDARD[k]}
        assert changed == set(SHIFTS[name][1])
        for knob in changed:
            assert knob in mu.data.PRESETS[name]


# ---- every knob measurably does what it says -----------------------------------------------

def noise_std(images, labels):
    """Robust noise estimate on background pixels: MAD of the Laplacian residual."""
    residual = np.stack([laplace(im.astype(np.float64)) for im in images])
    far = np.stack([~binary_dilation(lab > 0, iterations=3) for lab in labels])
    r = residual[far]
    return 1.4826 * np.median(np.abs(r - np.median(r))) / np.sqrt(20.0)


def touching_fraction(labels):
    touching, total = 0, 0
    for lab in labels:
        n = lab.max()
        pairs = [(lab[:, 1:], lab[:, :-1]), (lab[1:, :], lab[:-1, :])]
        hit = np.zeros(n + 1, bool)
        for a, b in pairs:
            m = (a != b) & (a > 0) & (b > 0)
            hit[a[m]] = True
            hit[b[m]] = True
        touching += hit[1:].sum()
        total += n
    return touching / total


def test_noise_knob_and_preset_raise_noise():
    im0, lab0, _ = mu.data.generate(3, size=SIZE, seed=1)
    im1, lab1, _ = mu.data.generate(3, "shift-noise", size=SIZE, seed=1)
    assert noise_std(im1, lab1) > 1.5 * noise_std(im0, lab0)


def test_density_raises_count_and_touching():
    _, sparse, _ = mu.data.generate(6, size=(192, 192), seed=4, density=20.0)
    _, dense, _ = mu.data.generate(6, size=(192, 192), seed=4, density=60.0)
    assert dense.max(axis=(1, 2)).mean() > 2 * sparse.max(axis=(1, 2)).mean()
    assert touching_fraction(dense) > touching_fraction(sparse) + 0.1
    _, apart, _ = mu.data.generate(6, size=(192, 192), seed=4, touching=0.0)
    _, together, _ = mu.data.generate(6, size=(192, 192), seed=4, touching=0.6)
    assert touching_fraction(together) > touching_fraction(apart) + 0.25
    _, crowded, _ = mu.data.generate(6, "shift-dense", size=(192, 192), seed=4)
    _, standard, _ = mu.data.generate(6, size=(192, 192), seed=4)
    assert touching_fraction(crowded) > touching_fraction(standard) + 0.15


def test_blur_widens_edges():
    edges = []
    for blur in (1.0, 2.2):
        images, labels, _ = mu.data.generate(3, size=SIZE, seed=6, **{**CLEAN, "blur": blur})
        grad = [np.hypot(*np.gradient(im.astype(np.float64))) for im in images]
        edge = [mu.data.three_class(lab) == 2 for lab in labels]
        # the same contrast step spread over a wider edge has a smaller slope
        edges.append(np.mean([g[e].mean() for g, e in zip(grad, edge, strict=True)]))
    assert edges[1] < 0.75 * edges[0]


def test_radius_shape_contrast_illumination_texture_distractors():
    def stats(**kw):
        images, labels, _ = mu.data.generate(4, size=(192, 192), seed=9, **kw)
        regions = [r for lab in labels for r in regionprops(lab)]
        cell_px = np.concatenate([im[lab > 0] for im, lab in zip(images, labels, strict=True)])
        far = [~binary_dilation(lab > 0, iterations=6) for lab in labels]
        bg_px = [im[f] for im, f in zip(images, far, strict=True)]
        return {"area": np.median([r.area for r in regions]),
                "solidity": np.mean([r.solidity for r in regions]),
                "contrast": np.median(cell_px) - np.median(np.concatenate(bg_px)),
                "cell_std": np.mean([im[lab == r.label].std() for im, lab in
                                     zip(images, labels, strict=True) for r in regionprops(lab)]),
                "bright_bg": np.mean([(b > np.median(b) + 0.15).mean() for b in bg_px])}

    base = stats()
    assert stats(radius=16.0)["area"] > 1.6 * base["area"]
    assert stats(irregularity=0.2, elongation=0.5)["solidity"] < base["solidity"] - 0.02
    assert stats(contrast=0.2)["contrast"] < 0.65 * base["contrast"]
    # illumination alone: invisible cells, no distractors, a perfect camera
    empty = {"contrast": 0.0, "contrast_std": 0.0, "blobs": 0.0, "debris": 0.0, **CLEAN}
    uneven = [im.std() / im.mean() for im in mu.data.generate(
        4, size=(192, 192), seed=9, gradient=0.5, vignetting=0.45, **empty)[0]]
    even = [im.std() / im.mean() for im in mu.data.generate(4, size=(192, 192), seed=9,
                                                             **empty)[0]]
    assert np.mean(uneven) > 2.5 * np.mean(even)
    assert stats(texture=0.35, **CLEAN)["cell_std"] > 1.5 * stats(**CLEAN)["cell_std"]
    assert stats(debris=30.0, debris_intensity=0.5)["bright_bg"] > 2 * base["bright_bg"]


def test_make_connected_splits_and_hands_fragments_over():
    lab = np.zeros((9, 12), np.int32)
    lab[1:4, 1:8] = 1
    lab[1:4, 4] = 2          # cell 2 cuts cell 1 in two (occlusion)
    lab[6:8, 1:3] = 3        # a lone cell
    lab[6, 9] = 4            # a too-small speck
    out = make_connected(lab, min_size=2)
    assert out.max() == 3
    check_exact_labels(out[None], 2)
    np.testing.assert_array_equal(out[1:4, 1:4], out[1, 1])   # largest piece of 1 is kept
    assert out[1, 5] == out[1, 4]                              # cut-off piece joins its occluder
    assert out[6, 9] == 0


# ---- painting kernels against their plain reference ------------------------------------------

def random_table(rng, n, H, W, **shape_kw):
    from minunet.data import kernels as K
    from minunet.data.synth import _draw_shape
    table = np.zeros((n, K.SHAPE_COLUMNS))
    for k in range(n):
        table[k], _ = _draw_shape(rng, **shape_kw)
        table[k, K.CY] = rng.uniform(-5, H + 5)          # some cross or miss the border
        table[k, K.CX] = rng.uniform(-5, W + 5)
    return table


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_paint_kernels_match_reference(dtype, rtol):
    from minunet.data import kernels as K
    from minunet.data.synth import paint_reference
    rng = np.random.default_rng(0)
    H, W = 37, 51
    table = random_table(rng, 12, H, W, radius=6.0, radius_std=2.0, elongation=0.5,
                         irregularity=0.2)
    labels = np.zeros((H, W), np.int32)
    rho = np.zeros((H, W), dtype)
    K.paint_cells(table, labels, rho)
    want_labels, want_rho = paint_reference(table, H, W, "cells", dtype=dtype)
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_allclose(rho, want_rho, rtol=rtol, atol=0)
    levels = rng.uniform(0.1, 1.0, 12).astype(dtype)
    for mode, kernel, extra in [("debris", K.paint_debris, ()),
                                ("blobs", K.paint_blobs, (2.5,))]:
        layer = np.zeros((H, W), dtype)
        kernel(table, levels, *extra, layer)
        _, want = paint_reference(table, H, W, mode, levels=levels, soft=2.5, dtype=dtype)
        np.testing.assert_allclose(layer, want, rtol=rtol, atol=np.finfo(dtype).tiny)
        assert layer.max() > 0


# ---- the real-image knobs: brightness spread, elongation, sizes, exposure, SNR ---------------

def cell_stats(preset, n=4, size=(256, 256), seed=12, **kw):
    """Per-cell brightness above the background (clean camera), eccentricity, area; SNR."""
    images, labels, _ = mu.data.generate(n, preset, size=size, seed=seed, **kw)
    bright, ecc, area = [], [], []
    for image, lab in zip(images, labels, strict=True):
        bg = np.median(image[~binary_dilation(lab > 0, iterations=4)])
        for region in regionprops(lab):
            bright.append(np.median(image[lab == region.label]) - bg)
            ecc.append(region.eccentricity)
            area.append(region.area)
    bright = np.array(bright)
    return {"spread": np.percentile(bright, 95) / np.percentile(bright, 5),
            "bright_share": np.mean(bright > 2.5 * np.median(bright)),
            "ecc": np.median(ecc), "ecc_max": np.max(ecc), "area": np.array(area),
            "snr": np.median(bright) / noise_std(images, labels)}


def test_brightness_spread_is_heavy_tailed():
    base = cell_stats("standard", **CLEAN)
    spread = cell_stats("shift-brightness", **CLEAN)
    assert base["spread"] < 3.0 and base["bright_share"] == 0.0
    assert spread["spread"] > 5.0                      # real nuclei: about 6
    assert 0.01 < spread["bright_share"] < 0.2         # a few very bright cells, not many
    # a quarter of the cells 3 x brighter (dim enough not to saturate)
    quarter = cell_stats("standard", bright_fraction=0.25, bright_gain=3.0, contrast=0.2,
                         **CLEAN)
    assert 0.1 < quarter["bright_share"] < 0.35


def test_elongation_reaches_three_to_one():
    base, long = cell_stats("standard"), cell_stats("shift-elongated")
    assert base["ecc"] < 0.6 < 0.72 < long["ecc"]      # real nuclei: median 0.78
    assert long["ecc_max"] > 0.92                      # 3 : 1 is eccentricity 0.94
    # the cap holds: nearly every cell at the cap, 1.5 : 1 (eccentricity 0.75) or 3 : 1 (0.94)
    capped = cell_stats("standard", elongation=3.0, max_aspect=1.5, irregularity=0.0, **CLEAN)
    free = cell_stats("standard", elongation=3.0, max_aspect=3.0, irregularity=0.0, **CLEAN)
    assert 0.65 < capped["ecc"] < 0.8 < 0.9 < free["ecc"]


def test_sizes_range_from_fragments_to_large_cells():
    base, wide = cell_stats("standard")["area"], cell_stats("shift-sizes")["area"]
    assert np.percentile(wide, 2) < 0.5 * np.percentile(base, 2)
    assert wide.max() > 1.1 * base.max()
    assert wide.min() >= preset_params("shift-sizes")["min_size"]


def test_radius_spread_sizes_each_image_and_keeps_the_covered_share():
    """radius_spread: all cells of an image larger together (per image, not per cell), never
    smaller, the density falling with their area, so the cells cover about the same share."""
    from minunet.rescale import object_diameter

    def per_image(**knobs):
        _, labels, _ = mu.data.generate(12, "standard", size=(192, 192), seed=8, **knobs)
        return (np.array([object_diameter(lab) for lab in labels]),
                np.array([(lab > 0).mean() for lab in labels]))

    fixed, fixed_cover = per_image()
    spread, spread_cover = per_image(radius_spread=0.6)
    assert fixed.max() / fixed.min() < 1.2
    assert spread.max() / spread.min() > 1.45 and spread.min() > 0.9 * fixed.min()
    assert 0.75 < spread_cover.mean() / fixed_cover.mean() < 1.3


def test_broad_is_noisier_and_varies_per_image():
    # the camera's signal-to-noise (the interiors' foci and chromatin left out: they move
    # the cells' median brightness, not the noise)
    interiors_off = {"spots": 0.0, "chromatin": 0.0, "nucleoli": 0.0, "defocus": 0.0}
    assert cell_stats("broad", **interiors_off)["snr"] < 0.8 * cell_stats("standard")["snr"]
    images, labels, _ = mu.data.generate(8, "broad", size=(96, 96), seed=3)
    backgrounds = [np.median(im[lab == 0]) for im, lab in zip(images, labels, strict=True)]
    fixed, fixed_labels, _ = mu.data.generate(8, "standard", size=(96, 96), seed=3)
    fixed_bg = [np.median(im[lab == 0]) for im, lab in zip(fixed, fixed_labels, strict=True)]
    assert np.std(backgrounds) > 3 * np.std(fixed_bg)  # per-image gain and offset
    offset, _, _ = mu.data.generate(3, size=SIZE, seed=4, offset=0.3, **CLEAN)
    plain, _, _ = mu.data.generate(3, size=SIZE, seed=4, **CLEAN)
    assert np.median(offset) > np.median(plain) + 0.02
    check_exact_labels(labels, preset_params("broad")["min_size"])


def test_broad_is_documented_knob_by_knob():
    from minunet.data.presets import BROAD_CHANGES

    params = preset_params("broad")
    assert {k for k in STANDARD if params[k] != STANDARD[k]} == set(BROAD_CHANGES)
    for knob in BROAD_CHANGES:
        assert knob in mu.data.PRESETS["broad"]


# ---- what real nuclei add: chromatin, nucleoli, foci, defocus; their statistics ---------------

def test_nuclear_detail_knobs_change_the_interiors_they_name():
    from minunet.data.generate import statistics

    def stats(**knobs):
        return statistics(*mu.data.generate(3, "standard", size=SIZE, seed=6, **knobs)[:2])

    plain = stats(**CLEAN)
    assert stats(chromatin=0.4, **CLEAN)["interior_cv"] > 2 * plain["interior_cv"]
    assert stats(nucleoli=3.0, **CLEAN)["interior_cv"] > 1.5 * plain["interior_cv"]
    assert stats(spots=3.0, **CLEAN)["interior_cv"] > 1.5 * plain["interior_cv"]
    coarse = stats(texture=0.3, texture_scale=4.0, **CLEAN)
    assert coarse["texture_scale"] > 2 * stats(texture=0.3, texture_scale=1.0,
                                                **CLEAN)["texture_scale"]
    assert stats(edge_falloff=0.6, **CLEAN)["rim_ratio"] < plain["rim_ratio"] - 0.1
    assert abs(plain["diameter"] - 2 * STANDARD["radius"]) < 3


def test_defocused_cells_spread_light_past_their_outline():
    sharp, labels, _ = mu.data.generate(2, "standard", size=SIZE, seed=2, debris=0.0,
                                        blobs=0.0, **CLEAN)
    soft, soft_labels, _ = mu.data.generate(2, "standard", size=SIZE, seed=2, debris=0.0,
                                            blobs=0.0, defocus=1.0, **CLEAN)
    np.testing.assert_array_equal(labels, soft_labels)        # the labels stay the outlines
    ring = np.stack([binary_dilation(lab > 0, iterations=2) & (lab == 0) for lab in labels])
    assert soft[ring].mean() > sharp[ring].mean() + 0.02


def test_new_knobs_off_draw_nothing():
    """Presets without the new knobs keep their images: the knobs at 0 draw no numbers."""
    a, _, _ = mu.data.generate(2, "standard", size=SIZE, seed=8)
    b, _, _ = mu.data.generate(2, "standard", size=SIZE, seed=8, chromatin=0.0, nucleoli=0.0,
                               spots=0.0, defocus=0.0, texture_spread=0.0)
    np.testing.assert_array_equal(a, b)
    c, _, _ = mu.data.generate(2, "standard", size=SIZE, seed=8, chromatin=0.3)
    assert not np.array_equal(a, c)


def test_shift_chromatin_and_uneven_are_what_they_say():
    from minunet.data.generate import statistics

    def stats(preset):
        return statistics(*mu.data.generate(3, preset, size=SIZE, seed=4)[:2])

    base = stats("standard")
    assert stats("shift-chromatin")["interior_cv"] > 1.5 * base["interior_cv"]
    assert stats("shift-uneven")["rim_ratio"] < base["rim_ratio"] - 0.08
