"""Object scale: measured and estimated diameters, and prediction at another scale."""

import numpy as np
import pytest

import minunet as mu
from minunet import rescale
from minunet.predict import predict


def disc_labels(shape, centres, radius):
    rows, cols = np.indices(shape)
    lab = np.zeros(shape, np.int32)
    for k, (cy, cx) in enumerate(centres, start=1):
        lab[(rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2] = k
    return lab


def test_object_diameter_of_discs():
    lab = disc_labels((80, 90), [(20, 20), (20, 60), (60, 40)], 9)
    assert rescale.object_diameter(lab) == pytest.approx(18.0, rel=0.03)
    assert rescale.object_diameter(lab[None]) == rescale.object_diameter(lab)
    with pytest.raises(ValueError, match="no objects"):
        rescale.object_diameter(np.zeros((5, 5), np.int32))


@pytest.mark.parametrize("preset", ["shift-small", "standard", "shift-large", "reference",
                                    "reference-shifted", "shift-brightness"])
def test_estimated_diameter_is_close(preset):
    images, labels, _ = mu.data.generate(1, preset, size=(192, 192), seed=21)
    for image, lab in zip(images, labels, strict=True):
        ratio = rescale.estimate_diameter(image) / rescale.object_diameter(lab)
        assert 0.75 < ratio < 1.3, (preset, ratio)


def test_estimate_scales_with_the_image():
    image = mu.data.generate(1, size=(128, 128), seed=2)[0][0]
    big = rescale.resize(image, (256, 256), order=1)
    ratio = rescale.estimate_diameter(big) / rescale.estimate_diameter(image)
    assert 1.6 < ratio < 2.5
    with pytest.raises(ValueError, match="no blob"):
        rescale.estimate_diameter(np.zeros((32, 32)))


def test_scale_for_and_postprocess_at():
    assert rescale.scale_for(40.0, 20.0) == 0.5
    with pytest.raises(ValueError, match="positive"):
        rescale.scale_for(0.0, 20.0)
    with pytest.raises(ValueError, match="outside"):
        rescale.scale_for(400.0, 20.0)
    post = rescale.postprocess_at({"min_size": 30}, 0.5)
    assert post["min_size"] == 120 and post["min_seed_size"] == 16


def test_predict_at_another_scale():
    model = mu.UNet(1, 3, depth=2, base_channels=4, rng=np.random.default_rng(0))
    image = np.random.default_rng(1).random((40, 56)).astype(np.float32)
    probs = predict(model, image, normalized=True, scale=0.5)
    assert probs.shape == (3, 40, 56)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    small = rescale.resize(image, (20, 28), order=1)
    expected = rescale.resize(predict(model, small, normalized=True), (40, 56), order=1)
    np.testing.assert_allclose(probs, expected / expected.sum(axis=0), atol=1e-5)
    np.testing.assert_array_equal(predict(model, image, normalized=True, scale=1.0),
                                  predict(model, image, normalized=True))
    with pytest.raises(ValueError, match="scale"):
        predict(model, image, normalized=True, scale=-1.0)


def test_plan_reads_the_checkpoint_diameter():
    meta = {"postprocess": {"min_size": 40}, "diameter": 20.0}
    image = mu.data.generate(1, "shift-large", size=(128, 128), seed=1)[0][0]
    assert rescale.plan(image, meta, None) == (1.0, {"min_size": 40})
    assert rescale.plan(image, meta, 40.0) == (0.5, {"min_size": 160, "min_seed_size": 16})
    with pytest.raises(ValueError, match="first-pass"):
        rescale.plan(image, meta, "auto")
    big = disc_probs(disc_labels((128, 128), [(30, 30), (30, 90), (90, 30), (90, 90)], 25))
    scale, post = rescale.plan(image, meta, "auto", first_pass=big)
    assert 0.6 < scale < 0.8 and post["min_size"] > 40            # 50 px discs: shrink
    with pytest.raises(ValueError, match="does not record"):
        rescale.plan(image, {"postprocess": {}}, 30.0)
    with pytest.raises(ValueError, match="'auto'"):
        rescale.plan(image, meta, "big")


def test_postprocess_at_scales_the_split_depth_as_a_length():
    from minunet.rescale import postprocess_at
    post = postprocess_at({"min_size": 20, "split": True, "split_depth": 1.0}, 0.5)
    assert post["split_depth"] == 2.0 and post["min_size"] == 80
    assert "split_depth" not in postprocess_at({"min_size": 20}, 0.5)  # no split, no depth


def disc_probs(labels, split=False):
    """Three-class probabilities (3, H, W) a good network would give for `labels`: interior
    inside, boundary on each object's outer pixel ring; split=True also draws a boundary line
    across every object's middle row, as a network does on a textured nucleus."""
    from scipy import ndimage

    inside = labels > 0
    ring = inside & ~ndimage.binary_erosion(inside)
    if split:
        for box in ndimage.find_objects(labels):
            ring[(box[0].start + box[0].stop) // 2, box[1]] |= inside[
                (box[0].start + box[0].stop) // 2, box[1]]
    probs = np.zeros((3, *labels.shape), np.float32)
    probs[0] = ~inside
    probs[1] = inside & ~ring
    probs[2] = ring
    return probs


CENTRES = [(25, 25), (25, 75), (75, 25), (75, 75), (25, 125), (75, 125)]


def test_diameter_from_probs_sees_split_objects_whole():
    lab = disc_labels((100, 150), CENTRES, 12)
    true = rescale.object_diameter(lab)
    whole, n = rescale.diameter_from_probs(disc_probs(lab))
    assert n == 6 and whole == pytest.approx(true, rel=0.1)
    halves, n = rescale.diameter_from_probs(disc_probs(lab, split=True))
    assert n == 12                                   # the network split every object ...
    assert halves == pytest.approx(true, rel=0.1)    # ... its size is still read whole
    assert rescale.diameter_from_probs(disc_probs(lab[:50, :50])) == (None, 1)


def test_auto_scale_resizes_only_off_the_trained_size():
    probs = disc_probs(disc_labels((100, 150), CENTRES, 12))          # ~24 px objects
    assert rescale.auto_scale(probs, 24.0)[0] == 1.0                   # at the trained size
    assert rescale.auto_scale(probs, 24.0 / 1.5)[0] == 1.0            # within the range
    assert rescale.auto_scale(probs, 24.0 * 1.6)[0] == 1.0
    scale, estimate = rescale.auto_scale(probs, 10.0)                  # 2.4 x the trained
    # shrink only to the range's upper edge
    assert scale == pytest.approx(10.0 * rescale.SHRINK_TO / estimate) and scale < 1
    scale, estimate = rescale.auto_scale(probs, 50.0)                  # half the trained
    # enlarge only to ENLARGE_TO x the training diameter: less coarse noise
    assert scale == pytest.approx(50.0 * rescale.ENLARGE_TO / estimate) and scale > 1
    assert rescale.auto_scale(np.stack([np.ones((40, 40)), np.zeros((40, 40)),
                                        np.zeros((40, 40))]), 24.0) == (1.0, None)


def test_auto_scale_believes_a_probe_that_sees_objects_whole():
    """Nuclei far larger than the trained size fall apart in the first pass; the half-size
    probe sees them whole and is taken when it disagrees by over PROBE_DISAGREEMENT."""
    pieces = disc_probs(disc_labels((100, 150), CENTRES, 5))           # ~10 px objects
    whole = disc_probs(disc_labels((100, 150), CENTRES, 22))           # ~45 px: 4.5x larger
    scale, estimate = rescale.auto_scale(pieces, 20.0, probe=whole)
    assert estimate == pytest.approx(rescale.diameter_from_probs(whole)[0])
    assert scale < 1                                                    # shrink, not enlarge
    near = disc_probs(disc_labels((100, 150), CENTRES, 6))             # agrees within 2x
    scale, estimate = rescale.auto_scale(pieces, 20.0, probe=near)
    assert estimate == pytest.approx(rescale.diameter_from_probs(pieces)[0]) and scale > 1
