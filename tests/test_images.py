"""Reading images of every layout (channels, stacks, RGB) with their metadata; label TIFFs."""

import numpy as np
import pytest
import tifffile

from minunet.io.images import (
    image_from_array,
    plain_axes,
    read_image_file,
    read_pixel_size,
    write_labels,
)


def ramp(*shape, dtype=np.uint16):
    return (np.arange(np.prod(shape)) % 1000).reshape(shape).astype(dtype)


def test_ome_tiff_axes_channel_names_and_pixel_size(tmp_path):
    data = ramp(3, 2, 32, 40)                                  # (Z, C, H, W)
    tifffile.imwrite(tmp_path / "s.ome.tif", data, ome=True, metadata={
        "axes": "ZCYX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.3, "PhysicalSizeZ": 1.5,
        "Channel": {"Name": ["DAPI", "GFP"]}})
    im = read_image_file(tmp_path / "s.ome.tif")
    assert im.data.shape == (3, 32, 40, 2) and im.plane_axes == "Z"
    assert im.channel_names == ("DAPI", "GFP")
    assert im.pixel_size == pytest.approx((0.3, 0.25, "um")) and im.z_spacing == 1.5
    planes, note = im.select(channel="gfp")
    np.testing.assert_array_equal(planes, data[:, 1])
    planes, note = im.select(channel=0, plane=2)
    np.testing.assert_array_equal(planes, data[2:3, 0])
    assert note is None
    assert read_pixel_size(tmp_path / "s.ome.tif") == pytest.approx((0.3, 0.25, "um"))
    with pytest.raises(ValueError, match="DAPI"):
        im.select(channel="RFP")
    with pytest.raises(ValueError, match="plane 3"):
        im.select(plane=3)


def test_imagej_channels_and_stack_are_told_apart(tmp_path):
    tifffile.imwrite(tmp_path / "c.tif", ramp(3, 32, 40), imagej=True, metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "z.tif", ramp(3, 32, 40), imagej=True, resolution=(2, 2),
                     metadata={"axes": "ZYX", "spacing": 2.0, "unit": "um"})
    c, z = read_image_file(tmp_path / "c.tif"), read_image_file(tmp_path / "z.tif")
    assert c.data.shape == (1, 32, 40, 3) and not c.rgb
    assert z.data.shape == (3, 32, 40, 1) and z.plane_axes == "Z" and z.z_spacing == 2.0
    assert z.pixel_size == pytest.approx((0.5, 0.5, "um"))
    planes, note = c.select()
    np.testing.assert_array_equal(planes[0], ramp(3, 32, 40)[0])
    assert "channel 0" in note and "--channel" in note


@pytest.mark.parametrize("shape,axes", [
    ((32, 40), "YX"), ((32, 40, 3), "YXS"), ((32, 40, 2), "YXC"), ((2, 32, 40), "CYX"),
    ((4, 32, 40), "CYX"), ((7, 32, 40), "ZYX"), ((7, 32, 40, 3), "ZYXS"),
    ((7, 2, 32, 40), "ZCYX")])
def test_plain_array_rule(shape, axes):
    assert plain_axes(shape) == axes


def test_plain_files_two_channels_stack_and_rgb(tmp_path):
    tifffile.imwrite(tmp_path / "two.tif", ramp(2, 32, 40))          # no axes metadata
    tifffile.imwrite(tmp_path / "stack.tif", ramp(9, 32, 40))
    np.save(tmp_path / "rgb.npy", ramp(32, 40, 3, dtype=np.uint8))
    two = read_image_file(tmp_path / "two.tif")
    assert two.data.shape == (1, 32, 40, 2)
    assert read_image_file(tmp_path / "stack.tif").data.shape == (9, 32, 40, 1)
    rgb = read_image_file(tmp_path / "rgb.npy")
    assert rgb.rgb
    planes, note = rgb.select()
    assert planes.shape == (1, 32, 40, 3) and "luminance" in note
    blue = ramp(32, 40, 3, dtype=np.uint8)[..., 2]
    np.testing.assert_array_equal(rgb.select(channel=2)[0][0], blue)
    # the file's axes can be overridden
    assert read_image_file(tmp_path / "two.tif", axes="ZYX").data.shape == (2, 32, 40, 1)
    with pytest.raises(ValueError, match="does not fit"):
        read_image_file(tmp_path / "two.tif", axes="ZCYX")


def test_singleton_axes_and_unknown_shapes():
    assert image_from_array(np.zeros((1, 1, 32, 40))).data.shape == (1, 32, 40, 1)
    with pytest.raises(ValueError, match="axes"):
        image_from_array(np.zeros((9, 9, 32, 40)), source="odd.tif")


def test_standard_tiff_resolution_in_cm_reads_in_um(tmp_path):
    tifffile.imwrite(tmp_path / "cm.tif", ramp(8, 8), resolution=(40000, 20000),
                     resolutionunit="CENTIMETER")
    assert read_pixel_size(tmp_path / "cm.tif") == pytest.approx((0.5, 0.25, "um"))


def test_label_tiff_is_int32_with_calibration_and_settings(tmp_path):
    labels = np.arange(3 * 5 * 6).reshape(3, 5, 6) + 70000      # beyond uint16
    write_labels(tmp_path / "l.tif", labels, (0.5, 0.25, "um"), z_spacing=2.0,
                 info={"seed_thresh": 0.9, "channel": 1})
    with tifffile.TiffFile(tmp_path / "l.tif") as tif:
        assert tif.series[0].dtype == np.int32 and tif.series[0].axes == "ZYX"
        meta = tif.imagej_metadata
        assert meta["unit"] == "um" and meta["spacing"] == 2.0
        assert meta["minunet_seed_thresh"] == 0.9 and meta["minunet_channel"] == 1
        np.testing.assert_array_equal(tif.asarray(), labels)
    im = read_image_file(tmp_path / "l.tif")
    assert im.pixel_size == pytest.approx((0.5, 0.25, "um")) and im.z_spacing == 2.0
    with pytest.raises(ValueError, match="int32"):
        write_labels(tmp_path / "neg.tif", -np.ones((2, 2), int))
