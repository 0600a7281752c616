"""Reading images (TIFF, PNG, NPY) as stored, their pixel size, and writing label TIFFs.

`write_labels` writes a label TIFF that Fiji and napari open as a 16-bit label image, with the
input's pixel size. (A lab's own training folders are found by `minunet.io.folders`; files are
written through `minunet.io.files.write_atomic`.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from .files import write_atomic

MAX_LABEL = np.iinfo(np.uint16).max     # labels are stored as uint16
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".npy")


def read_image(path: str | Path) -> np.ndarray:
    """Read a 2-D image as stored: (H, W) gray or (H, W, 3|4) RGB/RGBA, any integer or float
    dtype (8-/16-bit, float). No conversion or normalisation happens here."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"read_image: no such file: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"read_image: {path} is a folder, not an image file")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ValueError(f"read_image: {path} is not an image file this reader knows; "
                         f"use one of {', '.join(IMAGE_SUFFIXES)}")
    try:
        if suffix in (".tif", ".tiff"):
            array = tifffile.imread(path)
        elif suffix == ".png":
            from PIL import Image
            with Image.open(path) as im:
                array = np.asarray(im)
        else:
            array = np.load(path, allow_pickle=False)
    except Exception as err:        # every reader has its own errors; name the file in one
        raise ValueError(f"read_image: cannot read {path} as {suffix[1:].upper()}: "
                         f"{type(err).__name__}: {err}") from err
    return _check_image(path, np.asarray(array))


def _check_image(path: Path, array: np.ndarray) -> np.ndarray:
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"read_image: {path} holds {array.dtype} values, not an image")
    is_gray = array.ndim == 2
    is_color = array.ndim == 3 and array.shape[2] in (3, 4)
    if not (is_gray or is_color) or min(array.shape[:2]) < 1:
        raise ValueError(f"read_image: {path} has shape {array.shape}; expected a 2-D gray "
                         "image (H, W) or an RGB/RGBA image (H, W, 3|4)")
    return array


PixelSize = tuple[float, float, str]  # (y size, x size, unit), e.g. (0.25, 0.25, "um")


def read_pixel_size(path: str | Path) -> PixelSize | None:
    """The pixel size a TIFF declares (ImageJ's or the TIFF resolution tags), else None."""
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            tags = page.tags
            if "XResolution" not in tags or "YResolution" not in tags:
                return None
            xres, yres = (_ratio(tags[k].value) for k in ("XResolution", "YResolution"))
            unit = ""
            if tif.is_imagej and tif.imagej_metadata:
                unit = str(tif.imagej_metadata.get("unit", ""))
            if not unit:
                code = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
                unit = {2: "inch", 3: "cm"}.get(code, "")
    except Exception:  # a pixel size is a courtesy: never fail a prediction over it
        return None
    if not (xres > 0 and yres > 0) or not unit:
        return None
    return 1.0 / yres, 1.0 / xres, unit


def _ratio(value: Any) -> float:
    if isinstance(value, tuple):
        return value[0] / value[1] if value[1] else 0.0
    return float(value)


def write_labels(path: str | Path, labels: np.ndarray, pixel_size: PixelSize | None = None,
                 info: str | None = None) -> Path:
    """Write instance labels as an ImageJ uint16 TIFF (atomically), keeping `pixel_size`;
    `info`: text stored as the ImageJ "Info" property (Image > Show Info)."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > MAX_LABEL):
        raise ValueError(f"write_labels: {path}: label ids {labels.min()}..{labels.max()} do "
                         f"not fit a uint16 label image (0..{MAX_LABEL})")
    kwargs: dict[str, Any] = {"imagej": True}
    if pixel_size is not None:
        dy, dx, unit = pixel_size
        kwargs["resolution"] = (1.0 / dx, 1.0 / dy)
        kwargs["metadata"] = {"unit": unit}
    if info is not None:
        kwargs["metadata"] = {**kwargs.get("metadata", {}), "Info": info}
    data = labels.astype(np.uint16)
    return write_atomic(Path(path), lambda tmp: tifffile.imwrite(tmp, data, **kwargs))
