"""docs/export.md runs as written: every `minunet` and `bioimageio` command of its console
blocks and every Python block, in order, in one folder holding the images the page names."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minunet.cli import main
from tests.cli_helpers import blob_image, write_tif

DOC = Path(__file__).resolve().parent.parent / "docs" / "export.md"
BLOCK = re.compile(r"```(console|python)\n(.*?)```", re.S)


def steps():
    """("minunet" | "bioimageio" | "python", text) for each runnable piece, in page order."""
    for kind, body in BLOCK.findall(DOC.read_text()):
        if kind == "python":
            yield "python", body
            continue
        for line in body.splitlines():
            command = line.removeprefix("$ ").strip()
            if command.startswith(("minunet ", "bioimageio ")):
                yield command.split()[0], command


def test_the_page_has_what_the_issue_asks_for():
    commands = [text for kind, text in steps() if kind != "python"]
    for needed in ("--rois", "--chunked", "--format onnx", "--format bioimageio",
                   "bioimageio test"):
        assert any(needed in c for c in commands), needed
    text = DOC.read_text()
    for tool in ("Fiji", "QuPath", "napari", "deepImageJ", "bioimage.io"):
        assert tool in text


def test_every_command_of_the_page_runs(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("bioimageio.core")
    pytest.importorskip("zarr")
    pytest.importorskip("dask")
    rng = np.random.default_rng(9)
    write_tif(tmp_path / "images" / "cells.tif", blob_image(rng, (96, 104), n=5)[0])
    write_tif(tmp_path / "slide.tif", blob_image(rng, (300, 260), n=12)[0])
    monkeypatch.chdir(tmp_path)
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):  # nothing may need the network
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")
    namespace: dict = {}
    for kind, text in steps():
        if kind == "minunet":
            assert main(shlex.split(text)[1:]) == 0, text
        elif kind == "bioimageio":
            cli = Path(sys.executable).with_name("bioimageio")
            result = subprocess.run([str(cli), *shlex.split(text)[1:]], capture_output=True,
                                    text=True, timeout=600)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        else:
            exec(compile(text, str(DOC), "exec"), namespace)
    assert (tmp_path / "results" / "cells_rois.zip").is_file()
    assert (tmp_path / "results" / "slide.ome.zarr" / "labels" / "cells").is_dir()
    assert namespace["probs"].shape[0] == 3
