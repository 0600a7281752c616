"""Disk format: save/load round trip, regeneration from the manifest, the image reader, preview."""

import json
import os

import numpy as np
import pytest
import tifffile
from PIL import Image

import minunet as mu


def test_save_load_round_trip_and_regenerate(tmp_path):
    images, labels, info = mu.data.generate(3, "shift-blur", size=(40, 56), seed=5, density=50)
    mu.data.save_dataset(tmp_path / "set", images, labels, info)
    assert sorted(p.name for p in (tmp_path / "set" / "images").iterdir()) == \
        ["0000.tif", "0001.tif", "0002.tif"]
    assert tifffile.imread(tmp_path / "set" / "labels" / "0001.tif").dtype == np.uint16
    got_images, got_labels, manifest = mu.data.load_dataset(tmp_path / "set")
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_labels.dtype == np.int32
    for key in ("preset", "seed", "size", "n", "params", "minunet_version", "format"):
        assert key in manifest
    assert manifest["params"]["density"] == 50
    json.dumps(manifest)                                   # plain JSON all the way down
    again_images, again_labels, _ = mu.data.regenerate(manifest)
    np.testing.assert_array_equal(again_images, images)
    np.testing.assert_array_equal(again_labels, labels)


def test_save_refuses_bad_labels(tmp_path):
    images = np.zeros((1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="0..65535"):
        mu.data.save_dataset(tmp_path, images, np.full((1, 4, 4), 70000), {})
    with pytest.raises(TypeError, match="integer"):
        mu.data.save_dataset(tmp_path, images, images, {})
    with pytest.raises(ValueError, match="one shape"):
        mu.data.save_dataset(tmp_path, images, np.zeros((1, 4, 5), int), {})


def test_load_refuses_incomplete_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        mu.data.load_dataset(tmp_path)
    images, labels, info = mu.data.generate(2, size=(16, 16))
    mu.data.save_dataset(tmp_path, images, labels, info)
    (tmp_path / "labels" / "0001.tif").unlink()
    with pytest.raises(ValueError, match="different files"):
        mu.data.load_dataset(tmp_path)


@pytest.mark.parametrize("dtype, mode", [(np.uint8, "L"), (np.uint16, "I;16"),
                                         (np.uint8, "RGB"), (np.uint8, "RGBA")])
def test_read_png(tmp_path, dtype, mode):
    rng = np.random.default_rng(0)
    channels = {"L": (), "I;16": (), "RGB": (3,), "RGBA": (4,)}[mode]
    array = rng.integers(0, np.iinfo(dtype).max, (9, 13, *channels)).astype(dtype)
    Image.fromarray(array).save(tmp_path / "x.png")
    got = mu.data.read_image(tmp_path / "x.png")
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, array)


