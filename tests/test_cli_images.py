"""`minunet predict` on images as microscopes write them, its new flags, and evaluate's line."""

import subprocess
import sys

import numpy as np
import pytest
import tifffile

import minunet as mu
from minunet.cli import _diameter, _parser, main


@pytest.fixture(scope="module")
def cells():
    images, labels, _ = mu.data.generate(2, "standard", seed=4, size=(128, 144))
    nuc = [(im * 3000 + 200).astype(np.uint16) for im in images]
    other = (mu.data.generate(1, "shift-large", seed=8, size=(128, 144))[0][0] * 3000 + 200)
    return nuc, other.astype(np.uint16), labels


def run_cli(capsys, argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_ome_channels_pixel_size_and_name(cells, tmp_path, capsys):
    nuc, other, labels = cells
    src = tmp_path / "imgs"
    src.mkdir()
    tifffile.imwrite(src / "slide.ome.tif", np.stack([other, nuc[0]]), ome=True, metadata={
        "axes": "CYX", "PhysicalSizeX": 0.325, "PhysicalSizeY": 0.325,
        "Channel": {"Name": ["Actin", "DAPI"]}})
    code, out, err = run_cli(capsys, ["predict", "nuclei", src, "--out", tmp_path / "pred",
                                      "--channel", "DAPI", "--exclude-edges"])
    assert code == 0, err
    assert not (tmp_path / "pred" / "slide.ome.tif").exists()
    with tifffile.TiffFile(tmp_path / "pred" / "slide.tif") as tif:
        assert tif.series[0].dtype == np.int32             # napari: Labels
        meta = tif.imagej_metadata
        assert meta["unit"] == "um" and meta["minunet_channel"] == "DAPI"
        assert meta["minunet_exclude_edges"] is True and meta["minunet_model"] == "nuclei.npz"
        assert meta["minunet_seed_thresh"] == mu.load("nuclei").metadata["postprocess"][
            "seed_thresh"]
        x = tif.pages[0].tags["XResolution"].value
        assert x[1] / x[0] == pytest.approx(0.325)
        pred = tif.asarray()
    expected = mu.segment("nuclei", nuc[0], exclude_edges=True)
    np.testing.assert_array_equal(pred, expected)
    # evaluate pairs slide.tif with the truth of slide.ome.tif, and prints integer counts
    truth = tmp_path / "truth"
    truth.mkdir()
    tifffile.imwrite(truth / "slide.ome.tif", labels[0].astype(np.uint16))
    code, out, err = run_cli(capsys, ["evaluate", "--pred", tmp_path / "pred", "--truth",
                                      truth, "--out", tmp_path / "report"])
    assert code == 0, err
    line = out.splitlines()[0]
    assert line.startswith("pooled: pixel_f1=") and "| mean per image: dsb_ap=" in line
    assert f"n_true={int(labels[0].max())} " in line and f"n_pred={int(pred.max())}" in line


def test_rgb_note_and_two_channel_tiff(cells, tmp_path, capsys):
    nuc, other, _ = cells
    src = tmp_path / "imgs"
    src.mkdir()
    tifffile.imwrite(src / "rgb.tif", np.stack([other // 16, other // 16, nuc[0] // 16], -1)
                     .astype(np.uint8))
    tifffile.imwrite(src / "two.tif", np.stack([other, nuc[0]]))      # plain: (C, H, W)
    code, _, err = run_cli(capsys, ["predict", "nuclei", src, "--out", tmp_path / "a"])
    assert code == 0, err
    assert "luminance" in err and "channel 0" in err and "--channel" in err
    code, _, err = run_cli(capsys, ["predict", "nuclei", src / "two.tif", "--out",
                                      tmp_path / "b", "--channel", "1"])
    assert code == 0 and "note" not in err
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "b" / "two.tif"),
                                  mu.segment("nuclei", nuc[0]))
    code, _, err = run_cli(capsys, ["predict", "nuclei", src / "two.tif", "--out",
                                      tmp_path / "c", "--channel", "5"])
    assert code == 2 and "channel 5" in err


def test_z_stack_to_label_stack(cells, tmp_path, capsys):
    nuc, _, _ = cells
    stack = np.stack([nuc[0], nuc[0], nuc[0]])
    tifffile.imwrite(tmp_path / "z.tif", stack, imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "ZYX", "spacing": 1.5, "unit": "um"})
    code, out, err = run_cli(capsys, ["predict", "nuclei", tmp_path / "z.tif", "--out",
                                      tmp_path / "p", "--stitch", "0.5"])
    assert code == 0, err
    single = mu.segment("nuclei", nuc[0])
    with tifffile.TiffFile(tmp_path / "p" / "z.tif") as tif:
        assert tif.series[0].axes == "ZYX" and tif.imagej_metadata["spacing"] == 1.5
        labels = tif.asarray()
    assert labels.shape == stack.shape and len(np.unique(labels)) - 1 == single.max()
    assert f"({single.max()} objects)" in out
    code, out, err = run_cli(capsys, ["predict", "nuclei", tmp_path / "z.tif", "--out",
                                      tmp_path / "q", "--plane", "1"])
    assert code == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "q" / "z.tif"), single)


def test_postprocess_flags_and_their_checks(cells, tmp_path, capsys):
    nuc, _, _ = cells
    tifffile.imwrite(tmp_path / "a.tif", nuc[1])
    code, out, err = run_cli(capsys, ["predict", "nuclei", tmp_path / "a.tif", "--out",
                                      tmp_path / "p", "--min-size", "100000", "--prob-thresh",
                                      "0.7", "--seed-thresh", "0.8"])
    assert code == 0 and "(0 objects)" in out
    with tifffile.TiffFile(tmp_path / "p" / "a.tif") as tif:
        meta = tif.imagej_metadata
    assert (meta["minunet_min_size"], meta["minunet_prob_thresh"],
            meta["minunet_seed_thresh"]) == (100000, 0.7, 0.8)
    for flags, word in [(["--prob-thresh", "1.5"], "--prob-thresh"),
                        (["--stitch", "0"], "--stitch"), (["--axes", "ZQ"], "--axes"),
                        (["--channel", "0", "--workers", "2"], "--workers")]:
        code, out, err = run_cli(capsys, ["predict", "nuclei", tmp_path / "a.tif", "--out",
                                          tmp_path / "x", *flags])
        assert code == 2 and word in err
        assert not (tmp_path / "x").exists()


def test_help_and_diameter_zero():
    text = _parser()._subparsers._group_actions[0].choices["predict"].format_help()
    assert "default 2048" in text and "tiles the network sees" in text
    assert "--channel" in text and "--stitch" in text
    assert _diameter("0") == "auto" and _diameter("auto") == "auto" and _diameter("17") == 17


def test_a_closed_pipe_ends_quietly(cells, tmp_path):
    nuc, _, _ = cells
    for i in range(3):
        tifffile.imwrite(tmp_path / f"im{i}.tif", nuc[0][:64, :64])
    command = (f"{sys.executable} -m minunet.cli predict nuclei {tmp_path}/im0.tif "
               f"{tmp_path}/im1.tif {tmp_path}/im2.tif --out {tmp_path}/out | head -n 1")
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300)
    assert done.stdout.count("objects") == 1
    assert "Traceback" not in done.stderr and "Broken pipe" not in done.stderr, done.stderr
