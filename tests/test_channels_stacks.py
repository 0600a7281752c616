"""segment on multi-channel, RGB and stack inputs; stitching across planes; edge exclusion."""

import warnings

import numpy as np
import pytest
import tifffile

import minunet as mu
from minunet.inference import count_objects, remove_edge_objects, stitch_planes, unique_ids


@pytest.fixture(scope="module")
def nuclei():
    return mu.load("nuclei")


@pytest.fixture(scope="module")
def scene():
    """Nuclei (one channel) and larger cytoplasm-like cells (another), 16-bit."""
    images, labels, _ = mu.data.generate(1, "standard", seed=5, size=(160, 192))
    other = mu.data.generate(1, "shift-large", seed=9, size=(160, 192))[0][0]
    return ((images[0] * 3000 + 200).astype(np.uint16), (other * 3000 + 200).astype(np.uint16),
            labels[0])


def f1(truth, pred):
    return mu.metrics.evaluate([truth], [pred]).at(0.5).f1


def test_the_nuclear_channel_of_rgb_and_two_channel_images(nuclei, scene):
    nuc, other, truth = scene
    rgb = np.stack([np.zeros_like(nuc), other, nuc], axis=-1)
    with pytest.warns(UserWarning, match="luminance"):
        gray = mu.segment(nuclei, rgb)
    blue = mu.segment(nuclei, rgb, channel=2)
    assert f1(truth, blue) > 0.9 and f1(truth, blue) > f1(truth, gray) + 0.2
    two = np.stack([other, nuc])                          # (C, H, W), C = 2
    assert f1(truth, mu.segment(nuclei, two, channel=1)) > 0.9
    with warnings.catch_warnings():
        warnings.simplefilter("error")                    # a chosen channel: no warning
        np.testing.assert_array_equal(mu.segment(nuclei, two, channel=1), blue)


