"""train --channels: a model of several input channels, its channels stored and used by predict."""

import numpy as np
import tifffile
from cli_helpers import TINY

import minunet as mu
from minunet.cli import main


def test_train_on_two_channels_then_predict_reads_them(tmp_path, capsys):
    images, labels, _ = mu.data.generate(6, "standard", seed=5, size=(64, 64))
    other = mu.data.generate(6, "shift-large", seed=6, size=(64, 64))[0]
    for i in range(6):
        two = np.stack([other[i], images[i]]) * 3000 + 200                # (C, H, W)
        tifffile.imwrite(_mkdir(tmp_path / "data" / "images") / f"{i}.tif",
                         two.astype(np.uint16), imagej=True, metadata={"axes": "CYX"})
        tifffile.imwrite(_mkdir(tmp_path / "data" / "labels") / f"{i}.tif",
                         labels[i].astype(np.uint16))
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "data"), "--out", str(run), *TINY,
                 "--val-fraction", "0.34", "--channels", "1,0"]) == 0
    ckpt = mu.load(run)
    assert ckpt.metadata["channels"] == [1, 0] and ckpt.model.in_channels == 2
    image = tmp_path / "data" / "images" / "0.tif"
    assert main(["predict", str(run), str(image), "--out", str(tmp_path / "pred")]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "pred" / "0.tif"),
                                  mu.segment(ckpt, image))
    capsys.readouterr()
    assert main(["train", "--preset", "standard", "--out", str(tmp_path / "r2"), *TINY,
                 "--channels", "1,0"]) == 2
    assert "--channels" in capsys.readouterr().err


def _mkdir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path
