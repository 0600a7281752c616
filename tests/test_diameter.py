"""Object scale at prediction: `mu.segment(..., diameter=)` and `minunet predict --diameter`
rescale the image to the object size the model was trained on, and agree with each other."""

import json

import numpy as np
import pytest
import tifffile

import minunet as mu
from minunet.cli import main
from minunet.rescale import object_diameter


def _shrunken_cells(factor: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Standard cells drawn at twice the size, then shrunk: objects half the trained size."""
    from minunet.rescale import resize

    images, labels, _ = mu.data.generate(1, "standard", size=(256, 256), seed=5)
    small = resize(images[0].astype(np.float32), (128, 128), order=1)
    small_labels = labels[0][::2, ::2]
    return small, small_labels


def test_segment_with_a_diameter_equals_the_command(tmp_path, capsys):
    image, _ = _shrunken_cells()
    ckpt = mu.load("nuclei")
    d = ckpt.metadata["diameter"] / 2
    want = mu.segment(ckpt, image, diameter=d)
    assert want.max() > 0
    plain = mu.segment(ckpt, image)
    assert not np.array_equal(want, plain)  # the rescale took effect
    tifffile.imwrite(tmp_path / "im.tif", image)
    assert main(["predict", "--model", "nuclei", str(tmp_path / "im.tif"), "--out",
                 str(tmp_path / "out"), "--diameter", str(d)]) == 0
    assert np.array_equal(tifffile.imread(tmp_path / "out" / "im.tif"), want)


def test_diameter_arguments_are_checked(tmp_path, capsys):
    image = np.zeros((64, 64), np.float32)
    tifffile.imwrite(tmp_path / "im.tif", image)
    for bad in ("-3", "big"):   # 0 means auto, as Cellpose's --diameter 0
        try:
            main(["predict", "--model", "nuclei", str(tmp_path / "im.tif"), "--out",
                  str(tmp_path / "out"), "--diameter", bad])
        except SystemExit as stop:  # argparse: exit 2 with a message
            assert stop.code == 2
        else:
            raise AssertionError(f"--diameter {bad} was accepted")
        assert "--diameter" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_train_stores_the_object_diameter_and_an_old_model_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--preset", "standard", "--n", "6", "--size", "64", "--epochs", "1",
                 "--depth", "1", "--base", "4", "--crop", "32", "--out", str(run)]) == 0
    meta = mu.load(run).metadata
    assert 10 < meta["diameter"] < 40
    # a checkpoint without the diameter (an older model) cannot rescale: exit 2, nothing written
    ckpt = mu.load(run / "best.npz")
    del ckpt.metadata["diameter"]
    mu.save(ckpt.model, tmp_path / "old.npz", **ckpt.metadata)
    tifffile.imwrite(tmp_path / "im.tif", np.zeros((64, 64), np.float32))
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "old.npz"), str(tmp_path / "im.tif"), "--out",
                 str(tmp_path / "out"), "--diameter", "12"]) == 2
    assert "diameter" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    json.dumps(meta)  # the stored metadata stays JSON


def test_chunked_prediction_refuses_a_diameter(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "im.tif", np.zeros((64, 64), np.uint16))
    assert main(["predict", "--model", "nuclei", str(tmp_path / "im.tif"), "--out",
                 str(tmp_path / "out"), "--chunked", "--diameter", "20"]) == 2
    assert "--diameter" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_auto_diameter_is_printed_stored_and_equals_segment(tmp_path, capsys):
    images, labels, _ = mu.data.generate(1, "shift-large", size=(160, 160), seed=3)
    ckpt = mu.load("nuclei")
    info: dict = {}
    want = mu.segment(ckpt, images[0], diameter="auto", info=info)
    assert info["diameter_estimate"] is not None and info["scale"] > 0
    ratio = info["diameter_estimate"] / object_diameter(labels[0])
    assert 0.8 < ratio < 1.25, ratio
    tifffile.imwrite(tmp_path / "im.tif", images[0])
    capsys.readouterr()
    assert main(["predict", "--model", "nuclei", str(tmp_path / "im.tif"), "--out",
                 str(tmp_path / "out"), "--diameter", "auto"]) == 0
    printed = capsys.readouterr().out
    assert f"diameter ~{info['diameter_estimate']:.1f} px" in printed
    with tifffile.TiffFile(tmp_path / "out" / "im.tif") as tif:
        stored = tif.imagej_metadata   # the settings used, as minunet_KEY lines
        assert np.array_equal(tif.asarray(), want)
    assert float(stored["minunet_diameter_estimate"]) == pytest.approx(
        info["diameter_estimate"])
    assert float(stored["minunet_diameter_scale"]) == pytest.approx(info["scale"])


def test_auto_diameter_grows_the_size_filter_for_larger_objects_only():
    """Objects wider than the trained ones leave larger fragments: `auto` grows min_size with
    their area (and stores it); smaller ones are enlarged and keep the stored filter in the
    image's pixels, up to half their area; a user's --min-size is kept."""
    ckpt = mu.load("nuclei")
    stored = ckpt.metadata["postprocess"]["min_size"]
    large, _, _ = mu.data.generate(1, "shift-large", size=(160, 160), seed=3)
    small, _, _ = mu.data.generate(1, "shift-small", size=(160, 160), seed=3)
    found = {}
    for name, image in (("large", large[0]), ("small", small[0])):
        _, _, _, used = mu.inference.segment_image(ckpt, image, diameter="auto")
        found[name] = used
    grown = found["large"]
    assert grown["diameter_scale"] == 1.0          # within the trained range: not resized
    expected = round(stored * (grown["diameter_estimate"] / ckpt.metadata["diameter"]) ** 2)
    assert grown["min_size"] == expected > stored
    small = found["small"]
    assert small["diameter_scale"] > 1.0            # shift-small: enlarged
    cap = round(0.5 * np.pi / 4 * small["diameter_estimate"] ** 2)
    assert small["min_size"] == min(stored, cap) > round(stored / small["diameter_scale"] ** 2)
    # not resized: `auto` is the plain command with the grown filter
    assert np.array_equal(mu.segment(ckpt, large[0], diameter="auto"),
                          mu.segment(ckpt, large[0], min_size=expected))
    _, _, _, used = mu.inference.segment_image(ckpt, large[0], diameter="auto", min_size=7)
    assert used["min_size"] == 7


def test_enlarged_images_keep_the_plain_size_filter_up_to_half_the_objects_area():
    """`auto` on small objects: the enlarged pass's size filter, in the image's own pixels, is
    the plain pass's (debris keeps its size), capped at half the objects' estimated area;
    shrunk images still get the filter mapped by scale**2."""
    from minunet.rescale import auto_settings, grown_min_size, postprocess_at

    post = {"min_size": 82, "seed_thresh": 0.7}
    assert auto_settings(post, 15.0, 1.4, 26.4)["min_size"] == 82          # 82 / 1.96 = 42
    assert auto_settings(post, 11.0, 1.9, 26.4)["min_size"] == round(0.5 * np.pi / 4 * 121)
    assert auto_settings(post, 15.0, 1.4, 26.4)["seed_thresh"] == 0.7
    assert auto_settings(post, None, 1.0, 26.4) == post
    shrunk = auto_settings(post, 60.0, 0.77, 26.4)
    assert shrunk == postprocess_at(grown_min_size(post, 60.0, 0.77, 26.4), 0.77)