def test_channel_by_name_from_an_ome_tiff(nuclei, scene, tmp_path):
    nuc, other, _truth = scene
    tifffile.imwrite(tmp_path / "s.ome.tif", np.stack([other, nuc]), ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": ["Actin", "DAPI"]}})
    labels = mu.segment(nuclei, tmp_path / "s.ome.tif", channel="DAPI")
    np.testing.assert_array_equal(labels, mu.segment(nuclei, nuc))


def test_a_z_stack_is_segmented_plane_by_plane(nuclei, scene):
    nuc, _, _truth = scene
    shifted = np.pad(nuc, ((1, 0), (0, 0)), mode="edge")[:-1]      # 1 px down, no wrap
    stack = np.stack([nuc, nuc, shifted, nuc, nuc])                  # (Z, H, W), Z = 5
    single = mu.segment(nuclei, nuc)
    assert mu.segment(nuclei, shifted).max() == single.max()  # the same objects, moved
    labels = mu.segment(nuclei, stack, stitch=0.5)
    assert labels.shape == stack.shape and labels.dtype == np.int32
    assert len(np.unique(labels)) - 1 == single.max()     # one id per object through the stack
    loose = mu.segment(nuclei, stack)
    assert len(np.unique(loose)) - 1 == 5 * single.max()  # unstitched: unique ids per plane
    np.testing.assert_array_equal(mu.segment(nuclei, stack, plane=3), single)


def test_stitch_planes_follows_overlap():
    a = np.zeros((3, 10, 10), int)
    a[0, 1:5, 1:5] = 1
    a[1, 2:6, 1:5] = 2          # IoU with plane 0's object: 12 / 20 = 0.6
    a[1, 7:9, 7:9] = 1
    a[2, 7:9, 7:9] = 1          # the same small object, IoU 1
    out = stitch_planes(a, 0.5)
    assert out[0, 1, 1] == out[1, 2, 1] and out[1, 7, 7] == out[2, 7, 7]
    assert len(np.unique(out)) - 1 == 2
    strict = stitch_planes(a, 0.7)
    assert strict[0, 1, 1] != strict[1, 2, 1] and len(np.unique(strict)) - 1 == 3
    assert len(np.unique(unique_ids(a))) - 1 == 4


def test_remove_edge_objects():
    labels = np.zeros((8, 9), np.int32)
    labels[0:2, 3:5] = 1        # touches the top
    labels[3:5, 3:5] = 2
    labels[6:8, 7:9] = 3        # the corner
    out = remove_edge_objects(labels)
    assert out.max() == 1 and (out[3:5, 3:5] == 1).all() and out.sum() == 4


@pytest.mark.parametrize("shape, top, low", [((64, 80), 40, 0), ((3, 20, 30), 500, 0),
                                              ((16, 16), 7, 3), ((10, 12), 5, -4),
                                              ((5, 5), 0, 0), ((0, 4), 1, 0)])
def test_count_objects_is_the_number_of_distinct_nonzero_ids(shape, top, low):
    """The count the command prints and stores, by counting ids, equals np.unique's: ids with
    gaps, a stack, no background, negative ids (counted as np.unique would), all background,
    an empty image."""
    labels = np.random.default_rng(top).integers(low, top + 1, size=shape).astype(np.int32)
    expected = len(np.unique(labels)) - int((labels == 0).any())
    assert count_objects(labels) == expected
    assert count_objects(labels.astype(np.uint16) if low >= 0 else labels) == expected


@pytest.mark.parametrize("stack, stitch, edges", [(False, None, False), (False, None, True),
                                                   (True, None, False), (True, 0.5, True)])
def test_segment_numbers_the_objects_1_to_n(nuclei, scene, stack, stitch, edges):
    """Every path of segment numbers its objects 1..n (to_instances, remove_edge_objects,
    unique_ids and stitch_planes renumber them), so that the largest id is the number of
    objects: `write_prediction` (and the command's "N objects") takes it so."""
    nuc = scene[0]
    image = np.stack([nuc, nuc[::-1], nuc]) if stack else nuc
    labels = mu.segment(nuclei, image, stitch=stitch, exclude_edges=edges)
    assert labels.max() > 3 and labels.max() == count_objects(labels)


def test_stored_settings_can_be_overridden(nuclei, scene):
    nuc, _, _ = scene
    everything = mu.segment(nuclei, nuc, min_size=1)
    assert mu.segment(nuclei, nuc, min_size=10**6).max() == 0 < everything.max()


def test_predict_takes_the_channel_too(nuclei, scene):
    nuc, other, _ = scene
    probs = mu.predict(nuclei.model, np.stack([other, nuc]), channel=1,
                       normalization=nuclei.metadata["normalization"])
    np.testing.assert_array_equal(probs, mu.predict(nuclei.model, nuc,
                                                    normalization=nuclei.metadata["normalization"]))


def test_a_model_of_two_input_channels_reads_the_channels_its_checkpoint_names(tmp_path):
    from minunet.postprocess import to_instances
    from minunet.predict import normalize

    model = mu.UNet(2, 3, depth=1, base_channels=4, rng=np.random.default_rng(0))
    path = mu.save(model, tmp_path / "two.npz", channels=[2, 0], postprocess={"min_size": 4})
    image = np.random.default_rng(1).integers(0, 4000, (3, 40, 36)).astype(np.uint16)  # CYX
    x = np.stack([normalize(image[2]), normalize(image[0])])       # (2, H, W), as trained
    probs = mu.predict(model, x, normalized=True)
    expected = to_instances(probs, min_size=4)
    np.testing.assert_array_equal(mu.segment(path, image), expected)
    with pytest.raises(ValueError, match="2 input channels"):
        mu.segment(path, image, channel=1)
    bare = mu.save(model, tmp_path / "bare.npz")
    with pytest.raises(ValueError, match="does not record"):
        mu.segment(bare, image)
    with pytest.raises(ValueError, match="2 input channel"):
        mu.predict(model, image[0])
