"""A lab's own data through the command and the API: the folder layouts labs keep, predict ->
evaluate on the same folders, `mu.segment` equal to the command, a seeded validation draw,
progress, overlays without truth, and the pixel size kept.

Numbers in the test names are the cases of the issue "Safe with a lab's own files".
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import minunet as mu
from minunet import models
from minunet.cli import main
from minunet.viz import PRED_COLOR, TP_COLOR

sys.path.insert(0, str(Path(__file__).parent))
from cli_helpers import TINY, blob_image, make_run, write_tif

SIZES = [(64, 80), (72, 64), (96, 70), (64, 64), (80, 90), (70, 100)]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("own"))


def run_cli(capsys, argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def stardist_folder(root: Path, masks: str = "masks") -> Path:
    """images/*.tiff (gray and RGB, different sizes) + masks/*.png, no manifest."""
    rng = np.random.default_rng(5)
    for i, shape in enumerate(SIZES):
        image, labels = blob_image(rng, shape)
        if i % 2:
            image = np.dstack([image // 257] * 3).astype(np.uint8)  # an RGB picture
        write_tif(root / "images" / f"cell{i:02d}.tiff", image)
        (root / masks).mkdir(exist_ok=True)
        Image.fromarray(labels.astype(np.uint8)).save(root / masks / f"cell{i:02d}.png")
    return root


def cellpose_folder(root: Path, image_suffix: str = "_img", mask_suffix: str = "_masks"
                    ) -> Path:
    rng = np.random.default_rng(6)
    for i, shape in enumerate(SIZES):
        image, labels = blob_image(rng, shape)
        write_tif(root / f"a{i:02d}{image_suffix}.tif", image)
        write_tif(root / f"a{i:02d}{mask_suffix}.tif", labels)
    return root


# --------------------------------------------------------------------- 11. layouts labs keep
@pytest.mark.parametrize("layout", ["stardist", "labels-dir", "cellpose", "cellpose-plain",
                                    "custom-suffix", "images-subfolder-given"])
def test_11_train_takes_lab_layouts(tmp_path, capsys, layout):
    root = tmp_path / "lab"
    extra = []
    data = root
    if layout == "stardist":
        stardist_folder(root)
    elif layout == "labels-dir":
        stardist_folder(root, masks="labels")
    elif layout == "cellpose":
        cellpose_folder(root)
    elif layout == "cellpose-plain":
        cellpose_folder(root, image_suffix="")
    elif layout == "custom-suffix":
        cellpose_folder(root, image_suffix="_raw", mask_suffix="_label")
        extra = ["--image-suffix", "_raw", "--mask-suffix", "_label"]
    else:
        stardist_folder(root)
        data = root / "images"
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, ["train", "--data", data, "--out", run, *TINY, *extra])
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    assert len(config["image_names"]) == 6 and len(config["val_images"]) == 1
    assert (run / "best.npz").is_file()


def test_11_unusable_folders_say_what_to_do_and_leave_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    root = cellpose_folder(tmp_path / "lab")
    (root / "a03_masks.tif").unlink()
    code, _, err = run_cli(capsys, ["train", "--data", root, "--out", run, *TINY])
    assert code == 2 and "a03_img.tif" in err and "--mask-suffix" in err, err
    (root / "a03_masks.tif").write_bytes(b"not a tiff")
    code, _, err = run_cli(capsys, ["train", "--data", root, "--out", run, *TINY])
    assert code == 2 and "a03_masks.tif" in err, err
    write_tif(root / "a03_masks.tif", np.zeros((10, 10), np.uint16))
    code, _, err = run_cli(capsys, ["train", "--data", root, "--out", run, *TINY])
    assert code == 2 and "a03_img.tif" in err and "a03_masks.tif" in err, err
    empty = tmp_path / "plain"
    write_tif(empty / "x.tif", np.zeros((64, 64), np.uint8))
    code, _, err = run_cli(capsys, ["train", "--data", empty, "--out", run, *TINY])
    assert code == 2 and "images/" in err and "_masks" in err, err
    assert not run.exists()


def test_11_small_images_are_named_with_the_crop_to_use(tmp_path, capsys):
    root = stardist_folder(tmp_path / "lab")
    code, _, err = run_cli(capsys, ["train", "--data", root, "--out", tmp_path / "run", *TINY,
                                    "--crop", "72"])
    assert code == 2 and "--crop to 64" in err and "cell00.tiff" in err, err


# ----------------------------------------------------------------- 12. predict -> evaluate
def test_12_predict_then_evaluate_on_lab_folders(tiny_run, tmp_path, capsys):
    _, run = tiny_run
    lab = cellpose_folder(tmp_path / "lab")
    pred = tmp_path / "pred"
    code, _, err = run_cli(capsys, ["predict", run, lab, "--out", pred, "--overlays", "--probs"])
    assert code == 0, err
    assert sorted(p.name for p in pred.glob("*.tif")) == [f"a{i:02d}_img.tif" for i in range(6)]
    report = tmp_path / "report"
    code, _, err = run_cli(capsys, ["evaluate", "--pred", pred, "--truth", lab, "--out",
                                    report])
    assert code == 0, err
    assert json.loads((report / "report.json").read_text())["n_images"] == 6

    # StarDist layout, RGB images for the report's overlay
    sd = stardist_folder(tmp_path / "sd")
    pred2 = tmp_path / "pred2"
    assert run_cli(capsys, ["predict", run, sd / "images", "--out", pred2, "--overlays"])[0] == 0
    code, _, err = run_cli(capsys, ["evaluate", "--pred", pred2, "--truth", sd / "masks",
                                    "--images", sd / "images", "--out", tmp_path / "r2"])
    assert code == 0 and "warning" not in err, err
    assert all((tmp_path / "r2" / f).is_file() for f in ("report.png", "report.json",
                                                        "report.md"))


# ------------------------------------------------------------- 13. one call, as the command
def test_13_segment_equals_the_command(tiny_run, tmp_path, capsys, monkeypatch):
    _, run = tiny_run
    lab = cellpose_folder(tmp_path / "lab")
    pred = tmp_path / "pred"
    assert run_cli(capsys, ["predict", run, lab, "--out", pred, "--tile", "32"])[0] == 0
    ckpt = mu.load(run)                                   # a run folder
    assert ckpt.path == run / "best.npz"
    assert ckpt.metadata["postprocess"]["min_size"] > 0  # not the defaults
    for image_path in sorted(lab.glob("*_img.tif")):
        image = tifffile.imread(image_path)
        expected = tifffile.imread(pred / image_path.name)
        np.testing.assert_array_equal(mu.segment(run, image), expected)
        np.testing.assert_array_equal(mu.segment(ckpt, image, tile=32), expected)
        np.testing.assert_array_equal(mu.segment(ckpt, image_path), expected)

    # a pretrained model's name, in the API and the command
    monkeypatch.setattr(models, "PRETRAINED", {"tiny": "a test model"})
    monkeypatch.setattr(models, "HERE", run)
    (run / "tiny.npz").write_bytes((run / "best.npz").read_bytes())
    try:
        assert mu.load("tiny").path == run / "tiny.npz"
        pred2 = tmp_path / "pred2"
        assert run_cli(capsys, ["predict", "--model", "tiny", lab, "--out", pred2])[0] == 0
        for f in pred.glob("*.tif"):
            np.testing.assert_array_equal(tifffile.imread(pred2 / f.name), tifffile.imread(f))
    finally:
        (run / "tiny.npz").unlink()
    code, _, err = run_cli(capsys, ["predict", "--model", "nope", lab, "--out", tmp_path / "x"])
    assert code == 2 and "nope" in err and "tiny" in err, err


# ------------------------------------------------------------------ 14. seeded validation
def test_14_validation_is_a_seeded_random_draw(tmp_path, capsys):
    picks = []
    for seed in (0, 1, 0):
        run = tmp_path / f"run{len(picks)}"
        data = tmp_path / "data20"
        if not data.exists():
            assert main(["generate", "--n", "20", "--size", "32", "--out", str(data)]) == 0
        assert run_cli(capsys, ["train", "--data", data, "--out", run, *TINY, "--seed",
                                str(seed), "--val-fraction", "0.2"])[0] == 0
        picks.append(json.loads((run / "config.json").read_text())["val_images"])
    names = sorted(p.relative_to(data).as_posix() for p in (data / "images").glob("*.tif"))
    assert picks[0] == picks[2] and picks[0] != picks[1]
    assert len(picks[0]) == 4 and picks[0] != names[:4]


# ------------------------------------------------- 15. progress, and overlays without truth
def test_15_progress_on_a_terminal(tiny_run, tmp_path, capsys, monkeypatch):
    _, run = tiny_run
    folder = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        write_tif(folder / f"{name}.tif", (rng.random((130, 100)) * 255).astype(np.uint8))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    code, _, err = run_cli(capsys, ["predict", run, folder, "--out", tmp_path / "p", "--tile",
                                    "32"])
    assert code == 0
    assert "predict" in err and "image" in err     # the per-image bar
    assert "tiles of 130x100" in err               # the per-tile-batch bar


def test_15_overlay_without_truth_has_no_match_colours(tiny_run, tmp_path, capsys):
    _, run = tiny_run
    lab = cellpose_folder(tmp_path / "lab")
    pred = tmp_path / "pred"
    assert run_cli(capsys, ["predict", run, lab, "--out", pred, "--overlays"])[0] == 0
    pictures = sorted((pred / "overlays").glob("*.png"))
    assert len(pictures) == 6
    rgb = np.concatenate([np.asarray(Image.open(p).convert("RGB")).reshape(-1, 3)
                          for p in pictures])
    assert not (rgb == TP_COLOR).all(axis=1).any()   # no "matched" green
    assert (rgb == PRED_COLOR).all(axis=1).any()


# ------------------------------------------------------------------------ 16. calibration
def test_16_label_tiffs_keep_the_pixel_size(tiny_run, tmp_path, capsys):
    _, run = tiny_run
    folder = tmp_path / "imgs"
    folder.mkdir()
    image = (np.random.default_rng(0).random((48, 40)) * 255).astype(np.uint8)
    tifffile.imwrite(folder / "cal.tif", image, imagej=True, resolution=(1 / 0.325, 1 / 0.5),
                     metadata={"unit": "um"})
    tifffile.imwrite(folder / "plain.tif", image)
    out = tmp_path / "pred"
    assert run_cli(capsys, ["predict", run, folder, "--out", out])[0] == 0
    with tifffile.TiffFile(out / "cal.tif") as tif:
        page = tif.pages[0]
        assert tif.is_imagej and tif.imagej_metadata["unit"] == "um"
        x, y = page.tags["XResolution"].value, page.tags["YResolution"].value
        assert x[1] / x[0] == pytest.approx(0.325) and y[1] / y[0] == pytest.approx(0.5)
        assert page.dtype == np.int32 and page.shape == (48, 40)    # napari: Labels
    with tifffile.TiffFile(out / "plain.tif") as tif:
        assert tif.is_imagej and tif.pages[0].dtype == np.int32


def test_12_truth_folder_of_masks_only(tiny_run, tmp_path, capsys):
    _, run = tiny_run
    lab = cellpose_folder(tmp_path / "lab")
    masks = tmp_path / "masks"
    masks.mkdir()
    for f in lab.glob("*_masks.tif"):
        f.rename(masks / f.name)
    pred = tmp_path / "pred"
    assert run_cli(capsys, ["predict", run, lab, "--out", pred])[0] == 0
    code, _, err = run_cli(capsys, ["evaluate", "--pred", pred, "--truth", masks, "--out",
                                    tmp_path / "report"])
    assert code == 0, err
