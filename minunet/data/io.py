"""Reading images (TIFF, PNG, NPY) and the data-set folder format.

A data set on disk:
    images/0000.tif   float32 (H, W), values in [0, 1]
    labels/0000.tif   uint16 (H, W) instance ids, 0 = background (opens in napari and Fiji)
    manifest.json     preset, size, seed, n, every parameter, minunet version: enough for
                      `generate.regenerate(manifest)` to draw the same arrays again

(A lab's own folders, without a manifest, are read by `minunet.data.folders`.)

Writing a user's files: `write_atomic(path, write)` writes through a hidden temporary file in the
same folder (`.NAME.XXXX.tmp.SUFFIX`), fsyncs it, gives it the permissions a plain `open()` would
(0o666 minus the umask) and renames it over `path`; an exception or Ctrl-C removes the temporary
file, and `remove_stale_temps` clears those a `kill -9` left behind. `write_labels` writes a
label TIFF that Fiji and napari open as a 16-bit label image, with the input's pixel size.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
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


# ------------------------------------------------------------------------- writing safely
def current_umask() -> int:
    """The process's umask (read by setting and restoring it; there is no other POSIX way)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_prefix(path: Path) -> str:
    """Temporary files for `path` are named `.NAME.XXXX.tmp...` beside it."""
    return f".{path.name}."


def write_atomic(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp_path)` on a temporary file beside `path`, then rename it over `path`.

    Either the old file (or none) or the complete new one is there, whatever happens; the new
    file gets 0o666 minus the umask, as `open()` would give it (mkstemp alone makes it 0600).
    The temporary name keeps the suffix, so writers that choose a format by suffix still work.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp" + path.suffix,
                                    dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt too: never leave the temporary file behind
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)
    return path


def fsync_folder(folder: Path) -> None:
    """Make a rename durable (POSIX); folders cannot be opened this way on Windows."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temps(folder: str | Path, names: Iterable[str]) -> list[Path]:
    """Delete the temporary files a killed write of any of `names` left in `folder`."""
    removed = []
    for name in names:
        for stale in Path(folder).glob(f".{_glob_escape(name)}.*.tmp*"):
            if stale.is_file():
                stale.unlink(missing_ok=True)
                removed.append(stale)
    return removed


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


# ------------------------------------------------------------------ label TIFFs, pixel size
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


def write_labels(path: str | Path, labels: np.ndarray, pixel_size: PixelSize | None = None
                 ) -> Path:
    """Write instance labels as an ImageJ uint16 TIFF (atomically), keeping `pixel_size`."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > MAX_LABEL):
        raise ValueError(f"write_labels: {path}: label ids {labels.min()}..{labels.max()} do "
                         f"not fit a uint16 label image (0..{MAX_LABEL})")
    kwargs: dict[str, Any] = {"imagej": True}
    if pixel_size is not None:
        dy, dx, unit = pixel_size
        kwargs["resolution"] = (1.0 / dx, 1.0 / dy)
        kwargs["metadata"] = {"unit": unit}
    data = labels.astype(np.uint16)
    return write_atomic(Path(path), lambda tmp: tifffile.imwrite(tmp, data, **kwargs))


def save_dataset(out_dir: str | Path, images: np.ndarray, labels: np.ndarray, manifest: dict
                 ) -> None:
    """Write images/NNNN.tif (float32), labels/NNNN.tif (uint16) and manifest.json."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 3 or labels.shape != images.shape:
        raise ValueError(f"save_dataset: need images and labels of one shape (N, H, W), got "
                         f"{images.shape} and {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"save_dataset: labels must be integer ids, got {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > MAX_LABEL):
        raise ValueError(f"save_dataset: label ids must lie in 0..{MAX_LABEL} for uint16 TIFF, "
                         f"got {labels.min()}..{labels.max()}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    digits = max(4, len(str(len(images) - 1)))
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        name = f"{i:0{digits}d}.tif"
        for folder, array in (("images", image.astype(np.float32)),
                              ("labels", label.astype(np.uint16))):
            write_atomic(out / folder / name, lambda tmp, a=array: tifffile.imwrite(
                tmp, a, photometric="minisblack"))
    from .. import __version__
    record = {"format": FORMAT_VERSION, "minunet_version": __version__, **_jsonable(manifest),
              "n": len(images), "size": list(images.shape[1:])}
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    write_atomic(out / MANIFEST, lambda tmp: tmp.write_text(text))


def load_dataset(directory: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read a folder written by `save_dataset`: images (N, H, W) float32, labels (N, H, W)
    int32, manifest dict."""
    root = Path(directory)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"load_dataset: {root} has no {MANIFEST}; is it a data set "
                                "written by save_dataset / `minunet generate`? (A lab's own "
                                "folder: minunet.data.folders.find_pairs and read_pairs.)")
    manifest = json.loads(manifest_path.read_text())
    image_files = sorted((root / "images").glob("*.tif"))
    label_files = sorted((root / "labels").glob("*.tif"))
    if [f.name for f in image_files] != [f.name for f in label_files]:
        raise ValueError(f"load_dataset: {root}/images and {root}/labels hold different files")
    if "n" in manifest and len(image_files) != manifest["n"]:
        raise ValueError(f"load_dataset: manifest says {manifest['n']} images, found "
                         f"{len(image_files)} in {root / 'images'}")
    if not image_files:
        raise ValueError(f"load_dataset: no images in {root / 'images'}")
    images = np.stack([read_image(f) for f in image_files]).astype(np.float32)
    labels = np.stack([read_image(f) for f in label_files]).astype(np.int32)
    if images.ndim != 3 or labels.shape != images.shape:
        raise ValueError(f"load_dataset: images {images.shape} and labels {labels.shape} must "
                         "be gray and of one shape")
    return images, labels, manifest


def _jsonable(value: object) -> object:
    """Numpy scalars and arrays, tuples and paths turned into plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value