def test_read_tiff_and_npy_keep_dtype_and_nan(tmp_path):
    floats = np.random.default_rng(1).random((7, 11)).astype(np.float32)
    floats[0, 0] = np.nan                                 # not refused here: nothing normalises
    tifffile.imwrite(tmp_path / "f.tif", floats)
    np.testing.assert_array_equal(mu.data.read_image(tmp_path / "f.tif"), floats)
    np.save(tmp_path / "u.npy", np.arange(12, dtype=np.uint16).reshape(3, 4))
    assert mu.data.read_image(tmp_path / "u.npy").dtype == np.uint16


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file.*missing.tif"):
        mu.data.read_image(tmp_path / "missing.tif")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="notes.txt is not an image file"):
        mu.data.read_image(tmp_path / "notes.txt")
    (tmp_path / "broken.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(ValueError, match="cannot read .*broken.tif as TIF"):
        mu.data.read_image(tmp_path / "broken.tif")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="broken.png"):
        mu.data.read_image(tmp_path / "broken.png")
    np.save(tmp_path / "line.npy", np.arange(5))
    with pytest.raises(ValueError, match=r"shape \(5,\); expected a 2-D gray image"):
        mu.data.read_image(tmp_path / "line.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object))  # pickled inside
    with pytest.raises(ValueError, match="objects.npy"):
        mu.data.read_image(tmp_path / "objects.npy")
    with pytest.raises(IsADirectoryError):
        mu.data.read_image(tmp_path)


def test_preview_grid_writes_a_png(tmp_path):
    out = mu.data.preview_grid(tmp_path / "p.png", ["standard", "reference"], n_per_preset=2,
                               size=(48, 48))
    png = mu.data.read_image(out)
    assert png.ndim == 3 and png.shape[2] in (3, 4) and png.shape[0] > 100


def test_generate_dataset_writes_everything(tmp_path):
    out = mu.data.generate_dataset(tmp_path / "d", 3, "shift-small", size=(32, 40), seed=1)
    images, _, manifest = mu.data.load_dataset(out)
    assert images.shape == (3, 32, 40) and manifest["preset"] == "shift-small"
    assert (out / "preview.png").is_file()
    np.testing.assert_array_equal(images, mu.data.generate(3, "shift-small", (32, 40), 1)[0])


# ------------------------------------------------------------------ writing a user's files
def test_write_atomic_uses_the_umask_and_cleans_up(tmp_path):
    from minunet.io.files import remove_stale_temps, write_atomic
    old = os.umask(0o027)
    try:
        path = write_atomic(tmp_path / "a.txt", lambda tmp: tmp.write_text("new"))
    finally:
        os.umask(old)
    assert path.read_text() == "new" and oct(path.stat().st_mode & 0o777) == oct(0o640)

    def crash(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / "a.txt", crash)
    assert (tmp_path / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]

    (tmp_path / ".a.txt.k1ll.tmp.txt").write_text("left by kill -9")
    (tmp_path / ".other.k1ll.tmp").write_text("not ours")
    removed = remove_stale_temps(tmp_path, ["a.txt"])
    assert [p.name for p in removed] == [".a.txt.k1ll.tmp.txt"]
    assert (tmp_path / ".other.k1ll.tmp").exists()


def test_write_labels_keeps_the_pixel_size(tmp_path):
    from minunet.io.images import read_pixel_size, write_labels
    tifffile.imwrite(tmp_path / "in.tif", np.zeros((5, 6), np.uint8), imagej=True,
                     resolution=(2.0, 4.0), metadata={"unit": "um"})
    size = read_pixel_size(tmp_path / "in.tif")
    assert size[:2] == pytest.approx((0.25, 0.5)) and size[2] == "um"  # (dy, dx, unit)
    labels = np.arange(30).reshape(5, 6)
    write_labels(tmp_path / "out.tif", labels, size)
    assert read_pixel_size(tmp_path / "out.tif") == size
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out.tif"), labels)
    assert read_pixel_size(tmp_path / "none.png") is None
    write_labels(tmp_path / "big.tif", np.full((2, 2), 70000))    # int32: beyond uint16
    assert tifffile.imread(tmp_path / "big.tif").dtype == np.int32
    with pytest.raises(ValueError, match="int32"):
        write_labels(tmp_path / "neg.tif", np.full((2, 2), -1))


# ------------------------------------------------------------------ a lab's folders
def test_find_pairs_in_every_layout(tmp_path):
    from minunet.io.folders import find_pairs
    img = np.zeros((8, 8), np.uint8)
    for f in ("sd/images/a.tiff", "sd/images/b.png", "sd/masks/a.png", "sd/masks/b_masks.tif",
              "cp/x_img.tif", "cp/x_masks.tif", "cp/x_seg.npy", "cp/y_img.npy",
              "cp/y_masks.png", "plain/p.tif", "plain/p_masks.tif", "plain/p_flows.tif"):
        path = tmp_path / f
        path.parent.mkdir(parents=True, exist_ok=True)
        if f.endswith(".npy"):
            np.save(path, img)
        elif f.endswith(".png"):
            Image.fromarray(img).save(path)
        else:
            tifffile.imwrite(path, img)
    names = lambda pairs: [(i.name, m.name) for i, m in pairs]  # noqa: E731
    assert names(find_pairs(tmp_path / "sd")) == [("a.tiff", "a.png"), ("b.png", "b_masks.tif")]
    assert names(find_pairs(tmp_path / "sd" / "images")) == names(find_pairs(tmp_path / "sd"))
    assert names(find_pairs(tmp_path / "cp")) == [("x_img.tif", "x_masks.tif"),
                                                  ("y_img.npy", "y_masks.png")]
    assert names(find_pairs(tmp_path / "plain")) == [("p.tif", "p_masks.tif")]


def test_read_pairs_names_every_bad_file(tmp_path):
    from minunet.io.folders import DataError, read_pairs
    pairs = []
    for name, mask in (("ok", np.ones((6, 6), np.uint16)), ("neg", -np.ones((6, 6), np.int32)),
                       ("frac", np.full((6, 6), 0.5, np.float32)),
                       ("shape", np.ones((5, 6), np.uint16)),
                       ("rgb", np.ones((6, 6, 3), np.uint8))):
        tifffile.imwrite(tmp_path / f"{name}.tif", np.zeros((6, 6), np.uint8))
        tifffile.imwrite(tmp_path / f"{name}_m.tif", mask)
        pairs.append((tmp_path / f"{name}.tif", tmp_path / f"{name}_m.tif"))
    with pytest.raises(DataError) as info:
        read_pairs(pairs)
    message = str(info.value)
    assert "4 of 5" in message
    for name, what in (("neg", "negative"), ("frac", "whole numbers"), ("shape", "5x6"),
                       ("rgb", "2-D")):
        assert f"{name}_m.tif" in message and what in message, (name, message)
