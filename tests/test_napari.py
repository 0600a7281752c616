"""The napari plugin (minunet/napari/): widget, reader/writer, sample data, save for training.

The plain-Python parts (save for training, reader, writer, the default path staying free of
napari) always run; the viewer tests need the `napari` extra and skip cleanly without it. They
run headless: Qt's offscreen platform, and a virtual X display (Xvfb, started here when there is
no display) for napari's OpenGL canvas; without Xvfb they fall back to napari's ViewerModel (the
same layer list, no canvas).
"""

import importlib.util
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from cli_helpers import TINY, blob_image, snapshot, write_tif

import minunet as mu
from minunet.cli import main
from minunet.io.folders import find_pairs, read_pairs
from minunet.napari.reader import get_reader
from minunet.napari.training import save_for_training
from minunet.napari.writer import write_labels_layer

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")   # before any Qt application exists

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "minunet" / "napari" / "napari.yaml"
HAS_NAPARI = all(importlib.util.find_spec(m) for m in ("napari", "npe2", "pytestqt", "qtpy"))
needs_napari = pytest.mark.skipif(not HAS_NAPARI, reason='the napari extra is not installed '
                                  '(pip install -e ".[napari]")')
GUI_MODULES = ("napari", "npe2", "magicgui", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6",
               "vispy", "superqt")


# --- the default path ----------------------------------------------------------------------
def test_default_path_imports_no_napari_or_qt():
    code = ("import sys, minunet, minunet.cli\n"
            "try:\n    minunet.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {GUI_MODULES!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_manifest_is_packaged_and_registered():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    entry = project["project"]["entry-points"]["napari.manifest"]["minunet"]
    package, name = entry.split(":")
    assert (ROOT / package.replace(".", "/") / name) == MANIFEST and MANIFEST.is_file()
    pytest.importorskip("hatchling")    # the build backend decides what the wheel carries
    from hatchling.builders.wheel import WheelBuilder

    files = {f.distribution_path for f in WheelBuilder(str(ROOT)).recurse_included_files()}
    assert os.path.join(*package.split("."), name) in files


# --- save for training (no napari needed) --------------------------------------------------
def test_save_for_training_writes_stardist_layout_and_never_overwrites(tmp_path):
    rng = np.random.default_rng(0)
    image, labels = blob_image(rng, (40, 56))
    first = save_for_training(tmp_path / "cells", "img 1", image, labels)
    assert first.image == tmp_path / "cells" / "images" / "img_1.tif" and not first.renamed
    assert first.mask == tmp_path / "cells" / "masks" / "img_1.tif"
    before = snapshot(tmp_path / "cells")
    second = save_for_training(tmp_path / "cells", "img 1", image, labels + (labels > 0))
    assert second.renamed and second.name == "img_1-2" and "img_1 was taken" in second.message()
    after = snapshot(tmp_path / "cells")
    assert {k: after[k] for k in before} == before            # the first pair is untouched
    pairs = find_pairs(tmp_path / "cells")
    images, masks = read_pairs(pairs)
    assert [p[0].name for p in pairs] == ["img_1.tif", "img_1-2.tif"]
    np.testing.assert_array_equal(images[0], image)
    np.testing.assert_array_equal(masks[0], labels)
    np.testing.assert_array_equal(masks[1], labels + (labels > 0))
    assert not list((tmp_path / "cells").rglob(".*"))       # no temporary files left


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.float64])
def test_save_for_training_keeps_the_pixel_size(tmp_path, dtype):
    image, labels = blob_image(np.random.default_rng(7), (32, 48))
    saved = save_for_training(tmp_path, "c", image.astype(dtype), labels, (0.5, 0.25, "um"))
    assert mu.io.read_pixel_size(saved.mask) == pytest.approx((0.5, 0.25, "um"))
    stored = mu.io.read_pixel_size(saved.image)   # ImageJ TIFFs hold no float64: left out
    assert stored == (None if dtype == np.float64 else pytest.approx((0.5, 0.25, "um")))
    np.testing.assert_array_equal(tifffile.imread(saved.image), image.astype(dtype))


def test_save_for_training_uses_an_existing_labels_folder(tmp_path):
    rng = np.random.default_rng(1)
    image, labels = blob_image(rng, (32, 32))
    write_tif(tmp_path / "images" / "old.tif", image)
    write_tif(tmp_path / "labels" / "old.tif", labels)
    saved = save_for_training(tmp_path, "new", image, labels)
    assert saved.mask.parent.name == "labels" and not (tmp_path / "masks").exists()
    assert len(find_pairs(tmp_path)) == 2


