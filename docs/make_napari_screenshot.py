"""Take docs/napari_widget.png: minunet's widget in napari, after Run on the sample image.

    pip install -e ".[napari]"
    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_napari_screenshot.py  # headless
    python docs/make_napari_screenshot.py --out shot.png                           # a desktop

Headless, it needs a virtual X display (Debian: apt-get install xvfb) and Qt's X libraries
(libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0
libxcb-xkb1 libxkbcommon-x11-0 libxcb-shape0 libxcb-cursor0): Qt's offscreen platform runs
the widget and the tests, but napari's OpenGL canvas renders black there.

The picture shows what a user sees: File > Open Sample > minunet > broad, the dock widget
Plugins > Segment (minunet), Run with the bundled `nuclei` model and its stored settings.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MANIFEST = HERE.parent / "minunet" / "napari" / "napari.yaml"
WINDOW = (1400, 820)   # px: room for the dock widget beside a 256 x 256 image


def ensure_plugin() -> None:
    """Register the manifest when napari has not discovered the plugin (not pip-installed)."""
    from npe2 import PluginManager, PluginManifest

    pm = PluginManager.instance()
    pm.discover()
    if "minunet" not in pm._manifests:
        pm.register(PluginManifest.from_file(MANIFEST))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "napari_widget.png")
    args = parser.parse_args()

    # napari's notice that PyQt5 cannot follow the desktop theme would cover the canvas
    warnings.filterwarnings("ignore", message="System theme detection")
    import napari
    from qtpy.QtCore import QEventLoop

    ensure_plugin()
    viewer = napari.Viewer(title="minunet in napari")
    viewer.window.resize(*WINDOW)
    image, _ = viewer.open_sample("minunet", "broad")
    _, widget = viewer.window.add_plugin_dock_widget("minunet", "Segment")
    widget.probabilities.value = True
    worker = widget.run()
    loop = QEventLoop()
    worker.finished.connect(loop.quit)
    loop.exec_()
    viewer.layers[f"{image.name} probabilities"].visible = False   # shown, off: the labels
    viewer.layers.selection.active = viewer.layers[f"{image.name} labels"]
    viewer.reset_view()
    save_png(args.out, window_with_canvas(viewer))
    print(f"wrote {args.out}: {widget.status.value}")
    viewer.close()


def window_with_canvas(viewer: object) -> np.ndarray:
    """The whole window (H, W, 4) with the canvas as napari renders it pasted in (a grab of
    the window alone may leave the OpenGL canvas black)."""
    window = viewer.screenshot(canvas_only=False, flash=False)
    canvas = viewer.screenshot(canvas_only=True, flash=False)
    native = viewer.window._qt_viewer.canvas.native
    origin = native.mapTo(viewer.window._qt_window, native.rect().topLeft())
    ratio = window.shape[1] / viewer.window._qt_window.width()
    y, x = round(origin.y() * ratio), round(origin.x() * ratio)
    h, w = min(canvas.shape[0], window.shape[0] - y), min(canvas.shape[1], window.shape[1] - x)
    window[y:y + h, x:x + w] = canvas[:h, :w]
    return window


def save_png(path: Path, rgba: np.ndarray) -> None:
    from PIL import Image

    from minunet.io.files import write_atomic

    write_atomic(path, lambda tmp: Image.fromarray(rgba[..., :3]).save(tmp, optimize=True))


if __name__ == "__main__":
    main()
