"""The `minunet` command end to end, and its bad-input catalogue (clear message, exit code 2)."""

import json
import os

import numpy as np
import pytest
import tifffile

import minunet as mu
from minunet.cli import main


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """generate -> train (1 epoch, tiny net) once for the whole module."""
    root = tmp_path_factory.mktemp("cli")
    data_dir, run = root / "data", root / "run"
    assert main(["generate", "--preset", "standard", "--n", "6", "--size", "64", "--seed", "3",
                 "--out", str(data_dir)]) == 0
    assert main(["train", "--data", str(data_dir), "--out", str(run), "--epochs", "1",
                 "--batch-size", "2", "--depth", "2", "--base", "4", "--crop", "32",
                 "--val-fraction", "0.34"]) == 0
    return root, data_dir, run


def test_generate_train_predict_evaluate(trained_run, tmp_path):
    _, data_dir, run = trained_run
    assert len(list((data_dir / "images").glob("*.tif"))) == 6
    assert json.loads((data_dir / "manifest.json").read_text())
    for name in ("config.json", "log.jsonl", "last.npz", "best.npz", "curves.png"):
        assert (run / name).is_file(), name
    ckpt = mu.load(run / "best.npz")
    assert ckpt.metadata["normalization"]["method"] == "foreground"   # the default

    # predict on images that are not tile-sized, in every accepted format
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    image = (rng.random((70, 45)) * 255).astype(np.uint8)
    tifffile.imwrite(inputs / "a.tif", image)
    tifffile.imwrite(inputs / "b16.tif", image.astype(np.uint16) * 250)
    tifffile.imwrite(inputs / "c_rgb.tif", np.dstack([image] * 3))
    np.save(inputs / "d.npy", image.astype(np.float32) / 255)
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(inputs), "--out", str(out), "--tile", "32",
                 "--overlays", "--probs"]) == 0
    for stem in ("a", "b16", "c_rgb", "d"):
        labels = tifffile.imread(out / f"{stem}.tif")
        assert labels.dtype == np.int32 and labels.shape == (70, 45)
        assert np.load(out / "probs" / f"{stem}.npy").shape == (3, 70, 45)
        assert (out / "overlays" / f"{stem}.png").is_file()

    # evaluate the data set's own labels against themselves: perfect scores
    report = tmp_path / "report"
    assert main(["evaluate", "--pred", str(data_dir / "labels"), "--truth",
                 str(data_dir / "labels"), "--out", str(report)]) == 0
    result = json.loads((report / "report.json").read_text())
    assert result["pixel_pooled"]["f1"] == 1.0
    assert (report / "report.png").is_file() and (report / "report.md").is_file()


def test_resume_continues_a_run(trained_run):
    _, _, run = trained_run
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert json.loads((run / "config.json").read_text())["epochs"] == 2
    epochs = [json.loads(line)["epoch"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


def expect_error(capsys, argv, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err, err


def test_bad_inputs(trained_run, tmp_path, capsys):
    _, data_dir, run = trained_run
    good = tmp_path / "good"
    good.mkdir()
    tifffile.imwrite(good / "x.tif", np.zeros((20, 20), np.uint8))
    out = tmp_path / "out"

    expect_error(capsys, ["predict", str(run), str(tmp_path / "nope.tif"), "--out", str(out)],
                 "nope.tif", "does not exist")
    (tmp_path / "empty").mkdir()
    expect_error(capsys, ["predict", str(run), str(tmp_path / "empty"), "--out", str(out)],
                 "holds no images")
    (tmp_path / "junk.png").write_text("not an image")
    expect_error(capsys, ["predict", str(run), str(tmp_path / "junk.png"), "--out", str(out)],
                 "junk.png")
    expect_error(capsys, ["predict", str(tmp_path / "missing.npz"), str(good), "--out",
                          str(out)], "missing.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    expect_error(capsys, ["predict", str(tmp_path / "other.npz"), str(good), "--out", str(out)],
                 "other.npz")
    nan = tmp_path / "nan"
    nan.mkdir()
    np.save(nan / "n.npy", np.full((16, 16), np.nan, np.float32))
    expect_error(capsys, ["predict", str(run), str(nan), "--out", str(out)], "NaN")
    assert not list(out.glob("*.tif")) if out.exists() else True  # nothing half-written

    if os.geteuid() != 0:  # root writes anywhere, so only an ordinary user can test this
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        expect_error(capsys, ["predict", str(run), str(good), "--out", str(locked / "o")],
                     "not writable")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    expect_error(capsys, ["predict", str(run), str(good), "--out", str(a_file / "o")],
                 "not writable")

    expect_error(capsys, ["evaluate", "--pred", str(good), "--truth", str(data_dir / "labels"),
                          "--out", str(out)], "do not pair up")
    expect_error(capsys, ["train", "--resume", str(tmp_path)], "config.json")


def test_gradcheck_command(tmp_path, capsys):
    layer = tmp_path / "my_layers.py"
    layer.write_text(
        "import numpy as np\nimport minunet as mu\n\n"
        "class Square(mu.Module):\n"
        "    def __init__(self, wrong=False):\n"
        "        super().__init__()\n"
        "        self.wrong = wrong\n"
        "    def forward(self, x):\n"
        "        self._saved = x\n"
        "        return x * x\n"
        "    def backward(self, dout):\n"
        "        x = self._take_saved()\n"
        "        return dout * (3 if self.wrong else 2) * x\n")
    assert main(["gradcheck", f"{layer}:Square", "--input-shape", "2,3,4,5"]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["gradcheck", f"{layer}:Square", "--input-shape", "2,3,4,5",
                 "--args", '{"wrong": true}']) == 1
    assert "FAILED" in capsys.readouterr().out
    expect_error(capsys, ["gradcheck", "no_colon", "--input-shape", "1,1,2,2"], "MODULE:CLASS")