@pytest.mark.parametrize("change, message", [
    (lambda im, lab: (im, lab[:-1]), "choose the labels layer"),
    (lambda im, lab: (im, lab * 0), "empty"),
    (lambda im, lab: (im, lab.astype(np.float32)), "whole numbers"),
    (lambda im, lab: (np.stack([im, im]), lab), "2-D gray"),
])
def test_save_for_training_checks_before_writing(tmp_path, change, message):
    image, labels = blob_image(np.random.default_rng(2), (32, 32))
    with pytest.raises(ValueError, match=message):
        save_for_training(tmp_path / "cells", "x", *change(image, labels))
    assert not (tmp_path / "cells").exists()


def test_saved_folder_trains_with_minunet_train(tmp_path):
    rng = np.random.default_rng(3)
    for i in range(3):
        save_for_training(tmp_path / "cells", f"cell{i}", *blob_image(rng, (64, 64), n=6))
    assert main(["train", "--data", str(tmp_path / "cells"), "--out", str(tmp_path / "run"),
                 *TINY, "--val-fraction", "0.34"]) == 0
    assert (tmp_path / "run" / "last.npz").is_file()


# --- reader and writer (no napari needed) --------------------------------------------------
def test_writer_then_reader_round_trip_with_pixel_size(tmp_path):
    _, labels = blob_image(np.random.default_rng(4), (30, 50))
    meta = {"scale": (0.5, 0.25), "metadata": {"unit": "um"}}
    written = write_labels_layer(str(tmp_path / "cells"), labels, meta)
    assert written == [str(tmp_path / "cells.tif")]
    reader = get_reader(written[0])
    (data, kwargs, kind), = reader(written[0])
    assert kind == "labels" and kwargs["name"] == "cells"
    np.testing.assert_array_equal(data, labels)
    np.testing.assert_allclose(kwargs["scale"], (0.5, 0.25))
    assert kwargs["metadata"]["unit"] == "um"
    assert mu.io.read_pixel_size(written[0])[:2] == pytest.approx((0.5, 0.25))


def test_reader_leaves_raw_images_to_napari(tmp_path):
    rgb = write_tif(tmp_path / "rgb.tif", np.zeros((8, 8, 3), np.uint8))
    gray = write_tif(tmp_path / "gray.tif", np.zeros((8, 8), np.float32))
    stack = write_tif(tmp_path / "stack.tif", np.zeros((3, 8, 8), np.uint16))
    assert get_reader(str(rgb)) is None and get_reader(str(gray)) is None
    assert get_reader(str(stack)) is None and get_reader(str(tmp_path)) is None
    assert get_reader(str(tmp_path / "missing.tif")) is None


def test_reader_opens_a_predict_folder(tmp_path):
    image, _ = blob_image(np.random.default_rng(5), (48, 64))
    write_tif(tmp_path / "in" / "a.tif", image)
    assert main(["predict", "nuclei", str(tmp_path / "in" / "a.tif"), "--out",
                 str(tmp_path / "out"), "--overlays", "--probs"]) == 0
    layers = get_reader(str(tmp_path / "out"))(str(tmp_path / "out"))
    by_name = {kw["name"]: (data, kind) for data, kw, kind in layers}
    assert set(by_name) == {"a", "a overlay", "a probabilities"}
    np.testing.assert_array_equal(by_name["a"][0], tifffile.imread(tmp_path / "out" / "a.tif"))
    assert by_name["a"][1] == "labels"
    assert by_name["a overlay"][0].ndim == 3 and by_name["a overlay"][1] == "image"
    probs = np.load(tmp_path / "out" / "probs" / "a.npy")
    np.testing.assert_allclose(by_name["a probabilities"][0], 1 - probs[0])


# --- inside napari -------------------------------------------------------------------------
@pytest.fixture(scope="session")
def display():
    """A virtual X display for napari's OpenGL canvas, when none is set and Xvfb exists;
    True when there is a display, else False (then the tests use a ViewerModel).

    The server lives as long as this test process (the kernel sends it SIGTERM when pytest
    exits): stopping it earlier would end the process, as Xlib exits when its server dies."""
    if os.environ.get("DISPLAY") or not shutil.which("Xvfb"):
        return bool(os.environ.get("DISPLAY"))
    for number in range(90, 200):
        if Path(f"/tmp/.X{number}-lock").exists():
            continue
        server = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "1280x1024x24",
                                   "-nolisten", "tcp"], preexec_fn=_die_with_parent,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if _listening(server, Path(f"/tmp/.X11-unix/X{number}")):
            break
    else:
        return False
    os.environ["DISPLAY"] = f":{number}"
    return True


