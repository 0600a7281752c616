"""`--chunked` output as OME-Zarr: opened with readers no one here wrote (ome-zarr-py, and
napari's own plugin napari-ome-zarr where installed), the image and its labels must come back
as NGFF says: the image at the root, the labels under labels/ marked as a label image."""

import numpy as np
import pytest

import minunet as mu
from minunet.scaleout import ngff
from tests.cli_helpers import blob_image

zarr = pytest.importorskip("zarr")
pytest.importorskip("dask")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """One 300 x 260 image segmented block by block twice: as OME-Zarr and as a plain array."""
    from minunet.scaleout import segment_large

    folder = tmp_path_factory.mktemp("ngff")
    image, _ = blob_image(np.random.default_rng(7), (300, 260), n=12)
    source = folder / "slide.npy"
    np.save(source, image)
    ckpt = mu.load("nuclei")
    kw = {"block": 64, "halo": 16, "progress": False}
    segment_large(ckpt, source, folder / "slide.ome.zarr", **kw)
    segment_large(ckpt, source, folder / "plain.zarr", **kw)
    plain = zarr.open_array(str(folder / "plain.zarr"))[:]
    return folder / "slide.ome.zarr", image, plain


def test_ome_zarr_py_reads_image_and_labels(written):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    path, image, plain = written
    assert plain.max() > 5                                     # a real segmentation
    nodes = list(Reader(parse_url(str(path)))())
    images = [n for n in nodes if n.load(Multiscales) and not n.load(Label)]
    labels = [n for n in nodes if n.load(Label)]
    assert len(images) == 1 and len(labels) == 1
    np.testing.assert_array_equal(np.asarray(images[0].data[0]), image)
    levels = [np.asarray(level) for level in labels[0].data]
    np.testing.assert_array_equal(levels[0], plain)            # the same labels as .zarr
    assert len(levels) == ngff.pyramid_levels(300, 260, 64) > 1
    for k, level in enumerate(levels):
        np.testing.assert_array_equal(level, plain[::2**k, ::2**k])
    axes = [a["name"] for a in labels[0].metadata["axes"]]
    assert axes == ["y", "x"]


def test_napari_plugin_opens_a_labels_layer(written):
    reader_plugin = pytest.importorskip("napari_ome_zarr")
    path, image, plain = written
    reader = reader_plugin.napari_get_reader(str(path))
    assert reader is not None
    layers = {kind: data for data, _, kind in reader(str(path))}
    assert set(layers) == {"image", "labels"}
    np.testing.assert_array_equal(np.asarray(layers["labels"][0]), plain)
    np.testing.assert_array_equal(np.asarray(layers["image"][0]), image)


def test_rgb_source_gets_a_channel_axis(tmp_path):
    from minunet.scaleout import segment_large

    gray, _ = blob_image(np.random.default_rng(3), (96, 80), n=4)
    rgb = np.stack([gray // 16, gray // 20, gray // 24], axis=-1).astype(np.uint8)
    np.save(tmp_path / "rgb.npy", rgb)
    out = tmp_path / "rgb.ome.zarr"
    segment_large(mu.load("nuclei"), tmp_path / "rgb.npy", out, block=64, progress=False)
    group = zarr.open_group(str(out), mode="r")
    axes = group.attrs["multiscales"][0]["axes"]
    assert [a["name"] for a in axes] == ["c", "y", "x"]
    np.testing.assert_array_equal(group["0"][:], np.moveaxis(rgb, -1, 0))
    assert group["labels"].attrs["labels"] == ["cells"]
    assert group["labels/cells"].attrs["image-label"]["source"] == {"image": "../../"}
    assert group["labels/cells/0"].shape == (96, 80)


def test_pyramid_levels():
    assert ngff.pyramid_levels(256, 100, 256) == 1
    assert ngff.pyramid_levels(257, 100, 256) == 2
    assert ngff.pyramid_levels(20_000, 3_000, 256) == 8      # 20000 -> ... -> 157


def test_tiff_pixel_size_becomes_the_coordinates(tmp_path):
    """A TIFF that says 0.5 x 0.25 um per pixel: level k is scaled by that times 2**k."""
    import tifffile
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    from minunet.scaleout import segment_large

    image, _ = blob_image(np.random.default_rng(5), (136, 72), n=4)
    source = tmp_path / "sized.tif"
    tifffile.imwrite(source, image, imagej=True, resolution=(1 / 0.25, 1 / 0.5),
                     metadata={"unit": "micron"})
    out = tmp_path / "sized.ome.zarr"
    segment_large(mu.load("nuclei"), source, out, block=64, progress=False)
    labels = next(n for n in Reader(parse_url(str(out)))() if n.load(Label))
    ms = zarr.open_group(str(out / "labels" / "cells"), mode="r").attrs["multiscales"][0]
    assert [a.get("unit") for a in ms["axes"]] == ["micrometer", "micrometer"]
    scales = [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]]
    assert scales == [[0.5 * 2**k, 0.25 * 2**k] for k in range(len(labels.data))]
    assert ngff.pixel_size(tmp_path / "none.npy") is None
