"""Open what minunet writes: label TIFFs as Labels layers, and output folders.

    a 2-D integer TIFF           -> a Labels layer (its pixel size as the layer's scale)
    a `minunet predict` folder   -> NAME.tif as Labels, overlays/NAME.png as RGB images,
                                    probs/NAME.npy as the foreground probability (hidden)
    a training run or report     -> curves.png / report.png as RGB images

Float and RGB TIFFs are raw images, not labels: this reader leaves them to napari's own.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..inference import OVERLAY_DIR, PROBS_DIR
from ..io.images import read_image, read_pixel_size

LABEL_SUFFIXES = (".tif", ".tiff")
PAGES = ("curves.png", "report.png")    # `minunet train`'s and `minunet evaluate`'s pictures

LayerData = tuple[Any, dict[str, Any], str]   # napari's (data, keyword arguments, layer type)


def get_reader(path: str | list[str]) -> Callable[[str], list[LayerData]] | None:
    """napari's reader hook: a function that reads `path`, or None when it is not minunet's."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.is_dir():
        return read_folder if folder_layers(p, dry=True) else None
    if p.suffix.lower() in LABEL_SUFFIXES and is_label_image(p):
        return read_labels_file
    return None


def is_label_image(path: Path) -> bool:
    """A 2-D TIFF of whole numbers (a raw 8-/16-bit image qualifies too: choose the reader)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return len(series.shape) == 2 and np.issubdtype(series.dtype, np.integer)
    except Exception:   # not a TIFF we can read: not ours to open
        return False


def read_labels_file(path: str | Path) -> list[LayerData]:
    """One label TIFF -> a Labels layer named after the file, scaled by its pixel size."""
    path = Path(path)
    labels = read_image(path)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: not a label image (shape {labels.shape}, {labels.dtype}); "
                         "open it as an image")
    kwargs: dict[str, Any] = {"name": path.stem}
    size = read_pixel_size(path)
    if size is not None:
        dy, dx, unit = size
        kwargs["scale"] = (dy, dx)
        kwargs["metadata"] = {"unit": unit}
    return [(labels, kwargs, "labels")]


def read_folder(path: str | Path) -> list[LayerData]:
    """Every minunet output in a folder (see the module doc), labels first."""
    return folder_layers(Path(path))


def folder_layers(folder: Path, dry: bool = False) -> list[Any]:
    """The layers of a folder's minunet outputs; with dry=True only the files, nothing read."""
    labels = sorted(f for f in folder.iterdir() if f.suffix.lower() in LABEL_SUFFIXES
                    and not f.name.startswith(".") and is_label_image(f))
    overlays = sorted((folder / OVERLAY_DIR).glob("*.png"))
    probs = sorted((folder / PROBS_DIR).glob("*.npy"))
    pages = [folder / name for name in PAGES if (folder / name).is_file()]
    if dry:
        return [*labels, *overlays, *probs, *pages]
    layers: list[LayerData] = []
    for f in labels:
        layers += _skip_bad(f, read_labels_file)
    for f in [*overlays, *pages]:
        layers += _skip_bad(f, lambda f: [(read_image(f), {"name": f"{f.stem} overlay"
                                                          if f.parent.name == OVERLAY_DIR
                                                          else f.stem}, "image")])
    for f in probs:
        layers += _skip_bad(f, _read_probs)
    return layers


def _read_probs(path: Path) -> list[LayerData]:
    probs = np.load(path, allow_pickle=False)   # (Kc, H, W) from `minunet predict --probs`
    if probs.ndim != 3:
        raise ValueError(f"{path}: expected class probabilities (Kc, H, W), got {probs.shape}")
    return [(foreground(probs), {"name": f"{path.stem} probabilities", "colormap": "magma",
                                 "visible": False, "contrast_limits": (0.0, 1.0)}, "image")]


def foreground(probs: np.ndarray) -> np.ndarray:
    """(H, W) foreground probability of class probabilities (Kc, H, W): 1 - background."""
    return probs[0] if len(probs) == 1 else 1.0 - probs[0]


def _skip_bad(path: Path, read: Callable[[Path], list[LayerData]]) -> list[LayerData]:
    """One unreadable file in a folder is named and skipped; the others still open."""
    try:
        return read(path)
    except (ValueError, OSError) as err:
        warnings.warn(f"minunet reader: skipped {path}: {err}", stacklevel=2)
        return []