def _listening(server: subprocess.Popen, socket: Path) -> bool:
    """True once our server listens; False if it exits (another process took the number)."""
    for _ in range(200):                       # up to 10 s
        if server.poll() is not None:
            return False
        if socket.exists() and _accepts(socket):
            time.sleep(0.2)                    # a server that lost the race exits by now
            return server.poll() is None
        time.sleep(0.05)
    server.terminate()
    return False


def _accepts(path: Path) -> bool:
    """True when an X server answers on the socket (a stale socket file refuses)."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        try:
            client.connect(str(path))
        except OSError:
            return False
    return True


def _die_with_parent() -> None:
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1   # Linux prctl option: a signal for this child when its parent dies
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@pytest.fixture
def viewer(request, display):
    """A napari viewer (make_napari_viewer) with the minunet plugin registered."""
    npe2pm = request.getfixturevalue("npe2pm")
    from npe2 import PluginManifest

    if "minunet" not in npe2pm._manifests:
        npe2pm.register(PluginManifest.from_file(MANIFEST))
    request.getfixturevalue("qtbot")          # a QApplication for the widget and the thread
    if display and _opengl_works():
        return request.getfixturevalue("make_napari_viewer")()
    from napari.components import ViewerModel

    return ViewerModel()


def _opengl_works() -> bool:
    """Whether Qt gets an OpenGL context with extensions (napari's canvas asks for them); a
    display without one is told apart from a test failure, with a warning."""
    from OpenGL import GL  # PyOpenGL, as napari's canvas (vispy) calls it
    from qtpy.QtGui import QOffscreenSurface, QOpenGLContext

    context, surface = QOpenGLContext(), QOffscreenSurface()
    surface.create()
    works = bool(context.create() and context.makeCurrent(surface)
                 and GL.glGetString(GL.GL_EXTENSIONS))
    context.doneCurrent()
    if not works:
        import warnings

        warnings.warn("no OpenGL on this display: napari tests use a ViewerModel", stacklevel=2)
    return works


def run_widget(qtbot, widget):
    worker = widget.run()
    assert worker is not None, widget.status.value
    with qtbot.waitSignal(worker.finished, timeout=300_000):
        pass
    return worker


@needs_napari
def test_widget_labels_equal_mu_segment_on_sample_data(viewer, qtbot):
    from minunet.napari.widget import SegmentWidget

    image_layer, _ = viewer.open_sample("minunet", "broad")
    image_layer.scale = (0.5, 0.5)
    widget = SegmentWidget(viewer)
    assert widget.image.value is image_layer and widget.model.value == "nuclei"
    stored = mu.load("nuclei").metadata["postprocess"]
    assert widget.seed_thresh.value == pytest.approx(stored["seed_thresh"])
    assert widget.min_size.value == stored["min_size"] and widget.settings() == {}
    widget.probabilities.value = True
    run_widget(qtbot, widget)
    labels = viewer.layers["broad labels"]
    expected, probs = mu.segment("nuclei", image_layer.data, return_probs=True)
    np.testing.assert_array_equal(labels.data, expected)
    assert labels.data.max() > 10                     # it found the cells
    np.testing.assert_allclose(labels.scale, (0.5, 0.5))
    np.testing.assert_allclose(viewer.layers["broad probabilities"].data, 1 - probs[0])
    assert widget.labels.value is labels and "objects" in widget.status.value


@needs_napari
def test_widget_passes_diameter_and_changed_settings(viewer, qtbot):
    from minunet.napari.widget import AUTO, PIXELS, SegmentWidget

    image_layer, _ = viewer.open_sample("minunet", "broad")
    widget = SegmentWidget(viewer)
    widget.diameter_mode.value = AUTO
    widget.min_size.value = 200
    assert widget.settings() == {"min_size": 200}
    run_widget(qtbot, widget)
    np.testing.assert_array_equal(
        viewer.layers["broad labels"].data,
        mu.segment("nuclei", image_layer.data, diameter="auto", min_size=200))
    widget.diameter_mode.value, widget.diameter.value = PIXELS, 30.0
    widget.min_size.value = widget._shown["min_size"]  # back to the model's: rescaled by segment
    run_widget(qtbot, widget)
    assert len([layer for layer in viewer.layers if "labels" in layer.name]) == 2  # replaced
    edited = viewer.layers["broad labels"].data.copy()
    edited[edited == 2] = 0                            # the user corrects ...
    viewer.layers["broad labels"].data = edited
    run_widget(qtbot, widget)                          # ... then runs again: edits are kept
    np.testing.assert_array_equal(viewer.layers["broad labels (edited)"].data, edited)
    assert "edits are kept" in widget.status.value
    np.testing.assert_array_equal(viewer.layers["broad labels"].data,
                                  mu.segment("nuclei", image_layer.data, diameter=30.0))


@needs_napari
def test_widget_segments_rgb_and_refuses_stacks(viewer, qtbot):
    from minunet.napari.widget import SegmentWidget

    gray, _ = blob_image(np.random.default_rng(8), (64, 80), n=6)
    rgb = np.stack([gray // 256, gray // 200, gray // 300], axis=-1).astype(np.uint8)
    layer = viewer.add_image(rgb, name="rgb", rgb=True)
    widget = SegmentWidget(viewer)
    run_widget(qtbot, widget)
    expected = mu.segment("nuclei", rgb)
    assert expected.max() > 0
    np.testing.assert_array_equal(viewer.layers["rgb labels"].data, expected)
    viewer.add_image(np.zeros((3, 32, 32), np.float32), name="stack")
    widget.image.value = viewer.layers["stack"]
    assert widget.run() is None and "one 2-D image" in widget.status.value
    assert "stack labels" not in viewer.layers and layer.name == "rgb"


@needs_napari
def test_widget_loads_a_run_folder_and_reports_bad_paths(viewer, tmp_path):
    from minunet.napari.widget import CHECKPOINT, RUN_FOLDER, SegmentWidget

    widget = SegmentWidget(viewer)
    widget.model.value = RUN_FOLDER
    assert widget.checkpoint is None and not widget.path.native.isHidden()
    widget.path.value = tmp_path
    assert widget.checkpoint is None and "no best.npz or last.npz" in widget.status.value
    assert widget.run() is None
    widget.model.value = CHECKPOINT
    widget.path.value = mu.checkpoint.resolve("nuclei")
    assert widget.checkpoint is not None and "trained on objects" in widget.status.value


@needs_napari
def test_widget_saves_corrected_labels_for_training(viewer, qtbot, tmp_path):
    from minunet.napari.widget import SegmentWidget

    image_layer, _ = viewer.open_sample("minunet", "broad")
    image_layer.scale = (0.3, 0.3)
    widget = SegmentWidget(viewer)
    run_widget(qtbot, widget)
    labels = viewer.layers["broad labels"]
    corrected = labels.data.copy()
    corrected[corrected == 1] = 0                      # the user deletes one object
    labels.data = corrected
    widget.folder.value = tmp_path / "train"
    first = widget.save()
    assert first is not None and first.name == "broad"
    np.testing.assert_array_equal(tifffile.imread(first.mask), corrected)
    np.testing.assert_array_equal(tifffile.imread(first.image), image_layer.data)
    assert mu.io.read_pixel_size(first.image) == pytest.approx((0.3, 0.3, "um"))
    second = widget.save()
    assert second.name == "broad-2" and "broad was taken" in widget.status.value
    assert len(find_pairs(tmp_path / "train")) == 2


@needs_napari
def test_napari_opens_and_saves_through_the_plugin(viewer, tmp_path):
    _, labels = blob_image(np.random.default_rng(6), (24, 40))
    write_tif(tmp_path / "cells.tif", labels)
    layer, = viewer.open(tmp_path / "cells.tif", plugin="minunet")
    assert layer.__class__.__name__ == "Labels"
    np.testing.assert_array_equal(layer.data, labels)
    layer.data = layer.data * 2
    viewer.layers.save(str(tmp_path / "saved.tif"), selected=False, plugin="minunet")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "saved.tif"), labels * 2)


@needs_napari
def test_manifest_validates_with_npe2():
    out = subprocess.run([sys.executable, "-c", "from npe2.cli import main; main()",
                          "validate", "--imports", str(MANIFEST)],
                         capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout
